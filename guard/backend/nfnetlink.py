"""A raw nfnetlink client for the reads libnftables makes too costly or unsafe: every rule's counters of
table ``inet nodeguard`` (``rule_counters``), how many elements each meter holds (``nft_set_sizes``; deny
sets are looked up instead: nft_fill.absent_key), each element's counter (``set_counters``, streamed: a
full set as libnftables JSON took ~50 MB), and every table with its flags (``tables``: nft 1.0.6's JSON
printer frees a flagged table's flags before printing them, garbage or invalid JSON in our own process).

libnftables is not used for these: nft 1.0.6 fetches every set element for any listing, terse or not,
which costs ~0.5 s with one full 65536-entry meter (measured). The kernel's side of an element dump
still costs ~0.3 s for such a meter, so callers cache ``nft_set_sizes``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from typing import Iterator

from ..model.ruleset import TABLE

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_GETTABLE, NFT_MSG_GETRULE, NFT_MSG_GETSETELEM, NFT_MSG_NEWGEN, NFT_MSG_GETGEN = 1, 7, 13, 15, 16
NFTA_GEN_ID = 1
NFTA_TABLE_NAME, NFTA_TABLE_FLAGS = 1, 2
TABLE_FLAGS = {1: "dormant", 2: "owner", 4: "persist"}  # NFT_TABLE_F_*
NFTA_RULE_TABLE, NFTA_RULE_CHAIN, NFTA_RULE_EXPRESSIONS, NFTA_RULE_USERDATA = 1, 2, 4, 7
NFTA_LIST_ELEM, NFTA_EXPR_NAME, NFTA_EXPR_DATA = 1, 1, 2
NFTA_COUNTER_BYTES, NFTA_COUNTER_PACKETS = 1, 2
NFTNL_UDATA_RULE_COMMENT = 0
NFPROTO_UNSPEC, NFPROTO_INET = 0, 1
FAMILIES = {1: "inet", 2: "ip", 3: "arp", 5: "netdev", 7: "bridge", 10: "ip6"}
NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_ELEMENTS = 1, 2, 3
NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_FLAGS, NFTA_SET_ELEM_EXPR, NFTA_SET_ELEM_EXPRESSIONS = 1, 3, 7, 10
NFTA_SET_ELEM_TIMEOUT, NFTA_SET_ELEM_EXPIRATION = 4, 5  # milliseconds, big-endian u64
NFT_SET_ELEM_INTERVAL_END = 1
NFTA_DATA_VALUE = 1
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
_NLMSG = struct.Struct("=IHHII")
_NLA = struct.Struct("=HH")


def _nla(atype: int, payload: bytes) -> bytes:
    n = _NLA.size + len(payload)
    return _NLA.pack(n, atype) + payload + b"\0" * (-n % 4)


def _attrs(buf: bytes, off: int, end: int) -> dict[int, tuple[int, int]]:
    """type -> (start, end) of each attribute's payload in buf[off:end]."""
    out = {}
    while off + _NLA.size <= end:
        alen, atype = _NLA.unpack_from(buf, off)
        if alen < _NLA.size or off + alen > end:
            break
        out[atype & 0x3FFF] = (off + _NLA.size, off + alen)
        off += (alen + 3) & ~3
    return out


def _list(buf: bytes, off: int, end: int) -> list[tuple[int, int]]:
    out = []
    while off + _NLA.size <= end:
        alen, _atype = _NLA.unpack_from(buf, off)
        if alen < _NLA.size or off + alen > end:
            break
        out.append((off + _NLA.size, off + alen))
        off += (alen + 3) & ~3
    return out


def _messages(buf: bytes) -> Iterator[tuple[int, int, int]]:
    """(type, start, end) of each whole netlink message in one datagram; a malformed one ends it."""
    off = 0
    while off + _NLMSG.size <= len(buf):
        length, mtype, _flags, _seq, _pid = _NLMSG.unpack_from(buf, off)
        if length < _NLMSG.size or off + length > len(buf):
            return
        yield mtype, off, off + length
        off += (length + 3) & ~3


def _error(buf: bytes, start: int, end: int) -> int:
    """The errno an NLMSG_ERROR message carries (0: an acknowledgement)."""
    return -struct.unpack_from("=i", buf, start + _NLMSG.size)[0] if end - start >= _NLMSG.size + 4 else 0


