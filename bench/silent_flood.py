"""Does a flood of silent connections from many addresses lock late probes out of ``/healthz``?
(issue 19, item 4, review). Two namespaces on a veth: the real metrics server of each ``--tree`` in
the victim, and in the attacker SOURCES addresses each holding PER_SOURCE silent connections,
reopened as soon as the server closes one, while a probe from a fresh address connects, waits
DELAY s, then sends ``GET /healthz`` (every 0.25 s, 1 s timeout). Trees run interleaved, REPS
times; per run: probes answered, the flood's connects, the server's CPU (user+sys) and wall time.

usage: sudo .venv/bin/python bench/silent_flood.py --tree MAIN --tree BRANCH [--reps 3]
           [--sources 24] [--per-source 14] [--delay 0.02] [--probes 40]

``--tree`` (default: this one) is the server's PYTHONPATH, so main can be measured beside a branch.
Takes the kernel tests' machine lock; the namespaces are removed however it ends.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from guard.lab import netns
from guard.lab.lock import machine_lock

ROOT = Path(__file__).resolve().parent.parent
HELPERS = ROOT / "tests" / "helpers"
VICTIM, PORT, PROBE_SRC = "10.99.0.1", 9632, "10.99.0.200"


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_run(tree: Path, args: argparse.Namespace, tag: str) -> dict:
    flooders = [f"10.99.{1 + i // 250}.{1 + i % 250}" for i in range(args.sources)]
    with netns.namespace("ngbench", f"{tag}v") as victim, netns.namespace("ngbench", f"{tag}a") as attacker:
        netns.veth(victim, "ngv0", attacker, "nga0")
        victim.run(f"ip addr add {VICTIM}/16 dev ngv0")
        for a in (*flooders, PROBE_SRC):
            attacker.run(f"ip addr add {a}/16 dev nga0")
        env = dict(os.environ, PYTHONPATH=str(tree))
        server = victim.popen([sys.executable, str(HELPERS / "metrics_server.py"), VICTIM, str(PORT)], env=env)
        try:
            assert server.stdout.readline().strip() == "ready", server.stderr.read()
            seconds = args.probes * 0.25 + 1
            cpu0, t0 = cpu_s(server.pid), time.monotonic()
            flood = attacker.popen([sys.executable, str(HELPERS / "silent_flood.py"), VICTIM, str(PORT),
                                    str(seconds), str(args.per_source), *flooders])
            assert flood.stdout.readline().strip() == "ready", flood.stderr.read()
            probe = attacker.run([sys.executable, str(HELPERS / "late_probe.py"), PROBE_SRC, VICTIM, str(PORT),
                                  str(args.delay), "0.25", str(args.probes), "1.0"])
            churn = json.loads(flood.communicate(timeout=seconds + 30)[0].splitlines()[-1])
            cpu, wall = cpu_s(server.pid) - cpu0, time.monotonic() - t0
        finally:
            server.kill()
            server.wait()
    results = json.loads(probe.stdout.splitlines()[-1])
    return {"ok": sum(status == 200 for status, _ in results), "probes": len(results),
            "connects": churn["connects"], "cpu_s": cpu, "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tree", type=Path, action="append")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--sources", type=int, default=24)
    ap.add_argument("--per-source", type=int, default=14)
    ap.add_argument("--delay", type=float, default=0.02)
    ap.add_argument("--probes", type=int, default=40)
    args = ap.parse_args()
    trees = [t.resolve() for t in args.tree or [ROOT]]
    runs: dict[Path, list[dict]] = {t: [] for t in trees}
    with machine_lock(say=print):
        for rep in range(args.reps):
            for i, tree in enumerate(trees):
                r = one_run(tree, args, f"{rep}{i}")
                runs[tree].append(r)
                print(f"rep {rep} {tree}: {r['ok']}/{r['probes']} probes answered, flood {r['connects']} connects, "
                      f"server {r['cpu_s']:.2f} s CPU over {r['wall_s']:.1f} s", flush=True)
    print(f"{args.sources} sources x {args.per_source} silent connections, probes {args.delay * 1000:g} ms late:")
    for tree, rs in runs.items():
        ok, cpu = [r["ok"] for r in rs], [r["cpu_s"] / r["wall_s"] for r in rs]
        rate = [r["connects"] / r["wall_s"] for r in rs]
        print(f"  {tree}: answered {min(ok)}-{max(ok)} of {args.probes} (median {statistics.median(ok):g}); "
              f"server CPU {statistics.median(cpu):.2f} s/s ({min(cpu):.2f}-{max(cpu):.2f}); "
              f"flood {statistics.median(rate):.0f} connects/s ({min(rate):.0f}-{max(rate):.0f})")


if __name__ == "__main__":
    main()
