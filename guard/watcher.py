"""``nodeguard watch``: notice anything that disturbs our rules or out-prioritises them, repair at once.

Event-driven (nftables netlink notifications; a cheap fingerprint poll for iptables-legacy) with a
periodic full verification as a safety net. Every check re-renders the policy and compares
(drift.py), so our own transactions, which also raise events, are recognised as in sync and never
repaired. Repairs are the same state-keeping transaction ``apply`` sends, damped when a competitor
keeps undoing them.

An insert war must cost next to nothing: a check triggered by an event re-reads only the IP
versions the event names (iptables), a burst of events (a rival's delete, then insert) is one
check, and while a repair is damped, events are not checked at all (the repair, when it is due,
checks first). Only the periodic verification reads everything, ipsets included.

The loop never dies of an error: each iteration catches what went wrong, logs one line, and tries
again with backoff, from the last policy the kernel accepted. A policy the kernel rejects is never
installed in place of one it accepted; with ``interfaces: auto`` and no default route for a moment
(a DHCP or BGP flap), the last known interfaces stay protected.
"""

from __future__ import annotations

import json
import logging
import os
import select
import time
from pathlib import Path
from typing import Callable

from .apply import Plan, apply_plan, choose_flavour, make_plan, transaction
from .apply import read_state as read_live_state
from .backend.legacy_fingerprint import legacy_fingerprint
from .backend.tools import OWN_PIDS
from .backend.nft import Nft
from .damper import Damper
from .drift import Drift, Reason, diff_plan
from .errors import EnvironmentProblem, NodeguardError
from .events import Batch, NftEvents
from .interfaces import resolve_interfaces
from .policy.schema import Policy

log = logging.getLogger("nodeguard.watch")
RETRY_MAX_S = 30.0
# A burst of events ends after this much quiet (bounded): a rival's delete and insert, each its own
# iptables process, commit 10-20 ms apart (measured with tests/helpers/competitor.py).
SETTLE_QUIET_S, SETTLE_MAX_S = 0.025, 0.1
Scope = frozenset[int] | None  # IP versions to re-read; None: everything (ipsets too)


