"""Policy → RuleSet: the walk over the policy, and the layout both backends render. No syntax here.

Layout (both backends render exactly this):

* every base chain starts with the failsafe pairs (``failsafe:``, a source prefix with a protocol and
  destination ports): they return before any other rule of a protected interface, the ban check included.
* ``filter-prerouting``, stateless, before conntrack: skip what is never limited
  (other interfaces; failsafe; TCP no rule here condemns, before any lookup; allowlist, essential ICMP),
  drop bogus TCP flags, then jump to
  one flood chain per threat. A flood chain drops what exceeds the per-source meter
  (IPv6 keyed on the /64), then what exceeds the global backstop, which catches the
  spoofed floods that fill the meter (a full meter stops matching: it fails open). The SYN backstop
  (the valve) drops by default only while engaged (``syn.valve: auto``: ``_valve``).
* ``filter-conntrack``, just after conntrack: drop RSTs conntrack calls invalid, limit TCP picked up
  mid-stream to no socket (pickup.py), then concurrent-connection limits (other TCP that opens no
  connection leaves first).
* escalation (``escalate``, enforce mode only): a per-source drop goes through
  ``escalate-<group>-v<n>`` on its way to the sample chain, which bans a source that has been over
  a per-source limit without a pause for ``after_s`` (banning.py).
* the ban check, at the head of ``filter-prerouting`` after the failsafe pairs, drops the sources that
  are not allowlisted and are in a deny list (``deny-*``), banned by hand (``manual-*``) or banned by
  escalation (``banned-*``) (banning.py).
* the SYN defence's per-port rules (SYNPROXY, untracked SYNs): synproxy.py.
"""

from __future__ import annotations

from ..policy.rates import Rate
from ..policy.schema import Policy
from . import banning, pickup
from .matches import (Assured, CountSource, CtState, CtStateNew, DstPorts, Family, IcmpTypes, InterfaceNotIn, Log,
                      Match, OneIn, OverLimit, Proto, RememberSource, SocketOpen, SourceConnsOver, SourceInSet,
                      SourceNotInSet, SourceRateOver, TcpFlags, UnderLimit, UpdateSource, ValveEngaged)
from .plans import Priorities, Sampling, SynproxyPlan
from .ruleset import AddrSet, Chain, Mode, NamedLimit, Rule, RuleSet
from .synproxy import SYN_ONLY, synproxy_notrack, synproxy_rules
from .verdicts import CONTINUE, DROP, RETURN, Goto, Jump, Queue, Verdict

# ICMP that must never be limited (RFC 4890 for v6): errors, neighbour/router discovery, MLD.
ICMP4_ESSENTIAL = (3, 11, 12)
ICMP6_ESSENTIAL = (1, 2, 3, 4, 130, 131, 132, 133, 134, 135, 136, 137, 143)
ICMP4_ECHO_REQUEST = 8
ICMP6_ECHO_REQUEST = 128

STATELESS_CHAIN = "filter-prerouting"
STATEFUL_CHAIN = "filter-conntrack"
SYNPROXY_CHAIN = "synproxy-input"
CLOSED_CHAIN = "closed-ports"
SAMPLE_ALL = "sample-all"
CLOSED_PORT = "closed-port"  # the rule group of closed_ports
SYN_GROUP = "syn-flood"  # the rule group (and chain) of new TCP connections
INVALID_RST = "invalid-rst"  # the rule group of RSTs conntrack calls invalid
# one in this many packets of a source's assured connections restarts its trusted entry's timeout, so a
# source whose connections went quiet stays trusted that long after its last packets, not after its
# first (tcp_pickup lets a flushed connection of a trusted source resume at first sight)
TRUSTED_REFRESH_ONE_IN = 16


def sample_groups(policy: Policy) -> tuple[str, ...]:
    """Every rule group that condemns packets, in a fixed order (it numbers the NFQUEUE queues)."""
    return ("bogus-flags", "icmp-flood", SYN_GROUP, *(f"limit-{lim.name}" for lim in policy.limits),
            *(("conn-limit",) if policy.connlimit else ()), *((CLOSED_PORT,) if policy.closed_ports.enabled else ()),
            INVALID_RST, *((pickup.GROUP,) if policy.tcp_pickup.enabled else ()))


