"""Where a flood's per-packet cost goes in nodeguard's nft rules: one base chain removed at a time.

The lab and floods of bench/flood.py (its SCENARIOS; hping3 at its top rate), nodeguard-nft installed with
``nodeguard apply`` (the shipped default policy, no daemon), then variants, alternating in rotated order:

  none             no rules of ours
  full             the whole table
  without-<chain>  the whole table less one base chain
  ingress-bare     a hand-written inet ingress chain holding only the two IPv4 ban lookups (manual, banned)
  ack-first        the whole table with TCP that opens nothing (no SYN or RST, ``ct state new`` or
                   ``invalid``) returned from filter-conntrack before its allowlist lookups
  dropnew          the whole table plus one rule after conntrack: TCP without SYN or RST that conntrack
                   picked up mid-stream (``ct state new``) is dropped (the floor of what tcp_pickup can save)
  no-pickup        the whole table with ``tcp_pickup.enabled: false``
  ipt-nft          the default policy on the iptables backend, nft flavour
  ipt-legacy       the same, legacy flavour
  ipt-nft-nocount  the same without the sampler's per-source count sets (``sampler.count_sources: 0``)
  nocount          the whole table without them
  banned           the whole table with the attacker's own address banned (``nodeguard ban``): the cost of a
                   banned source's flood, dropped by the ban check at the head of filter-prerouting
  banned-ingress   the whole table plus a hand-written inet ingress chain that drops the attacker's address
                   (the ban check where it was before: one lookup at ingress, before defrag)
  pickup-size-<n>  the whole table with ``tcp_pickup.size: <n>`` (what the second-chance set holds)

Softirq µs per attack packet (netdev ingress counter of the node's uplink); with ``--pin CPU`` hping3 runs
on that CPU and only its softirq time is read (the veth path runs on the sender's CPU), which keeps other
jobs' softirq on the other core out of the figure. Median [range], the change against the first variant, and
against the same repetition of it: the median difference and how many repetitions cost more.

usage: sudo .venv/bin/python bench/chains.py [--scenario S] [--reps N] [--seconds S] [--pin CPU] VARIANT...
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import yaml  # noqa: E402

from flood import COUNTERS, ROOT, SCENARIOS  # noqa: E402
from guard.configfile import add_data_dir  # noqa: E402
from guard.demo import lab as labmod  # noqa: E402
from guard.demo.lab import ATTACKER, UPLINK, Lab, nodeguard  # noqa: E402
from guard.lab.lock import machine_lock  # noqa: E402
from guard.lab.netns import Netns, remove_stale  # noqa: E402

PREFIX, METER, SCRATCH = "ngc", "ngc_meter", "ngc_scratch"
FIXED = ("none", "full", "ingress-bare", "ack-first", "dropnew", "no-pickup", "banned",
         "banned-ingress", "ipt-nft", "ipt-nft-nocount", "ipt-legacy", "nocount")
WITHOUT = "without-"  # + a base chain
PICKUP_SIZE = "pickup-size-"  # + tcp_pickup.size
BARE_INGRESS = (f"add set inet {SCRATCH} m {{ type ipv4_addr; size 65536; }}; "
                f"add set inet {SCRATCH} b {{ type ipv4_addr; size 65536; flags timeout; }}; "
                f"add set inet {SCRATCH} a {{ type ipv4_addr; flags interval; }}; "
                f"add chain inet {SCRATCH} i {{ type filter hook ingress device {UPLINK} priority -500; }}; "
                f"add rule inet {SCRATCH} i ip saddr @m ip saddr != @a counter drop; "
                f"add rule inet {SCRATCH} i ip saddr @b ip saddr != @a counter drop")
BANNED_INGRESS = (f"add set inet {SCRATCH} b {{ type ipv4_addr; size 65536; flags timeout; "
                  f"elements = {{ {ATTACKER} }}; }}; "
                  f"add chain inet {SCRATCH} i {{ type filter hook ingress device {UPLINK} priority -500; }}; "
                  f"add rule inet {SCRATCH} i ip saddr @b counter drop")
DROP_NEW = (f"add chain inet {SCRATCH} p {{ type filter hook prerouting priority -185; }}; "
            f"add rule inet {SCRATCH} p iifname {UPLINK} tcp flags & (syn|rst) == 0 ct state new drop")


def softirq_jiffies(cpu: str | None) -> int:
    name = f"cpu{cpu}" if cpu is not None else "cpu"
    line = next(ln for ln in Path("/proc/stat").read_text().splitlines() if ln.split()[0] == name)
    return int(line.split()[7])


class Variants:
    def __init__(self, node: Netns, policy: dict, tmp: Path):
        self.node, self.base, self.tmp = node, policy, tmp

    def policy(self, v: str) -> Path:
        """The default policy, with the variant's own ``tcp_pickup``."""
        pol = {**self.base, "tcp_pickup": dict(self.base.get("tcp_pickup") or {})}
        if v == "no-pickup":
            pol["tcp_pickup"]["enabled"] = False
        elif v.startswith(PICKUP_SIZE):
            pol["tcp_pickup"]["size"] = int(v.removeprefix(PICKUP_SIZE))
        if v.startswith("ipt-"):
            pol.update(backend="iptables", iptables={"flavour": v.split("-")[1]})
        if v.endswith("nocount"):
            pol["sampler"] = {**pol["sampler"], "count_sources": 0}
        path = self.tmp / "policy.yaml"
        path.write_text(yaml.safe_dump(pol, sort_keys=False))
        return path

    def install(self, v: str) -> None:
        if v == "none":
            return
        if v == "ingress-bare":
            self.node.run(["nft", f"add table inet {SCRATCH}; {BARE_INGRESS}"])
            return
        nodeguard(self.node, "apply", "-c", str(self.policy(v)))
        if v == "dropnew":
            self.node.run(["nft", f"add table inet {SCRATCH}; {DROP_NEW}"])
        if v == "banned-ingress":
            self.node.run(["nft", f"add table inet {SCRATCH}; {BANNED_INGRESS}"])
        if v == "banned":
            nodeguard(self.node, "ban", ATTACKER)
        if v == "ack-first":  # index 1: after the interface check
            self.node.run(["nft", "insert rule inet nodeguard filter-conntrack index 1 "
                                  "tcp flags & (syn|rst) == 0 ct state new,invalid return"])
        if v.startswith(WITHOUT):
            base = [o["chain"]["name"] for o in json.loads(self.node.run(
                ["nft", "-j", "list", "table", "inet", "nodeguard"]).stdout)["nftables"]
                if "chain" in o and "hook" in o["chain"]]
            chain = v.removeprefix(WITHOUT)
            gone = [c for c in base if c == chain]
            if not gone:
                raise SystemExit(f"{v}: no such base chain (there are: {', '.join(base)})")
        else:
            gone = []
        for c in gone:
            self.node.run(["nft", "delete", "chain", "inet", "nodeguard", c])

    def remove(self, v: str) -> None:
        if v in ("ingress-bare", "dropnew", "banned-ingress"):
            self.node.run(["nft", "delete", "table", "inet", SCRATCH])
        if v == "banned":
            nodeguard(self.node, "unban", ATTACKER)
        if v not in ("none", "ingress-bare"):
            nodeguard(self.node, "uninstall")
        self.node.run(["conntrack", "-F"], check=False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", default="ack-spoofed-nodeport", choices=list(SCENARIOS))
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=3.0, help="measured seconds of each flood")
    ap.add_argument("--pin", default=None, help="the CPU hping3 runs on and whose softirq time is read")
    ap.add_argument("variants", nargs="+",
                    help=f"{', '.join(FIXED)}, {WITHOUT}<base chain> or {PICKUP_SIZE}<entries>")
    args = ap.parse_args()
    bad = [v for v in args.variants if v not in FIXED and not v.startswith(WITHOUT)
           and not (v.startswith(PICKUP_SIZE) and v.removeprefix(PICKUP_SIZE).isdigit())]
    if bad:
        print(f"unknown variant {bad[0]!r}", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("bench/chains.py needs root (network namespaces)", file=sys.stderr)
        return 2
    _what, hping, counter, _port = SCENARIOS[args.scenario]
    tmp = Path(tempfile.mkdtemp(prefix="nodeguard-chains-"))
    add_data_dir(tmp)
    pol = yaml.safe_load((ROOT / "rules" / "default.yaml").read_text())
    pol["sampler"]["log"], pol["watcher"]["state_file"] = str(tmp / "attacks.jsonl"), str(tmp / "watch.json")
    res: dict[str, list[float]] = {v: [] for v in args.variants}
    pin = ["taskset", "-c", args.pin] if args.pin is not None else []
    with machine_lock(print), labmod.signals_unwind():
        remove_stale(PREFIX)
        lab = Lab(PREFIX)
        try:
            topo = labmod.build_node_lab(lab, COUNTERS, METER)
            variants = Variants(topo.node, pol, tmp)

            def arrived() -> int:
                return labmod.parse_counters(topo.node.run(["nft", "-j", "list", "table", "netdev", METER]).stdout
                                             ).get(counter, 0)

            for rep in range(args.reps):
                k = rep % len(args.variants)
                for v in args.variants[k:] + args.variants[:k]:
                    variants.install(v)
                    try:
                        flood = lab.spawn(topo.attacker, [*pin, "hping3", "-q", "--flood", *hping],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                        time.sleep(0.5)
                        c0, s0, t0 = arrived(), softirq_jiffies(args.pin), time.monotonic()
                        time.sleep(args.seconds)
                        c1, s1, t1 = arrived(), softirq_jiffies(args.pin), time.monotonic()
                        lab.stop(flood, 2)
                    finally:
                        variants.remove(v)
                    us = (s1 - s0) * 1e6 / os.sysconf("SC_CLK_TCK") / max(1, c1 - c0)
                    res[v].append(us)
                    print(f"rep {rep} {v:<20} {(c1 - c0) / (t1 - t0):>9,.0f} pps  softirq {us:6.2f} us/pkt", flush=True)
        finally:
            lab.close()
    first = res[args.variants[0]]
    base = statistics.median(first)
    for v, xs in res.items():
        m = statistics.median(xs)
        paired = [x - b for x, b in zip(xs, first)]  # the same repetition: the same minute of a noisy machine
        print(f"{v:<20} {m:6.2f} us/pkt [{min(xs):.2f}-{max(xs):.2f}]  {100 * (m / base - 1):+6.1f} % against "
              f"{args.variants[0]}, paired {statistics.median(paired):+.2f}, costlier {sum(d > 0 for d in paired)}"
              f"/{len(xs)}  ({len(xs)} reps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
