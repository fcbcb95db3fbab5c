"""SYN-flood defences measured side by side in one run (see docs/syn-defence.md).

    PYTHONPATH=. .venv/bin/python bench/synflood.py [--quick] [--runs N] [--parts mech,policy,ctvalve] [--json FILE]

Builds the lab (bench/synlab.py: node namespace with the kube-proxy NAT fixture, attacker/client
namespace, backend pod behind NodePort 3003), then for every scenario: installs one defence, floods
the host port (8080) or the NodePort with spoofed SYNs (IPv4: ``hping3 -S --flood --rand-source``;
IPv6: bench/synflood_gen.c at 150 kpps, as hping3 has no IPv6), and meanwhile a legitimate client
starts 50 connections 0.14 s apart, each with 1 s for connect + echo. ``new`` = a source address added
for that scenario that never sent anything; ``returning`` = completed one handshake just before.

Columns: ok/of, p50/p99 connect latency (successes), conntrack count at the end of the flood and its
peak (polled every 50 ms), attack packets that arrived (netdev ingress counter on the node's uplink)
and their rate, softirq CPU per arrived attack packet (delta of /proc/stat softirq, all CPUs, over the
flood), and that figure relative to the hand-made chains of the same family and target in the same run.

Parts: ``mech`` compares the host-port mechanisms alone (syncookies vs nft/iptables SYNPROXY);
``policy`` compares none / hand-made / nodeguard today / the design on host port and NodePort;
``ctvalve`` the conntrack-aware valve on the NodePort. Everything runs under the machine-wide
flood lock (/tmp/nodeguard-kernel-tests.lock). Namespaces are deleted at the end, even on error.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from syndefs import Defence, Handmade, SyncookieNft, SynproxyIpt, SynproxyNft
from syndesign import Design, Nodeguard, server_wscale
from synlab import CtMonitor, Lab, kernel_lock, median_spread, run_flood, settle


def scenarios(args, lab: Lab):
    ws = server_wscale(lab)
    out = []  # (label, defence factory, family, target, client, monitor args)
    if "mech" in args.parts:
        mech = [
            ("none", lambda: Defence()),
            ("handmade", lambda: Handmade()),
            ("syncookie-nft", lambda: SyncookieNft()),
            ("synproxy-nft", lambda: SynproxyNft(wscale=ws)),
            ("synproxy-nft-loose1", lambda: SynproxyNft(wscale=ws, states="invalid, untracked, new")),
            ("synproxy-ipt", lambda: SynproxyIpt(wscale=ws)),
        ]
        fams = (4,) if args.quick else (4, 6)
        for fam in fams:
            for label, make in mech:
                if args.quick and label in ("synproxy-nft-loose1", "synproxy-ipt", "handmade"):
                    continue
                out.append((f"mech {label}", make, fam, "host", "new", None))
    if "policy" in args.parts:
        pol = [
            ("none", lambda: Defence()),
            ("handmade", lambda: Handmade()),
            ("valve (today)", lambda: Nodeguard()),
            ("design", lambda: Design(ports=[8080, 3003], wscale=ws)),
        ]
        for target in ("host", "nodeport"):
            for client in (("new",) if args.quick else ("new", "returning")):
                for label, make in pol:
                    if args.quick and label == "handmade":
                        continue
                    out.append((f"policy {label}", make, 4, target, client, None))
        if not args.quick:
            for label, make in pol:
                out.append((f"policy {label}", make, 6, "host", "new", None))
    if "ctvalve" in args.parts:
        # Engage at 15 % of nf_conntrack_max: a masqueraded NodePort runs out of SNAT source ports
        # (64k per backend) at 25 % of this node's max, long before 50 % (measured: "none" stops at 65,536).
        on, rate = args.valve_on, args.valve_rate
        mon = ["--on", str(on), "--off", str(on * 0.75), "--hold", "5"]
        for client in (("new",) if args.quick else ("new", "returning")):
            out.append(("ctvalve none", lambda: Defence(), 4, "nodeport", client, None))
            out.append(("ctvalve valve (today)", lambda: Nodeguard(), 4, "nodeport", client, None))
            out.append((f"ctvalve ct-aware {rate}/s at {on:.0%}",
                        lambda r=rate: Design(ports=[], ctvalve=True, valve_rate=r), 4, "nodeport", client, mon))
    return out


def _interrupt(*_):
    raise KeyboardInterrupt


def main() -> int:
    import signal
    signal.signal(signal.SIGINT, _interrupt)  # also when started in the background (SIGINT ignored there)
    signal.signal(signal.SIGTERM, _interrupt)  # the lab's namespaces are deleted on the way out
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one run, IPv4, fewer defences, 6 s floods (< 2 min)")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--parts", default="mech,policy,ctvalve")
    ap.add_argument("--seconds", type=float, default=9.0)
    ap.add_argument("--pps6", type=int, default=150000, help="IPv6 generator rate")
    ap.add_argument("--tool4", choices=("hping3", "gen"), default="hping3",
                    help="IPv4 flood tool; gen = bench/synflood_gen.c at --pps4 (same tool as IPv6)")
    ap.add_argument("--pps4", type=int, default=150000)
    ap.add_argument("--valve-on", type=float, default=0.15, help="ct-aware valve: engage at this fill of nf_conntrack_max")
    ap.add_argument("--valve-rate", type=int, default=500,
                    help="ct-aware valve: SYN/s while engaged; rate x syn_recv timeout (60 s) must fit the headroom")
    ap.add_argument("--json", help="append every result as a JSON line to this file")
    args = ap.parse_args()
    args.parts = args.parts.split(",")
    if args.quick:
        args.runs, args.seconds = 1, 6.0
    count, spacing = (35, 0.13) if args.quick else (50, 0.14)
    results = defaultdict(list)
    started, waited = time.monotonic(), 0.0
    with Lab() as lab:
        lab.install_counter()
        plan = scenarios(args, lab)
        print(f"# {len(plan)} scenarios x {args.runs} run(s); server wscale {server_wscale(lab)}; "
              f"nf_conntrack_max {lab.ct_max()}", flush=True)
        waited = time.monotonic()
        with kernel_lock():
            waited = time.monotonic() - waited
            for run in range(args.runs):
                for label, make, fam, target, client, mon in plan:
                    d = make()
                    settle(lab)
                    d.set_sysctls(lab)
                    d.apply(lab)
                    try:
                        monitor = CtMonitor(lab, mon) if mon else CtMonitor(lab)
                        r = run_flood(lab, family=fam, target=target, client=client, defence=label,
                                      seconds=args.seconds,
                                      pps=(args.pps4 if args.tool4 == "gen" else 0) if fam == 4 else args.pps6,
                                      tool=args.tool4 if fam == 4 else "gen",
                                      count=count, spacing=spacing, monitor=monitor)
                    finally:
                        d.remove(lab)
                    row = r.row()
                    row["run"] = run
                    results[(label, fam, target, client)].append(row)
                    print(json.dumps(row), flush=True)
                    if args.json:
                        with open(args.json, "a") as f:
                            f.write(json.dumps(row) + "\n")
    print_table(results)
    print(f"# total {time.monotonic() - started - waited:.0f} s, plus {waited:.0f} s waiting for the flood lock")
    return 0


def print_table(results) -> None:
    """Medians [min-max] over the runs; rows measured while someone else's flood ran are left out."""
    dirty = sum(1 for rows in results.values() for r in rows if r.get("foreign_floods"))
    results = {k: [r for r in rows if not r.get("foreign_floods")] or rows for k, rows in results.items()}
    if dirty:
        print(f"# {dirty} result(s) measured while a flood outside this lab ran were left out "
              "(kept only where no clean run exists)")
    base = {}
    for (label, fam, target, client), rows in results.items():
        if label.endswith("handmade"):
            base[(label.split()[0], fam, target, client)] = statistics.median(r["us_per_pkt"] for r in rows if r["us_per_pkt"])
    hdr = f"{'scenario':34} {'n':2} {'fam':3} {'target':8} {'client':9} {'ok/of':14} {'p50 ms':12} {'p99 ms':12} " \
          f"{'ct end':22} {'ct peak':22} {'kpps':18} {'us/pkt':18} {'vs hand':6}"
    print("\n" + hdr + "\n" + "-" * len(hdr))
    for (label, fam, target, client), rows in results.items():
        us = [r["us_per_pkt"] for r in rows]
        b = base.get((label.split()[0], fam, target, client)) or base.get(("mech", fam, target, client))
        ratio = f"{statistics.median([u for u in us if u]) / b:.2f}" if b and any(us) else "-"
        oks = [r["ok"] for r in rows]
        ok = f"{statistics.median(oks):g}/{rows[0]['of']}" + (f" [{min(oks)}-{max(oks)}]" if len(rows) > 1 else "")
        print(f"{label:34} {len(rows):<2} v{fam:<2} {target:8} {client:9} {ok:14} "
              f"{median_spread([r['p50_ms'] for r in rows]):12} {median_spread([r['p99_ms'] for r in rows]):12} "
              f"{median_spread([r['ct_end'] for r in rows]):22} {median_spread([r['ct_max'] for r in rows]):22} "
              f"{median_spread([r['kpps'] for r in rows]):18} {median_spread(us):18} {ratio:6}")


if __name__ == "__main__":
    sys.exit(main())
