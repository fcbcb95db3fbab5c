"""``report`` on big logs (issue 19, item 6): the same figures as before, linear time, bounded rows.

golden/report-cases.json holds ``report.build`` of the cases below as computed by the implementation
before this one (main at a69b7a0, which kept every flow and compared each source group with every
window), so the streaming tallies are checked against it. The time and memory goals are
bench/report.py's.
"""

from __future__ import annotations

import gc
import ipaddress
import json
import time
from pathlib import Path

from hypothesis import given, strategies as st

from guard import report, report_sources
from helpers import attack_log

HERE = Path(__file__).parent


def _cases() -> dict:
    demo = [json.loads(line) for line in (HERE / "fixtures" / "demo-attacks.jsonl").read_text().splitlines()]
    return {"demo top 5": report.build(demo, None, None, None, 5),
            "demo icmp-flood": report.build(demo, None, None, "icmp-flood", 10),
            "flood of 300": report.build(attack_log.flood(300, per_window=100), None, None, None, 10),
            "restart": report.build(attack_log.restart(), None, None, None, 8)}


def test_reports_are_the_same_as_the_previous_implementations():
    golden = json.loads((HERE / "golden" / "report-cases.json").read_text())
    for name, rep in _cases().items():
        rep = json.loads(json.dumps(rep))
        for e in rep["episodes"]:
            assert not any(e.pop("folded", {}).values()), name  # small logs: nothing folded
        assert rep == golden[name], name


def _build_seconds(sources: int) -> float:
    """CPU seconds of the report, with the cyclic collector off as ``nodeguard report`` runs (cli.ONE_SHOT):
    its passes over the records held here would grow with the log."""
    records = list(attack_log.flood(sources, per_window=2_000))
    best = float("inf")
    gc.disable()
    try:
        for _ in range(2):
            t = time.process_time()
            report.build(records, None, None, None, 10)
            best = min(best, time.process_time() - t)
    finally:
        gc.enable()
    return best


def test_time_grows_linearly_with_the_sources():
    # The quadratic implementation took about 16x as long for 4x the sources (each source group against
    # every window). This one measured 3.2x to 5.4x here, on 2 shared cores.
    small, big = _build_seconds(6_000), _build_seconds(24_000)
    assert big < 10 * small, (small, big)


def test_a_65000_source_flood_reports_its_culprits_with_the_rest_folded():
    rep = report.build(attack_log.flood(65_000), None, None, None, 5)
    (ep,) = rep["episodes"]
    assert [r["source"] for r in ep["sources"][:3]] == ["5 sources", "192.0.2.66", "192.0.2.77"]
    assert ep["sources"][0]["addresses"] == 5 and ep["sources"][0]["estimated"] == 7 * sum(
        9000 - 100 * i for i in range(2, 7))
    assert ep["distinct_sources"] == 65_000 + len(attack_log.CULPRITS)
    assert ep["folded"]["sources"] > 0 and ep["folded"]["rows"] > 0
    assert len(rep["top_sources"]["syn-flood"]) == 5


def test_folding_keeps_the_biggest_rows_within_the_bound_and_counts_the_rest(monkeypatch):
    monkeypatch.setattr(report_sources, "TRACKED_MAX", 40)
    records = list(attack_log.flood(1_000, per_window=100))
    tallies = report_sources.EpisodeTallies()
    biggest = 0
    for rec in records:
        if rec["type"] == "episode_start":
            tallies.started((rec["rule"], rec["ts"]))
        elif rec["type"] == "episode_end":
            tallies.ended((rec["rule"], rec["start"]), rec["end"])
        elif rec["type"] in ("flow", "other"):
            tallies.flow(rec)
        elif rec["type"] == "window":
            tallies.window_passed(rec["start"])
        biggest = max([biggest, *(len(t.networks) for t in tallies.tallies.values())])
    tallies.finish()
    assert biggest <= 2 * 40 + 100 + len(attack_log.CULPRITS) + 1  # a window's worth past the bound, at most
    (key,) = tallies.tallies
    ep = tallies.result(key, 3)
    assert [r["source"] for r in ep["sources"]] == ["5 sources", "192.0.2.66", "192.0.2.77"]
    shown = sum(r["estimated"] for r in tallies.result(key, 10**6)["sources"])
    flows = [r for r in records if r["type"] in ("flow", "other")]
    assert shown + ep["folded"]["estimated"] == sum(f["estimated"] for f in flows)
    assert ep["distinct_sources"] == 1_000 + len(attack_log.CULPRITS)


def _reference_network(text: str) -> str:
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return text
    return str(ipaddress.ip_network(f"{addr}/{24 if addr.version == 4 else 48}", strict=False))


@given(st.one_of(st.ip_addresses().map(str), st.text(alphabet="0123456789abcdef.:%x", max_size=45), st.text()))
def test_network_of_reads_addresses_as_ipaddress_does(text):
    assert report_sources.network_of(text) == _reference_network(text)


def _flow(src: str, estimated: int) -> report_sources.Flow:
    return (src, estimated, 1, 1.0, 2.0, "tcp", 80)


def test_after_a_fold_a_new_network_at_most_the_cut_is_folded_without_a_row(monkeypatch):
    monkeypatch.setattr(report_sources, "TRACKED_MAX", 2)
    tally = report_sources.EpisodeSources("syn-flood")
    tally.add_window(0, 10, [_flow(f"192.0.{i}.1", 10 * i) for i in range(1, 6)])  # 5 networks > 2 * 2: fold
    assert tally.cut == 40 and list(tally.networks) == ["192.0.4.0/24", "192.0.5.0/24"]
    folded = dict(tally.folded)
    # one lone source at the cut, a /24 of three whose sum (45) passes it although each is under it,
    # and a kept network that grows by less than the cut
    tally.add_window(10, 20, [_flow("203.0.113.9", 40), *(_flow(f"198.51.100.{i}", 15) for i in range(3)),
                              _flow("192.0.4.1", 1)])
    assert list(tally.networks) == ["192.0.4.0/24", "192.0.5.0/24", "198.51.100.0/24"]
    assert "203.0.113.9" not in tally.sources
    assert tally.folded == {"rows": folded["rows"] + 1, "sources": folded["sources"] + 1,
                            "estimated": folded["estimated"] + 40}
    rows = tally.result(10)["sources"]
    assert [(r["source"], r["estimated"]) for r in rows] == [("192.0.5.1", 50), ("3 sources", 45), ("192.0.4.1", 41)]


def test_after_a_fold_the_top_sources_skip_a_new_source_at_most_the_cut(monkeypatch):
    monkeypatch.setattr(report_sources, "TRACKED_MAX", 2)
    top = report_sources.RuleSources()
    for i in range(1, 6):  # the fifth source folds the four before it to the two biggest
        top.add(_flow(f"192.0.2.{i}", 10 * i))
    assert top.cut == 30
    top.add(_flow("203.0.113.9", 30))
    top.add(_flow("203.0.113.10", 31))
    assert [s["src"] for s in top.top(10)] == ["192.0.2.5", "192.0.2.4", "203.0.113.10", "192.0.2.3"]
