"""SYN floods without collateral: under a flood, SYNs to the node's own listeners skip conntrack (the
kernel's syncookies answer them) and, with ``forwarded``, SYNPROXY answers for NodePorts.

A brand-new client (an address that never sent anything) must connect at least as well as with no
protection at all, measured in the same run, while conntrack stays small; data flows both ways.
"""

from __future__ import annotations

import json
import signal
import threading
import time

import pytest

import netlab
from netlab import FRESH4, VICTIM4, wait_until

PORT = 8080


class ConntrackPeak:
    """The node's conntrack count, polled every 50 ms in the background: its peak. A read that fails (or
    prints no number) fails the test on exit, and so does a poll that never read: a peak of 0 must mean 0."""

    def __init__(self, ns):
        self.ns, self.peak, self.reads, self.error, self._stop = ns, 0, 0, None, threading.Event()
        self._t = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        try:
            while not self._stop.is_set():
                self.peak = max(self.peak, int(self.ns.run("cat /proc/sys/net/netfilter/nf_conntrack_count").stdout))
                self.reads += 1
                time.sleep(0.05)
        except Exception as e:  # noqa: BLE001 - raised in the test by __exit__
            self.error = e

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        if self.error is not None:
            raise AssertionError(f"conntrack count unreadable: {self.error}") from self.error
        assert self.reads > 0, "the conntrack count was never read"


def _round(victim, attacker, target: str, port: int, client: str, count: int) -> dict:
    victim.run("conntrack -F", check=False)
    flood = netlab.flood(attacker, 30, "-S", "-p", str(port), "--rand-source", target)
    time.sleep(1.0)
    with ConntrackPeak(victim) as ct:
        res = netlab.tcp_clients(attacker, client, target, port, count, "--timeout", "1", "--interval", "0.02")
    flood.send_signal(signal.SIGINT)  # the flood lasts as long as the clients (timeout passes SIGINT on)
    flood.wait(timeout=10)
    return {**res, "conntrack_peak": ct.peak}


@pytest.mark.parametrize("backend", ["nft", "iptables-nft"])
def test_a_brand_new_client_connects_to_a_host_port_during_a_spoofed_syn_flood(lab, write_policy, backend):
    victim, attacker = lab
    netlab.load_fixture(victim, "kube-proxy-iptables-tracepacket.rules", netlab.kube_loader(backend))
    policy = write_policy(netlab.backend_policy(backend))  # the defaults: ports auto
    with netlab.tcp_server(victim, "0.0.0.0", PORT):
        none = _round(victim, attacker, VICTIM4, PORT, FRESH4[0], 50)
        victim.nodeguard("apply", "-c", policy)
        st = json.loads(victim.nodeguard("status", "--json", "-c", policy).stdout)
        assert PORT in st["synproxy"]["ports_v4"], st["synproxy"]
        guarded = _round(victim, attacker, VICTIM4, PORT, FRESH4[1], 100)
    counters = victim.counters(backend)
    proxied = sum(v for k, v in counters.items() if "syn not tracked" in k)
    print(f"\n{backend}: brand-new client, host port, spoofed flood: nodeguard {guarded['ok']}/100 "
          f"(conntrack peak {guarded['conntrack_peak']}), no protection {none['ok']}/50 "
          f"(conntrack peak {none['conntrack_peak']}); SYNs not tracked {proxied}")
    assert guarded["ok"] >= 99, guarded
    assert guarded["ok"] / 100 >= none["ok"] / 50 - 0.02, (guarded, none)
    # the SYNs before the defence engaged (the engage_over burst, 500) are tracked; nothing after them
    assert guarded["conntrack_peak"] < 1000, guarded
    assert proxied > 50_000, "the flood skipped conntrack"


