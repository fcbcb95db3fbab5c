"""Why SYNPROXY's ``timestamp`` option seemed to break connections, and what makes it work (docs/syn-defence.md, item 2).

    PYTHONPATH=. .venv/bin/python bench/syn_timestamps.py

Each line: one configuration, connects from a brand-new client to the host port (8080) or the
NodePort (3003), quiet and/or during a short spoofed flood (under the flood lock).
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from syndefs import SynproxyNft
from synlab import (
    HOST_PORT,
    NODE4,
    NODE6,
    NODE_PORT,
    Lab,
    flood_cmd,
    kernel_lock,
    settle,
)

SYN = "tcp flags & (fin | syn | rst | ack) == syn"


def custom(pre: str, inp: str, out: str = "") -> str:
    o = f"\n  chain out {{ type filter hook output priority -350; policy accept;\n    {out}\n  }}" if out else ""
    return f"""table inet ngs-mech {{
  chain pre {{ type filter hook prerouting priority -350; policy accept;
    {pre}
  }}{o}
  chain in {{ type filter hook input priority -160; policy accept;
    {inp}
  }}
}}"""


def connect(lab, fam=4, port=HOST_PORT, n=5):
    src = lab.new_client(fam)
    return lab.connect(src, NODE4 if fam == 4 else NODE6, port, count=n, spacing=0.05, timeout=1)["ok"]


def main() -> int:
    def _interrupt(*_):
        raise KeyboardInterrupt
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    with Lab() as lab:
        lab.install_counter()

        def run(label, defence=None, script=None, sysctls=None, fam=4, port=HOST_PORT, n=5):
            settle(lab)
            for k, v in {"net.netfilter.nf_conntrack_tcp_loose": 0, "net.ipv4.tcp_timestamps": 1, **(sysctls or {})}.items():
                lab.node.run(["sysctl", "-qw", f"{k}={v}"])
            if defence:
                defence.apply(lab)
            if script:
                lab.node.nft(script)
            ok = connect(lab, fam, port, n)
            lab.node.run("nft delete table inet ngs-mech", check=False)
            print(f"{ok}/{n}  {label}", flush=True)

        print("## correct rules (notrack SYN from the uplink only; synproxy before 'ct state invalid drop'), no flood")
        for ws in (7, 10, 14):
            for ts in (False, True):
                for fam in (4, 6):
                    run(f"v{fam} wscale {ws} timestamp={ts}", SynproxyNft(wscale=ws, timestamp=ts), fam=fam)
        for node_ts in (0, 2):
            run(f"node tcp_timestamps={node_ts}, timestamp=True", SynproxyNft(wscale=10), sysctls={"net.ipv4.tcp_timestamps": node_ts})
        lab.net.run("sysctl -qw net.ipv4.tcp_timestamps=0")
        run("client tcp_timestamps=0, timestamp=True", SynproxyNft(wscale=10))
        lab.net.run("sysctl -qw net.ipv4.tcp_timestamps=1")

        print("## rule mistakes (each breaks timestamp and no-timestamp alike)")
        sp = "tcp dport 8080 ct state invalid,untracked synproxy mss 1460 wscale 10 {ts} sack-perm"
        for ts in ("", "timestamp"):
            run(f"server SYN/ACK notracked in output, timestamp={bool(ts)}",
                script=custom(f'iifname "ngs-up" tcp dport 8080 {SYN} notrack', sp.format(ts=ts) + "\n    tcp dport 8080 ct state invalid drop",
                              out="tcp sport 8080 tcp flags & (syn | ack) == syn | ack notrack"))
            run(f"'ct state invalid drop' before synproxy, timestamp={bool(ts)}",
                script=custom(f'iifname "ngs-up" tcp dport 8080 {SYN} notrack', "tcp dport 8080 ct state invalid drop\n    " + sp.format(ts=ts)))
            run(f"nf_conntrack_tcp_loose=1 in the node namespace, timestamp={bool(ts)}",
                SynproxyNft(wscale=10, timestamp=bool(ts)), sysctls={"net.netfilter.nf_conntrack_tcp_loose": 1})
            run(f"loose=1 with 'ct state invalid,untracked,new', timestamp={bool(ts)}",
                SynproxyNft(wscale=10, timestamp=bool(ts), states="invalid, untracked, new"),
                sysctls={"net.netfilter.nf_conntrack_tcp_loose": 1})

        print("## the timestamp-only failure: loose=1 (ACK never reaches SYNPROXY) after the listener overflowed")
        with kernel_lock():
            for tsmode in (1, 2):
                for ts in (False, True):
                    settle(lab)
                    lab.node.run(["sysctl", "-qw", f"net.ipv4.tcp_timestamps={tsmode}", "net.netfilter.nf_conntrack_tcp_loose=1"])
                    lab.net.popen(flood_cmd(lab, 4, HOST_PORT, 2)).wait()  # unprotected: the listener overflows
                    lab.node.run("conntrack -F", check=False)
                    d = SynproxyNft(wscale=10, timestamp=ts)
                    d.apply(lab)
                    fl = lab.net.popen(flood_cmd(lab, 4, HOST_PORT, 4))
                    time.sleep(1)
                    src = lab.new_client(4)
                    r = lab.connect(src, NODE4, HOST_PORT, count=10, spacing=0.2, timeout=1)
                    fl.wait()
                    st = lab.node.run("nstat -az TcpExtSyncookiesRecv TcpExtSyncookiesFailed").stdout.split()
                    print(f"{r['ok']}/10  tcp_timestamps={tsmode} timestamp={ts}: loose=1, listener overflowed <2 min ago, "
                          f"during a flood; conntrack {lab.ct_count()}; {' '.join(st[-6:])}", flush=True)
                    d.remove(lab)

        print("## NodePort 3003 (kube-proxy DNAT) through SYNPROXY in the input hook")
        for loose, states in ((0, "invalid, untracked"), (1, "invalid, untracked, new")):
            for ts in (False, True):
                run(f"NodePort, loose={loose}, ct state {states}, timestamp={ts}",
                    SynproxyNft(ports=[8080, 3003], wscale=10, timestamp=ts, states=states),
                    sysctls={"net.netfilter.nf_conntrack_tcp_loose": loose}, port=NODE_PORT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