class Builder:
    """Collects the objects while build_ruleset walks the policy."""

    def __init__(self, policy: Policy, sampling: Sampling | None):
        self.policy, self.sampling = policy, sampling
        self.sets: list[AddrSet] = []
        self.limits: dict[str, NamedLimit] = {}
        self.chains: list[Chain] = []
        self.sample_chains: dict[str, Chain] = {}
        self.groups = sample_groups(policy) if sampling else ()
        self.escalated: list[tuple[str, int]] = []  # (group, IP version) whose per-source drops escalate
        self.failsafe: tuple[Rule, ...] = ()  # the first rules of every base chain

    def add_set(self, s: AddrSet) -> AddrSet:
        self.sets.append(s)
        return s

    def add_limit(self, base: str, rate: Rate, over: bool) -> str:
        lim = NamedLimit(base, rate, over)
        self.limits[lim.name] = lim
        return lim.name

    def condemn(self, matches: tuple[Match, ...], group: str, mode: Mode, label: str) -> Rule:
        """A rule that condemns what ``matches``: enforce drops it (through the group's sample chain
        when sampling); monitor counts, samples and lets it go on (``monitor-<group>`` returns)."""
        return Rule(matches, self.condemned(group, mode), label, group=group, mode=mode)

    def condemned(self, group: str, mode: Mode) -> Verdict:
        """Where a packet condemned by ``group`` goes: its sample (or monitor) chain, or DROP."""
        if not self.sampling and mode == "enforce":
            return DROP
        name = f"{'sample' if mode == 'enforce' else 'monitor'}-{group}"
        if name not in self.sample_chains:
            self.sample_chains[name] = Chain(name, self._sample_rules(group, mode),
                                             role="sample" if mode == "enforce" else "monitor", group=group)
        return Goto(name)

    def condemn_per_source(self, matches: tuple[Match, ...], group: str, mode: Mode, label: str) -> Rule:
        """A per-source limit's rule: as ``condemn``, but in enforce mode with ``escalate`` on, by way
        of the escalation chain (which then goes where ``condemned`` says; this rule's counter stays the
        group's drops)."""
        if mode != "enforce" or not self.policy.escalate.enabled:
            return self.condemn(matches, group, mode, label)
        self.condemned(group, mode)  # the sample chain (and its sets) come first, as without escalation
        version = next(x.version for x in matches if isinstance(x, SourceRateOver))
        self.escalated.append((group, version))
        return Rule(matches, Goto(banning.escalation_chain(group, version)), label, group=group, mode=mode)

    def _valve(self, name: str, mode: Mode, limit: str) -> list[Rule]:
        """The backstop that drops only while engaged: one timed ``valve`` set per IP version (the
        iptables backend needs an ipset per family), whose member the daemon adds while conntrack
        fails new connections and the kernel removes ``syn.valve_hold_s`` later (guard/valve.py). Its
        bucket is shared by both rules, as the unconditional backstop's is."""
        out = []
        for version in (4, 6):
            on = self.add_set(AddrSet(f"{name}-valve-v{version}", version, "valve", size=4,
                                      timeout_s=self.policy.syn.valve_hold_s, group=name))
            out.append(self.condemn((Family(version), ValveEngaged(on.name, version), OverLimit(limit)), name, mode,
                                    f"{name} backstop v{version} (valve engaged)"))
        return out

    def _sample_rules(self, group: str, mode: Mode) -> tuple[Rule, ...]:
        last = Rule((), DROP, f"drop {group}") if mode == "enforce" else Rule((), RETURN, f"would drop {group}")
        s = self.sampling
        if not s:
            return (last,)
        counts = []
        for version in (4, 6) if s.count_sources and group not in s.uncounted else ():
            cs = self.add_set(AddrSet(f"count-{mode}-{group}-v{version}", version, "counts", size=s.count_sources,
                                      timeout_s=s.count_timeout_s, group=group, mode=mode))
            counts.append(Rule((Family(version), CountSource(cs.name, version)), CONTINUE,
                               f"count {group} per source v{version}", counter=False))
        odds = (OneIn(s.one_in(group)),) if s.one_in(group) > 1 else ()
        caps = (*odds, UnderLimit(self.add_limit(f"sample-{group}", s.rate, over=False)),
                UnderLimit(self.add_limit(SAMPLE_ALL, s.global_rate, over=False)))
        if s.transport == "nfqueue" and mode == "enforce":
            return (*counts, Rule(caps, Queue(s.queue_base + self.groups.index(group), group),
                                  f"sample {group} via nfqueue"), last)
        # NFLOG never holds a packet: monitor mode samples through it whatever the transport, so a
        # missing sampler can never turn "would drop" into "dropped"
        log = Log(group, s.nflog_group, s.snaplen, monitor=mode == "monitor")
        return *counts, Rule((*caps, log), CONTINUE, f"sample {group} via nflog"), last

    def flood_chain(self, name: str, mode: Mode, meter_base: str, per_source: Rate, backstop: Rate,
                    exempt_from_backstop: tuple[Rule, ...] = (), valve: str = "always") -> Jump:
        """A chain that condemns per-source excess, then global excess; returns nothing else.
        ``valve`` (syn.valve): ``auto`` condemns global excess only while the valve is engaged,
        ``off`` never."""
        meter = self.policy.meter
        rules = []
        observe = self.sampling and (self.sampling.observe == "always" or
                                     (self.sampling.observe == "monitor" and mode == "monitor"))
        for version in (4, 6) if observe else ():  # every packet of the threat, per source: what tune reads
            seen = self.add_set(AddrSet(f"seen-{name}-v{version}", version, "counts", size=meter.size,
                                        timeout_s=self.sampling.count_timeout_s, group=name, mode="observed"))
            rules.append(Rule((Family(version), CountSource(seen.name, version)), CONTINUE,
                              f"observe {name} v{version}", counter=False))
        for version in (4, 6):
            s = self.add_set(AddrSet(f"{meter_base}-v{version}", version, "meter", size=meter.size,
                                     timeout_s=meter.timeout_s, rate=per_source))
            rules.append(self.condemn_per_source((Family(version), SourceRateOver(s.name, version)), name, mode,
                                                 f"{name} per-source v{version}"))
        rules += exempt_from_backstop
        if valve == "always":
            rules.append(self.condemn((OverLimit(self.add_limit(f"{name}-backstop", backstop, over=True)),), name,
                                      mode, f"{name} backstop"))
        elif valve == "auto":
            rules += self._valve(name, mode, self.add_limit(f"{name}-backstop", backstop, over=True))
        self.chains.append(Chain(name, tuple(rules)))
        return Jump(name)