def _counter(buf: bytes, start: int, end: int) -> tuple[int, int] | None:
    """(packets, bytes) of the expression at buf[start:end] if it is a well-formed counter."""
    ea = _attrs(buf, start, end)
    if NFTA_EXPR_NAME in ea and buf[slice(*ea[NFTA_EXPR_NAME])].startswith(b"counter\0") and NFTA_EXPR_DATA in ea:
        ca = _attrs(buf, *ea[NFTA_EXPR_DATA])
        if all(k in ca and ca[k][1] - ca[k][0] >= 8 for k in (NFTA_COUNTER_PACKETS, NFTA_COUNTER_BYTES)):
            return (struct.unpack_from(">Q", buf, ca[NFTA_COUNTER_PACKETS][0])[0],
                    struct.unpack_from(">Q", buf, ca[NFTA_COUNTER_BYTES][0])[0])
    return None


def _walk(buf: bytes, each) -> tuple[list, bool, int]:
    """What ``each(buf, mtype, start, end, out)`` appends to ``out`` for every data message of one dump
    datagram, whether the dump is done, and an error code."""
    out: list = []
    done = False
    for mtype, start, end in _messages(buf):
        if mtype == NLMSG_DONE:
            done = True
        elif mtype == NLMSG_ERROR:
            if err := _error(buf, start, end):
                return out, True, err
        else:
            each(buf, mtype, start, end, out)
    return out, done, 0


def parse_rules(buf: bytes) -> tuple[list[tuple[str, str | None, int, int]], bool, int]:
    """(chain, comment, packets, bytes) of every rule in one datagram of a GETRULE dump, whether
    the dump is done, and an error code. Malformed parts are skipped, never raised."""
    return _walk(buf, _rule)


def _rule(buf: bytes, mtype: int, start: int, end: int, out: list) -> None:
    if mtype & 0xFF != NFT_MSG_GETRULE - 1:  # not NFT_MSG_NEWRULE
        return
    a = _attrs(buf, start + _NLMSG.size + 4, end)
    chain = buf[slice(*a[NFTA_RULE_CHAIN])].split(b"\0", 1)[0].decode("ascii", "replace") \
        if NFTA_RULE_CHAIN in a else ""
    comment = None
    if NFTA_RULE_USERDATA in a:
        u, uend = a[NFTA_RULE_USERDATA]
        while u + 2 <= uend:
            utype, ulen = buf[u], buf[u + 1]
            if utype == NFTNL_UDATA_RULE_COMMENT:
                comment = buf[u + 2:u + 2 + ulen].split(b"\0", 1)[0].decode("ascii", "replace")
            u += 2 + ulen
    packets = nbytes = 0
    for e, eend in _list(buf, *a.get(NFTA_RULE_EXPRESSIONS, (0, 0))):
        packets, nbytes = _counter(buf, e, eend) or (packets, nbytes)
    out.append((chain, comment, packets, nbytes))


def parse_tables(buf: bytes) -> tuple[list[tuple[str, str, int]], bool, int]:
    """(family, name, flags) of every table in one datagram of a GETTABLE dump, whether the dump is
    done, and an error code. Malformed parts are skipped, never raised."""
    return _walk(buf, _table)


def _table(buf: bytes, mtype: int, start: int, end: int, out: list) -> None:
    if mtype & 0xFF != NFT_MSG_GETTABLE - 1 or end - start < _NLMSG.size + 4:  # not NFT_MSG_NEWTABLE
        return
    a = _attrs(buf, start + _NLMSG.size + 4, end)
    if NFTA_TABLE_NAME not in a:
        return
    family = buf[start + _NLMSG.size]
    flags = a.get(NFTA_TABLE_FLAGS, (0, 0))
    out.append((FAMILIES.get(family, str(family)), buf[slice(*a[NFTA_TABLE_NAME])].split(b"\0", 1)[0]
                .decode("ascii", "replace"),
                int.from_bytes(buf[flags[0]:flags[0] + 4], "big") if flags[1] - flags[0] >= 4 else 0))


def tables() -> list[tuple[str, str, int]]:
    """(family, name, flags) of every table of every family: one netlink dump, no libnftables."""
    return _dump(NFT_MSG_GETTABLE, b"", parse_tables, NFPROTO_UNSPEC)


def _gen(buf: bytes, mtype: int, start: int, end: int, out: list) -> None:
    if mtype & 0xFF != NFT_MSG_NEWGEN:
        return
    a = _attrs(buf, start + _NLMSG.size + 4, end)
    if NFTA_GEN_ID in a and a[NFTA_GEN_ID][1] - a[NFTA_GEN_ID][0] >= 4:
        out.append(int.from_bytes(buf[a[NFTA_GEN_ID][0]:a[NFTA_GEN_ID][0] + 4], "big"))


def parse_gen(buf: bytes) -> tuple[list[int], bool, int]:
    """The ruleset generation in the answer to a GETGEN request (one NEWGEN message, no NLMSG_DONE)."""
    out, done, err = _walk(buf, _gen)
    return out, done or bool(out), err


