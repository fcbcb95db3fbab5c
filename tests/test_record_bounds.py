"""The attack log's numbers at their bounds (records.MAX_TS, MAX_COUNT): kept up to them, exactly, past them skipped."""

from __future__ import annotations

from guard import records


def _flow(**fields) -> dict:
    return {"type": "flow", "start": 10.0, "end": 20.0, "rule": "syn-flood", "src": "192.0.2.1", "first": 11.0,
            "last": 19.0, **fields}


def test_counts_and_times_are_kept_up_to_their_bounds_exactly():
    top, last = records.MAX_COUNT, records.MAX_TS
    assert records.valid(_flow(estimated=top)) and records.valid(_flow(estimated=float(top)))
    assert not records.valid(_flow(estimated=top + 1))  # an int one past 2**64: a float bound must not round it
    assert not records.valid(_flow(estimated=float(top) * (1 + 2 ** -52)))
    assert records.valid(_flow(last=last)) and records.valid(_flow(last=float(last)))
    assert not records.valid(_flow(last=last + 1)) and not records.valid(_flow(last=last + 0.5))
    assert not records.valid(_flow(estimated=True)) and not records.valid(_flow(estimated=float("nan")))