def build_ruleset(policy: Policy, interfaces: tuple[str, ...], priorities: Priorities,
                  sampling: Sampling | None = None, synproxy: SynproxyPlan | None = None) -> RuleSet:
    b = Builder(policy, sampling)
    for version in (4, 6):
        b.add_set(AddrSet(f"allow-v{version}", version, "allow", tuple(policy.allow.networks(version))))
    b.failsafe = _failsafe(b)

    tcp_limited = any(lim.protocol in ("tcp", "all") for lim in policy.limits)
    leave = () if tcp_limited else (_bare_rst_leaves(), _ack_leaves())
    pre: list[Rule] = [*_never_limited(b, interfaces, leave), *_essential_icmp()]
    pre.append(Rule((Proto("tcp"),), Jump("bogus-flags"), "to bogus-flags"))
    b.chains.append(Chain("bogus-flags", _bogus_flag_rules(b, policy.mode)))

    icmp = policy.icmp
    to_icmp = b.flood_chain("icmp-flood", policy.mode_of(icmp), "icmp-src", icmp.source_rate(), icmp.global_rate())
    for version, echo in ((4, ICMP4_ECHO_REQUEST), (6, ICMP6_ECHO_REQUEST)):
        pre.append(Rule((IcmpTypes(version, (echo,)),), to_icmp, f"echo-request v{version} to icmp-flood"))

    syn = policy.syn
    trusted: list[Rule] = []
    remember: list[Rule] = []
    trusted_sets: dict[int, str] = {}  # version -> name: tcp_pickup and escalation spare these sources
    if syn.trusted_after_handshake_s:
        for version in (4, 6):
            s = b.add_set(AddrSet(f"trusted-v{version}", version, "trusted", size=policy.meter.size,
                                  timeout_s=syn.trusted_after_handshake_s))
            trusted_sets[version] = s.name
            trusted.append(Rule((SourceInSet(s.name, version),), RETURN, f"trusted v{version} skips backstop"))
            remember.append(Rule((Family(version), Proto("tcp"), Assured(), SourceNotInSet(s.name, version),
                                  RememberSource(s.name, version)), CONTINUE, f"remember handshake v{version}"))
            remember.append(Rule((Family(version), Proto("tcp"), Assured(), OneIn(TRUSTED_REFRESH_ONE_IN),
                                  UpdateSource(s.name, version)), CONTINUE, f"refresh handshake v{version}",
                                 counter=False))
    proxied = synproxy if synproxy and policy.mode_of(syn) == "enforce" else None  # monitor never diverts
    proxy, engaged = synproxy_notrack(b, proxied) if proxied else ([], {})
    if proxied:
        trusted.append(Rule((CtState(("untracked",)),), RETURN, "synproxied syn skips backstop"))
    to_syn = b.flood_chain(SYN_GROUP, policy.mode_of(syn), "syn-src", syn.source_rate(), syn.global_rate(),
                           (*proxy, *trusted), valve=syn.valve)
    pre.append(Rule((SYN_ONLY,), to_syn, "syn to syn-flood"))

    for lim in policy.limits:
        to_limit = b.flood_chain(f"limit-{lim.name}", policy.mode_of(lim), f"limit-{lim.name}", lim.source_rate(),
                                 lim.global_rate())
        for matches in _limit_selectors(lim.protocol, lim.ports, lim.except_ports):
            pre.append(Rule(matches, to_limit, f"{lim.protocol} to limit-{lim.name}"))

    invalid_rst, conn_rules = _invalid_rst(b), []
    if policy.tcp_pickup.enabled:
        conn_rules += pickup.pickup_rules(b, trusted_sets)
    conn_rules += [_tcp_not_opening(), *remember]
    for i, cl in enumerate(policy.connlimit):
        name = policy.connlimit_name(i)
        for version in (4, 6):
            s = b.add_set(AddrSet(f"conn-{name}-v{version}", version, "conns", size=policy.meter.size,
                                  limit=cl.per_source))
            ports = (DstPorts("tcp", cl.ports),) if cl.ports else ()
            conn_rules.append(b.condemn(
                (Family(version), Proto("tcp"), *ports, CtStateNew(), SourceConnsOver(s.name, version)),
                "conn-limit", policy.mode_of(cl), f"{name} over {cl.per_source} connections v{version}"))
    b.chains.insert(0, Chain(STATEFUL_CHAIN, (*_never_limited(b, interfaces, (invalid_rst,)), *conn_rules),
                             "stateful", priorities.stateful))
    if proxied and proxied.forwarded:
        b.chains.append(Chain(SYNPROXY_CHAIN, (*_never_limited(b, interfaces), *synproxy_rules(proxied, engaged)),
                              "input", priorities.input))
    if policy.closed_ports.enabled:
        b.chains.append(Chain(CLOSED_CHAIN, (*_never_limited(b, interfaces, (_closed_ports_skip_tcp(),)),
                                             *_closed_ports(b)), "closed", priorities.closed))
    banned, escalation = banning.escalation(b, trusted_sets)
    head = 1 + len(b.failsafe) + len(leave[:1])  # after the interface check, the failsafe pairs, a bare RST
    pre[head:head] = banning.drops(b, banned)  # last: escalation's ban sets exist only after the walk
    b.chains.insert(0, Chain(STATELESS_CHAIN, tuple(pre), "stateless", priorities.stateless))
    return RuleSet((*b.chains, *escalation, *b.sample_chains.values()), tuple(b.sets),
                   tuple(b.limits.values()), tuple(interfaces), sample_groups=b.groups)


