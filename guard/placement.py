"""Where nodeguard's base chains hook into the kernel, and why: the one table both renderers and
the probe read (kube-proxy's ``nftablesBaseChains`` idea). Nothing else repeats these numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Stage = Literal["stateless", "stateful", "input", "closed"]

DEFRAG = -400  # NF_IP_PRI_CONNTRACK_DEFRAG: nothing may run before reassembly
CONNTRACK = -200  # NF_IP_PRI_CONNTRACK
AFTER_IPVS = 200  # NF_IP_PRI_NAT_SRC (100) and IPVS's input hook (99) lie below; confirmation at INT_MAX above
NO_RIVALS = 2**31  # a stage that sits after the chains it could meet on purpose


@dataclass(frozen=True)
class Placement:
    stage: Stage
    nft_hook: str
    default_priority: int
    floor: int  # the lowest priority it may move to when a foreign chain undercuts it
    rivals_after: int | None  # only foreign chains above this priority compete (None: all of them)
    ipt_table: str
    ipt_builtins: tuple[str, ...]  # our jumps are rules 1..k of each, in render order
    why: str


PLACEMENTS: dict[str, Placement] = {
    "stateless": Placement(
        "stateless", "prerouting", -350, DEFRAG + 1, None, "raw", ("PREROUTING",),
        "after defrag (-400), before raw (-300) and conntrack (-200): banned sources and floods are "
        "dropped before they create conntrack entries, and before every Kubernetes chain. Bans are not "
        "checked at ingress: that hook cost every packet of a protected device more than the check "
        "saves (docs/design/hooks.md)"),
    "stateful": Placement(
        "stateful", "prerouting", -190, CONNTRACK + 1, CONNTRACK, "mangle", ("PREROUTING",),
        "after conntrack (-200: ct count and the handshake check need it), before mangle (-150), "
        "kube-proxy's nftables chains (-110) and DNAT (-100), so ports are the ones clients asked for; "
        "iptables: mangle PREROUTING, which runs before nat PREROUTING's DNAT"),
    "input": Placement(
        "input", "input", -160, CONNTRACK + 1, CONNTRACK, "filter", ("INPUT",),
        "SYNPROXY: after conntrack (SYNPROXY needs the connection state), before mangle (-150), "
        "kube-proxy's and iptables' filter chains (0) and Calico, any of which may drop 'ct state invalid' "
        "first; iptables: SYNPROXY is a filter target, rule 1 of filter INPUT"),
    "closed": Placement(
        "closed", "input", AFTER_IPVS, AFTER_IPVS, NO_RIVALS, "filter", ("INPUT",),
        "closed ports: after DNAT and after IPVS (input, 99: kube-proxy's IPVS mode takes a Service's "
        "packets there, addressed to the node or kube-ipvs0 and with no socket behind them), before "
        "conntrack confirms a new entry (a drop here leaves none behind). Deliberately after every "
        "filter chain: what one of them drops never comes here. iptables has no table after IPVS on "
        "input: filter INPUT, and no closed-port rules where IPVS is loaded (apply.make_plan)"),
}
