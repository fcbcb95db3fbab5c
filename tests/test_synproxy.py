"""SYN floods without collateral: SYNPROXY answers for the node's own listeners before conntrack.

A brand-new client (an address that never sent anything) must connect at least as well as with no
protection at all, measured in the same run, while conntrack stays small; data flows both ways.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

import netlab
from netlab import FRESH4, VICTIM4, wait_until

PORT = 8080


class ConntrackPeak:
    """The node's conntrack count, polled every 50 ms in the background: its peak."""

    def __init__(self, ns):
        self.ns, self.peak, self._stop = ns, 0, threading.Event()
        self._t = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            n = self.ns.run("cat /proc/sys/net/netfilter/nf_conntrack_count", check=False).stdout.strip()
            self.peak = max(self.peak, int(n or 0))
            time.sleep(0.05)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def _round(victim, attacker, target: str, port: int, client: str, count: int) -> dict:
    victim.run("conntrack -F", check=False)
    flood = netlab.flood(attacker, 8, "-S", "-p", str(port), "--rand-source", target)
    time.sleep(1.0)
    with ConntrackPeak(victim) as ct:
        res = netlab.tcp_clients(attacker, client, target, port, count, "--timeout", "1", "--interval", "0.02")
    flood.wait()
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
          f"(conntrack peak {none['conntrack_peak']}); SYNs answered by SYNPROXY {proxied}")
    assert guarded["ok"] >= 99, guarded
    assert guarded["ok"] / 100 >= none["ok"] / 50 - 0.02, (guarded, none)
    assert guarded["conntrack_peak"] < 1000, guarded
    assert proxied > 50_000, "the flood reached SYNPROXY"


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
        none = _round(victim, attacker, VICTIM4, 3003, FRESH4[0], 30)
        victim.nodeguard("apply", "-c", policy)
        assert victim.run("sysctl -n net.netfilter.nf_conntrack_tcp_loose").stdout.strip() == "0"
        guarded = _round(victim, attacker, VICTIM4, 3003, FRESH4[1], 50)
    print(f"\nNodePort, spoofed flood, brand-new client: nodeguard {guarded['ok']}/50 (conntrack peak "
          f"{guarded['conntrack_peak']}), no protection {none['ok']}/30 (conntrack peak {none['conntrack_peak']})")
    assert guarded["ok"] >= 48 and guarded["ok"] / 50 >= none["ok"] / 30, (guarded, none)
    assert guarded["conntrack_peak"] < 0.5 * 262_144


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


def test_status_reports_wrong_sysctls_and_changes_nothing_unless_asked(lab, write_policy):
    victim, _attacker = lab
    victim.run("sysctl -qw net.ipv4.tcp_timestamps=0")
    with netlab.tcp_server(victim, "0.0.0.0", PORT):
        victim.nodeguard("apply")
        out = victim.nodeguard("status").stdout
        assert "WRONG SYSCTL net.ipv4.tcp_timestamps = 0" in out, out
        assert victim.run("sysctl -n net.ipv4.tcp_timestamps").stdout.strip() == "0", "changed without being asked"
        victim.nodeguard("apply", "-c", write_policy("syn:\n  synproxy:\n    set_sysctls: true\n"))
    assert victim.run("sysctl -n net.ipv4.tcp_timestamps").stdout.strip() == "1"


def test_ipv6_clients_connect_through_synproxy_and_carry_data(lab):
    victim, attacker = lab
    with netlab.tcp_server(victim, "::", PORT):
        victim.nodeguard("apply")
        assert netlab.tcp_clients(attacker, netlab.LEGIT6, netlab.VICTIM6, PORT, 10) == {"ok": 10, "failed": 0}
    c = victim.counters()
    assert c["synproxy-input: synproxy syn v6"] >= 10 and c["synproxy-input: synproxy ack v6"] >= 10, c
    assert c["filter-prerouting: synproxy: syn not tracked v6"] >= 10, c
