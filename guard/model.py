"""Policy → RuleSet: backend-neutral chains, rules and sets. No syntax here.

Layout (both backends render exactly this):

* ``filter-prerouting``, stateless, before conntrack: skip what is never limited
  (other interfaces, allowlist, essential ICMP), drop bogus TCP flags, then jump to
  one flood chain per threat. A flood chain drops what exceeds the per-source meter
  (IPv6 keyed on the /64), then what exceeds the global backstop, which catches the
  spoofed floods that fill the meter (a full meter stops matching: it fails open).
* ``filter-conntrack``, just after conntrack: concurrent-connection limits.

Verdicts are drop, return and jump only: an accept would not stop later base chains anyway.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network
from typing import Union

from .policy import Policy, Rate

TABLE = "nodeguard"

# ICMP that must never be limited (RFC 4890 for v6): errors, neighbour/router discovery, MLD.
ICMP4_ESSENTIAL = (3, 11, 12)
ICMP6_ESSENTIAL = (1, 2, 3, 4, 130, 131, 132, 133, 134, 135, 136, 137, 143)
ICMP4_ECHO_REQUEST = 8
ICMP6_ECHO_REQUEST = 128
V6_SOURCE_PREFIX = 64  # per-source limits group an IPv6 host's whole /64


# --- matches --------------------------------------------------------------------------
@dataclass(frozen=True)
class InterfaceNotIn:
    names: tuple[str, ...]


@dataclass(frozen=True)
class Family:
    version: int  # 4 or 6


@dataclass(frozen=True)
class Proto:
    name: str  # tcp, udp, icmp, icmpv6


@dataclass(frozen=True)
class IcmpTypes:
    version: int
    types: tuple[int, ...]


@dataclass(frozen=True)
class TcpFlags:
    """``flags & mask == comp``; comp () means none of the mask is set."""

    mask: tuple[str, ...]
    comp: tuple[str, ...]


@dataclass(frozen=True)
class DstPorts:
    proto: str
    ports: tuple[int, ...]
    negate: bool = False


@dataclass(frozen=True)
class SourceInSet:
    set: str
    version: int


@dataclass(frozen=True)
class CtStateNew:
    pass


@dataclass(frozen=True)
class Assured:
    """Conntrack saw this TCP connection complete its handshake (original direction only)."""


@dataclass(frozen=True)
class SourceNotInSet:
    set: str
    version: int


@dataclass(frozen=True)
class RememberSource:
    """Add the source to a timed set (a statement that always matches)."""

    set: str
    version: int


@dataclass(frozen=True)
class SourceRateOver:
    """Per-source token bucket in meter ``meter``; matches packets over the rate."""

    meter: str
    version: int
    rate: Rate


@dataclass(frozen=True)
class RateOver:
    """One token bucket for all sources; matches packets over the rate."""

    name: str
    rate: Rate


@dataclass(frozen=True)
class SourceConnsOver:
    meter: str
    version: int
    limit: int


@dataclass(frozen=True)
class RateUnder:
    """A token bucket of its own; matches packets under the rate."""

    name: str
    rate: Rate


@dataclass(frozen=True)
class SharedRateUnder:
    """The named bucket shared by every rule that names it (nft limit object; hashlimit by name)."""

    name: str
    rate: Rate


@dataclass(frozen=True)
class ToUserspace:
    """Hand the packet to the sampler: NFLOG (then continue) or NFQUEUE (terminal, no bypass)."""

    transport: str  # "nflog" or "nfqueue"
    group: str  # the rule group, e.g. "syn-flood"
    number: int  # NFLOG group, or NFQUEUE queue number
    snaplen: int


Match = Union[InterfaceNotIn, Family, Proto, IcmpTypes, TcpFlags, DstPorts, SourceInSet, CtStateNew,
              Assured, SourceNotInSet, RememberSource, SourceRateOver, RateOver, SourceConnsOver,
              RateUnder, SharedRateUnder, ToUserspace]


# --- verdicts -------------------------------------------------------------------------
@dataclass(frozen=True)
class Drop:
    pass


@dataclass(frozen=True)
class Return:
    pass


@dataclass(frozen=True)
class Continue:
    """No verdict: the rule only acts (e.g. remembers a source) and evaluation goes on."""


@dataclass(frozen=True)
class Jump:
    chain: str


@dataclass(frozen=True)
class Goto:
    """Continue in ``chain`` and never come back here (condemned packets go to their sample chain)."""

    chain: str


Verdict = Union[Drop, Return, Continue, Jump, Goto]
DROP, RETURN, CONTINUE = Drop(), Return(), Continue()


# --- containers -----------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    matches: tuple[Match, ...]
    verdict: Verdict
    label: str  # short, human: shown in status and in the rule comment


@dataclass(frozen=True)
class AddrSet:
    """``kind``: allow (static prefixes), meter (per-source rate), trusted (timed
    membership) or conns (per-source ct count)."""

    name: str
    version: int
    kind: str
    elements: tuple[Union[IPv4Network, IPv6Network], ...] = ()
    size: int = 0
    timeout_s: int = 0

    @property
    def prefix_len(self) -> int:
        return 32 if self.version == 4 else V6_SOURCE_PREFIX


@dataclass(frozen=True)
class Chain:
    name: str
    rules: tuple[Rule, ...]
    hook: str | None = None  # base chains only
    priority: int | None = None
    stage: str | None = None  # "stateless" (before conntrack) or "stateful" (after it)


@dataclass(frozen=True)
class Sampling:
    """How condemned packets are sampled (policy ``sampler`` plus the transport the kernel allows)."""

    transport: str  # "nflog" or "nfqueue"
    rate: Rate
    global_rate: Rate
    nflog_group: int
    queue_base: int
    snaplen: int


@dataclass(frozen=True)
class RuleSet:
    chains: tuple[Chain, ...]
    sets: tuple[AddrSet, ...]
    interfaces: tuple[str, ...]
    table: str = TABLE
    sample_groups: tuple[str, ...] = ()  # index i: NFQUEUE queue_base + i; NFLOG prefix "ng:<group>"

    def chain(self, name: str) -> Chain:
        return next(c for c in self.chains if c.name == name)

    @property
    def base_chains(self) -> tuple[Chain, ...]:
        return tuple(c for c in self.chains if c.hook)


@dataclass(frozen=True)
class Priorities:
    """Where the two base chains sit on the prerouting hook (see probe.choose_priorities)."""

    stateless: int = -350
    stateful: int = -190
    notes: tuple[str, ...] = field(default=())


STATELESS_CHAIN = "filter-prerouting"
STATEFUL_CHAIN = "filter-conntrack"


SAMPLE_ALL = "sample-all"


def sample_groups(policy: Policy) -> tuple[str, ...]:
    """Every rule group that condemns packets, in a fixed order (it numbers the NFQUEUE queues)."""
    return ("bogus-flags", "icmp-flood", "syn-flood", *(f"limit-{lim.name}" for lim in policy.limits),
            *(("conn-limit",) if policy.connlimit else ()))


def build_ruleset(policy: Policy, interfaces: tuple[str, ...], priorities: Priorities,
                  sampling: Sampling | None = None) -> RuleSet:
    meter = policy.meter
    sets: list[AddrSet] = [
        AddrSet("allow-v4", 4, "allow", tuple(policy.allow.networks(4))),
        AddrSet("allow-v6", 6, "allow", tuple(policy.allow.networks(6))),
    ]
    chains: list[Chain] = []
    groups = sample_groups(policy) if sampling else ()
    sample_chains: list[Chain] = []

    def condemn(group: str) -> Verdict:
        """Drop, or, when sampling, go to the group's sample chain (which drops too)."""
        if not sampling:
            return DROP
        name = f"sample-{group}"
        if not any(c.name == name for c in sample_chains):
            number = sampling.nflog_group if sampling.transport == "nflog" else sampling.queue_base + groups.index(group)
            to_user = ToUserspace(sampling.transport, group, number, sampling.snaplen)
            sample_chains.append(Chain(name, (
                Rule((RateUnder(name, sampling.rate), SharedRateUnder(SAMPLE_ALL, sampling.global_rate), to_user),
                     CONTINUE, f"sample {group} via {sampling.transport}"),
                Rule((), DROP, f"drop {group}"),
            )))
        return Goto(name)

    def flood_chain(name: str, meter_name: str, per_source: Rate, backstop: Rate,
                    exempt_from_backstop: tuple[Rule, ...] = ()) -> Jump:
        """A chain that drops per-source excess, then global excess; returns nothing else."""
        per_source, backstop = _with_default_burst(per_source), _with_default_burst(backstop)
        rules = []
        for version in (4, 6):
            set_name = f"{meter_name}-v{version}"
            sets.append(AddrSet(set_name, version, "meter", size=meter.size, timeout_s=meter.timeout_s))
            rules.append(Rule((Family(version), SourceRateOver(set_name, version, per_source)), condemn(name),
                              f"{name} per-source v{version}"))
        rules += exempt_from_backstop
        rules.append(Rule((RateOver(f"{name}-backstop", backstop),), condemn(name), f"{name} backstop"))
        chains.append(Chain(name, tuple(rules)))
        return Jump(name)

    pre: list[Rule] = [*_never_limited(interfaces), *_essential_icmp()]
    pre.append(Rule((Proto("tcp"),), Jump("bogus-flags"), "to bogus-flags"))
    chains.append(Chain("bogus-flags", _bogus_flag_rules(condemn("bogus-flags"))))

    icmp = policy.icmp
    to_icmp = flood_chain("icmp-flood", "icmp-src", icmp.source_rate(), icmp.global_rate())
    for version, echo in ((4, ICMP4_ECHO_REQUEST), (6, ICMP6_ECHO_REQUEST)):
        pre.append(Rule((IcmpTypes(version, (echo,)),), to_icmp, f"echo-request v{version} to icmp-flood"))

    syn = policy.syn
    trusted: list[Rule] = []
    remember: list[Rule] = []
    if syn.trusted_after_handshake_s:
        for version in (4, 6):
            set_name = f"trusted-v{version}"
            sets.append(AddrSet(set_name, version, "trusted", size=meter.size, timeout_s=syn.trusted_after_handshake_s))
            trusted.append(Rule((SourceInSet(set_name, version),), RETURN, f"trusted v{version} skips backstop"))
            remember.append(Rule((Family(version), Proto("tcp"), Assured(), SourceNotInSet(set_name, version),
                                  RememberSource(set_name, version)), CONTINUE, f"remember handshake v{version}"))
    to_syn = flood_chain("syn-flood", "syn-src", syn.source_rate(), syn.global_rate(), tuple(trusted))
    pre.append(Rule((TcpFlags(("fin", "syn", "rst", "ack"), ("syn",)),), to_syn, "syn to syn-flood"))

    for lim in policy.limits:
        to_limit = flood_chain(f"limit-{lim.name}", lim.name, lim.source_rate(), lim.global_rate())
        for matches in _limit_selectors(lim.protocol, lim.ports, lim.except_ports):
            pre.append(Rule(matches, to_limit, f"{lim.protocol} to limit-{lim.name}"))

    chains.insert(0, Chain(STATELESS_CHAIN, tuple(pre), "prerouting", priorities.stateless, "stateless"))

    conn_rules: list[Rule] = list(remember)
    for i, cl in enumerate(policy.connlimit):
        name = cl.name or f"conn-{i}"
        for version in (4, 6):
            set_name = f"{name}-v{version}"
            sets.append(AddrSet(set_name, version, "conns", size=meter.size))
            ports = (DstPorts("tcp", cl.ports),) if cl.ports else ()
            conn_rules.append(Rule(
                (Family(version), Proto("tcp"), *ports, CtStateNew(), SourceConnsOver(set_name, version, cl.per_source)),
                condemn("conn-limit"), f"{name} over {cl.per_source} connections v{version}"))
    if conn_rules:
        chains.insert(1, Chain(STATEFUL_CHAIN, (*_never_limited(interfaces), *conn_rules),
                               "prerouting", priorities.stateful, "stateful"))
    return RuleSet(tuple(chains + sample_chains), tuple(sets), tuple(interfaces), sample_groups=groups)


