"""``nodeguard report`` on random-source flood logs (issue 19, item 6): wall time and peak RSS.

For each size N, writes the log of one syn-flood episode with N random sources (10,000 flows per
window, as the sampler's default max_flows; tests/helpers/attack_log.py) in the sampler's format,
then runs ``python -m guard report --log FILE`` as a fresh process of the tree under test (``--tree``,
default this one) and prints its wall time, CPU time (user + system: what a shared machine's load does
not inflate) and peak RSS (the child's ru_maxrss). A run past
``--timeout`` is killed and shown as such. Goal: 1,000,000 sources in <= 10 s, with memory bounded:
the last line holds the last size up to it. ``parse s``: the CPU time of a child that only
reads and parses the log's lines (attacklog.read_lines), the floor of any report here and a gauge of
the machine's speed at that moment (a shared machine's load slows it too).

usage: python bench/report.py [--sizes 1000,2000,4000,65000,1000000] [--tree DIR] [--timeout 600]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from guard.attacklog import AttackLog  # noqa: E402
from helpers.attack_log import flood  # noqa: E402

GOAL_SOURCES, GOAL_S = 1_000_000, 10.0  # issue 19, item 6


def run(tree: Path, log: Path, timeout: float) -> tuple[float | None, float, int]:
    """(wall seconds, or None when killed at ``timeout``; CPU seconds; peak RSS in KiB) of one report."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    t0 = time.monotonic()
    child = subprocess.Popen([sys.executable, "-m", "guard", "report", "--log", str(log)], cwd=tree, env=env,
                             stdout=subprocess.DEVNULL)
    timer = threading.Timer(timeout, child.kill)
    timer.start()
    _pid, status, usage = os.wait4(child.pid, 0)
    timer.cancel()
    seconds = time.monotonic() - t0
    cpu = usage.ru_utime + usage.ru_stime
    if os.WIFSIGNALED(status):
        return None, cpu, usage.ru_maxrss
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"report failed: {status}")
    return seconds, cpu, usage.ru_maxrss


def parse_seconds(tree: Path, log: Path) -> float:
    """CPU seconds of a fresh process of ``tree`` that only reads and parses ``log``'s lines."""
    code = "import sys\nfrom guard.attacklog import read_lines\nfor _ in read_lines(sys.argv[1]): pass"
    child = subprocess.Popen([sys.executable, "-c", code, str(log)], cwd=tree, env=dict(os.environ, PYTHONPATH=str(tree)))
    _pid, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"parsing failed: {status}")
    return usage.ru_utime + usage.ru_stime


def write_log(sources: int, path: Path) -> None:
    log = AttackLog(path, 1 << 40, 1, allowed_dirs=[path.parent])
    for rec in flood(sources):
        log.write(rec)
    log.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,2000,4000,65000,1000000")
    ap.add_argument("--tree", type=Path, default=ROOT)
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--write", nargs=2, metavar=("SOURCES", "FILE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.write:
        write_log(int(args.write[0]), Path(args.write[1]))
        return
    print(f"tree {args.tree}")
    print(f"{'sources':>9} {'log MB':>7} {'wall s':>8} {'CPU s':>7} {'parse s':>8} {'peak RSS MiB':>13}")
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(s) for s in args.sizes.split(",")):
            path = Path(tmp) / f"attacks-{n}.jsonl"
            # written by another process: a child's peak RSS starts from its parent's at the fork
            subprocess.run([sys.executable, __file__, "--write", str(n), str(path)], check=True)
            seconds, cpu, rss = run(args.tree, path, args.timeout)
            parse = parse_seconds(args.tree, path)
            shown = f"{seconds:8.2f}" if seconds is not None else f">{args.timeout:.0f} killed"
            print(f"{n:>9} {path.stat().st_size / 1e6:>7.1f} {shown:>8} {cpu:>7.2f} {parse:>8.2f} {rss / 1024:>13.0f}",
                  flush=True)
            path.unlink()
    verdict = ("not measured (a smaller log)" if n < GOAL_SOURCES
               else "met" if seconds is not None and seconds <= GOAL_S else "NOT met")
    print(f"goal: {GOAL_SOURCES:,} sources in <= {GOAL_S:.0f} s: {verdict}; the last log, {n:,} sources, took "
          f"{shown.strip()} s wall, {cpu:.2f} s CPU, peak RSS {rss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
