"""Synthetic attack logs in the sampler's record format (aggregate.Window.records, Episodes.update).

A random-source SYN flood seen by a sampler that keeps ``per_window`` flows per window (its
``max_flows``): ``sources`` distinct random addresses, one flow each, plus a few real culprits that
send in every window (two loners and a 5-address botnet in one /24). Used by tests/test_report.py and
bench/report.py; deterministic for a given seed.
"""

from __future__ import annotations

import random
from typing import Iterator

WINDOW_S = 10.0
CULPRITS = ("192.0.2.66", "192.0.2.77", *(f"198.51.100.{i}" for i in range(10, 15)))


def _flow(start: float, src: str, estimated: int, dport: int) -> dict:
    return {"type": "flow", "start": start, "end": start + WINDOW_S, "rule": "syn-flood", "mode": "enforce",
            "src": src, "dst": "10.66.0.1", "proto": "tcp", "dport": dport, "iface": "eth0", "sampled": 1,
            "estimated": estimated, "first": start + 1.0, "last": start + 9.0, "tcp_flags": {"S": 1},
            "size": [40, 40], "ttl": [64, 64]}


def random_sources(n: int, seed: int = 19) -> list[str]:
    """``n`` distinct addresses, one in eight IPv6."""
    rng = random.Random(seed)
    out: dict[str, None] = {}  # ordered: the same log in every process
    while len(out) < n:
        if rng.random() < 0.125:
            out[f"2001:db8:{rng.randrange(1 << 16):x}:{rng.randrange(1 << 16):x}::{rng.randrange(1, 1 << 16):x}"] = None
        else:
            out[f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"] = None
    return list(out)


def flood(sources: int, per_window: int = 10_000, start: float = 1_800_000_000.0, seed: int = 19) -> Iterator[dict]:
    """The records of one syn-flood episode whose windows carry ``per_window`` random sources each."""
    addresses = random_sources(sources, seed)
    windows = max(1, -(-sources // per_window))
    t, total = start, 0
    for w in range(windows):
        batch = addresses[w * per_window:(w + 1) * per_window]
        condemned = 50 * len(batch) + 9000 * len(CULPRITS)
        total += condemned
        yield {"type": "window", "start": t, "end": t + WINDOW_S, "condemned": {"syn-flood": condemned},
               "sampled": {"syn-flood": len(batch) + len(CULPRITS)}, "flows": len(batch) + len(CULPRITS),
               "malformed": 0, "one_in": {}}
        for i, src in enumerate(CULPRITS):
            yield _flow(t, src, 9000 - 100 * i, 443)
        for i, src in enumerate(batch):
            yield _flow(t, src, 40 + i % 20, 1024 + i % 50_000)
        yield {"type": "other", "start": t, "end": t + WINDOW_S, "rule": "syn-flood", "mode": "enforce",
               "sampled": 3, "estimated": 150, "samples_beyond_max_flows": 3}
        if w == 0:
            yield {"type": "episode_start", "rule": "syn-flood", "mode": "enforce", "ts": t}
        t += WINDOW_S
    yield {"type": "window", "start": t, "end": t + WINDOW_S, "condemned": {"syn-flood": 0}, "sampled": {},
           "flows": 0, "malformed": 0, "one_in": {}}
    yield {"type": "episode_end", "rule": "syn-flood", "mode": "enforce", "start": start, "end": t,
           "condemned": total, "peak_pps": round(condemned / WINDOW_S, 1)}


def restart(seed: int = 1) -> list[dict]:
    """A sampler that crashed in an episode (no episode_end), then another's whole episode, whose
    window without drops holds a late sample: that sample belongs to the first episode only."""
    first = [r for r in flood(300, per_window=100, seed=seed) if r["type"] != "episode_end"]
    second = list(flood(200, per_window=100, start=1_800_000_100.0, seed=seed + 1))
    calm = second[-2]
    late = dict(_flow(calm["start"], CULPRITS[0], 7, 443), first=calm["start"] + 1, last=calm["start"] + 2)
    return first + second[:-1] + [late, second[-1]]
