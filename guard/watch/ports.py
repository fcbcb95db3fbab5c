"""``syn.synproxy.ports: auto`` in the watcher: the port set it holds, and when to look again.

Any local user can open and close listeners, so a change of the detected set is an update of our
own desired state, never tampering: every check renders with the set held here (a check never
re-reads the listeners or the nat rules, guard/dnat_ports.py), and the watcher installs a new set as an update (updates.refresh_ports),
which is neither counted as a repair nor damped nor "contested". Re-detection is bounded: at the
periodic full verification (``watcher.verify_interval_s``, 10 s by default), never more often than
REDETECT_MIN_S, and never sooner than the last look's CPU time over BUSY_SHARE: a user flapping
7,500 listeners makes each look cost ~1 s (the rescan, and libnftables taking 12,000 element
changes), and at a 1 s verification interval that was 85 % of a core; now at most about 10 %.
"""

from __future__ import annotations

from ..apply import detect_ports
from ..policy.schema import Policy

REDETECT_MIN_S = 1.0  # the listeners are read again at most this often (and only at full verifications)
BUSY_SHARE = 0.1  # of a core, at most, that looking again (and updating) may take

Ports = dict[int, list[int]]  # {4: ports, 6: ports}


class HeldPorts:
    def __init__(self) -> None:
        self.ports: Ports | None = None
        self.interfaces: tuple[str, ...] | None = None  # what ``ports`` was detected for
        self.next_at = float("-inf")  # the earliest next look

    def held(self, policy: Policy, interfaces: tuple[str, ...]) -> Ports | None:
        """The set to render (None: not ``auto``). Detected now only at the first use and when the
        protected interfaces changed (the set depends on them)."""
        if policy.syn.synproxy.ports != "auto":
            return None
        if self.ports is None or self.interfaces != interfaces:
            self.ports, self.interfaces = detect_ports(policy, interfaces), interfaces
        return self.ports

    def due(self, policy: Policy, now: float) -> bool:
        """Asked at each full verification (every ``watcher.verify_interval_s``): the floor holds a
        shorter interval, or a burst of full checks (reloads, retries), to REDETECT_MIN_S."""
        return policy.syn.synproxy.ports == "auto" and self.ports is not None and now >= self.next_at

    def looked(self, now: float, cpu_s: float) -> None:
        """A look (and its update, if any) took ``cpu_s`` of CPU: the next waits for the bound."""
        self.next_at = now + max(REDETECT_MIN_S, cpu_s / BUSY_SHARE)

    def redetect(self, policy: Policy) -> Ports | None:
        """Read the listeners again; the new set when it differs from the one held (not yet held)."""
        found = detect_ports(policy, self.interfaces)
        return found if found != self.ports else None

    def hold(self, ports: Ports | None) -> None:
        """Render with ``ports`` from now on (an update installed, or undone)."""
        self.ports = ports

    def forget(self) -> None:
        """A new policy: detect afresh at its first render."""
        self.ports = self.interfaces = None
