"""Deny lists and manual bans, pure: deny files as the common blocklists write them, merged with the
inline CIDRs into the two interval sets; bad lines, unsafe files and bad ``ban`` arguments are one
line and exit 2."""

from __future__ import annotations

import ipaddress
import json
import os

import pytest

from guard import manual
from guard.deny import deny_entries
from guard.errors import PolicyError
from guard.model.build import build_ruleset
from guard.model.plans import Priorities
from guard.policy.load import parse_policy


def parse_deny_text(text: str, file: str) -> dict[int, list]:
    """IP version -> the prefixes ``text`` lists, in its order (deny_entries grouped)."""
    out: dict[int, list] = {4: [], 6: []}
    for version, first, length in deny_entries(text, file):
        out[version].append((first, length))
    return out


def nets(*texts: str) -> list:
    return [(int(n.network_address), n.prefixlen) for n in map(ipaddress.ip_network, texts)]


def test_a_blocklist_with_comments_blank_lines_and_bare_addresses():
    text = ("# Spamhaus DROP style\n; last line is a comment too\n\n  203.0.113.0/24 ; SBL1234\n"
            "198.51.100.7\t# one host\n2001:db8:bad::/48\n2001:db8::1\n")
    assert parse_deny_text(text, "drop.txt") == {4: nets("203.0.113.0/24", "198.51.100.7/32"),
                                                 6: nets("2001:db8:bad::/48", "2001:db8::1/128")}


@pytest.mark.parametrize("line, why", [
    ("10.0.0.0/33", "not a CIDR"), ("10.0.0.1/24", "host bits set"), ("example.com", "not a CIDR"),
    ("fe80::1%eth0", "plain IPv4 or IPv6"), ("0.0.0.0/0", "every source"), ("10.0.0.0/8 10.1.0.0/16", "not a CIDR"),
    ("\x1b[31m10.0.0.0/8", "not a CIDR"),
])
def test_a_bad_line_names_its_file_and_line(line, why):
    with pytest.raises(PolicyError) as exc:
        parse_deny_text(f"# ok\n10.0.0.0/8\n{line}\n", "/etc/nodeguard/deny.txt")
    msg = str(exc.value)
    assert msg.startswith("/etc/nodeguard/deny.txt:3: ") and why in msg and "\n" not in msg
    assert exc.value.exit_code == 2


@pytest.fixture
def deny_file(tmp_path):
    os.chmod(tmp_path, 0o755)
    path = tmp_path / "deny.txt"
    path.write_text("10.0.0.0/8\n10.1.0.0/16\n192.0.2.0/24\n2001:db8::/32\n2001:db8:1::/48\nfd00::5\n")
    os.chmod(path, 0o644)
    return path


def test_inline_and_file_prefixes_are_merged_per_family(deny_file):
    policy = parse_policy(f"deny:\n  cidrs: [10.2.3.0/24, 198.51.100.0/24]\n  files: [{deny_file}]\n", "p.yaml")
    assert list(policy.deny.prefixes(4)) == nets("10.0.0.0/8", "192.0.2.0/24", "198.51.100.0/24")
    assert list(policy.deny.prefixes(6)) == nets("2001:db8::/32", "fd00::5/128")
    rs = build_ruleset(policy, ("eth0",), Priorities())
    deny = {s.version: s for s in rs.sets if s.kind == "deny"}
    assert deny[4].elements == policy.deny.prefixes(4) and deny[6].elements == policy.deny.prefixes(6)
    # filter-prerouting drops deny sources unless allowlisted, after the interface check and a bare RST's
    # return, before the manual and escalation bans
    first = rs.chains[0].rules[2]
    assert rs.chains[0].stage == "stateless" and first.matches[0].set == deny[4].name
    assert first.matches[1].set == "allow-v4" and first.group == "denied"


