"""guard/liveness.py: the heartbeat file the daemon's main loop writes (the real writer) and
``nodeguard healthz``, the DaemonSet's exec liveness probe, reading it back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from guard.liveness import EVERY_S, MAX_AGE_S, HeartbeatFile, Unhealthy, check, heartbeat_path

ROOT = Path(__file__).resolve().parent.parent


def healthz(path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "guard", "healthz", "--heartbeat", str(path), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=10)


def test_a_fresh_beat_passes_and_a_stuck_loop_fails_after_max_age(tmp_path):
    path = heartbeat_path(tmp_path / "watch.json")
    now = [1000.0]
    beats = HeartbeatFile(clock=lambda: now[0])
    beats.beat(path)
    assert json.loads(path.read_text()) == {"pid": os.getpid(), "monotonic": 1000.0}
    now[0] += EVERY_S - 0.1
    beats.beat(path)  # not due: the file keeps its beat
    assert check(path, clock=lambda: now[0]) == f"ok: the main loop (pid {os.getpid()}) turned {EVERY_S - 0.1:.1f} s ago"
    with pytest.raises(Unhealthy, match=r"last turned 60\.0 s ago \(max 60 s\)"):
        check(path, clock=lambda: 1000.0 + MAX_AGE_S)


@pytest.mark.parametrize("content, says", [
    (None, "no heartbeat at "),
    (b"\x1b]0;pwned\x07", "unreadable heartbeat "),
    (b'{"pid": "x", "monotonic": 1}', "unreadable heartbeat "),
    (b'{"pid": 999999999, "monotonic": 1}', "unreadable heartbeat "),  # above pid_max
    ("a reaped child's pid", "stale: pid "),
])
def test_healthz_exits_1_with_one_escaped_line_when_the_daemon_is_not_alive(tmp_path, content, says):
    path = tmp_path / "heartbeat.json"
    if isinstance(content, str):
        child = subprocess.Popen(["true"])
        child.wait()
        content = json.dumps({"pid": child.pid, "monotonic": time.monotonic()}).encode()
    if content is not None:
        path.write_bytes(content)
        path.chmod(0o640)
    res = healthz(path)
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr.startswith(f"nodeguard: {says}") and res.stderr.count("\n") == 1, res.stderr
    assert "\x1b" not in res.stderr


def test_healthz_passes_on_the_real_writers_file_and_imports_nothing_heavy(tmp_path):
    """The probe runs every 20 s on every node: the CLI's startup rules (tests/test_cli_lazy.py) hold."""
    from test_cli_lazy import HEAVY, PROBE

    path = heartbeat_path(tmp_path / "watch.json")
    HeartbeatFile().beat(path)
    res = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), "healthz", "--heartbeat", str(path)],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    assert res.stdout.startswith(f"ok: the main loop (pid {os.getpid()}) turned 0.")
    assert res.stderr.strip().splitlines()[-1] == "HEAVY []", res.stderr


def test_a_bad_max_age_is_one_line_and_exit_2(tmp_path):
    res = healthz(tmp_path / "heartbeat.json", "--max-age", "0")
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "--max-age" in res.stderr