def _with_default_burst(rate: Rate) -> Rate:
    """Without an explicit burst, allow two units' worth (a bucket that absorbs normal jitter)."""
    return rate.with_burst(rate.burst_or(2))


def _never_limited(interfaces: tuple[str, ...]) -> list[Rule]:
    return [
        Rule((InterfaceNotIn(interfaces),), RETURN, "not a protected interface"),
        Rule((SourceInSet("allow-v4", 4),), RETURN, "allowlisted v4"),
        Rule((SourceInSet("allow-v6", 6),), RETURN, "allowlisted v6"),
    ]


def _essential_icmp() -> list[Rule]:
    return [
        Rule((IcmpTypes(4, ICMP4_ESSENTIAL),), RETURN, "essential icmp"),
        Rule((IcmpTypes(6, ICMP6_ESSENTIAL),), RETURN, "essential icmpv6 (RFC 4890)"),
    ]


def _bogus_flag_rules(verdict: Verdict) -> tuple[Rule, ...]:
    all6 = ("fin", "syn", "rst", "psh", "ack", "urg")
    combos = [
        ("null", all6, ()),
        ("xmas", ("fin", "psh", "urg"), ("fin", "psh", "urg")),
        ("syn+fin", ("syn", "fin"), ("syn", "fin")),
        ("syn+rst", ("syn", "rst"), ("syn", "rst")),
        ("fin without ack", ("fin", "ack"), ("fin",)),
    ]
    return tuple(Rule((TcpFlags(mask, comp),), verdict, f"bogus flags {label}") for label, mask, comp in combos)


def _limit_selectors(protocol: str, ports: tuple[int, ...], except_ports: tuple[int, ...]) -> list[tuple[Match, ...]]:
    if protocol == "all":
        return [()]
    if protocol == "icmp":
        return [(Family(4), Proto("icmp")), (Family(6), Proto("icmpv6"))]
    if ports:
        return [(Proto(protocol), DstPorts(protocol, ports))]
    if except_ports:
        return [(Proto(protocol), DstPorts(protocol, except_ports, negate=True))]
    return [(Proto(protocol),)]
