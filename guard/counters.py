"""The kernel's counters of condemned packets per rule group and mode, meter fill, and the sampler's
per-source counts, read cheaply.

A rule condemns for a group when the model says so (``model.ruleset.Rule.group`` and ``.mode``): with
sampling it goes to ``sample-<group>`` (enforce) or ``monitor-<group>`` (monitor), without it drops
(enforce). Every condemned packet passes exactly one such rule, so the sum of those rules' counters
is the group's drops (enforce) or would-be drops (monitor).

The plan's backend reads them (backend/base.py):

* nft: one netlink dump of the table's rules (backend/nfnetlink.py); a live rule is matched to its
  model rule by the id in its comment.
* iptables: ``*-save -c`` per family; a live rule is matched by its id (render.ipt records which
  ids condemn; a per-source meter's admission line counts arrivals, not drops, and is not one).

Per-source counts: the sampler's ``counts`` sets are streamed (persource.py), never listed whole.

Meter fill: ``status.collect`` lists every element through libnftables JSON (~1.5 s for one
full 65536-entry meter). The nft backend dumps the elements over raw netlink and only counts
them (nfnetlink.nft_set_sizes); callers cache it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from .model.banning import BANS_REFUSED

if TYPE_CHECKING:
    from .apply import Live, Plan
    from .backend.nft import Nft

Key = tuple[str, str]  # (group, mode)


def condemning_ids(plan: Plan) -> dict[str, Key]:
    """rule id -> (group, mode), for every condemning rule of the plan."""
    return plan.backend.condemning_ids(plan.ruleset)


def bans_counted(plan: Plan, live: Live) -> int:
    """Sources banned since the rules were installed (or their counters reset), from ``live``."""
    return _packets(plan.backend.ban_ids(plan.ruleset), plan.backend.rule_counters(live))


def drops_and_refused(plan: Plan) -> tuple[dict[Key, dict[str, int]], int]:
    """``drops_by_group`` and the bans refused by a full ban set (packets of sources due a ban; each
    such packet tries again), from one read of the rule counters (a metrics scrape)."""
    rows = list(plan.backend.rule_counters())
    return _drops(plan, rows), _packets(plan.backend.tally_ids(plan.ruleset, BANS_REFUSED), rows)


def _packets(ids: set[str], rows: Iterable[tuple[str | None, int, int]]) -> int:
    return sum(packets for rid, packets, _bytes in rows if rid in ids)


def drops_by_group(plan: Plan, nft: Nft | None = None, live: Live | None = None) -> dict[Key, dict[str, int]]:
    """(group, mode) -> {"packets", "bytes"} condemned, from the kernel counters of the condemning
    rules (``live``: the state the caller already read; else one cheap read)."""
    return _drops(plan, plan.backend.rule_counters(live))


def _drops(plan: Plan, rows: Iterable[tuple[str | None, int, int]]) -> dict[Key, dict[str, int]]:
    ids = condemning_ids(plan)
    out = {key: {"packets": 0, "bytes": 0} for key in dict.fromkeys(ids.values())}
    for rid, packets, nbytes in rows:
        key = ids.get(rid)
        if key:
            out[key]["packets"] += packets
            out[key]["bytes"] += nbytes
    return out


def condemned_by_group(plan: Plan, nft: Nft | None = None) -> dict[Key, int]:
    """(group, mode) -> packets condemned (the sampler's estimates scale by these)."""
    return {k: c["packets"] for k, c in drops_by_group(plan, nft).items()}

def meter_fill(plan: Plan) -> list[dict]:
    """Every per-source set: [{"set", "kind", "kernel_name", "elements", "size"}], as status shows it,
    plus what the model says it is for: "version" and "role" (an escalation set's role, else its kind)."""
    sets = {s.base: s for s in plan.ruleset.sets if not s.static}
    return [{**row, "version": sets[row["set"]].version, "role": sets[row["set"]].role or sets[row["set"]].kind}
            for row in plan.backend.meter_fill(list(sets.values()))]


def count_sets(plan: Plan) -> dict:
    """(group, mode, IP version) -> the ``counts`` set: condemned packets per source (mode "enforce" or
    "monitor"), or every packet per source (mode "observed"). The sampler reads them
    (``plan.backend.source_counts``)."""
    return {(s.group, s.mode, s.version): s for s in plan.ruleset.sets if s.kind == "counts"}


def trusted_sources(plan: Plan, nft: Nft) -> set[str]:
    """Sources that completed a TCP handshake within ``syn.trusted_after_handshake_s`` (the trusted sets)."""
    return set_members(plan, nft, "trusted")


def engaged_ports(plan: Plan, nft: Nft) -> list[int]:
    """The ports SYNPROXY is engaged on now (a SYN flood to them within ``syn.synproxy.hold_s``)."""
    return sorted({int(p) for p in set_members(plan, nft, "engaged")})


def set_members(plan: Plan, nft: Nft, kind: str) -> set[str]:
    """The members of every set of ``kind`` (both families), as the backend lists them."""
    out: set[str] = set()
    for s in plan.ruleset.sets:
        if s.kind == kind:
            out.update(plan.backend.set_members(nft, s))
    return out
