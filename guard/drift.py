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
from .backend.ipt import Ipset, Ipt
from .backend.nft import Nft, objects
from .render.ipt import ipset_name, spec_id
from .render.ids import id_from_comment
from .render.nft import FAMILY, render_chain_rules


@dataclass(frozen=True)
class Drift:
    reasons: tuple[str, ...]
    culprit: str | None = None  # a foreign chain that out-prioritised us, when that is the cause
    families: frozenset[int] = frozenset({4, 6})  # iptables: which families need a restore
    sets_missing: bool = True  # iptables: whether the ipsets must be re-created too

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


def diff_plan(plan: Plan, nft: Nft) -> Drift | None:
    """The drift of whichever backend the plan is for."""
    if plan.transaction is not None:
        return diff_live(plan, *read_live(nft))
    return diff_ipt(plan)


def diff_ipt(plan: Plan) -> Drift | None:
    """Our chains hold exactly the rendered rule IDs, and each jump is rule 1 of its built-in chain."""
    ipt = Ipt(plan.flavour)
    reasons: list[str] = []
    culprit = None
    families: set[int] = set()
    for version, render in plan.ipt.items():
        live = ipt.tables(version)
        before = len(reasons)
        for tname, table in render.tables.items():
            chains, rules = live.get(tname, ([], []))
            have: dict[str, list[str | None]] = {}
            for r in rules:
                have.setdefault(r.chain, []).append(r.rule_id)
            want = render.rule_ids()
            for chain in table.chains:
                where = f"v{version} {tname} {chain}"
                if chain not in chains:
                    reasons.append(f"{where} is missing")
                elif have.get(chain, []) != want[chain]:
                    kept = sum(1 for i in have.get(chain, []) if i in want[chain])
                    reasons.append(f"{where}: {kept} of {len(want[chain])} rules intact")
            for builtin, spec in table.jumps:
                jid = spec_id(spec)
                in_builtin = [r for r in rules if r.chain == builtin]
                positions = [r.position for r in in_builtin if r.rule_id == jid]
                where = f"v{version} {tname} {builtin}"
                if not positions:
                    reasons.append(f"jump in {where} is missing")
                elif positions != [1]:
                    reasons.append(f"jump in {where} is at position {positions[0]}, must be 1"
                                   + (f" ({len(positions)} copies)" if len(positions) > 1 else ""))
                    if in_builtin[0].rule_id != jid:
                        culprit = culprit or f"{_target(in_builtin[0].line)} in {where}"
        if len(reasons) > before:
            families.add(version)
    missing_sets = {ipset_name(s.name) for s in plan.ruleset.sets if s.kind in ("allow", "trusted")} - Ipset.names()
    if missing_sets:
        reasons += [f"ipset {n} is missing" for n in sorted(missing_sets)]
        families = {4, 6}  # the restore re-creates the sets; rules referencing them need them back
    return Drift(tuple(reasons), culprit, frozenset(families), bool(missing_sets)) if reasons else None


def _target(save_line: str) -> str:
    """What a competing rule does: its jump target, else its comment, else the rule itself."""
    parts = save_line.split()
    if "-j" in parts:
        return parts[parts.index("-j") + 1]
    return save_line[:60]
