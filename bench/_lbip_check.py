"""SYNPROXY in the forward hook for a non-local service IP (the fixture's externalIP 192.168.99.33:80,
DNAT'd by kube-proxy to 10.180.0.4/.5:80 and masqueraded). Functional check, no flood.

    PYTHONPATH=. .venv/bin/python bench/_lbip_check.py
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synlab import NODE4, Lab

LB = "192.168.99.33"
with Lab() as lab:
    lab.start_servers(); lab.install_counter()
    for a in ("10.180.0.4", "10.180.0.5"):
        lab.pod.run(f"ip addr add {a}/24 dev eth0")
    lab.net.run(f"ip route add {LB}/32 via {NODE4}")
    src = lab.new_client(4)
    print("no synproxy:", lab.connect(src, LB, 80, count=4, spacing=0.05, timeout=1))
    for loose, states in ((0, "invalid, untracked"),):
      for ts in (True, False):
        lab.node.run(f"sysctl -qw net.netfilter.nf_conntrack_tcp_loose={loose}")
        lab.node.run("conntrack -F", check=False)
        lab.node.nft(f"""table inet ngs-mech {{
  chain pre {{ type filter hook prerouting priority -350; policy accept;
    iifname "ngs-up" ip daddr {LB} tcp dport 80 tcp flags & (fin|syn|rst|ack) == syn notrack
  }}
  chain forward_sp {{ type filter hook forward priority -160; policy accept;
    iifname != "ngs-up" return
    ip daddr {LB} tcp dport 80 ct state {states} counter synproxy mss 1460 wscale 10 {'timestamp' if ts else ''} sack-perm
    ip daddr {LB} tcp dport 80 ct state invalid counter drop
  }}
}}""")
        src = lab.new_client(4)
        r = lab.connect(src, LB, 80, count=4, spacing=0.05, timeout=1)
        print(f"LB IP {LB} via synproxy in forward, loose={loose} ts={ts}:", r)
        print(lab.node.run("conntrack -L -p tcp --orig-dst " + LB).stdout[:500])
        print("\n".join(l.strip() for l in lab.node.run("nft list chain inet ngs-mech forward_sp").stdout.splitlines() if "counter" in l))
        lab.node.run("nft delete table inet ngs-mech")
