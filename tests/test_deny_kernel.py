"""Deny lists and manual bans with real packets (nft): a source in a denied prefix is dropped by the
ban check at the head of ``filter-prerouting``, an allowlisted address inside it is not; ``ban CIDR
--for`` drops a prefix, ``bans`` shows it with its expiry, ``unban`` lifts it. Pings, judged by what
the client sees and by the ban rules' counters."""

from __future__ import annotations

import json
import os
import sys

import pytest

import netlab
from netlab import ATTACKER4, ATTACKER6, LEGIT4, LEGIT6, TRUSTED4, VICTIM4, VICTIM6

from guard.model.build import STATELESS_CHAIN as BANS  # the ban check heads the stateless chain

VERIFY_S = 1.0  # the watcher's periodic verification in these tests
REFILLED_WITHIN_S = 2 * VERIFY_S  # a strike raises an event: refilled at once, well within two cycles


def _replies(attacker, src: str, dst: str) -> int:
    return netlab.ping_stats(attacker.run(["ping", "-6" if ":" in dst else "-4", "-c", "2", "-i", "0.2", "-W", "1",
                                           "-I", src, dst], check=False).stdout)[1]


def test_denied_sources_are_dropped_unless_allowlisted_and_bans_by_hand_come_and_go(
        lab, write_policy, tmp_path):
    victim, attacker = lab
    os.chmod(tmp_path, 0o755)
    deny = tmp_path / "deny.txt"
    # ATTACKER4 (.2) and LEGIT4 (.3) are in 10.77.0.0/30, ATTACKER6 alone in its /128; .3 and LEGIT6 allowlisted
    deny.write_text(f"# blocklist\n10.77.0.0/30 ; both\n{ATTACKER6}\n")
    os.chmod(deny, 0o644)
    # 198.51.100.0/24 and 2001:db8:ffff::/48: prefixes no lab address is in, so the allowlists hold both shapes
    policy = write_policy(f"allow:\n  cidrs: [{LEGIT4}/32, {LEGIT6}/128, 198.51.100.0/24, 2001:db8:ffff::/48]\n"
                          f"deny:\n  files: [{deny}]\n")
    victim.nodeguard("apply", "-c", policy)
    listed = {n: victim.nft_json(f"set inet nodeguard {n}")[1]["set"]["elem"] for n in ("allow-v4", "allow-v6")}
    read = victim.run([sys.executable, "-c", "import json; from guard.backend.nft import Nft, read_live; "
                       "from guard.backend.nft_elements import address_elements; nft = Nft(); print(json.dumps(["
                       f"read_live(nft, 'inet', 'nodeguard', {sorted(listed)!r}).static_elements, "
                       "{n: address_elements(nft.text("
                       f"'set inet nodeguard ' + n)) for n in {sorted(listed)!r}}}]))"]).stdout
    live, from_text = json.loads(read)  # what a re-apply reads, and the text listing's reading alone
    assert {n: e for n, e in live.items() if n in listed} == from_text == listed

    assert _replies(attacker, ATTACKER4, VICTIM4) == 0
    assert _replies(attacker, LEGIT4, VICTIM4) == 2
    assert _replies(attacker, ATTACKER6, VICTIM6) == 0
    assert _replies(attacker, LEGIT6, VICTIM6) == 2
    counters = victim.counters()
    assert counters[f"{BANS}: denied v4 source"] >= 2 and counters[f"{BANS}: denied v6 source"] >= 2
    meters = json.loads(victim.nodeguard("status", "--json", "-c", policy).stdout)["meters"]
    assert sorted((m["set"], m["elements"]) for m in meters if m["kind"] == "deny") == [("deny-v4", 1), ("deny-v6", 1)]

    # TRUSTED4 (.4) is in no deny list: banned by hand, then lifted
    assert _replies(attacker, TRUSTED4, VICTIM4) == 2
    out = victim.nodeguard("ban", "10.77.0.4/30", "--for", "5s", "--reason", "scanner", "-c", policy).stdout
    assert out.strip() == "banned 10.77.0.4/30 for 5 s"
    bans = json.loads(victim.nodeguard("bans", "--json", "-c", policy).stdout)["bans"]
    assert [(b["source"], b["by"], b["reason"]) for b in bans] == [("10.77.0.4/30", "hand", "scanner")]
    assert 0 < bans[0]["expires_in_s"] <= 5
    assert _replies(attacker, TRUSTED4, VICTIM4) == 0
    assert victim.counters()[f"{BANS}: banned by hand v4"] >= 2
    # banned again: the new expiry and reason replace the old ones
    victim.nodeguard("ban", "10.77.0.4/30", "--for", "1h", "--reason", "again", "-c", policy)
    bans = json.loads(victim.nodeguard("bans", "--json", "-c", policy).stdout)["bans"]
    assert [(b["source"], b["reason"]) for b in bans] == [("10.77.0.4/30", "again")] and bans[0]["expires_in_s"] > 3000
    assert victim.nodeguard("unban", "10.77.0.4/30", "-c", policy).stdout.strip() == "unbanned 10.77.0.4/30"
    assert json.loads(victim.nodeguard("bans", "--json", "-c", policy).stdout)["bans"] == []
    assert _replies(attacker, TRUSTED4, VICTIM4) == 2


