"""The daemon's snapshots of bans and trusted sources (persist.py): every ``watcher.snapshot_interval_s``
in a thread of its own (listing a full trusted set takes a second or more: never in the watcher's loop),
and once more on stop. A snapshot read while the watcher installs or repairs (its ``epoch`` odd or
moved) may hold sets recreated but not yet restored: it is thrown away, never written."""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from .. import persist
from ..backend.nft import Nft

log = logging.getLogger("nodeguard.run")


class SnapshotPart:
    def __init__(self, watcher: Callable[[], object], clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time):
        self.watcher, self.clock, self.wall = watcher, clock, wall
        self.thread: threading.Thread | None = None
        self.next_at = 0.0
        self.taken_at: float | None = None  # wall-clock time of the last snapshot written
        self._previous: list[persist.Entry] | None = None  # what the last one held
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
        try:
            if self._nft is None:
                self._nft = Nft()
            if self._previous is None:
                loaded = persist.load(path)
                self._previous = loaded[1] if loaded else []
            now = self.wall()
            entries = persist.take(plan, self._nft, now, self._previous)
            if w.epoch != epoch:
                return False
            persist.write(path, entries, now)
        except Exception as exc:  # noqa: BLE001 - the protection goes on without its snapshot
            if str(exc) != self._problem:
                log.warning("cannot snapshot the bans to %s: %s", path, str(exc)[:200])
            self._problem = str(exc)
            return False
        self._problem = None
        self._previous, self.taken_at = entries, now
        return True

    def stop(self) -> None:
        """The last snapshot, taken after the watcher's loop has ended."""
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        self.once()

    def age(self) -> float | None:
        return None if self.taken_at is None else max(0.0, self.wall() - self.taken_at)
