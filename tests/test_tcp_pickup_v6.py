"""``tcp_pickup`` on IPv6: a connection to a DNAT'd service address (ip6 nat, as kube-proxy's NodePort)
whose conntrack entry was flushed, while the rate is spent (a burst of one an hour, no flood needed).
Its client completed a handshake, so its next segment passes at once, as without protection; with the
trusted set emptied, it is dropped once and remembered in ``pickup-v6``, and its retransmission passes.
The flushes come as soon as each echo is back, so the client's delayed ACK of it may be the first segment
after the flush: without the trust that pure ACK (never retransmitted) was dropped, the pod's resent echo
was picked up from the pod's side, without the reverse NAT, and the connection never resumed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest

import netlab
from netlab import LEGIT6, VICTIM6, wait_until

pytestmark = pytest.mark.kernel

POD6 = "fd80::3"
PORT = 3003
POLICY = "tcp_pickup:\n  rate: 1/hour burst 1\n"


@contextmanager
def _pod6(victim):
    with netlab.namespace("ngp") as p:
        netlab.core.veth(victim, "ngpod0", p, "eth0")
        victim.run("ip -6 addr add fd80::1/64 dev ngpod0 nodad")
        victim.run("sysctl -qw net.ipv6.conf.all.forwarding=1")
        p.run(f"ip -6 addr add {POD6}/64 dev eth0 nodad")
        p.run("ip -6 route add default via fd80::1")
        victim.run(["nft", f"add table ip6 kube; add chain ip6 kube pre {{ type nat hook prerouting priority -100; }}; "
                           f"add rule ip6 kube pre ip6 daddr {VICTIM6} tcp dport {PORT} dnat to [{POD6}]:80"])
        # neighbours resolved before the connection: a handshake slowed by neighbour discovery leaves the
        # client with a retransmission timeout of seconds, over second_chance_s (a slow peer: not this test)
        victim.run(f"ping -6 -c1 -W2 {POD6}")
        victim.run(f"ping -6 -c1 -W2 {LEGIT6}")
        yield p


def _send(proc) -> dict:
    proc.stdin.write("\n")
    proc.stdin.flush()
    return json.loads(proc.stdout.readline())


# the iptables flavours share the rendering and the xt matches: legacy covers iptables-nft
@pytest.mark.parametrize("backend", ["nft", "iptables-legacy"])
def test_a_flushed_ipv6_connection_resumes_at_once_and_by_its_second_chance_untrusted(lab, write_policy, backend):
    victim, attacker = lab
    with _pod6(victim) as pod, netlab.tcp_server(pod, POD6, 80, echo=True):
        policy = write_policy(netlab.backend_policy(backend, POLICY))
        victim.nodeguard("apply", "-c", policy)
        proc = attacker.popen([sys.executable, str(netlab.HELPERS / "tcp_session.py"), LEGIT6, VICTIM6, str(PORT),
                               "15"], stdin=subprocess.PIPE)
        try:
            assert proc.stdout.readline().strip() == "connected", proc.stderr.read()
            rto = attacker.run(f"ss -tin dst [{VICTIM6}]").stdout
            # a source is its /64 there, as in every per-source set: one /64's handshakes from many
            # addresses could otherwise fill the set and leave every other IPv6 client untrusted
            trusted = victim.meters(policy)["trusted-v6"]["kernel_name"]
            wait_until(lambda: victim.set_members(backend, trusted) == {"fd77::"}, timeout=3, interval=0.1)
            runs = []
            # the first pickup spends the burst; the next ones are over the rate: trusted, then not
            for forget in (False, False, False, True):
                if forget:  # the client's delayed ACK of the last echo out before the flush: only data is dropped
                    time.sleep(0.3)
                victim.run("conntrack -F")  # else that pure ACK, never retransmitted, may be the first segment
                if forget:
                    victim.forget_trusted(backend, trusted)
                runs.append(_send(proc))
        finally:
            proc.kill()
            proc.wait()
        counters = victim.counters(backend)
    print(f"\n{runs} { {k: v for k, v in counters.items() if 'pickup' in k} } {rto.split('rto:')[-1][:6]}")
    assert all(r["ok"] for r in runs), runs
    assert all(r["seconds"] < 0.15 for r in runs[:3]), runs  # under the rate, then trusted: at once
    assert 0.15 < runs[3]["seconds"] < 2.0, runs  # dropped once, its retransmission passed
    assert 2 <= counters["tcp-pickup: trusted v6"] <= 4, counters
    assert counters["tcp-pickup: first sight v6"] == 1, counters
    assert counters["tcp-pickup: second chance v6"] == 1, counters
