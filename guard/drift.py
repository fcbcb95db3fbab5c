"""Live state vs the render of the policy: what differs, and who is to blame.

Rules are compared by the IDs in their comments (taken from the renderer), base chains by
hook and priority (re-chosen by the probe against the live foreign chains), sets and limit
objects by name and definition (a name ends in a digest of the definition, so a changed size,
timeout or rate is a different name), allowlists by content. Meter contents are state, not
configuration, and are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .apply import Plan, read_state
from .backend.ipt import IptLive
from .backend.nft import Nft, NftLive
from .fingerprints import Fingerprints, of_live
from .render.ids import id_from_comment
from .render.ipt import spec_id
from .sync.ipt import same_members
from .sync.nft import live_rule_ids, same_elements, same_limit, same_set

if TYPE_CHECKING:
    from .apply import Live


@dataclass(frozen=True)
class Drift:
    reasons: tuple[str, ...]
    culprit: str | None = None  # a foreign chain or rule that out-prioritised us, when that is the cause
    families: frozenset[int] = frozenset({4, 6})  # iptables: which families need a restore
    in_place: bool = False  # only the rules inside chains we have differ: a rewrite of those keeps every counter

    def __str__(self) -> str:
        return "; ".join(self.reasons)


def diff_plan(plan: Plan, nft: Nft, live: Live | None = None, fingerprints: Fingerprints | None = None
              ) -> Drift | None:
    """The drift of whichever backend the plan is for (reads the live state unless given).
    ``fingerprints`` (fingerprints.py): our rules' bodies as installed; a rule rewritten under our
    comment is drift too."""
    live = live if live is not None else read_state(plan, nft)
    drift = diff_nft(plan, live) if plan.nft is not None else diff_ipt(plan, live)
    rewritten = _rewritten(of_live(live), fingerprints) if fingerprints else []
    if not rewritten:
        return drift
    reason = f"{len(rewritten)} rule(s) rewritten under nodeguard's comments"
    if drift is None:
        return Drift((reason,))
    return Drift((*drift.reasons, reason), drift.culprit, drift.families or frozenset({4, 6}))


def _rewritten(now: Fingerprints, installed: Fingerprints) -> list[str]:
    return [rid for rid, body in now.items() if rid in installed and installed[rid] != body]


def diff_nft(plan: Plan, live: NftLive) -> Drift | None:
    if not live.exists:
        return Drift(("table inet nodeguard is missing",))
    reasons: list[str] = []
    culprit = None
    for chain in plan.ruleset.base_chains:
        have = live.chains.get(chain.name)
        if have and (have.get("prio"), have.get("hook")) != (chain.priority, chain.hook):
            reasons.append(f"{chain.name} at priority {have.get('prio')}, must be {chain.priority}")
            rivals = [f for f in plan.foreign if f.priority <= have.get("prio", 0)]
            culprit = culprit or (str(rivals[0]) if rivals else None)
    want: dict[str, list] = {c["name"]: [] for c in plan.nft.chains}
    for r in plan.nft.rules:
        want[r["chain"]].append(id_from_comment(r["comment"]))
    have_ids = live_rule_ids(live)
    rewrites: list[str] = []
    for name, ids in want.items():
        if name not in have_ids:
            reasons.append(f"chain {name} is missing")
        elif have_ids[name] != ids:
            kept = sum(1 for i in have_ids[name] if i in ids)
            rewrites.append(f"chain {name}: {kept} of {len(ids)} rules intact, {len(have_ids[name])} present")
    reasons += [f"unexpected chain {n}" for n in have_ids if n not in want]
    reasons += _objects("set", {s["name"]: s for s in plan.nft.sets}, live.sets, same_set)
    reasons += _objects("limit", {x["name"]: x for x in plan.nft.limits}, live.limits, same_limit)
    for s in plan.ruleset.sets:
        if s.static and s.name in live.sets and not same_elements(live.static_elements.get(s.name, []),
                                                                  plan.nft.elements[s.name]):
            reasons.append(f"set {s.name} elements differ")
    if not reasons and not rewrites:
        return None
    return Drift((*reasons, *rewrites), culprit, in_place=not reasons)


def _objects(kind: str, want: dict[str, dict], have: dict[str, dict], same) -> list[str]:
    out = [f"{kind} {n} is missing" for n in want if n not in have]
    out += [f"{kind} {n} has another definition" for n in want if n in have and not same(have[n], want[n])]
    return out + [f"unexpected {kind} {n}" for n in have if n not in want]


def diff_ipt(plan: Plan, live: IptLive) -> Drift | None:
    """Our chains hold exactly the rendered rule IDs, our jumps are rules 1..k of their built-in
    chain in render order, and our ipsets have the rendered definitions (allowlists: members)."""
    reasons: list[str] = []
    culprit = None
    families: set[int] = set()
    rewrites: list[str] = []
    for version, render in plan.ipt.items():
        saved = live.saved.get(version, {})
        before = len(reasons) + len(rewrites)
        want = render.rule_ids()
        for tname, table in render.tables.items():
            chains, rules = saved.get(tname, ([], []))
            have: dict[str, list[str | None]] = {}
            for r in rules:
                have.setdefault(r.chain, []).append(r.rule_id)
            for chain in table.chains:
                where = f"v{version} {tname} {chain}"
                if chain not in chains:
                    reasons.append(f"{where} is missing")
                elif have.get(chain, []) != want[chain]:
                    kept = sum(1 for i in have.get(chain, []) if i in want[chain])
                    rewrites.append(f"{where}: {kept} of {len(want[chain])} rules intact")
            order: dict[str, int] = {}
            for builtin, spec in table.jumps:
                must = order[builtin] = order.get(builtin, 0) + 1  # our jumps are rules 1..k, in order
                jid = spec_id(spec)
                in_builtin = [r for r in rules if r.chain == builtin]
                positions = [r.position for r in in_builtin if r.rule_id == jid]
                where = f"v{version} {tname} {builtin}"
                if not positions:
                    reasons.append(f"jump in {where} to {_target(spec)} is missing")
                elif positions != [must]:
                    reasons.append(f"jump in {where} to {_target(spec)} is at position {positions[0]}, must be {must}"
                                   + (f" ({len(positions)} copies)" if len(positions) > 1 else ""))
                    ahead = next((r for r in in_builtin[:positions[0] - 1] if r.rule_id is None), None)
                    if ahead is not None:
                        culprit = culprit or f"{_target(ahead.line)} in {where}"
        stale = {t: lt for t, lt in live.tables.get(version, {}).items()
                 if t not in render.tables or set(lt.chains) - set(render.tables[t].chains)}
        reasons += [f"v{version} {t}: stale nodeguard chains or jumps" for t in stale]
        if len(reasons) + len(rewrites) > before:
            families.add(version)
    for s in plan.ipsets:
        have_set = live.ipsets.get(s.name)
        if have_set is None:
            reasons.append(f"ipset {s.name} is missing")
        elif not have_set.matches(s):
            reasons.append(f"ipset {s.name} has another definition")
        elif s.members is not None and not same_members(live.members.get(s.name, []), s.members):
            reasons.append(f"ipset {s.name} members differ")
    reasons += [f"unexpected ipset {n}" for n in live.ipsets if n not in {s.name for s in plan.ipsets}]
    if not reasons and not rewrites:
        return None
    return Drift((*reasons, *rewrites), culprit, frozenset(families), in_place=not reasons)


def _target(save_line: str) -> str:
    """What a competing rule does: its jump target, else its comment, else the rule itself."""
    parts = save_line.split()
    if "-j" in parts:
        return parts[parts.index("-j") + 1]
    return save_line[:60]
