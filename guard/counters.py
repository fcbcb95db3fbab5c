"""The kernel's count of condemned packets and bytes per rule group and mode, read from the live
state the caller already has: the counters of the rules that condemn (model.Rule.group), found by
their ``nodeguard:<id>`` comments. Enforce counts are drops; monitor counts are would-be drops."""

from __future__ import annotations

from .apply import Live, Plan, read_state
from .backend.ipt import Ipset
from .backend.nft import Nft, objects
from .model import TABLE
from .render.ids import id_from_comment
from .render.ipt import ipset_name
from .render.nft import FAMILY, render_chain_rules

Key = tuple[str, str]  # (group, mode)


def drops_by_group(plan: Plan, live: Live) -> dict[Key, list[int]]:
    """(group, mode) -> [packets, bytes]."""
    ids = _condemning_ids(plan)
    out: dict[Key, list[int]] = {key: [0, 0] for key in set(ids.values())}
    if plan.nft is not None:
        for r in live.rules:
            key = ids.get(id_from_comment(r.get("comment")))
            counter = next((e["counter"] for e in r["expr"] if "counter" in e), None)
            if key and counter:
                out[key][0] += counter["packets"]
                out[key][1] += counter["bytes"]
        return out
    for tables in live.saved.values():
        for _chains, rules in tables.values():
            for r in rules:
                key = ids.get(r.rule_id)
                if key:
                    out[key][0] += r.packets
                    out[key][1] += r.bytes
    return out


def condemned_by_group(plan: Plan, nft: Nft) -> dict[Key, int]:
    """(group, mode) -> packets, read from the kernel now."""
    return {k: v[0] for k, v in drops_by_group(plan, read_state(plan, nft)).items()}


def _condemning_ids(plan: Plan) -> dict[str, Key]:
    if plan.nft is not None:
        sets = {s.name: s for s in plan.ruleset.sets}
        out: dict[str, Key] = {}
        for chain in plan.ruleset.chains:
            for rule, rendered in zip(chain.rules, render_chain_rules(plan.ruleset.table, chain, sets), strict=True):
                if rule.group:
                    out[id_from_comment(rendered["comment"])] = (rule.group, rule.mode)
        return out
    return {rid: key for render in plan.ipt.values() for rid, key in render.condemning.items()}


def source_counts(plan: Plan, nft: Nft) -> dict[tuple[str, str, str], int]:
    """(group, mode, source) -> packets the kernel counted for that source, for the sources in the
    sampler's ``counts`` sets (IPv6 sources are /64 prefixes). Read one set at a time: small sets."""
    out: dict[tuple[str, str, str], int] = {}
    for (group, mode, _version), s in _count_sets(plan).items():
        if plan.nft is not None:
            listing = objects(nft.list(f"set {FAMILY} {TABLE} {s.name}"), "set")
            for e in listing[0].get("elem", []) if listing else []:
                elem = e.get("elem", {}) if isinstance(e, dict) else {}
                if "counter" in elem and isinstance(elem.get("val"), str):
                    out[(group, mode, elem["val"])] = elem["counter"]["packets"]
        else:
            for addr, (packets, _bytes) in Ipset.counts(ipset_name(s)).items():
                out[(group, mode, addr.split("/")[0])] = packets
    return out


def forget_sources(plan: Plan, keys: list[tuple[str, str, str]]) -> None:
    """Remove quiet sources from the iptables backend's ``counts`` ipsets (one ``ipset restore``)."""
    names = {key: ipset_name(s) for key, s in _count_sets(plan).items()}
    lines = [f"del {names[(g, m, 6 if ':' in src else 4)]} {src} -exist" for g, m, src in keys
             if (g, m, 6 if ":" in src else 4) in names]
    Ipset.restore("\n".join(lines) + "\n" if lines else "")


def _count_sets(plan: Plan) -> dict:
    """(group, mode, IP version) -> the ``counts`` set. Bases: "count-<mode>-<group>-v<version>" (condemned
    packets per source), "seen-<group>-v<version>" (every packet per source: mode "observed")."""
    out = {}
    for s in plan.ruleset.sets:
        if s.kind == "counts":
            kind, rest = s.base.split("-", 1)
            mode, rest = rest.split("-", 1) if kind == "count" else ("observed", rest)
            out[(rest.rsplit("-v", 1)[0], mode, s.version)] = s
    return out


def trusted_sources(plan: Plan, nft: Nft) -> set[str]:
    """Sources that completed a TCP handshake within ``syn.trusted_after_handshake_s`` (the trusted sets)."""
    out: set[str] = set()
    for s in plan.ruleset.sets:
        if s.kind != "trusted":
            continue
        if plan.nft is not None:
            listing = objects(nft.list(f"set {FAMILY} {TABLE} {s.name}"), "set")
            for e in listing[0].get("elem", []) if listing else []:
                val = e.get("elem", {}).get("val") if isinstance(e, dict) else e
                if isinstance(val, str):
                    out.add(val)
        else:
            out.update(a.split("/")[0] for a in Ipset.members(ipset_name(s)))
    return out
