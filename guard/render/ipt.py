"""RuleSet → what the iptables backend installs, per IP family: our chains' rules and our jumps,
plus the ipsets they use. Pure; ``sync/ipt.py`` turns it into restore text against the live state.

Placement (placement.py): the stateless chain goes to **raw** PREROUTING (before conntrack), the
stateful one to **mangle** PREROUTING (after conntrack, before nat's DNAT, as nft's -190). Only
nodeguard's own chains and its jump rules are ever written; every line carries ``nodeguard:<id> <label>``.
Our jumps are the first rules of each built-in chain, in render order (raw PREROUTING: the stateless
chain, whose head is the ban check).

Where iptables cannot say what the model says:
* ``iifname != {a, b} return`` becomes a dispatcher: the base chain holds ``-i a -g <base>-UPLINK``
  per interface, and the rest of the rules live in ``<base>-UPLINK``;
* "rate over" is ``-m hashlimit --hashlimit-above`` (without ``--hashlimit-mode`` it is one global
  bucket: ``-m limit`` can only match *under* a rate); its table name hashes every parameter, since
  the kernel keeps a table's parameters for as long as a rule uses its name;
* a per-source meter must never drop because it is full. xt_hashlimit does exactly that when its
  table reaches ``--hashlimit-htable-max`` (the packet is hot-dropped), so a source enters the
  hashlimit table only once it is in an **admission ipset** of ``meter.size`` entries, which
  ``-j SET`` fills and which, when full, admits nobody and drops nothing. The hashlimit table
  can then hold at most the sources admitted within one expiry period: with the ipset timeout at
  least the hashlimit expiry plus its garbage-collection interval, that is at most
  2 × ``meter.size`` (every member at the start of the period, plus one newcomer for each member
  that timed out during it), plus what concurrent adds overshoot ``maxelem`` by;
  ``--hashlimit-htable-max`` is set to 3 × ``meter.size`` + 4096;
* allowlists, deny lists and trusted sources are ipsets (``hash:net``, ``hash:ip timeout``); manual
  bans a ``hash:net timeout 0`` ipset (each entry its own timeout, or none);
* tcp_pickup's second-chance sets are ``hash:ip,port timeout`` ipsets matched ``src,src``; the segment
  seen the first time is added (``-j SET``, which a full set refuses) and dropped on the line after,
  which matches only when the pair is in the set then, as a ban's count does;
* escalation's timed sets are ``hash:ip timeout`` ipsets (IPv6: ``netmask 64``); "update" is
  ``-j SET --add-set X src --exist`` (a re-add restarts the timeout); a ban is an add without
  ``--exist``, and since ``SET`` never fails a rule, the ban's counter sits on a line of its own after
  it that matches only when the source is in the ban set then (a full set takes nobody in);
* the SYN valve's "engaged" flag (a ``valve`` set) is a ``hash:net timeout`` ipset per family that
  holds every source while engaged: the two halves of the address space (``VALVE_ELEMENTS``), added
  by the daemon with ``ipset add -exist ... timeout``; the same on iptables-nft and -legacy.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import singledispatch
from typing import Any, Callable

from .. import prefixes
from ..model.matches import (BanSource, CountSource, IcmpTypes, InterfaceNotIn, RememberSourcePort, SourceRateOver,
                             ValveEngaged)
from ..model.ruleset import V6_SOURCE_PREFIX, AddrSet, NamedLimit, Rule, RuleSet
from ..model.verdicts import Continue, Drop, Goto, Jump, Queue, Return, Synproxy
from ..placement import PLACEMENTS
from .ids import chained_ids, comment
from .ipt_matches import Ctx, carried_target, families, implied_proto, match
from .ipt_names import ipset_name, ipt_chain_name

HASHLIMIT_GC_S = 1  # xt_hashlimit's default --hashlimit-htable-gcinterval
VALVE_ELEMENTS = {4: ("0.0.0.0/1", "128.0.0.0/1"), 6: ("::/1", "8000::/1")}  # every source: engaged



@dataclass(frozen=True)
class Tag:
    """What a line's counter counts, when it counts something: a condemning line's (group, mode) drops
    (``valve``: it is the SYN valve's backstop), bans, or the model rule's ``tally``."""

    group: tuple[str, str] | None = None
    valve: bool = False
    ban: bool = False
    tally: str | None = None


@dataclass(frozen=True)
class Ipset:
    """One ipset as ``ipset create`` sees it (the definition) plus, for allowlists, its members."""

    name: str
    type: str  # hash:net, hash:ip, hash:ip,port or bitmap:port
    family: str  # inet or inet6 (bitmap:port has none: one set per family keeps v4 and v6 apart)
    maxelem: int
    timeout: int | None = None
    netmask: int | None = None
    members: tuple[str, ...] | None = None  # None: contents are state, not configuration
    counters: bool = False
    hashsize: int | None = None  # initial buckets (ipset's default: 1024); a live set may have more (the
                                 # kernel grows it on adds from userspace), never fewer

    def create_args(self) -> str:
        if self.type == "bitmap:port":
            return f"{self.type} range 0-65535" + (f" timeout {self.timeout}" if self.timeout is not None else "")
        out = f"{self.type} family {self.family} maxelem {self.maxelem}"
        if self.hashsize is not None:
            out += f" hashsize {self.hashsize}"
        if self.netmask is not None:
            out += f" netmask {self.netmask}"
        out += f" timeout {self.timeout}" if self.timeout is not None else ""
        return out + (" counters" if self.counters else "")


@dataclass(frozen=True)
class Line:
    """One rule the render wrote: what readers need is kept beside the text, never parsed back out of it."""

    chain: str  # ours, or for a jump its built-in chain
    spec: str  # with the ``nodeguard:<id> <label>`` comment
    id: str
    target: str | None = None  # a jump's: our chain it jumps to


@dataclass
class Table:
    """What nodeguard owns in one iptables table of one family."""

    name: str
    chains: list[str] = field(default_factory=list)
    rules: list[Line] = field(default_factory=list)
    jumps: list[Line] = field(default_factory=list)  # rules 1..k of their built-in chains, in order


@dataclass
class Render:
    version: int
    tables: dict[str, Table]
    condemning: dict[str, tuple[str, str]] = field(default_factory=dict)  # rule id -> (group, mode)
    bans: set[str] = field(default_factory=set)  # ids of the lines whose counters count bans
    valve: set[str] = field(default_factory=set)  # ids of the SYN valve's backstop lines
    tallies: dict[str, str] = field(default_factory=dict)  # rule id -> the model rule's tally

    def rule_ids(self) -> dict[str, list[str]]:
        """chain → rule IDs in order (jumps under ``<table>/<built-in chain>``)."""
        out: dict[str, list[str]] = {}
        for t in self.tables.values():
            for chain in t.chains:
                out[chain] = []
            for line in t.rules:
                out[line.chain].append(line.id)
            for jump in t.jumps:
                out.setdefault(f"{t.name}/{jump.chain}", []).append(jump.id)
        return out


def ipsets(rs: RuleSet) -> list[Ipset]:
    """Every ipset the render uses (conns sets are connlimit matches, not ipsets)."""
    made = (IPSETS[s.kind](s, ipset_name(s), "inet" if s.version == 4 else "inet6") for s in rs.sets)
    return [i for i in made if i is not None]


def _by_prefix(s: AddrSet) -> int | None:
    """The ipset's netmask: the model's keying, as nft masks the key."""
    return V6_SOURCE_PREFIX if s.version == 6 and s.keyed_by_prefix else None


def _timed_sources(s: AddrSet, name: str, fam: str) -> Ipset:
    """Sources the packet path adds, each for the set's timeout (trusted, and escalation's sets)."""
    return Ipset(name, "hash:ip", fam, s.size, s.timeout_s, _by_prefix(s), hashsize=packet_hashsize(s))


def _static_net(s: AddrSet, name: str, fam: str, members: tuple[str, ...]) -> Ipset:
    return Ipset(name, "hash:net", fam, max(65536, 2 * len(s.elements)), members=members)


# kind -> (set, ipset name, ipset family) -> its ipset, or None for a kind that needs none
IPSETS: dict[str, Callable[[AddrSet, str, str], Ipset | None]] = {
    "allow": lambda s, name, fam: _static_net(s, name, fam, tuple(str(n) for n in s.elements)),
    "deny": lambda s, name, fam: _static_net(s, name, fam, tuple(prefixes.text(s.version, p) for p in s.elements)),
    "trusted": _timed_sources,
    "escalation": _timed_sources,
    "meter": lambda s, name, fam: Ipset(name, "hash:ip", fam, s.size, admission_timeout_s(s), _by_prefix(s),
                                        hashsize=packet_hashsize(s)),
    "ports": lambda s, name, fam: Ipset(name, "bitmap:port", fam, 65536, members=tuple(str(p) for p in s.elements)),
    "engaged": lambda s, name, fam: Ipset(name, "bitmap:port", fam, 65536, s.timeout_s),
    "valve": lambda s, name, fam: Ipset(name, "hash:net", fam, s.size, s.timeout_s, hashsize=packet_hashsize(s)),
    # a source address and TCP port: "src,src"
    "pickup": lambda s, name, fam: Ipset(name, "hash:ip,port", fam, s.size, s.timeout_s, hashsize=packet_hashsize(s)),
    # timeout 0: an entry without one is permanent; `ban --for` gives its own
    "manual": lambda s, name, fam: Ipset(name, "hash:net", fam, s.size, 0),
    # no timeout: a re-add (the only refresh) would zero the counters; the sampler removes sources that
    # went quiet instead (a sampler that is down only stops counting)
    "counts": lambda s, name, fam: Ipset(name, "hash:ip", fam, s.size, None, _by_prefix(s), counters=True,
                                         hashsize=packet_hashsize(s, timed=False)),
    "conns": lambda s, name, fam: None,  # a connlimit match
    "crowdsec": lambda s, name, fam: None,  # nft backend only (policy/schema.py refuses it with iptables)
}


IPSET_BUCKET = 12  # entries a hash ipset's bucket takes from the packet path, which never grows a set


def packet_hashsize(s: AddrSet, timed: bool = True) -> int | None:
    """Buckets for a set the packet path fills (``-j SET``). Such an add never grows a hash ipset and a
    full bucket (``IPSET_BUCKET`` entries) refuses it, so the buckets bound what the set takes (ipset's default 1024:
    12,288 of a 65,536-source meter, which failed open at a fifth of its size). But a set with a timeout
    that reaches ``maxelem`` garbage-collects a region (1,024 buckets) on every add it then refuses, and
    a spoofed flood makes that every packet's cost (bench/chains.py --scenario syn-spoofed-host, iptables-nft,
    µs per SYN: a quarter of ``size`` in buckets 24.8, a sixteenth 12.8, no protection 11.1). So a timed
    set gets a sixteenth of ``size`` (a power of two, at least 64): its buckets fill at three quarters of
    ``size`` on average, before ``maxelem``. An untimed one (the sampler's counts: no collection) a quarter,
    None (ipset's default) while that is 1024 or fewer."""
    if timed:
        return max(64, 1 << max(0, (s.size // 16).bit_length() - 1))
    buckets = 1 << max(0, (s.size // 4).bit_length() - 1)
    return buckets if buckets > 1024 else None


def admission_timeout_s(s: AddrSet) -> int:
    """At least the hashlimit expiry plus its GC interval: bounds the hashlimit table (see above)."""
    return s.timeout_s + HASHLIMIT_GC_S + 1


# --- the model, rendered ------------------------------------------------------------------
def render_ipt(rs: RuleSet, version: int) -> Render:
    rs = expand_icmp(rs)
    sets = {s.name: s for s in rs.sets}
    limits = {x.name: x for x in rs.limits}
    tables: dict[str, Table] = {}
    tags: dict[str, Tag] = {}
    owner = _table_of_chains(rs)
    names = {c.name: ipt_chain_name(c) for c in rs.chains}
    lines = lambda rs_: [line for r in rs_ for line in _rule(r, version, sets, limits, names)]  # noqa: E731
    for chain in rs.chains:
        table = tables.setdefault(owner[chain.name], Table(owner[chain.name]))
        rules = [r for r in chain.rules if _applies(r, version)]
        name = names[chain.name]
        if chain.version is not None and chain.version != version:
            continue  # the other family's escalation chain: nothing in this family goes there
        if chain.stage and rules and isinstance(rules[0].matches[0], InterfaceNotIn):
            uplink = f"{name}-UPLINK"
            dispatch = [(f"-i {ifname} -g {uplink}", f"uplink {ifname}", None) for ifname in rules[0].matches[0].names]
            _add_chain(table, name, dispatch, tags)
            _add_chain(table, uplink, lines(rules[1:]), tags)
        else:
            _add_chain(table, name, lines(rules), tags)
        if chain.stage:
            for builtin in PLACEMENTS[chain.stage].ipt_builtins:
                body = f"-j {name}"
                (jid,) = chained_ids(f"{table.name}/{builtin}", [body])
                table.jumps.append(Line(builtin, f'-m comment --comment "{comment(jid, "jump to " + name)}" {body}',
                                        jid, name))
    return Render(version, tables, {k: v.group for k, v in tags.items() if v.group},
                  {k for k, v in tags.items() if v.ban}, {k for k, v in tags.items() if v.valve},
                  {k: v.tally for k, v in tags.items() if v.tally})


def _add_chain(table: Table, name: str, rules: list[tuple[str, str, Tag | None]],
               tags: dict[str, Tag]) -> None:
    table.chains.append(name)
    bodies = [body for body, _label, _tag in rules]
    for (body, label, tag), rid in zip(rules, chained_ids(name, bodies), strict=True):
        table.rules.append(Line(name, f'-m comment --comment "{comment(rid, label)}" {body}'.rstrip(), rid))
        if tag:
            tags[rid] = tag


def _table_of_chains(rs: RuleSet) -> dict[str, str]:
    """Every chain lives in the table of the base chain that reaches it."""
    owner: dict[str, str] = {}
    for base in rs.base_chains:
        todo = [base.name]
        while todo:
            name = todo.pop()
            owner.setdefault(name, PLACEMENTS[base.stage].ipt_table)
            todo += [r.verdict.chain for r in rs.chain(name).rules if isinstance(r.verdict, (Jump, Goto))]
    return owner


def _applies(rule: Rule, version: int) -> bool:
    return all(version in families(x) for x in rule.matches)


def _rule(rule: Rule, version: int, sets: dict[str, AddrSet], limits: dict[str, NamedLimit],
          names: dict[str, str]) -> list[tuple[str, str, Tag | None]]:
    """One model rule as iptables lines (a per-source meter needs its admission line first), each
    with what its counter counts, if anything."""
    ctx = Ctx(version, sets, limits)
    proto = _proto(rule, version)
    parts = [f"-p {proto}"] if proto else []
    out = []
    add = next((x for x in rule.matches if isinstance(x, (BanSource, RememberSourcePort))), None)
    if add is not None:  # SET cannot fail the rule: the line after it sees whether the add took
        before = [p for x in rule.matches if x is not add for p in match(x, ctx)]
        name = ipset_name(sets[add.set])
        dims = "src,src" if isinstance(add, RememberSourcePort) else "src"
        out.append((" ".join([*parts, *before, f"-j SET --add-set {name} {dims}"]), f"{rule.label} (add)", None))
        took = [*parts, *before, f"-m set --match-set {name} {dims}"]
        if isinstance(add, BanSource):
            return [*out, (" ".join(took), rule.label, Tag(ban=True))]
        return [*out, (" ".join([*took, _target(rule, ctx, names)]), rule.label, Tag((rule.group, rule.mode)))]
    for x in rule.matches:
        if isinstance(x, (SourceRateOver, CountSource)):
            name = ipset_name(sets[x.set])
            # the membership test of the admission line must not count (ipset counts every match it makes)
            quiet = " ! --update-counters" if isinstance(x, CountSource) else ""
            admit = [*parts, f"-m set ! --match-set {name} src{quiet}", f"-j SET --add-set {name} src"]
            out.append((" ".join(admit), f"{rule.label} admission", None))
            parts.append(f"-m set --match-set {name} src")  # a CountSource rule ends here: the match counts
        parts += match(x, ctx)
    parts.append(_target(rule, ctx, names))
    tag = Tag((rule.group, rule.mode), any(isinstance(x, ValveEngaged) for x in rule.matches)) if rule.group \
        else Tag(tally=rule.tally) if rule.tally else None
    return [*out, (" ".join(p for p in parts if p), rule.label, tag)]


def _proto(rule: Rule, version: int) -> str | None:
    """The first protocol a match implies: iptables wants ``-p`` before the protocol's own matches."""
    return next((p for x in rule.matches if (p := implied_proto(x, version)) is not None), None)


def _target(rule: Rule, ctx: Ctx, names: dict[str, str]) -> str:
    """The first target a statement carries, else the verdict's."""
    carried = next((t for x in rule.matches if (t := carried_target(x, ctx)) is not None), None)
    return verdict(rule.verdict, names) if carried is None else carried


@singledispatch
def verdict(v: Any, names: dict[str, str]) -> str:
    raise TypeError(f"no iptables target for verdict type {type(v).__name__}: {v!r}")


_CHAIN_FLAGS = {Jump: "-j", Goto: "-g"}  # -g: continue there and never come back


@verdict.register(Jump)
@verdict.register(Goto)
def _(v: Jump | Goto, names: dict[str, str]) -> str:
    return f"{_CHAIN_FLAGS[type(v)]} {names[v.chain]}"


@verdict.register
def _(v: Queue, names: dict[str, str]) -> str:
    return f"-j NFQUEUE --queue-num {v.number}"


@verdict.register
def _(v: Synproxy, names: dict[str, str]) -> str:
    return f"-j SYNPROXY --sack-perm --timestamp --wscale {v.wscale} --mss {v.mss}"


_FIXED_TARGETS = {Drop: "-j DROP", Return: "-j RETURN", Continue: ""}  # the verdicts without a parameter


@verdict.register(Drop)
@verdict.register(Return)
@verdict.register(Continue)
def _(v: Drop | Return | Continue, names: dict[str, str]) -> str:
    return _FIXED_TARGETS[type(v)]


def expand_icmp(rs: RuleSet) -> RuleSet:
    """iptables matches one ICMP type per rule: split multi-type rules (labels keep the type)."""
    chains = []
    for c in rs.chains:
        rules: list[Rule] = []
        for r in c.rules:
            icmp = [x for x in r.matches if isinstance(x, IcmpTypes)]
            if not icmp or len(icmp[0].types) == 1:
                rules.append(r)
                continue
            for t in icmp[0].types:
                matches = tuple(IcmpTypes(x.version, (t,)) if x is icmp[0] else x for x in r.matches)
                rules.append(Rule(matches, r.verdict, f"{r.label} type {t}", r.counter))
        chains.append(dataclasses.replace(c, rules=tuple(rules)))
    return RuleSet(tuple(chains), rs.sets, rs.limits, rs.interfaces, rs.table, rs.sample_groups)