def test_ipv4_mapped_prefixes_in_every_list_are_the_ipv4_prefixes(tmp_path):
    """On the wire an IPv4 source is never ::ffff:a.b.c.d: deny files, inline deny, allow and failsafe
    read a mapped prefix (length 96 or more) as the IPv4 prefix it maps; a shorter one stays IPv6."""
    os.chmod(tmp_path, 0o755)
    path = tmp_path / "deny.txt"
    path.write_text("::ffff:203.0.113.0/120\n::ffff:198.51.100.7\n::fffe:0:0/95\n")
    os.chmod(path, 0o644)
    assert parse_deny_text(path.read_text(), "f") == {4: nets("203.0.113.0/24", "198.51.100.7/32"),
                                                      6: nets("::fffe:0:0/95")}
    policy = parse_policy(f"allow:\n  cidrs: ['::ffff:10.0.0.0/104']\n"
                          f"deny:\n  cidrs: ['::ffff:192.0.2.1']\n  files: [{path}]\n"
                          "failsafe:\n  - cidrs: ['::FFFF:10.9.0.0/112']\n    ports: [22]\n", "p.yaml")
    assert list(policy.deny.prefixes(4)) == nets("192.0.2.1/32", "198.51.100.7/32", "203.0.113.0/24")
    assert list(policy.deny.prefixes(6)) == nets("::fffe:0:0/95")
    assert list(policy.allow.cidrs) == [ipaddress.ip_network("10.0.0.0/8")]
    assert list(policy.failsafe[0].cidrs) == [ipaddress.ip_network("10.9.0.0/16")]
    with pytest.raises(PolicyError) as exc:  # a mapped /100 is 10.0.0.0/4: broader than an allowlist may be
        parse_policy("allow:\n  cidrs: ['::ffff:0.0.0.0/100']\n", "p.yaml")
    assert "broader than /8" in str(exc.value)


def test_a_deny_file_emptied_between_two_reads_is_named_with_what_it_listed(tmp_path):
    """A failed blocklist download that leaves an empty file lifts the whole list: what the daemon
    warns about after a reload (lastgood.py). A file that still lists something, one that listed
    nothing before and one no longer configured are not emptied."""
    from guard.deny import emptied

    os.chmod(tmp_path, 0o755)
    paths = [tmp_path / n for n in ("drop.txt", "kept.txt", "none.txt", "gone.txt")]
    for path, text in zip(paths, ("203.0.113.0/24\n2001:db8:bad::/48\n198.51.100.7\n", "192.0.2.0/24\n",
                                  "# nothing yet\n", "192.0.2.9\n")):
        path.write_text(text)
        os.chmod(path, 0o644)

    def listed(files) -> dict[str, int]:
        return parse_policy(f"deny:\n  files: [{', '.join(map(str, files))}]\n", "p.yaml").deny.listed()
    before = listed(paths)
    assert before == {str(paths[0]): 3, str(paths[1]): 1, str(paths[2]): 0, str(paths[3]): 1}
    paths[0].write_text("")  # truncated to 0 bytes
    paths[1].write_text("192.0.2.0/24\n192.0.2.8\n")
    assert emptied(before, listed(paths[:3])) == [(str(paths[0]), 3)]
    paths[0].write_text("# the download failed\n")  # comments alone: no prefix either
    assert emptied(before, listed(paths[:3])) == [(str(paths[0]), 3)]
    assert emptied(before, before) == []


def test_a_deny_set_is_named_by_its_contents(deny_file):
    def name(cidrs: str) -> str:
        rs = build_ruleset(parse_policy(f"deny:\n  cidrs: [{cidrs}]\n", "p.yaml"), ("eth0",), Priorities())
        return next(s.name for s in rs.sets if s.kind == "deny" and s.version == 4)
    assert name("10.0.0.0/8") == name("10.0.0.0/8, 10.1.0.0/16")  # the same prefixes after merging
    assert name("10.0.0.0/8") != name("10.0.0.0/8, 11.0.0.0/8")


def test_no_deny_list_no_deny_lookup():
    rs = build_ruleset(parse_policy("mode: enforce\n", "p.yaml"), ("eth0",), Priorities())
    assert not [s for s in rs.sets if s.kind == "deny"]
    assert [s.kind for s in rs.sets if s.kind == "manual"] == ["manual", "manual"]


def test_a_deny_file_someone_else_can_write_is_refused(deny_file):
    os.chmod(deny_file, 0o666)
    with pytest.raises(PolicyError) as exc:
        parse_policy(f"deny:\n  files: [{deny_file}]\n", "p.yaml")
    assert "refusing" in str(exc.value) and "writable" in str(exc.value) and exc.value.exit_code == 2


def test_a_relative_deny_path_is_refused():
    with pytest.raises(PolicyError) as exc:
        parse_policy("deny:\n  files: [deny.txt]\n", "p.yaml")
    assert str(exc.value).startswith("p.yaml:2: deny.files[0]: ") and "absolute" in str(exc.value)


