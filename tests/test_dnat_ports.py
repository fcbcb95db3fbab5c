"""Issue 19, item 1's mirror: no local user may take a Service's traffic. An engaged host port's SYNs
skip conntrack, and so the nat table: a port the node DNATs to a pod must never be one, or a local
user listening on it would receive the Service's clients while the port is engaged.
"""

from __future__ import annotations

import json
import subprocess
import sys

import netlab
from netlab import FRESH4, VICTIM4
from guard.dnat_ports import nat_rule_ports
from test_listeners import AS_NOBODY

NODEPORT = 3003  # the fixture's NodePort (iptables DNAT to the pod), outside the default NodePort range
# A NodePort in syn.synproxy.forwarded_ports that the policy's exclude_ports leaves in, DNAT'd by an nft
# table nodeguard does not read (as kube-proxy's nftables mode would)
IN_RANGE = 31080
NFT_NODEPORT = ("add table ip kp; add chain ip kp pre { type nat hook prerouting priority dstnat; }; "
                f"add rule ip kp pre tcp dport {IN_RANGE} dnat to {netlab.POD4}:80")
HOST = 8080  # root's own service: engaged, as a control
# Answers "nobody" to every connection, and holds its listeners until stdin closes.
NOBODY_SERVER = r"""
import socket, sys, threading
def serve(port):
    s = socket.socket(); s.bind(("0.0.0.0", port)); s.listen(64); ready.release()
    while True:
        c, _ = s.accept(); c.sendall(b"nobody"); c.close()
ready = threading.Semaphore(0)
ports = [int(p) for p in sys.argv[1:]]
for p in ports:
    threading.Thread(target=serve, args=(p,), daemon=True).start()
for _ in ports:
    ready.acquire()
print("ready", flush=True)
sys.stdin.read()
"""
# Who answers COUNT connections to DST:PORT: {"backend": echoed, "nobody": nobody's listener, "failed": n}.
CLIENTS = r"""
import json, socket, sys
src, dst, port, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
out = {"backend": 0, "nobody": 0, "failed": 0}
for i in range(count):
    s = socket.socket(); s.settimeout(1)
    try:
        s.bind((src, 0)); s.connect((dst, port)); s.sendall(b"hello")
        got = s.recv(64)
        out["backend" if got == b"hello" else "nobody" if got == b"nobody" else "failed"] += 1
    except OSError:
        out["failed"] += 1
    finally:
        s.close()
print(json.dumps(out))
"""


def _who_answers(attacker, port: int, count: int = 10) -> dict:
    return json.loads(attacker.run([sys.executable, "-c", CLIENTS, FRESH4[0], VICTIM4, str(port), str(count)]).stdout)


def test_a_local_user_listening_on_a_nodeport_never_receives_its_clients(lab, write_policy):
    victim, attacker = lab
    netlab.load_fixture(victim, "kube-proxy-iptables-tracepacket.rules", "iptables-nft")
    victim.run(["nft", NFT_NODEPORT])
    # a policy whose own exclude_ports replaced the default (the NodePort range); every SYN over one engages
    policy = write_policy("syn:\n  synproxy:\n    exclude_ports: [9100]\n    engage_over: 1/second burst 1\n")
    with netlab.pod(victim) as pod, netlab.tcp_server(pod, netlab.POD4, 80), netlab.tcp_server(victim, "0.0.0.0", HOST):
        nobody = victim.popen([*AS_NOBODY, sys.executable, "-c", NOBODY_SERVER, str(NODEPORT), str(IN_RANGE)],
                              stdin=subprocess.PIPE)
        try:
            assert nobody.stdout.readline().strip() == "ready", nobody.stderr.read()
            victim.nodeguard("apply", "-c", policy)
            ports = json.loads(victim.nodeguard("status", "--json", "-c", policy).stdout)["synproxy"]["ports_v4"]
            # conntrack's loose pickup (1, the default) DNATs the client's third ACK; without it, nothing does
            reached = {}
            for loose in (1, 0):
                victim.sysctl("net.netfilter.nf_conntrack_tcp_loose", str(loose))
                reached[loose] = {port: _who_answers(attacker, port) for port in (NODEPORT, IN_RANGE, HOST)}
        finally:
            nobody.kill()
            nobody.wait()
    untracked = victim.counters()["syn-flood: synproxy: syn not tracked v4"]
    print(f"\nauto ports v4 {ports}; who answered 10 connects each by loose: {reached}; SYNs not tracked {untracked}")
    assert HOST in ports and NODEPORT not in ports and IN_RANGE not in ports, ports
    served = {"backend": 10, "nobody": 0, "failed": 0}
    # the control: root's host port was engaged (its SYNs went untracked) and its clients were served
    assert reached == {loose: {NODEPORT: served, IN_RANGE: served, HOST: served} for loose in (1, 0)}, reached
    assert untracked >= 19, untracked


