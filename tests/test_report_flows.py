"""How a report reads flow records: each check hands back the fields it tested with its window, and
flows wait in their window's list no more than PENDING_MAX at a time however windows alternate."""

from __future__ import annotations

from guard import records, report, report_sources


def _flow(src: str = "192.0.2.1", start: float = 10.0, **fields) -> dict:
    return {"type": "flow", "start": start, "end": start + 10, "rule": "syn-flood", "src": src, "first": start + 1,
            "last": start + 9, **fields}


def test_a_check_hands_back_the_fields_it_tested_with_defaults_and_window():
    full = _flow(mode="monitor", estimated=900, sampled=3, proto="tcp", dport=443)
    assert records.check(full) == (("192.0.2.1", 900, 3, 11.0, 19.0, "tcp", 443), (10.0, 20.0, "syn-flood/monitor"))
    assert records.check(_flow()) == (("192.0.2.1", 0, 0, 11.0, 19.0, None, None), (10.0, 20.0, "syn-flood"))
    other = {"type": "other", "start": 10.0, "end": 20.0, "rule": "syn-flood", "mode": "enforce", "estimated": 150}
    assert records.check(other) == (("other", 150, 0, 10.0, 20.0, None, None), (10.0, 20.0, "syn-flood"))
    assert records.check({"type": "window", "start": 10.0, "end": 20.0}) is True
    # the fields read by subscript are tested as those read with get: a bad one still fails the record
    for bad in ({"estimated": True}, {"dport": 65536}, {"proto": 6}, {"mode": None}, {"sampled": -1}):
        assert records.check(_flow(**bad)) is False, bad
    assert records.check({**other, "first": "11"}) is False


def test_waiting_flows_stay_within_pending_max_as_windows_alternate(monkeypatch):
    monkeypatch.setattr(report_sources, "PENDING_MAX", 5)
    tallies = report_sources.EpisodeTallies()
    held = []
    for i in range(23):  # two windows' flows interleaved in runs of 1, 2, 3 ...: each switch settles ``held``
        tallies.flow(_flow(f"192.0.2.{i}", start=10.0 * (i % 3 == 1 or i % 7 == 2), estimated=i + 1))
        held.append(sum(map(len, tallies.waiting.values())))
    tallies.finish()
    assert max(held) == 5 and held.count(0) == 3  # routed each time a sixth flow waited: after 6, 12, 18
    tally, _span = tallies.unclaimed["syn-flood"]
    assert sum(r["estimated"] for r in tally.result(100)["sources"]) == sum(range(1, 24))


def test_a_flow_after_its_windows_record_is_not_lost():
    """A crafted or reordered log: flows of a window that the log has already passed are routed with
    the next window record, not appended to the list routed before them."""
    late = [{"type": "episode_start", "rule": "syn-flood", "ts": 10.0}, _flow("192.0.2.1", estimated=5),
            {"type": "window", "start": 20.0, "end": 30.0}, _flow("192.0.2.2", estimated=7),
            {"type": "window", "start": 30.0, "end": 40.0},
            {"type": "episode_end", "rule": "syn-flood", "start": 10.0, "end": 40.0, "condemned": 12, "peak_pps": 1}]
    (episode,) = report.build(late, None, None, None, 10)["episodes"]
    assert [s["source"] for s in episode["sources"]] == ["192.0.2.2", "192.0.2.1"]
