"""render.nft.address_text prints an address exactly as ``str()`` does (inet_ntop where the two
agree, which is faster, for big allowlists)."""

from __future__ import annotations

import ipaddress
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from guard.render.nft import address_text

# groups that are mostly zero, so that runs of every length and position (and ties) come up
_GROUP = st.one_of(st.just(0), st.just(0), st.just(1), st.just(0xFFFF), st.integers(0, 0xFFFF))


@settings(max_examples=3000)
@given(st.lists(_GROUP, min_size=8, max_size=8))
def test_ipv6_as_ipaddress_prints_it(groups):
    addr = ipaddress.IPv6Address(int.from_bytes(struct.pack("!8H", *groups), "big"))
    assert address_text(addr) == str(addr)


def test_edges():
    for text in ("::", "::1", "1::", "::ffff:1.2.3.4", "::1.2.3.4", "0:0:1::", "1:0:0:1:0:0:1:1", "1:0:1:0:1:0:1:0",
                 "2001:db8::", "2001:db8:0:0:1::", "fe80::1:0:0:1", "1:2:3:4:5:6:7:8", "0:1:2:3:4:5:6:7"):
        addr = ipaddress.IPv6Address(text)
        assert address_text(addr) == str(addr), text
    for text in ("0.0.0.0", "10.0.0.0", "255.255.255.255"):
        assert address_text(ipaddress.IPv4Address(text)) == text