def genid() -> int | None:
    """The ruleset's generation: the kernel adds one at every committed transaction, of any table of
    any family (ours, iptables-nft's, anyone's). One request, no dump: what is unchanged since a
    generation was read needs no second look."""
    with _socket() as sock:
        sock.send(_request(NFT_MSG_GETGEN, NLM_F_REQUEST, 1, NFPROTO_UNSPEC))
        found, _done, err = parse_gen(sock.recv(1 << 12))
    return None if err or not found else found[0]


def flag_names(flags: int) -> list[str]:
    """A table's flags as nft names them (an unknown bit as its value)."""
    return [TABLE_FLAGS.get(1 << i, str(1 << i)) for i in range(32) if flags >> i & 1]


@contextlib.contextmanager
def _socket(rcvbuf: int = 0) -> Iterator[socket.socket]:
    """A netfilter netlink socket for one exchange, answered within 5 s; ``rcvbuf``: room for a dump."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
    try:
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((0, 0))
        sock.settimeout(5)
        yield sock
    finally:
        sock.close()


def _request(msg_type: int, flags: int, seq: int, family: int, attrs: bytes = b"") -> bytes:
    """One nf_tables request message: the nfgenmsg header of ``family``, then ``attrs``."""
    body = struct.pack("=BBH", family, 0, 0) + attrs
    return _NLMSG.pack(_NLMSG.size + len(body), (NFNL_SUBSYS_NFTABLES << 8) | msg_type, flags, seq, 0) + body


def _stream(msg_type: int, attrs: bytes, parse, family: int = NFPROTO_INET) -> Iterator:
    """The items of one dump, one datagram's worth at a time (nothing when the table or set is missing)."""
    with _socket(1 << 20) as sock:
        sock.send(_request(msg_type, NLM_F_REQUEST | NLM_F_DUMP, 1, family, attrs))
        done = False
        while not done:
            items, done, err = parse(sock.recv(1 << 17))
            if err:
                if err == 2:  # ENOENT: no such table or set
                    return
                raise OSError(err, os.strerror(err))
            yield from items


def _dump(msg_type: int, attrs: bytes, parse, family: int = NFPROTO_INET) -> list:
    return list(_stream(msg_type, attrs, parse, family))


def rule_counters(table: str = TABLE) -> list[tuple[str, str | None, int, int]]:
    """(chain, comment, packets, bytes) of every rule of ``inet <table>``: one netlink dump of the
    rules only (no sets, no elements)."""
    return _dump(NFT_MSG_GETRULE, _nla(NFTA_RULE_TABLE, table.encode() + b"\0"), parse_rules)


def parse_set_counters(buf: bytes) -> tuple[list[tuple[bytes, int]], bool, int]:
    """(key, packets) of every element with a counter in one datagram of a GETSETELEM dump, whether
    the dump is done, and an error code. Malformed parts are skipped, never raised."""
    return _walk(buf, _element_counters)


def _element_counters(buf: bytes, _mtype: int, start: int, end: int, out: list) -> None:
    a = _attrs(buf, start + _NLMSG.size + 4, end)  # after the nfgenmsg
    for e, eend in _list(buf, *a.get(NFTA_SET_ELEM_LIST_ELEMENTS, (0, 0))):
        ea = _attrs(buf, e, eend)
        key = _attrs(buf, *ea[NFTA_SET_ELEM_KEY]).get(NFTA_DATA_VALUE) if NFTA_SET_ELEM_KEY in ea else None
        exprs = ([ea[NFTA_SET_ELEM_EXPR]] if NFTA_SET_ELEM_EXPR in ea
                 else _list(buf, *ea.get(NFTA_SET_ELEM_EXPRESSIONS, (0, 0))))
        counter = next(filter(None, (_counter(buf, x, xend) for x, xend in exprs)), None)
        if key and counter:
            out.append((buf[slice(*key)], counter[0]))


def set_counters(name: str, table: str = TABLE) -> Iterator[tuple[bytes, int]]:
    """(key, packets) of every element of set ``name`` of ``inet <table>`` that has a counter, read
    as the kernel sends them: memory stays one datagram's worth whatever the set holds."""
    return _stream(NFT_MSG_GETSETELEM, _set_ref(name, table), parse_set_counters)


def parse_set_times(buf: bytes) -> tuple[list[tuple[bytes, int | None]], bool, int]:
    """(key, milliseconds left or None) of every element in one datagram of a GETSETELEM dump,
    whether the dump is done, and an error code. Malformed parts are skipped, never raised."""
    return _walk(buf, _element_times)


