"""The kernel's count of condemned packets and bytes per rule group and mode, read from the live
state the caller already has: the counters of the rules that condemn (model.Rule.group), found by
their ``nodeguard:<id>`` comments. Enforce counts are drops; monitor counts are would-be drops."""

from __future__ import annotations

from .apply import Live, Plan, read_state
from .backend.nft import Nft
from .render.ids import id_from_comment
from .render.nft import render_chain_rules

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
