"""Updates of the watcher's own desired state, installed in place: new sampling odds (the sampler
asks) and a new ``ports: auto`` set (the listeners changed). Never a repair and never damped: one
state-keeping transaction each, then our rules' bodies recorded. A part of ``Watcher`` (watcher.py),
whose plan, kernel handle and records they use, as ``WatchLoop`` (loop.py) is.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Callable, TypeVar

from .. import sampling_odds
from ..apply import Plan, install_in_place
from ..errors import NodeguardError
from .ports import Ports
from .scope import _union

log = logging.getLogger("nodeguard.watch")
T = TypeVar("T")


class DesiredUpdates:
    """The in-place updates of ``Watcher`` (watcher.py)."""

    def set_odds(self, wanted: dict[str, int]) -> Plan | None:
        """New sampling odds (the daemon's sampler asks for them; called in this thread): one
        state-keeping transaction that rewrites only the sample chains whose odds changed, then our
        rules' bodies recorded, then the odds file. Not a repair, and never damped. Returns the new
        plan, or None when nothing was changed."""
        wanted = {g: k for g, k in wanted.items() if k}
        if wanted == self.odds:
            return None
        plan = self._install_update(self._hold_odds, self.odds, wanted, "change the sampling odds", samples=True,
                                    refusal="the policy in place samples nothing, or its backend is not installed yet")
        if plan is None:
            return None
        try:
            sampling_odds.save(sampling_odds.path_for(self.policy), wanted)
        except (OSError, NodeguardError) as exc:  # the kernel has them: a restart renders the file's, in place (start)
            log.warning("cannot save the sampling odds: %s", exc)
        log.info("sampling odds now %s", sampling_odds.describe(wanted))
        return plan

    def refresh_ports(self, now: float) -> Plan | None:
        """``ports: auto``: read the listeners again when due (ports.py); a new set is installed as an
        update of our own desired state: the set's elements added and deleted in one state-keeping
        transaction, counted in ``port_updates``, never a repair, never damped. Only from a state in
        sync: drift is repaired (and counted) by ``handle`` first. Returns the new plan, or None."""
        if self._pending is not None or not self.state.get("in_sync") or not self.ports.due(self.policy, now):
            return None
        cpu = _cpu()
        try:
            return self._update_ports()
        finally:
            self.ports.looked(now, _cpu() - cpu)

    def _update_ports(self) -> Plan | None:
        found = self.ports.redetect(self.policy)
        if found is None:
            return None
        kept = self.ports.ports
        plan = self._install_update(self.ports.hold, kept, found, "update the SYNPROXY ports", samples=False,
                                    refusal="the policy in place is not installed yet")
        if plan is None:
            return None
        self.state["port_updates"] += 1
        log.info("SYNPROXY ports (auto) now %s", _ports_change(kept, found))
        return plan

    def _hold_odds(self, odds: dict[str, int]) -> None:
        self.odds = odds

    def _install_update(self, hold: Callable[[T], None], old: T, new: T, what: str, *, samples: bool,
                        refusal: str) -> Plan | None:
        """``hold`` ``new`` (every render uses what is held) and install it in place: one state-keeping
        transaction, then our rules' bodies recorded. When the policy in place is not installed yet (a
        reload's check will install all), or does not sample though ``samples`` needs it, or anything
        fails: ``old`` is held again, the kernel looked at again on the next turn, and None returned."""
        hold(new)
        try:
            plan = self.plan()
            if plan.backend.installed != self._backend or samples and plan.sampling is None:
                raise NodeguardError(refusal)
            install_in_place(plan, self.nft, recorded=self.fingerprints)
        except NodeguardError as exc:
            hold(old)
            self._live = None  # a restore may have failed half-way (iptables: per family): look again
            self._recheck = True
            log.warning("could not %s (%s); keeping them", what, exc)
            return None
        self._installed(plan)
        return plan

    def _installed(self, plan: Plan) -> None:
        """After a transaction of our own desired state: record our rules' bodies as the kernel lists them."""
        after = self._record(plan)
        if after is not None:  # struck already: check (and repair, or damp) on the next turn
            self._recheck = True
            self._dirty = _union(self._dirty, after.families or None)
        self.last_plan = plan


def _ports_change(old: Ports | None, new: Ports) -> str:
    """One line: the new counts and what changed per family (a flap of 7,500 ports is no 7,500 numbers)."""
    parts = []
    for v in (4, 6):
        was, now = set((old or {}).get(v, ())), set(new[v])
        parts.append(f"v{v} {len(now)} (+{len(now - was)} -{len(was - now)})")
    return ", ".join(parts)


def _cpu() -> float:
    """This thread's CPU time plus that of the tools waited for (the nat tables' ``*-save``,
    iptables-restore): a look's cost includes the processes it ran."""
    t = os.times()
    return time.thread_time() + t.children_user + t.children_system
