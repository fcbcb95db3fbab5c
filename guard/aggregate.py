"""Per-flow aggregation of sampled packets over windows, with bounded memory, and attack episodes.

A flow is (rule group, source, destination, protocol, destination port, input interface).
At most ``max_flows`` flows are kept per window; samples of further flows are counted in one
"other" bucket per rule, so a spoofed flood with millions of sources cannot grow memory.
Totals are estimated from the kernel's own counters of condemned packets: a flow's share of
its group's samples times the group's condemned packets in the window.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache

from .packet import Packet

_SAFE = set("abcdefghijklmnopqrstuvwxyz0123456789-_.:")


@lru_cache(maxsize=4096)
def safe(text: str, limit: int = 64) -> str:
    """Packet- or kernel-derived text made harmless for logs and terminals (cached: few distinct values)."""
    return "".join(c if c.lower() in _SAFE else "?" for c in text[:limit])


@dataclass
class Flow:
    sampled: int = 0
    first: float = 0.0
    last: float = 0.0
    flags: Counter = field(default_factory=Counter)
    size: list = field(default_factory=lambda: [None, None])
    ttl: list = field(default_factory=lambda: [None, None])

    def add(self, pkt: Packet, ts: float) -> None:
        if not self.sampled:
            self.first = ts
        self.sampled += 1
        self.last = ts
        if pkt.tcp_flags and len(self.flags) < 16:
            self.flags[pkt.tcp_flags] += 1
        for rng, v in ((self.size, pkt.length), (self.ttl, pkt.ttl)):
            if v is not None:
                rng[0] = v if rng[0] is None else min(rng[0], v)
                rng[1] = v if rng[1] is None else max(rng[1], v)


class Window:
    def __init__(self, start: float, max_flows: int, one_in: dict[str, int] | None = None):
        self.start = start
        self.max_flows = max_flows
        self.one_in = {g: n for g, n in (one_in or {}).items() if n > 1}  # sampling odds from the start on
        self.flows: dict[tuple, Flow] = {}
        self.other: dict[str, Flow] = {}
        self.other_keys: Counter = Counter()  # flows not kept, per rule (an estimate of distinct flows)
        self.sampled: Counter = Counter()
        self.malformed = 0

    def add(self, group: str, pkt: Packet, iface: str, ts: float, mode: str = "enforce") -> None:
        group = (safe(group) or "unknown", "monitor" if mode == "monitor" else "enforce")
        self.sampled[group] += 1
        if pkt.note:
            self.malformed += 1
        key = (group, pkt.src, pkt.dst, pkt.proto, pkt.dport, safe(iface, 16))
        flow = self.flows.get(key)
        if flow is None:
            if len(self.flows) >= self.max_flows:
                self.other_keys[group] += 1
                self.other.setdefault(group, Flow()).add(pkt, ts)
                return
            flow = self.flows[key] = Flow()
        flow.add(pkt, ts)

    def records(self, end: float, condemned: dict[tuple[str, str], int],
                exact: dict[tuple[str, str], dict[str, int]] | None = None) -> list[dict]:
        """JSON-ready records for this window; ``condemned`` = kernel counts per (group, mode) in it.
        Counts and samples keyed "<group>" are drops; "<group>/monitor" would-be drops.

        ``exact``: per (group, mode), the kernel's own count per source (IPv6: per /64) for the
        sources it counts. Those sources get their exact count (split over their flows by samples);
        the rest share what remains of the group's count by their share of the remaining samples."""
        exact = exact or {}
        by_source: Counter = Counter()  # samples per (group, mode, source key)
        for (group, src, *_rest), f in self.flows.items():
            by_source[(group, source_key(src))] += f.sampled
        rest_samples: Counter = Counter()
        for (group, src, *_rest), f in self.flows.items():
            if source_key(src) not in exact.get(group, {}):
                rest_samples[group] += f.sampled
        for group, f in self.other.items():
            rest_samples[group] += f.sampled

        def estimate(group: tuple[str, str], src: str | None, sampled: int) -> int:
            counted = exact.get(group, {})
            if src is not None and source_key(src) in counted:
                return round(counted[source_key(src)] * sampled / by_source[(group, source_key(src))])
            remainder = max(0, condemned.get(group, 0) - sum(counted.values()))
            return round(sampled / rest_samples[group] * remainder) if rest_samples[group] else 0

        out = [{"type": "window", "start": self.start, "end": end, "condemned": _by_key(condemned),
                "sampled": _by_key(self.sampled), "flows": len(self.flows), "malformed": self.malformed,
                "one_in": self.one_in}]
        for ((group, mode), src, dst, proto, dport, iface), f in sorted(self.flows.items(),
                                                                       key=lambda kv: -kv[1].sampled):
            out.append({"type": "flow", "start": self.start, "end": end, "rule": group, "mode": mode, "src": src,
                        "dst": dst, "proto": proto, "dport": dport, "iface": iface, "sampled": f.sampled,
                        "estimated": estimate((group, mode), src, f.sampled), "first": f.first, "last": f.last,
                        "tcp_flags": dict(f.flags), "size": f.size, "ttl": f.ttl})
        for (group, mode), counted in exact.items():  # counted by the kernel, but not in this window's sample
            for key, n in counted.items():
                if n and not by_source[((group, mode), key)]:
                    out.append({"type": "flow", "start": self.start, "end": end, "rule": group, "mode": mode,
                                "src": safe(key), "dst": None, "proto": None, "dport": None, "iface": None,
                                "sampled": 0, "estimated": n, "first": self.start, "last": end, "tcp_flags": {},
                                "size": [None, None], "ttl": [None, None]})
        for (group, mode), f in self.other.items():
            out.append({"type": "other", "start": self.start, "end": end, "rule": group, "mode": mode,
                        "sampled": f.sampled, "estimated": estimate((group, mode), None, f.sampled),
                        "samples_beyond_max_flows": self.other_keys[(group, mode)]})
        return out


@lru_cache(maxsize=65536)
def source_key(src: str) -> str:
    """How the kernel counts a source: an IPv4 address, or an IPv6 address's /64."""
    if ":" not in src:
        return src
    try:
        return str(ipaddress.ip_network(f"{src}/64", strict=False).network_address)
    except ValueError:
        return src


def _by_key(counts: dict[tuple[str, str], int]) -> dict[str, int]:
    return {(g if m == "enforce" else f"{g}/monitor"): n for (g, m), n in counts.items()}


class Episodes:
    """Per rule group: an attack starts with the first window with drops, ends with the first without."""

    def __init__(self) -> None:
        self.active: dict[str, dict] = {}

    def update(self, start: float, end: float, condemned: dict[tuple[str, str], int]) -> list[dict]:
        out = []
        span = max(end - start, 1e-6)
        for (group, mode), n in condemned.items():
            key = (group, mode)
            ep = self.active.get(key)
            if n > 0 and ep is None:
                ep = self.active[key] = {"rule": group, "mode": mode, "start": start, "condemned": 0, "peak_pps": 0.0}
                out.append({"type": "episode_start", "rule": group, "mode": mode, "ts": start})
            if n > 0:
                ep["condemned"] += n
                ep["peak_pps"] = max(ep["peak_pps"], round(n / span, 1))
                ep["last"] = end
            elif ep is not None:
                del self.active[key]
                out.append({"type": "episode_end", "rule": group, "mode": mode, "start": ep["start"], "end": ep["last"],
                            "condemned": ep["condemned"], "peak_pps": ep["peak_pps"]})
        return out
