"""`nodeguard apply` of a policy whose deny file has 100,000 prefixes (v4 and v6, overlapping), end to
end as a user runs it (a process: interpreter, imports, policy and deny file read and merged, render,
one transaction), in a throwaway namespace: a first install, and a re-apply of the same list (the
deny sets are named by their contents: kept, not refilled). Baselines: `nft -f` of the same prefixes
into two bare interval sets, i.e. what libnftables and the kernel cost by themselves; and the element
batch of backend/nft_fill.py alone into two bare sets (in this process: the kernel's floor, plus ~0.1 s
of Python writing the batch).

``--hosts``: the deny file is that many random IPv4 addresses instead (nothing merges). ``--baseline
TREE``: the two ``nodeguard apply`` runs also with the code of TREE (a worktree of main, say), interleaved
with this tree's. Every ``nodeguard apply`` line gives its peak RSS (the unit's MemoryMax is 256M).
``--status``: ``nodeguard status`` of the installed list too, after each re-apply (it reads the deny sets).

Goal (issue 20): 100,000 prefixes in <= 1 s end to end; 1,000,000 under nft -f's time and 256 MB.

usage: sudo .venv/bin/python bench/deny.py [--lines 100000 | --hosts 1000000] [--runs 3] [--baseline TREE]
       [--status]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from guard import prefixes  # noqa: E402
from guard.apply import uninstall  # noqa: E402
from guard.backend import nft_fill  # noqa: E402
from guard.backend.nft import Nft  # noqa: E402
from guard.lab.netns import add_uplink, reexec_in_netns  # noqa: E402
from guard.policy.load import read_policy  # noqa: E402

GOAL_S = 1.0


def timed(cmd: list[str], before=None, tree: Path | None = None) -> tuple[float, float, float, float]:
    """Wall and CPU seconds (user + system, the kernel's work for it included), system seconds and peak
    RSS (MB) of one run (``tree``: its code; ``python -m`` reads the working directory's first): on a
    busy machine the wall time measures the neighbours too. The peak counts the process from its fork,
    so the bench holds nothing big while it runs these."""
    if before:
        before()
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tree,
                            env=dict(os.environ, PYTHONPATH=str(tree)) if tree else None)
    _pid, status, used = os.wait4(proc.pid, 0)
    secs = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)}: exit {proc.returncode}: {proc.stderr.read().decode()[-500:]}")
    proc.stderr.close()
    return secs, used.ru_utime + used.ru_stime, used.ru_stime, used.ru_maxrss / 1024


def timed_here(fn, before) -> tuple[float, float, float]:
    """Wall, CPU (user + system) and system seconds of ``fn()`` in this process."""
    before()
    t, r = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    fn()
    r2 = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter() - t, r2.ru_utime + r2.ru_stime - r.ru_utime - r.ru_stime, r2.ru_stime - r.ru_stime


def drop_bench_table() -> None:
    subprocess.run(["nft", "delete", "table", "inet", "ngbench"], capture_output=True)


def median(runs: list[tuple]) -> tuple:
    """Each column's median."""
    return tuple(statistics.median(column) for column in zip(*runs))


def spread(runs: list[tuple]) -> str:
    """The range of the wall times."""
    return f"{min(r[0] for r in runs):.2f}-{max(r[0] for r in runs):.2f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--lines", type=int, default=100_000)
    size.add_argument("--hosts", type=int, help="random IPv4 addresses instead of --lines' mix")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--baseline", type=Path, help="a tree whose nodeguard apply runs interleaved with this one's")
    ap.add_argument("--status", action="store_true", help="time nodeguard status after each re-apply")
    args = ap.parse_args()
    add_uplink(reexec_in_netns("deny"), "ngb0")  # from here on in a throwaway namespace
    nft = Nft()
    tmp = Path(tempfile.mkdtemp())
    os.chmod(tmp, 0o755)
    with open(tmp / "deny.txt", "w") as out:  # by a process of its own (see timed)
        kind = ["lines", str(args.lines)] if args.hosts is None else ["hosts", str(args.hosts)]
        subprocess.run([sys.executable, str(Path(__file__).resolve().parent / "_policies.py"), *kind], stdout=out, check=True)
    # the watcher's state (and the sampling odds beside it) and the attack log are this run's, not the host's
    os.environ["NODEGUARD_DATA_DIRS"] = str(tmp)
    (tmp / "policy.yaml").write_text(f"interfaces: [ngb0]\ndeny:\n  files: [{tmp / 'deny.txt'}]\n"
                                     f"watcher:\n  state_file: {tmp}/watch.json\nsampler:\n  log: {tmp}/attacks.jsonl\n")
    trees = {"": Path(__file__).resolve().parent.parent, **({"main": args.baseline.resolve()} if args.baseline else {})}
    cli = [sys.executable, "-m", "guard", "apply", "-c", str(tmp / "policy.yaml")]
    runs: dict[tuple[str, str], list] = {}
    for _ in range(args.runs):
        for name, tree in trees.items():  # interleaved: the machine's swings hit both alike
            runs.setdefault((name, "install"), []).append(timed(cli, lambda: uninstall(nft), tree))
            runs.setdefault((name, "re-apply"), []).append(timed(cli, tree=tree))
            if args.status:
                runs.setdefault((name, "status"), []).append(timed([*cli[:3], "status", *cli[4:]], tree=tree))
    uninstall(nft)
    policy = read_policy(tmp / "policy.yaml")[0]
    merged = {v: [prefixes.text(v, p) for p in policy.deny.prefixes(v)] for v in (4, 6)}
    text = "add table inet ngbench\n" + "".join(
        f"add set inet ngbench d{v} {{ type ipv{v}_addr; flags interval; }}\n"
        + (f"add element inet ngbench d{v} {{ {', '.join(nets)} }}\n" if nets else "") for v, nets in merged.items())
    (tmp / "bare.nft").write_text(text)
    base = [timed(["nft", "-f", str(tmp / "bare.nft")], drop_bench_table) for _ in range(args.runs)]
    ints = [("d4", 4, policy.deny.prefixes(4)), ("d6", 6, policy.deny.prefixes(6))]
    floor = [timed_here(lambda: nft_fill.send(nft_fill.batch("ngbench", ints), "bench"), drop_bench_table)
             for _ in range(args.runs)]
    listed = f"{args.lines} lines" if args.hosts is None else f"{args.hosts} random IPv4 addresses"
    print(f"{listed} -> {len(merged[4])} IPv4 + {len(merged[6])} IPv6 prefixes after merging; "
          f"medians of {args.runs} runs (wall range)")
    for (name, what), measured in runs.items():
        secs, cpu, sys_s, peak = median(measured)
        label = what if what == "status" else f"apply, {what}"
        print(f"  nodeguard {label:<16}{' (' + name + ')' if name else '':<7} {secs:6.2f} s ({spread(measured)}), "
              f"CPU {cpu:5.2f} s (sys {sys_s:5.2f}), RSS {peak:4.0f} MB  "
              f"(goal {GOAL_S:.0f} s: {'ok' if secs <= GOAL_S else 'MISSED'})")
    for what, measured, note in (("nft -f, bare sets       ", base, "libnftables and the kernel alone"),
                                 ("element batch, bare sets", floor, "the kernel's floor, and the batch written")):
        secs, cpu, sys_s = median(measured)[:3]
        peak = f", RSS {median(measured)[3]:4.0f} MB" if measured is base else ""
        print(f"  {what}        {secs:6.2f} s ({spread(measured)}), CPU {cpu:5.2f} s (sys {sys_s:5.2f}){peak}  ({note})")


if __name__ == "__main__":
    main()
