"""Crafted state files the daemon reads back (issue 19): sampling odds, the watcher's state and the
last good policy. Each invalid one is treated as absent with one warning, never a traceback."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest

from guard import lastgood, sampling_odds
from guard.configfile import write_atomic
from guard.policy.load import parse_policy
from guard.statefile import pid_max
from guard.watch.state import read_state
from guard.watch.watcher import Watcher
from test_render_modes import sampling_lines

BAD_ODDS = {"Infinity": b'{"syn-flood": Infinity}', "1e400": b'{"syn-flood": 1e400}', "NaN": b'{"syn-flood": NaN}',
            "text": b'{"syn-flood": "3"}', "true": b'{"syn-flood": true}', "too big": b'{"syn-flood": 25}',
            "zero": b'{"syn-flood": 0}', "a list": b"[3]", "deep": b"[" * 100_000, "5000 digits": b'{"g": ' +
            b"9" * 5000 + b"}", "not UTF-8": b'{"\xff": 3}'}


def _warned(caplog, path) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and str(path) in r.getMessage()]


@pytest.mark.parametrize("raw", BAD_ODDS.values(), ids=BAD_ODDS.keys())
def test_crafted_odds_are_absent_with_one_warning_at_the_daemons_start(tmp_path, caplog, raw):
    """Watcher.__init__ is what ``run`` and ``watch`` call at start: it read 1e400 as OverflowError."""
    write_atomic(tmp_path / "sampling.json", raw)
    policy = parse_policy(f"watcher:\n  state_file: {tmp_path / 'watch.json'}\n", "p.yaml")
    with caplog.at_level(logging.WARNING):
        assert Watcher(policy, None).odds == {}
    assert len(warned := _warned(caplog, tmp_path / "sampling.json")) == 1, caplog.text
    assert "ignored as if absent: " in warned[0]


def test_good_odds_are_still_read(tmp_path):
    sampling_odds.save(tmp_path / "sampling.json", {"syn-flood": 3, "udp-flood": 24})
    assert sampling_odds.load(tmp_path / "sampling.json") == {"syn-flood": 3, "udp-flood": 24}


@pytest.mark.parametrize("raw", [BAD_ODDS["1e400"], BAD_ODDS["Infinity"]], ids=["1e400", "Infinity"])
def test_check_renders_without_the_crafted_odds_and_says_so_once(tmp_path, raw):
    """``check`` (as apply and status) renders through apply.make_plan, which reads the odds file."""
    write_atomic(tmp_path / "sampling.json", raw)
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"sampler:\n  log: {tmp_path / 'attacks.jsonl'}\nwatcher:\n  state_file: {tmp_path / 'w.json'}\n")
    res = subprocess.run([sys.executable, "-m", "guard", "check", "-c", str(policy)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    assert [ln for ln in res.stderr.splitlines() if "sampling.json" in ln] == \
        [f"{tmp_path / 'sampling.json'}: ignored as if absent: "
         + ("a number out of range" if b"1e400" in raw else "Infinity, which is not a number")]
    assert not any("numgen random" in ln for ln in sampling_lines(res.stdout)) and "# " in res.stdout  # no odds


BAD_STATES = {"pid 1e400": '{"alive": true, "pid": 1e400}', "pid 0": '{"alive": true, "pid": 0}',
              "pid -1": '{"alive": true, "pid": -1}', "pid over pid_max": '{"alive": true, "pid": 99999999}',
              "pid text": '{"alive": true, "pid": "1"}',
              "backoff text": '{"alive": true, "pid": 1, "contested_by": "x", "backoff_s": "a"}',
              "backoff Infinity": '{"alive": true, "pid": 1, "backoff_s": Infinity}',
              "notes 5": '{"alive": true, "pid": 1, "notes": 5}', "notes [5]": '{"alive": true, "pid": 1, "notes": [5]}',
              "repairs -1": '{"alive": true, "pid": 1, "repairs": -1}',
              "interfaces text": '{"alive": true, "pid": 1, "interfaces": "eth0"}',
              "fingerprints list": '{"alive": true, "pid": 1, "fingerprints": [1]}', "a list": "[1]"}


@pytest.mark.parametrize("raw", BAD_STATES.values(), ids=BAD_STATES.keys())
def test_a_crafted_watcher_state_is_absent_for_status_with_one_warning(tmp_path, caplog, raw):
    write_atomic(tmp_path / "watch.json", raw.encode())
    with caplog.at_level(logging.WARNING):
        assert read_state(str(tmp_path / "watch.json")) is None  # status: "watcher: not running"
    assert len(_warned(caplog, tmp_path / "watch.json")) == 1, caplog.text


def test_a_watcher_state_as_the_watcher_writes_it_is_read_and_its_pid_checked(tmp_path):
    policy = parse_policy(f"watcher:\n  state_file: {tmp_path / 'watch.json'}\n", "p.yaml")
    watcher = Watcher(policy, None)
    watcher.note("x", "a note")
    watcher._write_state()
    state = read_state(str(tmp_path / "watch.json"))
    assert state["alive"] is True and state["pid"] == os.getpid() and state["notes"] == ["a note"]
    gone = pid_max() - 1
    assert not os.path.exists(f"/proc/{gone}")
    write_atomic(tmp_path / "watch.json", json.dumps(dict(state, pid=gone)).encode())
    assert read_state(str(tmp_path / "watch.json"))["alive"] is False


def test_a_last_good_policy_that_no_longer_parses_is_absent_with_one_warning(tmp_path, caplog):
    lastgood.save("backend: nft\nsampler: [" + "[" * 50_000 + "\n", tmp_path / "last-good.yaml")
    with caplog.at_level(logging.WARNING):
        assert lastgood.load(tmp_path / "last-good.yaml") is None
    assert len(_warned(caplog, tmp_path / "last-good.yaml")) == 1, caplog.text
