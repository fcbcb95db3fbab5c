"""The watcher's checks and repairs: one step each, called by its loop (loop.py); its updates of
our own desired state are updates.py's.

Event-driven (nftables netlink notifications; a cheap fingerprint poll for iptables-legacy) with a
periodic full verification as a safety net. Every check re-renders the policy and compares
(drift.py), so our own transactions, which also raise events, are recognised as in sync and never
repaired. Repairs are the same state-keeping transaction ``apply`` sends, damped when a competitor
keeps undoing them.

A policy the kernel rejects is never installed in place of one it accepted; with ``interfaces:
auto`` and no default route for a moment (a DHCP or BGP flap), the last known interfaces stay
protected.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Callable

from .. import persist, sampling_odds
from ..apply import Plan, apply_plan, make_plan, transaction
from ..apply import read_state as read_live_state
from ..backend.kinds import Installed, kind_for
from ..backend.legacy_fingerprint import legacy_fingerprint
from ..backend.nft import Nft
from ..damper import Damper
from ..drift import Drift, diff_plan
from ..errors import EnvironmentProblem, NodeguardError
from ..interfaces import resolve_interfaces
from ..policy.schema import Policy
from .loop import WatchLoop
from .ports import HeldPorts
from .scope import Scope, _union
from .updates import DesiredUpdates

log = logging.getLogger("nodeguard.watch")
RETRY_MAX_S = 30.0
INTERFACES_NOTE = "interfaces"  # note topic: the default route's interface is gone, the last known ones kept
RECREATED = frozenset({"table_missing", "object_missing"})  # drift whose repair creates sets anew: empty


class Watcher(WatchLoop, DesiredUpdates):
    def __init__(self, policy: Policy, nft: Nft, clock: Callable[[], float] = time.monotonic,
                 on_good: Callable[[Policy], None] | None = None, odds_from_file: bool = False,
                 last_good: Path | None = None):
        self.policy = policy
        self.last_good = last_good  # the daemon's: its snapshot of bans lives beside it (persist.path_for)
        # odd while an install or repair has not yet restored the snapshot: a snapshot taken meanwhile
        # (daemon/snapshot_part.py) would save empty sets, and is thrown away
        self.epoch = 0
        # ``nodeguard watch`` beside ``nodeguard sample``: that sampler installs its odds and writes
        # the file; this watcher renders with the file's, read at each render, so it never undoes them
        self.odds_from_file = odds_from_file
        self.on_good = on_good  # told of every policy the kernel accepted (to keep it for the next boot)
        self.good_policy: Policy | None = None  # the last policy the kernel accepted
        self.nft = nft
        self.clock = clock
        self.damper = Damper(policy.watcher.max_repairs_per_minute, policy.watcher.backoff_max_s)
        self.state = {"pid": os.getpid(), "repairs": 0, "checks": 0, "last_reason": None, "last_kind": None,
                      "last_repair_ms": None,
                      "contested_by": None, "backoff_s": 0.0, "adopted": None, "last_writer": None,
                      "errors": 0, "last_error": None, "reloads_ok": 0, "reloads_failed": 0,
                      "last_apply": None, "notes": [], "port_updates": 0}
        self._notes: dict[str, str] = {}  # topic -> text; state["notes"] lists the texts
        self._pending: Drift | None = None
        self._reload_pending = False  # a reloaded policy not yet installed (handle: not a repair)
        self.last_plan: Plan | None = None  # the render of the last check (the daemon's metrics read it)
        self._backend: Installed | None = None  # what is installed (None: not yet)
        self._polled = False  # it raises no events: poll its fingerprint (iptables-legacy)
        self._flavours: dict = {}  # kind -> the flavour decided for the policy in place, once (kinds.py; nft: None)
        self._plans: dict = {}
        self.ports = HeldPorts()  # ``ports: auto``: the set every check renders with (ports.py)
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
        self._sets_touched = True  # a set of our table may have changed since the last read (events say)
        self._deny_written: dict[str, str] = {}  # set -> who else added or deleted its elements (events), till refilled
        self._written: dict | None = None  # the state last published
        self._write_problem: str | None = None  # why the last publication failed (logged once)
        # the sampling odds every render uses (sampling_odds.py): the watcher is the only writer of
        # them, in the kernel and in the file (set_odds); the file gives them back after a restart
        self.odds: dict[str, int] = sampling_odds.load(sampling_odds.path_for(policy))

    @property
    def state_file(self) -> Path:
        return Path(self.policy.watcher.state_file)

    @property
    def snapshot_path(self) -> Path | None:
        return persist.path_for(self.policy, self.last_good)

    def _install(self, plan: Plan, restore: bool, **kw):
        """apply_plan, then (``restore``: its sets are new, so empty; or the transaction the kernel took
        made the table anew) the snapshot added back."""
        self.epoch += 1
        try:
            tx = apply_plan(plan, self.nft, **kw)
            self._sets_touched |= tx.changes_sets  # by us: the next read probes the deny sets again
            self._deny_written = {} if tx.recreates else {
                n: w for n, w in self._deny_written.items() if n not in tx.filled}
            path = self.snapshot_path
            if (restore or tx.recreates) and path is not None:
                persist.restore(plan, self.nft, path)
        finally:
            self.epoch += 1
        return tx

    # --- one step each ---------------------------------------------------------------
    def interfaces(self, policy: Policy) -> tuple[str, ...]:
        """The policy's interfaces; with ``auto`` and no default route, the last known ones."""
        try:
            found = resolve_interfaces(policy.interfaces)
        except EnvironmentProblem as exc:
            if self._interfaces is None:
                raise
            self.note(INTERFACES_NOTE, f"{exc}: keeping the last known interfaces {', '.join(self._interfaces)}")
            return self._interfaces
        self._interfaces = found
        self.state["interfaces"] = list(found)
        self.clear_note(INTERFACES_NOTE)
        return found

    def plan(self, policy: Policy | None = None, flavours: dict | None = None) -> Plan:
        """The render of ``policy`` (the one in place); ``flavours``: where its flavour is decided and
        kept (a reload's candidate decides its own; the policy in place: ``_flavours``)."""
        policy = policy or self.policy
        kind = kind_for(policy)
        flavours = self._flavours if flavours is None else flavours
        if kind not in flavours:
            flavours[kind] = kind.flavour(policy, self.nft)
        interfaces = self.interfaces(policy)
        ours = policy is self.policy  # a reload's candidate reads the listeners itself
        return make_plan(policy, self.nft, flavour=flavours[kind], cache=self._plans if ours else None,
                         interfaces=interfaces, probe_foreign=kind.reads_foreign,
                         odds=None if self.odds_from_file else self.odds,
                         ports=self.ports.held(policy, interfaces) if ours else None)

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
        previous = self._live if self._live_key == key and (partial or plan.backend.reads_again_what_changed) else None
        unchanged, self._sets_touched = not self._sets_touched, False
        deny = {s.name for s in plan.ruleset.sets if s.sealed}
        self._deny_written = {n: w for n, w in self._deny_written.items() if n in deny}
        live = read_live_state(plan, self.nft, tuple(sorted(scope)) if partial else (4, 6), previous, unchanged,
                               self._deny_written)
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
            # in place: only rules inside our chains differ (e.g. new odds were installed as the last
            # run was killed, before set_odds saved them); rewriting those chains alone keeps every other counter
            log.info("%s: %s", "adopted the installed rules, rewriting in place" if drift.in_place else "installing",
                     drift)
            kept = plan.backend.fingerprints(live) if drift.in_place else None
            self._install(plan, not drift.in_place, live=live, fingerprints=kept)
            self._live = None
            self._recheck = self._record(plan) is not None
            if not drift.in_place:
                self.state.update(last_apply=time.time(), in_sync=True)
        self._backend, self._polled = plan.backend.installed, plan.backend.polled
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
            self._reload_pending = False
            self._accepted()  # the kernel holds exactly this policy
            if self.damper.contested and now - self.damper.last_drift >= 60.0:
                self.state["contested_by"] = None
            return
        switching = plan.backend.installed != self._backend
        if not switching and not self._reload_pending:  # a new policy installs at once, and is no repair
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
        recreated = switching or any(r.kind in RECREATED for r in drift.reasons)
        tx = self._install(plan, recreated, families=families, repair=not switching, live=live,
                           fingerprints=None if switching else self.fingerprints)
        self._after_repair(plan, tx, None if switching else frozenset(families))
        done = self.clock()
        self.state["in_sync"] = True
        self._backend, self._polled = plan.backend.installed, plan.backend.polled
        self.state["backend"] = plan.backend.name
        self._accepted()
        if switching:
            self._reload_pending = False
            log.info("switched to the %s backend; the other backends' rules are removed", plan.backend.name)
            return
        if self._reload_pending:
            self._reload_pending = False
            self._pending = None
            self.state["last_apply"] = time.time()
            log.info("reload installed in %.1f ms: %s", (done - detected_at) * 1000, drift)
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
        flavours: dict = {}  # decided afresh for the candidate; the policy in place keeps its own till it is taken
        try:
            plan = self.plan(policy, flavours)
            plan.backend.check(transaction(plan, read_live_state(plan, self.nft)), self.nft)
        except NodeguardError as exc:
            self.state["reloads_failed"] += 1
            log.error("reload: keeping the current policy: %s: %s", source, exc)
            return False
        self.policy, self._flavours = policy, flavours
        self._plans.clear()
        self.ports.forget()
        self._live = None
        self.damper = Damper(policy.watcher.max_repairs_per_minute, policy.watcher.backoff_max_s)
        self.state["reloads_ok"] += 1
        self._reload_pending = True  # what the next check finds differing is this policy, not a repair
        log.info("reload: %s accepted by the kernel; installing it", source)
        return True

    def _blame(self, drift: Drift) -> str:
        return drift.culprit or self.state["last_writer"] or "unknown writer"

    def note(self, topic: str, text: str) -> None:
        """A condition the operator should see in status until it clears (one note per topic)."""
        if self._notes.get(topic) != text:
            log.warning("%s", text)
            self._notes[topic] = text
            self.state["notes"] = list(self._notes.values())

    def clear_note(self, topic: str) -> None:
        if self._notes.pop(topic, None) is not None:
            self.state["notes"] = list(self._notes.values())

    def has_note(self, topic: str) -> bool:
        return topic in self._notes

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
            self.ports.forget()
            self._flavours = {}
        self._live = None  # what failed may have left the kernel other than we last read it
