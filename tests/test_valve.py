"""The SYN valve's engagement, pure: conntrack's statistics as the kernel writes them (captured files),
the decision (guard/valve.py), the daemon's part on odd input, the model of syn.valve and its metrics.
The kernel side (real floods at NodePorts) is tests/test_nodeport_flood.py."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from guard.apply import make_plan
from guard.daemon.valve_part import ValvePart
from guard.metrics import NodeguardCollector
from guard.model.build import SYN_GROUP
from guard.model.matches import OverLimit, ValveEngaged
from guard.policy.schema import Policy
from guard.valve import ENGAGE, LAPSE, REFRESH, Valve, failures, parse_ct_stat

STATS = Path(__file__).resolve().parent / "fixtures" / "conntrack-stat"


def test_a_captured_file_is_summed_over_every_cpu():
    # captured at the SNAT wall of NodePort 3003 (tests/test_nodeport_flood.py), 2 CPUs
    text = (STATS / "snat-wall.txt").read_text()
    stat = parse_ct_stat(text)
    lines = [ln.split() for ln in text.splitlines()]
    col = lines[0].index("insert_failed")
    assert stat["insert_failed"] == sum(int(ln[col], 16) for ln in lines[1:]) > 0
    assert failures(stat) == stat["drop"] + stat["insert_failed"]


def test_a_flood_the_kernel_copes_with_counts_no_failure():
    assert failures(parse_ct_stat((STATS / "flood-no-failure.txt").read_text())) == 0


@pytest.mark.parametrize("text", [
    "", "entries drop insert_failed\n",  # no per-CPU line
    "entries drop\n00000001 00000002\n",  # no insert_failed column
    "entries drop insert_failed\n00000001 00000002\n",  # a short line
    "entries drop insert_failed\n00000001 0000000g 00000000\n",  # not hex
    "entries drop insert_failed\n00000001 -0000001 00000000\n",
    "entries drop insert_failed\n1 0x10 0\n",
    "entries drop insert_failed\n1 11111111111111111 0\n",  # more than 64 bits
    "entries drop drop insert_failed\n1 1 1 1\n",  # a column twice
])
def test_odd_content_is_refused(text):
    with pytest.raises(ValueError):
        parse_ct_stat(text)


def test_the_valve_engages_on_failures_refreshes_while_the_flood_goes_on_and_lapses():
    v = Valve(hold_s=30, engage_failures=10)
    assert v.step(0.0, 5000) is None  # the first reading is the baseline, however high
    assert v.step(0.5, 5009) is None  # fewer than engage_failures
    assert v.step(1.0, 5019) == ENGAGE and v.engaged and v.engagements == 1
    assert v.step(1.5, 5019, backstop=100) is None  # the backstop's baseline
    assert v.step(2.0, 5019, backstop=900) == REFRESH and v.engaged_until == 32.0  # SYNs over the rate
    assert v.step(2.5, 5040, backstop=900) == REFRESH  # conntrack fails again
    assert v.step(30.0, 5040, backstop=900) is None
    assert v.step(32.6, 5040, backstop=900) == LAPSE and not v.engaged
    assert v.step(33.0, 5041) is None and v.engagements == 1
    assert v.step(33.5, 6000) == ENGAGE and v.engagements == 2


def test_early_drop_and_a_counter_reset_never_engage():
    v = Valve(hold_s=30, engage_failures=1)
    head = "entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop\n"
    row = "{e:08x}  0 0 0 0 0 0 0 0 {i:08x} {d:08x} {x:08x}\n"
    for t, early in enumerate((0, 40_000, 90_000)):  # a full table whose early-drop clears room
        assert v.step(t, failures(parse_ct_stat(head + row.format(e=262144, i=0, d=0, x=early) * 2))) is None
    v = Valve(hold_s=30, engage_failures=1)
    v.step(0, 10_000)
    assert v.step(1, 0) is None  # counters started again (another namespace, a module reload)


@pytest.fixture
def auto_plan():
    return make_plan(Policy(), None)


def test_syn_valve_auto_always_and_off_in_the_model():
    def backstop(valve: str):
        rs = make_plan(Policy.model_validate({"syn": {"valve": valve, "valve_hold_s": 12}}), None).ruleset
        rules = [r for r in rs.chain(SYN_GROUP).rules if r.group and any(isinstance(x, OverLimit) for x in r.matches)]
        return rules, [s for s in rs.sets if s.kind == "valve"]
    rules, sets = backstop("auto")
    assert [(s.version, s.timeout_s, s.group) for s in sets] == [(4, 12, SYN_GROUP), (6, 12, SYN_GROUP)]
    assert [next(x for x in r.matches if isinstance(x, ValveEngaged)) for r in rules] == \
        [ValveEngaged(s.name, s.version) for s in sets]
    assert all(r.group == SYN_GROUP for r in rules)
    rules, sets = backstop("always")
    assert len(rules) == 1 and not sets and not any(isinstance(x, ValveEngaged) for x in rules[0].matches)
    assert backstop("off") == ([], [])


def test_an_unreadable_statistics_file_stops_the_valve_once_and_logs_once(auto_plan, tmp_path, caplog):
    stat = tmp_path / "nf_conntrack"
    stat.write_text("entries drop insert_failed\nzz\n")
    part = ValvePart(lambda: auto_plan, lambda: 10, stat_path=stat)
    with caplog.at_level(logging.ERROR, "nodeguard.run"):
        assert part.step() is None and part.step() is None
    assert part.broken and len([r for r in caplog.records if "will not engage" in r.message]) == 1
    stat.write_text((STATS / "snat-wall.txt").read_text())
    assert part.step() is None and not part.engaged  # stays stopped: the daemon's restart starts it again


def test_without_a_valve_to_engage_the_part_reads_nothing(tmp_path):
    plan = make_plan(Policy.model_validate({"syn": {"valve": "always"}}), None)
    part = ValvePart(lambda: plan, lambda: 10, stat_path=tmp_path / "missing")
    assert part.step() is None and part.broken is None and part.snapshot() is None


def test_the_metrics_say_engaged_and_count_engagements():
    snap = {"syn_valve": {"engaged": True, "engagements": 3, "broken": None}}
    got = {m.name: m.samples[0].value for m in NodeguardCollector(lambda: snap)._from_snapshot(snap)
           if m.name.startswith("nodeguard_syn_valve")}
    assert got == {"nodeguard_syn_valve_engaged": 1, "nodeguard_syn_valve_engagements": 3}
    assert not [m for m in NodeguardCollector(lambda: {})._from_snapshot({}) if "syn_valve" in m.name]
