"""Real packets from an attacker namespace against a victim protected by nodeguard.

One scenario list, run against every backend: nft, iptables-nft and iptables-legacy.
"""

from __future__ import annotations

import json
import time

import pytest

import netlab
from netlab import ATTACKER4, LEGIT4, TRUSTED4, VICTIM4, VICTIM6, ping_stats

PORT = 8080


class Guarded:
    """The victim namespace with nodeguard applied through one backend."""

    def __init__(self, victim, backend, write_policy):
        self.victim, self.backend, self._write = victim, backend, write_policy

    def apply(self, policy_yaml: str = "") -> str:
        """These tests measure the per-source limits themselves: no escalation to bans. Returns the
        policy's path."""
        text = netlab.backend_policy(self.backend, policy_yaml) + "\n" + netlab.NO_ESCALATION
        path = self._write(text)
        self.victim.nodeguard("apply", "-c", path)
        return path

    def counters(self) -> dict[str, int]:
        return self.victim.counters(self.backend)

    def load_kube_nat_fixture(self) -> None:
        """kube-proxy's NAT rules: conntrack is on, as on a real node."""
        netlab.load_fixture(self.victim, "kube-proxy-iptables-tracepacket.rules", netlab.kube_loader(self.backend))


@pytest.fixture(params=netlab.BACKENDS)
def guarded(request, lab, write_policy):
    victim, attacker = lab
    return Guarded(victim, request.param, write_policy), attacker


def _assert_normal_ping_gets_through(attacker, addr: str) -> None:
    time.sleep(0.3)  # the bucket refills: 6 tokens at 20/s, and each 0.2 s between pings adds 4
    _sent, received = ping_stats(attacker.run(f"ping -c 3 -i 0.2 -W 1 {addr}").stdout)
    assert received == 3


def _passed_to_host(c: dict, v: int) -> int:
    """Echo requests that entered icmp-flood and were not dropped there."""
    return (c[f"filter-prerouting: echo-request v{v} to icmp-flood"]
            - c[f"icmp-flood: icmp-flood per-source v{v}"] - c["icmp-flood: icmp-flood backstop"])


@pytest.mark.backends("nft", "iptables-legacy")
# ping -f sends at least 100/s, more while replies keep up; lost echoes stay "in flight", so
# against a limiter it settles near 100/s: the limits under test sit well below that.
def test_ping_flood_is_cut_to_the_per_source_rate_and_a_normal_ping_still_works(guarded):
    guard, attacker = guarded
    guard.apply("""
        icmp:
          rate: 5000/second
          per_source: 20/second
          per_source_burst: 20
    """)
    seconds = 5
    sent, received = ping_stats(attacker.run(f"ping -f -i 0.0002 -q -w {seconds} {VICTIM4}", check=False).stdout)
    counters = guard.counters()

    expected = 20 * seconds + 20
    assert sent > 3 * expected, f"not a flood: {sent} sent"
    assert 0.7 * expected <= received <= 1.3 * expected, (sent, received, expected)
    assert abs(_passed_to_host(counters, 4) - received) <= 3, (counters, received)
    assert counters["icmp-flood: icmp-flood per-source v4"] >= sent - received - 3

    _assert_normal_ping_gets_through(attacker, VICTIM4)


def test_ipv6_ping_flood_is_limited_while_neighbour_discovery_keeps_working(guarded):
    guard, attacker = guarded
    victim = guard.victim
    guard.apply("""
        icmp:
          per_source: 20/second
          per_source_burst: 20
    """)
    for ns in (victim, attacker):
        ns.run("ip -6 neigh flush all")
    sent, received = ping_stats(attacker.run(f"ping -6 -f -i 0.0002 -q -w 3 {VICTIM6}", check=False).stdout)
    counters = guard.counters()
    print(f"\n{guard.backend}: IPv6 ping flood, 3 s: sent {sent}, received {received}")
    # A flood is what sends well over the limit: at least twice the most the limit lets through. ping -f
    # sends ~88/s here while its echoes are lost: sent 263-268, received 79-80 in 21 runs (nft,
    # iptables-nft, legacy; 12 on a shared machine at load 1.1-1.7, 9 with NODEGUARD_TEST_BUSY=1); issue
    # 16 saw 250 on a loaded fresh machine, which failed the old "sent > 250".
    assert sent > 2 * (20 * 3 + 20 + 10) and 20 * 3 <= received <= 20 * 3 + 20 + 10, (sent, received)
    assert counters["icmp-flood: icmp-flood per-source v6"] > 0
    assert counters["filter-prerouting: essential icmpv6 (RFC 4890)"] > 0  # NS/NA went through

    for ns in (victim, attacker):
        ns.run("ip -6 neigh flush all")
    _assert_normal_ping_gets_through(attacker, VICTIM6)


