"""The sampler's pure parts: untrusted bytes never crash it, memory and disk stay bounded."""

from __future__ import annotations

import dataclasses
import json
import struct
import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.all import ICMP, IP, TCP, UDP, IPv6, IPv6ExtHdrFragment, IPv6ExtHdrRouting, raw

from guard.aggregate import Window, safe
from guard.attacklog import AttackLog, log_files, read_records
from guard.nflog import parse_messages
from guard.packet import parse

VALID = [raw(p) for p in (IP(src="1.2.3.4") / TCP(dport=80, flags="S"), IP() / UDP(dport=53) / (b"x" * 50),
                          IP() / ICMP(), IPv6() / IPv6ExtHdrRouting() / TCP(flags="FPU"),
                          IPv6() / IPv6ExtHdrFragment(offset=3) / UDP(), IP(ihl=15) / (b"\x00" * 40))]


def _printable_json(pkt) -> bool:
    text = json.dumps(dataclasses.asdict(pkt), ensure_ascii=True)
    return all(32 <= ord(c) < 127 for c in text)


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_raise_and_never_emit_control_characters(data):
    pkt = parse(data)
    assert _printable_json(pkt)
    w = Window(0, 5)
    w.add("syn-flood", pkt, "eth0", 1.0)
    assert all(32 <= ord(c) < 127 for c in json.dumps(w.records(2.0, {("syn-flood", "enforce"): 3}), ensure_ascii=True))


@settings(max_examples=2000, deadline=None)
@given(st.sampled_from(VALID), st.integers(0, 120), st.binary(max_size=8), st.integers(0, 119))
def test_truncated_and_corrupted_real_packets_never_raise(base, cut, noise, at):
    data = bytearray(base[:cut])
    for i, b in enumerate(noise):
        if at + i < len(data):
            data[at + i] = b
    assert _printable_json(parse(bytes(data)))


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=300))
def test_random_netlink_datagrams_never_raise(data):
    for s in parse_messages(data, 0.0):
        assert isinstance(s.payload, bytes)


def test_a_crafted_nflog_prefix_cannot_inject_into_logs_or_terminals():
    prefix = b"ng:\x1b[31mevil\nline\0"
    attr = lambda t, p: struct.pack("=HH", 4 + len(p), t) + p + b"\0" * ((4 - len(p) % 4) % 4)  # noqa: E731
    body = struct.pack("=BBH", 2, 0, 0) + attr(10, prefix) + attr(9, raw(IP() / ICMP()))
    msg = struct.pack("=IHHII", 16 + len(body), 0x400, 0, 0, 0) + body
    (sample,) = parse_messages(msg, 0.0)
    w = Window(0, 5)
    w.add(sample.group, parse(sample.payload), "eth0", 0.0)
    out = json.dumps(w.records(1.0, {}))
    assert "\x1b" not in out and "\\n" not in out and safe(sample.group) in out


_MILLION = """
import json, re, struct
from scapy.all import IP, TCP, raw
from guard.aggregate import Window
from guard.packet import parse
window = Window(0, 10_000)
template = bytearray(raw(IP(src="0.0.0.0", dst="10.0.0.1") / TCP(dport=80, flags="S")))
before = int(re.search(r"VmRSS:\\s+(\\d+)", open("/proc/self/status").read())[1])
for i in range(1_000_000):
    template[12:16] = struct.pack("!I", 0x0B000000 + i)
    window.add("syn-flood", parse(bytes(template)), "eth0", 1.0)
peak = int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read())[1])
records = window.records(10.0, {("syn-flood", "enforce"): 5_000_000})
print(json.dumps({"flows": len(window.flows), "other": window.other[("syn-flood", "enforce")].sampled, "grew_kb": peak - before,
                  "estimated": sum(r["estimated"] for r in records if r["type"] in ("flow", "other"))}))
"""


def test_a_million_distinct_sources_keep_the_window_bounded():
    """The parse + aggregate path, fed 1M distinct spoofed sources, in a fresh process (peak RSS)."""
    out = json.loads(subprocess.run([sys.executable, "-c", _MILLION], capture_output=True, text=True,
                                    check=True, timeout=300).stdout)
    assert out["flows"] == 10_000 and out["other"] == 990_000
    assert out["grew_kb"] < 40_000, f"memory grew {out['grew_kb']} kB for 1M sources"
    assert out["estimated"] == 5_000_000


def test_the_log_rotates_and_never_uses_more_than_its_cap(tmp_path):
    path = tmp_path / "attacks.jsonl"
    log = AttackLog(path, max_bytes=10_000, keep=3)
    for i in range(5_000):
        log.write({"type": "flow", "i": i, "pad": "x" * 50})
    log.close()
    files = log_files(path)
    assert len(files) == 4
    assert sum(f.stat().st_size for f in files) <= 10_000 * 4
    seen = [r["i"] for r in read_records(path)]
    assert seen == sorted(seen) and seen[-1] == 4_999, "oldest first, newest kept"


