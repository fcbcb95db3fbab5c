"""An IPv6 source is its /64 everywhere: in the kernel's meters, counts, connection limits and bans (both
backends), in ``nodeguard unban`` and in the sampler's per-source estimates. No kernel needed.

The addresses differ inside one /64 (same key) and across /48-/64 (same /48, different keys): a key cut at
/48 would merge the two /64s, one cut at /128 would split the first; ``fd00::5`` alone cannot tell /48 from /64.
"""

from __future__ import annotations

import ipaddress
import re

import pytest

from guard.aggregate import Window, source_key
from guard.apply import sampling_settings
from guard.bans import key_of
from guard.model.build import build_ruleset
from guard.model.plans import Priorities
from guard.model.ruleset import V6_SOURCE_PREFIX, AddrSet, RuleSet
from guard.packet import Packet
from guard.policy.load import parse_policy
from guard.policy.rates import Rate
from guard.render import ipt as render_ipt
from guard.render import nft as render_nft

SAME_64 = ("2001:db8:1:2::5", "2001:db8:1:2:ffff:ffff:ffff:fffe", "2001:db8:1:2:a::1")
KEY_64 = "2001:db8:1:2::"
NEXT_64 = "2001:db8:1:3::5"  # same /48 (2001:db8:1::/48), another /64
NEXT_KEY = "2001:db8:1:3::"


def test_unban_keys_an_ipv6_address_on_its_64():
    assert {key_of(a) for a in SAME_64} == {key_of(f"{KEY_64}/64")} == {(KEY_64, 6)}
    assert key_of(NEXT_64) == (NEXT_KEY, 6)


def test_the_sampler_keys_an_ipv6_source_on_its_64():
    assert {source_key(a) for a in SAME_64} == {KEY_64}
    assert source_key(NEXT_64) == NEXT_KEY
    assert source_key("192.0.2.7") == "192.0.2.7"


def test_per_source_estimates_follow_the_kernels_64_counts():
    """The kernel counted 300 packets for the first /64 and 90 for the next one: each /64's count is split
    over its own sampled flows, and nothing is left for the rest."""
    w = Window(0.0, 100)
    for src, n in ((SAME_64[0], 2), (SAME_64[1], 1), (NEXT_64, 3)):
        for _ in range(n):
            w.add("syn-flood", Packet(6, src, "2001:db8::1", "tcp", 1234, 80, "S", 64, 60), "eth0", 1.0)
    group = ("syn-flood", "enforce")
    recs = w.records(10.0, {group: 390}, {group: {KEY_64: 300, NEXT_KEY: 90}})
    estimated = {r["src"]: r["estimated"] for r in recs if r["type"] == "flow"}
    assert estimated == {SAME_64[0]: 200, SAME_64[1]: 100, NEXT_64: 90}


def test_the_model_keys_ipv6_sources_on_64():
    assert V6_SOURCE_PREFIX == 64
    s = AddrSet("x", 6, "meter", size=16, timeout_s=1, rate=Rate(1, "second", 1))
    assert s.keyed_by_prefix and s.prefix_len == 64


def _ruleset() -> RuleSet:
    policy = parse_policy("interfaces: [eth0]\nconnlimit:\n  - ports: [80]\n    per_source: 9\n", "p.yaml")
    return build_ruleset(policy, ("eth0",), Priorities(), sampling_settings(policy, "nflog"))


def _keys(prefix_len: int) -> tuple[set, str]:
    """The keys SAME_64 get under a mask of ``prefix_len`` bits, and NEXT_64's."""
    def key(a: str) -> str:
        return str(ipaddress.ip_network(f"{a}/{prefix_len}", strict=False).network_address)
    return {key(a) for a in SAME_64}, key(NEXT_64)


def test_the_nft_render_masks_every_keyed_ipv6_source_to_its_64():
    rs = _ruleset()
    rules = render_nft.render_nft(rs).rules
    masks = []

    def walk(x):
        if isinstance(x, dict):
            if "&" in x and x["&"][0] == {"payload": {"protocol": "ip6", "field": "saddr"}}:
                masks.append(x["&"][1])
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
    walk([r["expr"] for r in rules])
    keyed = [s for s in rs.sets if s.version == 6 and s.keyed_by_prefix]
    assert len(masks) >= len(keyed) >= 8  # meters, counts, connection counts, escalation sets
    for mask in set(masks):
        m = int(ipaddress.IPv6Address(mask))
        assert {int(ipaddress.IPv6Address(a)) & m for a in SAME_64} == {int(ipaddress.IPv6Address(KEY_64))}, mask
        assert int(ipaddress.IPv6Address(NEXT_64)) & m == int(ipaddress.IPv6Address(NEXT_KEY)), mask


def test_the_iptables_render_masks_every_keyed_ipv6_source_to_its_64():
    rs = _ruleset()
    text = _ipt_text(rs)
    found = re.findall(r"(?:--hashlimit-srcmask|--connlimit-mask|^create \S+ hash:ip .*netmask) (\d+)", text, re.M)
    keyed = [s for s in rs.sets if s.version == 6 and s.keyed_by_prefix and s.kind != "conns"]  # ipsets
    assert len(re.findall(r"^create \S+ hash:ip .*netmask", text, re.M)) == len(keyed) >= 6
    meters = [s for s in rs.sets if s.version == 6 and s.kind == "meter"]  # a hashlimit each
    assert len(re.findall(r"--hashlimit-srcmask", text)) == len(meters) >= 4 and "--connlimit-mask" in text
    for bits in {int(b) for b in found}:
        same, other = _keys(bits)
        assert same == {KEY_64} and other == NEXT_KEY, f"an IPv6 source keyed on /{bits}"


def _ipt_text(rs: RuleSet) -> str:
    from guard.sync import ipt as sync_ipt
    renders = {6: render_ipt.render_ipt(rs, 6)}
    return sync_ipt.build("nft", renders, render_ipt.ipsets(rs), {}, {}, {}, families=(6,)).text()


@pytest.mark.parametrize("bits,merged,split", [(48, True, False), (64, False, False), (128, False, True)])
def test_the_addresses_tell_48_64_and_128_apart(bits, merged, split):
    """The test data itself: only a /64 key gives SAME_64 one key and NEXT_64 another."""
    same, other = _keys(bits)
    assert (other in same) == merged and (len(same) > 1) == split
