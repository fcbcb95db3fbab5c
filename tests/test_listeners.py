"""``syn.synproxy.ports: auto``: which listeners count, read by sock_diag and by /proc, in a namespace.

(Ported with the prototype from the SYN study: git show e4ff56f:docs/syn-defence.md, section 5.)
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

import netlab
from guard.listeners import Listener, synproxy_ports
from guard.policy.schema import Policy
from guard.watch.ports import BUSY_SHARE, REDETECT_MIN_S, HeldPorts

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



@pytest.mark.calm
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


# Listeners from a JSON list of [addr, port, options]; prints {"addr port": "ok" or the errno name} and
# holds them until stdin closes. Run as root for the services and as nobody for the attacker.
OPEN = r"""
import errno, json, socket, sys
OPTS = {"SO_RCVBUF": (socket.SOL_SOCKET, socket.SO_RCVBUF), "SO_REUSEPORT": (socket.SOL_SOCKET, socket.SO_REUSEPORT),
        "SO_BINDTODEVICE": (socket.SOL_SOCKET, socket.SO_BINDTODEVICE), "IP_FREEBIND": (socket.IPPROTO_IP, 15),
        "IPV6_V6ONLY": (socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)}
held, out = [], {}
for addr, port, opt in json.loads(sys.argv[1]):
    s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_STREAM)
    for name, value in opt.items():
        s.setsockopt(*OPTS[name], value.encode() if isinstance(value, str) else value)
    try:
        s.bind((addr, port)); s.listen(8); held.append(s); out[f"{addr} {port}"] = "ok"
    except OSError as e:
        out[f"{addr} {port}"] = errno.errorcode[e.errno]
print(json.dumps(out), flush=True)
sys.stdin.read()
"""
AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
LOCKED = {"SO_RCVBUF": 4096}  # the issue's: a smaller window scale than the node's
ROOT = [  # the node's services, as root
    ["10.99.0.2", 6443, {}],                   # the issue's apiserver on the node's address
    ["10.99.0.2", 6444, {}],
    ["0.0.0.0", 6445, {}],                     # IPv4 only: IPv6 6445 is free for anyone
    ["10.99.0.2", 6446, LOCKED],               # root's own locked buffer: SYNPROXY would break it
    ["10.99.0.2", 6448, {"SO_REUSEPORT": 1}],
]
NOBODY = [  # a local user's listeners, trying to take protection away or give it back
    ["127.0.0.1", 6443, LOCKED],               # the issue's reproduction: loopback
    ["10.99.0.3", 6444, LOCKED],               # another address of the uplink: reachable, but 6444 is root's too
    ["::", 6445, {"IPV6_V6ONLY": 1, **LOCKED}],  # the other family: its own IPv6 service
    ["10.99.0.3", 6446, {}],                   # unlocked, beside root's locked 6446
    ["0.0.0.0", 6447, LOCKED],                 # its own port alone, locked
    ["10.99.0.2", 6448, {"SO_REUSEPORT": 1, **LOCKED}],  # join root's reuseport group: refused by the kernel
    ["10.99.0.3", 6449, {}],                   # its own port, plus three locked listeners no uplink reaches:
    ["::1", 6449, {"IPV6_V6ONLY": 1, **LOCKED}],  # loopback v6,
    ["10.97.0.1", 6449, {"SO_BINDTODEVICE": "ngt1", **LOCKED}],  # another device,
    ["10.99.0.99", 6449, {"IP_FREEBIND": 1, **LOCKED}],  # an address the node does not have
]
PORTS = r"""
import json
from guard import listeners as L
print(json.dumps({mode: L.auto_ports(("ngt0",), set(), synproxy_answers) for mode, synproxy_answers
                  in (("syncookies", False), ("synproxy", True))}))