@pytest.mark.parametrize("text, want", [("10.1.2.0/24", ("10.1.2.0/24", 4)), (" 10.1.2.3 ", ("10.1.2.3/32", 4)),
                                        ("fd00:1::/48", ("fd00:1::/48", 6)), ("::ffff:10.88.0.6", ("10.88.0.6/32", 4)),
                                        ("::ffff:10.88.0.0/112", ("10.88.0.0/16", 4))])
def test_ban_targets(text, want):
    assert manual.target(text) == want


@pytest.mark.parametrize("bad", ["10.1.2.3/24", "0.0.0.0/0", "0.0.0.0", "::", "nope", "fd00::1%eth0", "",
                                 "::ffff:0.0.0.0", "::ffff:0:0/96", "::ffff:128.0.0.0/97"])
def test_a_bad_ban_target_is_one_line_and_exit_2(bad):
    with pytest.raises(manual.BadBan) as exc:
        manual.target(bad)
    assert exc.value.exit_code == 2 and "\n" not in str(exc.value)


@pytest.mark.parametrize("text, seconds", [("5", 5), ("5s", 5), ("10m", 600), ("2h", 7200), ("7d", 604800)])
def test_ban_durations(text, seconds):
    assert manual.duration(text) == seconds


@pytest.mark.parametrize("bad", ["0", "-5", "5w", "1.5h", "366d", "", "5 s s"])
def test_a_bad_duration_is_refused(bad):
    with pytest.raises(manual.BadBan):
        manual.duration(bad)


def test_a_reason_is_printable_and_short():
    assert manual.reason("scanner, ticket #12") == "scanner, ticket #12"
    assert manual.reason("\u00e9" * 50) == "\u00e9" * 50  # 100 bytes: an nft comment holds 128
    for bad in ("\x1b[31mred", "x" * 101, "two\nlines", "\u00e9" * 51):
        with pytest.raises(manual.BadBan):
            manual.reason(bad)


@pytest.mark.parametrize("bad", ["0.0.0.0/1", "128.0.0.0/1", "::/1", "8000::/1"])
def test_a_ban_of_half_the_space_is_refused(bad):
    with pytest.raises(manual.BadBan) as exc:
        manual.target(bad)
    assert str(exc.value) == f"{bad!r} covers half of its family's addresses or more: it would drop nearly every source"


def test_bans_that_overlap_or_together_cover_half_the_space_are_refused():
    manual.fits("10.0.0.0/8", ["10.0.0.0/8", "128.0.0.0/2"])  # the same ban again, and a quarter
    for prefix, bans, why in [("192.0.0.0/2", ["128.0.0.0/2"], "192.0.0.0/2 and the other bans together cover half"),
                              ("10.1.0.0/16", ["10.0.0.0/8"], "10.1.0.0/16 overlaps the ban of 10.0.0.0/8")]:
        with pytest.raises(manual.BadBan) as exc:
            manual.fits(prefix, bans)
        assert str(exc.value).startswith(why)


@pytest.mark.parametrize("cidrs, family", [("[0.0.0.0/1, 128.0.0.0/1]", 4), ("['::/1']", 6),
                                           ("[0.0.0.0/2, 64.0.0.0/2]", 4)])
def test_a_deny_list_of_half_the_space_or_more_is_refused(cidrs, family):
    with pytest.raises(PolicyError) as exc:
        parse_policy(f"deny:\n  cidrs: {cidrs}\n", "p.yaml")
    assert str(exc.value) == (f"p.yaml:1: deny: cidrs and files together cover half of IPv{family} or more: "
                              "nodeguard would drop nearly every source")


def test_the_bogons_of_firehol_level1_load(deny_file):
    """FireHOL level1's reserved ranges, 224.0.0.0/3 among them: an eighth of IPv4 and more."""
    deny_file.write_text("0.0.0.0/8\n10.0.0.0/8\n100.64.0.0/10\n127.0.0.0/8\n169.254.0.0/16\n172.16.0.0/12\n"
                         "192.0.2.0/24\n192.168.0.0/16\n198.18.0.0/15\n224.0.0.0/3\n")
    policy = parse_policy(f"deny:\n  files: [{deny_file}]\n", "p.yaml")
    assert policy.deny.prefixes(4)[0] == (0, 8) and policy.deny.prefixes(4)[-1] == (224 << 24, 3)


