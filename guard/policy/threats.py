"""The threats and how each is limited: ICMP echo, new TCP connections (with the SYN defence per port),
closed UDP ports, TCP picked up mid-stream, per-source packet limits, concurrent connections; the meters
they share, and the escalation that bans a source over its limit. Sections of the policy (schema.py)."""

from __future__ import annotations

from typing import Annotated, Literal

import pydantic
from pydantic import Field, field_validator, model_validator

from .fields import (MAX_ENTRIES, Burst, Mode, Port, PortList, PortRanges, PositiveInt, RateField, Section, SetSize,
                     check_name, one_burst)
from .rates import Rate, parse_rate


class Synproxy(Section):
    """The stateless SYN defence of the node's own ports, engaged per port only under a SYN flood: SYNs
    to an engaged port skip conntrack (no state for a spoofed SYN) and are answered by the listener's
    own syncookies; with ``forwarded``, by SYNPROXY, which also serves NodePorts. See docs/design/syn-defence.md.

    ports: auto = every TCP port with a listener reachable from a protected interface (refreshed by
    the watcher), minus ``exclude_ports``; or a list; [] turns it off. ``forwarded``: also NodePorts
    (``forwarded_ports``), DNAT'd to pods: needs ``net.netfilter.nf_conntrack_tcp_loose=0`` node-wide,
    which nodeguard sets only with ``set_sysctls`` (else ``status`` reports it).

    ``engage_over``: a port is engaged while the SYNs to these ports that passed the per-source limits
    exceed this rate (all ports together), and for ``hold_s`` after the last SYN over it. In peacetime
    every connection takes the normal path (always-on SYNPROXY failed or delayed 1-2 % of connections).
    """

    ports: Literal["auto"] | Annotated[tuple[Port, ...], Field(max_length=MAX_ENTRIES["synproxy.ports"])] = "auto"
    engage_over: RateField = parse_rate("1000/second burst 500")
    hold_s: Annotated[int, Field(ge=1, le=86400, strict=True)] = 60
    exclude_ports: PortRanges = ((30000, 32767),)  # the NodePort range: DNAT'd, not served by the node
    forwarded: bool = False
    forwarded_ports: PortRanges = ((30000, 32767),)
    set_sysctls: bool = False

    def engage_rate(self) -> Rate:
        return self.engage_over.with_default_burst()


class Icmp(Section):
    """Echo-request only; all other ICMP types are never limited."""

    mode: Mode | None = None  # None: the policy's ``mode``
    rate: RateField = parse_rate("100/second burst 200")
    burst: Burst | None = None
    per_source: RateField = parse_rate("10/second")
    per_source_burst: Burst | None = None

    _burst = field_validator("burst")(classmethod(one_burst("rate")))
    _per_source_burst = field_validator("per_source_burst")(classmethod(one_burst("per_source")))

    def global_rate(self) -> Rate:
        return self.rate.with_burst(self.burst).with_default_burst()

    def source_rate(self) -> Rate:
        return self.per_source.with_burst(self.per_source_burst).with_default_burst()


class Syn(Section):
    """New TCP connections. ``rate`` is a high safety valve; ``per_source`` is the main defence.

    ``valve``: when the global ``rate`` (the valve) drops SYNs. ``auto``: only while conntrack fails
    new connections (its ``drop`` and ``insert_failed`` statistics rose by ``valve_engage_failures`` in
    half a second: the SNAT port wall of a masqueraded NodePort, or a full table early-drop cannot
    clear), and for ``valve_hold_s`` after the last sign of the flood; the daemon engages it, so
    without the daemon it never does. Elsewhere the valve is a lottery a brand-new client loses more
    often than without protection (docs/design/syn-valve.md). ``always``: at all times; ``off``: never.

    ``trusted_after_handshake_s``: a source that completed a TCP handshake (conntrack
    "assured", which a blind spoofer cannot reach) is exempt from the global ``rate``, and
    from ``tcp_pickup``, for this long after its connections' last packets, so returning
    clients keep connecting during a spoofed flood. 0 = off.
    """

    mode: Mode | None = None
    rate: RateField = parse_rate("5000/second")
    burst: Burst | None = None
    per_source: RateField = parse_rate("200/second")
    per_source_burst: Burst | None = None
    trusted_after_handshake_s: Annotated[int, Field(ge=0, le=86400, strict=True)] = 3600
    valve: Literal["auto", "always", "off"] = "auto"
    valve_hold_s: Annotated[int, Field(ge=1, le=3600, strict=True)] = 30
    valve_engage_failures: Annotated[int, Field(ge=1, le=1_000_000, strict=True)] = 10
    synproxy: Synproxy = Synproxy()

    _burst = field_validator("burst")(classmethod(one_burst("rate")))
    _per_source_burst = field_validator("per_source_burst")(classmethod(one_burst("per_source")))
    global_rate = Icmp.global_rate
    source_rate = Icmp.source_rate


class ClosedPorts(Section):
    """New UDP flows to the node's own addresses that no socket would receive (nothing listens, is
    bound or connected there). Up to ``rate`` of them pass (all sources together), so the kernel still
    answers port unreachable (traceroute); the rest are dropped on input, before conntrack confirms an
    entry for them, so a spoofed flood at closed ports no longer fills conntrack. A socket lookup per
    packet, not a list: a listener opened a moment ago counts at once. Service traffic DNAT'd to pods is
    forwarded and never comes here. See docs/design/closed-ports.md."""

    enabled: bool = True
    mode: Mode | None = None
    rate: RateField = parse_rate("1000/second burst 2000")
    burst: Burst | None = None

    _burst = field_validator("burst")(classmethod(one_burst("rate")))
    global_rate = Icmp.global_rate


