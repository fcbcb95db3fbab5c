"""Crafted attack logs and arguments through the real CLI (``report``, ``tune``): malformed lines are
skipped and counted, never a traceback, and nothing raw reaches the terminal. No root."""

from __future__ import annotations

import json
import os
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guard.cli import cli
from guard.policy.load import parse_policy
from guard.policy.rates import MAX_RATE_PER_S
from guard.records import SHAPES

ROOT = Path(__file__).parents[1]
RAW = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")  # control characters other than newline


def _write(path: Path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def _json(rec: dict) -> str:
    return json.dumps(rec)  # allow_nan: NaN and Infinity as Python's own json.loads reads them


def _nodeguard(*args: str) -> subprocess.CompletedProcess:
    """``python -m guard``: main()'s error handling included, as on a node."""
    return subprocess.run([sys.executable, "-m", "guard", *args], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
                               "NODEGUARD_DATA_DIRS": os.environ["NODEGUARD_DATA_DIRS"]})


GOOD = [{"type": "episode_start", "rule": "syn-flood", "ts": 1000.0},
        {"type": "window", "start": 1000.0, "end": 1010.0, "condemned": {"syn-flood": 7000}},
        {"type": "flow", "start": 1000.0, "end": 1010.0, "rule": "syn-flood", "src": "198.51.100.7", "proto": "tcp",
         "dport": 80, "sampled": 10, "estimated": 7000, "first": 1000.5, "last": 1009.5},
        {"type": "episode_end", "rule": "syn-flood", "start": 1000.0, "end": 1010.0, "condemned": 7000,
         "peak_pps": 700.0}]
# 25 records that are each wrong in one way: wrong types, missing keys, NaN, infinities, huge numbers
MALFORMED = [
    {"type": "episode_end", "rule": "syn-flood", "start": 1000.0, "end": 1010.0, "condemned": "\x1b[31m7000",
     "peak_pps": 1.0},
    {"type": "episode_end", "rule": "syn-flood", "start": 1000.0, "end": 1010.0, "condemned": 1, "peak_pps": "x"},
    {"type": "episode_end", "rule": "syn-flood", "start": 1000.0, "end": 1010.0},
    {"type": "episode_end", "rule": ["syn-flood"], "start": 1000.0, "end": 1010.0, "condemned": 1, "peak_pps": 1},
    {"type": "episode_start", "rule": "syn-flood"},
    {"type": "episode_start", "rule": "syn-flood", "ts": float("nan")},
    {"type": "episode_start", "rule": "syn-flood", "ts": float("inf")},
    {"type": "episode_start", "rule": "syn-flood", "ts": 10**400},
    {"type": "episode_start", "rule": None, "ts": 1000.0},
    {"type": "window", "start": "1000", "end": 1010.0},
    {"type": "window", "start": 1000.0, "end": 1010.0, "condemned": ["syn-flood", 7]},
    {"type": "window", "start": 1000.0, "end": 1010.0, "condemned": {"syn-flood": float("nan")}},
    {"type": "flow", "start": 1000.0, "end": 1010.0, "rule": "syn-flood", "src": "198.51.100.8"},
    {"type": "flow", "start": 1000.0, "end": 1010.0, "rule": "syn-flood", "src": 7, "first": 1000.0, "last": 1001.0},
    {"type": "flow", "start": 1000.0, "end": 1010.0, "rule": "syn-flood", "src": "198.51.100.9", "first": 1000.0,
     "last": 1001.0, "dport": "80\x1b[2J"},
    {"type": "flow", "start": 1000.0, "end": 1010.0, "rule": "syn-flood", "src": "198.51.100.9", "first": 1000.0,
     "last": 1001.0, "estimated": -5},
    {"type": "flow", "start": 1000.0, "end": 1010.0, "rule": "syn-flood", "src": "198.51.100.9", "first": 1000.0,
     "last": 1001.0, "proto": {"tcp": 1}},
    {"type": "other", "start": 1000.0, "end": 1010.0, "rule": "syn-flood", "estimated": True},
    {"type": "ban", "ts": 1005.0, "src": "192.0.2.1", "groups": "syn-flood"},
    {"type": "ban", "ts": 1005.0, "src": "192.0.2.1", "expires": "soon"},
    {"type": "unban", "ts": 1005.0},
    {"type": "observed", "start": 1000.0, "end": 1010.0, "rule": "syn-flood", "src": "192.0.2.2", "pps": 1e999},
    {"type": "observed", "start": 1000.0, "end": 1010.0, "rule": "syn-flood", "src": "192.0.2.2", "pps": "fast"},
    {"type": ["window"], "start": 1000.0, "end": 1010.0},
    {"type": "window", "start": 1000.0, "end": 1010.0, "mode": 1},
]


