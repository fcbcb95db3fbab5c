"""Insert-war damping: repair at once, until repairs come too often; then back off exponentially.

A competitor that re-asserts its position (kube-router's ensureRuleAtPosition, Felix in
insert mode) would otherwise make us repair in a tight loop. Past ``max_per_minute``
repairs in the last minute, each further repair waits 1, 2, 4 ... up to ``backoff_max_s``
seconds after the previous one. A quiet minute (no drift seen) resets the backoff.
"""

from __future__ import annotations

from collections import deque


class Damper:
    def __init__(self, max_per_minute: int, backoff_max_s: float):
        self.max_per_minute = max_per_minute
        self.backoff_max_s = backoff_max_s
        self.repairs: deque[float] = deque()
        self.level = 0
        self.last_drift = float("-inf")

    def _trim(self, now: float) -> None:
        while self.repairs and now - self.repairs[0] >= 60.0:
            self.repairs.popleft()

    def saw_drift(self, now: float) -> None:
        if now - self.last_drift >= 60.0:
            self.level = 0
        self.last_drift = now

    def backoff_s(self) -> float:
        return 0.0 if self.level == 0 else min(self.backoff_max_s, 2.0 ** (self.level - 1))

    def next_repair_at(self, now: float) -> float:
        """When the next repair may run (``now`` if it may run at once)."""
        self._trim(now)
        if self.level == 0 or not self.repairs:
            return now
        return max(now, self.repairs[-1] + self.backoff_s())

    def record_repair(self, now: float) -> None:
        self._trim(now)
        self.repairs.append(now)
        if len(self.repairs) > self.max_per_minute:
            self.level += 1

    @property
    def contested(self) -> bool:
        return self.level > 0
