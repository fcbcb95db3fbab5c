"""One model match as iptables sees it: its match arguments, the protocol it implies, the target it
carries and the families it applies to; one function per match type for each (as render/nft.py), given
the rule's IP version and the ruleset's sets and limits. A match type none of them knows is a TypeError."""

from __future__ import annotations

from dataclasses import dataclass
from functools import singledispatch
from typing import Any, get_args

from ..model.matches import (Assured, CountSource, CtState, CtStateNew, DstPortInSet, DstPorts, EngagePort, Family,
                             FibLocal, IcmpTypes, Log, Match, NoTrack, OneIn, OverLimit, Proto, RememberSource,
                             SocketOpen, SourceConnsOver, SourceInSet, SourceNotInSet, SourcePortInSet,
                             SourceRateOver, TcpFlags,
                             UnderLimit, UpdateSource, ValveEngaged)
from ..model.ruleset import V6_SOURCE_PREFIX, AddrSet, NamedLimit
from ..policy.rates import Rate
from .ipt_names import hashlimit_name, ipset_name

METER_TABLE_FACTOR = 3  # hashlimit entries per admission-set entry (at most 2 are ever needed) ...
METER_TABLE_SLACK = 4096  # ... plus what concurrent -j SET adds past maxelem (ipset counts per region,
#                           racily: 39 members were seen in a set of 16 under a 90 kpps flood on 2 CPUs)
_UNITS = {"second": "sec", "minute": "min", "hour": "hour"}
_PROTO = {("icmp", 4): "icmp", ("icmpv6", 6): "ipv6-icmp"}


@dataclass(frozen=True)
class Ctx:
    version: int
    sets: dict[str, AddrSet]
    limits: dict[str, NamedLimit]


def rate_text(r: Rate) -> str:
    return f"{r.count}/{_UNITS[r.unit]}"


def _unknown(what: str, x: Any) -> TypeError:
    return TypeError(f"no iptables {what} for match type {type(x).__name__}: {x!r}")


@singledispatch
def match(x: Any, ctx: Ctx) -> list[str]:
    raise _unknown("rendering", x)


@match.register(Family)
@match.register(Proto)
def _(x: Any, ctx: Ctx) -> list[str]:
    return []  # the family is the tool (iptables / ip6tables); the protocol went first


@match.register(RememberSource)
@match.register(UpdateSource)
@match.register(Log)
@match.register(CountSource)
@match.register(NoTrack)
@match.register(EngagePort)
def _(x: Any, ctx: Ctx) -> list[str]:
    return []  # the rule's target, or (CountSource) the set match added before it, which counts


@match.register
def _(x: IcmpTypes, ctx: Ctx) -> list[str]:  # one type per rule: see ipt.expand_icmp
    (icmp_type,) = x.types
    return [f"--icmp-type {icmp_type}" if x.version == 4 else f"--icmpv6-type {icmp_type}"]


@match.register
def _(x: TcpFlags, ctx: Ctx) -> list[str]:
    mask = ",".join(f.upper() for f in x.mask)
    comp = ",".join(f.upper() for f in x.comp) or "NONE"
    return [f"--tcp-flags {mask} {comp}"]


@match.register
def _(x: DstPorts, ctx: Ctx) -> list[str]:
    neg = "! " if x.negate else ""
    ports = [str(p) if isinstance(p, int) else f"{p[0]}:{p[1]}" for p in x.ports]
    if len(ports) == 1:
        return [f"{neg}--dport {ports[0]}"]
    return [f"-m multiport {neg}--dports {','.join(ports)}"]


@match.register(ValveEngaged)
@match.register(SourceInSet)
def _(x: SourceInSet | ValveEngaged, ctx: Ctx) -> list[str]:  # a valve set holds every source while engaged
    return [f"-m set --match-set {ipset_name(ctx.sets[x.set])} src"]


@match.register
def _(x: SourcePortInSet, ctx: Ctx) -> list[str]:
    return [f"-m set --match-set {ipset_name(ctx.sets[x.set])} src,src"]


@match.register
def _(x: SourceNotInSet, ctx: Ctx) -> list[str]:
    return [f"-m set ! --match-set {ipset_name(ctx.sets[x.set])} src"]


@match.register
def _(x: DstPortInSet, ctx: Ctx) -> list[str]:
    return [f"-m set --match-set {ipset_name(ctx.sets[x.set])} dst"]


@match.register
def _(x: CtStateNew, ctx: Ctx) -> list[str]:
    return ["-m conntrack --ctstate NEW"]


@match.register
def _(x: Assured, ctx: Ctx) -> list[str]:
    return ["-m conntrack --ctstatus ASSURED --ctdir ORIGINAL"]