def test_25_malformed_records_are_skipped_and_counted_and_the_rest_reported(tmp_path):
    assert len(MALFORMED) == 25
    log = _write(tmp_path / "attacks.jsonl", [_json(r) for r in GOOD + MALFORMED])
    res = CliRunner().invoke(cli, ["report", "--log", log])
    assert res.exit_code == 0 and res.exception is None, res.output
    assert res.output.rstrip().splitlines()[-1] == "skipped 25 malformed lines of the attack log"
    assert "198.51.100.7" in res.output and "7000 condemned, peak 700 pps" in res.output
    assert not RAW.search(res.output)
    rep = json.loads(CliRunner().invoke(cli, ["report", "--log", log, "--format", "json"]).output)
    assert rep["skipped_lines"] == 25 and len(rep["episodes"]) == 1


@pytest.mark.parametrize("line", ["[" * 100_000, '{"type": "observed", "start": 1, "end": 2, "rule": "syn-flood", '
                                  '"src": "192.0.2.2", "pps": 1e999, "handshake": true}', "\x1b[2J not json", "null",
                                  '{"type": "window", "start": 1, "end": 2, "mode": "monitor"}'])
def test_a_line_nested_too_deep_or_an_infinite_rate_is_one_skipped_line(tmp_path, default_policy, line):
    log = _write(tmp_path / "attacks.jsonl", [line])
    for args in (["report", "--log", log], ["tune", "-c", default_policy, "--log", log, "--since", "2d"]):
        res = CliRunner().invoke(cli, args)
        assert res.exit_code == 0 and res.exception is None, res.output
        assert res.output.rstrip().splitlines()[-1].endswith("skipped 1 malformed line of the attack log")


@pytest.mark.parametrize("args", [["report", "--since", "9" * 400 + "d"], ["tune", "--since", "9" * 400 + "s"],
                                  ["report", "--until", "2024-99"], ["tune", "--margin", "nan"],
                                  ["tune", "--margin", "1e309"], ["tune", "--margin", "0.5"]])
def test_bad_arguments_are_one_line_and_exit_2(tmp_path, default_policy, args):
    log = _write(tmp_path / "attacks.jsonl", [_json(r) for r in GOOD])
    res = _nodeguard(*args, "-c", default_policy, "--log", log)
    assert res.returncode == 2 and res.stdout == "", res.stderr
    assert len(res.stderr.splitlines()) == 1 and res.stderr.startswith("nodeguard: Invalid value for "), res.stderr
    assert ("--since" in res.stderr or "--until" in res.stderr or "--margin" in res.stderr)


def test_tune_never_proposes_a_rate_check_refuses(tmp_path, default_policy):
    """A legitimate source seen at 1,200,000/s: the proposal is the highest rate a policy may say."""
    log = _write(tmp_path / "attacks.jsonl", [_json(
        {"type": "observed", "start": 1000.0, "end": 1010.0, "rule": "syn-flood", "src": "192.0.2.2",
         "packets": 12_000_000, "pps": 1_200_000.0, "handshake": True})])
    res = CliRunner().invoke(cli, ["tune", "-c", default_policy, "--log", log, "--since", "", "--json"])
    assert res.exit_code == 0, res.output
    patch = json.loads(res.output)["patch"]
    assert patch["syn"]["per_source"] == f"{MAX_RATE_PER_S}/second"
    assert parse_policy(json.dumps(patch), "patch.yaml").syn.per_source.per_s == MAX_RATE_PER_S