"""


@pytest.mark.calm
def test_a_local_user_can_neither_take_protection_away_nor_give_it_back(ns, write_policy):
    """Issue 19 item 1: only listeners an uplink reaches count, and a locked buffer only for its port's owner."""
    for cmd in ("ip link add ngt0 type veth peer name ngt0p", "ip link add ngt1 type veth peer name ngt1p",
                "ip addr add 10.99.0.2/24 dev ngt0", "ip addr add 10.99.0.3/24 dev ngt0",
                "ip addr add 10.97.0.1/24 dev ngt1", "ip link set ngt0 up", "ip link set ngt1 up"):
        ns.run(cmd)
    procs, opened = [], []
    try:
        for who, spec in (([], ROOT), (AS_NOBODY, NOBODY)):  # root's first: nobody meets root's listeners
            procs.append(ns.popen([*who, sys.executable, "-c", OPEN, json.dumps(spec)], stdin=subprocess.PIPE))
            opened.append(json.loads(procs[-1].stdout.readline() or procs[-1].stderr.read()))
        ports = json.loads(ns.run([sys.executable, "-c", PORTS]).stdout)
        policies = {fwd: write_policy(f"interfaces: [ngt0]\nsyn: {{synproxy: {{forwarded: {fwd}}}}}\n", f"{fwd}.yaml")
                    for fwd in ("false", "true")}
        status = {fwd: json.loads(ns.run([sys.executable, "-m", "guard", "status", "--json", "-c", p]).stdout)["synproxy"]
                  for fwd, p in policies.items()}
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert set(opened[0].values()) == {"ok"}, opened[0]
    assert opened[1].pop("10.99.0.2 6448") == "EADDRINUSE", "the kernel keeps another user out of root's reuseport group"
    assert set(opened[1].values()) == {"ok"}, opened[1]
    # the issue's reproduction, as `status` shows it: nobody's locked loopback listener leaves 6443 defended
    assert 6443 in status["false"]["ports_v4"] and 6443 in status["true"]["ports_v4"], status
    # root's own locked buffer counts only where SYNPROXY answers: the policy's `forwarded` decides
    assert 6446 in status["false"]["ports_v4"] and 6446 not in status["true"]["ports_v4"], status
    # the listener's own syncookies answer engaged host ports: no listener's options take a port out
    assert ports["syncookies"] == {"4": [6443, 6444, 6445, 6446, 6447, 6448, 6449], "6": [6445]}
    # SYNPROXY answers (forwarded): a locked buffer leaves a port out only for its owner, in its family
    # 6446: root's lock, which nobody's listener beside it does not undo; 6447 and IPv6 6445: nobody's own
    assert ports["synproxy"] == {"4": [6443, 6444, 6445, 6448, 6449], "6": []}


def test_a_locked_buffer_speaks_for_its_owner_in_the_families_it_receives():
    """The owner rule between two non-root users (an etcd-like service, uid 999, and nobody), and a
    dual-stack listener's lock, which counts for both families."""
    d, locked = 131072, 8192
    found = synproxy_ports([
        Listener(6, "::", 7001, v6only=False, rcvbuf=locked, uid=0),        # dual-stack, locked: out in both
        Listener(4, "10.99.0.2", 7002, rcvbuf=d, uid=999),                  # nobody's lock beside it: ignored
        Listener(4, "10.99.0.3", 7002, rcvbuf=locked, uid=65534),
        Listener(4, "10.99.0.2", 7003, rcvbuf=locked, uid=999),             # the price: a non-root lock that
        Listener(4, "10.99.0.3", 7003, rcvbuf=d, uid=65534),                # another user shares is ignored
        Listener(4, "10.99.0.2", 7004, rcvbuf=locked, uid=999),             # one owner on both addresses:
        Listener(4, "10.99.0.3", 7004, rcvbuf=d, uid=999),                  # its lock counts
    ], {"10.99.0.2", "10.99.0.3"}, set(), default_rcvbuf=d)
    assert found == {4: [7002, 7003], 6: []}


FLAP = r"""
import socket, sys, time
end, k = time.monotonic() + float(sys.argv[1]), 0
while time.monotonic() < end:  # 200 listeners, then 200 others, ... : no two looks see the same set
    held = []
    for port in range(20000 + 200 * (k % 10), 20200 + 200 * (k % 10)):
        s = socket.socket()
        s.bind(("0.0.0.0", port)); s.listen(1); held.append(s)
    time.sleep(0.15)
    for s in held:
        s.close()
    k += 1
"""


