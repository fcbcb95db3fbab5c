"""The watcher's loop: when to check. Events (nftables netlink notifications), a cheap fingerprint
poll for iptables-legacy, the periodic full verification, a damped repair coming due, a retry.

A change of the ``ports: auto`` set (any local user opens listeners) is looked for only at the full
verification and installed as an update, never a repair (ports.py).

An insert war must cost next to nothing: a check triggered by an event re-reads only the IP
versions the event names (iptables), a burst of events (a rival's delete, then insert) is one
check, and while a repair is damped, events are not checked at all (the repair, when it is due,
checks first). Only the periodic verification reads everything, ipsets included.

The loop never dies of an error: each iteration catches what went wrong, logs one line, and tries
again with backoff, from the last policy the kernel accepted (watcher.py).
"""

from __future__ import annotations

import json
import logging
import os
import select
import time
from typing import Callable

from ..backend.legacy_fingerprint import legacy_fingerprint
from ..backend.nfnetlink import NFPROTO_INET
from ..backend.tools import OWN_PIDS
from ..configfile import write_atomic
from ..drift import Drift, Reason
from ..errors import NodeguardError
from ..events import Batch, NftEvents
from ..model.ruleset import TABLE
from .scope import _union

log = logging.getLogger("nodeguard.watch")
# A burst of events ends after this much quiet (bounded): a rival's delete and insert, each its own
# iptables process, commit 10-20 ms apart (measured with tests/helpers/competitor.py).
SETTLE_QUIET_S, SETTLE_MAX_S = 0.025, 0.1


class WatchLoop:
    """The loop of ``Watcher`` (watcher.py), whose checks and repairs it calls."""

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
                        if full:  # ``ports: auto``: at most once per verification (watch/ports.py)
                            self.refresh_ports(detected)
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
        if batch.overrun or (not ours_only and (NFPROTO_INET, TABLE) in batch.set_tables):
            self._sets_touched = True  # its deny sets are probed again (a flush of one leaves its definition)
        # another process added or deleted elements of a set of ours: a deny set so touched is refilled,
        # whatever the change (a probe looks up a few prefixes only); a lost event leaves it to the probe
        self._deny_written.update({name: f"{pname} (pid {pid})" for pid, pname, sets in batch.element_writes
                                   if pid != os.getpid() and pid not in OWN_PIDS
                                   for family, table, name in sets if (family, table) == (NFPROTO_INET, TABLE)})
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
            write_atomic(self.state_file, json.dumps(data).encode())  # never blocks, never through a planted name
            self._write_problem = None
        except (OSError, NodeguardError) as exc:
            if str(exc) != self._write_problem:  # once, not on every change of state
                log.warning("cannot publish the state (status shows none): %s", exc)
            self._write_problem = str(exc)


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
