"""`nodeguard apply` of a policy whose deny file has 100,000 prefixes (v4 and v6, overlapping), end to
end as a user runs it (a process: interpreter, imports, policy and deny file read and merged, render,
one transaction), in a throwaway namespace: a first install, and a re-apply of the same list (the
deny sets are named by their contents: kept, not refilled). Baselines: `nft -f` of the same prefixes
into two bare interval sets, i.e. what libnftables and the kernel cost by themselves; and the element
batch of backend/nft_fill.py alone into two bare sets (in this process: the kernel's floor, plus ~0.1 s
of Python writing the batch).

Goal (issue 20): 100,000 prefixes in <= 1 s end to end.

usage: sudo .venv/bin/python bench/deny.py [--lines 100000] [--runs 3]
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
from _policies import deny_lines  # noqa: E402

from guard import prefixes  # noqa: E402
from guard.apply import uninstall  # noqa: E402
from guard.backend import nft_fill  # noqa: E402
from guard.backend.nft import Nft  # noqa: E402
from guard.lab.netns import add_uplink, reexec_in_netns  # noqa: E402
from guard.policy.load import read_policy  # noqa: E402

GOAL_S = 1.0


def timed(cmd: list[str], before=None) -> tuple[float, float]:
    """Wall and CPU seconds (user + system, the kernel's work for it included) of one run: on a busy
    machine the wall time measures the neighbours too."""
    if before:
        before()
    t, used = time.perf_counter(), _children_cpu()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t, _children_cpu() - used


def timed_here(fn, before) -> tuple[float, float]:
    """Wall and CPU seconds (user + system) of ``fn()`` in this process."""
    before()
    t, used = time.perf_counter(), _own_cpu()
    fn()
    return time.perf_counter() - t, _own_cpu() - used


def _own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def drop_bench_table() -> None:
    subprocess.run(["nft", "delete", "table", "inet", "ngbench"], capture_output=True)


def median(runs: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    add_uplink(reexec_in_netns("deny"), "ngb0")  # from here on in a throwaway namespace
    nft = Nft()
    tmp = Path(tempfile.mkdtemp())
    os.chmod(tmp, 0o755)
    (tmp / "deny.txt").write_text(deny_lines(args.lines))
    (tmp / "policy.yaml").write_text(f"interfaces: [ngb0]\ndeny:\n  files: [{tmp / 'deny.txt'}]\n")
    policy = read_policy(tmp / "policy.yaml")[0]
    merged = {v: [prefixes.text(v, p) for p in policy.deny.prefixes(v)] for v in (4, 6)}
    cli = [sys.executable, "-m", "guard", "apply", "-c", str(tmp / "policy.yaml")]
    install = median([timed(cli, lambda: uninstall(nft)) for _ in range(args.runs)])
    reapply = median([timed(cli) for _ in range(args.runs)])
    uninstall(nft)
    text = "add table inet ngbench\n" + "".join(
        f"add set inet ngbench d{v} {{ type ipv{v}_addr; flags interval; }}\n"
        f"add element inet ngbench d{v} {{ {', '.join(nets)} }}\n" for v, nets in merged.items())
    (tmp / "bare.nft").write_text(text)
    base = median([timed(["nft", "-f", str(tmp / "bare.nft")], drop_bench_table) for _ in range(args.runs)])
    ints = [("d4", 4, policy.deny.prefixes(4)), ("d6", 6, policy.deny.prefixes(6))]
    floor = median([timed_here(lambda: nft_fill.send(nft_fill.batch("ngbench", ints), "bench"), drop_bench_table)
                    for _ in range(args.runs)])
    print(f"{args.lines} lines -> {len(merged[4])} IPv4 + {len(merged[6])} IPv6 prefixes after merging")
    for what, (secs, cpu) in (("install", install), ("re-apply", reapply)):
        print(f"  nodeguard apply, {what:<9} {secs:6.2f} s, CPU {cpu:5.2f} s  "
              f"(goal {GOAL_S:.0f} s: {'ok' if secs <= GOAL_S else 'MISSED'})")
    print(f"  nft -f, bare sets        {base[0]:6.2f} s, CPU {base[1]:5.2f} s  (libnftables and the kernel alone)")
    print(f"  element batch, bare sets {floor[0]:6.2f} s, CPU {floor[1]:5.2f} s  "
          "(the kernel's floor, and the batch written)")


if __name__ == "__main__":
    main()