def test_lines_end_at_lf_alone_and_a_bom_is_read():
    got = parse_deny_text("\ufeff192.0.2.0/24\r\n198.51.100.1\n", "f")
    assert got == {4: nets("192.0.2.0/24", "198.51.100.1/32"), 6: []}
    with pytest.raises(PolicyError) as exc:  # U+0085 splits no line: one bad entry, on line 2
        parse_deny_text("# x\u2028y\n9.9.9.9\x855.5.5.5\n", "f")
    assert str(exc.value).startswith("f:2: ")


@pytest.mark.parametrize("at_once", [1, 7, 23, 10**6])
def test_lines_split_a_block_at_a_time_are_the_lines(monkeypatch, at_once):
    """A file is split into lines a block at a time (a million lines held at once took 60 MB): the
    prefixes and a bad line's number are the same whatever the blocks' size."""
    from guard import deny

    lines = [f"10.{i}.0.0/16" if i % 3 else ("" if i % 2 else "# c") for i in range(40)]
    monkeypatch.setattr(deny, "LINES_AT_ONCE", at_once)
    assert parse_deny_text("\n".join(lines) + "\n", "f") == {4: nets(*(x for x in lines if x[:1].isdigit())), 6: []}
    with pytest.raises(PolicyError) as exc:
        parse_deny_text("\n".join(lines[:29] + ["10.0.0.1/8"] + lines[29:]), "f")
    assert str(exc.value).startswith("f:30: ")


def test_a_huge_line_is_quoted_short():
    with pytest.raises(PolicyError) as exc:
        parse_deny_text("1" * 10**6 + "\n", "f")
    assert str(exc.value) == "f:1: " + repr("1" * 24) + "\u2026 is not a CIDR (longer than any)"


SHADOW = ["root:$6$Jx9.Qk2b$K3yq1m0sV7tQ0dWcZ4Yb8pLr5eN2uHfA1gT6iOjS9xMvC0nB3kD7wR:20228:0:99999:7:::",
          "daemon:*:20228:0:99999:7:::", "nobody:x:20228:0:99999:7:::"]


@pytest.mark.parametrize("line", SHADOW)
def test_a_deny_file_that_is_not_a_blocklist_is_quoted_24_characters_at_most(tmp_path, line):
    """deny.files naming a file of secrets by mistake (a symlink to /etc/shadow): the message names the
    file and line and what is wrong, and quotes no more than the first 24 characters of the line."""
    os.chmod(tmp_path, 0o755)
    secret = tmp_path / "shadow"
    secret.write_text(f"{line}\n")
    os.chmod(secret, 0o600)
    (tmp_path / "deny.txt").symlink_to(secret)
    with pytest.raises(PolicyError) as exc:
        parse_policy(f"deny:\n  files: [{tmp_path / 'deny.txt'}]\n", "p.yaml")
    msg = str(exc.value)
    assert msg.startswith(f"{tmp_path / 'deny.txt'}:1: " + repr(line[:24]) + "\u2026 is not a CIDR (")
    assert line[:25] not in msg and exc.value.exit_code == 2


@pytest.mark.parametrize("line, why", [("2001:db8:1234:5678:9abc::1/64", "(host bits set)"),
                                       ("\x1b[2J\x07" * 6, "(not an IPv4 or IPv6 prefix)"),
                                       ("１０.１.２.０/２４" * 3, "(plain IPv4 or IPv6 prefixes only)"),
                                       ("10.0.0.0/8,10.1.0.0/16,10.2.0.0/16", "(not an IPv4 or IPv6 prefix)")])
def test_a_long_bad_entry_still_says_what_is_wrong(line, why):
    with pytest.raises(PolicyError) as exc:
        parse_deny_text(f"{line}\n", "f")
    assert str(exc.value) == f"f:1: {line[:24]!r}\u2026 is not a CIDR {why}"
    assert "\x1b" not in str(exc.value) and "\x07" not in str(exc.value)


def test_a_bad_cidr_typed_in_the_policy_is_quoted_whole():
    """The policy file is the operator's own text: its messages are as before, the whole CIDR quoted."""
    text = "2001:db8:1234:5678:9abc::1/64"
    with pytest.raises(PolicyError) as exc:
        parse_policy(f"deny:\n  cidrs: ['{text}']\n", "p.yaml")
    assert str(exc.value) == f"p.yaml:2: deny.cidrs[0]: {text!r} is not a CIDR ({text} has host bits set)"


