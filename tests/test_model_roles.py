"""Readers find sets and chains by what the model says they are for, never by parsing their names."""

from __future__ import annotations

from pathlib import Path

from guard.apply import make_plan
from guard.bans import escalation_sets
from guard.counters import count_sets
from guard.model.build import INVALID_RST
from guard.policy.load import parse_policy
from guard.render.ipt import render_ipt
from guard.render.ipt_names import ipt_chain_name

ROOT = Path(__file__).parents[1]


def _plan(tmp_path: Path, icmp_mode: str | None = None, backend: str = "nft"):
    """The default policy, with its own state directory (the render reads the sampling odds there)."""
    policy = parse_policy((ROOT / "rules" / "default.yaml").read_text(), "default.yaml")
    policy = policy.model_copy(update={"icmp": policy.icmp.model_copy(update={"mode": icmp_mode}), "backend": backend,
                                       "watcher": policy.watcher.model_copy(update={"state_file": str(tmp_path / "w")})})
    return make_plan(policy, None, interfaces=("eth0",))


def test_count_and_escalation_sets_are_keyed_by_their_roles(tmp_path):
    plan = _plan(tmp_path, "monitor")
    counts = count_sets(plan)
    groups = set(plan.ruleset.sample_groups)
    condemned = {(g, m) for g, m, _v in counts if m != "observed"}
    assert condemned == {(g, "monitor" if g == "icmp-flood" else "enforce") for g in groups}  # nft: every group
    assert {(g, v) for g, m, v in counts if m == "observed"} == {("icmp-flood", 4), ("icmp-flood", 6)}  # monitor's
    for (group, mode, version), s in counts.items():
        want = f"seen-{group}-v{version}" if mode == "observed" else f"count-{mode}-{group}-v{version}"
        assert s.base == want, (group, mode, version, s.base)
    esc = escalation_sets(plan)
    assert sorted(esc) == [(w, v) for w in ("banned", "episode", "over") for v in (4, 6)]
    assert all(s.base == f"{w}-v{v}" for (w, v), s in esc.items())


def test_iptables_counts_no_source_of_a_rst_conntrack_calls_invalid(tmp_path):
    """On iptables each count is three xt set operations per dropped RST, which made the drop cost more
    than no protection; nft counts it (native set counters)."""
    plan, ipt = _plan(tmp_path), _plan(tmp_path, backend="iptables")
    assert {g for g, _m, _v in count_sets(plan)} == set(plan.ruleset.sample_groups)
    assert {g for g, _m, _v in count_sets(ipt)} == set(ipt.ruleset.sample_groups) - {INVALID_RST}


def test_each_family_renders_only_its_own_escalation_chains(tmp_path):
    rs = _plan(tmp_path).ruleset
    escalating = [c for c in rs.chains if c.role == "escalate"]
    assert escalating and {c.version for c in escalating} == {4, 6}
    for version in (4, 6):
        rendered = {name for t in render_ipt(rs, version).tables.values() for name in t.chains}
        own = {ipt_chain_name(c) for c in escalating if c.version == version}
        other = {ipt_chain_name(c) for c in escalating if c.version != version}
        assert own <= rendered and not other & rendered, (version, own, other)


def test_the_refused_ban_rules_are_found_by_their_tally_in_both_renderings(tmp_path):
    """bans_refused reads the counters of the rules the model tallies as BANS_REFUSED: one per escalation
    chain, right after its ban rule; the iptables render keeps its other tags (the valve's) apart."""
    from guard.model.banning import BANS_REFUSED
    from guard.render.ids import id_and_label
    from guard.render.nft import render_nft

    plan = _plan(tmp_path)
    rs = plan.ruleset
    escalating = [c for c in rs.chains if c.role == "escalate"]
    for c in escalating:
        labels = [r.label for r in c.rules]
        refused = [r for r in c.rules if r.tally == BANS_REFUSED]
        assert len(refused) == 1 and labels.index(refused[0].label) == 1, labels
    nft_labels = {id_and_label(r["comment"])["id"]: id_and_label(r["comment"])["label"] for r in render_nft(rs).rules}
    nft_ids = plan.backend.tally_ids(rs, BANS_REFUSED)  # the default policy's backend: nft
    assert len(nft_ids) == len(escalating) and {nft_labels[i].split(":")[0] for i in nft_ids} == \
        {"ban refused v4", "ban refused v6"}
    for version in (4, 6):
        render = render_ipt(rs, version)
        lines = {line.id: line.spec for t in render.tables.values() for line in t.rules}
        assert render.tallies and set(render.tallies.values()) == {BANS_REFUSED}
        assert all(f"ban refused v{version}: the ban set is full" in lines[i] for i in render.tallies)
        assert render.valve and all("backstop" in lines[i] for i in render.valve)
