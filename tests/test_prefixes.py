"""Prefixes as integers (guard/prefixes.py) and JSON written once (guard/jsontext.py), pure: the fast
readings of a prefix (inet.py: prefixes.parse's integers, to_network's objects) agree with ipaddress
on every text they take and leave every other text to it (messages and all); the merge keeps exactly
the outermost prefixes; the text written is the address; JSON with written parts is json.dumps of
their values."""

from __future__ import annotations

import ipaddress
import json
import random

import pytest

from guard import prefixes
from guard.jsontext import JsonText, dumps
from guard.policy.fields import DROP_ALL, to_network


def _network(text: str, fast: bool):
    try:
        return to_network(text, DROP_ALL, fast=fast)
    except ValueError as exc:
        return str(exc)


def _ipaddress(text: str):
    n = _network(text, fast=False)
    return n if isinstance(n, str) else (n.version, int(n.network_address), n.prefixlen)


def _fast(text: str):
    """Both fast readings: prefixes.parse's integers, and to_network's object as integers, which
    must be the same object as ipaddress's."""
    try:
        ints = prefixes.parse(text, DROP_ALL)
    except ValueError as exc:
        ints = str(exc)
    net = _network(text, fast=True)
    assert net == _network(text, fast=False) and type(net) is type(_network(text, fast=False)), text
    return ints


TRICKY = ["1.2.3.4", "01.2.3.4", "1.2.3.04", "1.2.3.0/024", "1.2.3.0/+24", "1.2.3.0/ 24", "1.2.3.0/2_4",
          "1.2.3.0/255.255.255.0", "1.2.3.0/0.0.0.255", "1.2.3.0/٢٤", "١.2.3.4", "1.2.3", "1.2.3.4.5", "256.1.1.1",
          "1.2.3.4/32", "1.2.3.4/33", "1.2.3.4/-1", "0.0.0.0/0", "::/0", "::", "::1", "::ffff:1.2.3.4",
          "::ffff:01.2.3.4", "1::2:3:4:5:6:7:8", "1:2:3:4:5:6:7::", "1:2:3:4:5:6:7:8::", ":::", "1:::2", "fe80::1%eth0",
          "2001:db8::/32", "2001:DB8::/32", "2001:db8::1/32", "2001:0db8:0000::/48", "2001:db8:00000::/48",
          "2001:db8::/129", "1.2.3.4\x00", "1.2.3.4/\x00", "/24", "1.2.3.0/", "::/", "", " 1.2.3.4", "1.2.3.4 ",
          "0x1.2.3.4", "::ffff:1.2.3.0/120", "::ffff:1.2.3.4/128", "::ffff:0:0/96", "::ffff:0:0/95", "::ffff:0:0/97",
          "::ffff:1.2.3.4/120", "::ffff:0.0.0.0", "::FFFF:102:304", "0:0:0:0:0:ffff:1.2.3.4", "::fffe:1.2.3.4"]


@pytest.mark.parametrize("text", TRICKY)
def test_tricky_texts_read_as_ipaddress_reads_them(text):
    assert _fast(text) == _ipaddress(text)


def test_random_texts_read_as_ipaddress_reads_them():
    """Strings of the characters addresses are made of, shaped like addresses: whatever the fast
    path takes, ipaddress takes as the same prefix; the rest is ipaddress's own answer."""
    rnd = random.Random(20)
    alphabet = "0123456789abcdefABCDEF:./"
    texts = ["".join(rnd.choice(alphabet) for _ in range(rnd.randint(1, 24))) for _ in range(3000)]
    for _ in range(3000):  # mostly valid ones, then one character changed, dropped or doubled
        bits = rnd.choice((32, 128))
        length = rnd.randint(0, bits + 1)
        first = rnd.getrandbits(bits) >> max(bits - length, 0) << max(bits - length, 0)
        text = f"{ipaddress.ip_address(first if bits == 32 else first.to_bytes(16, 'big'))}/{length}"
        i = rnd.randrange(len(text))
        texts += [text, text[:i] + rnd.choice(alphabet) + text[i + 1:], text[:i] + text[i + 1:],
                  text[:i] + text[i] + text[i:]]
    disagree = [t for t in texts if _fast(t) != _ipaddress(t)]
    assert not disagree, disagree[:10]