def test_an_inline_deny_of_everything_is_refused():
    with pytest.raises(PolicyError) as exc:
        parse_policy("deny:\n  cidrs: ['::/0']\n", "p.yaml")
    assert str(exc.value) == "p.yaml:2: deny.cidrs[0]: '::/0' would drop every source: name a narrower prefix"


def test_a_new_deny_set_is_filled_first_and_a_kept_one_untouched(deny_file):
    """A new deny set is created and filled by its own batch (backend/nft_fill.py): libnftables is sent
    no element and no "add set" of it (a rule referring to it fails if it is missing, never finds it
    empty); the JSON shown for the whole carries the elements. A kept one is not touched at all (sealed:
    its name says what it holds)."""
    from guard.backend.nft import NftLive
    from guard.jsontext import dumps
    from guard.render.nft import render_nft
    from guard.sync import nft as sync_nft

    policy = parse_policy(f"deny:\n  files: [{deny_file}]\n", "p.yaml")
    objs = render_nft(build_ruleset(policy, ("eth0",), Priorities()))
    tx = sync_nft.build(objs, NftLive())
    deny = {s["name"]: s for s in objs.sets if s["name"].startswith("deny-")}
    assert sorted(s["name"] for s in tx.fills) == sorted(deny)
    assert [(s["elem"].version, s["elem"].prefixes) for s in sorted(tx.fills, key=lambda s: s["name"])] == [
        (4, tuple(nets("10.0.0.0/8", "192.0.2.0/24"))), (6, tuple(nets("2001:db8::/32", "fd00::5/128")))]
    sent = json.loads(dumps(tx.sent()))["nftables"]
    named = {body["name"] for c in sent for obj in c.values() for kind, body in obj.items()
             if kind in ("set", "element")}
    assert not named & set(deny)
    whole = json.loads(dumps(tx.json()))["nftables"]
    added = {c["add"]["set"]["name"]: c["add"]["set"] for c in whole if "set" in c.get("add", {})}
    assert [added[n]["elem"] for n in sorted(deny)] == [
        [{"prefix": {"addr": "10.0.0.0", "len": 8}}, {"prefix": {"addr": "192.0.2.0", "len": 24}}],
        [{"prefix": {"addr": "2001:db8::", "len": 32}}, {"prefix": {"addr": "fd00::5", "len": 128}}]]
    checked = json.loads(dumps(tx.checked()))["nftables"]
    assert [c["add"]["set"] for c in checked if c.get("add", {}).get("set", {}).get("name") in deny] == [
        {k: v for k, v in deny[n].items() if k != "elem"} for n in deny]
    live = NftLive(True, {}, {n: {**s, "handle": 1} for n, s in deny.items()})
    again = sync_nft.build(objs, live)
    assert again.fills == () and not [c for c in again.sent()["nftables"] for obj in c.values()
                                      for body in obj.values() if isinstance(body, dict) and body.get("name") in deny]


def _decoded(elements: list[bytes]) -> list[tuple[str, bool, bytes]]:
    """(key as hex, end element?, userdata) of each element nft_fill writes, read with the dump parser."""
    from guard.backend import nfnetlink as nl
    from guard.backend.nft_fill import NFTA_SET_ELEM_USERDATA

    out = []
    for e in elements:
        a = nl._attrs(e, 4, len(e))
        key = nl._attrs(e, *a[nl.NFTA_SET_ELEM_KEY])[nl.NFTA_DATA_VALUE]
        out.append((e[slice(*key)].hex(), nl._interval_end(e, 0, len(e)),
                    e[slice(*a[NFTA_SET_ELEM_USERDATA])] if NFTA_SET_ELEM_USERDATA in a else b""))
    return out


def test_the_element_batch_is_what_nft_sends_for_the_same_set():
    """``nft --debug=netlink add set inet t s { type ipv4_addr; flags interval; elements = { 10.0.0.0/8,
    255.0.0.0/8 } }`` prints: "element 00000000 : 1 [end]  element 0000000a : 0 [end]  element 0000000b
    : 1 [end]  element 000000ff : 0 [end]  userdata = { \\x01\\x04\\x01\\x00\\x00\\x00 }"."""
    from guard.backend.nft_fill import elements

    open_end = b"\x01\x04\x01\x00\x00\x00"
    assert _decoded(elements(4, nets("10.0.0.0/8", "255.0.0.0/8"))) == [
        ("00000000", True, b""), ("0a000000", False, b""), ("0b000000", True, b""), ("ff000000", False, open_end)]
    assert _decoded(elements(6, nets("::/8", "2001:db8::1/128"))) == [
        ("00" * 16, False, b""), ("01" + "00" * 15, True, b""),
        ("20010db8" + "00" * 11 + "01", False, b""), ("20010db8" + "00" * 11 + "02", True, b"")]


