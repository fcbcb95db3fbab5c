"""Prototype for ``syn.synproxy.ports: auto``: which TCP ports the node itself serves on its uplinks.

The lead moves this into guard/ (e.g. guard/listeners.py). Two readers, same result:

* ``read_listeners_diag()``: NETLINK_SOCK_DIAG, one SOCK_DIAG_BY_FAMILY dump per family with the
  state filter TCPF_LISTEN, so the kernel sends listeners only (established sockets cost nothing);
  the INET_DIAG_SKV6ONLY attribute says whether a ``[::]`` listener also takes IPv4.
* ``read_listeners_proc()``: /proc/net/tcp and tcp6 (state 0A), the fallback; the kernel formats every
  socket of the namespace as text, listeners or not, and v6only is not shown there.

``synproxy_ports(listeners, local_addrs, protected_ifindexes)`` keeps a listener when it can be
reached from a protected uplink: bound to the wildcard or to an address of the node (any
interface: with the default weak-host model a packet to any local address arrives on the uplink),
and not bound by SO_BINDTODEVICE to an interface other than a protected one. Loopback binds
(127.0.0.0/8, ::1, ::ffff:127.0.0.0/104) never count. Result per family, because SYNPROXY completes
the handshake before the server is asked: a port without a listener of that family would turn a
clean RST into "connected, then reset".

    python bench/listeners.py            # this namespace's listeners and the ports auto would pick
    python bench/listeners.py --bench    # cost with 10,000 listening sockets (in a throwaway netns)
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
TCP_LISTEN = 10
INET_DIAG_SKV6ONLY = 11
INET_DIAG_SKMEMINFO = 7  # u32[]: index 1 is SK_MEMINFO_RCVBUF


@dataclass(frozen=True)
class Listener:
    family: int  # 4 or 6
    addr: str
    port: int
    ifindex: int = 0  # SO_BINDTODEVICE, 0 = any
    v6only: bool | None = None  # IPv6 only; None = unknown (the /proc reader)
    rcvbuf: int | None = None  # sk_rcvbuf (sock_diag only): differs from tcp_rmem[1] when SO_RCVBUF locked it


def read_listeners_diag() -> list[Listener]:
    out: list[Listener] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG) as s:
        s.bind((0, 0))
        for fam, version in ((socket.AF_INET, 4), (socket.AF_INET6, 6)):
            # inet_diag_req_v2: family, protocol, ext, pad, states, then inet_diag_sockid (sport, dport,
            # src[16], dst[16], if, cookie[2]) left zero for a dump. No ext needed: the kernel adds
            # INET_DIAG_SKV6ONLY to every AF_INET6 listener by itself.
            ext = 1 << (INET_DIAG_SKMEMINFO - 1)
            req = struct.pack("=BBBxI", fam, socket.IPPROTO_TCP, ext, 1 << TCP_LISTEN) + b"\0" * 48
            hdr = struct.pack("=IHHII", 16 + len(req), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, version, 0)
            s.send(hdr + req)
            done = False
            while not done:
                data = s.recv(1 << 20)
                off = 0
                while off + 16 <= len(data):
                    ln, typ, _flags, _seq, _pid = struct.unpack_from("=IHHII", data, off)
                    if typ == NLMSG_DONE:
                        done = True
                        break
                    if typ == NLMSG_ERROR:
                        err = -struct.unpack_from("=i", data, off + 16)[0]
                        raise OSError(err, os.strerror(err))
                    if typ == SOCK_DIAG_BY_FAMILY:
                        out.append(_parse_diag(data[off + 16:off + ln], version))
                    off += (ln + 3) & ~3
    return out


def _parse_diag(msg: bytes, version: int) -> Listener:
    # inet_diag_msg: family, state, timer, retrans (4 B), then inet_diag_sockid (48 B), expires, rqueue,
    # wqueue, uid, inode (20 B) = 72 B, then attributes
    sport = struct.unpack_from("!H", msg, 4)[0]
    raw = msg[8:8 + (4 if version == 4 else 16)]
    ifindex = struct.unpack_from("=I", msg, 40)[0]
    addr = socket.inet_ntop(socket.AF_INET if version == 4 else socket.AF_INET6, raw)
    v6only = rcvbuf = None
    off = 72
    while off + 4 <= len(msg):
        alen, atype = struct.unpack_from("=HH", msg, off)
        if alen < 4:
            break
        if atype == INET_DIAG_SKV6ONLY:
            v6only = bool(msg[off + 4])
        elif atype == INET_DIAG_SKMEMINFO and alen >= 12:
            rcvbuf = struct.unpack_from("=I", msg, off + 8)[0]
        off += (alen + 3) & ~3
    return Listener(version, addr, sport, ifindex, v6only, rcvbuf)


def read_listeners_proc() -> list[Listener]:
    out = []
    for version, path in ((4, "/proc/net/tcp"), (6, "/proc/net/tcp6")):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[3] != "0A":
                        continue
                    hexaddr, hexport = parts[1].split(":")
                    raw = bytes.fromhex(hexaddr)
                    # the kernel prints each 32-bit word in host byte order
                    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4)) if socket.htonl(1) != 1 else raw
                    out.append(Listener(version, socket.inet_ntop(socket.AF_INET if version == 4 else socket.AF_INET6, raw),
                                        int(hexport, 16)))
        except FileNotFoundError:
            pass
    return out


def _is_loopback(addr: str) -> bool:
    return addr.startswith(("127.", "::ffff:127.")) or addr == "::1"


def synproxy_ports(listeners: list[Listener], local_addrs: set[str], protected_ifindexes: set[int],
                   exclude: set[int] = frozenset(), default_rcvbuf: int | None = None) -> dict[int, list[int]]:
    """{4: ports, 6: ports} that SYNPROXY may answer for on the protected uplinks.

    ``local_addrs``: the namespace's addresses as inet_ntop prints them; ``exclude``: ports never to
    proxy (policy). ``default_rcvbuf`` (net.ipv4.tcp_rmem[1]): a listener whose receive buffer differs
    was locked by SO_RCVBUF and announces a smaller window scale than SYNPROXY would: its port is left
    out (for both families: the sets are per port). Blind spot: SO_RCVBUF of exactly tcp_rmem[1] / 2
    gives the default value (the kernel doubles it), and TCP_WINDOW_CLAMP is not visible. Strings, not ipaddress objects: 10,000 listeners
    are classified in a few ms.
    """
    ports: dict[int, set[int]] = {4: set(), 6: set()}
    locked = {li.port for li in listeners
              if default_rcvbuf and li.rcvbuf is not None and li.rcvbuf != default_rcvbuf}
    dual = None
    for li in listeners:
        a = li.addr
        if _is_loopback(a) or li.port in exclude or li.port in locked:
            continue
        if li.ifindex and li.ifindex not in protected_ifindexes:
            continue
        wildcard = a in ("0.0.0.0", "::")
        if not wildcard and a not in local_addrs:
            if a.startswith("::ffff:") and a[7:] in local_addrs:  # v4-mapped bind on a dual-stack socket
                ports[4].add(li.port)
            continue  # bound to an address the node does not have (IP_FREEBIND/transparent): skip
        if li.family == 4:
            ports[4].add(li.port)
            continue
        ports[6].add(li.port)
        if wildcard:
            if li.v6only is None:  # /proc cannot tell: the namespace default decides
                if dual is None:
                    dual = _bindv6only() == 0
                if dual:
                    ports[4].add(li.port)
            elif not li.v6only:  # a dual-stack [::] listener takes IPv4 too
                ports[4].add(li.port)
    return {v: sorted(p) for v, p in ports.items()}


def _bindv6only() -> int:
    try:
        with open("/proc/sys/net/ipv6/bindv6only") as f:
            return int(f.read())
    except OSError:
        return 0


def local_addresses() -> tuple[set[str], dict[str, int]]:
    """Every address of this namespace (``ip -j addr``) and the interface indexes by name."""
    import json
    import subprocess
    data = json.loads(subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True, check=True).stdout)
    addrs = {a["local"] for link in data for a in link.get("addr_info", [])}
    return addrs, {link["ifname"]: link["ifindex"] for link in data}


# --- the cost with 10,000 listeners -------------------------------------------------------------
def _bench_inside() -> None:
    import resource
    import time
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    socks = []
    for i in range(10000):  # a realistic mix: wildcard v4, wildcard v6 dual-stack, loopback, node address
        fam = socket.AF_INET6 if i % 4 == 1 else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        addr = {0: "0.0.0.0", 1: "::", 2: "127.0.0.1", 3: "10.99.0.1"}[i % 4]
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind((addr, 20000 + i))
        s.listen(16)
        socks.append(s)
    extra = []
    if os.environ.get("NGS_ESTABLISHED"):
        # 4,500 established connections (9,000 more sockets; RLIMIT_NOFILE here is 20,000) to one listener
        for _ in range(4500):
            c = socket.create_connection(("127.0.0.1", 20002))
            extra.append(c)
            extra.append(socks[2].accept()[0])
    addrs, idx = local_addresses()
    for name, fn in (("sock_diag", read_listeners_diag), ("/proc/net/tcp{,6}", read_listeners_proc)):
        fn()
        times = []
        for _ in range(20):
            t = time.perf_counter()
            li = fn()
            times.append(time.perf_counter() - t)
        t = time.perf_counter()
        ports = synproxy_ports(li, addrs, {idx["ngl0"]})
        pick = time.perf_counter() - t
        times.sort()
        print(f"{name:18} sockets {10000 + len(extra):6}  listeners {len(li):6}  read median {times[10] * 1000:7.2f} ms"
              f"  p95 {times[18] * 1000:7.2f} ms  select {pick * 1000:5.2f} ms  ports v4 {len(ports[4])} v6 {len(ports[6])}")


def main() -> None:
    import subprocess
    import sys
    if "--bench" in sys.argv:
        name = f"ngs-{os.getpid()}-lst"
        subprocess.run(["ip", "netns", "add", name], check=True)
        try:
            ex = ["ip", "netns", "exec", name]
            subprocess.run(ex + ["ip", "link", "set", "lo", "up"], check=True)
            subprocess.run(ex + ["ip", "link", "add", "ngl0", "type", "veth", "peer", "name", "ngl1"], check=True)
            subprocess.run(ex + ["ip", "addr", "add", "10.99.0.1/24", "dev", "ngl0"], check=True)
            subprocess.run(ex + ["ip", "link", "set", "ngl0", "up"], check=True)
            for est in ("", "1"):
                subprocess.run(ex + [sys.executable, __file__, "--bench-inside"], check=True,
                               env={**os.environ, "NGS_ESTABLISHED": est})
        finally:
            subprocess.run(["ip", "netns", "del", name], check=False)
        return
    if "--bench-inside" in sys.argv:
        _bench_inside()
        return
    addrs, idx = local_addresses()
    li = read_listeners_diag()
    for x in li:
        print(x)
    print(synproxy_ports(li, addrs, set(idx.values()) - {idx.get("lo", 1)}))


if __name__ == "__main__":
    main()