def test_ipv4_mapped_prefixes_deny_allow_and_ban_the_ipv4_sources_they_map(lab, write_policy, tmp_path):
    """On the wire an IPv4 source is never ::ffff:a.b.c.d: a mapped prefix typed anywhere is the IPv4 one."""
    victim, attacker = lab
    os.chmod(tmp_path, 0o755)
    deny = tmp_path / "deny.txt"
    deny.write_text("::ffff:10.77.0.0/126\n")  # 10.77.0.0/30: ATTACKER4 (.2) and LEGIT4 (.3)
    os.chmod(deny, 0o644)
    policy = write_policy(f"allow:\n  cidrs: ['::ffff:{LEGIT4}']\ndeny:\n  files: [{deny}]\n")
    victim.nodeguard("apply", "-c", policy)
    assert _replies(attacker, ATTACKER4, VICTIM4) == 0
    assert _replies(attacker, LEGIT4, VICTIM4) == 2
    assert victim.counters()[f"{BANS}: denied v4 source"] >= 2

    assert _replies(attacker, TRUSTED4, VICTIM4) == 2
    out = victim.nodeguard("ban", f"::ffff:{TRUSTED4}", "--for", "1m", "-c", policy).stdout
    assert out.strip() == f"banned {TRUSTED4}/32 for 60 s"
    assert _replies(attacker, TRUSTED4, VICTIM4) == 0
    assert victim.counters()[f"{BANS}: banned by hand v4"] >= 2
    assert victim.nodeguard("unban", f"::ffff:{TRUSTED4}", "-c", policy).stdout.strip() == f"unbanned {TRUSTED4}/32"
    assert _replies(attacker, TRUSTED4, VICTIM4) == 2