def test_a_local_user_flapping_listeners_causes_port_updates_never_repairs(ns, tmp_path):
    """Issue 19: nobody's listeners come and go faster than the watcher looks. Each new ``ports: auto``
    set is an update of our own desired state: no repair, never contested, at most one per
    REDETECT_MIN_S (verify_interval_s is below it here); a real tamper is still repaired at once."""
    netlab.add_uplink(ns)
    state = tmp_path / "watch.json"
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"interfaces: [ngu0]\nsyn: {{synproxy: {{ports: auto}}}}\nwatcher:\n  state_file: {state}\n"
                      "  verify_interval_s: 0.5\n  max_repairs_per_minute: 2\n")
    flap_s = 4.0
    with netlab.watcher(ns, str(policy), str(state)) as proc:
        started = time.monotonic()
        ns.run([*AS_NOBODY, sys.executable, "-c", FLAP, str(flap_s)])
        took = time.monotonic() - started
        flapped = json.loads(state.read_text())
        print(f"\n{flap_s:.0f} s of flapping: {flapped['port_updates']} port updates, {flapped['repairs']} repairs")
        assert flapped["repairs"] == 0 and not flapped["contested"] and flapped["backoff_s"] == 0, flapped
        assert 2 <= flapped["port_updates"] <= took / REDETECT_MIN_S + 1, flapped
        ns.run("nft delete table inet nodeguard")
        netlab.wait_until(lambda: json.loads(state.read_text())["repairs"] >= 1 and ns.run(
            "nft list set inet nodeguard synproxy-ports-v4", check=False).returncode == 0, timeout=10)
        repaired = json.loads(state.read_text())
        assert repaired["repairs"] == 1 and repaired["last_kind"] == "table_missing", repaired
        assert proc.poll() is None


def test_a_costly_look_at_the_listeners_defers_the_next_by_its_share_of_a_core():
    """A cheap look is repeated at the next verification (REDETECT_MIN_S at the least); one that cost
    a second of CPU (7,500 flapping listeners) waits until it is BUSY_SHARE of a core."""
    policy = Policy.model_validate({"syn": {"synproxy": {"ports": "auto"}}})
    held = HeldPorts()
    held.ports, held.interfaces = {4: [22], 6: []}, ("ngu0",)
    held.looked(100.0, 0.002)
    assert not held.due(policy, 100.0 + REDETECT_MIN_S - 0.01) and held.due(policy, 100.0 + REDETECT_MIN_S)
    held.looked(100.0, 1.0)
    assert not held.due(policy, 100.0 + 1.0 / BUSY_SHARE - 0.01) and held.due(policy, 100.0 + 1.0 / BUSY_SHARE)


