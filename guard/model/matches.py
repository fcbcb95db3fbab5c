"""What a rule can test, and the statements it can carry (add a source to a set, count, log, untrack):
frozen values both renderers dispatch on by type. A stateful match names its set or limit; the object
itself, with its definition, is in ruleset.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union

from .. import logprefix


@dataclass(frozen=True)
class _NamesSet:
    """A match or statement on one set of one IP version (``set``: an AddrSet name). Its kinds
    subclass it and share its methods, which a dataclass of their own would each generate at import
    (~0.7 ms a class); ``__eq__`` compares the class too, so two kinds are never equal."""

    set: str
    version: int


@dataclass(frozen=True)
class _NamesLimit:
    """A match on the named bucket ``limit`` (shared by every rule naming it)."""

    limit: str


@dataclass(frozen=True)
class _Flag:
    """A match with no parameter."""


@dataclass(frozen=True)
class InterfaceNotIn:
    names: tuple[str, ...]


@dataclass(frozen=True)
class Family:
    version: int  # 4 or 6


@dataclass(frozen=True)
class Proto:
    name: Literal["tcp", "udp", "icmp", "icmpv6"]


@dataclass(frozen=True)
class IcmpTypes:
    version: int
    types: tuple[int, ...]


@dataclass(frozen=True)
class TcpFlags:
    """``flags & mask == comp``; comp () means none of the mask is set."""

    mask: tuple[str, ...]
    comp: tuple[str, ...]


@dataclass(frozen=True)
class DstPorts:
    proto: Literal["tcp", "udp"]
    ports: tuple[int | tuple[int, int], ...]  # a port, or an inclusive (low, high) range
    negate: bool = False


class SourceInSet(_NamesSet):
    """The source is in ``set``."""


class SourceNotInSet(_NamesSet):
    """The source is not in ``set``."""


class CtStateNew(_Flag):
    """Conntrack sees the packet's connection for the first time."""


class Assured(_Flag):
    """Conntrack saw this TCP connection complete its handshake (original direction only)."""


class RememberSource(_NamesSet):
    """Add the source to a timed set (a statement that always matches; a full set adds nothing)."""


class UpdateSource(_NamesSet):
    """Add the source to a timed set, or restart its timeout when it is there already (a statement;
    a full set adds nothing, and evaluation goes on either way)."""


class BanSource(_NamesSet):
    """Add the source to the ban set; one already there keeps its expiry. Matches only when the source
    is in the set afterwards: a full set adds nothing and the rule stops there (fails open)."""


class SourceRateOver(_NamesSet):
    """The source's token bucket in meter ``set`` (rate: the set's); matches packets over it.
    A full meter matches nothing: it fails open, and the backstop after it decides."""


class SourceConnsOver(_NamesSet):
    """The source has more connections than its ``conns`` set allows (conntrack count)."""


class OverLimit(_NamesLimit):
    """The named bucket ``limit`` (shared by every rule naming it) is exhausted."""


class UnderLimit(_NamesLimit):
    """The named bucket ``limit`` has a token: matches packets under its rate."""


class FibLocal(_Flag):
    """The destination is one of the node's own addresses (not a pod, not a forwarded service IP)."""


class SocketOpen(_Flag):
    """A local socket would receive the packet (listening, bound or connected, wildcard or not): a
    lookup per packet, so a socket opened a moment ago counts at once."""


class SourcePortInSet(_NamesSet):
    """The source address and TCP source port are in ``set``, a ``pickup`` set."""


class RememberSourcePort(_NamesSet):
    """Add the source address and TCP source port to the timed ``pickup`` set. Matches only when the pair
    is in the set afterwards: a full set adds nothing and the rule stops there (fails open)."""


class DstPortInSet(_NamesSet):
    """The TCP destination port is in ``set``, a ``ports`` set."""


class EngagePort(_NamesSet):
    """Add the packet's TCP destination port to the timed ``engaged`` set, or refresh its timeout
    (a statement; evaluation goes on)."""


class ValveEngaged(_NamesSet):
    """The SYN valve is engaged: the timed ``valve`` set of this IP version holds what means "engaged"
    (the daemon adds it while conntrack fails new connections; the kernel lets it expire)."""


@dataclass(frozen=True)
class CtState:
    states: tuple[Literal["invalid", "untracked", "new", "established", "related"], ...]


class NoTrack(_Flag):
    """Give the packet no conntrack entry (a statement; evaluation goes on)."""


class CountSource(_NamesSet):
    """Count this packet against its source in the ``counts`` set (a statement; a full set counts
    nothing more, and evaluation goes on either way)."""


@dataclass(frozen=True)
class OneIn:
    """Matches a packet at random with probability 1/``n`` (n a power of two): uniform per packet."""

    n: int


@dataclass(frozen=True)
class Log:
    """Copy the packet's head to userspace over NFLOG (a statement; evaluation goes on)."""

    group: str  # the rule group, e.g. "syn-flood": named by the NFLOG prefix (logprefix.py)
    nflog_group: int
    snaplen: int
    monitor: bool = False

    @property
    def prefix(self) -> str:
        return logprefix.encode(self.group, "monitor" if self.monitor else "enforce")


Match = Union[InterfaceNotIn, Family, Proto, IcmpTypes, TcpFlags, DstPorts, SourceInSet, SourceNotInSet,
              CtStateNew, Assured, RememberSource, UpdateSource, BanSource, SourceRateOver, SourceConnsOver, OverLimit,
              UnderLimit, CountSource, OneIn, Log, FibLocal, SocketOpen, DstPortInSet, CtState, NoTrack, EngagePort,
              ValveEngaged, SourcePortInSet, RememberSourcePort]
