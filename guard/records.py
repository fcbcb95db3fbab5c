"""The attack log's records as its readers (report, tune, bans) may trust them.

The log is a file on disk: whatever wrote it, a line may be torn, hand-edited or crafted. Each line
is kept only when it is one of the record types the sampler writes (docs/operations.md lists them)
with every field the readers use of the right kind: numbers finite and within range (no NaN, no
1e999, no 400-digit time), text as str, lists and maps of the right items. Any other line is
skipped and counted, never raised: a reader says at its end how many it skipped.

A log holds millions of records (issue 19: a million sources in ten seconds), so each field's kind
is a Python expression of ``v`` and each record type's fields are compiled into one function: one
call a record, not one a field (five times faster). JSON holds no subclasses of int or str, so
``type(v) is int`` is exact, and it leaves out bool.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .attacklog import read_lines
from .statefile import is_texts

MAX_TS = 253402300799  # 9999-12-31T23:59:59Z: the last second time.gmtime and datetime format
MAX_COUNT = 2**64  # the kernel's counters are u64; products with times stay finite floats

Kind = str  # a test of the value ``v``, as a Python expression


def _number(high: int, usual: str) -> Kind:
    """An int or a float from 0 to ``high``: NaN fails the comparison, ints of any size compare exactly.
    ``high`` is written as the float equal to it: comparing a float with a float is direct, with an
    int of more than one digit a conversion each time (a log compares millions). ``usual``: the type
    tested first, the one the sampler writes."""
    bound = float(high)
    if bound != high:
        raise ValueError(f"bound {high} has no exact float")
    other = {"float": "int", "int": "float"}[usual]
    return f"(type(v) is {usual} or type(v) is {other}) and 0 <= v <= {bound!r}"


def or_none(kind: Kind) -> Kind:
    return f"v is None or ({kind})"


TIME, COUNT = _number(MAX_TS, "float"), _number(MAX_COUNT, "int")
TEXT = "type(v) is str"
PORT = "type(v) is int and 0 <= v <= 65535"
FLAG = "type(v) is bool"
COUNTS = "type(v) is dict and all(map(is_count, v.values()))"  # e.g. condemned packets per rule group
TEXTS = "is_texts(v)"

# type -> (fields it must have, fields it may have), each with its kind; "type" itself is checked by valid
_RANGE = {"start": TIME, "end": TIME}
SHAPES: dict[str, tuple[dict[str, Kind], dict[str, Kind]]] = {
    "window": (_RANGE, {"condemned": COUNTS, "sampled": COUNTS}),
    "flow": ({**_RANGE, "rule": TEXT, "src": TEXT, "first": TIME, "last": TIME},
             {"estimated": COUNT, "sampled": COUNT, "dport": or_none(PORT), "proto": or_none(TEXT)}),
    "other": ({**_RANGE, "rule": TEXT}, {"estimated": COUNT, "sampled": COUNT, "first": TIME, "last": TIME}),
    "episode_start": ({"rule": TEXT, "ts": TIME}, {}),
    "episode_end": ({**_RANGE, "rule": TEXT, "condemned": COUNT, "peak_pps": COUNT}, {}),
    "ban": ({"ts": TIME, "src": TEXT}, {"groups": TEXTS, "expires": or_none(TIME), "dropped_as": or_none(TEXT),
                                        "after_s": COUNT, "why": TEXT}),
    "unban": ({"ts": TIME, "src": TEXT}, {"why": TEXT}),
    "observed": ({**_RANGE, "rule": TEXT, "src": TEXT, "pps": COUNT}, {"handshake": FLAG, "packets": COUNT}),
}
COMMON: dict[str, Kind] = {"rule": TEXT, "mode": TEXT, "ts": TIME, **_RANGE}  # any type, when present


# The fields of a "flow" and an "other" record that the report tallies (report_sources.Flow), in order: a
# field's name, or a constant where its shape has no such field ("other": samples past the sampler's flow
# cap, source "other", no protocol nor port). An optional field that is absent reads as its default.
# The check of such a record returns them with the record's window and rule group: (Flow, (start, end, group)).
FLOWS: dict[str, tuple[str, ...]] = {
    "flow": ("src", "estimated", "sampled", "first", "last", "proto", "dport"),
    "other": ("'other'", "estimated", "sampled", "first", "last", "None", "None"),
}
DEFAULTS = {"estimated": "0", "sampled": "0", "first": "start", "last": "end", "proto": "None", "dport": "None"}
MONITOR = "monitor"  # the mode of a rule that only counts what it would drop


def group_of(rec: dict) -> str | None:
    """The rule group of ``rec``: its rule, "<rule>/monitor" for a would-be drop (its own line)."""
    group = rec.get("rule")
    return f"{group}/monitor" if rec.get("mode") == MONITOR else group


def _usual(key: str, default: str) -> list[str]:
    """Lines reading into ``v`` a field that a record of its type usually has, else ``default``: when
    it is there, subscripting costs half a call of ``get`` (the sampler writes it in every flow)."""
    return ["    try:", f"      v = rec[{key!r}]", "    except KeyError:", f"      v = {default}"]


def _compile(kind: str, must: dict[str, Kind], may: dict[str, Kind]) -> Callable[[dict], Any]:
    """One function testing a record of type ``kind``: every field of ``must`` present, each field it has
    (``must``, ``may``, COMMON) of its kind. It returns False for a record that fails, else the record's
    FLOWS tuple and window (read as they were tested: the report reads no field twice), else True. The
    text compiled is this module's constants, never the log's."""
    lines = ["def check(rec):", "  try:"]  # a field of ``must`` missing: KeyError, no set of them tested first
    if "rule" not in must:  # a mode is a rule group's ("<rule>/monitor"): a record without a rule has none
        lines.append("    if 'mode' in rec: return False")
    kept = FLOWS.get(kind, ())
    for key, test in {**COMMON, **may, **must}.items():
        if key in must:
            lines += [f"    v = rec[{key!r}]", f"    if not ({test}): return False"]
        elif key in kept:  # its default is of its kind: tested all the same, by one path
            lines += _usual(key, DEFAULTS[key]) + [f"    if not ({test}): return False"]
        else:
            lines += (_usual(key, "ABSENT") if kept and key == "mode" else [f"    v = rec.get({key!r}, ABSENT)"]) + [
                f"    if v is not ABSENT and not ({test}): return False"]
        if key in kept or key in DEFAULTS.values() or key in ("rule", "mode"):
            lines.append(f"    {key} = v")
    namespace = {"ABSENT": object(), "MONITOR": MONITOR, "is_texts": is_texts, "is_count": _kind(COUNT)}
    window = "(start, end, rule + '/monitor' if mode == MONITOR else rule)"  # group_of
    done = f"  return ({', '.join(kept)}), {window}" if kept else "  return True"
    exec("\n".join(lines + ["  except KeyError:", "    return False", done]), namespace)
    return namespace["check"]


def _kind(kind: Kind) -> Callable[[Any], bool]:
    """``kind`` as a function of one value (this module's constants, never the log's)."""
    return eval(f"lambda v: {kind}")


CHECKS = {kind: _compile(kind, must, may) for kind, (must, may) in SHAPES.items()}


def check(rec: Any) -> Any:
    """False when ``rec`` is not a record of a known type whose fields are all of their kind; else its
    FLOWS tuple and window for a "flow" or "other" record, True for any other."""
    if not isinstance(rec, dict):
        return False
    kind = rec.get("type")
    return type(kind) is str and kind in CHECKS and CHECKS[kind](rec)


def valid(rec: Any) -> bool:
    """True when ``rec`` is a record of a known type whose fields are all of their kind."""
    return check(rec) is not False


class Records:
    """The valid records of the log at ``path`` and its rotations, oldest first; ``skipped`` counts
    the lines left out (not JSON, or not a valid record) so far. Iterate once."""

    def __init__(self, path: str | Path):
        self.path, self.skipped = path, 0

    def __iter__(self) -> Iterator[dict]:
        return (rec for rec, _fields in self.checked())

    def checked(self) -> Iterator[tuple[dict, Any]]:
        """Each valid record with what ``check`` returned for it."""
        for rec in read_lines(self.path):
            fields = check(rec)
            if fields is False:
                self.skipped += 1
            else:
                yield rec, fields


def checked(records: Iterable[dict]) -> Iterator[tuple[dict, Any]]:
    """``records`` (a ``Records``, or records in memory) as ``Records.checked`` yields them; invalid ones left out."""
    if isinstance(records, Records):
        return records.checked()
    return ((rec, fields) for rec in records if (fields := check(rec)) is not False)


def skipped_note(skipped: int | None) -> list[str]:
    """The closing line of a reader's text when it skipped lines of the log; none when it did not."""
    return [f"skipped {skipped} malformed line{'s' if skipped != 1 else ''} of the attack log"] if skipped else []
