"""Who holds the metrics port's connections, and whom its caps evict (the order: guard/httpserve.py's
doc). Pure: the server passes its tables and the time in."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from .aggregate import source_key


@dataclass(frozen=True)
class Limits:
    head_s: float = 5.0         # from accept to the end of the request head
    reply_s: float = 10.0       # from the end of the head to the last byte of the answer
    head_bytes: int = 8192      # request line and headers
    connections: int = 64       # open at once, in all, once their grace is over (memory for answers)
    connections_max: int = 512  # open at once, in all, in their grace or not (file descriptors: the
                                # unit's soft limit is 1024)
    backlog: int = 256          # the kernel's accept queue: a burst of connects waits there, not
                                # dropped SYNs retransmitted a second later (a probe among them)
    per_client: int = 4         # open at once per IPv4 address or IPv6 /64 (see grace_s)
    grace_s: float = 0.2        # a new connection's time to send its request before a cap may evict
                                # it (at once if its client is over per_client, or beyond connections_max)
    error_log_s: float = 60.0   # a route's unexpected failures: one log line per this, with a count
    send_buffer: int = 65536    # SO_SNDBUF of a connection: the kernel memory (charged to the unit's
                                # MemoryMax=) a client that does not read can pin; the rest waits here


def client_key(host: str) -> str:
    """Whose connection this is, for ``Limits.per_client``: as the kernel meters sources (an IPv4
    address, an IPv6 /64); an IPv4 client of a dual-stack socket counts as its IPv4 address."""
    try:
        mapped = ipaddress.IPv6Address(host.split("%", 1)[0]).ipv4_mapped
    except ValueError:
        mapped = None
    return str(mapped) if mapped else source_key(host)


class Conn:
    __slots__ = ("sock", "client", "born", "deadline", "head", "complete", "out", "closed")

    def __init__(self, sock: socket.socket, client: str, born: float, deadline: float):
        self.sock, self.client, self.born, self.deadline = sock, client, born, deadline
        self.head = bytearray()
        self.complete = False                # its request head is in: being answered
        self.out: memoryview | None = None   # the answer's unsent bytes, once there is one
        self.closed = False

    def eviction_rank(self) -> int | None:
        """Which to evict first over a cap: 0 sent nothing, 1 sent part of a head, None never."""
        return None if self.complete else (1 if self.head else 0)


def client_victim(mine: dict[socket.socket, Conn], limits: Limits, now: float) -> tuple[Conn | None, bool]:
    """Over a client's cap (``mine``: its connections, oldest first): its oldest silent one once past
    its grace, else its oldest partial one, else (every one being answered) its newest. The flag: silent
    ones are still in their grace (the cap waits; look again next turn)."""
    if len(mine) <= limits.per_client:
        return None, False
    silent = [c for c in mine.values() if c.eviction_rank() == 0]
    if silent:
        ripe = [c for c in silent if now - c.born >= limits.grace_s]
        return (ripe[0], False) if ripe else (None, True)
    return next((c for c in mine.values() if c.eviction_rank() == 1), next(reversed(mine.values()))), False


def total_victim(conns: dict[socket.socket, Conn], by_client: dict[str, dict[socket.socket, Conn]],
                 limits: Limits, now: float) -> tuple[Conn | None, bool]:
    """Over the total cap: from the client holding the most connections, its oldest silent one, else
    its oldest partial one, among those past their grace; beyond ``connections_max`` among all that
    are not being answered; if every one is, the newest. The flag: every candidate is still in its
    grace (look again next turn)."""
    best = (-max(map(len, by_client.values())), 0)
    ripe: tuple[tuple[int, int], Conn] | None = None
    young: tuple[tuple[int, int], Conn] | None = None
    for conn in conns.values():  # oldest first: the first of a key wins, and the ripe are a prefix
        rank = conn.eviction_rank()
        if rank is None:
            continue
        key = (-len(by_client[conn.client]), rank)
        if now - conn.born >= limits.grace_s:
            if ripe is None or key < ripe[0]:
                ripe = (key, conn)
        elif ripe is not None:
            break  # the rest are younger still
        elif young is None or key < young[0]:
            young = (key, conn)
        if (ripe or young)[0] == best:
            break  # no better one can follow
    if ripe is not None:
        return ripe[1], False
    if young is None:
        return next(reversed(conns.values())), False
    if len(conns) > limits.connections_max:
        return young[1], False
    return None, True
