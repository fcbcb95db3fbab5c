"""RuleSet → libnftables JSON objects for table ``inet nodeguard`` (pure; no kernel).

``render_nft`` gives every object the table must hold; ``sync/nft.py`` turns them, together
with what the kernel holds now, into the one transaction that gets there while keeping state.
Within a rule: matches and statements, then the counter, then the verdict, which is always last
(nft rejects anything after a terminal statement such as ``queue``).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from functools import singledispatch
from typing import Any, Callable

from .. import prefixes
from ..jsontext import JsonText
from ..model.matches import (Assured, BanSource, CountSource, CtState, CtStateNew, DstPortInSet, DstPorts, EngagePort,
                             Family, FibLocal, IcmpTypes, InterfaceNotIn, Log, NoTrack, OneIn, OverLimit, Proto, SocketOpen,
                             RememberSource, RememberSourcePort, SourceConnsOver, SourceInSet, SourceNotInSet,
                             SourcePortInSet, SourceRateOver, TcpFlags, UnderLimit, UpdateSource, ValveEngaged)
from ..model.ruleset import TABLE, AddrSet, Chain, NamedLimit, Rule, RuleSet
from ..model.verdicts import Continue, Drop, Goto, Jump, Queue, Return, Synproxy
from .ids import chained_ids, comment

FAMILY = "inet"
_V6_MASK = "ffff:ffff:ffff:ffff::"  # model.ruleset.V6_SOURCE_PREFIX
# A ``valve`` set is keyed on the layer-4 protocol: its one member, ``tcp``, means "engaged"; the rule
# asks ``meta l4proto @set`` (only SYNs reach it), so the set needs no address and no interval.
VALVE_ELEMENTS = ("tcp",)


@dataclass(frozen=True)
class NftObjects:
    table: dict
    sets: tuple[dict, ...]  # without elements, but a deny list's (its "elem": see _set)
    elements: dict[str, list]  # set name -> static elements (allowlists, port sets)
    limits: tuple[dict, ...]
    chains: tuple[dict, ...]
    rules: tuple[dict, ...]


def table_ref(table: str = TABLE) -> dict:
    return {"family": FAMILY, "name": table}


def render_nft(rs: RuleSet) -> NftObjects:
    sets = {s.name: s for s in rs.sets}
    return NftObjects(
        table=table_ref(rs.table),
        sets=tuple(_set(rs.table, s) for s in rs.sets),
        elements={s.name: _elements(s) for s in rs.sets if s.static},
        limits=tuple(_limit_object(rs.table, lim) for lim in rs.limits),
        chains=tuple(_chain(rs.table, c) for c in rs.chains),
        rules=tuple(r for c in rs.chains for r in render_chain_rules(rs.table, c, sets)),
    )


def render_chain_rules(table: str, chain: Chain, sets: dict[str, AddrSet]) -> list[dict]:
    """The chain's rules with their ``nodeguard:<id>`` comments."""
    bodies = [render_rule_expr(rule, sets) for rule in chain.rules]
    return [
        {"family": FAMILY, "table": table, "chain": chain.name, "expr": expr, "comment": comment(rid, rule.label)}
        for rule, expr, rid in zip(chain.rules, bodies, chained_ids(chain.name, bodies), strict=True)
    ]


def render_rule_expr(rule: Rule, sets: dict[str, AddrSet]) -> list[dict]:
    exprs: list[dict] = []
    for x in rule.matches:
        r = _match(x, sets)
        exprs += r if isinstance(r, list) else [r]
    if rule.counter:
        exprs.append({"counter": {"packets": 0, "bytes": 0}})
    if not isinstance(rule.verdict, Continue):
        exprs.append(verdict(rule.verdict))
    return exprs


