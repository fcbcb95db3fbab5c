"""Episodes of the group that drops banned sources name the banned source (report text, picture label).

That group's drops are neither sampled nor counted per source, so no flow record names a source; the
sampler's ``ban`` records do (``dropped_as``). ``fixtures/demo-attacks.jsonl`` is the attack log of a
``nodeguard demo --quick --keep`` run (2026-12-03) without the SYN flood's 1417 flow records.
"""

from __future__ import annotations

import json
from pathlib import Path

from guard import report
from guard.bans import Ban, ban_records
from guard.report_plot import episode_label

LOG = Path(__file__).parent / "fixtures" / "demo-attacks.jsonl"
ATTACKER = "10.66.0.66"


def _records() -> list[dict]:
    return [json.loads(line) for line in LOG.read_text().splitlines()]


def _banned(rep: dict) -> list[dict]:
    return [e for e in rep["episodes"] if e["rule"] == "banned"]


def test_each_ban_episode_of_the_demo_names_the_source_and_what_it_was_banned_over():
    rep = report.build(_records(), None, None, None, 5)
    first, second = _banned(rep)
    for e in (first, second):
        (row,) = e["sources"]
        assert (row["source"], row["network"], row["estimated"], row["peak_pps"]) == (
            ATTACKER, "10.66.0.0/24", e["condemned"], e["peak_pps"])
        # seen at the end of the episode's first window, banned within it: first = the episode's start
        assert (row["first"], row["last"]) == (e["start"], e["end"])
    # the first ban ended (unban) before the second episode: each episode has its own ban's groups
    assert first["sources"][0]["banned_over"] == ["icmp-flood"]
    assert second["sources"][0]["banned_over"] == ["icmp-flood", "limit-udp-per-source"]
    assert episode_label(first) == f"banned: {ATTACKER} (10.66.0.0/24) 100 %, over icmp-flood"
    assert episode_label(second).endswith("100 %, over icmp-flood, limit-udp-per-source")
    text = report.format_text(rep)
    assert f"episode banned from {report._t(first['start'])}: 1 distinct source" in text
    assert f"  {ATTACKER:<26} 10.66.0.0/24" in text and "banned over icmp-flood, limit-udp-per-source" in text


def test_rule_filter_keeps_the_bans_behind_the_ban_episodes():
    rep = report.build(_records(), None, None, "banned", 5)
    assert [e["sources"][0]["source"] for e in rep["episodes"]] == [ATTACKER, ATTACKER]


def test_several_banned_sources_share_the_drops_and_untrusted_addresses_stay_escaped():
    recs = _records()
    first = _banned(report.build(recs, None, None, None, 5))[0]
    seen = next(r["ts"] for r in recs if r["type"] == "ban")
    # a second source banned in the same window, written by the sampler's own writer, with a hostile name
    hostile = "10.9.9.9\x1b[31m<b>"
    extra = ban_records([Ban(ATTACKER, 4, 299)], [Ban(ATTACKER, 4, 299), Ban(hostile, 4, 300)],
                        {("icmp-flood", "enforce"): {hostile: 5}}, seen, 1.0, 3)
    rep = report.build(recs + extra, None, None, None, 5)
    e = _banned(rep)[0]
    assert e["distinct_sources"] == 2 and {r["source"] for r in e["sources"]} == {ATTACKER, hostile}
    assert all(r["estimated"] is None and r["peak_pps"] is None for r in e["sources"])  # one counter for both
    label, text = episode_label(e), report.format_text(rep)
    assert label.startswith("banned: 10.66.0.66 (10.66.0.0/24), over icmp-flood and 1 more"), label
    assert "\x1b" not in text + label and "<b>" not in text + label
    assert "10.9.9.9??31m?b?" in text
    assert e["start"] == first["start"]


def test_a_ban_record_without_dropped_as_names_no_source():
    """Logs written before ``dropped_as`` cannot say which group drops banned sources: as before."""
    recs = [{k: v for k, v in r.items() if k != "dropped_as"} for r in _records()]
    rep = report.build(recs, None, None, None, 5)
    assert [e["sources"] for e in _banned(rep)] == [[], []]
    assert episode_label(_banned(rep)[0]) == "banned: no sampled source"