def _closed_ports(b: Builder) -> list[Rule]:
    """On input, after DNAT and IPVS, before conntrack confirms: new UDP flows to the node's own addresses that
    no socket would receive, over ``closed_ports.rate`` (all sources together), are condemned. A drop
    there leaves no conntrack entry; below the rate the kernel answers port unreachable as ever."""
    closed = b.policy.closed_ports
    over = b.add_limit(CLOSED_PORT, closed.global_rate(), over=True)
    return [Rule((Proto("udp"), CtStateNew(), SocketOpen()), RETURN, "udp to an open socket"),
            b.condemn((Proto("udp"), CtStateNew(), OverLimit(over)), CLOSED_PORT, b.policy.mode_of(closed),
                      "udp to a closed port over the rate")]


def _failsafe(b: Builder) -> tuple[Rule, ...]:
    """One static prefix set per failsafe entry and IP version, and the rule that returns its protocol and
    ports from it. Protocol and port are compared before the lookup: other traffic pays no lookup."""
    out = []
    for i, entry in enumerate(b.policy.failsafe):
        ports = tuple(low if low == high else (low, high) for low, high in entry.ports)
        for version in (4, 6):
            nets = tuple(entry.networks(version))
            if nets:
                s = b.add_set(AddrSet(f"failsafe-{i}-v{version}", version, "allow", nets, role="failsafe"))
                out.append(Rule((Proto(entry.protocol), DstPorts(entry.protocol, ports), SourceInSet(s.name, version)),
                                RETURN, f"failsafe {i} v{version}"))
    return tuple(out)


