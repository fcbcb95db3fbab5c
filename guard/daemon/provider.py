"""What a metrics scrape reads (metrics.Snapshot), cached so that scrapes stay cheap with full
meters. Runs in the HTTP threads of the daemon's metrics part (parts.py)."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from .. import datapath
from ..backend.nft import Nft
from ..counters import drops_and_refused, meter_fill
from ..metrics import Snapshot

SCRAPE_CACHE_S = 2.0  # scrapes closer together than this share one kernel read
METER_CACHE_S = 30.0  # meter fill is re-counted at most this often (~0.3 s of kernel time per full 65536 meter)


class MetricsProvider:
    """One snapshot per scrape (metrics.Snapshot): the watcher's state, the sampler's counters,
    the kernel counters of the condemning rules and of refused bans (one netlink dump of the rules), the
    fill of every per-source set (a netlink
    element count, at most every METER_CACHE_S) and the datapath programs ahead of our hooks (a few
    iproute2 runs per interface, at most every ``watcher.verify_interval_s``, the watcher's own pace
    for a full look). Scrapes within SCRAPE_CACHE_S share one read.
    Runs in HTTP threads, so it has its own libnftables context. ``daemon``: the running
    supervisor.Daemon (its snapshot() and watcher)."""

    def __init__(self, daemon, clock: Callable[[], float] = time.monotonic):
        self.daemon, self.clock = daemon, clock
        self._lock = threading.Lock()
        self._nft: Nft | None = None
        self._snap: tuple[float, Snapshot] | None = None
        self._meters: tuple[float, Any, list] | None = None
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
                if self._meters is None or self._meters[1] != key or now - self._meters[0] >= METER_CACHE_S:
                    self._meters = (now, key, meter_fill(plan))
                snap["meters"] = self._meters[2]
                snap["datapath"] = self._bypasses(now, plan.ruleset.interfaces)
            self._snap = (now, snap)
            return snap

    def _bypasses(self, now: float, interfaces: tuple[str, ...]) -> dict:
        every = self.daemon.watcher.policy.watcher.verify_interval_s
        if self._datapath is None or self._datapath[1] != interfaces or now - self._datapath[0] >= every:
            self._datapath = (now, interfaces, datapath.detect(interfaces).data())
        return self._datapath[2]
