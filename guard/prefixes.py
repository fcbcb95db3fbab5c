"""Prefixes as plain integers: ``(first address, length)`` per IP version, for the lists that reach
100,000 lines (deny files). ipaddress objects cost ~10 us each to parse, merge and print; integers a
fraction of that. Anything the fast reading does not take (netmask forms, bad text) goes through
``to_network``, so what is accepted and every error message are ipaddress's."""

from __future__ import annotations

import itertools
import socket
import struct
from typing import Iterator, Sequence

from . import inet
from .policy.fields import to_network

BITS = {4: 32, 6: 128}
Prefix = tuple[int, int]  # (first address as an int, prefix length)


def parse(entry: str, whole: str, echo: int = 60) -> tuple[int, int, int]:
    """``(version, first, length)`` of a plain prefix or address (its /32 or /128); ``whole``: what a
    /0 would do (refused). Raises ValueError with to_network's message (quoting ``echo`` characters at most)."""
    found = inet.read(entry)
    if found is not None:
        return found
    net = to_network(entry, whole, echo=echo)  # raises the one-line message, or reads what inet_pton does not
    return net.version, int(net.network_address), net.prefixlen


def outermost(prefixes, version: int) -> list[Prefix]:
    """The prefixes sorted, with every prefix inside another dropped (nft interval sets refuse
    overlaps)."""
    return outermost_keys([key(first, length) for first, length in prefixes], version)


def key(first: int, length: int) -> int:
    """A prefix as one int, which sorts by start, then length: 80,000 tuples took 0.25 s to sort, and
    a million of them hold 90 MB, their keys 40."""
    return first << 8 | length


def outermost_keys(keys: list[int], version: int) -> list[Prefix]:
    """``outermost`` of prefixes given as keys, which are sorted in place. Prefixes either nest or are
    disjoint, so one sweep over the sorted starts does it: the wider of two with the same start comes
    first."""
    bits, out, end = BITS[version], [], -1
    keys.sort()
    for k in keys:
        if k >> 8 > end:
            out.append((k >> 8, k & 255))
            end = (k >> 8) + (1 << (bits - (k & 255))) - 1
    return out


def too_broad(merged: list[Prefix], version: int) -> bool:
    """Whether ``merged`` (outermost: disjoint) covers half of its family's addresses or more: a list
    that wide drops (or opens) the Internet, not a share of it. The bogons FireHOL level1 lists
    (0.0.0.0/8, 10.0.0.0/8, 127.0.0.0/8, 224.0.0.0/3, ...) cover under a seventh of IPv4."""
    bits = BITS[version]
    return 2 * sum(1 << (bits - length) for _first, length in merged) >= 1 << bits


def address_text(version: int, value: int) -> str:
    """The address as inet_ntop writes it (nft and ipset read any valid form); IPv4 formatted here, in
    2/3 of the time."""
    if version == 4:
        return "%d.%d.%d.%d" % (value >> 24, value >> 16 & 255, value >> 8 & 255, value & 255)
    return socket.inet_ntop(socket.AF_INET6, value.to_bytes(16, "big"))


def text(version: int, prefix: Prefix) -> str:
    return f"{address_text(version, prefix[0])}/{prefix[1]}"


PACKED_AT_ONCE = 4096  # prefixes a struct packs at once: a format for a million held 64 MB, and struct caches it
_LOW = (1 << 64) - 1


def packed(version: int, prefixes: Sequence[Prefix]) -> Iterator[bytes]:
    """The prefixes as bytes, each its address then its length (big-endian): what a digest of a list
    reads, in pieces. One struct.pack per piece: a bytes object per prefix took 0.2 s for 80,000."""
    for at in range(0, len(prefixes), PACKED_AT_ONCE):
        part = prefixes[at:at + PACKED_AT_ONCE]
        if version == 4:
            yield struct.pack(">" + "IB" * len(part), *itertools.chain.from_iterable(part))
        else:
            yield struct.pack(">" + "QQB" * len(part), *[x for first, length in part
                                                          for x in (first >> 64, first & _LOW, length)])
