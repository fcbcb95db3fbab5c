"""Readers find sets and chains by what the model says they are for, never by parsing their names."""

from __future__ import annotations

from pathlib import Path

from guard.apply import make_plan
from guard.bans import escalation_sets
from guard.counters import count_sets
from guard.policy.load import parse_policy
from guard.render.ipt import render_ipt
from guard.render.ipt_names import ipt_chain_name

ROOT = Path(__file__).parents[1]


def _plan(tmp_path: Path, icmp_mode: str | None = None):
    """The default policy, with its own state directory (the render reads the sampling odds there)."""
    policy = parse_policy((ROOT / "rules" / "default.yaml").read_text(), "default.yaml")
    policy = policy.model_copy(update={"icmp": policy.icmp.model_copy(update={"mode": icmp_mode}),
                                       "watcher": policy.watcher.model_copy(update={"state_file": str(tmp_path / "w")})})
    return make_plan(policy, None, interfaces=("eth0",))


def test_count_and_escalation_sets_are_keyed_by_their_roles(tmp_path):
    plan = _plan(tmp_path, "monitor")
    counts = count_sets(plan)
    groups = set(plan.ruleset.sample_groups)
    condemned = {(g, m) for g, m, _v in counts if m != "observed"}
    assert condemned == {(g, "monitor" if g == "icmp-flood" else "enforce") for g in groups}
    assert {(g, v) for g, m, v in counts if m == "observed"} == {("icmp-flood", 4), ("icmp-flood", 6)}  # monitor's
    for (group, mode, version), s in counts.items():
        want = f"seen-{group}-v{version}" if mode == "observed" else f"count-{mode}-{group}-v{version}"
        assert s.base == want, (group, mode, version, s.base)
    esc = escalation_sets(plan)
    assert sorted(esc) == [(w, v) for w in ("banned", "episode", "over") for v in (4, 6)]
    assert all(s.base == f"{w}-v{v}" for (w, v), s in esc.items())


def test_each_family_renders_only_its_own_escalation_chains(tmp_path):
    rs = _plan(tmp_path).ruleset
    escalating = [c for c in rs.chains if c.role == "escalate"]
    assert escalating and {c.version for c in escalating} == {4, 6}
    for version in (4, 6):
        rendered = {name for t in render_ipt(rs, version).tables.values() for name in t.chains}
        own = {ipt_chain_name(c) for c in escalating if c.version == version}
        other = {ipt_chain_name(c) for c in escalating if c.version != version}
        assert own <= rendered and not other & rendered, (version, own, other)