def test_nodeports_are_proxied_too_when_asked(lab, write_policy):
    victim, attacker = lab
    netlab.load_fixture(victim, "kube-proxy-iptables-tracepacket.rules", "iptables-nft")
    policy = write_policy("""
        syn:
          synproxy:
            ports: []
            forwarded: true
            forwarded_ports: [3003]
            set_sysctls: true
    """)
    with netlab.pod(victim) as pod, netlab.tcp_server(pod, netlab.POD4, 80):
        none = _round(victim, attacker, VICTIM4, 3003, FRESH4[0], 20)
        victim.nodeguard("apply", "-c", policy)
        assert victim.run("sysctl -n net.netfilter.nf_conntrack_tcp_loose").stdout.strip() == "0"
        guarded = _round(victim, attacker, VICTIM4, 3003, FRESH4[1], 50)
    proxied = victim.counters()["syn-flood: synproxy: syn not tracked v4"]
    print(f"\nNodePort, spoofed flood, brand-new client: nodeguard {guarded['ok']}/50 (conntrack peak "
          f"{guarded['conntrack_peak']}), no protection {none['ok']}/20 (conntrack peak {none['conntrack_peak']}); "
          f"SYNs not tracked {proxied}")
    # SYNPROXY's handshake race costs a few connects through DNAT: nodeguard 47-50/50 (mean 48.4) in 8
    # runs, 3 of them with NODEGUARD_TEST_BUSY=1; unprotected 14-20/20 in the same runs, so the old
    # "nodeguard's share >= unprotected share" failed whenever the unprotected round lost nothing. The
    # margin, 5 of 50, is the race's worst seen plus 2; with the unprotected round at 20/20 it is the 45.
    assert guarded["ok"] >= 45 and guarded["ok"] / 50 >= none["ok"] / 20 - 0.10, (guarded, none)
    # Without protection the flood grows conntrack (peak 64,840-65,536 in the same runs, never near the
    # old bound, half of nf_conntrack_max 262,144, which a broken proxy could not fail); with it, only
    # the SYNs before SYNPROXY engaged are tracked (engage_over's burst, 500): peak 502-544.
    assert none["conntrack_peak"] > 10_000, none
    assert guarded["conntrack_peak"] < 2_000, guarded
    assert proxied > 50_000, f"the flood skipped conntrack through SYNPROXY: {proxied} (165,025-388,847 seen)"


def test_a_new_listener_is_proxied_within_one_watcher_cycle(lab, tmp_path):
    victim, _attacker = lab
    state = tmp_path / "watch.json"
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"watcher:\n  state_file: {state}\n  verify_interval_s: 1\n")

    def proxied() -> list[int]:
        return json.loads(victim.nodeguard("status", "--json", "-c", str(policy)).stdout)["synproxy"]["ports_v4"] \
            if victim.run("nft list set inet nodeguard synproxy-ports-v4", check=False).returncode == 0 else []

    with netlab.tcp_server(victim, "0.0.0.0", PORT), netlab.watcher(victim, str(policy), str(state)):
        wait_until(lambda: PORT in proxied(), timeout=3, interval=0.1)
        with netlab.tcp_server(victim, "0.0.0.0", 9191):
            took = wait_until(lambda: "9191" in victim.run("nft list set inet nodeguard synproxy-ports-v4").stdout,
                              timeout=3, interval=0.05)
            assert netlab.tcp_clients(_attacker, FRESH4[0], VICTIM4, 9191, 3) == {"ok": 3, "failed": 0}
        print(f"\na new listener was in the SYNPROXY set {took:.2f} s after it started")
        wait_until(lambda: "9191" not in victim.run("nft list set inet nodeguard synproxy-ports-v4").stdout,
                   timeout=3, interval=0.05)


@pytest.mark.calm
def test_forwarded_with_loose_pickup_on_is_refused_before_anything_changes(lab, write_policy):
    """SYNPROXY with nf_conntrack_tcp_loose=1 refused every connection to an engaged port: apply refuses
    the policy (one line, exit 2) unless nodeguard may set the sysctl itself."""
    victim, _attacker = lab
    victim.run("sysctl -qw net.netfilter.nf_conntrack_tcp_loose=1")
    res = victim.nodeguard("apply", "-c", write_policy("syn:\n  synproxy:\n    forwarded: true\n"), check=False)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "nf_conntrack_tcp_loose=0" in res.stderr, res
    assert "nodeguard" not in victim.run("nft list tables").stdout


@pytest.mark.calm
def test_status_reports_wrong_sysctls_and_changes_nothing_unless_asked(lab, write_policy, default_policy):
    victim, _attacker = lab
    victim.run("sysctl -qw net.ipv4.tcp_timestamps=0")
    with netlab.tcp_server(victim, "0.0.0.0", PORT):
        victim.nodeguard("apply", "-c", default_policy)
        out = victim.nodeguard("status", "-c", default_policy).stdout
        assert "WRONG SYSCTL net.ipv4.tcp_timestamps = 0" in out, out
        assert victim.run("sysctl -n net.ipv4.tcp_timestamps").stdout.strip() == "0", "changed without being asked"
        victim.nodeguard("apply", "-c", write_policy("syn:\n  synproxy:\n    set_sysctls: true\n"))
    assert victim.run("sysctl -n net.ipv4.tcp_timestamps").stdout.strip() == "1"


