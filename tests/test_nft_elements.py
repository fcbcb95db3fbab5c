"""An address set's elements read back from nft's text listing (backend/nft_elements.py) in the
shapes its JSON listing gives, or None for anything but plain elements, so that the JSON listing
decides. The listings are nft 1.0.6's own (the same sets listed with -j gave the shapes expected)."""

from __future__ import annotations

import pytest

from guard.backend.nft_elements import address_elements

V4 = ("table inet t {\n\tset a4 {\n\t\ttype ipv4_addr\n\t\tflags interval\n\t\telements = { 1.2.3.0/24, 1.2.4.0/24,\n"
      "\t\t\t     10.0.0.0/8, 172.16.0.0-172.16.0.5,\n\t\t\t     192.168.1.1 }\n\t}\n}\n")
V6 = ("table inet t {\n\tset a6 {\n\t\ttype ipv6_addr\n\t\tflags interval\n\t\telements = { ::1,\n"
      "\t\t\t     ::ffff:1.2.3.4,\n\t\t\t     2001:db8::/32,\n\t\t\t     fe80::1-fe80::5 }\n\t}\n}\n")
EMPTY = "table inet t {\n\tset e4 {\n\t\ttype ipv4_addr\n\t\tflags interval\n\t}\n}\n"


def test_plain_elements_read_as_the_json_listing_gives_them():
    assert address_elements(V4) == [{"prefix": {"addr": "1.2.3.0", "len": 24}},
                                    {"prefix": {"addr": "1.2.4.0", "len": 24}}, {"prefix": {"addr": "10.0.0.0", "len": 8}},
                                    {"range": ["172.16.0.0", "172.16.0.5"]}, "192.168.1.1"]
    assert address_elements(V6) == ["::1", "::ffff:1.2.3.4", {"prefix": {"addr": "2001:db8::", "len": 32}},
                                    {"range": ["fe80::1", "fe80::5"]}]
    assert address_elements(EMPTY) == []


@pytest.mark.parametrize("elements", [
    '10.0.0.0/8 comment "a, b } c", 11.0.0.1',  # a comment (anyone's text), with the separators in it
    "10.0.0.0/8 timeout 1h expires 59m59s672ms",
    "10.0.0.1 counter packets 0 bytes 0, 10.0.0.2 counter packets 0 bytes 0",
    "80, 443",  # not addresses
    "10.0.0.0/8,",
    "10.0.0.0/8 10.0.0.1",
    "\x1b[31m10.0.0.1",
])
def test_anything_else_is_left_to_the_json_listing(elements):
    assert address_elements(V4.split("elements = {")[0] + "elements = { " + elements + " }\n\t}\n}\n") is None


def test_a_listing_that_does_not_end_with_its_set_is_left_to_the_json_listing():
    assert address_elements(V4 + V4) is None
    assert address_elements(V4.replace(" }\n\t}\n}\n", " }\n\t\tcomment \"x\"\n\t}\n}\n")) is None
    assert address_elements(EMPTY.replace("flags interval", "flags interval\n\t\telements")) is None