def _never_limited(b: Builder, interfaces: tuple[str, ...], leave: tuple[Rule, ...] = ()) -> list[Rule]:
    """The start of a base chain: other interfaces, the failsafe pairs, then ``leave`` (what is settled
    without the allowlist: what nothing in the chain condemns, or a RST conntrack calls invalid, which no
    source needs), then the allowlist."""
    return [
        Rule((InterfaceNotIn(interfaces),), RETURN, "not a protected interface"),
        *b.failsafe,
        *leave,
        Rule((SourceInSet("allow-v4", 4),), RETURN, "allowlisted v4"),
        Rule((SourceInSet("allow-v6", 6),), RETURN, "allowlisted v6"),
    ]


def _bare_rst_leaves() -> Rule:
    """In ``filter-prerouting``, unless a limit covers TCP, ahead of the ban check: a bare RST (a spoofed
    RST flood) leaves at once. No protection spends little on one (conntrack calls it invalid, the node's
    TCP ignores it); every lookup before it here was a cost no protection has. A banned source's RST goes
    on to conntrack too: invalid, ``filter-conntrack`` drops it; valid, it can end only its own connection.
    Uncounted (nothing reads how many went by)."""
    return Rule((TcpFlags(("fin", "syn", "rst", "ack"), ("rst",)),), RETURN, "tcp bare rst", counter=False)


def _ack_leaves() -> Rule:
    """In ``filter-prerouting``, unless a limit covers TCP: with ACK and without SYN or FIN (established
    traffic; a spoofed ACK flood) leaves after the ban check: walking the bogus-flag, ICMP and SYN rules
    only added softirq time per packet of such a flood. Uncounted."""
    return Rule((TcpFlags(("fin", "syn", "ack"), ("ack",)),), RETURN, "tcp ack without syn or fin", counter=False)


def _closed_ports_skip_tcp() -> Rule:
    """In ``closed-ports``: TCP (a spoofed RST flood that conntrack calls invalid reaches input) leaves at once."""
    return Rule((Proto("tcp"),), RETURN, "tcp", counter=False)


def _invalid_rst(b: Builder) -> Rule:
    """In ``filter-conntrack``: a RST that conntrack calls invalid: it has no entry (conntrack never picks
    a connection up from a RST: a spoofed RST flood) or is outside the window it tracks. Such a RST
    can end no connection of a Service (without an entry it is not DNAT'd, so it never reaches the pod)
    and the node's TCP ignores one outside its window; dropped here, it costs the node less than it would
    without nodeguard (no routing, no input chains, no socket lookup). What it gives up: a host socket
    whose conntrack entry expired is reset by its peer's next RST after it sends again, not at once."""
    return b.condemn((TcpFlags(("rst",), ("rst",)), CtState(("invalid",))), INVALID_RST, b.policy.mode,
                     "rst that conntrack calls invalid")


def _tcp_not_opening() -> Rule:
    """In ``filter-conntrack``: TCP without SYN that conntrack calls new (picked up mid-stream: a spoofed
    ACK, or a connection whose entry expired) or invalid (a spoofed RST) is neither a handshake to
    remember nor a new connection to limit. Leaving here saves the walk; a connection whose entry
    expired is never cut by a connection limit (no protection does not cut it either)."""
    return Rule((TcpFlags(("syn",), ()), CtState(("new", "invalid"))), RETURN, "tcp not opening a connection",
                counter=False)


def _essential_icmp() -> list[Rule]:
    return [
        Rule((IcmpTypes(4, ICMP4_ESSENTIAL),), RETURN, "essential icmp"),
        Rule((IcmpTypes(6, ICMP6_ESSENTIAL),), RETURN, "essential icmpv6 (RFC 4890)"),
    ]


def _bogus_flag_rules(b: Builder, mode: Mode) -> tuple[Rule, ...]:
    all6 = ("fin", "syn", "rst", "psh", "ack", "urg")
    combos = [
        ("null", all6, ()),
        ("xmas", ("fin", "psh", "urg"), ("fin", "psh", "urg")),
        ("syn+fin", ("syn", "fin"), ("syn", "fin")),
        ("syn+rst", ("syn", "rst"), ("syn", "rst")),
        ("fin without ack", ("fin", "ack"), ("fin",)),
    ]
    return tuple(b.condemn((TcpFlags(mask, comp),), "bogus-flags", mode, f"bogus flags {label}")
                 for label, mask, comp in combos)


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