@pytest.mark.calm
def test_a_full_manual_set_is_one_line_its_fill_counts_prefixes_and_a_reason_never_forges_a_line(
        lab, write_policy, tmp_path):
    victim, _attacker = lab
    policy = write_policy("deny:\n  manual_size: 16\n")
    victim.nodeguard("apply", "-c", policy)
    name = next(s["set"]["name"] for s in victim.nft_json("sets")
                if s.get("set", {}).get("name", "").startswith("manual-v4"))
    # 16 bans at once (one process, not 16), one of them with a comment no `nodeguard ban` would write
    elems = [{"elem": {"val": {"prefix": {"addr": f"10.{i}.0.0", "len": 16}},
                       **({"comment": "x\n  9.9.9.9/32  expires in never  forged"} if i == 1 else {})}}
             for i in range(1, 17)]
    (tmp_path / "fill.json").write_text(json.dumps({"nftables": [{"add": {"element": {
        "family": "inet", "table": "nodeguard", "name": name, "elem": elems}}}]}))
    victim.run(f"nft -j -f {tmp_path / 'fill.json'}")

    full = victim.nodeguard("ban", "10.17.0.0/16", "-c", policy, check=False)
    assert (full.returncode, full.stderr.strip()) == (2, "nodeguard: the manual ban set is full (deny.manual_size 16): "
                                                         "unban some or raise it")
    fill = [(m["elements"], m["size"]) for m in victim.status(policy)["meters"] if m["set"] == "manual-v4"]
    assert fill == [(16, 16)]  # 16 prefixes, not their 32 start and end elements
    listing = victim.nodeguard("bans", "-c", policy).stdout
    assert len(listing.splitlines()) == 17 and not any(ln.lstrip().startswith("9.9.9.9") for ln in listing.splitlines())


def _kernel_prefixes(ns, family: str) -> list[str]:
    """The prefixes the kernel holds in the deny set of ``family``, as nft lists them (a /32 or /128 bare)."""
    name = next(s["set"]["name"] for s in ns.nft_json("sets") if s.get("set", {}).get("name", "").startswith(family))
    full = next(o["set"] for o in ns.nft_json(f"set inet nodeguard {name}") if "set" in o)
    return [f"{e['prefix']['addr']}/{e['prefix']['len']}" if isinstance(e, dict) else e for e in full.get("elem", [])]


def test_the_deny_sets_filled_by_their_own_batch_hold_the_merged_prefixes(ns, write_policy, tmp_path):
    """The new deny sets are created and filled by a raw nfnetlink batch (backend/nft_fill.py), the rules
    then moved to them: the kernel holds exactly the merged prefixes, the first and last of each family's
    space included (no end element after them); --dry-run checks the batch and leaves nothing behind."""
    netlab.add_uplink(ns)
    os.chmod(tmp_path, 0o755)
    deny = tmp_path / "deny.txt"
    deny.write_text("0.0.0.0/8\n0.1.2.3\n10.0.0.0/8\n10.9.0.0/16\n10.255.255.255\n11.0.0.0/8\n255.0.0.0/8\n"
                    "192.0.2.7\n2001:db8::/32\n2001:db8:1::/48\n2001:db9::1\nff00::/8\n")
    os.chmod(deny, 0o644)
    policy = write_policy(f"deny:\n  files: [{deny}]\n")

    dry = ns.nodeguard("apply", "--dry-run", "-c", policy).stdout
    assert dry.startswith("# first, a transaction of its own (one nfnetlink batch): the new deny sets")
    assert '{"prefix":{"addr":"255.0.0.0","len":8}}' in dry and [o for o in ns.nft_json("tables") if "table" in o] == []

    ns.nodeguard("apply", "-c", policy)
    assert _kernel_prefixes(ns, "deny-v4") == ["0.0.0.0/8", "10.0.0.0/8", "11.0.0.0/8", "192.0.2.7", "255.0.0.0/8"]
    assert _kernel_prefixes(ns, "deny-v6") == ["2001:db8::/32", "2001:db9::1", "ff00::/8"]
    status = ns.status(policy)
    assert sorted((m["set"], m["elements"]) for m in status["meters"] if m["kind"] == "deny") == [
        ("deny-v4", 5), ("deny-v6", 3)]
    assert status["in_sync"]