@pytest.mark.backends("nft", "iptables-nft")
def test_single_source_syn_flood_is_cut_per_source_while_another_client_connects(guarded):
    guard, attacker = guarded
    victim = guard.victim
    guard.apply("""
        syn:
          per_source: 100/second
          valve: always  # the global cap is what one source must never reach
    """)
    with netlab.tcp_server(victim, VICTIM4, PORT):
        flood = netlab.flood(attacker, 6, "-S", "-p", str(PORT), "-a", ATTACKER4, VICTIM4)
        time.sleep(1.0)
        legit = netlab.tcp_clients(attacker, LEGIT4, VICTIM4, PORT, 30, "--interval", "0.05")
        flood.wait()
    counters = guard.counters()
    assert legit == {"ok": 30, "failed": 0}
    assert counters["syn-flood: syn-flood per-source v4"] > 20_000, counters
    assert counters["syn-flood: syn-flood backstop"] == 0, "one source must never reach the global cap"


@pytest.mark.backends("nft", "iptables-nft")  # legacy: test_fail_open floods it spoofed
def test_spoofed_syn_flood_is_cut_by_the_backstop_and_conntrack_grows_only_with_what_it_lets_through(guarded):
    guard, attacker = guarded
    victim = guard.victim
    guard.load_kube_nat_fixture()
    seconds, backstop = 3, 1000
    policy = f"""
        syn:
          rate: {backstop}/second
          burst: {backstop}
          valve: always  # the valve itself (auto engages only from the daemon: test_nodeport_flood.py)
          synproxy:
            ports: []  # the valve is what is tested here (as for a port SYNPROXY does not serve)
    """
    with netlab.tcp_server(victim, VICTIM4, PORT):
        netlab.flood(attacker, seconds, "-S", "-p", str(PORT), "--rand-source", VICTIM4).wait()
        unprotected = victim.conntrack_count()
        victim.run("conntrack -F", check=False)
        time.sleep(0.5)

        guard.apply(policy)
        netlab.flood(attacker, seconds, "-S", "-p", str(PORT), "--rand-source", VICTIM4).wait()
        protected = victim.conntrack_count()
    counters = guard.counters()

    bound = backstop * (seconds + 1) + backstop  # rate x (time + slack for hping3 start/stop) + burst
    assert protected <= bound, (protected, bound)
    assert unprotected >= 3 * protected, (unprotected, protected)
    assert counters["syn-flood: syn-flood backstop"] > 5 * protected, counters


@pytest.mark.backends("nft", "iptables-nft")
def test_allowlisted_source_is_never_limited(guarded):
    guard, attacker = guarded
    guard.apply(f"""
        allow:
          cidrs: [{TRUSTED4}/32, "fd77::dead/128"]
        icmp:
          per_source: 10/second
    """)
    sent, received = ping_stats(attacker.run(f"ping -f -i 0.0002 -q -w 2 -I {TRUSTED4} {VICTIM4}", check=False).stdout)
    counters = guard.counters()
    assert sent > 1000 and received >= sent - 2, (sent, received)
    assert counters["filter-prerouting: allowlisted v4"] >= sent
    assert counters["icmp-flood: icmp-flood per-source v4"] == 0


@pytest.mark.backends("nft", "iptables-nft")
def test_bogus_tcp_flag_combinations_are_dropped(guarded):
    guard, attacker = guarded
    guard.apply()
    cases = {"null": [], "xmas": ["-F", "-P", "-U"], "syn+fin": ["-S", "-F"], "syn+rst": ["-S", "-R"],
             "fin without ack": ["-F"]}
    # all at once: each hping3 -c waits ~1 s for replies after its last packet (5.7 s one after another)
    procs = [attacker.popen(["hping3", "-q", "-c", "5", "-i", "u2000", "-p", str(PORT), *flags, VICTIM4])
             for flags in cases.values()]
    for proc in procs:
        proc.communicate(timeout=30)
    counters = guard.counters()
    for label in cases:
        assert counters[f"bogus-flags: bogus flags {label}"] == 5, (label, counters)


_RESET_SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(); s.settimeout(10); print("listening", flush=True)
c, _ = s.accept(); c.settimeout(5)
try:
    print("eof" if c.recv(1) == b"" else "data")
except ConnectionResetError:
    print("reset")
except TimeoutError:
    print("timeout")
