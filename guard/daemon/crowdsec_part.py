"""The daemon's CrowdSec part (``crowdsec.enabled``): a thread that pulls the Local API's decision
stream every ``pull_interval_s`` and makes the ``crowdsec-*`` sets hold its ban decisions, one
transaction a pull. It writes only elements of those sets, never a rule (the watcher stays the one
writer of the ruleset). A failed pull changes nothing in the kernel: the bans in place run out on
their own timeouts; it is counted, logged at most once a minute, and shown in ``status`` (the file
guard/crowdsec/state.py) and in the metrics."""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import threading
import time
from collections import deque
from typing import Any, Callable

from .. import bans
from ..backend.nft import Nft, objects
from ..configfile import read_config, write_atomic
from ..crowdsec import lapi, push, state
from ..crowdsec.decisions import parse_stream
from ..crowdsec.held import Held, Want
from ..crowdsec.kernel import transaction
from ..errors import NodeguardError
from ..logs import Throttle
from ..model.ruleset import TABLE
from ..render.nft import FAMILY
from .thread_part import ThreadPart

log = logging.getLogger("nodeguard.run")

LOG_EVERY_S = 60.0


class CrowdsecPart(ThreadPart):
    """``plan()``/``policy()``: the watcher's last plan and its policy. ``step()`` is one pull; the
    thread calls it every ``pull_interval_s``."""

    name = "crowdsec"

    def __init__(self, plan: Callable[[], Any], policy: Callable[[], Any], clock: Callable[[], float] = time.monotonic):
        self.plan, self.policy, self.clock = plan, policy, clock
        self.held = Held()
        self.installed: Want | None = None  # what the sets hold since our last write; None: not known
        self._sets: dict | None = None  # (key -> (kernel name, handle)) when ``installed`` was written
        self._config: tuple | None = None  # the section the held decisions came with
        self.last_pull: float | None = None  # unix time of the last pull that reached the kernel
        self.last_push: float | None = None  # unix time of the last escalation ban the LAPI took
        self.errors: dict[str, int] = {"pull": 0, "kernel": 0, "push": 0}
        self._bans: deque[dict] = deque(maxlen=push.MAX_QUEUED)  # the sampler's ban records, to push
        self._bans_lock = threading.Lock()
        self._wake = threading.Event()  # set when bans wait to be pushed
        self.skipped = 0  # stream entries that were not well-formed decisions
        self.left_out = 0  # prefixes held but not in the kernel's full sets (crowdsec.size), at the last pull
        self.timings: dict[str, float] = {}  # seconds the last pull took: its answer, reading it, the kernel
        self.problem: str | None = None  # the last failure, while it lasts
        self._throttle = Throttle(LOG_EVERY_S, clock)
        self._nft: Nft | None = None
        super().__init__()

    # --- the thread -------------------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        policy = self.policy()
        return policy is not None and policy.crowdsec.enabled

    def tick(self) -> None:
        """From the daemon's heartbeat: start the thread once the policy asks for it."""
        if self.enabled:
            self.start()

    def _main(self) -> None:
        while not self._stop.is_set():
            started = self.clock()
            try:
                self.step()
            except Exception as exc:  # noqa: BLE001 - the next pull tries again
                self._failed("kernel", f"{type(exc).__name__}: {exc}")
            self.push()
            policy = self.policy()
            deadline = started + policy.crowdsec.pull_interval_s
            while not self._stop.is_set() and self._wake.wait(max(0.0, deadline - self.clock())):
                self._wake.clear()  # a new escalation ban: out at once, not at the next pull
                self.push()

    def _woken(self) -> None:
        self._wake.set()

    # --- one pull -----------------------------------------------------------------------------------
    def step(self) -> bool:
        """Pull and write; False when nothing was pulled (off, not installed, a failure)."""
        policy, plan = self.policy(), self.plan()
        if policy is None or plan is None or not policy.crowdsec.enabled:
            return False
        cs = policy.crowdsec
        config = (cs.url, cs.api_key_file, cs.scopes, cs.origins, cs.min_prefix_v4, cs.min_prefix_v6)
        if config != self._config:  # another LAPI or filter: start again from its whole list
            self._config, self.held, self.installed = config, Held(), None
            self.last_pull = None
        t0 = time.perf_counter()
        try:
            key = read_config(cs.api_key_file)[0].decode().strip()
            answer = lapi.stream(cs.url, key, startup=self.last_pull is None)
            t1 = time.perf_counter()
            new, deleted, skipped = parse_stream(answer, cs.scopes, cs.origins, cs.min_prefix)
        except (NodeguardError, lapi.LapiError, UnicodeDecodeError, ValueError) as exc:
            return self._failed("pull", str(exc))
        t2 = time.perf_counter()
        if self._nft is None:
            self._nft = Nft()
        sets = self._kernel_sets(plan)
        now = self.clock()
        startup = self.last_pull is None
        ours = [self.held.decisions[i][0] for i in deleted if cs.push and i in self.held.decisions
                and self.held.decisions[i][0].origin == cs.machine_id]
        self.held.pulled(new, deleted, now, startup)
        known = self.installed if sets == self._sets else None  # a set recreated (repair, reload): refill
        want, self.left_out = self.held.want(cs.size)
        text, after = transaction({k: name for k, (name, _h) in sets.items()}, want, known, now)
        self._lift(plan, ours)
        try:
            if text:
                self._nft.run_text(text, what="crowdsec decisions")
        except NodeguardError as exc:
            self.installed = None  # the next pull flushes and refills
            return self._failed("kernel", str(exc))
        self.installed, self._sets = after, sets
        self.timings = {"answer": t1 - t0, "read": t2 - t1, "kernel": time.perf_counter() - t2}
        if startup:
            log.info("crowdsec: %d ban decisions from %s (answer %.2f s, read %.2f s, kernel %.2f s; %d skipped)",
                     len(new), cs.url, *self.timings.values(), skipped)
        self.skipped += skipped
        self.last_pull = time.time()
        if self.problem is not None:
            log.info("crowdsec: pulling from %s again", cs.url)
        self.problem = None
        self._publish(policy)
        return True

    # --- push -----------------------------------------------------------------------------------------
    def banned(self, records: list[dict]) -> None:
        """From the sampler's thread: escalation's new bans (``ban`` records), pushed by ours."""
        policy = self.policy()
        if policy is not None and policy.crowdsec.enabled and policy.crowdsec.push:
            with self._bans_lock:
                self._bans.extend(records)
            self._wake.set()

    def push(self) -> bool:
        """Report the queued escalation bans; on a failure they wait for the next turn. False: none sent."""
        policy = self.policy()
        with self._bans_lock:
            records = list(self._bans)
            self._bans.clear()
        if not records or policy is None or not policy.crowdsec.enabled or not policy.crowdsec.push:
            return False
        cs = policy.crowdsec
        alerts = [a for r in records if not self._from_lapi(r)
                  for a in [push.alert(r, policy.escalate.ban_s, cs.machine_id)] if a is not None]
        try:
            if alerts:
                password = read_config(cs.password_file)[0].decode().strip()
                push.send(cs.url, cs.machine_id, password, alerts)
        except (NodeguardError, lapi.LapiError, UnicodeDecodeError) as exc:
            with self._bans_lock:  # first in line again (a full queue drops the newest)
                self._bans.extendleft(reversed(records))
            return self._failed("push", str(exc))
        if alerts:
            self.last_push = time.time()
            self._publish(policy)
        return bool(alerts)

    def _from_lapi(self, rec: dict) -> bool:
        """A ban whose source the LAPI already bans: never pushed back."""
        try:
            return self.held.holds(ipaddress.ip_network(rec.get("src")))
        except (TypeError, ValueError):
            return False

    def _lift(self, plan, decisions: list) -> None:
        """Decisions this node pushed, deleted on the LAPI (``cscli decisions delete``): the escalation
        bans behind them are lifted here too, as on every node that pulled them."""
        keys = []
        for d in decisions:
            try:
                keys.append(bans.key_of(d.net))
            except bans.BadAddress:
                continue
        if keys:
            gone = bans.unban(plan, self._nft, keys)
            if gone:
                log.info("crowdsec: %s unbanned here too (its decision was deleted on the LAPI)", ", ".join(gone))

    def _kernel_sets(self, plan) -> dict[tuple[int, str], tuple[str, int]]:
        """(IP version, role) -> (kernel name, handle) of the installed ``crowdsec-*`` sets: a new handle
        is a set recreated empty."""
        ours = {(s.version, s.role): s for s in plan.ruleset.sets if s.kind == "crowdsec"}
        names = plan.backend.installed_sets(self._nft, ours)
        handles = {o["name"]: o.get("handle") for o in objects(self._nft.list(f"table {FAMILY} {TABLE}", terse=True),
                                                                 "set")}
        return {k: (n, handles.get(n)) for k, n in names.items()}

    def _failed(self, op: str, problem: str) -> bool:
        self.errors[op] = self.errors.get(op, 0) + 1
        self.problem = f"{op}: {problem}"
        held = self._throttle.allow()
        if held is not None:
            log.error("crowdsec: %s failed (%s); the bans in place stay until they run out%s", op, problem,
                      f" ({held} more failures since)" if held else "")
        policy = self.policy()
        if policy is not None:
            self._publish(policy)
        return False

    # --- what is reported -----------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any] | None:
        """For the metrics and ``status``; None when crowdsec is off."""
        if not self.enabled:
            return None
        return {"decisions": {f"ipv{v}": n for v, n in self.held.counts().items()}, "last_pull": self.last_pull,
                "last_push": self.last_push, "errors": dict(self.errors),
                "skipped": self.skipped, "left_out": self.left_out, "problem": self.problem}

    def _publish(self, policy) -> None:
        snap = self.snapshot()
        if snap is None:
            return
        try:
            write_atomic(state.path(policy.watcher.state_file), json.dumps({"pid": os.getpid(), **snap}).encode())
        except (NodeguardError, OSError) as exc:
            log.debug("crowdsec: cannot write its state file: %s", exc)


