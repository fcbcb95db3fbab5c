"""The SYN defence's per-port part of the layout: the rules that engage a proxied port under a SYN
flood and leave its SYNs untracked (in ``syn-flood``), and, with ``forwarded``, the SYNPROXY rules on
input. Called by build_ruleset (build.py); why it is built so: docs/design/syn-defence.md."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .matches import CtState, DstPortInSet, EngagePort, Family, FibLocal, NoTrack, OverLimit, Proto, TcpFlags
from .plans import SynproxyPlan
from .ruleset import AddrSet, Rule
from .verdicts import CONTINUE, DROP, Synproxy

if TYPE_CHECKING:
    from .build import Builder

# a SYN alone (no FIN, RST or ACK): what goes to ``syn-flood``, hence all its notrack rule sees; the
# SYNPROXY rule takes the same mask
SYN_ONLY = TcpFlags(("fin", "syn", "rst", "ack"), ("syn",))


def synproxy_notrack(b: Builder, sp: SynproxyPlan) -> tuple[list[Rule], dict[int, AddrSet]]:
    """In ``syn-flood``, before conntrack and after the per-source meters: SYNPROXY engages on a
    proxied port of the node's own when the SYNs to proxied ports that the meters let through exceed
    ``engage_over`` (a spoofed or distributed flood; one source's flood is the meter's), and stays
    engaged ``hold_s`` after the last SYN over it; while engaged, a SYN to that port gets no conntrack
    entry. The listener answers it with the kernel's own syncookies once its queue overflows (host
    ports); with ``forwarded``, SYNPROXY answers it on input (a pod's listener is behind DNAT, which
    needs conntrack).

    Why the kernel's syncookies for host ports, not SYNPROXY: with a port engaged, 1,000 connects with no
    flood went 972/1000 through SYNPROXY (28 hung after connect: the handshake race of
    docs/design/syn-defence.md; full research: git show e4ff56f:docs/syn-defence.md, 8b-8c) and 1000/1000 through the listener's own cookies; under a spoofed flood 1000/1000 too, conntrack
    at the clients' own entries. SYNPROXY costs less per attack packet, but only it works through DNAT.

    Not always on: SYNPROXY itself costs 1-2 % of connections (a client reusing a 4-tuple still in
    TIME_WAIT meets the old entry, the untracked SYN never replaced it; a server may reject SYNPROXY's
    ACK and resend its SYN/ACK a second later), which would serve clients worse than no protection.

    Returns the rules and, by IP version, the set of engaged ports (for ``synproxy_rules``)."""
    out, engaged = [], {}
    engage = b.add_limit("synproxy-engage", sp.engage_over, over=True)
    for version, ports in ((4, sp.ports_v4), (6, sp.ports_v6)):
        s = b.add_set(AddrSet(f"synproxy-ports-v{version}", version, "ports", tuple(ports)))
        on = b.add_set(AddrSet(f"synproxy-engaged-v{version}", version, "engaged", size=65536, timeout_s=sp.hold_s))
        engaged[version] = on
        syn_to_port = (Family(version), Proto("tcp"), FibLocal(), DstPortInSet(s.name, version))  # only SYNs come here
        out.append(Rule((*syn_to_port, OverLimit(engage), EngagePort(on.name, version)), CONTINUE,
                        f"synproxy: engage on a syn flood v{version}"))
        out.append(Rule((*syn_to_port, DstPortInSet(on.name, version), NoTrack()), CONTINUE,
                        f"synproxy: syn not tracked v{version}"))
    return out, engaged


def synproxy_rules(sp: SynproxyPlan, engaged: dict[int, AddrSet]) -> list[Rule]:
    """After conntrack, on input, only on ``engaged`` ports (synproxy_notrack's sets): SYNPROXY answers the untracked SYN and checks
    the third ACK; an invalid packet that SYNPROXY did not take (a bad cookie, a stray ACK) is dropped.
    A port that is not engaged sees none of this: its SYNs were tracked, its handshakes are the server's."""
    out = []
    for version, mss in ((4, sp.mss_v4), (6, sp.mss_v6)):
        port = DstPortInSet(engaged[version].name, version)
        # Only the SYN and the bare third ACK: SYNPROXY takes any ACK it is shown as a handshake's end,
        # so a client's first data segment, arriving while the server's answer is still on its way
        # (its conntrack entry then says invalid), would be swallowed and a second SYN sent (data lost:
        # measured as a few failed connects in a hundred). Such a segment is dropped below, and resent.
        # the SYN rule's mask is the notrack rule's: a SYN|PSH it did not take would reach the listener
        bare_ack = TcpFlags(("fin", "syn", "rst", "psh", "ack"), ("ack",))
        for flags, what, states in ((SYN_ONLY, "syn", ("untracked",)), (bare_ack, "ack", sp.states)):
            out.append(Rule((Family(version), Proto("tcp"), port, CtState(states), flags), Synproxy(mss, sp.wscale),
                            f"synproxy {what} v{version}"))
        out.append(Rule((Family(version), Proto("tcp"), port, CtState(("invalid",))), DROP,
                        f"synproxy: stray ack or bad cookie v{version}"))
    return out