def test_report_filters_by_time_and_rule_and_draws_the_timeline(tmp_path):
    from click.testing import CliRunner

    from guard.cli import cli

    path = tmp_path / "attacks.jsonl"
    log = AttackLog(path, 1 << 20, 2)
    for start, group, src, n in ((1000.0, "syn-flood", "192.0.2.7", 5000), (1000.0, "icmp-flood", "192.0.2.8", 700),
                                 (9000.0, "syn-flood", "192.0.2.9", 300)):
        w = Window(start, 100)
        for _ in range(10):
            w.add(group, parse(raw(IP(src=src, dst="10.0.0.1") / TCP(dport=443, flags="S"))), "eth0", start + 1)
        for rec in w.records(start + 10, {(group, "enforce"): n}):
            log.write(rec)
    log.close()
    runner = CliRunner()
    res = runner.invoke(cli, ["report", "--log", str(path), "--json", "--rule", "syn-flood",
                              "--until", "1970-01-01T00:30:00", "--plot", str(tmp_path / "t.svg")])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output)
    assert [s["src"] for s in rep["top_sources"]["syn-flood"]] == ["192.0.2.7"]
    assert rep["top_sources"]["syn-flood"][0]["estimated"] == 5000 and "icmp-flood" not in rep["top_sources"]
    svg = (tmp_path / "t.svg").read_text()
    assert svg.startswith("<svg") and "syn-flood" in svg and "polyline" in svg
    text = runner.invoke(cli, ["report", "--log", str(path)]).output
    assert "192.0.2.9" in text and "timeline" in text


def test_in_the_daemon_new_odds_are_posted_not_installed(tmp_path, monkeypatch):
    """Issue 17: with ``post_odds`` (the daemon) the sampler asks for the odds it computed, and
    neither writes sampling.json nor renders or applies: the watcher does, in its own thread.
    The Sampler is built without its kernel half (readers, counters): only _adapt_odds runs."""
    from guard import sampler as sampler_mod
    from guard import sampling_odds
    from guard.apply import make_plan
    from guard.policy.schema import Policy

    policy = Policy.model_validate({"watcher": {"state_file": str(tmp_path / "watch.json")},
                                    "syn": {"synproxy": {"ports": []}}})
    plan = make_plan(policy, None, interfaces=("eth0",), odds={})
    cap = policy.sampler.rate.per_s
    posted = []
    s = object.__new__(sampler_mod.Sampler)
    s.policy, s.cfg, s.plan, s.nft, s.post_odds, s.asked = policy, policy.sampler, plan, None, posted.append, None

    def forbidden(*_a, **_k):
        raise AssertionError("the daemon's sampler must not render, apply or save odds itself")

    for name in ("make_plan", "install_in_place"):
        monkeypatch.setattr(sampler_mod, name, forbidden)
    monkeypatch.setattr(sampler_mod.sampling_odds, "save", forbidden)
    group = plan.ruleset.sample_groups[0]
    s._adapt_odds({(group, "enforce"): int(cap * 64)}, 1.0)  # 64 times the cap for one second
    wanted = {g: sampling_odds.next_exponent(0, cap * 64 if g == group else 0, cap) for g in plan.ruleset.sample_groups}
    assert posted == [wanted] and wanted[group] == 7  # half the cap: 1 in 128
    assert not sampling_odds.path_for(policy).exists()
    assert s._one_in()[group] == 128, "the next window counts at the odds just asked for"
    s._adapt_odds({}, 1.0)  # nothing condemned: back to every packet (the plan still has none: no change)
    assert posted == [wanted] and s.asked is None


def test_a_window_at_the_max_flows_cap_fits_the_units_memory():
    """sampler.max_flows is capped where a window's peak (its flows, then their records, which the
    sampler holds together at the window's end) stays under 64 MiB of the unit's MemoryMax=256M."""
    import tracemalloc

    from guard.packet import Packet
    from guard.policy.runtime import MAX_FLOWS

    n = 2000
    pkts = [Packet(version=6, src=f"2001:db8:{i >> 16:x}:{i & 0xffff:x}::1", dst="2001:db8::2", proto="tcp",
                   sport=1000 + i, dport=80, tcp_flags="S", ttl=64, length=60) for i in range(n)]
    tracemalloc.start()
    try:
        window = Window(0.0, n)
        for i, pkt in enumerate(pkts):
            window.add("syn-flood", pkt, "eth0", 1.0 + i * 1e-6)
            window.add("syn-flood", pkt, "eth0", 2.0 + i * 1e-6)
        lines = [json.dumps(r) for r in window.records(10.0, {("syn-flood", "enforce"): 2 * n})]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(lines) == n + 1
    per_flow = peak / n
    assert 1000 < per_flow < 2300, per_flow  # ~1.9 KB, as the field's description says
    assert per_flow * MAX_FLOWS < 64 * 2**20
