"""The containers a build fills and a renderer reads: rules, address sets, named limits, chains, and the
RuleSet, which refuses what no kernel could load (a name used twice, a reference to nothing).

Every stateful object (meter, trusted set, connection counter, named limit) carries its whole
definition, and its kernel name ends in a digest of it: a changed rate, size or timeout gives a
new object (the kernel keeps an object's parameters for as long as the name lives), an unchanged
one keeps its name and so its state across re-applies and repairs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from ipaddress import IPv4Network, IPv6Network
from typing import Literal, Union

from .. import prefixes
from ..placement import PLACEMENTS, Stage
from ..policy.rates import Rate
from .matches import Match, OverLimit, UnderLimit
from .names import digest, digested
from .verdicts import Goto, Jump, Verdict

TABLE = "nodeguard"
V6_SOURCE_PREFIX = 64  # per-source limits group an IPv6 host's whole /64


Mode = Literal["enforce", "monitor"]


@dataclass(frozen=True)
class Rule:
    matches: tuple[Match, ...]
    verdict: Verdict
    label: str  # short, human: shown in status and in the rule comment
    counter: bool = True
    group: str | None = None  # set on the rules that condemn: their counters are the drops of this group
    mode: Mode | None = None  # of a condemning rule: enforce (drops) or monitor (would drop)
    tally: str | None = None  # a rule whose counter is read as a count of its own (build.BANS_REFUSED)

    def __post_init__(self) -> None:
        if (self.group is None) != (self.mode is None):
            raise ValueError(f"rule {self.label!r}: a condemning rule has a group and a mode, others neither")


SET_KINDS = ("allow", "meter", "trusted", "conns", "counts", "ports", "engaged", "escalation", "valve", "deny",
             "manual", "crowdsec", "pickup")
SetKind = Literal["allow", "meter", "trusted", "conns", "counts", "ports", "engaged", "escalation", "valve", "deny",
                  "manual", "crowdsec", "pickup"]


@dataclass(frozen=True)
class AddrSet:
    """A set of source addresses. ``allow``: static prefixes; ``meter``: a token bucket of
    ``rate`` per source; ``trusted``: timed membership; ``conns``: ``limit`` connections per source;
    ``counts``: packets and bytes per source (the sampler's exact per-source totals); ``ports``: static
    destination ports (the SYNPROXY'd ones), not addresses; ``engaged``: timed destination ports (those
    SYNPROXY is engaged on); ``escalation``: timed membership keyed like a meter (IPv6: the /64):
    ``over-*``, ``episode-*`` and ``banned-*``; ``valve``: not addresses but one timed flag, "the SYN
    valve is engaged" (the elements that say so are the backend's: ``Backend.valve_elements``); ``deny``:
    static prefixes too, but up to millions, so integers (prefixes.py), and its name carries a digest of
    them (``sealed``: an unchanged list keeps its set, never listed back nor refilled); ``manual``:
    prefixes ``nodeguard ban`` adds, each with its own timeout or none (state: kept across applies, as a
    meter is); ``crowdsec``: a CrowdSec Local API's ban decisions, each with its own timeout (state too);
    ``pickup``: timed source address and TCP source port pairs, not addresses (tcp_pickup's second chance)."""

    base: str  # e.g. "syn-src-v4"; the kernel name adds the digest (allow sets keep their base name)
    version: int
    kind: SetKind
    elements: tuple[Union[IPv4Network, IPv6Network, int, prefixes.Prefix], ...] = ()
    size: int = 0
    timeout_s: int = 0
    rate: Rate | None = None  # meter
    limit: int = 0  # conns
    # what it is for, so that readers never parse the name (none of these is in the name's digest):
    group: str | None = None  # counts: the rule group whose sources it counts
    mode: str | None = None  # counts: "enforce" | "monitor" (condemned packets) | "observed" (every packet)
    role: str | None = None  # escalation: "over" | "episode" | "banned"; crowdsec: "address" | "range";
    # allow: "failsafe" (one failsafe entry's prefixes; None: the allowlist)

    def __post_init__(self) -> None:
        if self.version not in (4, 6):
            raise ValueError(f"set {self.base}: version must be 4 or 6")
        if self.kind not in SET_KINDS:
            raise ValueError(f"set {self.base}: unknown kind {self.kind!r}")
        if (self.kind == "meter") != (self.rate is not None and self.rate.burst is not None):
            raise ValueError(f"set {self.base}: a meter, and only a meter, has a rate with a burst")
        if self.kind not in ("allow", "ports", "deny") and self.size <= 0:
            raise ValueError(f"set {self.base}: needs a size")
        timed = ("meter", "trusted", "counts", "engaged", "escalation", "valve", "pickup")
        if self.kind in timed and self.timeout_s <= 0:
            raise ValueError(f"set {self.base}: needs a timeout")
        if self.kind == "conns" and self.limit <= 0:
            raise ValueError(f"set {self.base}: needs a connection limit")
        if self.elements and self.kind not in ("allow", "ports", "deny"):
            raise ValueError(f"set {self.base}: only allowlists, deny lists and port sets have static elements")

    @property
    def static(self) -> bool:
        """Its contents are configuration (refilled to match the render), not state."""
        return self.kind in ("allow", "ports")

    @property
    def sealed(self) -> bool:
        """Its name says its contents: a set of that name holds them (filled when created, never read back)."""
        return self.kind == "deny"

    @property
    def keyed_by_prefix(self) -> bool:
        """An IPv6 source is its /64 in this set (allowlists hold prefixes; pickup sets pair an address with
        a port). Trusted sets too: keyed by address, one /64 could fill them with handshakes from its own
        addresses and leave every other IPv6 client untrusted."""
        return self.kind in ("meter", "conns", "counts", "escalation", "trusted")

    @property
    def prefix_len(self) -> int:
        """How much of a source address identifies one source."""
        return 32 if self.version == 4 else V6_SOURCE_PREFIX

    @property
    def definition(self) -> str:
        """Everything but the contents: what makes two sets interchangeable."""
        return digest(self.kind, self.version, self.size, self.timeout_s, self.rate, self.limit, self.prefix_len)

    @cached_property  # a sealed set's digest reads every element
    def name(self) -> str:
        if self.sealed:
            contents = hashlib.sha256()
            for piece in prefixes.packed(self.version, self.elements):
                contents.update(piece)
            return digested(self.base, digest(self.definition, contents.hexdigest()))
        return self.base if self.static else digested(self.base, self.definition)


@dataclass(frozen=True)
class NamedLimit:
    """A token bucket shared by every rule that names it; ``over`` buckets match excess packets."""

    base: str
    rate: Rate
    over: bool

    def __post_init__(self) -> None:
        if self.rate.burst is None:
            raise ValueError(f"limit {self.base}: needs an explicit burst")

    @property
    def name(self) -> str:
        return digested(self.base, digest(self.rate, self.over))


@dataclass(frozen=True)
class Chain:
    name: str
    rules: tuple[Rule, ...]
    stage: Stage | None = None  # base chains only: where it hooks (placement.PLACEMENTS)
    priority: int | None = None
    role: str | None = None  # "sample" | "monitor" (a group's condemned packets) | "escalate"
    group: str | None = None  # the rule group of a sample, monitor or escalation chain
    version: int | None = None  # an escalation chain: the IP version it serves

    def __post_init__(self) -> None:
        if (self.stage is None) != (self.priority is None):
            raise ValueError(f"chain {self.name}: a base chain has a stage and a priority, a regular chain neither")
        if self.stage is not None and self.stage not in PLACEMENTS:
            raise ValueError(f"chain {self.name}: unknown stage {self.stage!r}")

    @property
    def hook(self) -> str | None:
        return PLACEMENTS[self.stage].nft_hook if self.stage else None


@dataclass(frozen=True)
class RuleSet:
    chains: tuple[Chain, ...]
    sets: tuple[AddrSet, ...]
    limits: tuple[NamedLimit, ...]
    interfaces: tuple[str, ...]
    table: str = TABLE
    sample_groups: tuple[str, ...] = ()  # index i: NFQUEUE queue_base + i (NFLOG: the prefix names the group)

    def __post_init__(self) -> None:
        """Refuse a ruleset no kernel could load: every name unique, every reference defined."""
        for what, names in (("chain", [c.name for c in self.chains]), ("set", [s.name for s in self.sets]),
                            ("limit", [lim.name for lim in self.limits])):
            dupes = {n for n in names if names.count(n) > 1}
            if dupes:
                raise ValueError(f"{what} names used twice: {sorted(dupes)}")
        chains, sets, limits = {c.name for c in self.chains}, {s.name for s in self.sets}, {x.name for x in self.limits}
        for c in self.chains:
            for r in c.rules:
                if isinstance(r.verdict, (Jump, Goto)) and r.verdict.chain not in chains:
                    raise ValueError(f"chain {c.name}: jump to undefined chain {r.verdict.chain}")
                for x in r.matches:
                    ref = getattr(x, "set", None)
                    if ref is not None and ref not in sets:
                        raise ValueError(f"chain {c.name}: undefined set {ref}")
                    ref = getattr(x, "limit", None)
                    if isinstance(x, (OverLimit, UnderLimit)) and ref not in limits:
                        raise ValueError(f"chain {c.name}: undefined limit {ref}")

    def chain(self, name: str) -> Chain:
        return next(c for c in self.chains if c.name == name)

    def set(self, name: str) -> AddrSet:
        return next(s for s in self.sets if s.name == name)

    def limit(self, name: str) -> NamedLimit:
        return next(x for x in self.limits if x.name == name)

    @property
    def base_chains(self) -> tuple[Chain, ...]:
        return tuple(c for c in self.chains if c.stage)
