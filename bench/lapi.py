"""The first pull of 100,000 CrowdSec decisions into the kernel, in a throwaway namespace: a real Local
API (crowdsec -no-cs, SQLite, as tests/crowdsec_lab.py runs it) filled with ``cscli decisions import``
(one call; 100,000 ``cscli decisions add`` would take hours), the policy installed with ``crowdsec``
on, then the daemon's CrowdSec part's startup pull timed as the daemon runs it: the LAPI's answer over
HTTP, its JSON read as untrusted, then the kernel load: the sets' contents worked out and one nft
transaction. Each run starts from empty sets (a fresh part); the run with the median load is shown.

Goal (issue 21): 100,000 decisions at start-up loaded in one transaction within 2 s.

usage: sudo .venv/bin/python bench/lapi.py [--decisions 100000] [--runs 3]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import crowdsec_lab  # noqa: E402

from guard.apply import apply_plan, make_plan, uninstall  # noqa: E402
from guard.backend.nfnetlink import nft_set_sizes  # noqa: E402
from guard.backend.nft import Nft  # noqa: E402
from guard.daemon.crowdsec_part import CrowdsecPart  # noqa: E402
from guard.lab.netns import add_uplink, reexec_in_netns  # noqa: E402
from guard.policy.load import read_policy  # noqa: E402

GOAL_S = 2.0
LISTEN = "127.0.0.1:18181"


def decisions(n: int) -> list[dict]:
    """n ban decisions: one in twenty an IPv6 address, the rest IPv4, all distinct."""
    out = []
    for i in range(n):
        value = str(ipaddress.IPv6Address(0xfd00 << 112 | i)) if i % 20 == 0 else str(ipaddress.IPv4Address(0x0b000000 + i))
        out.append({"duration": "4h", "scope": "ip", "type": "ban", "value": value, "reason": "bench/lapi",
                    "origin": "bench"})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--decisions", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    ns = reexec_in_netns("lapi")
    add_uplink(ns, "ngb0")
    tmp = Path(tempfile.mkdtemp())
    os.chmod(tmp, 0o755)
    os.environ["NODEGUARD_DATA_DIRS"] = str(tmp)  # the part's state file goes there, not to /run/nodeguard
    server = crowdsec_lab.Lapi(ns, tmp / "cs", LISTEN)
    try:
        server.start()
        key = crowdsec_lab.secret_file(tmp / "secrets" / "key", server.bouncer_key())
        (tmp / "decisions.json").write_text(json.dumps(decisions(args.decisions)))
        t = time.perf_counter()
        server.cscli("decisions", "import", "-i", str(tmp / "decisions.json"))
        imported = time.perf_counter() - t
        (tmp / "policy.yaml").write_text(f"interfaces: [ngb0]\nwatcher:\n  state_file: {tmp}/watch.json\n"
                                         f"crowdsec:\n  enabled: true\n  url: {server.url}\n  api_key_file: {key}\n")
        policy = read_policy(tmp / "policy.yaml")[0]
        nft = Nft()
        plan = make_plan(policy, nft)
        apply_plan(plan, nft)
        pulls = []
        for _ in range(args.runs):
            part = CrowdsecPart(lambda: plan, lambda: policy)  # empty: its first pull refills the sets
            t = time.perf_counter()
            part.step()
            pulls.append((time.perf_counter() - t, part.timings))
            assert part.errors == {"pull": 0, "kernel": 0, "push": 0}, part.problem
        held = sum(nft_set_sizes([s.name for s in plan.ruleset.sets if s.kind == "crowdsec"]).values())
        uninstall(nft)
    finally:
        server.stop()
    total, timings = sorted(pulls, key=lambda p: p[1]["kernel"])[len(pulls) // 2]  # the median kernel load
    kernel = timings["kernel"]
    print(f"{args.decisions} decisions: cscli decisions import {imported:.1f} s; {held} elements in the kernel")
    print(f"  the kernel load (one transaction)  {kernel:6.2f} s  (goal {GOAL_S:.0f} s: "
          f"{'ok' if kernel <= GOAL_S else 'MISSED'})")
    print(f"  the whole first pull               {total:6.2f} s: the LAPI's answer {timings['answer']:.2f} s, "
          f"reading it {timings['read']:.2f} s")

if __name__ == "__main__":
    main()