FIXTURES = netlab.FIXTURES
NODE = {"10.77.0.1", "192.168.99.22", "fd77::1", "127.0.0.1"}  # the node's addresses: one is svc2's external IP


def test_the_ports_a_node_dnats_are_read_from_kube_proxys_and_the_cnis_nat_rules():
    saved = (FIXTURES / "kube-proxy-iptables-tracepacket.rules").read_text()
    # NodePorts 3001-3003 (KUBE-NODEPORTS: no destination), port 80 for svc2's external IP, which the node
    # holds; not 80 for Cluster IPs, other external or LoadBalancer IPs; not the filter table's 30000
    assert nat_rule_ports(saved, NODE) == {80, 3001, 3002, 3003}
    assert nat_rule_ports(saved, NODE - {"192.168.99.22"}) == {3001, 3002, 3003}
    portmap = "\n".join((  # the CNI portmap plugin's hostPorts, one of them for a hostIP the node lacks
        "*nat",
        '-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \\"cbr0\\" id: \\"a1\\"" -m multiport '
        "--dports 8080,9000:9002 -j CNI-DN-1",
        "-A CNI-DN-1 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.180.0.3:80",
        "-A CNI-DN-2 -d 10.9.9.9/32 -p tcp -m tcp --dport 8443 -j DNAT --to-destination 10.180.0.4:443",
        "-A CNI-DN-3 -d fd77::/64 -p tcp -m tcp --dport 8444 -j DNAT --to-destination [fd00::4]:443",
        "COMMIT"))
    assert nat_rule_ports(portmap, NODE) == {8080, 9000, 9001, 9002, 8444}


def test_foreign_nat_text_is_never_trusted():
    """Comments, negations, other protocols and garbage leave nothing out but what a TCP rule names."""
    hostile = "\n".join((
        "*nat",
        '-A KUBE-NODEPORTS -p tcp -m comment --comment "x --dport 22 \\" --dport 23" -m tcp --dport 3001 -j X',
        "-A X -p udp -m udp --dport 53 -j DNAT --to-destination 10.0.0.1",  # not TCP
        "-A X ! -p tcp --dport 54 -j Y",
        "-A X -p tcp -m tcp ! --dport 55 -j Y",  # every other port: named by no rule
        "-A X -p tcp -m tcp --dport 99999 -j Y",  # no such port
        "-A X -p tcp -m tcp --dport \x1b[31m -j Y",
        "-A X -p tcp -m tcp --dport 70000:70001 -j Y",
        "-A X -p tcp -d not-an-address -m tcp --dport 56 -j Y",  # unparsable destination: assume it can match
        "-A X -p tcp ! -d 10.77.0.1/32 -m tcp --dport 57 -j Y",  # negated destination: as none
        "-A X -p tcp -m tcp --dport",
        "-A X -p tcp -m multiport --dports 60,,61:59,x -j Y",
        "# -A X -p tcp --dport 58",
        "\x00\xff",
        "*filter",
        "-A INPUT -p tcp -m tcp --dport 59 -j ACCEPT"))  # not the nat table
    assert nat_rule_ports(hostile, NODE) == {3001, 56, 57, 60}