class TcpPickup(Section):
    """TCP that conntrack picked up mid-stream (no SYN, FIN or RST, ``ct state new``) to a destination no
    local socket would take (a NodePort, a Service address: kube-proxy would DNAT it to a pod that answers
    RST): a spoofed ACK flood, or a real connection whose conntrack entry was flushed or expired. Up to
    ``rate`` of them pass (all sources together: a ``conntrack -F`` on a quiet node changes nothing);
    over it, a segment passes when its source completed a handshake within
    ``syn.trusted_after_handshake_s`` (a flushed connection's client; a spoofed source completes none)
    or when its source address and port were dropped within ``second_chance_s`` (a real peer
    retransmits, a spoofed source never repeats); else it is remembered and dropped before conntrack
    keeps an entry. Before the second chance, a source that is not trusted is dropped over ``per_source``
    (IPv6: per /64) and escalates: one address's flood (its source ports repeat within
    ``second_chance_s``). A full set (``size``) remembers nothing more and drops nothing more (fails
    open). A socket on the destination (a host port, whose syncookie ACK is spared) or SYNPROXY's third ACK
    (``ct state invalid`` with ``forwarded``) never come here. See docs/design/hooks.md."""

    enabled: bool = True
    mode: Mode | None = None
    rate: RateField = parse_rate("1000/second burst 2000")
    burst: Burst | None = None
    per_source: RateField = parse_rate("2000/second")
    per_source_burst: Burst | None = None
    second_chance_s: Annotated[int, Field(ge=1, le=60, strict=True)] = 2
    size: SetSize = 262144

    _burst = field_validator("burst")(classmethod(one_burst("rate")))
    _per_source_burst = field_validator("per_source_burst")(classmethod(one_burst("per_source")))
    global_rate = Icmp.global_rate
    source_rate = Icmp.source_rate


class Limit(Section):
    """A hashlimit-style per-source packet limit, with a global backstop for when its meter is full."""

    name: str
    mode: Mode | None = None
    protocol: Literal["tcp", "udp", "icmp", "all"]
    ports: PortList = ()
    except_ports: PortList = ()
    per_source: RateField
    burst: Burst | None = None
    rate: RateField | None = None

    _name = field_validator("name")(classmethod(lambda cls, v: check_name(v)))
    _burst = field_validator("burst")(classmethod(one_burst("per_source")))

    @model_validator(mode="after")
    def _ports_need_l4(self) -> "Limit":
        if (self.ports or self.except_ports) and self.protocol not in ("tcp", "udp"):
            raise ValueError(f"ports and except_ports need protocol tcp or udp, not {self.protocol}")
        if self.ports and self.except_ports:
            raise ValueError("give ports or except_ports, not both")
        return self

    def source_rate(self) -> Rate:
        return self.per_source.with_burst(self.burst).with_default_burst()

    def global_rate(self) -> Rate:
        """The backstop: ``rate`` if given, else 100 sources' worth of ``per_source``."""
        return (self.rate if self.rate is not None else self.per_source.scaled(100)).with_default_burst()


class ConnLimit(Section):
    """Concurrent TCP connections per source (IPv6: per /64) to ``ports`` (empty = all)."""

    name: str | None = None
    mode: Mode | None = None
    ports: PortList = ()
    per_source: PositiveInt

    _name = field_validator("name")(classmethod(lambda cls, v: v if v is None else check_name(v)))


class Meter(Section):
    """Size and idle timeout of every per-source meter (nft dynamic set / hashlimit table)."""

    size: SetSize = 65536
    timeout_s: Annotated[int, Field(ge=1, le=86400, strict=True)] = 60


class Escalate(Section):
    """In-kernel escalation: a source that stays over a per-source limit (enforce mode) for ``after_s``
    seconds, with no pause in its per-source drops longer than ``gap_s``, is banned for ``ban_s``: its
    packets are dropped by the ban check at the head of the stateless chain, after defrag and before
    conntrack (nft ``filter-prerouting``; iptables raw PREROUTING). Never for allowlisted sources or
    sources that completed a TCP handshake (trusted); never from the global backstops, which spoofed
    floods reach. IPv6: the /64 is banned. A full ban set (``size``) bans nobody more (fails open)."""

    enabled: bool = True
    after_s: Annotated[int, Field(ge=1, le=3600, strict=True)] = 3
    gap_s: Annotated[int, Field(ge=1, le=3600, strict=True)] = 1
    ban_s: Annotated[int, Field(ge=1, le=604800, strict=True)] = 300
    size: SetSize = 65536

    @field_validator("gap_s")
    @classmethod
    def _gap_shorter(cls, gap_s: int, info: pydantic.ValidationInfo) -> int:
        after_s = info.data.get("after_s")
        if isinstance(after_s, int) and gap_s >= after_s:
            raise ValueError(f"must be shorter than after_s ({after_s}): a pause of gap_s ends an episode, "
                             "so two drops after_s apart would otherwise ban")
        return gap_s

    @field_validator("after_s")
    @classmethod
    def _after_longer_than_default_gap(cls, after_s: int) -> int:
        """gap_s is validated only when given: with its default (1), after_s must be at least 2."""
        if after_s <= cls.model_fields["gap_s"].default:
            raise ValueError(f"must be longer than gap_s (default {cls.model_fields['gap_s'].default})")
        return after_s
