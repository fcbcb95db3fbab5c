"""Ruleset change notifications from the kernel (nft tables, which include iptables-nft).

We only need to know *that* something changed, where, and who did it: the drift check then
reads the ruleset. Of each message the address family in its nfgenmsg header is kept (an
iptables-nft change to IPv4 tables needs no re-read of IPv6's), and of the NEWGEN trailer of a
transaction the writer's pid and process name. iptables-legacy sends no events.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

NETLINK_NETFILTER = 12
NFNLGRP_NFTABLES = 7
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NFT_MSG_NEWGEN = (10 << 8) | 15  # NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWGEN
NFTA_GEN_PROC_PID, NFTA_GEN_PROC_NAME = 2, 3
# messages about a table or a set or its elements (NFT_MSG_NEW/DEL TABLE, SET, SETELEM): attribute 1 of each
# names the table (NFTA_TABLE_NAME, NFTA_SET_TABLE, NFTA_SET_ELEM_LIST_TABLE)
SET_MESSAGES = frozenset((10 << 8) | t for t in (0, 2, 9, 11, 12, 14))
ELEMENT_MESSAGES = frozenset((10 << 8) | t for t in (12, 14))  # NFT_MSG_NEWSETELEM, NFT_MSG_DELSETELEM (a flush: one each)
NFTA_SET_ELEM_LIST_SET = 2
IP_VERSIONS = {socket.AF_INET: (4,), socket.AF_INET6: (6,), 1: (4, 6)}  # NFPROTO_INET: both


@dataclass
class Batch:
    """What one drain read: datagrams, writers of committed transactions, IP versions touched."""

    datagrams: int = 0
    writers: list[tuple[int, str]] = field(default_factory=list)
    versions: set[int] = field(default_factory=set)  # of messages about ip, ip6 and inet tables
    overrun: bool = False  # ENOBUFS: we fell behind, writers and versions may be missing
    set_tables: set[tuple[int, str]] = field(default_factory=set)  # (nfproto, table) whose tables or sets changed
    # (pid, process name, {(nfproto, table, set)}) of each committed transaction that added or deleted elements
    element_writes: list[tuple[int, str, frozenset[tuple[int, str, str]]]] = field(default_factory=list)


def versions(buf: bytes) -> set[int]:
    """IP versions of the tables the messages in a datagram are about (NEWGEN names none)."""
    return {v for off, _length, _mtype in _headers(buf, 17) for v in IP_VERSIONS.get(buf[off + 16], ())}


def set_tables(buf: bytes) -> set[tuple[int, str]]:
    """(nfproto family, table name) of every table, set or set-element message in a datagram."""
    return {(buf[off + 16], table) for off, length, mtype in _headers(buf, 20) if mtype in SET_MESSAGES
            and (table := _name(_strings(buf, off, off + length), 1)) is not None}


def _strings(buf: bytes, off: int, end: int) -> dict[int, bytes]:
    """attribute type -> payload of the attributes of the message at ``off`` (after its nfgenmsg)."""
    out = {}
    a = off + 20  # nlmsghdr (16) + nfgenmsg (4)
    end = min(end, len(buf))  # a truncated datagram must not make us read past it
    while a + 4 <= end:
        alen, atype = struct.unpack_from("=HH", buf, a)
        if alen < 4 or a + alen > end:
            break
        out.setdefault(atype & 0x3FFF, buf[a + 4:a + alen])
        a += (alen + 3) & ~3
    return out


def _name(attrs: dict[int, bytes], atype: int) -> str | None:
    """A name attribute's text (to its NUL), or None when the message has none."""
    payload = attrs.get(atype)
    return None if payload is None else payload.split(b"\0", 1)[0].decode("ascii", "replace")


def _writer(buf: bytes, off: int, end: int) -> tuple[int, str]:
    """(pid, process name) of the NEWGEN message at ``off``."""
    attrs = _strings(buf, off, end)
    payload = attrs.get(NFTA_GEN_PROC_PID, b"")
    name = _name(attrs, NFTA_GEN_PROC_NAME) or ""
    return struct.unpack(">I", payload)[0] if len(payload) == 4 else 0, "".join(
        c if c.isprintable() else "?" for c in name)


def _headers(buf: bytes, room: int) -> Iterator[tuple[int, int, int]]:
    """(offset, length, type) of each message in a datagram with ``room`` bytes left, to a malformed one."""
    off = 0
    while off + room <= len(buf):
        length, mtype = struct.unpack_from("=IH", buf, off)
        if length < 16:
            return
        yield off, length, mtype
        off += (length + 3) & ~3


def writers(buf: bytes) -> list[tuple[int, str]]:
    """(pid, process name) of every committed transaction in a netlink datagram."""
    return [_writer(buf, off, off + length) for off, length, mtype in _headers(buf, 16) if mtype == NFT_MSG_NEWGEN]


def element_writes(buf: bytes, pending: set[tuple[int, str, str]]) -> list[tuple[int, str, frozenset]]:
    """(pid, process name, {(nfproto, table, set)}) of every transaction committed in a datagram that
    added or deleted set elements. A transaction's messages come before its NEWGEN, maybe in earlier
    datagrams: ``pending`` carries the sets named since the last NEWGEN from one datagram to the next."""
    out = []
    for off, length, mtype in _headers(buf, 17):
        if mtype == NFT_MSG_NEWGEN:
            if pending:
                out.append((*_writer(buf, off, off + length), frozenset(pending)))
                pending.clear()
        elif mtype in ELEMENT_MESSAGES:
            attrs = _strings(buf, off, off + length)
            pending.add((buf[off + 16], _name(attrs, 1) or "", _name(attrs, NFTA_SET_ELEM_LIST_SET) or ""))
    return out


class NftEvents:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.bind((0, 0))
        self.sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.setblocking(False)
        self._elements: set[tuple[int, str, str]] = set()  # sets whose elements changed since the last NEWGEN

    def fileno(self) -> int:
        return self.sock.fileno()

    def drain(self, into: Batch | None = None) -> Batch:
        """Read every pending datagram (into ``into``, to gather a burst of them)."""
        batch = into if into is not None else Batch()
        while True:
            try:
                buf = self.sock.recv(65536)
            except BlockingIOError:
                return batch
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                batch.overrun = True
                self._elements.clear()  # its transaction's messages may be lost: the overrun stands for it
                continue
            batch.datagrams += 1
            batch.writers += writers(buf)
            batch.versions |= versions(buf)
            batch.set_tables |= set_tables(buf)
            batch.element_writes += element_writes(buf, self._elements)

    def close(self) -> None:
        self.sock.close()