# Opens LOOPBACK listeners on loopback (127.2.x.y, ::1, and v4-mapped ::ffff:127.0.0.1 on dual-stack
# sockets) and REACHABLE ones on 0.0.0.0 (SO_REUSEPORT, ports 40000-40009), each with a locked receive
# buffer; prints how many of each, and holds them until stdin closes.
MANY = r"""
import resource, socket, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
loopback, reachable = int(sys.argv[1]), int(sys.argv[2])
loopback = min(loopback, hard - 64 - reachable)
held = []
def listen(s, addr, port):
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.bind((addr, port)); s.listen(1); held.append(s)
for i in range(loopback):
    if i % 10 in (1, 2):  # ::1 on an IPv6-only socket, ::ffff:127.0.0.1 on a dual-stack one
        s = socket.socket(socket.AF_INET6); s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, i % 10 == 1)
        addr = "::1" if i % 10 == 1 else "::ffff:127.0.0.1"
    else:
        s = socket.socket(); addr = f"127.2.{i // 40000}.{i // 20000 % 2 + 1}"
    listen(s, addr, 20000 + i % 20000)
for i in range(reachable):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listen(s, "0.0.0.0", 40000 + i % 10)
print(loopback, reachable, flush=True)
sys.stdin.read()
"""
# ``ports: auto`` both ways, and what it cost: the listeners that reached Python (the aggregation's
# calls), the Python memory at its peak; every listener there is; the same rule over /proc's lines.
LOOK_MANY = r"""
import json, tracemalloc
from guard import listeners as L
added, add = [0], L._Receivers.add
def counted(self, *row):
    added[0] += 1
    add(self, *row)
L._Receivers.add = counted
tracemalloc.start()
ports = {mode: L.auto_ports(("ngt0",), set(), fwd) for mode, fwd in (("syncookies", False), ("synproxy", True))}
peak = tracemalloc.get_traced_memory()[1]
tracemalloc.stop()
addrs, idx = L.local_addresses()
print(json.dumps({**ports, "peak": peak, "added": added[0], "all": len(L.read_listeners_diag(rcvbuf=False)),
                  "proc": L._receivers(L._proc_rows(), addrs, {idx["ngt0"]}, set(), None).ports()}))
"""
MAPPED = ["::ffff:10.99.0.2", 6450, {"IPV6_V6ONLY": 0}]  # root's v4-mapped bind: IPv4 6450


@pytest.mark.calm
def test_a_local_users_many_loopback_listeners_cost_no_memory_and_change_nothing(ns):
    """Issue 19: a million loopback listeners of nobody's took the daemon past its MemoryMax, each one a
    Python object before loopback was dropped. The kernel drops them now (sock_diag bytecode), and the
    reachable rest is folded per port as it streams: same ports, memory that does not grow with them."""
    for cmd in ("ip link add ngt0 type veth peer name ngt0p", "ip addr add 10.99.0.2/24 dev ngt0",
                "ip addr add 10.99.0.3/24 dev ngt0", "ip link set ngt0 up"):
        ns.run(cmd)
    procs = []
    try:
        procs.append(ns.popen([sys.executable, "-c", OPEN, json.dumps([*ROOT, MAPPED])], stdin=subprocess.PIPE))
        assert set(json.loads(procs[0].stdout.readline() or procs[0].stderr.read()).values()) == {"ok"}
        alone = json.loads(ns.run([sys.executable, "-c", LOOK_MANY]).stdout)
        procs.append(ns.popen([*AS_NOBODY, sys.executable, "-c", MANY, "16000", "4000"], stdin=subprocess.PIPE))
        loopback, reachable = map(int, (procs[1].stdout.readline() or procs[1].stderr.read()).split())
        crowded = json.loads(ns.run([sys.executable, "-c", LOOK_MANY]).stdout)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    print(f"\n{loopback} loopback, {reachable} reachable listeners: {alone['added']} -> {crowded['added']} rows "
          f"aggregated, Python peak {alone['peak']} -> {crowded['peak']} B")
    assert loopback >= 900 and reachable == 4000, "too few descriptors allowed to matter"
    assert crowded["all"] == alone["all"] + loopback + reachable == len(ROOT) + 1 + loopback + reachable
    services = [6443, 6444, 6445, 6446, 6448, 6450]
    assert alone["syncookies"] == alone["proc"] == {"4": services, "6": []}
    assert alone["synproxy"] == {"4": [6443, 6444, 6445, 6448, 6450], "6": []}, "root's own lock leaves 6446 out"
    # nobody's loopback listeners change nothing; its reachable ones add its own ports, which its
    # locked buffers take out again where SYNPROXY answers
    assert crowded["syncookies"] == crowded["proc"] == {"4": services + list(range(40000, 40010)), "6": []}
    assert crowded["synproxy"] == alone["synproxy"]
    assert crowded["added"] == alone["added"] + 2 * reachable, "the kernel sent none of the loopback listeners"
    # measured 73 KB alone, 106 KB beside them (mostly 64 KiB receive buffers); as objects, the 4,000 reachable
    # listeners alone were ~0.9 MB (bench/listeners.py: 215 B each)
    assert crowded["peak"] < 256 * 1024, crowded["peak"]
