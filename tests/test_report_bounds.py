"""``report --since/--until``: ``report.build`` keeps the records that reach into the bounds, and only those."""

from __future__ import annotations

from guard import report
from helpers import attack_log

T0 = 1_800_000_000.0


def test_since_and_until_keep_the_records_that_reach_into_them():
    # three windows of 100 random sources (and the 7 culprits) at T0, T0+10, T0+20; a last window at T0+30
    records = list(attack_log.flood(300, per_window=100, start=T0))
    full, late, early = (report.build(records, since, until, None, 10)
                         for since, until in ((None, None), (T0 + 15, None), (None, T0 + 15)))
    assert [w["start"] for w in full["windows"]] == [T0, T0 + 10, T0 + 20, T0 + 30]
    assert [w["start"] for w in late["windows"]] == [T0 + 10, T0 + 20, T0 + 30]  # ended before T0+15: out
    assert [w["start"] for w in early["windows"]] == [T0, T0 + 10]  # started after T0+15: out
    culprits = len(attack_log.CULPRITS)
    assert [e["distinct_sources"] for e in full["episodes"]] == [300 + culprits]
    assert [e["distinct_sources"] for e in late["episodes"]] == [200 + culprits]
    assert [e["distinct_sources"] for e in early["episodes"]] == [200 + culprits]