def test_the_batch_splits_elements_under_the_attribute_limit_and_ends_only_when_committed():
    """A nested attribute's length is 16 bits: 100,000 prefixes go in many messages; without ``commit``
    the batch has no end message, so the kernel checks it and commits nothing (nft -c)."""
    import struct

    from guard.backend.nft_fill import NFNL_MSG_BATCH_END, batch

    prefixes = [(i << 8, 24) for i in range(0, 200_000, 2)]
    msgs = batch("nodeguard", [("deny-v4-x", 4, prefixes)])
    lengths = [struct.unpack_from("=IH", m)[0] for m in msgs]
    assert max(lengths) < 65_535 and len(msgs) > 60
    assert sum(len(m) for m in msgs[3:-1]) > 100_000 * 40  # every prefix: a start and an end
    assert struct.unpack_from("=IH", msgs[-1])[1] == NFNL_MSG_BATCH_END
    assert batch("nodeguard", [("deny-v4-x", 4, prefixes)], commit=False) == msgs[:-1]


def test_a_deny_set_lacking_a_prefix_or_written_by_others_is_drift_and_refilled_by_the_batch(deny_file, tmp_path):
    """A deny set keeps its definition when someone flushes it or deletes elements (or made it before us):
    a sampled prefix the kernel lacks, or elements another process added or deleted (its events), is
    drift of its own kind; the repair flushes
    and fills that set again in the one nfnetlink batch (DELSETELEM without elements: the kernel's flush),
    and no other set or chain is touched for it."""
    import dataclasses
    import struct

    from guard.apply import make_plan
    from guard.backend.nft import NftLive
    from guard.backend.nft_fill import NFT_MSG_DELSETELEM, NFT_MSG_NEWSETELEM, batch
    from guard.drift import KINDS

    policy = parse_policy(f"deny:\n  files: [{deny_file}]\nwatcher:\n  state_file: {tmp_path / 'w'}\n", "p.yaml")
    plan = make_plan(policy, None, interfaces=("eth0",))
    o = plan.backend.objects
    deny = {s["name"]: None for s in o.sets if s["name"].startswith("deny-")}
    live = NftLive(True, {c["name"]: c for c in o.chains}, {s["name"]: s for s in o.sets},
                   {x["name"]: x for x in o.limits}, tuple(o.rules), dict(o.elements), deny_absent=dict(deny))
    assert plan.backend.diff(plan, live) is None
    refilled_chains = plan.backend.transaction(live, fingerprints={})  # every chain: no set touched
    assert refilled_chains.refills == () and not refilled_chains.changes_sets
    v4 = next(n for n in deny if n.startswith("deny-v4"))
    for tampered in (dataclasses.replace(live, deny_absent={**deny, v4: "192.0.2.0"}),
                     dataclasses.replace(live, deny_written={v4: "nft (pid 7)"})):
        drift = plan.backend.diff(plan, tampered)
        assert drift is not None and drift.kind == "deny_elements" in KINDS and not drift.in_place, str(drift)
        assert v4 in str(drift) and ("192.0.2.0" in str(drift) or "nft (pid 7)" in str(drift)), str(drift)
        tx = plan.backend.transaction(tampered)
        assert [s["name"] for s in tx.refills] == [v4] and tx.fills == () and not tx.recreates and tx.changes_sets
        assert not [c for c in tx.sent()["nftables"] if "set" in c.get("add", {}) or "set" in c.get("delete", {})]
    # a set not probed (not there when read) or written to by others but not in the render is no such drift
    assert plan.backend.diff(plan, dataclasses.replace(live, deny_absent={}, deny_written={"deny-v4-x": "nft"})) is None
    msgs = batch("nodeguard", [], refills=[(v4, 4, next(s["elem"].prefixes for s in o.sets if s["name"] == v4))])
    kinds = [struct.unpack_from("=IH", m)[1] & 0xFF for m in msgs[2:-1]]
    assert kinds[0] == NFT_MSG_DELSETELEM and set(kinds[1:]) == {NFT_MSG_NEWSETELEM}
