"""What the demo collects while the floods run (ingress counters, nodeguard's drops, the client's
attempts), shared between the reader threads and the display under one lock.

Both counters are read about 4 times a second; a rate is over the last second of samples, so the
display shows what is dropped in the second it happens. A figure is stale only when its counter has
not been read for ``STALE_S``."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

STALE_S = 1.0  # four missed reads of a 4/s poll


@dataclass
class Telemetry:
    """What the poller thread and the probe reader collect; read by the display."""
    arrived: list[tuple[float, dict[str, int]]] = field(default_factory=list)   # (t, counter per threat)
    dropped: list[tuple[float, dict[str, int]]] = field(default_factory=list)   # (t, drops per threat)
    attempts: list[dict] = field(default_factory=list)                          # probe lines
    errors: list[str] = field(default_factory=list)
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
            return self._rate(self.dropped, key)

    def dropped_age(self, now: float | None = None) -> float:
        """Seconds since the newest read of the drop counters."""
        with self.lock:
            newest = self.dropped[-1][0] if self.dropped else None
        return (now or time.time()) - newest if newest is not None else float("inf")

    def stale(self, now: float | None = None) -> str:
        """" (drops N s old)" when the drop counters have not been read for STALE_S, else ""."""
        age = self.dropped_age(now)
        return f" (drops {age:.1f} s old)" if age > STALE_S else ""

    def fresh_drops(self, after: float, timeout: float = 5.0) -> dict[str, int]:
        """The first drops sample read after ``after`` (a flood's totals must not be a read old)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if self.dropped and self.dropped[-1][0] > after:
                    return self.dropped[-1][1]
            time.sleep(0.05)
        raise RuntimeError(f"nodeguard's drop counters were not read for {timeout:.0f} s")

    def client(self, since: float, until: float | None = None) -> tuple[int, int, dict[str, tuple[int, int]], list[float]]:
        """ok, total, per kind (ok, total), latencies (ms) of successes, for attempts started in [since, until)."""
        with self.lock:
            rows = [a for a in self.attempts if a["t"] >= since and (until is None or a["t"] < until)]
        kinds: dict[str, tuple[int, int]] = {}
        for a in rows:
            ok, total = kinds.get(a["k"], (0, 0))
            kinds[a["k"]] = (ok + a["ok"], total + 1)
        return (sum(a["ok"] for a in rows), len(rows), kinds, [a["ms"] for a in rows if a["ok"]])