def test_outermost_keeps_the_prefixes_no_other_holds():
    rnd = random.Random(5)
    for version, bits in ((4, 32), (6, 128)):
        nets = set()
        for _ in range(2000):
            length = rnd.randint(bits - 12, bits)
            net = ipaddress.ip_network((rnd.getrandbits(12) << (bits - 12) >> (bits - length) << (bits - length),
                                        length))
            nets.add(net)
            if rnd.random() < 0.2:  # a host at its last address, nested and sharing its end
                nets.add(ipaddress.ip_network((int(net.broadcast_address), bits)))
        # every length is bits-12 or more: a prefix that holds another is one of its supernets that long
        want = sorted((n for n in nets if not any(n.supernet(new_prefix=k) in nets
                                                  for k in range(bits - 12, n.prefixlen))),
                      key=lambda n: int(n.network_address))
        listed = [(int(n.network_address), n.prefixlen) for n in nets]
        got = prefixes.outermost(listed + listed[:50], version)  # every prefix listed once more
        assert got == [(int(n.network_address), n.prefixlen) for n in want]


@pytest.mark.parametrize("text", ["0.0.0.1", "10.20.30.40", "255.255.255.255", "2001:db8::", "::1", "fd00:1:2:3::5",
                                  "2001:db8:0:1:0:0:0:1", "::ffff:1.2.3.4", "1:2:3:4:5:6:7:8"])
def test_address_text_is_the_address(text):
    addr = ipaddress.ip_address(text)
    written = prefixes.address_text(addr.version, int(addr))
    assert ipaddress.ip_address(written) == addr
    if addr.version == 4:
        assert written == text


@pytest.mark.parametrize("version, width", [(4, 4), (6, 16)])
def test_a_list_is_packed_as_each_address_then_its_length(version, width):
    """The bytes a deny set's name digests (model/ruleset.py), in pieces: each address big-endian,
    then its length, across the pieces' bounds."""
    rnd = random.Random(version)
    listed = [(rnd.getrandbits(width * 8), rnd.randint(1, width * 8)) for _ in range(2 * prefixes.PACKED_AT_ONCE + 7)]
    want = b"".join(f.to_bytes(width, "big") + bytes((n,)) for f, n in listed)
    assert b"".join(prefixes.packed(version, listed)) == want
    assert b"".join(prefixes.packed(version, ())) == b""


def test_json_text_is_put_in_as_written():
    value = [{"prefix": {"addr": "10.0.0.0", "len": 8}}, {"prefix": {"addr": "fd00::", "len": 8}}]
    obj = {"nftables": [{"add": {"set": {"name": "deny-v4", "elem": JsonText(lambda: json.dumps(value))}}}],
           "other": "a string"}
    want = {**obj, "nftables": [{"add": {"set": {"name": "deny-v4", "elem": value}}}]}
    for kw in ({}, {"indent": 2, "sort_keys": True, "ensure_ascii": True}):
        assert json.loads(dumps(obj, **kw)) == want


def test_no_string_of_the_data_passes_for_json_text():
    """The placeholder carries a nonce of the call: data that spells one out stays a string."""
    planted = [f"{'0' * 16}:0", "\x00jsontext:0", '"]}', "{}:0".format("ab" * 8)]
    out = json.loads(dumps({"a": JsonText(lambda: "[1]"), "names": planted}))
    assert out == {"a": [1], "names": planted}


def test_anything_else_is_still_refused():
    with pytest.raises(TypeError):
        dumps({"a": object()})
