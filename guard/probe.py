"""Reads the live ruleset once: the foreign base chains on our hook, and where ours must go.

Priorities on one hook are shared by the ip, ip6 and inet families (inet chains are
registered on both), and iptables-nft's tables are ordinary nft tables, so
``list chains`` shows every competitor. iptables-legacy tables are not nft objects;
their fixed priorities are read from /proc/net/ip{,6}_tables_names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .backend.nft import Nft, objects
from .model import TABLE, Priorities

HOOK = "prerouting"
DEFRAG = -400  # NF_IP_PRI_CONNTRACK_DEFRAG: nothing may run before reassembly
CONNTRACK = -200  # NF_IP_PRI_CONNTRACK
STATELESS_DEFAULT = -350  # after defrag, before raw (-300) and conntrack: floods create no state
STATEFUL_DEFAULT = -190  # just after conntrack (ct count needs it), before mangle (-150), kube-proxy (-110)
# iptables-legacy tables hooked on prerouting, with their fixed priorities
_LEGACY_PREROUTING = {"raw": -300, "mangle": -150, "nat": -100}
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


def foreign_base_chains(nft: Nft, hook: str = HOOK, table: str = TABLE) -> list[ForeignChain]:
    out = [
        ForeignChain(c["family"], c["table"], c["name"], c["hook"], int(c["prio"]))
        for c in objects(nft.list("chains"), "chain")
        if c.get("hook") == hook and c["family"] in _PRIORITY_FAMILIES
        and not (c["family"] == "inet" and c["table"] == table)
    ]
    out += legacy_chains(hook)
    return sorted(out, key=lambda c: (c.priority, c.family, c.table, c.chain))


def legacy_chains(hook: str = HOOK, proc: Path = Path("/proc/net")) -> list[ForeignChain]:
    if hook != HOOK:
        return []
    out = []
    for family, fname in (("ip", "ip_tables_names"), ("ip6", "ip6_tables_names")):
        try:
            tables = (proc / fname).read_text().split()
        except OSError:
            continue
        out += [ForeignChain(f"{family} (legacy)", t, "PREROUTING", hook, _LEGACY_PREROUTING[t])
                for t in tables if t in _LEGACY_PREROUTING]
    return out


def choose_priorities(foreign: list[ForeignChain]) -> Priorities:
    """Strictly below every foreign chain that can see the same packets first.

    Stateless: below all foreign prerouting chains, but never before defrag.
    Stateful: after conntrack and below every foreign chain that runs after it;
    chains before conntrack (raw) cannot see connection state and are not its rivals.
    """
    notes: list[str] = []
    stateless = _below(foreign, STATELESS_DEFAULT, DEFRAG + 1, "stateless", "without running before defrag", notes)
    after_ct = [c for c in foreign if c.priority > CONNTRACK]
    stateful = _below(after_ct, STATEFUL_DEFAULT, CONNTRACK + 1, "stateful", "and still run after conntrack", notes)
    return Priorities(stateless, stateful, tuple(notes))


def _below(rivals: list[ForeignChain], default: int, floor: int, which: str, limit: str, notes: list[str]) -> int:
    """``default``, or one below the lowest rival at or under it, but never under ``floor``."""
    if not rivals or rivals[0].priority > default:
        return default
    prio = max(rivals[0].priority - 1, floor)
    notes.append(f"{which} chain moved to {prio}, below {rivals[0]}")
    if prio >= rivals[0].priority:
        notes.append(f"cannot go below {rivals[0]} {limit}")
    return prio
