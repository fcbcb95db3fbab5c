"""The daemon's SYN valve part (``syn.valve: auto``): a thread that every half second reads conntrack's
statistics (and, while engaged, the valve's own drop counters) and engages, refreshes or lets lapse
the valve through the backend, as guard/valve.py decides. It writes only the valve's timed element,
never a rule: the watcher stays the one writer of the ruleset, and a transaction of ours is an event
it ignores (same pid). Without this part (``apply`` alone) the valve never engages."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

from ..backend.nft import Nft
from ..valve import ENGAGE, LAPSE, REFRESH, STAT_PATH, Valve, failures, parse_ct_stat
from .thread_part import ThreadPart

log = logging.getLogger("nodeguard.run")

INTERVAL_S = 0.5


class ValvePart(ThreadPart):
    """``plan()``: the watcher's last plan (None before the first install); ``engage_failures()``:
    the policy's ``syn.valve_engage_failures``. ``step()`` is one reading; the thread calls it."""

    name = "valve"

    def __init__(self, plan: Callable[[], Any], engage_failures: Callable[[], int],
                 clock: Callable[[], float] = time.monotonic, stat_path: Path = STAT_PATH):
        self.plan, self.engage_failures, self.clock, self.stat_path = plan, engage_failures, clock, stat_path
        self.valve: Valve | None = None
        self.broken: str | None = None  # a reading we did not understand: we stopped engaging
        self._key: tuple | None = None
        self._ids: tuple[Any, set[str]] | None = None  # (plan, its valve rule ids)
        self._nft: Nft | None = None
        super().__init__()

    # --- the thread -------------------------------------------------------------------------------
    def tick(self) -> None:
        """From the daemon's heartbeat: start the thread once."""
        self.start()

    def _main(self) -> None:
        while not self._stop.wait(INTERVAL_S):
            try:
                self.step()
            except Exception as exc:  # noqa: BLE001 - a failed write is retried at the next reading
                log.error("syn valve: %s: %s", type(exc).__name__, exc)

    # --- one reading -------------------------------------------------------------------------------
    def step(self) -> str | None:
        plan = self.plan()
        sets = [s for s in plan.ruleset.sets if s.kind == "valve"] if plan is not None else []
        if not sets or self.broken:
            if self.valve is not None:  # valve always or off now: nothing of ours is engaged
                self.valve.engaged_until = None
            return None
        key = (tuple(s.name for s in sets), self.engage_failures())
        if key != self._key:  # a new hold or threshold: a new valve (the kernel element keeps its own expiry)
            self._key, self.valve = key, Valve(sets[0].timeout_s, key[1], engagements=self.engagements)
        try:
            total = failures(parse_ct_stat(self.stat_path.read_text()))
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            self.broken = f"{self.stat_path}: {exc}"
            log.error("syn valve: cannot read conntrack's statistics (%s); the valve will not engage", self.broken)
            return None
        now = self.clock()
        backstop = self._backstop(plan) if self.valve.engaged else None
        before = self.valve.seen
        action = self.valve.step(now, total, backstop)
        if action in (ENGAGE, REFRESH):
            if self._nft is None:
                self._nft = Nft()
            for s in sets:
                plan.backend.add_elements(self._nft, s, plan.backend.valve_elements(s), s.timeout_s)
        if action == ENGAGE:
            log.warning("syn valve engaged: conntrack refused %d new connections in %.1f s (drop + insert_failed); "
                        "SYNs over syn.rate are dropped for at least %d s", total - (before or 0), INTERVAL_S,
                        self.valve.hold_s)
        elif action == LAPSE:
            log.warning("syn valve lapsed: no conntrack failure and no SYN over syn.rate for %d s", self.valve.hold_s)
        return action

    def _backstop(self, plan) -> int:
        """Packets the valve's rules dropped so far (one counter read)."""
        if self._ids is None or self._ids[0] is not plan:
            self._ids = (plan, plan.backend.valve_ids(plan.ruleset))
        ids = self._ids[1]
        return sum(packets for rid, packets, _bytes in plan.backend.rule_counters() if rid in ids)

    # --- what is reported --------------------------------------------------------------------------
    @property
    def engaged(self) -> bool:
        return self.valve is not None and self.valve.engaged

    @property
    def engagements(self) -> int:
        return self.valve.engagements if self.valve is not None else 0

    def snapshot(self) -> dict[str, Any] | None:
        """For the metrics; None when no valve waits to engage (syn.valve always or off)."""
        plan = self.plan()
        if plan is None or not any(s.kind == "valve" for s in plan.ruleset.sets):
            return None
        return {"engaged": self.engaged, "engagements": self.engagements, "broken": self.broken}
