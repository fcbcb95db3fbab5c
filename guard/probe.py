"""Reads the live ruleset once: the foreign base chains on our hook, and where ours must go.

Priorities on one hook are shared by the ip, ip6 and inet families (inet chains are
registered on both), and iptables-nft's tables are ordinary nft tables, so
``list chains`` shows every competitor. iptables-legacy tables are not nft objects;
their fixed priorities are read from /proc/net/ip{,6}_tables_names.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .backend.nft import Nft, objects
from .model.plans import Priorities
from .model.ruleset import TABLE
from .placement import PLACEMENTS

HOOKS = ("prerouting", "input")  # where nodeguard's base chains hook (placement.py)
# iptables-legacy tables per hook, with their fixed priorities
_LEGACY = {"prerouting": {"raw": -300, "mangle": -150, "nat": -100},
           "input": {"mangle": -150, "filter": 0, "security": 50, "nat": 100}}
_PRIORITY_FAMILIES = ("ip", "ip6", "inet")


@dataclass(frozen=True)
class ForeignChain:
    family: str
    table: str
    chain: str
    hook: str
    priority: int

    def __str__(self) -> str:
        return f"{self.family} {self.table} {self.chain} (priority {self.priority})"


def foreign_base_chains(nft: Nft, table: str = TABLE) -> list[ForeignChain]:
    """Every foreign base chain on the hooks nodeguard uses, lowest priority first."""
    out = [
        ForeignChain(c["family"], c["table"], c["name"], c["hook"], int(c["prio"]))
        for c in objects(nft.list("chains"), "chain")
        if c.get("hook") in HOOKS and c["family"] in _PRIORITY_FAMILIES
        and not (c["family"] == "inet" and c["table"] == table)
    ]
    out += legacy_chains()
    return sorted(out, key=lambda c: (c.priority, c.family, c.table, c.chain))


def legacy_tables(version: int, proc: Path = Path("/proc/net")) -> set[str]:
    """The iptables-legacy tables of one IP version (none without the legacy modules)."""
    try:
        return set((proc / ("ip_tables_names" if version == 4 else "ip6_tables_names")).read_text().split())
    except OSError:
        return set()


def legacy_chains(proc: Path = Path("/proc/net")) -> list[ForeignChain]:
    out = []
    for family, fname in (("ip", "ip_tables_names"), ("ip6", "ip6_tables_names")):
        try:
            tables = (proc / fname).read_text().split()
        except OSError:
            continue
        for hook, prios in _LEGACY.items():
            out += [ForeignChain(f"{family} (legacy)", t, hook.upper(), hook, prios[t]) for t in tables if t in prios]
    return out


def ipvs_loaded() -> bool:
    """Is IPVS in this kernel (kube-proxy's ipvs mode loads it)? Its input hook (99) runs after every
    iptables table, so the iptables backend cannot tell a Service's packet from one to a closed port."""
    return os.path.exists("/proc/net/ip_vs")


def choose_priorities(foreign: list[ForeignChain]) -> Priorities:
    """Each base chain strictly below every foreign chain that can see the same packets first,
    never below its floor (placement.py: defrag for the stateless chain, conntrack for the stateful
    one; chains before conntrack cannot see connection state and are not the stateful chain's rivals).
    """
    notes: list[str] = []
    chosen = {}
    for stage, p in PLACEMENTS.items():  # rivals: chains on the same hook
        rivals = [c for c in foreign if c.hook == p.nft_hook and (p.rivals_after is None or c.priority > p.rivals_after)]
        limit = "without running before defrag" if stage == "stateless" else "and still run after conntrack"
        chosen[stage] = _below(rivals, p.default_priority, p.floor, stage, limit, notes)
    return Priorities(notes=tuple(notes), **chosen)


def _below(rivals: list[ForeignChain], default: int, floor: int, which: str, limit: str, notes: list[str]) -> int:
    """``default``, or one below the lowest rival at or under it, but never under ``floor``."""
    if not rivals or rivals[0].priority > default:
        return default
    prio = max(rivals[0].priority - 1, floor)
    notes.append(f"{which} chain moved to {prio}, below {rivals[0]}")
    if prio >= rivals[0].priority:
        notes.append(f"cannot go below {rivals[0]} {limit}")
    return prio
