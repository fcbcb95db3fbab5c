"""A prefix's text read by the C library (inet_pton) as integers: ~5x faster than ipaddress, for the
lists that reach 10,000 entries (allow) or 100,000 lines (deny files). It takes only the plain forms
(an address, or an address, "/" and decimal digits), and only what ipaddress takes as the same
prefix (tests/test_prefixes.py compares the two): everything else is left to ipaddress, whose
answer and messages stay the only ones.

An IPv4-mapped IPv6 prefix (``::ffff:a.b.c.d/N``, N >= 96) is read as the IPv4 prefix it maps: on the
wire an IPv4 source is never written that way, so only the IPv4 prefix matches what was meant."""

from __future__ import annotations

import socket

_FAMILY = {4: (socket.AF_INET, 32), 6: (socket.AF_INET6, 128)}
MAPPED_HEAD = bytes(10) + b"\xff\xff"  # the first 12 bytes of every IPv4-mapped address, ::ffff:0:0/96
MAPPED = int.from_bytes(MAPPED_HEAD, "big")  # the same, as the address shifted right by 32
MAPPED_LENGTH = 96


def unmapped(version: int, first: int, length: int) -> tuple[int, int, int]:
    """``(version, first, length)``, an IPv4-mapped IPv6 prefix as the IPv4 prefix it maps."""
    if version == 6 and length >= MAPPED_LENGTH and first >> 32 == MAPPED:
        return 4, first & 0xFFFFFFFF, length - MAPPED_LENGTH
    return version, first, length


def read(text: str) -> tuple[int, int, int] | None:
    """``(version, first address, length)`` of a plain prefix or address (its /32 or /128) with no
    host bits set and a length over 0 (an IPv4-mapped one unmapped: ``unmapped``); None for anything else."""
    addr, slash, plen = text.partition("/")
    version = 6 if ":" in addr else 4
    family, bits = _FAMILY[version]
    try:
        first = int.from_bytes(socket.inet_pton(family, addr), "big")
    except (OSError, ValueError):  # ValueError: a NUL character
        return None
    if slash and not (plen.isascii() and plen.isdigit()):
        return None
    length = int(plen) if slash else bits
    if 0 < length <= bits and not first & ((1 << (bits - length)) - 1):
        found = unmapped(version, first, length)
        return found if found[2] else None  # ::ffff:0:0/96 is 0.0.0.0/0: to_network's refusal
    return None
