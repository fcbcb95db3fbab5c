"""nodeguard's table as rendered today (guard.model + guard.render.nft), and the proposed design spliced into it.

Nothing in guard/ is changed: the table is rendered with the real code for the default policy
(interfaces: the lab's uplink; sampler on, nflog, as ``auto`` picks on this kernel), loaded with
``nft -j -f``, and for the design the few extra objects are inserted with ``nft`` commands by rule index.
The lead moves these into guard/model.py; docs/syn-defence.md lists the exact rules.

Design (all in table inet nodeguard):
  set synproxy-ports   { type inet_service; }                 host ports (+ NodePorts when loose=0)
  set syn-valve-on     { type inet_proto; }                   holds "tcp" while the valve is engaged
  counter syn-valve-drops
  filter-prerouting (-350), before "syn to syn-flood":
      fib daddr type local tcp dport @synproxy-ports tcp flags & (fin|syn|rst|ack) == syn notrack
  syn-flood, before the backstop:
      ct state untracked return                                synproxy answers these: no valve
      [ctvalve] the backstop only while engaged: meta l4proto @syn-valve-on limit rate over R ...
  synproxy-input (hook input, priority -160):
      iifname != { uplinks } return
      meta nfproto ipv4 tcp dport @synproxy-ports ct state <states> synproxy mss 1460 wscale W timestamp sack-perm
      meta nfproto ipv6 tcp dport @synproxy-ports ct state <states> synproxy mss 1440 wscale W timestamp sack-perm
      tcp dport @synproxy-ports ct state invalid drop
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

from syndefs import Defence
from synlab import ROOT, UPLINK, Lab


def render_nodeguard(interfaces=(UPLINK,), extra_yaml: str = "") -> list[dict]:
    from guard import model
    from guard.policy import parse_policy
    from guard.render import nft as render_nft

    text = (ROOT / "rules" / "default.yaml").read_text()
    if extra_yaml:  # replace top-level keys of the default policy
        import yaml
        data = yaml.safe_load(text)
        data.update(yaml.safe_load(extra_yaml))
        text = yaml.safe_dump(data)
    policy = parse_policy(text, "default.yaml")
    cfg = policy.sampler
    sampling = model.Sampling("nflog", cfg.rate, cfg.global_rate, cfg.nflog_group, cfg.queue_base, cfg.snaplen)
    rs = model.build_ruleset(policy, tuple(interfaces), model.Priorities(), sampling)
    return render_nft.replace_table(rs)["nftables"]


def rule_index(tx: list[dict], chain: str, label_suffix: str) -> int:
    rules = [c["add"]["rule"] for c in tx if "add" in c and "rule" in c["add"] and c["add"]["rule"]["chain"] == chain]
    for i, r in enumerate(rules):
        if r["comment"].endswith(label_suffix):
            return i
    raise KeyError(label_suffix)


def server_wscale(lab: Lab) -> int:
    """The window scale the node's TCP stack picks (tcp_select_initial_window): ilog2(max(tcp_rmem[2],
    rmem_max)) - 15, clamped to 0..14. SYNPROXY must announce exactly this: it does not rewrite windows."""
    rmem = int(lab.node.read("/proc/sys/net/ipv4/tcp_rmem").split()[2])
    rmax = int(lab.node.read("/proc/sys/net/core/rmem_max"))
    return max(0, min(14, int(math.log2(max(rmem, rmax))) - 15))


class Nodeguard(Defence):
    """nodeguard's default table, as today ("valve-only")."""

    name = "valve"

    def apply(self, lab):
        tx = render_nodeguard(extra_yaml=self.kw.get("policy", ""))
        self.load(lab, tx)

    def load(self, lab, tx):
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump({"nftables": tx}, f)
        try:
            lab.node.run(["nft", "-j", "-f", f.name])
        finally:
            Path(f.name).unlink()


