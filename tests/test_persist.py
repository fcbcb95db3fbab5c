"""The snapshot of bans and trusted sources (guard/persist.py): its format, what survives reading it
back as untrusted input, and the expiry maths of a restore. The kernel side: test_persist_kernel.py."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from guard import persist
from guard.manual import MAX_FOR_S
from guard.metrics import registry
from guard.model.ruleset import AddrSet
from guard.persist import Entry
from guard.policy.load import parse_policy

NOW = 1_800_000_000.0
SETS = {("banned", 4): AddrSet("banned-v4", 4, "escalation", size=3, timeout_s=300, role="banned"),
        ("banned", 6): AddrSet("banned-v6", 6, "escalation", size=3, timeout_s=300, role="banned"),
        ("trusted", 4): AddrSet("trusted-v4", 4, "trusted", size=3, timeout_s=600),
        ("manual", 4): AddrSet("manual-v4", 4, "manual", size=3)}


def _file(tmp_path: Path, data) -> Path:
    path = tmp_path / "sets.json"
    path.write_bytes(data if isinstance(data, bytes) else json.dumps(data).encode())
    os.chmod(path, 0o640)
    return path


def test_a_snapshot_reads_back_as_it_was_written(tmp_path):
    entries = [Entry("banned", 4, "10.0.0.1", NOW + 10.5), Entry("banned", 6, "fd00:1::", NOW + 3),
               Entry("trusted", 4, "10.0.0.2", NOW + 500), Entry("manual", 4, "10.9.0.0/16", None, "scanner")]
    persist.write(tmp_path / "sets.json", entries, NOW)
    assert persist.load(tmp_path / "sets.json") == (NOW, entries)


def test_restore_gives_what_is_left_skips_the_expired_and_caps_at_the_sets_timeout():
    entries = [Entry("banned", 4, "10.0.0.1", NOW + 42.9),  # 42 s left (whole seconds, never more)
               Entry("banned", 4, "10.0.0.2", NOW - 1),  # expired while down
               Entry("banned", 4, "10.0.0.3", NOW + 0.5),  # less than a second: expired too
               Entry("banned", 6, "fd00:1::", NOW + 10_000),  # more than ban_s: capped at the set's timeout
               Entry("trusted", 4, "10.0.0.4", NOW + 100),
               Entry("trusted", 6, "fd00::4", NOW + 100),  # no such set in this plan
               Entry("manual", 4, "10.9.0.0/16", None, "scanner"),  # until unbanned: stays so
               Entry("manual", 4, "10.9.1.0/24", NOW + 60),  # inside the /16: an interval set refuses it
               Entry("manual", 4, "10.8.0.1/32", NOW + 2 * MAX_FOR_S)]  # capped at the longest ban
    assert persist.due(entries, SETS, NOW) == {
        ("banned", 4): [("10.0.0.1", 42, "")],
        ("banned", 6): [("fd00:1::", 300, "")],
        ("trusted", 4): [("10.0.0.4", 100, "")],
        ("manual", 4): [("10.9.0.0/16", None, "scanner"), ("10.8.0.1/32", MAX_FOR_S, "")]}


def test_no_set_gets_more_than_its_size():
    entries = [Entry("banned", 4, f"10.0.0.{i}", NOW + 60) for i in range(1, 6)]
    assert [k for k, _l, _r in persist.due(entries, SETS, NOW)[("banned", 4)]] == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]


def test_no_set_gets_more_than_the_room_its_elements_leave():
    """The kernel refuses a transaction that overfills a set, whole: every entry of it would be lost."""
    entries = [Entry("banned", 4, f"10.0.0.{i}", NOW + 60) for i in range(1, 6)]
    assert [k for k, _l, _r in persist.due(entries, SETS, NOW, {("banned", 4): 2})[("banned", 4)]] == ["10.0.0.1"]
    assert persist.due(entries, SETS, NOW, {("banned", 4): 7})[("banned", 4)] == []


@pytest.mark.parametrize("raw", [
    {"set": "banned", "v": 6, "key": "10.0.0.1", "expires": NOW},  # outside its set's family
    {"set": "banned", "v": 4, "key": "10.0.0.0/24", "expires": NOW},  # a prefix in an address set
    {"set": "trusted", "v": 4, "key": "example.com", "expires": NOW},
    {"set": "trusted", "v": 4, "key": "0.0.0.0", "expires": NOW},
    {"set": "manual", "v": 4, "key": "10.0.0.1/8", "expires": NOW},  # host bits set
    {"set": "meter", "v": 4, "key": "10.0.0.1", "expires": NOW},  # not a set we snapshot
    {"set": "banned", "v": True, "key": "10.0.0.1", "expires": NOW},
    {"set": "banned", "v": 4, "key": "10.0.0.1", "expires": None},  # a timed set's entry with no expiry
    {"set": "banned", "v": 4, "key": "10.0.0.1", "expires": "soon"},
    {"set": "banned", "v": 4, "key": "10.0.0.1", "expires": -5},
    {"set": "manual", "v": 4, "key": "0.0.0.0/32", "expires": None},  # the unspecified address, no source
    {"set": "manual", "v": 4, "key": "0.0.0.0/1", "expires": None},  # nodeguard ban refuses it
    {"set": "manual", "v": 4, "key": "1" * 100, "expires": None},
    ["banned", 4, "10.0.0.1"]])
def test_an_entry_that_is_not_an_address_of_its_sets_family_is_skipped(raw):
    assert persist.entry(raw) is None


def test_entries_are_keyed_as_the_kernel_keys_them():
    assert persist.entry({"set": "banned", "v": 6, "key": "fd00:1::5", "expires": NOW}).key == "fd00:1::"
    assert persist.entry({"set": "trusted", "v": 6, "key": "fd00:1::5", "expires": NOW}).key == "fd00:1::"
    assert persist.entry({"set": "manual", "v": 4, "key": "10.0.0.1", "expires": None}).key == "10.0.0.1/32"


def test_a_ban_never_comes_back_with_more_time_than_it_had_left_when_taken():
    """A boot whose wall clock is a year behind must not turn a 1 h ban into a year's: the time left
    is capped at what each entry had left when the snapshot was taken, whatever the clock says."""
    year = 365 * 86400
    entries = [Entry("manual", 4, "10.8.0.1/32", NOW + 3600, "1 h"),  # a 1 h ban, taken at once
               Entry("banned", 4, "10.0.0.1", NOW + 200),
               Entry("trusted", 4, "10.0.0.4", NOW + 30)]
    behind = persist.due(entries, SETS, NOW - year, taken=NOW)
    assert behind == {("manual", 4): [("10.8.0.1/32", 3600, "1 h")], ("banned", 4): [("10.0.0.1", 200, "")],
                      ("trusted", 4): [("10.0.0.4", 30, "")]}
    # a clock that moved on as it should: what is left now, as before
    assert persist.due(entries, SETS, NOW + 10, taken=NOW)[("manual", 4)] == [("10.8.0.1/32", 3590, "1 h")]


def test_restore_caps_by_the_time_the_file_says_it_was_taken(tmp_path):
    """restore() passes the file's own time to due(): the cap holds end to end through the file."""
    path = tmp_path / "sets.json"
    persist.write(path, [Entry("manual", 4, "10.8.0.1/32", NOW + 3600, "")], NOW)
    taken, entries = persist.load(path)
    assert persist.due(entries, SETS, NOW - 86400, taken=taken) == {("manual", 4): [("10.8.0.1/32", 3600, "")]}


