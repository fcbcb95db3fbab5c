"""New interval sets created and filled by one raw nfnetlink batch: a deny list's 100,000 prefixes.

libnftables spends ~0.5 s of CPU on such a list (its JSON parsed, every prefix a GMP number, the
intervals sorted and checked again) before the kernel sees it; the same elements written here take
~0.1 s. The batch is a transaction of its own: the kernel commits the sets with all their elements or
nothing, and no rule refers to them until the libnftables transaction that follows (sync/nft.py), so no
packet ever meets a half-filled set. The messages are the ones nft 1.0.6 sends for ``add set ... {
type ipv4_addr; flags interval; elements = { ... } }`` (read with ``nft --debug=mnl``), so nft lists
the sets back as if it had made them. Whether a filled set still holds its prefixes is a lookup of a
sample of them (``absent_key``), never a dump.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import Iterable, Iterator, Sequence

from ..errors import BackendError
from ..model.ruleset import TABLE
from .nfnetlink import (_NLMSG, NETLINK_NETFILTER, NFNL_SUBSYS_NFTABLES, NFPROTO_INET, NFT_MSG_GETSETELEM,
                        NFT_SET_ELEM_INTERVAL_END, NFTA_DATA_VALUE, NFTA_SET_ELEM_FLAGS, NFTA_SET_ELEM_KEY,
                        NFTA_SET_ELEM_LIST_ELEMENTS, NFTA_SET_ELEM_TIMEOUT, NFTA_TABLE_NAME, NLM_F_REQUEST,
                        NLMSG_ERROR, _element_times, _error, _messages, _nla, _request, _set_ref, _socket)

NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 16, 17
NFT_MSG_NEWTABLE, NFT_MSG_NEWSET, NFT_MSG_NEWSETELEM, NFT_MSG_DELSETELEM = 0, 9, 12, 14
NFTA_SET_NAME, NFTA_SET_FLAGS, NFTA_SET_KEY_TYPE, NFTA_SET_KEY_LEN = 2, 3, 4, 5
NFTA_SET_ID, NFTA_SET_USERDATA = 10, 13
NFT_SET_INTERVAL = 0x4
NFTA_LIST_ELEM, NFTA_SET_ELEM_USERDATA = 1, 6
NLA_F_NESTED = 0x8000
NLM_F_ACK, NLM_F_CREATE = 0x4, 0x400
SO_SNDBUFFORCE, SO_RCVBUFFORCE, SOL_NETLINK, NETLINK_CAP_ACK = 32, 33, 270, 10
ACK_ROOM = 1024  # receive buffer per acknowledged message, as nft sizes it (mnl_batch_talk)
KEY_TYPE = {4: 7, 6: 8}  # nft's datatypes ipv4_addr and ipv6_addr
KEY_BIG_ENDIAN = b"\x00\x04" + struct.pack("=I", 2)  # set udata: the key's byte order, as nft writes it
INTERVAL_END = _nla(NFTA_SET_ELEM_FLAGS, struct.pack(">I", NFT_SET_ELEM_INTERVAL_END))
OPEN_END = _nla(NFTA_SET_ELEM_USERDATA, b"\x01\x04" + struct.pack("=I", 1))  # nft's mark of a last interval
IOV_MAX = os.sysconf("SC_IOV_MAX")
ELEMENTS_MAX = 60_000  # bytes of elements a message: an attribute's length is 16 bits
PROBE_KEYS = 64  # prefixes of a deny set looked up to check it is filled (absent_key)


def _key_element(key: bytes, attrs: bytes = b"") -> bytes:
    """A set element of ``key``, with more of its attributes (a timeout) after it."""
    return _nest(NFTA_LIST_ELEM, _nest(NFTA_SET_ELEM_KEY, _nla(NFTA_DATA_VALUE, key)) + attrs)


def _message(mtype: int, seq: int, family: int, body: bytes, res_id: int = 0) -> bytes:
    payload = struct.pack("=BBH", family, 0, socket.htons(res_id)) + body
    return _NLMSG.pack(_NLMSG.size + len(payload), mtype, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE, seq, 0) + payload


def _nest(atype: int, payload: bytes) -> bytes:
    return _nla(atype | NLA_F_NESTED, payload)


def elements(version: int, prefixes: Sequence[tuple[int, int]]) -> Iterator[bytes]:
    """The interval elements of sorted, disjoint prefixes, as nft sends them: an end element at the
    first address unless a prefix starts there, then each prefix's start and the address after it as
    an end (none after a prefix that reaches the last address: nft marks that start "open"). One at a
    time: a million prefixes' elements held at once took 120 MB."""
    width = 4 if version == 4 else 16
    bits = width * 8
    head = _nest(NFTA_LIST_ELEM, _nest(NFTA_SET_ELEM_KEY, _nla(NFTA_DATA_VALUE, bytes(width))))[:-width]
    end_head = struct.pack("=H", len(head) + width + len(INTERVAL_END)) + head[2:]
    open_head = struct.pack("=H", len(head) + width + len(OPEN_END)) + head[2:]
    if not prefixes or prefixes[0][0] != 0:
        yield end_head + bytes(width) + INTERVAL_END
    top = 1 << bits
    for first, length in prefixes:
        after = first + (1 << (bits - length))
        if after < top:
            yield head + first.to_bytes(width, "big")
            yield end_head + after.to_bytes(width, "big") + INTERVAL_END
        else:
            yield open_head + first.to_bytes(width, "big") + OPEN_END