@match.register
def _(x: CtState, ctx: Ctx) -> list[str]:
    return [f"-m conntrack --ctstate {','.join(st.upper() for st in x.states)}"]


@match.register
def _(x: FibLocal, ctx: Ctx) -> list[str]:
    return ["-m addrtype --dst-type LOCAL"]


@match.register
def _(x: SocketOpen, ctx: Ctx) -> list[str]:
    return ["-m socket --nowildcard"]  # --nowildcard: sockets bound to any address count too


@match.register
def _(x: OneIn, ctx: Ctx) -> list[str]:
    return [f"-m statistic --mode random --probability {1 / x.n:.10f}"]


@match.register
def _(x: SourceRateOver, ctx: Ctx) -> list[str]:
    s = ctx.sets[x.set]
    mask = f" --hashlimit-srcmask {V6_SOURCE_PREFIX}" if ctx.version == 6 else ""
    return [f"-m hashlimit --hashlimit-above {rate_text(s.rate)} --hashlimit-burst {s.rate.burst} "
            f"--hashlimit-mode srcip{mask} --hashlimit-name {hashlimit_name(s.name)} "
            f"--hashlimit-htable-size {s.size} --hashlimit-htable-max {METER_TABLE_FACTOR * s.size + METER_TABLE_SLACK} "
            f"--hashlimit-htable-expire {s.timeout_s * 1000}"]


@match.register(OverLimit)
@match.register(UnderLimit)
def _(x: Any, ctx: Ctx) -> list[str]:  # same name: one bucket (per family)
    lim = ctx.limits[x.limit]
    way = "above" if lim.over else "upto"
    return [f"-m hashlimit --hashlimit-{way} {rate_text(lim.rate)} --hashlimit-burst {lim.rate.burst} "
            f"--hashlimit-name {hashlimit_name(lim.name)}"]


@match.register
def _(x: SourceConnsOver, ctx: Ctx) -> list[str]:
    mask = 32 if ctx.version == 4 else V6_SOURCE_PREFIX
    return [f"-m connlimit --connlimit-above {ctx.sets[x.set].limit} --connlimit-mask {mask} --connlimit-saddr"]


# --- the protocol a match implies (``-p``, which goes before every match) ----------------------
@singledispatch
def implied_proto(x: Any, version: int) -> str | None:
    raise _unknown("protocol", x)


@implied_proto.register
def _(x: Proto, version: int) -> str:
    return _PROTO.get((x.name, version), x.name)


@implied_proto.register
def _(x: IcmpTypes, version: int) -> str:
    return "icmp" if x.version == 4 else "ipv6-icmp"


@implied_proto.register
def _(x: TcpFlags, version: int) -> str:
    return "tcp"


@implied_proto.register
def _(x: DstPorts, version: int) -> str:
    return x.proto


# --- the target a statement carries (else the rule's verdict is the target) -------------------
@singledispatch
def carried_target(x: Any, ctx: Ctx) -> str | None:
    raise _unknown("target", x)


@carried_target.register(RememberSource)
@carried_target.register(UpdateSource)
def _(x: RememberSource | UpdateSource, ctx: Ctx) -> str:  # --exist: a re-add restarts the timeout
    return f"-j SET --add-set {ipset_name(ctx.sets[x.set])} src --exist"


@carried_target.register
def _(x: NoTrack, ctx: Ctx) -> str:
    return "-j CT --notrack"


@carried_target.register
def _(x: EngagePort, ctx: Ctx) -> str:  # --exist: adding a member again restarts its timeout
    return f"-j SET --add-set {ipset_name(ctx.sets[x.set])} dst --exist"


@carried_target.register
def _(x: Log, ctx: Ctx) -> str:
    return f'-j NFLOG --nflog-group {x.nflog_group} --nflog-prefix "{x.prefix}" --nflog-size {x.snaplen}'


# --- the IP families a match applies to (iptables renders each family on its own) --------------
@singledispatch
def families(x: Any) -> set[int]:
    raise _unknown("family", x)


@families.register
def _(x: Proto) -> set[int]:
    return {4} if x.name == "icmp" else {6} if x.name == "icmpv6" else {4, 6}


def _by_version(x: Any) -> set[int]:
    v = getattr(x, "version", None)
    return {v} if v in (4, 6) else {4, 6}


def _none(x: Any, _: Any) -> None:
    return None


# Every other model match: no protocol, no target of its own, the families of its ``version`` if it has one.
for _t in get_args(Match):
    for _fn, _rest in ((implied_proto, _none), (carried_target, _none), (families, _by_version)):
        if _t not in _fn.registry:
            _fn.register(_t, _rest)
