"""guard/logs.py: journald priority prefixes, timestamps only off the journal, JSON lines, escaping."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import textwrap

import pytest

from guard.logs import escape, setup_logging, under_journald

HOSTILE = "kube-proxy\n<3>nodeguard.watch: FAKE repaired\x1b[2J\x07 \\x41 \u202e"


@pytest.fixture
def logfile(tmp_path):
    f = open(tmp_path / "stderr", "w+")
    yield f
    f.close()
    logging.getLogger().handlers.clear()


def lines(f) -> list[str]:
    f.flush()
    f.seek(0)
    return f.read().splitlines()


def journal_env(f) -> dict[str, str]:
    st = os.fstat(f.fileno())
    return {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}


def test_under_journald_lines_carry_the_priority_and_no_timestamp(logfile):
    setup_logging("text", logging.DEBUG, logfile, journal_env(logfile))
    log = logging.getLogger("nodeguard.watch")
    log.debug("d")
    log.info("repaired in %.1f ms", 1.25)
    log.warning("w")
    log.error("e")
    log.critical("c")
    assert lines(logfile) == ["<7>nodeguard.watch: d", "<6>nodeguard.watch: repaired in 1.2 ms",
                              "<4>nodeguard.watch: w", "<3>nodeguard.watch: e", "<2>nodeguard.watch: c"]


def test_off_the_journal_lines_start_with_a_utc_timestamp(logfile):
    setup_logging("text", logging.INFO, logfile, {})
    logging.getLogger("nodeguard.metrics").warning("scrape failed")
    (line,) = lines(logfile)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z WARNING nodeguard\.metrics: scrape failed", line)


def test_a_journal_stream_inherited_for_another_file_does_not_count(logfile, tmp_path):
    other = tmp_path / "other"
    other.write_text("")
    st = os.stat(other)
    assert not under_journald(logfile, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    assert not under_journald(logfile, {"JOURNAL_STREAM": "garbage"})
    assert under_journald(logfile, journal_env(logfile))


def test_untrusted_text_cannot_forge_a_line_or_a_terminal_sequence(logfile):
    setup_logging("text", logging.INFO, logfile, journal_env(logfile))
    logging.getLogger("nodeguard.watch").warning("contested by %s", HOSTILE, extra={"writer": HOSTILE})
    (line,) = lines(logfile)
    assert line.startswith("<4>nodeguard.watch: contested by kube-proxy\\n<3>nodeguard.watch: FAKE")
    assert "\x1b" not in line and "\x07" not in line and "\u202e" not in line
    assert "\\x1b[2J\\x07 \\\\x41 \\u202e" in line  # a literal backslash is escaped too: unambiguous
    assert " writer=kube-proxy\\n" in line


def test_json_lines_have_ts_level_logger_msg_and_extras(logfile):
    setup_logging("json", logging.INFO, logfile, journal_env(logfile))  # json even under journald
    log = logging.getLogger("nodeguard.sample")
    log.info("episode started", extra={"rule": "syn-flood", "pps": 12000.5, "src": HOSTILE})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("sampler failed")
    first, second = lines(logfile)
    assert first.isascii() and second.isascii()
    a, b = json.loads(first), json.loads(second)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", a["ts"])
    assert {k: a[k] for k in ("level", "logger", "msg", "rule", "pps", "src")} == {
        "level": "info", "logger": "nodeguard.sample", "msg": "episode started",
        "rule": "syn-flood", "pps": 12000.5, "src": HOSTILE}
    assert b["level"] == "error" and "ValueError: boom" in b["exc"]


def test_a_traceback_stays_on_one_line_in_text(logfile):
    setup_logging("text", logging.INFO, logfile, {})
    try:
        raise RuntimeError("kernel said no")
    except RuntimeError:
        logging.getLogger("nodeguard").exception("apply failed")
    (line,) = lines(logfile)
    assert "apply failed | Traceback (most recent call last):\\n" in line and "RuntimeError: kernel said no" in line


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="text, json"):
        setup_logging("xml")


def test_escape_leaves_ordinary_text_alone():
    assert escape("repaired in 1.2 ms: chain syn-flood (pid 42)") == "repaired in 1.2 ms: chain syn-flood (pid 42)"
    assert escape("ünïcode ok") == "ünïcode ok"


def test_a_process_under_a_real_journal_stream_variable_writes_priorities(tmp_path):
    """As systemd starts it: stderr is the stream JOURNAL_STREAM names (here a file)."""
    err = tmp_path / "stderr"
    code = textwrap.dedent("""
        import logging, os
        from guard.logs import setup_logging
        st = os.fstat(2)
        os.environ["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        setup_logging("text")
        logging.getLogger("nodeguard.run").info("ready")
    """)
    with open(err, "w") as f:
        subprocess.run([sys.executable, "-c", code], stderr=f, check=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert err.read_text() == "<6>nodeguard.run: ready\n"
