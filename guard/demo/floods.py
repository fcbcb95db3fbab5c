"""The demo's three floods: what hping3 sends, what the demo's ingress counter matches, which
nodeguard rule groups' drops count for each, and how long each phase lasts."""

from __future__ import annotations

from dataclasses import dataclass

from .lab import NODE, NODEPORT, UDP_PORT

BANNED = "banned"  # model.banning.BANNED: the group of the ban check's drops of banned sources


@dataclass
class Threat:
    key: str
    title: str
    hping: list[str]
    ingress: str           # nft match for the demo's netdev counter
    groups: tuple[str, ...]  # nodeguard rule groups whose drops count for it (prefixes)
    started: float | None = None
    ended: float | None = None
    arrived: int = 0
    dropped: int = 0
    hping_out: str = ""


def threats() -> list[Threat]:
    return [
        # one source: banned by escalation once over its limit for escalate.after_s, then dropped by the ban check
        Threat("icmp", "ICMP echo flood (one source)", ["--icmp", NODE], "icmp type echo-request",
               ("icmp-flood", BANNED)),
        Threat("udp", f"UDP flood to port {UDP_PORT} (one source)", ["--udp", "-p", str(UDP_PORT), NODE],
               f"udp dport {UDP_PORT}", ("limit-", BANNED)),
        Threat("syn", f"spoofed SYN flood to NodePort {NODEPORT}",
               ["-S", "--rand-source", "-p", str(NODEPORT), NODE], "tcp flags & (fin|syn|rst|ack) == syn",
               ("syn-flood",)),
    ]


@dataclass
class Timing:
    warm: float
    flood: float
    gap: float
    cool: float


QUICK, FULL = Timing(2.0, 5.0, 2.5, 2.5), Timing(3.0, 15.0, 4.0, 4.0)


def drops_by_threat(drops: dict[tuple[str, str], int], ths: list[Threat]) -> dict[str, int]:
    """Dropped packets per threat from {(group, mode): packets} of the rules that condemn
    (``guard.demo.drops``; every condemned packet passes exactly one; monitor mode drops nothing).
    Threats with the group ``banned`` also count the ban check's drops of banned sources (the floods run
    one after another, so a flood's share of them is what they grew by while it ran)."""
    return {th.key: sum(n for (group, mode), n in drops.items()
                        if mode == "enforce" and any(_in(group, g) for g in th.groups))
            for th in ths}


def _in(group: str, wanted: str) -> bool:
    """``wanted`` is a group, or with a trailing "-" every group of that kind (``limit-<name>``)."""
    return group == wanted or (wanted.endswith("-") and group.startswith(wanted))
