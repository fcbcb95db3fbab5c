"""A spoofed UDP flood at a port nothing listens on, with and without nodeguard, in the same test.

Unprotected, every spoofed datagram leaves a conntrack entry for 30 s (the UDP unreplied timeout), so
the table fills. With ``closed_ports`` (the default policy's, 1000/s burst 2000), flows over the rate
that no socket would receive are dropped on input before conntrack confirms them. Legitimate UDP keeps
working throughout: a host service, a UDP Service DNAT'd to a pod, and the node's own resolver.
"""

from __future__ import annotations

import time

import pytest

import netlab
from netlab import LEGIT4, TRUSTED4, VICTIM4

pytestmark = pytest.mark.kernel

FLOOD_S = 5.0
CLOSED, HOST_UDP, SERVICE_UDP, DNS = 9999, 5353, 30053, 53


def _legit_udp(victim, attacker) -> dict[str, int]:
    """Answers out of 20 for each kind of legitimate UDP, asked during the flood."""
    out = {}
    for kind, ns, src, dst, port in (("host service", attacker, LEGIT4, VICTIM4, HOST_UDP),
                                     ("service via dnat", attacker, LEGIT4, VICTIM4, SERVICE_UDP),
                                     ("node's resolver", victim, VICTIM4, TRUSTED4, DNS)):
        out[kind] = netlab.udp_clients(ns, src, dst, port, 20, "--timeout", "0.5", "--interval", "0.02")["ok"]
    return out


def _flood_closed_port(victim, attacker) -> dict:
    victim.run("conntrack -F", check=False)
    truth = netlab.Truth(victim, {"flood": f"udp dport {CLOSED}"})
    flood = netlab.flood(attacker, FLOOD_S, "--udp", "--rand-source", "-p", str(CLOSED), VICTIM4)
    time.sleep(1.5)  # the table is filling (unprotected: 100,000+ entries by now)
    legit = _legit_udp(victim, attacker)
    flood.wait(FLOOD_S + 10)
    return {"legit": legit, "conntrack": victim.conntrack_count(), "arrived": truth.counts()["flood"]}


# the iptables flavours share the rendering and the xt matches: legacy covers iptables-nft (11 s less)
@pytest.mark.parametrize("backend", ["nft", "iptables-legacy"])
def test_a_closed_port_flood_leaves_conntrack_alone_and_udp_services_answer(lab, write_policy, backend):
    victim, attacker = lab
    with netlab.pod(victim) as pod, netlab.udp_echo(pod, netlab.POD4, HOST_UDP), \
            netlab.udp_echo(victim, VICTIM4, HOST_UDP), netlab.udp_echo(attacker, TRUSTED4, DNS):
        loader = netlab.kube_loader(backend)
        victim.run(f"{loader} -t nat -A PREROUTING -p udp --dport {SERVICE_UDP} "
                   f"-j DNAT --to-destination {netlab.POD4}:{HOST_UDP}")  # a UDP NodePort, as kube-proxy makes it
        none = _flood_closed_port(victim, attacker)
        victim.nodeguard("apply", "-c", write_policy(netlab.backend_policy(backend)))
        guarded = _flood_closed_port(victim, attacker)
        counters = victim.counters(backend)
    print(f"\n{backend}: none {none}\n{backend}: nodeguard {guarded}")

    rate, burst = 1000, 2000  # rules/default.yaml closed_ports
    # the scenario is real: unprotected, the flood filled conntrack far beyond what the rate lets in
    assert none["arrived"] > 100_000 and none["conntrack"] > 5 * (rate * FLOOD_S + burst), none
    assert guarded["arrived"] > 100_000, guarded
    # protected: what the rate lets in over the flood, plus the legitimate flows (60) and slack for
    # the flood's first packets before the bucket is empty
    assert guarded["conntrack"] <= rate * (FLOOD_S + 1) + burst + 500, guarded
    assert counters["closed-ports: udp to a closed port over the rate"] > 0.8 * guarded["arrived"], counters
    for kind, ok in guarded["legit"].items():
        assert ok >= none["legit"][kind] - 1 and ok >= 19, (kind, none, guarded)