"""
_ABORT_CLIENT = """
import socket, struct, sys
c = socket.socket(); c.bind((sys.argv[1], 0)); c.connect((sys.argv[2], int(sys.argv[3])))
c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)); c.close()  # close with a RST
"""


@pytest.mark.backends("nft", "iptables-nft")
def test_a_rst_without_a_connection_is_dropped_whoever_sends_it_and_a_connection_s_own_rst_is_not(guarded):
    guard, attacker = guarded
    policy = guard.apply(f"allow:\n  cidrs: [{LEGIT4}/32]\n")
    server = guard.victim.popen(["python3", "-c", _RESET_SERVER, VICTIM4, str(PORT)])
    assert server.stdout.readline().strip() == "listening"
    attacker.run(["python3", "-c", _ABORT_CLIENT, ATTACKER4, VICTIM4, str(PORT)])
    assert server.communicate(timeout=15)[0].strip() == "reset"
    attacker.run(["hping3", "-q", "-c", "5", "-i", "u2000", "-R", "-p", str(PORT), VICTIM4], check=False)
    assert guard.counters()["filter-conntrack: rst that conntrack calls invalid"] == 5
    # an allowlisted source's invalid RST is dropped too (the drop comes before the allowlist), and a
    # banned source's bare RST passes the ban check (it returns ahead of it) to meet the same drop
    attacker.run(["hping3", "-q", "-c", "5", "-i", "u2000", "-R", "-a", LEGIT4, "-p", str(PORT), VICTIM4], check=False)
    guard.victim.nodeguard("ban", "-c", policy, ATTACKER4)
    attacker.run(["hping3", "-q", "-c", "5", "-i", "u2000", "-R", "-p", str(PORT), VICTIM4], check=False)
    c = guard.counters()
    assert c["filter-conntrack: rst that conntrack calls invalid"] == 15
    assert c["filter-prerouting: banned by hand v4"] == 0
    # the ban still holds for the rest: an ACK meets it
    attacker.run(["hping3", "-q", "-c", "5", "-i", "u2000", "-A", "-p", str(PORT), VICTIM4], check=False)
    assert guard.counters()["filter-prerouting: banned by hand v4"] == 5


@pytest.mark.backends("nft", "iptables-nft")
def test_concurrent_connections_per_source_are_capped(guarded):
    guard, attacker = guarded
    victim = guard.victim
    guard.apply(f"""
        connlimit:
          - ports: [{PORT}]
            per_source: 5
    """)
    with netlab.tcp_server(victim, VICTIM4, PORT, hold=True):
        held = attacker.popen(["python3", str(netlab.HELPERS / "tcp_clients.py"), ATTACKER4, VICTIM4, str(PORT),
                               "10", "--concurrent", "--timeout", "1.5", "--hold", "5"])
        first = held.stdout.readline()
        other = netlab.tcp_clients(attacker, LEGIT4, VICTIM4, PORT, 3, "--concurrent", "--timeout", "2")
        held.kill()
        held.wait()
    assert json.loads(first) == {"ok": 5, "failed": 5}
    assert other == {"ok": 3, "failed": 0}, "another source has its own budget"
    assert guard.counters()["filter-conntrack: conn-0 over 5 connections v4"] >= 5


@pytest.mark.backends("nft", "iptables-nft")  # legacy: test_fail_open floods it spoofed
def test_returning_client_keeps_connecting_at_full_speed_during_a_spoofed_syn_flood(guarded):
    """The default policy must not serve a legitimate client worse than no protection does."""
    guard, attacker = guarded
    victim = guard.victim
    guard.load_kube_nat_fixture()
    # default thresholds, backstop 5000/s at all times (the worst case for a client); no SYNPROXY
    guard.apply("syn:\n  valve: always\n  synproxy:\n    ports: []\n")
    with netlab.tcp_server(victim, VICTIM4, PORT):
        assert netlab.tcp_clients(attacker, LEGIT4, VICTIM4, PORT, 1) == {"ok": 1, "failed": 0}
        flood = netlab.flood(attacker, 8, "-S", "-p", str(PORT), "--rand-source", VICTIM4)
        time.sleep(1.0)
        started = time.monotonic()
        legit = netlab.tcp_clients(attacker, LEGIT4, VICTIM4, PORT, 30, "--interval", "0.05", "--timeout", "0.9")
        elapsed = time.monotonic() - started
        flood.wait()
    counters = guard.counters()
    assert legit == {"ok": 30, "failed": 0}, "a SYN retransmit (1 s) would have failed the 0.9 s timeout"
    assert elapsed < 30 * 0.05 + 3.0
    assert counters["syn-flood: syn-flood backstop"] > 50_000, "the flood did reach the backstop"
    assert counters["syn-flood: trusted v4 skips backstop"] >= 30


@pytest.mark.backends("iptables-nft", "iptables-legacy")
def test_a_spoofed_flood_fills_a_per_source_meter_ipset_beyond_ipsets_default_buckets(guarded):
    """The packet path (``-j SET``) never grows a hash ipset, and ipset's default 1024 buckets of 12
    hold 12,288 sources whatever ``maxelem`` says: the default SYN meter (65,536) would fail open at a
    fifth of its size. Nor may it reach ``maxelem``: a full timed ipset collects garbage on every add it
    refuses, which doubled a spoofed SYN's cost on iptables-nft. Created with a sixteenth of its size in
    buckets, its buckets fill at about three quarters of its size."""
    guard, attacker = guarded
    guard.apply()
    netlab.flood(attacker, 3, "-S", "-p", str(PORT), "--rand-source", VICTIM4).wait()
    header = guard.victim.run("ipset list -t NODEGUARD-SYN-SRC-V4").stdout
    entries = int(next(ln.split(":")[1] for ln in header.splitlines() if ln.startswith("Number of entries")))
    # a spoofed SYN flood of 3 s sends 90,000 or more sources here (30 kpps at the slowest measured)
    assert entries > 18432, header  # 1.5 x 12,288: a set that did not grow
    # the buckets (4,096 of 12) fill first; a quarter of the size in buckets measured 65,956 and 65,820
    print(f"\n{entries} entries of 65,536")
    assert entries < 65536, header
