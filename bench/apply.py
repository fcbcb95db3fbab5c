"""Median time of `nodeguard apply` as a user runs it, in a netns: read and parse the policy file,
probe, render, read the live state, build and send the one transaction. Nothing is reused between
runs (a fresh parse each time). Two columns: in-process (the daemon's reload path), and the CLI as a
process (adds interpreter start and imports). Measured for a re-apply of an installed policy (the
common case: reloads, repairs) and for a first install (uninstalled before each run).

Goals (issue 2): default policy <= 50 ms; 10,000 allowlist CIDRs (v4+v6) <= 500 ms.
Baseline, same run: the nft CLI loading the identical transaction (`nft -j -f`), i.e. what
libnftables and the kernel cost by themselves; the ratio is nodeguard's overhead.

usage: sudo .venv/bin/python bench/apply.py [--runs 15]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _policies import big_allowlist  # noqa: E402

from guard.lab.netns import add_uplink, reexec_in_netns  # noqa: E402
from guard.apply import apply_plan, make_plan, read_state, transaction, uninstall  # noqa: E402
from guard.backend.nft import Nft  # noqa: E402
from guard.policy.load import read_policy  # noqa: E402


def median_ms(fn, runs: int, before=None) -> float:
    fn()  # warm up
    times = []
    for _ in range(runs):
        if before:
            before()
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    add_uplink(reexec_in_netns("apply"), "ngb0")  # from here on in a throwaway namespace
    nft = Nft()
    tmp = Path(tempfile.mkdtemp())
    (tmp / "10k.yaml").write_text(big_allowlist())
    cases = {"default policy": None, "10,000 allowlist CIDRs": str(tmp / "10k.yaml")}
    goals = {"default policy": 50, "10,000 allowlist CIDRs": 500}
    cli = [sys.executable, "-m", "guard", "apply"]
    print(f"{'case':<24} {'state':<10} {'in-process':>11} {'CLI process':>12} {'nft -j -f':>10} {'ratio':>6} "
          f"{'goal':>7}")
    for name, path in cases.items():
        def full_path(p=path):
            apply_plan(make_plan(read_policy(p)[0], nft), nft)
        for state, before in (("re-apply", None), ("install", lambda: uninstall(nft))):
            ours = median_ms(full_path, args.runs, before)
            proc = median_ms(lambda p=path: subprocess.run(cli + (["-c", p] if p else []), check=True,
                                                           capture_output=True), max(3, args.runs // 3), before)
            uninstall(nft) if before else None
            plan = make_plan(read_policy(path)[0], nft)
            with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
                json.dump(transaction(plan, read_state(plan, nft)).json(), f)
                f.flush()
                base = median_ms(lambda: subprocess.run(["nft", "-j", "-f", f.name], check=True), args.runs, before)
            full_path()
            verdict = "ok" if ours <= goals[name] else "MISSED"
            print(f"{name:<24} {state:<10} {ours:>8.1f} ms {proc:>9.1f} ms {base:>7.1f} ms {ours / base:>6.2f} "
                  f"{goals[name]:>4} ms {verdict}")


if __name__ == "__main__":
    main()
