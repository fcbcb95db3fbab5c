"""Bulk throughput through a SYNPROXY-protected port over a 50 ms RTT path (docs/syn-defence.md, item 2).

    PYTHONPATH=. .venv/bin/python bench/syntput.py [--runs 3] [--seconds 10] [--rate 100mbit] [--rtt 50]

ngs-<id>-tcli --veth-- ngs-<id>-trtr (delay line: bench/_delayline.py, RTT/2 each way; tbf at --rate
towards the server) --veth-- ngs-<id>-tnode (kube-proxy NAT fixture loaded: conntrack on; iperf3 -s
on 5201). The kernel has no sch_netem, hence the TUN delay line. For each defence: ``iperf3 -t
SECONDS`` upload (client -> server) and download (-R); the figure is iperf3's receiver-side rate.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from synlab import BENCH, FIXTURE, PY, Ns, kernel_lock, sh

SYN = "tcp flags & (fin | syn | rst | ack) == syn"
CLI, RC, RN, NODE = "10.89.1.2", "10.89.1.1", "10.89.2.1", "10.89.2.2"
PORT = 5201


def synproxy(wscale: int | None, timestamp: bool, states="invalid, untracked") -> str | None:
    if wscale is None:
        return None
    return f"""table inet ngs-tput {{
  chain pre {{ type filter hook prerouting priority -350; policy accept;
    iifname "tpn" fib daddr type local tcp dport {PORT} {SYN} notrack
  }}
  chain in {{ type filter hook input priority -160; policy accept;
    iifname != "tpn" return
    tcp dport {PORT} ct state {states} synproxy mss 1460 wscale {wscale}{' timestamp' if timestamp else ''} sack-perm
    tcp dport {PORT} ct state invalid drop
  }}
}}"""


# nodeguard's default for an engaged host port: the SYN untracked, the listener answers; tcp_syncookies=2
# makes it answer every SYN with a cookie, as it does once a flood has overflowed its queue
SYNCOOKIES = f"""table inet ngs-tput {{
  chain pre {{ type filter hook prerouting priority -350; policy accept;
    iifname "tpn" fib daddr type local tcp dport {PORT} {SYN} notrack
  }}
}}"""


def _interrupt(*_):
    raise KeyboardInterrupt


def main() -> int:
    import signal
    signal.signal(signal.SIGINT, _interrupt)  # also when started in the background (SIGINT ignored there)
    signal.signal(signal.SIGTERM, _interrupt)  # the lab's namespaces are deleted on the way out
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rate", default="100mbit")
    ap.add_argument("--rtt", type=float, default=50)
    ap.add_argument("--check", action="store_true", help="functional check only: 2 s, 10mbit, no lock, no figures")
    ap.add_argument("--only", help="only the defences whose label contains this (and none)")
    args = ap.parse_args()
    if args.check:
        args.runs, args.seconds, args.rate = 1, 2, "10mbit"
    tag = str(os.getpid())
    cli, rtr, node = Ns(f"ngs-{tag}-tcli"), Ns(f"ngs-{tag}-trtr"), Ns(f"ngs-{tag}-tnode")
    procs = []
    try:
        for ns in (cli, rtr, node):
            sh(["ip", "netns", "add", ns.name])
            ns.run("ip link set lo up")
        sh(["ip", "link", "add", "tpc", "netns", cli.name, "type", "veth", "peer", "name", "tpcr", "netns", rtr.name])
        sh(["ip", "link", "add", "tpn", "netns", node.name, "type", "veth", "peer", "name", "tpnr", "netns", rtr.name])
        cli.run(f"ip addr add {CLI}/24 dev tpc")
        cli.run("ip link set tpc up")
        cli.run(f"ip route add default via {RC}")
        node.run(f"ip addr add {NODE}/24 dev tpn")
        node.run("ip link set tpn up")
        node.run(f"ip route add default via {RN}")
        rtr.run(f"ip addr add {RC}/24 dev tpcr")
        rtr.run(f"ip addr add {RN}/24 dev tpnr")
        for dev in ("tpcr", "tpnr"):
            rtr.run(f"ip link set {dev} up")
        rtr.run(["sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0",
                 "net.ipv4.conf.default.rp_filter=0"])
        dl = rtr.popen([PY, str(BENCH / "_delayline.py"), "ngs-tun0", "ngs-tun1", str(args.rtt / 2)])
        procs.append(dl)
        assert dl.stdout.readline().strip() == "ready", dl.stderr.read()
        for t, table, iif in (("ngs-tun0", 100, "tpcr"), ("ngs-tun1", 101, "tpnr")):
            rtr.run(f"ip link set {t} up")
            rtr.run(["sysctl", "-qw", f"net.ipv4.conf.{t}.rp_filter=0"])
            rtr.run(f"ip route add default dev {t} table {table}")
            rtr.run(f"ip rule add iif {iif} lookup {table}")
        # the bottleneck: a token bucket towards the server, and one towards the client
        for dev in ("tpnr", "tpcr"):
            rtr.run(f"tc qdisc add dev {dev} root tbf rate {args.rate} burst 64kb latency 200ms")
        node.run(["iptables-nft-restore"], input=FIXTURE.read_text())
        rmem = int(node.read("/proc/sys/net/ipv4/tcp_rmem").split()[2])
        ws = max(0, min(14, rmem.bit_length() - 1 - 15))
        srv = node.popen(["iperf3", "-s", "-p", str(PORT)], stdout=subprocess_devnull())
        procs.append(srv)
        time.sleep(0.5)
        rtt = cli.run(["ping", "-c", "5", "-i", "0.2", NODE]).stdout.strip().splitlines()[-1]
        print(f"# path: {rtt}; tbf {args.rate}; server wscale {ws}", flush=True)
        defences = [
            ("none", None),
            ("untracked SYN, kernel syncookies always (tcp_syncookies=2)", SYNCOOKIES),
            (f"synproxy wscale {ws} timestamp", synproxy(ws, True)),
            (f"synproxy wscale {ws} no timestamp", synproxy(ws, False)),
            (f"synproxy wscale 7 timestamp (server {ws}: too small)", synproxy(7, True)),
            (f"synproxy wscale 14 timestamp (server {ws}: too big)", synproxy(14, True)),
            (f"synproxy wscale {ws} timestamp, loose=1 + ct state new", synproxy(ws, True, "invalid, untracked, new")),
        ]
        results: dict[tuple[str, str], list[float]] = {}
        if args.check:
            defences = defences[:2]
        if args.only:
            defences = [d for d in defences if d[0] == "none" or args.only in d[0]]
        with (nullcontext() if args.check else kernel_lock()):
            for run in range(args.runs):
                for label, rules in defences:
                    node.run("nft delete table inet ngs-tput", check=False)
                    loose = 1 if rules is None or "new" in rules or rules is SYNCOOKIES else 0
                    node.run(["sysctl", "-qw", f"net.netfilter.nf_conntrack_tcp_loose={loose}"])
                    node.run(["sysctl", "-qw", f"net.ipv4.tcp_syncookies={2 if rules is SYNCOOKIES else 1}"])
                    if rules:
                        node.nft(rules)
                    for direction in ("upload", "download"):
                        cmd = ["iperf3", "-c", NODE, "-p", str(PORT), "-t", str(args.seconds), "-J"]
                        if direction == "download":
                            cmd.append("-R")
                        res = cli.run(cmd, check=False, timeout=args.seconds + 30)
                        try:
                            mbps = json.loads(res.stdout)["end"]["sum_received"]["bits_per_second"] / 1e6
                        except (KeyError, ValueError):
                            mbps = 0.0
                        results.setdefault((label, direction), []).append(mbps)
                        print(json.dumps({"run": run, "defence": label, "direction": direction,
                                          "mbit_s": round(mbps, 2)}), flush=True)
        print(f"\n{'defence':55} {'direction':9} {'Mbit/s median [min-max]':28} {'vs none':8}")
        for (label, direction), vals in results.items():
            base = statistics.median(results[("none", direction)])
            med = statistics.median(vals)
            print(f"{label:55} {direction:9} {med:8.1f} [{min(vals):.1f}-{max(vals):.1f}]{'':8} {med / base:6.2f}")
    finally:
        for p in procs:
            p.kill()
            p.wait()
        for ns in (cli, rtr, node):
            sh(["ip", "netns", "del", ns.name], check=False)
    return 0


def subprocess_devnull():
    import subprocess
    return subprocess.DEVNULL


if __name__ == "__main__":
    sys.exit(main())