class PrefixElements(JsonText):
    """A deny list's elements: its integers, which backend/nft_fill.py sends to the kernel as they are,
    and their JSON text, written only when shown (apply --dry-run, check --json)."""

    __slots__ = ("version", "prefixes")

    def __init__(self, version: int, elements: tuple[prefixes.Prefix, ...]) -> None:
        def write() -> str:
            text = prefixes.address_text
            return "[" + ",".join(['{"prefix":{"addr":"%s","len":%d}}' % (text(version, first), length)
                                   for first, length in elements]) + "]"
        super().__init__(write)
        self.version, self.prefixes = version, elements


def _elements(s: AddrSet) -> list:
    if s.kind == "ports":
        return list(s.elements)
    return [{"prefix": {"addr": address_text(n.network_address), "len": n.prefixlen}} for n in s.elements]


def address_text(addr) -> str:
    """``str(addr)``, faster: inet_ntop writes an IPv6 address as ipaddress does (RFC 5952: the first
    longest run of two or more zero groups as "::"; tests/test_address_text.py compares the two) in
    a fifth of the time (5,000 IPv6 allowlist entries: 25 ms less). Addresses whose first 80 bits are
    zero (IPv4-mapped and -compatible ones, which inet_ntop and Python versions print differently)
    and IPv4 addresses are ipaddress's own."""
    ip = int(addr)
    if addr.version == 4 or ip >> 48 == 0:
        return str(addr)
    return socket.inet_ntop(socket.AF_INET6, ip.to_bytes(16, "big"))


def _timed(s: AddrSet) -> dict:
    return {"size": s.size, "flags": ["timeout"], "timeout": s.timeout_s}


def _crowdsec(s: AddrSet) -> dict:  # ranges: each element its own timeout; addresses alone: a hash set
    # loads 100,000 in a second, an interval set not
    return {"size": s.size, "flags": ["interval", "timeout"] if s.role == "range" else ["timeout"]}


# kind -> (set, its address type) -> what that kind adds to or changes in the set object
SET_SPECS: dict[str, Callable[[AddrSet, str], dict]] = {
    "ports": lambda s, addr: {"type": "inet_service"},
    "valve": lambda s, addr: {"type": "inet_proto", **_timed(s)},
    "pickup": lambda s, addr: {"type": [addr, "inet_service"], **_timed(s)},
    "engaged": lambda s, addr: {"type": "inet_service", **_timed(s)},
    "allow": lambda s, addr: {"flags": ["interval"]},
    # sealed: filled with the set itself (sync/nft.py). An "add element" anywhere in a transaction makes
    # nft 1.0.6 list every element of every set in the table first (~1 s with 100,000 prefixes)
    "deny": lambda s, addr: {"flags": ["interval"], "elem": PrefixElements(s.version, s.elements)},
    "manual": lambda s, addr: {"size": s.size, "flags": ["interval", "timeout"]},  # each its own timeout, or none
    "crowdsec": lambda s, addr: _crowdsec(s),
    **dict.fromkeys(("meter", "trusted", "counts", "escalation"), lambda s, addr: _timed(s)),
    # ct count needs a dynamic set without timeout (nft adds "dynamic" itself)
    "conns": lambda s, addr: {"size": s.size},
}


def _set(table: str, s: AddrSet) -> dict:
    addr = "ipv4_addr" if s.version == 4 else "ipv6_addr"
    return {"family": FAMILY, "table": table, "name": s.name, "type": addr, **SET_SPECS[s.kind](s, addr)}


def _limit_object(table: str, lim: NamedLimit) -> dict:
    return {"family": FAMILY, "table": table, "name": lim.name, "rate": lim.rate.count, "per": lim.rate.unit,
            "burst": lim.rate.burst, "unit": "packets", "inv": lim.over}


def _chain(table: str, c: Chain) -> dict:
    obj: dict[str, Any] = {"family": FAMILY, "table": table, "name": c.name}
    if c.stage:
        obj.update(type="filter", hook=c.hook, prio=c.priority, policy="accept")
    return obj


def _eq(left: Any, right: Any, op: str = "==") -> dict:
    return {"match": {"op": op, "left": left, "right": right}}


