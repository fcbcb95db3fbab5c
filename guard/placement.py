"""Where nodeguard's base chains hook into the kernel, and why: the one table both renderers and
the probe read (kube-proxy's ``nftablesBaseChains`` idea). Nothing else repeats these numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Stage = Literal["stateless", "stateful", "synproxy"]

DEFRAG = -400  # NF_IP_PRI_CONNTRACK_DEFRAG: nothing may run before reassembly
CONNTRACK = -200  # NF_IP_PRI_CONNTRACK


@dataclass(frozen=True)
class Placement:
    stage: Stage
    nft_hook: str
    default_priority: int
    floor: int  # the lowest priority it may move to when a foreign chain undercuts it
    rivals_after: int | None  # only foreign chains above this priority compete (None: all of them)
    ipt_table: str
    ipt_builtins: tuple[str, ...]  # our jump is rule 1 of each
    why: str


PLACEMENTS: dict[str, Placement] = {
    "stateless": Placement(
        "stateless", "prerouting", -350, DEFRAG + 1, None, "raw", ("PREROUTING",),
        "after defrag (-400), before raw (-300) and conntrack (-200): floods are dropped before they "
        "create conntrack entries, and before every Kubernetes chain"),
    "stateful": Placement(
        "stateful", "prerouting", -190, CONNTRACK + 1, CONNTRACK, "mangle", ("PREROUTING",),
        "after conntrack (-200: ct count and the handshake check need it), before mangle (-150), "
        "kube-proxy's nftables chains (-110) and DNAT (-100), so ports are the ones clients asked for; "
        "iptables: mangle PREROUTING, which runs before nat PREROUTING's DNAT"),
    "synproxy": Placement(
        "synproxy", "input", -160, CONNTRACK + 1, CONNTRACK, "filter", ("INPUT",),
        "after conntrack (SYNPROXY needs the connection state), before mangle (-150), kube-proxy's and "
        "iptables' filter chains (0) and Calico, any of which may drop 'ct state invalid' first; "
        "iptables: SYNPROXY is a filter target, rule 1 of filter INPUT"),
}
