"""Banned sources (escalation, model.banning.escalation): read them, remove them, and say why they were banned.

The kernel decides and bans; this module only reads the ``banned-*`` sets and, for ``nodeguard
unban``, deletes elements from them (and from ``over-*``/``episode-*``, so an unbanned source that
is still flooding starts a new episode instead of being banned again by its very next drop). IPv6
sources are their /64, as the kernel keys them. Reasons come from the attack log: the sampler writes
a ``ban`` record when a source appears in a ban set (with the rule groups whose per-source counts held
it) and an ``unban`` record when it leaves.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import NodeguardError
from .model.banning import BANNED
from .model.ruleset import V6_SOURCE_PREFIX, AddrSet

if TYPE_CHECKING:
    from .backend.nft import Nft


class BadAddress(NodeguardError):
    exit_code = 2


@dataclass(frozen=True)
class Ban:
    source: str  # as the kernel keys it: an IPv4 address, or an IPv6 /64's network address
    version: int
    expires_s: int | None  # seconds left, as the kernel says

    @property
    def shown(self) -> str:
        return self.source if self.version == 4 else f"{self.source}/{V6_SOURCE_PREFIX}"


def escalation_sets(plan) -> dict[tuple[str, int], AddrSet]:
    """("banned" | "over" | "episode", IP version) -> the set; empty when nothing escalates."""
    return {(s.role, s.version): s for s in plan.ruleset.sets if s.kind == "escalation"}


def key_of(text: str) -> tuple[str, int]:
    """An address as the ban sets key it: IPv4 as is, IPv6 its /64 (``fd00::5``, ``fd00::/64`` or
    ``fd00::5/64``). Anything else is one line and exit 2."""
    try:
        net = ipaddress.ip_network(text.strip(), strict=False) if "%" not in text else None
    except ValueError:
        net = None
    if net is not None and net.version == 6 and net.prefixlen == 128 and net.network_address.ipv4_mapped:
        net = ipaddress.ip_network(f"{net.network_address.ipv4_mapped}/32")  # ::ffff:a.b.c.d is a.b.c.d
    if (net is None or net.prefixlen not in ((32,) if net.version == 4 else (V6_SOURCE_PREFIX, 128))
            or net.network_address.is_unspecified):
        raise BadAddress(f"{text!r} is not an address (IPv4, or IPv6 whose /64 is what gets banned)")
    if net.version == 6:
        net = ipaddress.ip_network(f"{net.network_address}/{V6_SOURCE_PREFIX}", strict=False)
    return str(net.network_address), net.version


def kernel_names(plan, nft: Nft) -> dict[tuple[str, int], str]:
    """("banned" | "over" | "episode", IP version) -> the name of that set *as installed*. An nft set's
    name carries a digest of its definition: a policy file edited but not applied, or a daemon running
    its last good policy, names other sets than the ones holding the bans. Sets not installed are left out."""
    return plan.backend.installed_sets(nft, escalation_sets(plan))


def banned(plan, nft: Nft) -> list[Ban]:
    """Every banned source with the seconds its ban has left."""
    out: list[Ban] = []
    for (what, version), name in sorted(kernel_names(plan, nft).items(), key=lambda kv: kv[0][1]):
        if what != "banned":
            continue
        out += [Ban(source, version, left) for source, left in plan.backend.timeouts(nft, name)]
    return out


def unban(plan, nft: Nft, keys: Iterable[tuple[str, int]] | None) -> list[str]:
    """Remove ``keys`` (from key_of) from the ban sets and from over/episode; None: every source.
    Returns the sources that were banned and are not now."""
    names = kernel_names(plan, nft)
    if not names:
        return []
    before = banned(plan, nft)
    if keys is None:
        targets = None
        gone = [b.shown for b in before]
    else:
        targets = list(keys)
        gone = [b.shown for b in before if (b.source, b.version) in set(targets)]
    plan.backend.delete_elements(nft, names, targets)
    return gone


# --- reasons, from the attack log --------------------------------------------------------------
def reasons(records: Iterable[dict]) -> dict[str, dict]:
    """source (as shown: IPv6 as /64) -> its latest ``ban`` record."""
    out: dict[str, dict] = {}
    for rec in records:
        if rec.get("type") == "ban" and isinstance(rec.get("src"), str) and (
                rec["src"] not in out or rec.get("ts", 0) >= out[rec["src"]].get("ts", 0)):
            out[rec["src"]] = rec
    return out


def describe(rec: dict | None) -> str:
    if rec is None:
        return "not in the attack log (the sampler logs bans once per window; is it running?)"
    groups = [g for g in rec.get("groups") or [] if isinstance(g, str)]
    what = f"over the per-source limit of {', '.join(groups)}" if groups else "over a per-source limit"
    return f"{what} without a pause for {rec.get('after_s', '?')} s (banned at {_t(rec.get('ts'))})"


def _t(ts) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts)) if isinstance(ts, (int, float)) else "?"


def ban_records(before: Iterable[Ban], now: Iterable[Ban], exact: dict, ts: float,
                elapsed: float, after_s: int) -> list[dict]:
    """The sampler's ``ban``/``unban`` records for one window: sources (as shown) that entered or left
    the ban sets since the last look ``elapsed`` seconds ago (``banned``'s Bans, with the seconds each
    had left), each ban with the groups whose per-source counts (``exact``: (group, mode) -> {source
    key: packets}) held that source. A source that left with no more time left than had elapsed expired;
    else it was removed (``nodeguard unban``, or a changed ban set definition). ``dropped_as``: the rule group whose
    counters hold the drops of banned sources (no per-source counts, no samples), so that the report
    can name the banned source behind that group's episodes."""
    out = []
    before_by, now_by = {b.shown: b for b in before}, {b.shown: b for b in now}
    for src in sorted(set(now_by) - set(before_by)):
        key, left = now_by[src].source, now_by[src].expires_s
        groups = sorted(g for (g, mode), counts in exact.items() if mode == "enforce" and key in counts)
        out.append({"type": "ban", "ts": ts, "src": src, "groups": groups, "after_s": after_s,
                    "expires": ts + left if isinstance(left, (int, float)) else None, "dropped_as": BANNED})
    for src in sorted(set(before_by) - set(now_by)):
        left = before_by[src].expires_s
        expired = isinstance(left, (int, float)) and left <= elapsed + 1
        out.append({"type": "unban", "ts": ts, "src": src, "why": "expired" if expired else "removed"})
    return out