@pytest.mark.parametrize("sets", [300, 600])
def test_a_fill_batch_of_many_messages_reads_every_acknowledgement(ns, sets):
    """The kernel queues a batch's acknowledgements all at once after it: ~250 of them overflowed the
    socket's default receive buffer, and the fill failed with ENOBUFS although the kernel had committed
    it. A deny list of 400,000 IPv4 or 300,000 IPv6 prefixes is that many element messages; 300 one-prefix
    sets (601 messages) are a quicker batch of as many. A million IPv6 prefixes are more messages than
    one sendmsg takes buffers (IOV_MAX, 1024): 600 sets (1201 messages) are one batch all the same."""
    script = ("from guard.backend import nft_fill; nft_fill.send(nft_fill.batch('ngfill', "
              f"[(f's{{i}}', 4, [((10 << 24) + (i << 8), 24)]) for i in range({sets})]), 'test')")
    ns.run([sys.executable, "-c", script])
    assert len([s for s in ns.nft_json("sets") if s.get("set", {}).get("table") == "ngfill"]) == sets


def _deny_count(ns, name: str) -> int:
    """Elements the kernel holds in deny set ``name``, counted as the watcher counts them."""
    out = ns.run([sys.executable, "-c", "from guard.backend.nfnetlink import nft_set_sizes; "
                  f"print(nft_set_sizes([{name!r}])[{name!r}])"]).stdout
    return int(out)


def test_a_deny_set_emptied_or_thinned_from_outside_is_refilled_and_drops_again(lab, tmp_path):
    """A flush of a deny set (or a deleted element) leaves its definition: the watcher counts the
    kernel's elements against the render's and refills the set in one batch. Also a set of that name
    already there, and empty, when the daemon starts is refilled, not adopted."""
    from test_daemon import Run, metrics, write

    victim, attacker = lab
    os.chmod(tmp_path, 0o755)
    deny = tmp_path / "deny.txt"
    deny.write_text(f"10.77.0.0/30\n192.0.2.0/24\n198.51.100.7\n{ATTACKER6}\n")  # ATTACKER4 is 10.77.0.2
    os.chmod(deny, 0o644)
    policy = write(tmp_path / "p.yaml", f"deny:\n  files: [{deny}]\nsampler:\n  enabled: false\n"
                   f"  log: {tmp_path}/attacks.jsonl\nwatcher:\n  state_file: {tmp_path}/watch.json\n"
                   f"  verify_interval_s: {VERIFY_S}\n  snapshot_file: {tmp_path}/sets.json\n")
    victim.nodeguard("apply", "-c", policy)
    name = next(s["set"]["name"] for s in victim.nft_json("sets")
                if s.get("set", {}).get("name", "").startswith("deny-v4-"))
    assert _deny_count(victim, name) == 3
    victim.run(f"nft flush set inet nodeguard {name}")  # there before the daemon, empty: not adopted
    assert _replies(attacker, ATTACKER4, VICTIM4) == 2
    run = Run(victim, tmp_path, policy)
    try:
        run.wait_ready()
        assert _deny_count(victim, name) == 3, run.log[-3000:]
        assert _replies(attacker, ATTACKER4, VICTIM4) == 0
        for strike in (f"flush set inet nodeguard {name}", f"delete element inet nodeguard {name} {{ 192.0.2.0/24 }}"):
            repairs = json.loads((tmp_path / "watch.json").read_text())["repairs"]
            victim.run(f"nft {strike}")
            took = netlab.wait_until(lambda: _deny_count(victim, name) == 3, timeout=REFILLED_WITHIN_S, interval=0.02)
            print(f"\n{strike.split(' inet')[0]}: refilled {took * 1000:.0f} ms after the strike")
            netlab.wait_until(lambda: json.loads((tmp_path / "watch.json").read_text())["repairs"] > repairs,
                              timeout=2, interval=0.02)  # published at the end of the loop's turn
            dropped = victim.counters()[f"{BANS}: denied v4 source"]
            assert _replies(attacker, ATTACKER4, VICTIM4) == 0
            assert victim.counters()[f"{BANS}: denied v4 source"] >= dropped + 2
            st = json.loads((tmp_path / "watch.json").read_text())
            assert st["repairs"] == repairs + 1 and st["last_kind"] == "deny_elements", st
            assert st["last_repair_ms"] < 1000, st  # measured ~40 ms: the batch of 3 prefixes and the check
        netlab.wait_until(lambda: metrics(victim).get(("nodeguard_repairs_total", (("reason", "deny_elements"),)))
                          == 2, timeout=5, interval=0.2)
    finally:
        assert run.stop() == 0, run.log[-4000:]


