"""RuleSet → libnftables JSON commands for table ``inet nodeguard`` (pure; no kernel).

``render_nft`` gives the objects; ``replace_table`` wraps them into the one
transaction that swaps the whole table atomically (add, delete, re-add: the
add makes the delete safe when the table does not exist yet).
"""

from __future__ import annotations

from functools import singledispatch
from typing import Any

from .. import model as m
from .ids import chained_ids, comment

FAMILY = "inet"
_V6_MASK = "ffff:ffff:ffff:ffff::"  # model.V6_SOURCE_PREFIX


def table_ref(table: str = m.TABLE) -> dict:
    return {"family": FAMILY, "name": table}


def render_nft(rs: m.RuleSet) -> list[dict]:
    """Every object of the table as ``{"add": {...}}`` commands: sets, chains, then rules."""
    out: list[dict] = [{"add": {"table": table_ref(rs.table)}}]
    out += [{"add": {"set": _set(rs.table, s)}} for s in rs.sets]
    out += [{"add": {"limit": {"family": FAMILY, "table": rs.table, "name": name, "rate": rate.count,
                               "per": rate.unit, "burst": rate.burst_or(1)}}}
            for name, rate in shared_limits(rs).items()]
    out += [{"add": {"chain": _chain(rs.table, c)}} for c in rs.chains]
    for chain in rs.chains:
        out += [{"add": {"rule": rule}} for rule in render_chain_rules(rs.table, chain)]
    return out


def render_chain_rules(table: str, chain: m.Chain) -> list[dict]:
    """The chain's rules with their ``nodeguard:<id>`` comments."""
    bodies = [render_rule_expr(rule) for rule in chain.rules]
    return [
        {"family": FAMILY, "table": table, "chain": chain.name, "expr": expr, "comment": comment(rid, rule.label)}
        for rule, expr, rid in zip(chain.rules, bodies, chained_ids(chain.name, bodies), strict=True)
    ]


def shared_limits(rs: m.RuleSet) -> dict[str, m.Rate]:
    """The named buckets the rules share (nft limit objects)."""
    return {x.name: x.rate for c in rs.chains for r in c.rules for x in r.matches if isinstance(x, m.SharedRateUnder)}


def replace_table(rs: m.RuleSet) -> dict:
    """One atomic transaction that replaces the whole table: never a moment without rules."""
    ref = table_ref(rs.table)
    return {"nftables": [{"add": {"table": ref}}, {"delete": {"table": ref}}, *render_nft(rs)]}


def delete_table(table: str = m.TABLE) -> dict:
    ref = table_ref(table)
    return {"nftables": [{"add": {"table": ref}}, {"delete": {"table": ref}}]}


def render_rule_expr(rule: m.Rule) -> list[dict]:
    exprs: list[dict] = []
    for x in rule.matches:
        r = _match(x)
        exprs += r if isinstance(r, list) else [r]
    exprs.append({"counter": {"packets": 0, "bytes": 0}})
    return exprs if isinstance(rule.verdict, m.Continue) else [*exprs, _verdict(rule.verdict)]


def _set(table: str, s: m.AddrSet) -> dict:
    obj: dict[str, Any] = {"family": FAMILY, "table": table, "name": s.name,
                           "type": "ipv4_addr" if s.version == 4 else "ipv6_addr"}
    if s.kind == "allow":
        obj["flags"] = ["interval"]
        if s.elements:
            obj["elem"] = [{"prefix": {"addr": str(n.network_address), "len": n.prefixlen}} for n in s.elements]
    elif s.kind in ("meter", "trusted"):
        obj.update(size=s.size, flags=["timeout"], timeout=s.timeout_s)
    else:  # conns: ct count needs a dynamic set without timeout
        obj.update(size=s.size)
    return obj


def _chain(table: str, c: m.Chain) -> dict:
    obj: dict[str, Any] = {"family": FAMILY, "table": table, "name": c.name}
    if c.hook:
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


def _limit(rate: Any) -> dict:
    return {"limit": {"rate": rate.count, "per": rate.unit, "burst": rate.burst, "inv": True}}


@singledispatch
def _match(x: Any) -> dict:
    raise TypeError(f"no nft rendering for {x!r}")


@_match.register
def _(x: m.InterfaceNotIn) -> dict:
    return _eq(_meta("iifname"), {"set": list(x.names)}, "!=")


@_match.register
def _(x: m.Family) -> dict:
    return _eq(_meta("nfproto"), f"ipv{x.version}")


@_match.register
def _(x: m.Proto) -> dict:
    return _eq(_meta("l4proto"), x.name)


@_match.register
def _(x: m.IcmpTypes) -> dict:
    return _eq(_payload("icmp" if x.version == 4 else "icmpv6", "type"), _one_or_set(x.types))


@_match.register
def _(x: m.TcpFlags) -> dict:
    comp: Any = list(x.comp) if len(x.comp) > 1 else (x.comp[0] if x.comp else 0)
    return _eq({"&": [_payload("tcp", "flags"), list(x.mask)]}, comp)


@_match.register
def _(x: m.DstPorts) -> dict:
    return _eq(_payload(x.proto, "dport"), _one_or_set(x.ports), "!=" if x.negate else "==")


@_match.register
def _(x: m.SourceInSet) -> dict:
    return _eq(_saddr(x.version), f"@{x.set}")


@_match.register
def _(x: m.CtStateNew) -> dict:
    return _eq({"ct": {"key": "state"}}, "new", "in")


@_match.register
def _(x: m.Assured) -> list[dict]:
    return [_eq({"ct": {"key": "status"}}, "assured", "in"), _eq({"ct": {"key": "direction"}}, "original")]


@_match.register
def _(x: m.SourceNotInSet) -> dict:
    return _eq(_saddr(x.version), f"@{x.set}", "!=")


@_match.register
def _(x: m.RememberSource) -> dict:
    return {"set": {"op": "add", "elem": _saddr(x.version), "set": f"@{x.set}"}}


@_match.register
def _(x: m.SourceRateOver) -> dict:
    # update (not add) refreshes the element's timeout while the source keeps sending
    return {"set": {"op": "update", "elem": _source_key(x.version), "set": f"@{x.meter}", "stmt": [_limit(x.rate)]}}


@_match.register
def _(x: m.RateOver) -> dict:
    return _limit(x.rate)


@_match.register
def _(x: m.RateUnder) -> dict:
    return {"limit": {"rate": x.rate.count, "per": x.rate.unit, "burst": x.rate.burst_or(1)}}


@_match.register
def _(x: m.SharedRateUnder) -> dict:
    return {"limit": x.name}


@_match.register
def _(x: m.ToUserspace) -> dict:
    if x.transport == "nfqueue":  # no bypass: these packets are condemned either way
        return {"queue": {"num": x.number}}
    return {"log": {"prefix": f"ng:{x.group} ", "group": x.number, "snaplen": x.snaplen}}


@_match.register
def _(x: m.SourceConnsOver) -> dict:
    return {"set": {"op": "add", "elem": _source_key(x.version), "set": f"@{x.meter}",
                    "stmt": [{"ct count": {"val": x.limit, "inv": True}}]}}


def _verdict(v: m.Verdict) -> dict:
    if isinstance(v, m.Jump):
        return {"jump": {"target": v.chain}}
    if isinstance(v, m.Goto):
        return {"goto": {"target": v.chain}}
    return {"drop": None} if isinstance(v, m.Drop) else {"return": None}