def sample_keys(version: int, prefixes: Sequence[tuple[int, int]], k: int = PROBE_KEYS) -> list[bytes]:
    """The interval start keys of up to ``k`` of sorted prefixes: the first, the last and evenly spaced
    ones between (a flush or a cut-off fill misses the first or the last)."""
    width = 4 if version == 4 else 16
    n = len(prefixes)
    picks = sorted({i * (n - 1) // (k - 1) for i in range(k)}) if n > k else range(n)
    return [prefixes[i][0].to_bytes(width, "big") for i in picks]


def absent_key(name: str, keys: list[bytes], table: str = TABLE) -> bytes | None:
    """The first of ``keys`` set ``name`` of ``inet <table>`` lacks (an interval set: no interval
    starts there), else None: one GETSETELEM request, not a dump. The kernel looks each key up
    (O(log n)), answers each with its element and stops at the first it lacks (ENOENT). A dump of an
    interval set costs O(n^2 / chunk) on 6.x kernels (each chunk walks the rbtree from its start)."""
    elems = b"".join(_key_element(k) for k in keys)
    found: list[bytes] = []
    with _socket(1 << 20) as sock:
        sock.send(_request(NFT_MSG_GETSETELEM, NLM_F_REQUEST | NLM_F_ACK, 1, NFPROTO_INET,
                           _set_ref(name, table) + _nest(NFTA_SET_ELEM_LIST_ELEMENTS, elems)))
        err = None
        while err is None:
            buf = sock.recv(1 << 16)
            for mtype, start, end in _messages(buf):
                if mtype == NLMSG_ERROR:
                    err = _error(buf, start, end)
                    break
                _element_times(buf, mtype, start, end, elements := [])
                found += [key for key, _left in elements]
    if err not in (0, 2):  # ENOENT: a key (or the set) is absent
        raise OSError(err, os.strerror(err))
    # an interval set answers a key inside an interval with the interval's start: only equal keys count
    return next((k for k, f in zip(keys, found) if k != f), keys[len(found)] if len(found) < len(keys) else None)


def batch(table: str, sets: list[tuple[str, int, Sequence[tuple[int, int]]]], commit: bool = True,
          refills: list[tuple[str, int, Sequence[tuple[int, int]]]] = ()) -> list[bytes]:
    """One batch: the table (created if missing, else left alone: a dormant one stays so until the
    transaction that follows wakes it), then each ``(name, IP version, prefixes)`` of ``sets`` as a new
    interval set with its elements, and each of ``refills`` (existing sets) flushed and filled again.
    Without ``commit`` the batch has no end: the kernel checks every message and aborts (what ``nft
    -c`` does)."""
    tname = _nla(NFTA_TABLE_NAME, table.encode() + b"\0")
    msgs = [_message(NFNL_MSG_BATCH_BEGIN, 0, socket.AF_UNSPEC, b"", NFNL_SUBSYS_NFTABLES),
            _message(NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWTABLE, 1, NFPROTO_INET, tname)]
    for set_id, (name, version, prefixes) in enumerate(sets, 1):
        ref = tname + _nla(NFTA_SET_NAME, name.encode() + b"\0")
        msgs.append(_message(NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWSET, len(msgs), NFPROTO_INET, ref + b"".join((
            _nla(NFTA_SET_FLAGS, struct.pack(">I", NFT_SET_INTERVAL)),
            _nla(NFTA_SET_KEY_TYPE, struct.pack(">I", KEY_TYPE[version])),
            _nla(NFTA_SET_KEY_LEN, struct.pack(">I", 4 if version == 4 else 16)),
            _nla(NFTA_SET_ID, struct.pack(">I", set_id)), _nla(NFTA_SET_USERDATA, KEY_BIG_ENDIAN)))))
        _add_elements(msgs, ref, elements(version, prefixes))
    for name, version, prefixes in refills:
        ref = tname + _nla(NFTA_SET_NAME, name.encode() + b"\0")
        # a DELSETELEM without elements flushes the set; the kernel applies it and the fill at once
        msgs.append(_message(NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_DELSETELEM, len(msgs), NFPROTO_INET, ref))
        _add_elements(msgs, ref, elements(version, prefixes))
    if commit:
        msgs.append(_message(NFNL_MSG_BATCH_END, len(msgs), socket.AF_UNSPEC, b"", NFNL_SUBSYS_NFTABLES))
    return msgs


def _add_elements(msgs: list[bytes], ref: bytes, elems: Iterable[bytes]) -> None:
    """Append NEWSETELEM messages carrying ``elems`` to the set ``ref`` names, as few as fit, each
    written as its elements come (a million prefixes are never all in memory as elements)."""
    chunk: list[bytes] = []
    size = 0
    for e in elems:
        if size + len(e) > ELEMENTS_MAX - 64:
            msgs.append(_elements_message(ref, len(msgs), chunk))
            chunk, size = [], 0
        chunk.append(e)
        size += len(e)
    if chunk:
        msgs.append(_elements_message(ref, len(msgs), chunk))


def _elements_message(ref: bytes, seq: int, chunk: list[bytes]) -> bytes:
    return _message(NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWSETELEM, seq, NFPROTO_INET,
                    ref + _nest(NFTA_SET_ELEM_LIST_ELEMENTS, b"".join(chunk)))


def timed_batch(table: str, name: str, rows: list[tuple[bytes, int]]) -> list[bytes]:
    """One batch adding ``(key, timeout in ms)`` elements to the existing set ``name``: what ``nft add
    element`` sends (no NLM_F_EXCL: an element already there is no error and keeps its own timeout),
    without libnftables' JSON of 65,536 elements (seconds of CPU and hundreds of MB)."""
    msgs = [_message(NFNL_MSG_BATCH_BEGIN, 0, socket.AF_UNSPEC, b"", NFNL_SUBSYS_NFTABLES)]
    _add_elements(msgs, _set_ref(name, table), [
        _key_element(key, _nla(NFTA_SET_ELEM_TIMEOUT, struct.pack(">Q", ms))) for key, ms in rows])
    msgs.append(_message(NFNL_MSG_BATCH_END, len(msgs), socket.AF_UNSPEC, b"", NFNL_SUBSYS_NFTABLES))
    return msgs


def send(msgs: list[bytes], what: str) -> None:
    """Send one batch and wait for the kernel's answer to each message; the first error raises
    BackendError (the kernel has then committed nothing)."""
    # one sendmsg is one batch, of at most IOV_MAX buffers: messages are joined only past that many
    # (a million prefixes' batch joined whole held 40 MB more); b"".join of one message is that message
    group = -(-len(msgs) // IOV_MAX)
    buffers = [b"".join(msgs[i:i + group]) for i in range(0, len(msgs), group)]
    size = sum(map(len, buffers))
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, size + (1 << 16))  # needs CAP_NET_ADMIN, as all of this
        # the kernel queues every acknowledgement at once after the batch: ~250 of them overflow the default
        # 208 kB, and the batch commits while recv says ENOBUFS
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, len(msgs) * ACK_ROOM + (1 << 16))
        sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)  # an error carries the header of the message, not its 60 kB
        sock.bind((0, 0))
        sock.settimeout(30)
        sock.sendmsg(buffers)
        waiting = {seq for _len, mtype, _flags, seq, _pid in map(_NLMSG.unpack_from, msgs)
                   if mtype not in (NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END)}  # the two the kernel never answers
        while waiting:
            buf = sock.recv(1 << 16)
            for mtype, start, end in _messages(buf):
                if mtype != NLMSG_ERROR or end - start < _NLMSG.size + 4:
                    continue
                err = -struct.unpack_from("=i", buf, start + _NLMSG.size)[0]
                if err:
                    raise BackendError(what, f"the kernel refused the element batch: {os.strerror(err)}")
                waiting.discard(_NLMSG.unpack_from(buf, start)[3])
    except OSError as exc:
        raise BackendError(what, f"the element batch: {exc.strerror or exc}") from None
    finally:
        sock.close()
