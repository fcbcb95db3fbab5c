"""The decisions the node holds, from the stream's ``new`` and ``deleted``, and what the kernel's sets
should hold of them: per set, prefix -> (expires at, comment). One prefix can carry several decisions
(scenarios): it stays while any does, until the latest expiry. Ranges that nest keep the outermost (an
interval set refuses overlaps): a range inside a wider one that ends first is added back at the next
pull after the wider one left. A set takes at most ``crowdsec.size`` elements (nft refuses the whole
transaction past it): beyond that, the prefixes that end last are kept and the others left out, counted,
until room frees up."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from ..policy.sources import outermost
from .decisions import Decision

Want = dict[tuple[int, str], dict[str, tuple[float, str]]]  # (IP version, "address" | "range") -> ...
_UNSAFE = re.compile(r"[^A-Za-z0-9 _./:@'-]")
MAX_COMMENT = 100  # an nft element comment holds at most 128 bytes
_MARK = "crowdsec "


def comment(d: Decision) -> str:
    """What ``bans`` shows: the scenario, in the few characters that need no escaping in nft's syntax
    (it is the Local API's text: anything else becomes ``_``)."""
    return _UNSAFE.sub("_", f"{_MARK}{d.scenario}")[:MAX_COMMENT]


def scenario(text: str) -> str:
    """The scenario of an element's comment as the kernel holds it: what ``comment`` wrote, less its
    mark; any other text (someone else's element) as it is, for the caller to escape."""
    return text.removeprefix(_MARK)


@dataclass
class Held:
    decisions: dict[int, tuple[Decision, float]] = field(default_factory=dict)  # id -> (decision, expires at)

    def pulled(self, new: list[Decision], deleted: list[int], now: float, startup: bool) -> None:
        """A pull's answer at ``now`` (the clock of ``want``); ``startup``: the whole list, replacing ours."""
        if startup:
            self.decisions.clear()
        for i in deleted:
            self.decisions.pop(i, None)
        for d in new:
            self.decisions[d.id] = (d, now + d.left_s)
        for i in [i for i, (_d, until) in self.decisions.items() if until <= now]:
            del self.decisions[i]

    def holds(self, net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
        """Does a decision held cover ``net`` (its address, or a range around it)?"""
        one = str(net.network_address) if net.prefixlen == net.max_prefixlen else None
        return any(d.version == net.version and (d.net == one or d.scope == "Range" and
                                                 net.subnet_of(ipaddress.ip_network(d.net)))
                   for d, _until in self.decisions.values())

    def counts(self) -> dict[int, int]:
        """IP version -> decisions held."""
        out = {4: 0, 6: 0}
        for d, _until in self.decisions.values():
            out[d.version] += 1
        return out

    def want(self, size: int) -> tuple[Want, int]:
        """(what each set should hold, at most ``size`` prefixes, prefixes left out for want of room)."""
        out: Want = {(v, r): {} for v in (4, 6) for r in ("address", "range")}
        for d, until in self.decisions.values():
            s = out[(d.version, "address" if d.scope == "Ip" else "range")]
            if d.net not in s or s[d.net][0] < until:
                s[d.net] = (until, comment(d))
        for v in (4, 6):
            ranges = out[(v, "range")]
            out[(v, "range")] = {str(n): ranges[str(n)] for n in outermost([ipaddress.ip_network(r) for r in ranges], v)}
        left_out = 0
        for key, s in out.items():
            if len(s) > size:
                left_out += len(s) - size
                out[key] = dict(sorted(s.items(), key=lambda kv: (-kv[1][0], kv[0]))[:size])
        return out, left_out
