"""What the demo collects while the floods run (ingress counters, nodeguard's drops, the client's
attempts), shared between the poller threads and the display under one lock."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field


@dataclass
class Telemetry:
    """What the poller thread and the probe reader collect; read by the display."""
    arrived: list[tuple[float, dict[str, int]]] = field(default_factory=list)   # (t, counter per threat)
    dropped: list[tuple[float, dict[str, int]]] = field(default_factory=list)   # (t, drops per threat)
    attempts: list[dict] = field(default_factory=list)                          # probe lines
    errors: list[str] = field(default_factory=list)
    status_took: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @staticmethod
    def _rate(series: list[tuple[float, dict[str, int]]], key: str, span: float = 1.0) -> float:
        if len(series) < 2:
            return 0.0
        t1, last = series[-1]
        older = [s for s in series if s[0] <= t1 - span] or series[:1]
        t0, first = older[-1]
        return (last.get(key, 0) - first.get(key, 0)) / (t1 - t0) if t1 > t0 else 0.0

    def arriving_pps(self, key: str) -> float:
        with self.lock:
            return self._rate(self.arrived, key)

    def dropped_pps(self, key: str) -> float:
        with self.lock:
            return self._rate(self.dropped, key, 1.5)

    def dropped_age(self) -> float:
        """Seconds since the newest ``status`` sample."""
        with self.lock:
            return time.time() - self.dropped[-1][0] if self.dropped else float("inf")

    def client(self, since: float, until: float | None = None) -> tuple[int, int, dict[str, tuple[int, int]], list[float]]:
        """ok, total, per kind (ok, total), latencies (ms) of successes, for attempts started in [since, until)."""
        with self.lock:
            rows = [a for a in self.attempts if a["t"] >= since and (until is None or a["t"] < until)]
        kinds: dict[str, tuple[int, int]] = {}
        for a in rows:
            ok, total = kinds.get(a["k"], (0, 0))
            kinds[a["k"]] = (ok + a["ok"], total + 1)
        return (sum(a["ok"] for a in rows), len(rows), kinds, [a["ms"] for a in rows if a["ok"]])