# --- fuzz: records of every type with fields of any kind --------------------------------------------
_weird_text = st.text(alphabet=st.characters(codec="utf-8", categories=("Cc", "L", "N", "P", "Zs")), max_size=12)
_any = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-10**30, max_value=10**30) | st.just(10**400)
    | st.floats(allow_nan=True, allow_infinity=True) | _weird_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_weird_text, inner, max_size=3), max_leaves=6)
_good_value = {"rule": st.sampled_from(["syn-flood", "icmp-flood", "limit-web"]), "src": st.sampled_from(
    ["192.0.2.1", "2001:db8::1", "\x1b]0;pwn\x07"]), "mode": st.sampled_from(["enforce", "monitor"])}


@st.composite
def _record(draw) -> dict:
    kind = draw(st.sampled_from([*SHAPES, "nonsense"]))
    must, may = SHAPES.get(kind, ({}, {}))
    rec = {"type": kind if draw(st.integers(0, 9)) else draw(_any)}
    for key in [*must, *may, "mode", "extra"]:
        choice = draw(st.integers(0, 5))
        if choice == 0:
            continue  # missing
        if choice == 1:
            rec[key] = draw(_any)
        elif key in _good_value:
            rec[key] = draw(_good_value[key])
        else:
            rec[key] = draw(st.floats(0, 3000) | st.integers(0, 3000) | st.just(math.nan) | st.just(math.inf))
    return rec


_lines = st.lists(_record().map(_json) | _weird_text, max_size=12)


def _no_traceback_nor_raw_text(res) -> None:
    assert res.exception is None, res.exc_info
    assert res.exit_code == 0, res.output
    assert not RAW.search(res.output), res.output


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=_lines, fmt=st.sampled_from(["text", "json", "csv"]))
def test_fuzz_report_never_crashes_nor_prints_raw_control_characters(tmp_path, lines, fmt):
    log = _write(tmp_path / "fuzz.jsonl", lines)
    _no_traceback_nor_raw_text(CliRunner().invoke(cli, ["report", "--log", log, "--format", fmt]))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=_lines, margin=st.floats(1.0, 100.0))
def test_fuzz_tune_never_crashes_nor_prints_raw_control_characters(tmp_path, default_policy, lines, margin):
    log = _write(tmp_path / "fuzz.jsonl", lines)
    res = CliRunner().invoke(cli, ["tune", "-c", default_policy, "--log", log, "--since", "", "--margin", str(margin)])
    _no_traceback_nor_raw_text(res)


def test_json_output_keeps_what_the_log_says_and_escapes_it_once(tmp_path):
    """JSON is escaped by its encoder alone: a control character or a backslash in a source decodes
    back to itself."""
    src = "\x1b[31m\\evil"
    log = _write(tmp_path / "attacks.jsonl", [_json(r) for r in GOOD[:2]] + [_json(dict(GOOD[2], src=src)), _json(GOOD[3])])
    res = CliRunner().invoke(cli, ["report", "--log", log, "--json"])
    assert res.exit_code == 0 and not RAW.search(res.output), res.output
    assert json.loads(res.output)["episodes"][0]["sources"][0]["source"] == src


def test_fields_outside_a_records_shape_are_not_read(tmp_path):
    """An "other" record's shape has no dport nor proto: a list there is neither a crash nor shown."""
    other = {"type": "other", "start": 1000.0, "end": 1010.0, "rule": "syn-flood", "estimated": 40, "dport": [1],
             "proto": {"x": 1}}
    log = _write(tmp_path / "attacks.jsonl", [_json(r) for r in GOOD[:3] + [other] + GOOD[3:]])
    rep = json.loads(CliRunner().invoke(cli, ["report", "--log", log, "--format", "json"]).output)
    row = next(r for r in rep["episodes"][0]["sources"] if r["source"] == "other")
    assert rep["skipped_lines"] == 0 and row["estimated"] == 40 and row["dports"] == [] and row["protos"] == []