def _payload(protocol: str, field: str) -> dict:
    return {"payload": {"protocol": protocol, "field": field}}


def _meta(key: str) -> dict:
    return {"meta": {"key": key}}


def _one_or_set(values: tuple) -> Any:
    return values[0] if len(values) == 1 else {"set": list(values)}


def _saddr(version: int) -> dict:
    return _payload("ip" if version == 4 else "ip6", "saddr")


def _source_key(version: int) -> dict:
    """Meters key IPv6 sources on their /64: one host owns at least that much."""
    return _saddr(4) if version == 4 else {"&": [_saddr(6), _V6_MASK]}


def _key_for(s: AddrSet | None, version: int) -> dict:
    """How a source is looked up in set ``s``: its /64 where the set keys on that, else the address."""
    return _source_key(version) if s is not None and s.keyed_by_prefix else _saddr(version)


@singledispatch
def _match(x: Any, sets: dict) -> dict | list[dict]:
    raise TypeError(f"no nft rendering for {x!r}")


@_match.register
def _(x: InterfaceNotIn, sets: dict) -> dict:
    return _eq(_meta("iifname"), {"set": list(x.names)}, "!=")


@_match.register
def _(x: Family, sets: dict) -> dict:
    return _eq(_meta("nfproto"), f"ipv{x.version}")


@_match.register
def _(x: Proto, sets: dict) -> dict:
    return _eq(_meta("l4proto"), x.name)


@_match.register
def _(x: IcmpTypes, sets: dict) -> dict:
    return _eq(_payload("icmp" if x.version == 4 else "icmpv6", "type"), _one_or_set(x.types))


@_match.register
def _(x: TcpFlags, sets: dict) -> dict:
    comp: Any = list(x.comp) if len(x.comp) > 1 else (x.comp[0] if x.comp else 0)
    return _eq({"&": [_payload("tcp", "flags"), list(x.mask)]}, comp)


@_match.register
def _(x: DstPorts, sets: dict) -> dict:
    ports = tuple(p if isinstance(p, int) else {"range": list(p)} for p in x.ports)
    return _eq(_payload(x.proto, "dport"), _one_or_set(ports), "!=" if x.negate else "==")


@_match.register
def _(x: SourceInSet, sets: dict) -> dict:
    return _eq(_key_for(sets.get(x.set), x.version), f"@{x.set}")


@_match.register
def _(x: SourceNotInSet, sets: dict) -> dict:
    return _eq(_key_for(sets.get(x.set), x.version), f"@{x.set}", "!=")


@_match.register
def _(x: CtStateNew, sets: dict) -> dict:
    return _eq({"ct": {"key": "state"}}, "new", "in")


@_match.register
def _(x: Assured, sets: dict) -> list[dict]:
    return [_eq({"ct": {"key": "status"}}, "assured", "in"), _eq({"ct": {"key": "direction"}}, "original")]


@_match.register
def _(x: RememberSource, sets: dict) -> dict:
    return {"set": {"op": "add", "elem": _key_for(sets[x.set], x.version), "set": f"@{x.set}"}}


def _source_port(version: int) -> dict:
    return {"concat": [_saddr(version), _payload("tcp", "sport")]}


@_match.register
def _(x: SourcePortInSet, sets: dict) -> dict:
    return _eq(_source_port(x.version), f"@{x.set}")


@_match.register
def _(x: RememberSourcePort, sets: dict) -> dict:
    return {"set": {"op": "add", "elem": _source_port(x.version), "set": f"@{x.set}"}}


@_match.register
def _(x: UpdateSource, sets: dict) -> dict:
    return {"set": {"op": "update", "elem": _key_for(sets[x.set], x.version), "set": f"@{x.set}"}}


@_match.register
def _(x: BanSource, sets: dict) -> dict:
    # add (not update): a ban is never extended; on a full set the add fails and the rule stops here
    return {"set": {"op": "add", "elem": _key_for(sets[x.set], x.version), "set": f"@{x.set}"}}


