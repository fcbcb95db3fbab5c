"""Runs the iptables and ipset tools, and remembers their pids: the watcher must not blame our own
transactions (the kernel names their writer) on someone else."""

from __future__ import annotations

import subprocess
import time

from ..errors import EnvironmentProblem


class OwnPids:
    """Pids of the tools we ran, so the watcher does not blame our own transactions on someone else.

    The kernel names the writer in the event that arrives just after the tool exits; a pid is kept
    for ``grace_s`` after its process ended, then forgotten, since the kernel may give it to a
    foreign writer next."""

    def __init__(self, grace_s: float = 5.0, clock=time.monotonic):
        self.grace_s = grace_s
        self.clock = clock
        self._running: set[int] = set()
        self._ended: dict[int, float] = {}

    def started(self, pid: int) -> None:
        self._running.add(pid)

    def ended(self, pid: int) -> None:
        self._running.discard(pid)
        self._ended[pid] = self.clock()

    def __contains__(self, pid: int) -> bool:
        now = self.clock()
        for old in [p for p, t in self._ended.items() if now - t > self.grace_s]:
            del self._ended[old]
        return pid in self._running or pid in self._ended


OWN_PIDS = OwnPids()


def _start(args: list[str]) -> subprocess.Popen:
    try:
        proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    except FileNotFoundError:
        raise EnvironmentProblem(f"{args[0]} not found: install Debian's iptables (and ipset)") from None
    OWN_PIDS.started(proc.pid)
    return proc


def _finish(proc: subprocess.Popen, stdin: str | None = None) -> subprocess.CompletedProcess:
    try:
        out, err = proc.communicate(stdin, timeout=20)  # under the unit's 30 s watchdog: a held xtables lock is a retry, not a hang
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    OWN_PIDS.ended(proc.pid)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _run(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    return _finish(_start(args), stdin)