def test_in_peacetime_synproxy_stays_out_of_the_way(lab, write_policy):
    """Below ``engage_over`` nothing changes: every SYN is tracked and every connect is quick (always-on
    SYNPROXY failed or delayed 1-2 % of connections with no flood at all)."""
    victim, attacker = lab
    with netlab.tcp_server(victim, "0.0.0.0", PORT):
        victim.nodeguard("apply", "-c", write_policy("{}"))
        res = netlab.tcp_clients(attacker, FRESH4[0], VICTIM4, PORT, 400, "--timeout", "0.5", "--interval", "0.002")
    c = victim.counters()
    engaged = victim.run("nft list set inet nodeguard " + _set_name(victim, "synproxy-engaged-v4")).stdout
    print(f"\npeacetime, 400 connects at ~400/s: {res}; SYNs not tracked {c['syn-flood: synproxy: syn not tracked v4']}")
    assert res == {"ok": 400, "failed": 0}, res
    assert c["syn-flood: synproxy: syn not tracked v4"] == 0, c
    assert "elements" not in engaged, engaged


def test_an_engaged_host_port_serves_every_client(lab, write_policy):
    """Held engaged, SYNPROXY hung 28 of 1,000 connections after connect (its handshake race); the
    kernel's own syncookies, which answer engaged host ports, must lose none."""
    victim, attacker = lab
    with netlab.tcp_server(victim, "0.0.0.0", PORT):
        victim.nodeguard("apply", "-c", write_policy("syn:\n  synproxy:\n    engage_over: 1/second burst 1\n"))
        res = netlab.tcp_clients(attacker, FRESH4[0], VICTIM4, PORT, 400, "--timeout", "0.5", "--interval", "0.002")
    untracked = victim.counters()["syn-flood: synproxy: syn not tracked v4"]
    print(f"\nengaged host port, 400 connects: {res}; SYNs not tracked {untracked}")
    assert res == {"ok": 400, "failed": 0}, res
    assert untracked >= 399, untracked


def test_a_flood_engages_synproxy_on_its_port_only_and_it_disengages_after_hold(lab, write_policy):
    victim, attacker = lab
    policy = write_policy("syn:\n  synproxy:\n    hold_s: 3\n")
    with netlab.tcp_server(victim, "0.0.0.0", PORT), netlab.tcp_server(victim, "0.0.0.0", 9191):
        victim.nodeguard("apply", "-c", policy)
        name = _set_name(victim, "synproxy-engaged-v4")
        netlab.flood(attacker, 2, "-S", "-p", str(PORT), "--rand-source", VICTIM4).wait()
        engaged = victim.run(f"nft list set inet nodeguard {name}").stdout
        assert f"{PORT} " in engaged and "9191" not in engaged, engaged
        assert netlab.tcp_clients(attacker, FRESH4[0], VICTIM4, 9191, 20) == {"ok": 20, "failed": 0}
        took = wait_until(lambda: "elements" not in victim.run(f"nft list set inet nodeguard {name}").stdout,
                          timeout=8, interval=0.1)
        before = victim.counters()["syn-flood: synproxy: syn not tracked v4"]
        assert netlab.tcp_clients(attacker, FRESH4[1], VICTIM4, PORT, 20) == {"ok": 20, "failed": 0}
        assert victim.counters()["syn-flood: synproxy: syn not tracked v4"] == before
    print(f"\nengaged on {PORT} only; disengaged {took:.1f} s after the flood (hold_s 3)")


def _set_name(ns, base: str) -> str:
    sets = ns.run("nft -j list sets inet").stdout
    return next(o["set"]["name"] for o in json.loads(sets)["nftables"]
                if "set" in o and o["set"]["name"].startswith(base + "-"))


def test_ipv6_clients_connect_through_synproxy_and_carry_data(lab, write_policy):
    victim, attacker = lab
    with netlab.tcp_server(victim, "::", PORT):
        victim.nodeguard("apply", "-c", write_policy("syn:\n  synproxy:\n    engage_over: 1/second burst 1\n"))
        assert netlab.tcp_clients(attacker, netlab.LEGIT6, netlab.VICTIM6, PORT, 10) == {"ok": 10, "failed": 0}
    c = victim.counters()
    assert "synproxy-input: synproxy syn v6" not in c, "host ports are answered by the kernel's syncookies"
    assert c["syn-flood: synproxy: syn not tracked v6"] >= 8, c
