"""The attack log's records as its readers (report, tune, bans) may trust them.

The log is a file on disk: whatever wrote it, a line may be torn, hand-edited or crafted. Each line
is kept only when it is one of the record types the sampler writes (docs/operations.md lists them)
with every field the readers use of the right kind: numbers finite and within range (no NaN, no
1e999, no 400-digit time), text as str, lists and maps of the right items. Any other line is
skipped and counted, never raised: a reader says at its end how many it skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

from .attacklog import read_lines
from .statefile import is_int, is_number, is_texts, or_none

MAX_TS = 253402300799  # 9999-12-31T23:59:59Z: the last second time.gmtime and datetime format
MAX_COUNT = 2**64  # the kernel's counters are u64; products with times stay finite floats


def time_(value: Any) -> bool:
    return is_number(value, MAX_TS)


def count(value: Any) -> bool:
    return is_number(value, MAX_COUNT)


def text(value: Any) -> bool:
    return isinstance(value, str)


def port(value: Any) -> bool:
    return is_int(value, 0, 65535)


def flag(value: Any) -> bool:
    return isinstance(value, bool)


def counts(value: Any) -> bool:
    return isinstance(value, dict) and all(count(v) for v in value.values())


Check = Callable[[Any], bool]
# type -> (fields it must have, fields it may have), each with its kind; "type" itself is checked by SHAPES
_RANGE = {"start": time_, "end": time_}
SHAPES: dict[str, tuple[dict[str, Check], dict[str, Check]]] = {
    "window": (_RANGE, {"condemned": counts, "sampled": counts}),
    "flow": ({**_RANGE, "rule": text, "src": text, "first": time_, "last": time_},
             {"estimated": count, "sampled": count, "dport": or_none(port), "proto": or_none(text)}),
    "other": ({**_RANGE, "rule": text}, {"estimated": count, "sampled": count, "first": time_, "last": time_}),
    "episode_start": ({"rule": text, "ts": time_}, {}),
    "episode_end": ({**_RANGE, "rule": text, "condemned": count, "peak_pps": count}, {}),
    "ban": ({"ts": time_, "src": text}, {"groups": is_texts, "expires": or_none(time_), "dropped_as": or_none(text),
                                         "after_s": count, "why": text}),
    "unban": ({"ts": time_, "src": text}, {"why": text}),
    "observed": ({**_RANGE, "rule": text, "src": text, "pps": count}, {"handshake": flag, "packets": count}),
}
COMMON: dict[str, Check] = {"rule": text, "mode": text, "ts": time_, **_RANGE}  # any type, when present


def valid(rec: Any) -> bool:
    """True when ``rec`` is a record of a known type whose fields are all of their kind."""
    if not isinstance(rec, dict) or not isinstance(rec.get("type"), str) or rec["type"] not in SHAPES:
        return False
    must, may = SHAPES[rec["type"]]
    if any(key not in rec for key in must) or ("mode" in rec and "rule" not in must):
        return False  # a mode is a rule group's ("<rule>/monitor"): a record without a rule has none
    kinds = {**COMMON, **may, **must}
    return all(kinds[key](value) for key, value in rec.items() if key in kinds)


class Records:
    """The valid records of the log at ``path`` and its rotations, oldest first; ``skipped`` counts
    the lines left out (not JSON, or not a valid record) so far. Iterate once."""

    def __init__(self, path: str | Path):
        self.path, self.skipped = path, 0

    def __iter__(self) -> Iterator[dict]:
        for rec in read_lines(self.path):
            if valid(rec):
                yield rec
            else:
                self.skipped += 1


def skipped_note(skipped: int | None) -> list[str]:
    """The closing line of a reader's text when it skipped lines of the log; none when it did not."""
    return [f"skipped {skipped} malformed line{'s' if skipped != 1 else ''} of the attack log"] if skipped else []
