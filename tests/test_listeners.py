"""``syn.synproxy.ports: auto``: which listeners count, read by sock_diag and by /proc, in a namespace.

(Ported with the prototype from the SYN study: git show e4ff56f:docs/syn-defence.md, section 5.)
"""

from __future__ import annotations

import json
import sys

CHILD = r"""
import json, socket, sys
from guard import listeners as L
def listen(fam, addr, port, v6only=None, dev=None, rcvbuf=None):
    s = socket.socket(fam, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    if v6only is not None:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
    if dev:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, dev.encode())
    s.bind((addr, port)); s.listen(8); return s
A4, A6 = socket.AF_INET, socket.AF_INET6
keep = [
    listen(A4, "0.0.0.0", 1001),               # wildcard v4
    listen(A6, "::", 1002, v6only=True),       # wildcard v6 only
    listen(A6, "::", 1003, v6only=False),      # dual-stack: v4 and v6
    listen(A4, "127.0.0.1", 1004),             # loopback: never
    listen(A6, "::1", 1005, v6only=True),      # loopback: never
    listen(A4, "127.0.0.53", 1006),            # any 127/8: never
    listen(A4, "10.98.0.1", 1007),             # the uplink's address
    listen(A6, "fd98::1", 1008, v6only=True),  # the uplink's v6 address
    listen(A4, "10.97.0.1", 1009),             # another local interface's address: weak host, reachable
    listen(A4, "0.0.0.0", 1010, dev="ngt1"),   # SO_BINDTODEVICE to a non-protected device: never
    listen(A4, "0.0.0.0", 1011, dev="ngt0"),   # SO_BINDTODEVICE to the uplink
    listen(A4, "0.0.0.0", 1012, rcvbuf=262144),  # SO_RCVBUF: smaller window scale, left to kernel syncookies
]
c = socket.create_connection(("127.0.0.1", 1001)); keep.append(c)  # an established pair: not a listener
addrs, idx = L.local_addresses()
diag, proc = L.read_listeners_diag(), L.read_listeners_proc()
rmem1 = int(open("/proc/sys/net/ipv4/tcp_rmem").read().split()[1])
print(json.dumps({
    "diag": L.synproxy_ports(diag, addrs, {idx["ngt0"]}, default_rcvbuf=rmem1),
    "diag_any_rcvbuf": L.synproxy_ports(diag, addrs, {idx["ngt0"]}),
    "proc": L.synproxy_ports(proc, addrs, {idx["ngt0"]}),
    "diag_ports": sorted((x.family, x.addr, x.port, x.v6only) for x in diag),
    "proc_ports": sorted((x.family, x.addr, x.port) for x in proc),
    "excluded": L.synproxy_ports(diag, addrs, {idx["ngt0"]}, exclude={1001, 1003})}))
"""



def test_auto_ports_are_the_listeners_reachable_from_the_uplink_per_family(ns):
    for cmd in ("ip link add ngt0 type veth peer name ngt0p", "ip link add ngt1 type veth peer name ngt1p",
                "ip addr add 10.98.0.1/24 dev ngt0", "ip -6 addr add fd98::1/64 dev ngt0 nodad",
                "ip addr add 10.97.0.1/24 dev ngt1", "ip link set ngt0 up", "ip link set ngt1 up"):
        ns.run(cmd)
    out = json.loads(ns.run([sys.executable, "-c", CHILD]).stdout)
    assert out["diag"] == {"4": [1001, 1003, 1007, 1009, 1011], "6": [1002, 1003, 1008]}
    assert out["diag_any_rcvbuf"]["4"] == [1001, 1003, 1007, 1009, 1011, 1012], "1012 only left out for its SO_RCVBUF"
    # /proc shows neither v6only nor SO_BINDTODEVICE: [::]:1002 counts for IPv4 too (bindv6only=0) and
    # 1010 is kept: the fallback may proxy a port too many (that port then answers "connected, reset"
    # instead of RST on IPv4), never one too few
    assert out["proc"] == {"4": [1001, 1002, 1003, 1007, 1009, 1010, 1011, 1012], "6": [1002, 1003, 1008]}
    assert [p[:3] for p in out["diag_ports"]] == [list(p) for p in out["proc_ports"]], "both readers see the same listeners"
    assert out["excluded"] == {"4": [1007, 1009, 1011, 1012], "6": [1002, 1008]}
    assert all(p[3] in (True, False) for p in out["diag_ports"] if p[0] == 6), "sock_diag reports v6only"
