"""When the SYN valve engages (``syn.valve: auto``): only while conntrack fails new connections.

The valve (``syn.rate``, all sources together) is a lottery for a brand-new client: where the kernel
copes with a spoofed flood by itself (a full table whose early-drop clears room) it serves new clients
worse than no protection at all. It helps only where conntrack really refuses new connections: the
SNAT port wall of a masqueraded NodePort, or a full table early-drop cannot clear. The kernel counts
exactly those refusals, per CPU, in ``/proc/net/stat/nf_conntrack`` (``drop``, ``insert_failed``;
``early_drop`` is the kernel coping, not failing). docs/design/syn-valve.md has the measurements.

Pure: the daemon's part (daemon/valve_part.py) reads the file and the backstop's counters and does
what ``Valve.step`` says, through the backend. Engaged means a timed set element the kernel removes
``hold_s`` after the last refresh, so a daemon that dies leaves the valve to lapse by itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

STAT_PATH = Path("/proc/net/stat/nf_conntrack")  # the reader's own network namespace
FAILURES = ("drop", "insert_failed")  # conntrack refused a new connection (not early_drop: that copes)
_HEX = re.compile(r"[0-9a-fA-F]{1,16}")


def parse_ct_stat(text: str) -> dict[str, int]:
    """Each column summed over every CPU's line. The first line names the columns; the values are hex.
    Anything else (a missing column, a short line, a non-hex value) raises ValueError: the caller
    stops engaging rather than act on a reading it does not understand."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) < 2:
        raise ValueError("no per-CPU line")
    keys = lines[0].split()
    if len(set(keys)) != len(keys) or not set(FAILURES) <= set(keys):
        raise ValueError(f"unexpected columns: {lines[0][:200]!r}")
    totals = dict.fromkeys(keys, 0)
    for n, line in enumerate(lines[1:], 2):
        values = line.split()
        if len(values) != len(keys) or not all(_HEX.fullmatch(v) for v in values):
            raise ValueError(f"line {n}: {line[:200]!r}")
        for k, v in zip(keys, values):
            totals[k] += int(v, 16)
    return totals


def failures(stat: dict[str, int]) -> int:
    """New connections conntrack refused so far (all CPUs)."""
    return sum(stat[k] for k in FAILURES)


ENGAGE, REFRESH, LAPSE = "engage", "refresh", "lapse"


@dataclass
class Valve:
    """The decision, one reading at a time (every half second). Engages when conntrack's failures
    rose by ``engage_failures`` since the last reading; while engaged, refreshes its hold whenever they
    rise again or the valve's own backstop dropped more SYNs (the flood goes on: without the valve,
    conntrack would fail again); otherwise lets it lapse ``hold_s`` after the last refresh, as the
    kernel's timeout does."""

    hold_s: float
    engage_failures: int
    engaged_until: float | None = None  # when the kernel's element expires, as we set it
    engagements: int = 0
    seen: int | None = None  # conntrack's failures at the last reading
    _backstop: int | None = None

    @property
    def engaged(self) -> bool:
        return self.engaged_until is not None

    def step(self, now: float, failures: int, backstop: int | None = None) -> str | None:
        """One reading (``backstop``: packets the valve's rules dropped so far, None when not read);
        returns what to do: ENGAGE or REFRESH (add the element with ``hold_s``), LAPSE (only say so:
        the kernel removed it), or None."""
        # a drop of the total (counters reset: a new network namespace, a module reload) is no rise
        rose = self.seen is not None and failures - self.seen >= self.engage_failures
        self.seen = failures
        flood = backstop is not None and self._backstop is not None and backstop > self._backstop
        self._backstop = backstop
        if self.engaged_until is None:
            if not rose:
                return None
            self.engaged_until = now + self.hold_s
            self.engagements += 1
            return ENGAGE
        if rose or flood:
            self.engaged_until = now + self.hold_s
            return REFRESH
        if now >= self.engaged_until:
            self.engaged_until = None
            self._backstop = None
            return LAPSE
        return None
