"""``nodeguard demo``: the quick run passes end to end in under a minute and leaves nothing behind;
SIGINT/SIGTERM mid-flood and kill -9 (then ``demo --cleanup``) leave no namespace and no process.

The demo takes the machine-wide flood lock itself. Each test first takes it (as every kernel test
does) and hands the demo its locked descriptor (``NODEGUARD_LOCK_FD``), so the demo starts at once
and the minute is the demo's own.
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from guard.lab.lock import LOCK_PATH

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def locked(kernel):
    """The machine-wide flood lock, held here and passed to the demo by descriptor."""
    with open(LOCK_PATH, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield f.fileno()


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))


def _demo(lock_fd: int, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "guard", "demo", *args], cwd=ROOT, text=True,
                            env=dict(_env(), NODEGUARD_LOCK_FD=str(lock_fd)), pass_fds=(lock_fd,),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _end(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _namespaces(pid: int) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [ln.split()[0] for ln in out.splitlines() if ln.startswith(f"ngd-{pid}-")]


def _pids_inside(names: list[str]) -> list[int]:
    return [int(p) for n in names for p in subprocess.run(["ip", "netns", "pids", n], capture_output=True,
                                                          text=True).stdout.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"


def _read_until(proc: subprocess.Popen, needle: str, timeout: float = 180) -> list[str]:
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError(f"{needle!r} never came:\n{''.join(lines)}")


def test_quick_demo_runs_every_step_in_under_a_minute_and_removes_everything(locked, tmp_path):
    png = tmp_path / "timeline.png"
    started = time.monotonic()
    proc = _demo(locked, "--quick", "--plot", str(png))
    try:
        out, _ = proc.communicate(timeout=120)
    finally:
        _end(proc)
    took = time.monotonic() - started
    print(out)
    assert proc.returncode == 0, out
    assert "waiting for" not in out, "the demo did not get the lock the test holds"
    # 32.7-33.5 s here (the test's clock; demo 32.3-33.1 s), 34.0-36.0 s with one core kept busy while
    # the demo ran; 83 s on issue 16's loaded machine before nft's set-element fetch was taken out of the
    # demo's 4/s counter poll and of status (each read listed a full SYN meter: ~1 s, more under load).
    assert took < 60, f"{took:.1f} s"
    for line in ("kube-proxy ruleset loaded in the node", "nodeguard apply (default policy, but syn.valve: always): ",
                 "nodeguard sample: running", "before the floods: client", "ICMP echo flood (one source): started",
                 "spoofed SYN flood to NodePort 3003: started", "UDP flood to port 5353 (one source): started",
                 "summary (client", "nodeguard report", "attack episodes (UTC):", "timeline picture:",
                 "nodeguard uninstall: ", "cleanup: removed 5 namespaces", "demo OK in"):
        assert line in out, line
    for rule in ("icmp-flood", "syn-flood", "limit-udp-per-source"):
        assert re.search(rf"^  {rule} +\S+ \S+ -> \S+ \S+ +\d+ condemned", out, re.M), rule
    summary = [ln for ln in out.splitlines() if re.match(r"  (ICMP|UDP|spoofed).* arrived", ln)]
    assert len(summary) == 3 and all(int(re.search(r"\((\d+) %\), p50", ln)[1]) >= 80 for ln in summary), summary
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert _namespaces(proc.pid) == []
    _assert_drops_shown_as_they_happen(out)
    # the ban episodes name the banned attacker (no flow record does: ban drops are not sampled)
    assert len(re.findall(r"^episode banned from .*\n.*\n  10\.66\.0\.66 +10\.66\.0\.0/24 .* banned over ", out, re.M)) == 2


LIVE = re.compile(r"^\[ *[\d.]+ s\] (\w+) +flood  arriving +([\d,]+) pps  dropped +([\d,]+) pps(.*?)  client", re.M)


def _assert_drops_shown_as_they_happen(out: str) -> None:
    """Each flood is dropped by the default policy: every plain line after its first (which covers
    only its first ~0.3 s) shows drops, fresh, and over those lines drops are near what arrives.
    Measured 0.85-1.06 of arriving per line on a quiet machine; under load the SYN flood's second line
    showed 0.49 (it holds the valve's burst of 10,000 while hping3 sent only ~40,000/s) and its
    lines together 0.76."""
    per_flood: dict[str, list[tuple[int, int, str]]] = {}
    for key, arriving, dropped, rest in LIVE.findall(out):
        per_flood.setdefault(key, []).append((int(arriving.replace(",", "")), int(dropped.replace(",", "")), rest))
    assert sorted(per_flood) == ["icmp", "syn", "udp"], out
    for key, lines in per_flood.items():
        assert len(lines) >= 4, (key, lines)
        for arriving, dropped, rest in lines[1:]:
            assert rest == "" and dropped > 0, (key, lines)  # not stale
        arrived, dropped = (sum(line[i] for line in lines[1:]) for i in (0, 1))
        assert 0.5 <= dropped / arrived <= 1.5, (key, lines)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_mid_flood_removes_every_namespace_and_process(locked, tmp_path, sig):
    proc = _demo(locked, "--quick", "--plot", str(tmp_path / "t.png"))
    try:
        _read_until(proc, "ICMP echo flood (one source): started", timeout=60)
        names = _namespaces(proc.pid)
        inside = _pids_inside(names)
        assert len(names) == 5 and inside, (names, inside)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=60)
    finally:
        _end(proc)
    assert proc.returncode == 128 + sig, out
    assert f"demo interrupted by {signal.Signals(sig).name}" in out and "cleanup: removed 5 namespaces" in out, out
    assert _namespaces(proc.pid) == []
    assert [p for p in inside if _alive(p)] == [], "a process of the demo outlived it"


def test_after_kill_9_demo_cleanup_removes_the_leftovers(locked, tmp_path):
    proc = _demo(locked, "--quick", "--plot", str(tmp_path / "t.png"))
    try:
        _read_until(proc, "ICMP echo flood (one source): started", timeout=60)
        names = _namespaces(proc.pid)
        inside = _pids_inside(names)
        proc.kill()  # no process can clean up after SIGKILL: the namespaces and the flood stay ...
        proc.wait()
        assert _namespaces(proc.pid) == names
    finally:
        _end(proc)
        res = subprocess.run([sys.executable, "-m", "guard", "demo", "--cleanup"], cwd=ROOT, env=_env(),
                             capture_output=True, text=True, timeout=60)  # ... until the next demo or --cleanup
    assert res.returncode == 0 and "removed 5 namespaces" in res.stdout, res.stdout + res.stderr
    assert _namespaces(proc.pid) == []
    assert [p for p in inside if _alive(p)] == []