class Watcher:
    def __init__(self, policy: Policy, nft: Nft, clock: Callable[[], float] = time.monotonic,
                 on_good: Callable[[Policy], None] | None = None):
        self.policy = policy
        self.on_good = on_good  # told of every policy the kernel accepted (to keep it for the next boot)
        self.good_policy: Policy | None = None  # the last policy the kernel accepted
        self.nft = nft
        self.clock = clock
        self.damper = Damper(policy.watcher.max_repairs_per_minute, policy.watcher.backoff_max_s)
        self.state = {"pid": os.getpid(), "repairs": 0, "checks": 0, "last_reason": None, "last_kind": None, "last_repair_ms": None,
                      "contested_by": None, "backoff_s": 0.0, "adopted": None, "last_writer": None,
                      "errors": 0, "last_error": None, "reloads_ok": 0, "reloads_failed": 0,
                      "last_apply": None, "notes": []}
        self._pending: Drift | None = None
        self.last_plan: Plan | None = None  # the render of the last check (the daemon's metrics read it)
        self._backend: str | None = None  # what is installed (None: not yet)
        self._polled = False  # it raises no events: poll its fingerprint (iptables-legacy)
        self._flavour: tuple[str, str] | None = None
        self._plans: dict = {}
        self._interfaces: tuple[str, ...] | None = None
        self._legacy_seen: tuple = ()
        self._repair_at = 0.0
        self._retry_at: float | None = None
        self._failures = 0
        self.fingerprints: dict[str, str] | None = None  # our rules' bodies as the kernel listed them
        self._live = None  # the last read (iptables: supplies what a partial re-read leaves out)
        self._live_key: tuple | None = None  # (backend, allowlist ipsets) that read was for
        self._dirty: Scope = frozenset()  # what changed since the last check (None: unknown, read all)
        self._recheck = False  # a check is due on the next turn, events or not
        self._unread: Scope = frozenset()  # IP versions our own repair changed since the last read
        self._written: dict | None = None  # the state last published

    @property
    def state_file(self) -> Path:
        return Path(self.policy.watcher.state_file)

    # --- one step each ---------------------------------------------------------------
    def interfaces(self, policy: Policy) -> tuple[str, ...]:
        """The policy's interfaces; with ``auto`` and no default route, the last known ones."""
        try:
            found = resolve_interfaces(policy.interfaces)
        except EnvironmentProblem as exc:
            if self._interfaces is None:
                raise
            self._note(f"{exc}: keeping the last known interfaces {', '.join(self._interfaces)}")
            return self._interfaces
        self._interfaces = found
        self.state["interfaces"] = list(found)
        self.state["notes"] = [n for n in self.state["notes"] if "last known interfaces" not in n]
        return found

    def plan(self, policy: Policy | None = None) -> Plan:
        policy = policy or self.policy
        if self._flavour is None:
            self._flavour = choose_flavour(policy, self.nft)  # decided once per policy (None: nft)
        return make_plan(policy, self.nft, flavour=self._flavour,
                         cache=self._plans if policy is self.policy else None, interfaces=self.interfaces(policy),
                         probe_foreign=policy.backend == "nft")

    def check(self, scope: Scope = None) -> tuple[Plan, object, Drift | None]:
        self.state["checks"] += 1
        plan = self.plan()
        live = self._read(plan, scope)
        drift = diff_plan(plan, self.nft, live, self.fingerprints)
        self.last_plan = plan
        self.state["in_sync"] = drift is None
        return plan, live, drift

    def _read(self, plan: Plan, scope: Scope):
        """The live state; ``scope`` (IP versions) re-reads only those when a full read of the same
        backend and allowlists is at hand. Every read is kept for the next."""
        key = plan.backend.live_key()
        scope = _union(scope, self._unread)
        self._unread = frozenset()
        partial = scope is not None and self._live is not None and self._live_key == key
        live = read_live_state(plan, self.nft, tuple(sorted(scope)) if partial else (4, 6),
                               self._live if partial else None)
        self._live, self._live_key = live, key
        return live

    def _record(self, plan: Plan) -> Drift | None:
        """Remember our rules' bodies as the kernel lists them now (after our own transaction).
        Returns the drift of that very read: a rival that struck between our transaction and
        this read (iptables-legacy raises no event for it) is checked at once, not at the next
        full verification."""
        if plan.backend.polled:
            self._legacy_seen = legacy_fingerprint()  # before the read: a later change shows in the poll
        live = self._read(plan, None)
        self.fingerprints = plan.backend.fingerprints(live)
        return diff_plan(plan, self.nft, live, self.fingerprints)

    def _after_repair(self, plan: Plan, tx, families: Scope) -> None:
        """Our rules' bodies after our transaction. When it only moved our jumps back (an insert war),
        they are unchanged: nothing to read now. The next event (iptables-legacy: the next poll, which
        is made to see these families changed) re-reads them, and sees any strike that came after our
        transaction. Otherwise read what it wrote, and check it."""
        if tx.moves_jumps_only and families is not None:
            self._unread = _union(self._unread, families)  # the last read of them is out of date
            self._legacy_seen = tuple(e for e in self._legacy_seen if e[0] not in families)
            return
        if families is not None and plan.backend.refill_only(self.fingerprints):
            return  # a refill of rules we installed before: the kernel lists them as it did then
        after = self._record(plan)
        if after is not None:  # struck again already: check (and repair, or damp) on the next turn
            self._recheck = True
            self._dirty = _union(self._dirty, after.families or None)

    def start(self) -> None:
        """Adopt a correct installation as it is (no gap, counters kept); otherwise apply."""
        plan, live, drift = self.check()
        self.state["backend"] = plan.backend.name
        self.state["adopted"] = drift is None or drift.in_place
        if drift is None:
            log.info("adopted the installed rules: they match the policy")
            self.fingerprints = plan.backend.fingerprints(live)
        else:
            # in place: only rules inside our chains differ (e.g. the sampler's odds changed as the
            # last run was killed); rewriting those chains alone keeps every other counter
            log.info("%s: %s", "adopted the installed rules, rewriting in place" if drift.in_place else "installing",
                     drift)
            kept = plan.backend.fingerprints(live) if drift.in_place else None
            apply_plan(plan, self.nft, live=live, fingerprints=kept)
            self._live = None
            self._recheck = self._record(plan) is not None
            if not drift.in_place:
                self.state.update(last_apply=time.time(), in_sync=True)
        self._backend, self._polled = plan.backend.name, plan.backend.polled
        self._accepted()

    def _accepted(self) -> None:
        if self.good_policy is not self.policy and self.on_good:
            self.on_good(self.policy)
        self.good_policy = self.policy

    def handle(self, detected_at: float, scope: Scope = None) -> None:
        """Check now (re-reading ``scope``); repair at once, or schedule the repair if damped."""
        self._dirty, self._recheck = frozenset(), False
        plan, live, drift = self.check(scope)
        now = self.clock()
        if drift is None:
            self._pending = None
            self._accepted()  # the kernel holds exactly this policy
            if self.damper.contested and now - self.damper.last_drift >= 60.0:
                self.state["contested_by"] = None
            return
        switching = plan.backend.name != self._backend
        if not switching:
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
        families = (4, 6) if switching else tuple(sorted(drift.families))
        if scope is not None and not switching and plan.backend.needs_full_read(live, families, self.fingerprints):
            live = self._read(plan, None)  # it rebuilds chains: the ipsets they use, as they are now
        tx = apply_plan(plan, self.nft, families=families, repair=not switching, live=live,
                        fingerprints=None if switching else self.fingerprints)
        self._after_repair(plan, tx, None if switching else frozenset(families))
        done = self.clock()
        self.state["in_sync"] = True
        self._backend, self._polled = plan.backend.name, plan.backend.polled
        self.state["backend"] = plan.backend.name
        self._accepted()
        if switching:
            log.info("switched to the %s backend; the other backends' rules are removed", plan.backend.name)
            return
        self.damper.record_repair(done)
        self._pending = None
        self.state.update(repairs=self.state["repairs"] + 1, last_reason=str(drift), last_kind=drift.kind,
                          last_repair_ms=round((done - detected_at) * 1000, 2), backoff_s=self.damper.backoff_s(),
                          last_apply=time.time())
        if self.damper.contested:
            self.state["contested_by"] = self._blame(drift)
        log.info("repaired in %.1f ms: %s (last writer: %s)", (done - detected_at) * 1000, drift,
                 self.state["last_writer"] or "unknown")

    def reload(self, policy: Policy, source: str) -> bool:
        """A new policy (SIGHUP): kernel-checked before it replaces the one in place. Returns
        whether it was taken; the next check installs it, in one state-keeping transaction."""
        try:
            saved_flavour = self._flavour
            self._flavour = None
            plan = self.plan(policy)
            plan.backend.check(transaction(plan, read_live_state(plan, self.nft)), self.nft)
        except NodeguardError as exc:
            self._flavour = saved_flavour
            self.state["reloads_failed"] += 1
            log.error("reload: keeping the current policy: %s: %s", source, exc)
            return False
        self.policy = policy
        self._plans.clear()
        self._live = None
        self.damper = Damper(policy.watcher.max_repairs_per_minute, policy.watcher.backoff_max_s)
        self.state["reloads_ok"] += 1
        log.info("reload: %s accepted by the kernel; installing it", source)
        return True

    def _blame(self, drift: Drift) -> str:
        return drift.culprit or self.state["last_writer"] or "unknown writer"

    def _note(self, note: str) -> None:
        if note not in self.state["notes"]:
            log.warning("%s", note)
            self.state["notes"] = [*self.state["notes"], note][-5:]

    def _failed(self, what: str, exc: Exception) -> None:
        """One line, then a retry with backoff; a rejected new policy gives way to the last good one."""
        self._failures += 1
        exc = exc if str(exc) else type(exc).__name__
        delay = min(RETRY_MAX_S, 0.5 * 2 ** min(self._failures - 1, 16))
        self._retry_at = self.clock() + delay
        self.state.update(errors=self.state["errors"] + 1, last_error=f"{what}: {exc}")
        log.error("%s failed (%s); retrying in %.1f s", what, exc, delay)
        if self.good_policy is not None and self.policy is not self.good_policy:
            log.error("going back to the last policy the kernel accepted")
            self.policy = self.good_policy
            self._plans.clear()
            self._flavour = None
        self._live = None  # what failed may have left the kernel other than we last read it

    # --- the loop --------------------------------------------------------------------
    def run(self, should_stop: Callable[[], bool], wakeup=None, on_wakeup: Callable[[], bool] | None = None,
            heartbeat: Callable[[], None] | None = None, tick_s: float = 1.0) -> None:
        """Loop until ``should_stop()``. ``wakeup`` (a socket that signal handlers write to) makes the
        loop call ``on_wakeup()`` at once; when it returns True (a new policy), the state is checked.
        ``heartbeat`` is called once per iteration, and with it the loop turns at least every
        ``tick_s`` (the systemd watchdog is pinged from here, so a hung loop stops the pings)."""
        events = NftEvents()
        next_verify = next_full = self.clock()
        started = False
        woken = False  # a wakeup that came before the first successful start: handled after it
        try:
            while not should_stop():
                if heartbeat:
                    heartbeat()
                cfg = self.policy.watcher
                legacy = self._polled
                verify_every = self._verify_every()
                now = self.clock()
                deadlines = [next_verify] + ([self._repair_at] if self._pending else []) + \
                    ([self._retry_at] if self._retry_at is not None else []) + ([now] if self._recheck else [])
                timeout = max(0.0, min(min(deadlines) - now, tick_s if heartbeat else 3600.0))
                fds = [events] + ([wakeup] if wakeup is not None else [])
                try:
                    ready, _, _ = select.select(fds, [], [], timeout)
                    detected = self.clock()
                    if not started:
                        # Until the first start succeeds, neither a signal nor a foreign transaction may
                        # bring the retry forward (read them, or select would return at once, forever).
                        if wakeup is not None and wakeup in ready:
                            _drain_socket(wakeup)
                            woken = True
                        if events in ready:
                            events.drain()
                        if detected < next_verify:
                            continue
                        self._legacy_seen = legacy_fingerprint()  # before start reads (see _legacy_changes)
                        self.start()
                        started = True
                        self._succeeded()
                        next_verify = detected + self._verify_every()
                        next_full = detected + cfg.verify_interval_s
                        continue
                    changed = False
                    if wakeup is not None and (wakeup in ready or woken):
                        _drain_socket(wakeup)
                        woken = False
                        changed = bool(on_wakeup and on_wakeup())
                    touched = events in ready and self._events(_settle(events))
                    due_verify = detected >= next_verify
                    due_repair = self._pending is not None and detected >= self._repair_at
                    due_retry = self._retry_at is not None and detected >= self._retry_at
                    full = changed or due_retry or (due_verify and (not legacy or detected >= next_full))
                    if legacy and (full or touched or due_verify or due_repair or self._recheck):
                        touched = self._legacy_changes() or touched  # a few syscalls, no process
                    if touched and self._pending is None and not (full or due_repair or self._recheck):
                        touched = not self._defer(detected)
                    # a damped repair pending: what happens meanwhile waits for its check, when it is due
                    if full or due_repair or self._recheck or (touched and self._pending is None):
                        if full:
                            next_full = detected + cfg.verify_interval_s
                        pending = self._pending.families if self._pending else frozenset()
                        self.handle(detected, None if full else _union(self._dirty, pending))
                        self._succeeded()
                    if due_verify:
                        next_verify = detected + verify_every
                except (KeyboardInterrupt, SystemExit):
                    raise
                except Exception as exc:  # noqa: BLE001 - the watcher must outlive any single failure
                    self._failed("start" if not started else "check/repair", exc)
                    # the next look is the retry: not at once (a failing check would spin), and no later
                    next_verify = self._retry_at if self._retry_at is not None else self.clock() + 1.0
                finally:
                    self._write_state()
        finally:
            events.close()
            self._write_state(alive=False)

    def _verify_every(self) -> float:
        """iptables-legacy sends no events: poll its cheap fingerprint this often instead."""
        cfg = self.policy.watcher
        return min(cfg.verify_interval_s, cfg.legacy_poll_s) if self._polled \
            else cfg.verify_interval_s

    def _succeeded(self) -> None:
        self._failures = 0
        self._retry_at = None

    def _events(self, batch: Batch) -> bool:
        """Whether a batch of events asks for a check; what it touched joins ``_dirty``."""
        others = [(pid, name) for pid, name in batch.writers if pid != os.getpid() and pid not in OWN_PIDS]
        if others:
            self.state["last_writer"] = f"{others[-1][1]} (pid {others[-1][0]})"
        # Every transaction ends with a NEWGEN naming its writer: when all of them are ours and
        # nothing was lost, there is nothing to check. Messages without a NEWGEN yet (a transaction
        # still arriving) are checked now; its NEWGEN follows.
        ours_only = bool(batch.writers) and not others and not batch.overrun
        if batch.overrun or (batch.datagrams > 0 and not ours_only):
            # a foreign transaction whose messages came with an earlier batch names no version: read all
            unknown = batch.overrun or (others and not batch.versions)
            self._dirty = _union(self._dirty, None if unknown else frozenset(batch.versions))
            return True
        return False

    def _defer(self, now: float) -> bool:
        """Contested and not yet allowed to repair: a new strike is not even checked now; its check
        comes when the repair is due (it would only find the drift and schedule that repair)."""
        if not self.damper.contested or self.damper.next_repair_at(now) <= now:
            return False
        self.damper.saw_drift(now)
        self._repair_at = self.damper.next_repair_at(now)
        self._pending = Drift((Reason("other", "changed while contested; checked when the repair is due"),),
                              families=self._dirty if self._dirty is not None else frozenset({4, 6}))
        return True

    def _legacy_changes(self) -> bool:
        """iptables-legacy: did its tables change since we last looked? The IP versions that did
        join ``_dirty``. Taken before the check's read, so a change during the read shows next time."""
        now = legacy_fingerprint()
        versions = frozenset(entry[0] for entry in set(now) ^ set(self._legacy_seen))
        self._legacy_seen = now
        self._dirty = _union(self._dirty, versions)
        return bool(versions)

    def _write_state(self, alive: bool = True) -> None:
        """Publish the state when it changed (the loop turns every second or faster with nothing new)."""
        data = dict(self.state, alive=alive, contested=self.damper.contested, fingerprints=self.fingerprints)
        if data == self._written:
            return
        self._written = data
        data = dict(data, updated=time.time())
        try:
            self.state_file.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
            tmp = self.state_file.with_suffix(".tmp")
            # never through a symlink someone planted (the state file's directory may be shared)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o640)
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(data))
            os.replace(tmp, self.state_file)
        except OSError as exc:
            log.debug("cannot write %s: %s", self.state_file, exc)


def _settle(events: NftEvents) -> Batch:
    """Read a burst of events to its end (a rival's delete and insert are two transactions a few
    ms apart): one check for the burst instead of one per transaction, at the cost of a few ms."""
    batch = events.drain()
    deadline = time.monotonic() + SETTLE_MAX_S
    while time.monotonic() < deadline and select.select([events], [], [], SETTLE_QUIET_S)[0]:
        events.drain(batch)
    return batch


def _drain_socket(sock) -> None:
    while True:
        try:
            if not sock.recv(64):
                return
        except BlockingIOError:
            return


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


def _union(a: Scope, b: Scope) -> Scope:
    return None if a is None or b is None else a | b
