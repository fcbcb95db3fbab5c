"""The odds at which each rule group's condemned packets are sampled: 1 in 2**k, k per group.

The kernel samples every condemned packet with the same probability (nft ``numgen random``, xt
``statistic --mode random``), so each source's share of the samples is its share of the packets;
token buckets alone sample uniformly in *time*, which skews per-source estimates whenever the
sources' rates vary (docs/design/sampling.md).
The sampler sets k at each window's end from the group's condemned rate, so that the samples stay
under half the group's cap (the buckets remain as a hard ceiling). k lives in a small file beside
the watcher's state. In the daemon the sampler only asks for new odds: the watcher installs them
(Watcher.set_odds), renders with the odds it holds and alone writes this file, which gives them back
after a restart. ``nodeguard sample`` alone writes the file and installs them itself.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from . import statefile
from .configfile import write_atomic
from .statefile import Invalid, is_int

MAX_EXPONENT = 24  # 1 in 16.7 M


def path_for(policy) -> Path:
    return Path(policy.watcher.state_file).parent / "sampling.json"


def _check(data) -> None:
    if not isinstance(data, dict) or not all(is_int(k, 1, MAX_EXPONENT) for k in data.values()):
        raise Invalid(f"not rule groups with exponents from 1 to {MAX_EXPONENT}")


def load(path: Path) -> dict[str, int]:
    """The saved odds; none (every condemned packet, under the caps) when the file is missing, bad
    (one warning), or someone other than root could have written it (statefile.load)."""
    return statefile.load(path, _check) or {}


def save(path: Path, exponents: dict[str, int]) -> None:
    """configfile.write_atomic: raises UnsafePathError or OSError."""
    write_atomic(path, json.dumps({g: k for g, k in sorted(exponents.items()) if k > 0}).encode())


def describe(exponents: dict[str, int]) -> str:
    """For the log: the odds per group that samples at random, else that every packet is sampled."""
    return (", ".join(f"{g} 1 in {2 ** k}" for g, k in sorted(exponents.items()) if k)
            or "every condemned packet (under the caps)")


def next_exponent(current: int, condemned_per_s: float, cap_per_s: float) -> int:
    """k for the next window: samples near half the cap; halve the odds at once when over it, and
    double them only when a quarter of the cap would still not be reached (no flapping)."""
    target = cap_per_s / 2
    if condemned_per_s <= 0:
        return 0
    wanted = max(0, min(MAX_EXPONENT, math.ceil(math.log2(max(condemned_per_s / target, 1e-9)))))
    if wanted > current:
        return wanted
    if condemned_per_s / 2 ** current < target / 4:
        return wanted
    return current
