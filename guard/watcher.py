"""``nodeguard watch``: notice anything that disturbs our table or out-prioritises it, repair at once.

Event-driven (nftables netlink notifications) with a periodic full verification as a
safety net. Every check re-renders the policy and compares (drift.py), so our own
transactions, which also raise events, are recognised as in sync and never repaired.
Repairs are one atomic table replace each, damped when a competitor keeps undoing them.
"""

from __future__ import annotations

import json
import logging
import os
import select
import time
from pathlib import Path
from typing import Callable

from .apply import Plan, apply_plan, choose_flavour, make_plan
from .backend.nft import Nft
from .damper import Damper
from .backend.ipt import OWN_PIDS, legacy_fingerprint
from .drift import Drift, diff_plan
from .events import NftEvents
from .policy import Policy

log = logging.getLogger("nodeguard.watch")


class Watcher:
    def __init__(self, policy: Policy, nft: Nft, clock: Callable[[], float] = time.monotonic):
        self.policy = policy
        self.nft = nft
        self.clock = clock
        cfg = policy.watcher
        self.damper = Damper(cfg.max_repairs_per_minute, cfg.backoff_max_s)
        self.state_file = Path(cfg.state_file)
        self.state = {"pid": os.getpid(), "repairs": 0, "checks": 0, "last_reason": None, "last_repair_ms": None,
                      "contested_by": None, "backoff_s": 0.0, "adopted": None, "last_writer": None}
        self._pending: Drift | None = None
        self._backend = "nft"
        self._flavour: tuple[str, str] | None = None
        self._plans: dict = {}
        self._legacy_seen: tuple = ()
        self._repair_at = 0.0

    # --- one step each ---------------------------------------------------------------
    def check(self) -> tuple[Plan, Drift | None]:
        self.state["checks"] += 1
        if self._flavour is None and self.policy.backend != "nft":
            self._flavour = choose_flavour(self.policy, self.nft)  # decided once per run
        plan = make_plan(self.policy, self.nft, flavour=self._flavour, cache=self._plans)
        return plan, diff_plan(plan, self.nft)

    def start(self) -> None:
        """Adopt a correct table as it is (no gap, counters kept); otherwise apply."""
        plan, drift = self.check()
        self._backend = plan.backend
        self.state["backend"] = plan.backend
        self.state["adopted"] = drift is None
        if drift is None:
            log.info("adopted the installed table: it matches the policy")
        else:
            log.info("installing: %s", drift)
            apply_plan(plan, self.nft)
        self._write_state()

    def handle(self, detected_at: float) -> None:
        """Check now; repair at once, or schedule the repair if damped."""
        plan, drift = self.check()
        now = self.clock()
        if drift is None:
            self._pending = None
            if self.damper.contested and now - self.damper.last_drift >= 60.0:
                self.state["contested_by"] = None
            return
        self.damper.saw_drift(now)
        self._repair_at = self.damper.next_repair_at(now)
        if self._repair_at > now:
            if self._pending is None:
                log.warning("repair damped for %.1f s (contested by %s): %s",
                            self._repair_at - now, self._blame(drift), drift)
            self._pending = drift
            self.state["contested_by"] = self._blame(drift)
            self.state["backoff_s"] = self.damper.backoff_s()
            return
        apply_plan(plan, self.nft, families=drift.families, sets=drift.sets_missing, repair=True)
        done = self.clock()
        self.damper.record_repair(done)
        self._pending = None
        self.state.update(repairs=self.state["repairs"] + 1, last_reason=str(drift),
                          last_repair_ms=round((done - detected_at) * 1000, 2), backoff_s=self.damper.backoff_s())
        if self.damper.contested:
            self.state["contested_by"] = self._blame(drift)
        log.info("repaired in %.1f ms: %s (last writer: %s)", (done - detected_at) * 1000, drift,
                 self.state["last_writer"] or "unknown")

    def set_policy(self, policy: Policy) -> None:
        """A reloaded policy: the next check renders it, and the repair installs it."""
        self.policy = policy
        self._plans.clear()
        self._flavour = None
        self.damper = Damper(policy.watcher.max_repairs_per_minute, policy.watcher.backoff_max_s)

    def _blame(self, drift: Drift) -> str:
        return drift.culprit or self.state["last_writer"] or "unknown writer"

    # --- the loop --------------------------------------------------------------------
    def run(self, should_stop: Callable[[], bool], wakeup=None, on_wakeup: Callable[[], bool] | None = None) -> None:
        """Loop until ``should_stop()``. ``wakeup`` (a socket that signals write to) makes the loop
        call ``on_wakeup()`` at once; when it returns True (a new policy), the state is checked."""
        events = NftEvents()
        try:
            self.start()
            verify_every = self.policy.watcher.verify_interval_s
            next_full = self.clock() + verify_every
            if self._backend == "iptables-legacy":  # legacy sends no events: poll a cheap fingerprint
                verify_every = min(verify_every, self.policy.watcher.legacy_poll_s)
                self._legacy_seen = legacy_fingerprint()
            next_verify = self.clock() + verify_every
            while not should_stop():
                now = self.clock()
                deadline = min(next_verify, self._repair_at) if self._pending else next_verify
                fds = [events] + ([wakeup] if wakeup is not None else [])
                ready, _, _ = select.select(fds, [], [], max(0.0, deadline - now))
                detected = self.clock()
                changed = False
                if wakeup is not None and wakeup in ready:
                    while True:
                        try:
                            wakeup.recv(64)
                        except BlockingIOError:
                            break
                    changed = bool(on_wakeup and on_wakeup())
                if events in ready:
                    n, seen, overrun = events.drain()
                    others = [(pid, name) for pid, name in seen if pid != os.getpid() and pid not in OWN_PIDS]
                    if others:
                        self.state["last_writer"] = f"{others[-1][1]} (pid {others[-1][0]})"
                    # Every transaction ends with a NEWGEN naming its writer: when all of them are
                    # ours and nothing was lost, there is nothing to check. Messages without a NEWGEN
                    # yet (a transaction still arriving) are checked now; its NEWGEN follows.
                    ours_only = bool(seen) and not others and not overrun
                    changed = changed or overrun or (n > 0 and not ours_only)
                due_verify = detected >= next_verify
                due_repair = self._pending is not None and detected >= self._repair_at
                if due_verify and not changed and self._backend == "iptables-legacy" and not due_repair:
                    fingerprint = legacy_fingerprint()  # a few syscalls; the full check spawns tools
                    if fingerprint == self._legacy_seen and detected < next_full:
                        next_verify = detected + verify_every
                        continue
                    self._legacy_seen = fingerprint
                    next_full = detected + self.policy.watcher.verify_interval_s
                if changed or due_verify or due_repair:
                    self.handle(detected)
                    self._write_state()
                    if self._backend == "iptables-legacy":  # our repair changed the tables too
                        self._legacy_seen = legacy_fingerprint()
                if due_verify:
                    next_verify = detected + verify_every
        finally:
            events.close()
            self._write_state(alive=False)

    def _write_state(self, alive: bool = True) -> None:
        data = dict(self.state, alive=alive, contested=self.damper.contested, updated=time.time())
        try:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.state_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(data))
            os.replace(tmp, self.state_file)
        except OSError as exc:
            log.debug("cannot write %s: %s", self.state_file, exc)


def read_state(path: str) -> dict | None:
    """The watcher's last published state, with ``alive`` checked against its pid."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if data.get("alive"):
        try:
            os.kill(int(data["pid"]), 0)
        except (OSError, ValueError, KeyError):
            data["alive"] = False
    return data
