"""What a metrics scrape reads (metrics.Snapshot), cached so that scrapes stay cheap with full
meters. Runs in the HTTP threads of the daemon's metrics part (parts.py)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from .. import datapath, pace
from ..backend.nft import Nft
from ..counters import drops_and_refused, meter_fill
from ..metrics import Snapshot

log = logging.getLogger(__name__)

SCRAPE_CACHE_S = 2.0  # scrapes closer together than this share one kernel read
METER_CACHE_S = 30.0  # meter fill is re-counted at most this often (~0.3 s of kernel time per full 65536 meter)
FIRST_COUNT_WAIT_S = 1.0  # a scrape waits this long for a plan's first count; later ones never wait


class Recount:
    """A value counted again in its own thread at most every ``every`` s (paced: pace.py). A scrape never waits for a
    recount, only (up to FIRST_COUNT_WAIT_S) for the first count of a new key: the whole daemon under
    a random-source flood (bench/daemon_memory.py) took more than the reply deadline (10 s) to count
    its 18 full sets, and scrapes that waited for it went unanswered during the attack."""

    def __init__(self, every: float):
        self.every = every
        self._lock = threading.Lock()
        self._done: tuple[float, Any, Any] | None = None  # (when counted, key, value)
        self._running: threading.Thread | None = None
        self.cost = 0.0  # CPU seconds the last count took (pace.py: full sets are counted less often)

    def get(self, key: Any, count: Callable[[], Any], now: float, empty: Any) -> Any:
        with self._lock:
            done = self._done
            due = done is None or done[1] != key or now >= pace.next_due(done[0], self.every, self.cost, pace.FILL)
            if due and self._running is None:
                self._running = threading.Thread(target=self._count, args=(key, count, now),
                                                 name="nodeguard-recount", daemon=True)
                self._running.start()
            running = self._running
        if (done is None or done[1] != key) and running is not None:
            running.join(FIRST_COUNT_WAIT_S)
            done = self._done
        return done[2] if done is not None and done[1] == key else empty

    def _count(self, key: Any, count: Callable[[], Any], started: float) -> None:
        cpu = pace.cpu()
        try:
            value = count()
            self.cost = pace.cpu() - cpu
            with self._lock:
                self._done = (started, key, value)
        except Exception:  # noqa: BLE001 - a failed count leaves the last one; the next scrape retries
            log.warning("counting the sets' fill failed", exc_info=True)
        finally:
            with self._lock:
                self._running = None


class MetricsProvider:
    """One snapshot per scrape (metrics.Snapshot): the watcher's state, the sampler's counters,
    the kernel counters of the condemning rules and of refused bans (one netlink dump of the rules), the
    fill of every per-source set (a netlink element count, at most every METER_CACHE_S, in its own
    thread: Recount) and the datapath programs ahead of our hooks (a few
    iproute2 runs per interface, at most every ``watcher.verify_interval_s``, the watcher's own pace
    for a full look). Scrapes within SCRAPE_CACHE_S share one read.
    Runs in HTTP threads, so it has its own libnftables context. ``daemon``: the running
    supervisor.Daemon (its snapshot() and watcher)."""

    def __init__(self, daemon, clock: Callable[[], float] = time.monotonic):
        self.daemon, self.clock = daemon, clock
        self._lock = threading.Lock()
        self._nft: Nft | None = None
        self._snap: tuple[float, Snapshot] | None = None
        self._meters = Recount(METER_CACHE_S)
        self._datapath: tuple[float, tuple[str, ...], dict] | None = None
        self.reads = 0  # kernel reads (tests check the cache)

    def __call__(self) -> Snapshot:
        with self._lock:
            now = self.clock()
            if self._snap is not None and now - self._snap[0] < SCRAPE_CACHE_S:
                return self._snap[1]
            snap = self.daemon.snapshot()
            plan = self.daemon.watcher.last_plan
            if plan is not None:
                if self._nft is None:
                    self._nft = Nft()
                self.reads += 1
                snap["drops"], snap["bans_refused"] = drops_and_refused(plan)
                key = tuple(s.name for s in plan.ruleset.sets)
                snap["meters"] = self._meters.get(key, lambda: meter_fill(plan), now, [])
                snap["datapath"] = self._bypasses(now, plan.ruleset.interfaces)
            self._snap = (now, snap)
            return snap

    def _bypasses(self, now: float, interfaces: tuple[str, ...]) -> dict:
        every = self.daemon.watcher.policy.watcher.verify_interval_s
        if self._datapath is None or self._datapath[1] != interfaces or now - self._datapath[0] >= every:
            self._datapath = (now, interfaces, datapath.detect(interfaces).data())
        return self._datapath[2]