class Design(Nodeguard):
    """nodeguard + SYNPROXY on ``ports`` (+ optionally the conntrack-aware valve instead of the always-on one).

    ``states``: "invalid, untracked" with nf_conntrack_tcp_loose=0 (host ports and NodePorts), or
    "invalid, untracked, new" with loose left at 1 (host ports only: a NodePort's third ACK would be
    DNAT'd to the pod before the input hook).
    """

    name = "design"

    def __init__(self, **kw):
        super().__init__(**kw)
        if kw.get("ports", [8080]) and kw.get("states", "invalid, untracked") == "invalid, untracked":
            self.sysctls = {"net.netfilter.nf_conntrack_tcp_loose": 0}

    def commands(self, lab, tx) -> str:
        ports = self.kw.get("ports", [8080])
        ws = self.kw.get("wscale") or server_wscale(lab)
        ts = " timestamp" if self.kw.get("timestamp", True) else ""
        states = self.kw.get("states", "invalid, untracked")
        t = "inet nodeguard"
        out = []
        if ports:
            out += [f"add set {t} synproxy-ports {{ type inet_service; elements = {{ {', '.join(map(str, ports))} }}; }}"]
            i = rule_index(tx, "filter-prerouting", "syn to syn-flood")
            out.append(f"insert rule {t} filter-prerouting index {i} fib daddr type local tcp dport @synproxy-ports "
                       f"tcp flags & (fin | syn | rst | ack) == syn counter notrack comment \"synproxy: SYN not tracked\"")
            j = rule_index(tx, "syn-flood", "syn-flood backstop")
            out.append(f"insert rule {t} syn-flood index {j} ct state untracked counter return "
                       f"comment \"synproxy ports skip the valve\"")
            out += [
                f"add chain {t} synproxy-input {{ type filter hook input priority -160; policy accept; }}",
                f"add rule {t} synproxy-input iifname != {{ \"{UPLINK}\" }} return",
                *([(f"add rule {t} synproxy-input meta nfproto ipv4 tcp dport {{ {', '.join(map(str, cl[0]))} }} "
                    f"tcp flags & (fin | syn | rst | ack) == ack ct state invalid add @conn-0-v4 {{ ip saddr ct count over {cl[1]} }} "
                    f"counter drop comment \"connlimit before SYNPROXY (loose=0)\"")]
                  if (cl := self.kw.get("connlimit_input")) else []),
                (f"add rule {t} synproxy-input meta nfproto ipv4 tcp dport @synproxy-ports ct state {states} counter "
                 f"synproxy mss 1460 wscale {ws}{ts} sack-perm"),
                (f"add rule {t} synproxy-input meta nfproto ipv6 tcp dport @synproxy-ports ct state {states} counter "
                 f"synproxy mss 1440 wscale {ws}{ts} sack-perm"),
                f"add rule {t} synproxy-input tcp dport @synproxy-ports ct state invalid counter drop",
            ]
        if self.kw.get("ctvalve"):
            rate = self.kw["valve_rate"]
            j = rule_index(tx, "syn-flood", "syn-flood backstop")
            out += [
                f"add set {t} syn-valve-on {{ type inet_proto; }}",
                f"add counter {t} syn-valve-drops",
                # replace the always-on backstop: same position, consults the switch first
                (f"replace rule {t} syn-flood handle BACKSTOP meta l4proto @syn-valve-on limit rate over {rate}/second "
                 f"burst {rate} packets counter name syn-valve-drops goto sample-syn-flood"),
            ]
        return "\n".join(out) + "\n"

    def apply(self, lab):
        tx = render_nodeguard(extra_yaml=self.kw.get("policy", ""))
        self.load(lab, tx)
        cmds = self.commands(lab, tx)
        if "BACKSTOP" in cmds:
            listing = json.loads(lab.node.run("nft -j -a list chain inet nodeguard syn-flood").stdout)["nftables"]
            handle = next(o["rule"]["handle"] for o in listing
                          if "rule" in o and o["rule"].get("comment", "").endswith("syn-flood backstop"))
            cmds = cmds.replace("handle BACKSTOP", f"handle {handle}")
        lab.node.nft(cmds)
