"""Header parsing for sampled packets: plain ``struct`` on untrusted, truncated bytes.

Never raises: anything malformed yields a ``Packet`` with what could be read and
``note`` saying what was wrong. No per-packet scapy (the hot path must stay cheap).
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6"}
_V6_EXT = {0, 43, 60, 51}  # hop-by-hop, routing, destination options, AH (skippable); 44 = fragment
_TCP_FLAGS = "FSRPAUEC"


@dataclass(frozen=True)
class Packet:
    version: int = 0
    src: str = ""
    dst: str = ""
    proto: str = ""
    sport: int | None = None
    dport: int | None = None  # for ICMP: the type
    tcp_flags: str = ""
    ttl: int | None = None
    length: int = 0  # from the IP header: the size on the wire, not the truncated copy
    fragment: bool = False
    note: str = ""  # "" when the headers parsed cleanly


def parse(data: bytes) -> Packet:
    try:
        if not data:
            return Packet(note="empty")
        version = data[0] >> 4
        if version == 4:
            return _ipv4(data)
        if version == 6:
            return _ipv6(data)
        return Packet(length=len(data), note=f"not IP (version {version})")
    except (struct.error, IndexError, ValueError) as exc:  # defensive: parsing must never raise
        return Packet(length=len(data), note=f"malformed: {type(exc).__name__}")


def _ipv4(data: bytes) -> Packet:
    if len(data) < 20:
        return Packet(4, length=len(data), note="truncated IPv4 header")
    ihl = (data[0] & 0x0F) * 4
    total, frag, ttl, proto = struct.unpack_from("!H2xHBB", data, 2)
    src, dst = socket.inet_ntop(socket.AF_INET, data[12:16]), socket.inet_ntop(socket.AF_INET, data[16:20])
    base = dict(version=4, src=src, dst=dst, proto=PROTO_NAMES.get(proto, str(proto)), ttl=ttl, length=total)
    if ihl < 20 or ihl > len(data):
        return Packet(**base, note=f"bad IHL {ihl}")
    offset = frag & 0x1FFF
    if offset:  # a later fragment: no transport header
        return Packet(**base, fragment=True)
    return _transport(data, ihl, proto, base, fragment=bool(frag & 0x2000))


def _ipv6(data: bytes) -> Packet:
    if len(data) < 40:
        return Packet(6, length=len(data), note="truncated IPv6 header")
    payload_len, nxt, hop = struct.unpack_from("!HBB", data, 4)
    src, dst = socket.inet_ntop(socket.AF_INET6, data[8:24]), socket.inet_ntop(socket.AF_INET6, data[24:40])
    base = dict(version=6, src=src, dst=dst, ttl=hop, length=payload_len + 40)
    off, fragment = 40, False
    for _ in range(8):  # a bounded walk over extension headers
        if nxt in _V6_EXT:
            if off + 2 > len(data):
                return Packet(**base, proto=f"ext{nxt}", note="truncated extension header")
            length = (data[off + 1] + 2) * 4 if nxt == 51 else (data[off + 1] + 1) * 8
            nxt, off = data[off], off + length
        elif nxt == 44:  # fragment header
            if off + 8 > len(data):
                return Packet(**base, proto="ext44", note="truncated fragment header")
            frag_off = struct.unpack_from("!H", data, off + 2)[0] >> 3
            nxt, off, fragment = data[off], off + 8, True
            if frag_off:
                return Packet(**base, proto=PROTO_NAMES.get(nxt, str(nxt)), fragment=True)
        else:
            break
    else:
        return Packet(**base, proto="ext", note="too many extension headers")
    base["proto"] = PROTO_NAMES.get(nxt, str(nxt))
    return _transport(data, off, nxt, base, fragment=fragment)


def _transport(data: bytes, off: int, proto: int, base: dict, fragment: bool) -> Packet:
    rest = len(data) - off
    if proto in (6, 17):
        need = 14 if proto == 6 else 4
        if rest < need:
            return Packet(**base, fragment=fragment, note=f"truncated {PROTO_NAMES[proto]} header")
        sport, dport = struct.unpack_from("!HH", data, off)
        flags = ""
        if proto == 6:
            bits = data[off + 13]
            flags = "".join(c for i, c in enumerate(_TCP_FLAGS) if bits & (1 << i)) or "none"
        return Packet(**base, sport=sport, dport=dport, tcp_flags=flags, fragment=fragment)
    if proto in (1, 58):
        if rest < 1:
            return Packet(**base, fragment=fragment, note="truncated ICMP header")
        return Packet(**base, dport=data[off], fragment=fragment)
    return Packet(**base, fragment=fragment)
