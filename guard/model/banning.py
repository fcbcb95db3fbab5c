"""The ban layer of the layout: the escalation chains that ban a source over its limit, and the
rules at the head of ``filter-prerouting`` that drop what is banned (by escalation, by hand, by
CrowdSec) or denied. Called by build_ruleset (build.py), which owns the rest of the walk."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .matches import BanSource, SourceInSet, SourceNotInSet, UpdateSource
from .ruleset import AddrSet, Chain, Rule
from .verdicts import CONTINUE, DROP

if TYPE_CHECKING:
    from .build import Builder

BANS_REFUSED = "bans-refused"  # the tally of the rule that counts bans a full ban set refused
BANNED = "banned"  # the ban check's rule group of banned sources (escalation, ``nodeguard ban``, CrowdSec)
DENIED = "denied"  # the ban check's rule group of sources in the deny lists


def escalation_chain(group: str, version: int) -> str:
    return f"escalate-{group}-v{version}"


def escalation(b: Builder, trusted: dict[int, str]) -> tuple[dict[int, str], list[Chain]]:
    """The ban sets (IP version -> name) and one escalation chain per group and family whose
    per-source drops escalate; nothing when none do (escalate off, monitor mode).

    Shared timed sets per family, keyed like the meters (IPv6: the /64): ``over`` (timeout gap_s: the
    source had a per-source drop within gap_s), ``episode`` (timeout after_s: started when a source
    goes over after a pause) and ``banned`` (timeout ban_s). A source still in ``over`` whose
    ``episode`` has run out has been over for after_s without a pause of gap_s: it is banned. A short
    burst never lasts after_s; a source hovering at its limit leaves ``over`` between its drops. A full
    ``episode`` or ``over`` set bans nobody new (fails open)."""
    if not b.escalated:
        return {}, []
    esc, meter = b.policy.escalate, b.policy.meter
    sets: dict[tuple[str, int], str] = {}
    for version in (4, 6):
        for what, timeout, size in (("over", esc.gap_s, meter.size), ("episode", esc.after_s, meter.size),
                                    ("banned", esc.ban_s, esc.size)):
            sets[(what, version)] = b.add_set(AddrSet(f"{what}-v{version}", version, "escalation", size=size,
                                                      timeout_s=timeout, role=what)).name
    chains = []
    for group, version in b.escalated:
        over, episode, banned = (sets[(w, version)] for w in ("over", "episode", "banned"))
        not_trusted = (SourceNotInSet(trusted[version], version),) if version in trusted else ()
        due = (SourceInSet(over, version), SourceNotInSet(episode, version), *not_trusted)  # a ban
        chains.append(Chain(escalation_chain(group, version), (
            Rule((*due, BanSource(banned, version)), CONTINUE, f"ban v{version}: over its limit for after_s without a pause"),
            # a full set fails the add (nft: the rule stops there; ipset: silently): still not banned
            Rule((*due, SourceNotInSet(banned, version)), CONTINUE, f"ban refused v{version}: the ban set is full",
                 tally=BANS_REFUSED),
            Rule((SourceNotInSet(over, version), UpdateSource(episode, version)), CONTINUE,
                 f"new episode v{version}", counter=False),
            # only a source with an episode is marked over: with the episode set full, a source would be
            # over without one, which the first rule reads as "its episode ran out" and bans at once
            Rule((SourceInSet(episode, version), UpdateSource(over, version)), CONTINUE, f"over now v{version}",
                 counter=False),
            Rule((), b.condemned(group, "enforce"), f"condemned by {group}", counter=False),
        ), role="escalate", group=group, version=version))
    return {v: sets[("banned", v)] for v in (4, 6)}, chains


def drops(b: Builder, banned: dict[int, str]) -> list[Rule]:
    """The drop check, after the failsafe pairs of ``filter-prerouting``: a source in a deny list, banned
    by hand or banned by escalation is dropped unless allowlisted or failsafe (both win over deny). Each
    rule looks its drop set up first: a source in none of them (every packet of a flood that is not
    banned) costs one lookup a set. The manual ban sets always exist, so that ``nodeguard ban`` works
    whatever escalates. In monitor mode (the policy's) the deny and manual rules count what they would
    drop. Why here and not at ingress: placement.py ("stateless")."""
    rules, mode = [], b.policy.mode
    for v in (4, 6):
        denied = b.policy.deny.prefixes(v)
        manual = b.add_set(AddrSet(f"manual-v{v}", v, "manual", size=b.policy.deny.manual_size)).name
        sets = [(b.add_set(AddrSet(f"deny-v{v}", v, "deny", denied)).name, DENIED, f"denied v{v} source",
                 mode)] if denied else []
        sets.append((manual, BANNED, f"banned by hand v{v}", mode))
        sets += [(name, BANNED, f"banned by crowdsec v{v}{what}", mode) for name, what in _crowdsec_sets(b, v)]
        if v in banned:  # only enforce mode escalates
            sets.append((banned[v], BANNED, "banned v4 source" if v == 4 else "banned v6 /64", "enforce"))
        rules += [Rule((SourceInSet(name, v), SourceNotInSet(f"allow-v{v}", v)), DROP if how == "enforce" else CONTINUE,
                       label, group=group, mode=how) for name, group, label, how in sets]
    return rules


def _crowdsec_sets(b: Builder, v: int) -> list[tuple[str, str]]:
    """With ``crowdsec`` on, the sets its pulled decisions fill (guard/crowdsec/): (name, label
    suffix). Addresses and ranges apart: ranges need an interval set, which loads too slowly for
    the 100,000 addresses a Local API can hand out at once."""
    if not b.policy.crowdsec.enabled:
        return []
    size = b.policy.crowdsec.size
    return [(b.add_set(AddrSet(f"crowdsec-v{v}", v, "crowdsec", size=size, role="address")).name, ""),
            (b.add_set(AddrSet(f"crowdsec-ranges-v{v}", v, "crowdsec", size=size, role="range")).name, " range")]

