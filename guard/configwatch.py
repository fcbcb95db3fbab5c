"""Notice that the policy file changed, including a Kubernetes ConfigMap update.

kubelet never edits a mounted ConfigMap in place: its AtomicWriter writes a new timestamped
directory ``..2024_05_01_12_00_00.123``, points a temporary symlink at it, renames that over
``..data`` (one atomic rename), and deletes the old directory. ``config.yaml`` itself is a
symlink to ``..data/config.yaml`` that never changes. inotify on ``config.yaml`` therefore sees
nothing, which is why this is a poller: every ``interval_s`` one ``stat`` of the *resolved* path
(path, device, inode, size, mtime); only when that changes is the file read and hashed, and only
a different hash is a change. A swap with identical content, or a ``touch``, is not.

The daemon calls ``check()`` from its loop (select with a timeout of at most ``due_in()``) and
reloads when it returns True, as on SIGHUP. A file that disappears is not a change: the running
policy stays until a readable file with different content is there.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Callable

from .configfile import read_config
from .errors import PolicyError

POLL_S = 5.0  # seconds between looks at the policy file (nodeguard run --config-poll)

log = logging.getLogger("nodeguard.configwatch")


class ConfigWatch:
    def __init__(self, path: str | Path, interval_s: float = 5.0, clock: Callable[[], float] = time.monotonic):
        self.path = Path(path)
        self.interval_s, self.clock = interval_s, clock
        self.reads = 0  # how often the file was read (cheapness is tested)
        self._stat = self._signature()
        self._digest = self._hash() if self._stat else None
        self._next = clock() + interval_s
        self._missing_logged = False

    def _signature(self) -> tuple | None:
        try:
            real = os.path.realpath(self.path)
            st = os.stat(real)
        except OSError:
            return None
        return real, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns

    def _hash(self) -> str | None:
        try:
            data = read_config(self.path)[0]  # never blocks; refused when not root's alone, as a reload would be
        except PolicyError as exc:
            log.warning("%s; keeping the policy in place", exc)
            return None
        self.reads += 1
        return hashlib.sha256(data).hexdigest()

    @property
    def digest(self) -> str | None:
        """sha256 of the content last seen (the daemon can log it, or keep it with the state)."""
        return self._digest

    def due_in(self) -> float:
        return max(0.0, self._next - self.clock())

    def poll(self) -> bool:
        """Look now: True when the content differs from the last content seen."""
        sig = self._signature()
        if sig is None:
            if not self._missing_logged:
                log.warning("%s is missing or unreadable; keeping the policy in place", self.path)
                self._missing_logged = True
            self._stat = None
            return False
        self._missing_logged = False
        if sig == self._stat:
            return False
        self._stat = sig
        digest = self._hash()
        if digest is None or digest == self._digest:
            return False
        self._digest = digest
        return True

    def check(self) -> bool:
        """``poll()`` if ``interval_s`` has passed since the last look; False otherwise."""
        now = self.clock()
        if now < self._next:
            return False
        self._next = now + self.interval_s
        return self.poll()
