"""The sampler's per-source counts between windows (guard/persource.py) and the set-element dump they
are read from (guard/backend/nfnetlink.py), on crafted netlink bytes."""

from __future__ import annotations

import struct

from guard.aggregate import source_key
from guard.backend import nfnetlink as nl
from guard.persource import LastCounts, address, key_of


def _read(last: LastCounts, rows, quiet=None) -> dict[int, int]:
    return dict(last.since("s", rows, quiet))


def test_counts_since_the_last_read_and_a_count_that_went_down_is_new():
    last = LastCounts()
    assert _read(last, [(7, 10), (3, 5)]) == {7: 10, 3: 5}  # the first read: all new
    assert _read(last, [(3, 9), (7, 4), (11, 2)]) == {3: 4, 7: 4, 11: 2}  # 7 went down: reset, all new
    assert _read(last, [(11, 2), (3, 9), (7, 4)]) == {11: 0, 3: 0, 7: 0}  # any order


def test_quiet_sources_are_handed_back_and_forgotten():
    last = LastCounts()
    _read(last, [(1, 5), (2, 5)])
    quiet: list[int] = []
    assert _read(last, [(1, 5), (2, 8)], quiet) == {1: 0, 2: 3}
    assert quiet == [1]
    assert _read(last, [(1, 6)]) == {1: 6}  # removed by the caller, then back: counted from zero


def test_keep_forgets_sets_gone_with_a_reload():
    last = LastCounts()
    _read(last, [(1, 5)])
    last.keep(["other"])
    assert _read(last, [(1, 5)]) == {1: 5}


def test_keys_and_addresses_match_the_kernel_and_the_samples():
    for src in ("192.0.2.7", "2001:db8:0:1:aaaa::5", "fd00::", "2001:db8:1:2:3:4:5:6"):
        version = 6 if ":" in src else 4
        assert address(key_of(src), version) == source_key(src)
    assert key_of("10.0.0.1") == 0x0A000001 and key_of("2001:db8::/64".split("/")[0]) == 0x20010DB800000000


def _counter(packets: int) -> bytes:
    return nl._nla(nl.NFTA_EXPR_NAME, b"counter\0") + nl._nla(nl.NFTA_EXPR_DATA, nl._nla(
        nl.NFTA_COUNTER_BYTES, struct.pack(">Q", 64 * packets)) + nl._nla(nl.NFTA_COUNTER_PACKETS, struct.pack(">Q", packets)))


def _elem(key: bytes, exprs: bytes) -> bytes:
    return nl._nla(nl.NFTA_LIST_ELEM, nl._nla(nl.NFTA_SET_ELEM_KEY, nl._nla(nl.NFTA_DATA_VALUE, key)) + exprs)


def _message(mtype: int, body: bytes) -> bytes:
    return nl._NLMSG.pack(nl._NLMSG.size + len(body), mtype, 0, 1, 0) + body


def test_a_dump_datagram_gives_each_counted_element_and_skips_malformed_ones():
    elements = (_elem(bytes([10, 0, 0, 1]), nl._nla(nl.NFTA_SET_ELEM_EXPR, _counter(5)))  # one expression
                + _elem(bytes([10, 0, 0, 2]), nl._nla(nl.NFTA_SET_ELEM_EXPRESSIONS,  # a list of them
                                                     nl._nla(nl.NFTA_LIST_ELEM, _counter(7))))
                + _elem(bytes([10, 0, 0, 3]), b"")  # no counter: left out
                + nl._nla(nl.NFTA_LIST_ELEM, nl._nla(nl.NFTA_SET_ELEM_EXPR, _counter(9))))  # no key: left out
    newsetelem = (nl.NFNL_SUBSYS_NFTABLES << 8) | (nl.NFT_MSG_GETSETELEM - 1)
    body = struct.pack("=BBH", nl.NFPROTO_INET, 0, 0) + nl._nla(nl.NFTA_SET_ELEM_LIST_ELEMENTS, elements)
    buf = _message(newsetelem, body)
    assert nl.parse_set_counters(buf) == ([(bytes([10, 0, 0, 1]), 5), (bytes([10, 0, 0, 2]), 7)], False, 0)
    assert nl.parse_set_counters(buf + _message(nl.NLMSG_DONE, b"\0" * 4))[1] is True
    for cut in range(len(buf)):  # a truncated datagram: what is whole, never an exception
        rows, _done, _err = nl.parse_set_counters(buf[:cut])
        assert set(rows) <= {(bytes([10, 0, 0, 1]), 5), (bytes([10, 0, 0, 2]), 7)}
    assert nl.parse_set_counters(_message(nl.NLMSG_ERROR, struct.pack("=i", -2)))[2] == 2
