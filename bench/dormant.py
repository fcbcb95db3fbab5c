"""Dormant tables (nft 1.0.6 cannot list a table with flags as JSON), in a throwaway namespace.

read    - the watcher's read of our table (read_live) with a deny list of --lines prefixes: alone,
          then beside a foreign dormant inet table (that read takes ``list table``, which fetches
          every set element); wall and CPU (this process: libnftables and the parse) per read
repair  - `nodeguard watch` running: (a) a foreign dormant inet table, then our ICMP chain flushed;
          (b) our table made dormant; baseline: our chain flushed with no dormant table. Latency from the disrupting command's return until our rule
          is back and our table has no flags (polled with `nft list`, text: safe); watcher CPU per repair

Run it from the tree to measure (main or a branch): on a tree without the fix, "read" beside a dormant
table and both repairs fail (JSONDecodeError, no repair within 5 s).

usage: sudo .venv/bin/python bench/dormant.py [--n 20] [--lines 10000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _policies import deny_lines  # noqa: E402
from repair import cpu_s, wait  # noqa: E402

from guard.apply import apply_plan, make_plan  # noqa: E402
from guard.backend.nft import Nft, read_live  # noqa: E402
from guard.configfile import DATA_DIRS_ENV  # noqa: E402
from guard.lab.netns import add_uplink, reexec_in_netns  # noqa: E402
from guard.policy.load import read_policy  # noqa: E402


def nft(cmd: str) -> str:
    return subprocess.run(["nft", cmd], check=True, capture_output=True, text=True).stdout


def reads(n: int, static: list[str]) -> str:
    """Median wall and CPU ms of one read_live, or why it failed."""
    walls, cpus = [], []
    try:
        for _ in range(n):
            w, c = time.perf_counter(), time.process_time()
            read_live(Nft(), "inet", "nodeguard", static)
            walls.append((time.perf_counter() - w) * 1000)
            cpus.append((time.process_time() - c) * 1000)
    except Exception as exc:  # noqa: BLE001 - the figure is the failure
        return f"FAILED: {type(exc).__name__}"
    return f"{statistics.median(walls):7.1f} ms wall {statistics.median(cpus):7.1f} ms CPU (median of {n})"


def protected() -> bool:
    try:
        head = nft("list table inet nodeguard").split("\n", 2)[1]
        return not head.strip().startswith("flags") and "comment" in nft("list chain inet nodeguard icmp-flood")
    except subprocess.CalledProcessError:
        return False


def repairs(policy: Path, tmp: Path, n: int) -> None:
    log = tmp / "watch.log"
    with open(log, "w") as err:
        w = subprocess.Popen([sys.executable, "-m", "guard", "watch", "-c", str(policy),
                              "--last-good", str(tmp / "last-good.yaml")], stderr=err)
    try:
        wait(lambda: (tmp / "watch.json").exists(), timeout=20)
        time.sleep(0.5)
        flush = "flush chain inet nodeguard icmp-flood"
        for name, cmd, beside_dormant in (("flush (no dormant table)", flush, False),
                                          ("flush beside a foreign dormant table", flush, True),
                                          ("our table made dormant", "add table inet nodeguard { flags dormant; }", True)):
            if beside_dormant:
                nft("add table inet foreign { flags dormant; }")
            took, c0 = [], cpu_s(w.pid)
            try:
                for _ in range(n):
                    nft(cmd)
                    t0 = time.perf_counter()
                    took.append((wait(protected) - t0) * 1000)
                    time.sleep(0.05)
            except RuntimeError as exc:
                last = (log.read_text().strip().splitlines() or [""])[-1]
                print(f"repair  {name:<38} FAILED: {exc}; the watcher's last line: {last[:300]!r}")
                continue
            print(f"repair  {name:<38} p50 {statistics.median(took):7.1f} ms max {max(took):7.1f} ms, "
                  f"watcher CPU {(cpu_s(w.pid) - c0) / n * 1000:6.1f} ms per repair (n={n})")
    finally:
        w.terminate()
        w.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--lines", type=int, default=10_000)
    args = ap.parse_args()
    add_uplink(reexec_in_netns("dormant"), "ngb0")
    tmp = Path(tempfile.mkdtemp())
    os.environ[DATA_DIRS_ENV] = str(tmp)  # the watcher's files, not the host's
    (tmp / "deny.txt").write_text(deny_lines(args.lines))
    policy = tmp / "policy.yaml"
    policy.write_text(f"interfaces: [ngb0]\ndeny:\n  files: [{tmp / 'deny.txt'}]\n"
                      f"watcher:\n  state_file: {tmp / 'watch.json'}\n  max_repairs_per_minute: 1000\n")
    plan = make_plan(read_policy(str(policy))[0], Nft())
    apply_plan(plan, Nft())
    static = list(plan.backend.objects.elements)
    print(f"read    our table alone                        {reads(args.n, static)}")
    nft("add table inet foreign { flags dormant; }")
    print(f"read    beside a foreign dormant inet table    {reads(args.n, static)}")
    nft("delete table inet foreign")
    repairs(policy, tmp, args.n)


if __name__ == "__main__":
    main()
