"""Live table vs the render of the policy: what differs, and who is to blame.

Rules are compared by the IDs in their comments (taken from the renderer), base
chains by priority (re-chosen by the probe against the live foreign chains), the
allowlists by content. Meter contents are state, not configuration, and are ignored.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from . import model
from .apply import Plan
from .backend.nft import Nft, objects
from .render.ids import id_from_comment
from .render.nft import FAMILY, render_chain_rules


@dataclass(frozen=True)
class Drift:
    reasons: tuple[str, ...]
    culprit: str | None = None  # a foreign chain that out-prioritised us, when that is the cause

    def __str__(self) -> str:
        return "; ".join(self.reasons)


def expected_ids(ruleset: model.RuleSet) -> dict[str, list[str | None]]:
    """chain → rule IDs in order, straight from the renderer."""
    return {c.name: [id_from_comment(r["comment"]) for r in render_chain_rules(ruleset.table, c)]
            for c in ruleset.chains}


def live_ids(listing: list[dict]) -> dict[str, list[str | None]]:
    out: dict[str, list[str | None]] = {c["name"]: [] for c in objects(listing, "chain")}
    for r in objects(listing, "rule"):
        out.setdefault(r["chain"], []).append(id_from_comment(r.get("comment")))
    return out


def read_live(nft: Nft) -> tuple[list[dict], dict[str, list[dict]]]:
    """Our table without set elements (meters can hold millions), plus the allowlists' elements."""
    listing = nft.list(f"table {FAMILY} {model.TABLE}", terse=True)
    allow = {}
    for s in objects(listing, "set"):
        if s["name"].startswith("allow-"):
            full = objects(nft.list(f"set {FAMILY} {model.TABLE} {s['name']}"), "set")
            allow[s["name"]] = full[0].get("elem", []) if full else []
    return listing, allow


def diff_live(plan: Plan, listing: list[dict], allow_elems: dict[str, list]) -> Drift | None:
    if not listing:
        return Drift(("table inet nodeguard is missing",))
    reasons: list[str] = []
    culprit = None
    live_chains = {c["name"]: c for c in objects(listing, "chain")}
    for chain in plan.ruleset.base_chains:
        live = live_chains.get(chain.name)
        if live and live.get("prio") != chain.priority:
            reasons.append(f"{chain.name} at priority {live.get('prio')}, must be {chain.priority}")
            rivals = [f for f in plan.foreign if f.priority <= live.get("prio", 0)]
            culprit = culprit or (str(rivals[0]) if rivals else None)
    want, have = expected_ids(plan.ruleset), live_ids(listing)
    for name, ids in want.items():
        if name not in have:
            reasons.append(f"chain {name} is missing")
        elif have[name] != ids:
            kept = sum(1 for i in have[name] if i in ids)
            reasons.append(f"chain {name}: {kept} of {len(ids)} rules intact, {len(have[name])} present")
    reasons += [f"unexpected chain {n}" for n in have if n not in want]
    live_sets = {s["name"] for s in objects(listing, "set")}
    for s in plan.ruleset.sets:
        if s.name not in live_sets:
            reasons.append(f"set {s.name} is missing")
        elif s.kind == "allow" and _networks(allow_elems.get(s.name, [])) != set(s.elements):
            reasons.append(f"set {s.name} elements differ")
    return Drift(tuple(reasons), culprit) if reasons else None


def _networks(elems: list) -> set:
    out: set = set()
    for e in elems:
        if isinstance(e, str):
            out.add(ipaddress.ip_network(e))
        elif "prefix" in e:
            out.add(ipaddress.ip_network(f"{e['prefix']['addr']}/{e['prefix']['len']}"))
        elif "range" in e:
            lo, hi = (ipaddress.ip_address(a) for a in e["range"])
            out.update(ipaddress.summarize_address_range(lo, hi))
    return out
