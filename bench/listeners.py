"""Memory and CPU of ``syn.synproxy.ports: auto`` (listeners.auto_ports) against a local user's listeners
(issue 19, item 1 follow-up: 995,000 loopback listeners of ``nobody`` took the daemon over its
MemoryMax=256M).

In a namespace ``ngbench-<pid>-lis`` with an uplink (ngu0, 10.77.0.1), processes running as nobody
hold N listening TCP sockets: half on loopback (127.1.x.y, 20,000 ports an address), half on
0.0.0.0 (SO_REUSEPORT, 1,000 ports: each socket is a listener an uplink reaches, so nothing can skip
it). For each N, a fresh process per look imports guard.listeners from one tree and calls
auto_ports(("ngu0",), set(), FORWARDED) once: wall time, CPU (user+sys) and VmHWM over the VmRSS it
had just before the call. The baseline tree (``--base``, main) and this one alternate, ``--reps``
times each; both must find the same ports.

Measured on 2 shared cores (2026-12-04; median of 3 looks each, interleaved; main = dad370e):

    listeners                       main: CPU s, peak MB      this tree: CPU s, peak MB
    200,000, half loopback          0.527  43.1               0.151  0.6
    1,000,000, half loopback        2.884  214.6              0.809  0.6
    1,000,000, all loopback         2.741  214.6              0.304  0.4   (kernel time only)
    1,000,000, half, --forwarded    4.065  245.4              1.354  0.7

Wall time was within 1 % of CPU time in each (one core, nothing waited for).

usage: sudo .venv/bin/python bench/listeners.py [--sockets 200000,1000000] [--reps 3]
       [--base /work/main] [--forwarded] [--loopback-share 0.5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # this tree's guard.lab

from guard.lab.lock import machine_lock  # noqa: E402
from guard.lab.netns import namespace, remove_stale  # noqa: E402

PREFIX = "ngbench"
GOAL_MB = 30.0  # over the interpreter's baseline, at 1M sockets
PER_PROCESS = 19_900  # under the hard RLIMIT_NOFILE here (20,000), as the review did

# Holds argv[1] loopback and argv[2] wildcard listeners (starting at argv[3], argv[4]) as nobody;
# prints "ready" and holds them until stdin closes.
HOLD = r"""
import os, resource, socket, sys
lo, wc, lo0, wc0 = map(int, sys.argv[1:5])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
os.setgroups([]); os.setgid(65534); os.setuid(65534)
held = []
for i in range(lo0, lo0 + lo):
    s = socket.socket()
    s.bind((f"127.1.{i // 20000 // 256}.{i // 20000 % 256 + 1}", 10000 + i % 20000)); s.listen(1); held.append(s)
for i in range(wc0, wc0 + wc):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("0.0.0.0", 41000 + i % 1000)); s.listen(1); held.append(s)
print("ready", flush=True)
sys.stdin.read()
"""

# One look in a fresh process: prints {"wall", "cpu", "peak_mb", "ports"}.
LOOK = r"""
import gc, json, resource, sys, time
from guard import listeners
def status(key):
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith(key)) / 1024
gc.collect()
before = status("VmRSS:")
r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
ports = listeners.auto_ports(("ngu0",), set(), sys.argv[1] == "1")
t1, r1 = time.monotonic(), resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"wall": t1 - t0, "cpu": r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime,
                  "peak_mb": status("VmHWM:") - before, "base_mb": before,
                  "ports": [len(ports[4]), len(ports[6]), sum(ports[4]) + sum(ports[6])]}))
"""


def hold(ns, total: int, loopback_share: float) -> list[subprocess.Popen]:
    lo_total = int(total * loopback_share)
    wc_total = total - lo_total
    procs, lo_at, wc_at = [], 0, 0
    while lo_at < lo_total or wc_at < wc_total:
        lo = min(PER_PROCESS, lo_total - lo_at)
        wc = min(PER_PROCESS - lo, wc_total - wc_at)
        procs.append(ns.popen([sys.executable, "-c", HOLD, str(lo), str(wc), str(lo_at), str(wc_at)],
                              stdin=subprocess.PIPE))
        lo_at, wc_at = lo_at + lo, wc_at + wc
    for p in procs:
        line = p.stdout.readline()
        if line.strip() != "ready":
            raise SystemExit(f"holder failed: {line}{p.stderr.read()}")
    return procs


def look(ns, tree: Path, forwarded: bool) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    argv = ["nice", "-n", "19", sys.executable, "-c", LOOK, "1" if forwarded else "0"]
    out = ns.run(argv, env=env, cwd=tree, timeout=600)  # cwd: ``-c`` puts it ahead of PYTHONPATH
    return json.loads(out.stdout)


def summary(values: list[float], fmt: str) -> str:
    return f"{fmt.format(statistics.median(values))} [{fmt.format(min(values))}-{fmt.format(max(values))}]"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sockets", default="200000,1000000")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--base", default="/work/main", help="the baseline checkout (main)")
    ap.add_argument("--forwarded", action="store_true", help="synproxy_answers: read receive buffers too")
    ap.add_argument("--loopback-share", type=float, default=0.5)
    args = ap.parse_args()
    trees = {"base": Path(args.base).resolve(), "this": ROOT}
    remove_stale(PREFIX)
    with machine_lock(), namespace(PREFIX, "lis") as ns:
        for cmd in ("ip link add ngu0 type veth peer name ngu0p", "ip addr add 10.77.0.1/24 dev ngu0",
                    "ip link set ngu0 up", "ip link set ngu0p up"):
            ns.run(cmd)
        for total in (int(n) for n in args.sockets.split(",")):
            procs = hold(ns, total, args.loopback_share)
            try:
                runs: dict[str, list[dict]] = {name: [] for name in trees}
                for _ in range(args.reps):
                    for name, tree in trees.items():
                        runs[name].append(look(ns, tree, args.forwarded))
            finally:
                for p in procs:
                    p.kill()
                    p.wait()
            found = {json.dumps(r["ports"]) for rs in runs.values() for r in rs}
            print(f"\n{total:,} listeners ({args.loopback_share:.0%} loopback), forwarded={args.forwarded}, "
                  f"{args.reps} looks each, median [range]; same ports everywhere: {len(found) == 1} {found}")
            for name, rs in runs.items():
                print(f"  {name:4} {str(trees[name]):22} wall {summary([r['wall'] for r in rs], '{:.3f}')} s"
                      f"  cpu {summary([r['cpu'] for r in rs], '{:.3f}')} s"
                      f"  peak over baseline {summary([r['peak_mb'] for r in rs], '{:.1f}')} MB"
                      f" (baseline {statistics.median(r['base_mb'] for r in rs):.1f} MB)")
            ratio = {k: statistics.median(r[k] for r in runs["this"]) / statistics.median(r[k] for r in runs["base"])
                     for k in ("wall", "cpu")}
            peak = statistics.median(r["peak_mb"] for r in runs["this"])
            print(f"  this/base: wall {ratio['wall']:.3f}, cpu {ratio['cpu']:.3f}; peak {peak:.1f} MB "
                  f"{'<=' if peak <= GOAL_MB else 'OVER'} goal {GOAL_MB:.0f} MB")


if __name__ == "__main__":
    main()