def _element_times(buf: bytes, _mtype: int, start: int, end: int, out: list) -> None:
    # one pass over each element's attributes, nothing built but the result: this runs 65,536 times a
    # full set (_attrs' dicts took twice the time)
    unpack = _NLA.unpack_from
    e, stop = _attrs(buf, start + _NLMSG.size + 4, end).get(NFTA_SET_ELEM_LIST_ELEMENTS, (0, 0))
    while e + _NLA.size <= stop:
        elen = unpack(buf, e)[0]
        if elen < _NLA.size or e + elen > stop:
            return
        key = left = None
        a, aend = e + _NLA.size, e + elen
        while a + _NLA.size <= aend:
            alen, atype = unpack(buf, a)
            if alen < _NLA.size or a + alen > aend:
                break
            atype &= 0x3FFF
            if atype == NFTA_SET_ELEM_KEY and alen >= 2 * _NLA.size:
                klen, ktype = unpack(buf, a + _NLA.size)
                if ktype & 0x3FFF == NFTA_DATA_VALUE and _NLA.size <= klen <= alen - _NLA.size:
                    key = buf[a + 2 * _NLA.size:a + _NLA.size + klen]
            elif atype == NFTA_SET_ELEM_EXPIRATION and alen >= _NLA.size + 8:
                left = int.from_bytes(buf[a + _NLA.size:a + _NLA.size + 8], "big")
            a += (alen + 3) & ~3
        if key:
            out.append((key, left))
        e += (elen + 3) & ~3


def set_times(name: str, table: str = TABLE) -> Iterator[tuple[bytes, int | None]]:
    """(key, milliseconds left or None) of every element of set ``name`` of ``inet <table>``, read as
    the kernel sends them: memory stays one datagram's worth whatever the set holds (libnftables'
    JSON listing of a full 65,536-element set took ~1 s of CPU and ~100 MB of Python objects)."""
    return _stream(NFT_MSG_GETSETELEM, _set_ref(name, table), parse_set_times)


def _set_ref(name: str, table: str) -> bytes:
    return _nla(NFTA_SET_ELEM_LIST_TABLE, table.encode() + b"\0") + _nla(NFTA_SET_ELEM_LIST_SET, name.encode() + b"\0")


def _interval_end(buf: bytes, e: int, eend: int) -> bool:
    """Whether the element nest at ``e`` is an interval set's end element (its flags attribute says
    NFT_SET_ELEM_INTERVAL_END): a prefix is listed as a start and an end, and counts once."""
    a = e + _NLA.size
    while a + _NLA.size <= eend:
        alen, atype = _NLA.unpack_from(buf, a)
        if alen < _NLA.size:
            return False
        if atype & 0x3FFF == NFTA_SET_ELEM_FLAGS and alen >= _NLA.size + 4:
            return bool(int.from_bytes(buf[a + _NLA.size:a + _NLA.size + 4], "big") & NFT_SET_ELEM_INTERVAL_END)
        a += (alen + 3) & ~3
    return False


def count_elements(buf: bytes) -> tuple[int, bool, int]:
    """(elements counted, dump done, error code) in one datagram of a GETSETELEM dump; an interval
    set's prefix counts once, as the kernel counts it against the set's size."""
    count, done = 0, False
    for mtype, start, end in _messages(buf):
        if mtype == NLMSG_DONE:
            done = True
        elif mtype == NLMSG_ERROR:
            if err := _error(buf, start, end):
                return count, True, err
        else:
            a = start + _NLMSG.size + 4  # after the nfgenmsg
            while a + _NLA.size <= end:
                alen, atype = _NLA.unpack_from(buf, a)
                if alen < _NLA.size:
                    break
                if atype & 0x3FFF == NFTA_SET_ELEM_LIST_ELEMENTS:
                    e, eend = a + _NLA.size, min(a + alen, end)
                    while e + _NLA.size <= eend:
                        elen = _NLA.unpack_from(buf, e)[0]
                        if elen < _NLA.size:
                            break
                        count += not _interval_end(buf, e, min(e + elen, eend))
                        e += (elen + 3) & ~3
                a += (alen + 3) & ~3
    return count, done, 0


def nft_set_sizes(names: list[str], table: str = TABLE) -> dict[str, int | None]:
    """Elements in each named set of ``inet <table>`` (None: no such set), one dump per set. For meters
    only (hash sets of at most 65,536 elements, whose dump is linear): a deny set's is quadratic."""
    out: dict[str, int | None] = {}
    with _socket(1 << 20) as sock:
        for seq, name in enumerate(names, 1):
            sock.send(_request(NFT_MSG_GETSETELEM, NLM_F_REQUEST | NLM_F_DUMP, seq, NFPROTO_INET,
                               _set_ref(name, table)))
            total, done, err = 0, False, 0
            while not done:
                n, done, err = count_elements(sock.recv(1 << 17))
                total += n
            out[name] = None if err else total
    return out
