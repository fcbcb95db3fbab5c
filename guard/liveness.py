"""Is the daemon's main loop turning? A file, for ``nodeguard healthz`` (the DaemonSet's liveness
probe, an ``exec``): no TCP port that any local user can reach and crowd stands between kubelet
and the answer.

The main loop (guard/daemon/supervisor.py) rewrites ``heartbeat.json`` beside the watcher's state
file every ``EVERY_S``: its pid and ``CLOCK_MONOTONIC`` (one clock for every process of the host,
unlike the wall clock, which NTP may step). The check reads it back as the daemon wrote it
(``read_private``: only root's file under the data directories), and fails when the pid is gone
or the beat is older than ``MAX_AGE_S`` (a loop stuck in one turn, or a dead daemon)."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Callable

from .configfile import read_private, write_atomic
from .errors import NodeguardError
from .statefile import is_pid, running

log = logging.getLogger("nodeguard.run")

NAME = "heartbeat.json"
STATE_FILE = "/run/nodeguard/watch.json"  # the watcher's state file by default (policy/runtime.py)
EVERY_S = 5.0       # how often the main loop rewrites the file
MAX_AGE_S = 60.0    # an older beat: the loop is stuck (as /healthz's, guard/metrics.py)


def heartbeat_path(state_file: str | Path = STATE_FILE) -> Path:
    return Path(state_file).parent / NAME


class Unhealthy(NodeguardError):
    """The check's one line: exit 1."""


class HeartbeatFile:
    """Called each turn of the main loop; writes at most every ``every_s``, and says once (not each
    turn) when it cannot."""

    def __init__(self, every_s: float = EVERY_S, clock: Callable[[], float] = time.monotonic):
        self.every_s, self.clock = every_s, clock
        self._next = 0.0
        self._problem: str | None = None

    def beat(self, path: Path) -> None:
        now = self.clock()
        if now < self._next:
            return
        self._next = now + self.every_s
        try:
            write_atomic(path, json.dumps({"pid": os.getpid(), "monotonic": now}).encode())
            self._problem = None
        except (NodeguardError, OSError) as exc:
            if str(exc) != self._problem:
                log.warning("cannot write the heartbeat file (nodeguard healthz fails): %s", exc)
            self._problem = str(exc)


def check(path: Path, max_age_s: float = MAX_AGE_S, clock: Callable[[], float] = time.monotonic) -> str:
    """The line to print when the daemon is alive; raises Unhealthy with the line when not."""
    try:
        data = json.loads(read_private(path))
        pid, beat = data["pid"], float(data["monotonic"])
        if not is_pid(pid):
            raise ValueError(f"pid {pid!r} is not a process id")
    except (NodeguardError, OSError, ValueError, TypeError, KeyError) as exc:
        if not os.path.lexists(path):  # only to word the line: the read said why, in its terms
            raise Unhealthy(f"no heartbeat at {path}: the daemon is not running (or not yet)") from None
        raise Unhealthy(f"unreadable heartbeat {path}: {exc}") from None
    age = clock() - beat
    if not running(pid):
        raise Unhealthy(f"stale: pid {pid} of {path} is gone")
    if not 0 <= age < max_age_s:
        raise Unhealthy(f"stale: the main loop (pid {pid}) last turned {age:.1f} s ago (max {max_age_s:g} s)")
    return f"ok: the main loop (pid {pid}) turned {age:.1f} s ago"