@_match.register
def _(x: SourceRateOver, sets: dict) -> dict:
    rate = sets[x.set].rate
    limit = {"limit": {"rate": rate.count, "per": rate.unit, "burst": rate.burst, "inv": True}}
    # update (not add) refreshes the element's timeout while the source keeps sending
    return {"set": {"op": "update", "elem": _source_key(x.version), "set": f"@{x.set}", "stmt": [limit]}}


@_match.register
def _(x: SourceConnsOver, sets: dict) -> dict:
    return {"set": {"op": "add", "elem": _source_key(x.version), "set": f"@{x.set}",
                    "stmt": [{"ct count": {"val": sets[x.set].limit, "inv": True}}]}}


@_match.register
def _(x: OverLimit, sets: dict) -> dict:
    return {"limit": x.limit}  # the object is an "over" bucket


@_match.register
def _(x: UnderLimit, sets: dict) -> dict:
    return {"limit": x.limit}


@_match.register
def _(x: FibLocal, sets: dict) -> dict:
    return _eq({"fib": {"result": "type", "flags": ["daddr"]}}, "local")


@_match.register
def _(x: SocketOpen, sets: dict) -> dict:
    # a lookup that finds no socket ends the rule; any socket found is transparent or not
    return _eq({"socket": {"key": "transparent"}}, {"set": [0, 1]})


@_match.register
def _(x: DstPortInSet, sets: dict) -> dict:
    return _eq(_payload("tcp", "dport"), f"@{x.set}")


@_match.register
def _(x: EngagePort, sets: dict) -> dict:  # update (not add): each SYN over the rate refreshes the timeout
    return {"set": {"op": "update", "elem": _payload("tcp", "dport"), "set": f"@{x.set}"}}


@_match.register
def _(x: ValveEngaged, sets: dict) -> dict:
    return _eq(_meta("l4proto"), f"@{x.set}")


@_match.register
def _(x: CtState, sets: dict) -> dict:
    return _eq({"ct": {"key": "state"}}, list(x.states) if len(x.states) > 1 else x.states[0], "in")


@_match.register
def _(x: NoTrack, sets: dict) -> dict:
    return {"notrack": None}


@_match.register
def _(x: CountSource, sets: dict) -> dict:
    return {"set": {"op": "update", "elem": _source_key(x.version), "set": f"@{x.set}", "stmt": [{"counter": None}]}}


@_match.register
def _(x: OneIn, sets: dict) -> dict:
    return _eq({"numgen": {"mode": "random", "mod": x.n, "offset": 0}}, 0)


@_match.register
def _(x: Log, sets: dict) -> dict:
    return {"log": {"prefix": f"{x.prefix} ", "group": x.nflog_group, "snaplen": x.snaplen}}


@singledispatch
def verdict(v: Any) -> dict:
    """A Continue is no statement at all: render_rule_expr leaves it out."""
    raise TypeError(f"no nft statement for verdict type {type(v).__name__}: {v!r}")


_CHAIN_KEYS = {Jump: "jump", Goto: "goto"}  # goto: continue there and never come back


@verdict.register(Jump)
@verdict.register(Goto)
def _(v: Jump | Goto) -> dict:
    return {_CHAIN_KEYS[type(v)]: {"target": v.chain}}


@verdict.register
def _(v: Queue) -> dict:  # no bypass: these packets are condemned either way
    return {"queue": {"num": v.number}}


@verdict.register
def _(v: Synproxy) -> dict:
    return {"synproxy": {"mss": v.mss, "wscale": v.wscale, "flags": ["timestamp", "sack-perm"]}}


_FIXED_KEYS = {Drop: "drop", Return: "return"}  # the verdicts without a parameter


@verdict.register(Drop)
@verdict.register(Return)
def _(v: Drop | Return) -> dict:
    return {_FIXED_KEYS[type(v)]: None}
