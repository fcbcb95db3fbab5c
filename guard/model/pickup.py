"""``tcp_pickup``: TCP that conntrack picked up mid-stream, to a destination no local socket would take,
limited with a second chance. Called by build_ruleset (build.py) for ``filter-conntrack``: after
conntrack (``ct state new`` says it was picked up) and before kube-proxy's DNAT (a NodePort is still
the node's address and port, where no socket listens). Why: docs/design/hooks.md."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .matches import (CtStateNew, Family, OverLimit, RememberSourcePort, SocketOpen, SourceInSet, SourcePortInSet,
                      SourceRateOver, TcpFlags)
from .ruleset import AddrSet, Chain, Rule
from .verdicts import RETURN, Goto

if TYPE_CHECKING:
    from .build import Builder

GROUP = "tcp-pickup"  # the rule group and its chain
# no SYN (a handshake), FIN or RST (an end): what loose pickup makes "new" out of a segment mid-stream
MID_STREAM = TcpFlags(("fin", "syn", "rst"), ())


def pickup_rules(b: Builder, trusted: dict[int, str]) -> list[Rule]:
    """The rules of ``filter-conntrack``: a segment picked up mid-stream that a local socket would take
    leaves (a host port's syncookie ACK: its SYN was not tracked); below ``tcp_pickup.rate`` (all sources
    together) the rest goes on as without protection; over it, to the second chance.

    SYNPROXY's third ACK (``syn.synproxy.forwarded``) never matches: that needs
    ``nf_conntrack_tcp_loose=0``, under which conntrack picks nothing up mid-stream (``invalid``)."""
    pickup = b.policy.tcp_pickup
    over = b.add_limit(GROUP, pickup.global_rate(), over=True)
    b.chains.append(Chain(GROUP, (*_trusted(trusted), *_per_source(b), *_second_chance(b))))
    return [Rule((MID_STREAM, CtStateNew(), SocketOpen()), RETURN, "tcp picked up mid-stream, to a socket",
                 counter=False),
            Rule((MID_STREAM, CtStateNew(), OverLimit(over)), Goto(GROUP), "tcp picked up mid-stream, over the rate")]


def _per_source(b: Builder) -> list[Rule]:
    """After the trusted return: over ``tcp_pickup.per_source`` a source's segments are dropped and
    escalate. One address's flood cycles through its source ports within ``second_chance_s`` at a
    flood's rate, so the second chance alone would let most of it through. Not ahead of the trusted
    return: a flood spoofing a trusted client's address would spend that client's budget and stall its
    flushed connections for as long as it lasts (trusted sources are never banned). A full meter stops
    matching (fails open): spoofed sources meet the rules below."""
    pickup, meter = b.policy.tcp_pickup, b.policy.meter
    out = []
    for v in (4, 6):
        s = b.add_set(AddrSet(f"pickup-src-v{v}", v, "meter", size=meter.size, timeout_s=meter.timeout_s,
                              rate=pickup.source_rate()))
        out.append(b.condemn_per_source((Family(v), SourceRateOver(s.name, v)), GROUP, b.policy.mode_of(pickup),
                                        f"{GROUP} per-source v{v}"))
    return out


def _trusted(trusted: dict[int, str]) -> list[Rule]:
    """A source that completed a handshake within ``syn.trusted_after_handshake_s`` passes: a connection
    whose conntrack entry was flushed is such a source's (its packets keep it in the set while the
    connection speaks), and its first segment after the flush may be a pure ACK, which is never
    retransmitted. A spoofed flood's sources complete no handshake."""
    return [Rule((SourceInSet(name, v),), RETURN, f"trusted v{v}") for v, name in trusted.items()]


def _second_chance(b: Builder) -> list[Rule]:
    """A segment whose source address and port were dropped within ``second_chance_s`` passes: a real
    peer retransmits it, a spoofed flood's random sources never repeat. Else it is remembered and
    dropped before conntrack keeps an entry for it (no DNAT, no answer from a pod). A full set remembers
    nothing, so drops nothing more: the flood then costs what it costs without this rule, and a real
    peer is never cut off for good (a connection whose entry was flushed resumes, as with no protection)."""
    pickup = b.policy.tcp_pickup
    mode = b.policy.mode_of(pickup)
    sets = {v: b.add_set(AddrSet(f"pickup-v{v}", v, "pickup", size=pickup.size, timeout_s=pickup.second_chance_s))
            for v in (4, 6)}
    again = [Rule((Family(v), SourcePortInSet(s.name, v)), RETURN, f"second chance v{v}") for v, s in sets.items()]
    return [*again, *(b.condemn((Family(v), RememberSourcePort(s.name, v)), GROUP, mode, f"first sight v{v}")
                      for v, s in sets.items())]
