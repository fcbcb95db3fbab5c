"""Median time of `nodeguard apply` (parse → probe → render → one transaction), in a netns.

Goals (issue 2): default policy <= 50 ms; 10,000 allowlist CIDRs (v4+v6) <= 500 ms.
Baseline, same run: the nft CLI loading the identical JSON (`nft -j -f`), i.e. what
libnftables and the kernel cost by themselves; the ratio is nodeguard's overhead.

usage: sudo .venv/bin/python bench/apply.py [--runs 15]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _netns import add_uplink, reexec_in_netns  # noqa: E402

from guard.apply import apply_plan, make_plan  # noqa: E402
from guard.backend.nft import Nft  # noqa: E402
from guard.policy import load_policy, parse_policy  # noqa: E402


def big_allowlist(n: int = 10_000) -> str:
    rnd = random.Random(42)
    v4 = rnd.sample(range(1 << 14), n // 2)  # distinct /24s in 100.64.0.0/10
    cidrs = [str(ipaddress.ip_network((int(ipaddress.ip_address("100.64.0.0")) + (i << 8), 24))) for i in v4]
    v6 = rnd.sample(range(1 << 32), n - n // 2)  # distinct /64s in 2001:db8::/32
    cidrs += [str(ipaddress.ip_network((int(ipaddress.ip_address("2001:db8::")) + (i << 64), 64))) for i in v6]
    rnd.shuffle(cidrs)
    return json.dumps({"allow": {"cidrs": cidrs}})


def median_ms(fn, runs: int) -> float:
    fn()  # warm up
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    reexec_in_netns("apply")
    add_uplink()
    nft = Nft()
    cases = {"default policy": load_policy(None)[0],
             "10,000 allowlist CIDRs": parse_policy(big_allowlist(), "<10k cidrs>")}
    goals = {"default policy": 50, "10,000 allowlist CIDRs": 500}
    print(f"{'case':<24} {'nodeguard apply':>16} {'nft -j -f (baseline)':>21} {'ratio':>6} {'goal':>7}")
    for name, policy in cases.items():
        ours = median_ms(lambda p=policy: apply_plan(make_plan(p, nft), nft), args.runs)
        with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
            json.dump(make_plan(policy, nft).transaction, f)
            f.flush()
            base = median_ms(lambda: subprocess.run(["nft", "-j", "-f", f.name], check=True), args.runs)
        verdict = "ok" if ours <= goals[name] else "MISSED"
        print(f"{name:<24} {ours:>13.1f} ms {base:>18.1f} ms {ours / base:>6.2f} {goals[name]:>4} ms {verdict}")


if __name__ == "__main__":
    main()
