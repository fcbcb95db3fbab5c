"""The defences the SYN bench compares, each installed into / removed from the lab's node namespace.

Mechanisms alone (item 1 of the study; the kube-proxy fixture is loaded in every case):
  syncookie-nft   notrack of SYN (prerouting -350) and of the server's SYN/ACK (output -350) to the
                  protected ports; the kernel's own syncookies answer the flood
  synproxy-nft    notrack of SYN (prerouting -350) + nft ``synproxy`` in an input chain (-160)
  synproxy-ipt    raw PREROUTING ``-j CT --notrack`` + filter INPUT ``-j SYNPROXY`` (iptables-nft)
Baselines:
  none            nothing
  handmade        filter INPUT/FORWARD: per-source hashlimit 200/s + global 2000/s on SYN (after conntrack)
  valve           nodeguard's default table as rendered today (guard.model + guard.render.nft)
The design (nodeguard table + splices) lives in bench/syndesign.py.
"""

from __future__ import annotations

from typing import ClassVar

from synlab import UPLINK, Lab

SYN = "tcp flags & (fin | syn | rst | ack) == syn"


def ports_set(ports) -> str:
    return "{ " + ", ".join(str(p) for p in ports) + " }"


def synproxy_stmt(family: int, wscale: int, timestamp: bool) -> str:
    mss = 1460 if family == 4 else 1440
    return f"synproxy mss {mss} wscale {wscale}{' timestamp' if timestamp else ''} sack-perm"


class Defence:
    name = "none"
    sysctls: ClassVar[dict] = {}

    def __init__(self, **kw):
        self.kw = kw

    def apply(self, lab: Lab) -> None:
        pass

    def remove(self, lab: Lab) -> None:
        lab.node.run("nft delete table inet ngs-mech", check=False)
        lab.node.run("nft delete table inet nodeguard", check=False)

    def set_sysctls(self, lab: Lab) -> None:
        base = {"net.netfilter.nf_conntrack_tcp_loose": 1}
        base.update(self.sysctls)
        base.update(self.kw.get("sysctls", {}))
        for k, v in base.items():
            lab.node.run(["sysctl", "-qw", f"{k}={v}"])


class SyncookieNft(Defence):
    name = "syncookie-nft"

    def apply(self, lab):
        ports = ports_set(self.kw.get("ports", [8080]))
        lab.node.nft(f"""
table inet ngs-mech {{
  chain pre {{ type filter hook prerouting priority -350; policy accept;
    iifname "{UPLINK}" fib daddr type local tcp dport {ports} {SYN} notrack
  }}
  chain out {{ type filter hook output priority -350; policy accept;
    oifname "{UPLINK}" tcp sport {ports} tcp flags & (fin | syn | rst | ack) == syn | ack notrack
  }}
}}""")


class SynproxyNft(Defence):
    name = "synproxy-nft"
    sysctls: ClassVar[dict] = {"net.netfilter.nf_conntrack_tcp_loose": 0}

    def apply(self, lab):
        ports = ports_set(self.kw.get("ports", [8080]))
        ws, ts = self.kw.get("wscale", 7), self.kw.get("timestamp", True)
        states = self.kw.get("states", "invalid, untracked")
        ack_only = self.kw.get("ack_match", "")
        lab.node.nft(f"""
table inet ngs-mech {{
  chain pre {{ type filter hook prerouting priority -350; policy accept;
    iifname "{UPLINK}" fib daddr type local tcp dport {ports} {SYN} notrack
  }}
  chain in {{ type filter hook input priority {self.kw.get('prio', -160)}; policy accept;
    iifname != "{UPLINK}" return
    meta nfproto ipv4 tcp dport {ports} ct state {states} {ack_only} {synproxy_stmt(4, ws, ts)}
    meta nfproto ipv6 tcp dport {ports} ct state {states} {ack_only} {synproxy_stmt(6, ws, ts)}
    tcp dport {ports} ct state invalid drop
  }}
}}""")


class IptRules(Defence):
    """A defence made of iptables commands (``rules()``: each an ``-I`` insert); removal deletes each."""

    def rules(self) -> list[list[str]]:
        raise NotImplementedError

    def apply(self, lab):
        for r in self.rules():
            lab.node.run(r)

    def remove(self, lab):
        super().remove(lab)
        for r in self.rules():
            d = list(r)
            i = d.index("-I")
            del d[i + 2]  # the position
            d[i] = "-D"
            lab.node.run(d, check=False)


class SynproxyIpt(IptRules):
    name = "synproxy-ipt"
    sysctls: ClassVar[dict] = {"net.netfilter.nf_conntrack_tcp_loose": 0}

    def rules(self):
        ports = ",".join(str(p) for p in self.kw.get("ports", [8080]))
        ws, ts = self.kw.get("wscale", 7), self.kw.get("timestamp", True)
        out = []
        for tool, mss in (("iptables-nft", 1460), ("ip6tables-nft", 1440)):
            out += [
                [tool, "-t", "raw", "-I", "PREROUTING", "1", "-i", UPLINK, "-p", "tcp", "-m", "multiport", "--dports", ports,
                 "--syn", "-m", "comment", "--comment", "ngs-mech", "-j", "CT", "--notrack"],
                [tool, "-t", "filter", "-I", "INPUT", "1", "-i", UPLINK, "-p", "tcp", "-m", "multiport", "--dports", ports,
                 "-m", "conntrack", "--ctstate", "INVALID,UNTRACKED", "-m", "comment", "--comment", "ngs-mech",
                 "-j", "SYNPROXY", "--sack-perm", *(["--timestamp"] if ts else []), "--wscale", str(ws), "--mss", str(mss)],
                [tool, "-t", "filter", "-I", "INPUT", "2", "-i", UPLINK, "-p", "tcp", "-m", "multiport", "--dports", ports,
                 "-m", "conntrack", "--ctstate", "INVALID", "-m", "comment", "--comment", "ngs-mech", "-j", "DROP"],
            ]
        return out



class Handmade(IptRules):
    """What an operator would write by hand: SYN limits in filter INPUT/FORWARD (after conntrack)."""

    name = "handmade"

    def rules(self):
        out = []
        for tool, mask in (("iptables-nft", 32), ("ip6tables-nft", 64)):
            for chain in ("INPUT", "FORWARD"):
                out += [
                    [tool, "-I", chain, "1", "-p", "tcp", "--syn", "-m", "hashlimit", "--hashlimit-above", "200/sec",
                     "--hashlimit-burst", "400", "--hashlimit-mode", "srcip", "--hashlimit-srcmask", str(mask),
                     "--hashlimit-name", f"ngs-src{mask}", "-m", "comment", "--comment", "ngs-hand", "-j", "DROP"],
                    [tool, "-I", chain, "2", "-p", "tcp", "--syn", "-m", "hashlimit", "--hashlimit-above", "2000/sec",
                     "--hashlimit-burst", "4000", "--hashlimit-name", f"ngs-all{mask}", "-m", "comment", "--comment",
                     "ngs-hand", "-j", "DROP"],
                ]
        return out

