"""Rates as the operator writes them ('100/second burst 200'), and the ceilings both backends hold.

A Rate is a plain value: the rule model, the renderers and tune compute with it, none of them with
the validation around it (fields.py turns the text into one for pydantic).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_UNITS = {"second": 1, "minute": 60, "hour": 3600}
MAX_RATE_PER_S = 1_000_000  # xt_hashlimit's ceiling (XT_HASHLIMIT_SCALE_v2): every policy fits both backends
MAX_BURST = 1_000_000  # xt_hashlimit's burst ceiling
BURST_UNITS = 2  # a rate written without a burst may pass this many units' worth at once (absorbs normal jitter)
_RATE_RE = re.compile(r"[ ]*([0-9]+)[ ]*/[ ]*(second|minute|hour)[ ]*(?:burst[ ]+([0-9]+)[ ]*)?", re.ASCII)


@dataclass(frozen=True)
class Rate:
    """``count`` packets per ``unit``; ``burst`` packets may pass at once (None = backend default)."""

    count: int
    unit: str
    burst: int | None = None

    @property
    def per_s(self) -> float:
        return self.count / _UNITS[self.unit]

    def with_burst(self, burst: int | None) -> "Rate":
        return Rate(self.count, self.unit, burst if burst is not None else self.burst)

    def with_default_burst(self) -> "Rate":
        """This rate as the kernel gets it: its burst, or BURST_UNITS units' worth (at most MAX_BURST)."""
        return self if self.burst is not None else self.with_burst(max(1, min(MAX_BURST, self.count * BURST_UNITS)))

    def scaled(self, factor: int) -> "Rate":
        """``factor`` times the rate, no faster than MAX_RATE_PER_S."""
        return Rate(min(self.count * factor, MAX_RATE_PER_S * _UNITS[self.unit]), self.unit, None)

    def __str__(self) -> str:
        return f"{self.count}/{self.unit}" + (f" burst {self.burst}" if self.burst is not None else "")


def parse_rate(value: Any) -> Rate:
    if isinstance(value, Rate):
        return value
    m = _RATE_RE.fullmatch(value) if isinstance(value, str) else None
    if not m:
        raise ValueError(f"rate must look like 'N/second', 'N/minute' or 'N/hour' (optionally 'burst M'), got {value!r}")
    count, unit, burst = _number(m[1]), m[2], None if m[3] is None else _number(m[3])
    if count <= 0:
        raise ValueError("rate must be greater than zero")
    if burst is not None and burst <= 0:
        raise ValueError("burst must be greater than zero")
    if count > MAX_RATE_PER_S * _UNITS[unit]:  # integers: 400 digits over a unit is no float
        raise ValueError(f"rate must be at most {MAX_RATE_PER_S}/second (the iptables backend's ceiling)")
    if burst is not None and burst > MAX_BURST:
        raise ValueError(f"burst must be at most {MAX_BURST} (the iptables backend's ceiling)")
    return Rate(count, unit, burst)


_OVER_ANY = 10 ** 18  # above every ceiling here


def _number(digits: str) -> int:
    """The digits' integer; more than 18 digits (5,000 would take a conversion of their own): _OVER_ANY."""
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= 18 else _OVER_ANY
