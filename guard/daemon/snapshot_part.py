"""The daemon's snapshots of bans and trusted sources (persist.py): every ``watcher.snapshot_interval_s``
in a thread of its own (listing full sets takes a while: never in the watcher's loop), and once more on
stop; paced (pace.py): full sets make snapshots further apart, never a larger share of a core. A
snapshot read while the watcher installs or repairs (its ``epoch`` odd or moved) may hold sets
recreated but not yet restored: it is thrown away, never written."""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from .. import pace, persist
from ..backend.nft import Nft

log = logging.getLogger("nodeguard.run")


class SnapshotPart:
    def __init__(self, watcher: Callable[[], object], clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time):
        self.watcher, self.clock, self.wall = watcher, clock, wall
        self.thread: threading.Thread | None = None
        self.next_at = 0.0
        self.cost = 0.0  # CPU seconds the last one took
        self._since = clock()  # the last snapshot written, else the start (age())
        self._problem: str | None = None
        self._nft: Nft | None = None

    def tick(self) -> None:
        """From the daemon's heartbeat: start a snapshot when one is due and none is running."""
        w = self.watcher()
        if w is None or w.last_plan is None or w.snapshot_path is None or self.clock() < self.next_at:
            return
        if self.thread is not None:
            if self.thread.is_alive():
                return
            self.thread.join()
        self.next_at = self.clock() + w.policy.watcher.snapshot_interval_s
        self.thread = threading.Thread(target=self.once, name="nodeguard-snapshot", daemon=True)
        self.thread.start()

    def once(self) -> bool:
        """Take and write one snapshot; whether it was written. Never raises: a failure is one warning
        (once while it lasts)."""
        w = self.watcher()
        epoch, plan, path = w.epoch, w.last_plan, w.snapshot_path
        if epoch % 2 or plan is None or path is None:
            return False
        started, cpu = self.clock(), pace.cpu()
        try:
            if self._nft is None:
                self._nft = Nft()
            now = self.wall()
            entries = persist.take(plan, self._nft, now, lambda: (persist.load(path) or (0, []))[1])
            if not persist.write(path, entries, now, keep=lambda: w.epoch == epoch):
                return False
        except Exception as exc:  # noqa: BLE001 - the protection goes on without its snapshot
            if str(exc) != self._problem:
                log.warning("cannot snapshot the bans to %s: %s", path, str(exc)[:200])
            self._problem = str(exc)
            return False
        finally:
            self.cost = pace.cpu() - cpu
            self.next_at = max(self.next_at, pace.next_due(started, 0.0, self.cost, pace.SNAPSHOT))
        self._problem = None
        self._since = self.clock()
        return True

    def stop(self) -> None:
        """The last snapshot, taken after the watcher's loop has ended."""
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        self.once()

    def age(self) -> float | None:
        """Seconds since the last snapshot was written, else since the start (an alert on it fires
        when none ever was); None when there is nowhere to write one."""
        w = self.watcher()
        return None if w is None or w.snapshot_path is None else max(0.0, self.clock() - self._since)