def test_the_probe_finds_a_deleted_prefix_a_flush_and_a_key_inside_an_interval(ns):
    """nft_fill.absent_key looks sampled prefixes up in one request (no dump): every start present is
    None; a deleted prefix, a flushed set or a key inside an interval but at no start is absent (the
    kernel answers an inner key with its interval's start); an IPv6 prefix reaching the last address
    (no end element) is found."""
    v4 = [(10 << 24, 8), ((192 << 24) + (2 << 8), 24), ((198 << 24) + (51 << 16) + (100 << 8) + 7, 32)]
    v6 = [(0x20010db8 << 96, 32), (0xff << 120, 8)]
    script = f"""
import json
from guard.backend import nft_fill
from guard.backend.nft_fill import absent_key
nft_fill.send(nft_fill.batch('ngprobe', [('s4', 4, {v4!r}), ('s6', 6, {v6!r})]), 'test')
probe = lambda name, version, prefixes: absent_key(name, nft_fill.sample_keys(version, prefixes), 'ngprobe')
print(json.dumps([probe('s4', 4, {v4!r}), probe('s6', 6, {v6!r}),
                  absent_key('s4', [bytes([10, 1, 0, 0])], 'ngprobe')], default=bytes.hex))
"""
    assert json.loads(ns.run([sys.executable, "-c", script]).stdout) == [None, None, "0a010000"]
    after = ("import sys; from guard.backend import nft_fill; from guard.backend.nft_fill import absent_key; "
             f"k = nft_fill.sample_keys(4, {v4!r}); r = absent_key('s4', k, 'ngprobe'); print(r.hex() if r else None)")
    ns.run("nft delete element inet ngprobe s4 { 192.0.2.0/24 }")
    assert ns.run([sys.executable, "-c", after]).stdout.strip() == "c0000200"
    ns.run("nft flush set inet ngprobe s4")
    assert ns.run([sys.executable, "-c", after]).stdout.strip() == "0a000000"


def test_apply_probes_a_thinned_deny_set_and_replaces_one_of_another_type(ns, write_policy, tmp_path):
    """`apply` (no watcher, no events) finds a deny set that lacks a sampled prefix and refills it; a set
    of that name and another key type is replaced, never probed (its keys would be refused: EINVAL)."""
    netlab.add_uplink(ns)
    os.chmod(tmp_path, 0o755)
    deny = tmp_path / "deny.txt"
    deny.write_text("10.0.0.0/8\n192.0.2.7\n198.51.100.0/24\n")
    os.chmod(deny, 0o644)
    policy = write_policy(f"deny:\n  files: [{deny}]\n")
    ns.nodeguard("apply", "-c", policy)
    name = next(s["set"]["name"] for s in ns.nft_json("sets") if s.get("set", {}).get("name", "").startswith("deny-v4"))
    ns.run(f"nft delete element inet nodeguard {name} {{ 192.0.2.7 }}")
    assert not ns.in_sync(policy)
    ns.nodeguard("apply", "-c", policy)
    assert _kernel_prefixes(ns, "deny-v4") == ["10.0.0.0/8", "192.0.2.7", "198.51.100.0/24"] and ns.in_sync(policy)
    ns.run("nft delete table inet nodeguard")
    ns.run("nft add table inet nodeguard")
    ns.run(["nft", "add", "set", "inet", "nodeguard", name, "{ type ipv6_addr; flags interval; }"])
    ns.nodeguard("apply", "-c", policy)
    assert _kernel_prefixes(ns, "deny-v4") == ["10.0.0.0/8", "192.0.2.7", "198.51.100.0/24"] and ns.in_sync(policy)