def test_a_snapshot_written_as_it_comes_is_one_json_document_with_its_reasons_escaped(tmp_path):
    """persist.write takes an iterator (the kernel's dump, never all held) and writes format 1, which
    the loader (and json) reads back whole, reasons with quotes and backslashes included."""
    many = (Entry("trusted", 4, f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", NOW + i) for i in range(10_000))
    odd = Entry("manual", 4, "10.9.0.0/16", None, 'say "hi" \\ there')
    path = tmp_path / "sets.json"
    assert persist.write(path, iter([odd, *many]), NOW)
    data = json.loads(path.read_bytes())
    assert data["format"] == 1 and data["taken"] == NOW and len(data["entries"]) == 10_001
    taken, entries = persist.load(path)
    assert entries[0] == odd and entries[-1] == Entry("trusted", 4, "10.0.39.15", NOW + 9999)


def test_a_snapshot_thrown_away_at_the_end_leaves_the_last_one_in_place(tmp_path):
    path = tmp_path / "sets.json"
    persist.write(path, [Entry("banned", 4, "10.0.0.1", NOW + 5)], NOW)
    assert not persist.write(path, iter([Entry("banned", 4, "10.0.0.2", NOW + 5)]), NOW + 1, keep=lambda: False)
    assert persist.load(path) == (NOW, [Entry("banned", 4, "10.0.0.1", NOW + 5)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sets.json"]


@pytest.mark.parametrize("data", [b"\x00\xff garbage", b'{"format": 1, "taken": NaN, "entries": []}',
                                  {"format": 2, "taken": NOW, "entries": []}, {"format": 1, "entries": []},
                                  {"format": 1, "taken": NOW, "entries": {"a": 1}}, [1, 2], b"[" * 100_000])
def test_a_corrupted_snapshot_is_ignored_with_one_log_line(tmp_path, caplog, data):
    path = _file(tmp_path, data)
    with caplog.at_level(logging.WARNING):
        assert persist.load(path) is None
    assert len(caplog.records) == 1 and str(path) in caplog.records[0].getMessage()
    assert "\x00" not in caplog.text and "\xff" not in caplog.text


def test_crafted_entries_are_skipped_and_the_rest_kept_with_one_log_line(tmp_path, caplog):
    good = {"set": "banned", "v": 4, "key": "10.0.0.1", "expires": NOW, "reason": ""}
    path = _file(tmp_path, {"format": 1, "taken": NOW, "entries": [good, {"set": "banned", "v": 6, "key": "x"}, 7]})
    with caplog.at_level(logging.WARNING):
        assert persist.load(path) == (NOW, [Entry("banned", 4, "10.0.0.1", NOW)])
    assert [r.getMessage() for r in caplog.records] == [f"{path}: 2 of 3 entries skipped (malformed, or not an "
                                                        "address or prefix of their set's family)"]


@pytest.mark.parametrize("key", ["0.0.0.0/8", "::/8"])
def test_a_ban_of_a_prefix_starting_at_the_unspecified_address_is_kept(key):
    raw = {"set": "manual", "v": 6 if ":" in key else 4, "key": key, "expires": None, "reason": "bogons"}
    assert persist.entry(raw) == Entry("manual", raw["v"], key, None, "bogons")


def test_a_ban_whose_reason_is_not_printable_keeps_the_ban_and_loses_the_reason(tmp_path, caplog):
    rows = [{"set": "manual", "v": 4, "key": "10.0.0.1/32", "expires": None, "reason": "\x1b]0;owned\x07"},
            {"set": "manual", "v": 4, "key": "10.0.0.2/32", "expires": None, "reason": "\u00e9" * 51},  # 102 bytes
            {"set": "manual", "v": 4, "key": "10.0.0.3/32", "expires": None, "reason": "kept"}]
    path = _file(tmp_path, {"format": 1, "taken": NOW, "entries": rows})
    with caplog.at_level(logging.WARNING):
        assert persist.load(path) == (NOW, [Entry("manual", 4, "10.0.0.1/32", None, ""),
                                            Entry("manual", 4, "10.0.0.2/32", None, ""),
                                            Entry("manual", 4, "10.0.0.3/32", None, "kept")])
    assert [r.getMessage() for r in caplog.records] == [f"{path}: 2 manual bans restored without their reason "
                                                        "(not printable text of at most 100 bytes)"]


def test_a_missing_snapshot_is_nothing_to_restore_and_says_nothing(tmp_path, caplog):
    assert persist.load(tmp_path / "none.json") is None and not caplog.records


def test_the_snapshot_lives_beside_the_last_good_policy_unless_the_policy_names_it(tmp_path):
    assert persist.path_for(parse_policy("{}", "p.yaml"), "/var/lib/nodeguard/last-good.yaml") == \
        Path("/var/lib/nodeguard/sets.json")
    assert persist.path_for(parse_policy("{}", "p.yaml"), None) is None  # nodeguard watch keeps none
    named = parse_policy(f"watcher:\n  snapshot_file: {tmp_path}/s.json\n", "p.yaml")
    assert persist.path_for(named, "/var/lib/nodeguard/last-good.yaml") == tmp_path / "s.json"


def test_no_snapshot_yet_is_no_age_not_a_false_one():
    assert "nodeguard_state_snapshot_age_seconds" not in generate_latest(registry(lambda: {})).decode()


def _planted(tmp_path: Path, how: str) -> Path:
    path = tmp_path / "sets.json"
    good = json.dumps({"format": 1, "taken": NOW, "entries": []}).encode()
    if how == "a symlink":
        (tmp_path / "elsewhere.json").write_bytes(good)
        path.symlink_to(tmp_path / "elsewhere.json")
    elif how == "a FIFO":
        os.mkfifo(path, 0o600)
    else:
        path.write_bytes(good)
        os.chmod(path, 0o666 if how == "mode 0666" else 0o600)
        if how == "another owner's":
            os.chown(path, 65534, 65534)
    return path


@pytest.mark.parametrize("how", ["a symlink", "a FIFO", "mode 0666", "another owner's"])
def test_a_snapshot_refused_for_safety_is_ignored_with_one_line_saying_why(tmp_path, caplog, how):
    """Before, statefile.load dropped it silently: the bans it held were lost with no word."""
    if how == "another owner's" and os.geteuid() != 0:
        pytest.skip("chown needs root")
    path = _planted(tmp_path, how)
    with caplog.at_level(logging.WARNING):
        assert persist.load(path) is None
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and str(path) in said[0] and "ignored as if absent" in said[0], said
    assert f"{path}: refusing: " in said[0]  # and why
