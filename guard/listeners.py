"""``syn.synproxy.ports: auto``: the TCP ports the node itself serves on its protected uplinks.

Read from the kernel: NETLINK_SOCK_DIAG (one dump per family, filtered to listeners by the kernel,
with v6only, the receive buffer and the owner), /proc/net/tcp{,6} as the fallback; addresses from an
RTM_GETADDR dump. No process is spawned: the watcher refreshes this at its full verification, at
most every watch/ports.py REDETECT_MIN_S.
A port qualifies per family (SYNPROXY completes the handshake before the server is asked, so a
port without a listener of that family would turn a clean RST into "connected, then reset").
Measured: 80 ms of CPU for 15,000 listeners (sock_diag; 125 ms with ``forwarded``, which reads the
receive buffers), a few ms for the tens a node has.

Any local user can open listeners, so the rule is who would receive the SYNs, never who exists:
- only a listener that would receive a SYN from a protected uplink counts, for adding a port and for
  leaving it out: not loopback, not bound to another device, not bound to an address the node lacks;
- a locked receive buffer (SO_RCVBUF) leaves a port out only when SYNPROXY answers host ports
  (``forwarded``: it announces the node's window scale, not the listener's); engaged host ports are
  otherwise answered by the listener's own syncookies, which carry its own window scale;
- and then only when the locked listener's owner speaks for the port in that family: root, or the
  owner of every listener receiving it. Another user's listener (on another address, or on the
  other family) can neither take protection away from a port that someone else serves, nor give it
  back to one that root's locked listener left out. The price: a non-root service whose locked
  buffer shares its port with another user's listener is proxied with the node's window scale;
- a port the node DNATs to a pod is never one (``exclude``, from apply.detect_ports): an engaged
  port's SYNs skip the nat table, so a user listening on a NodePort or hostPort would get its clients.
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

NETLINK_ROUTE, NETLINK_SOCK_DIAG = 0, 4
RTM_NEWADDR, RTM_GETADDR = 20, 22
IFA_ADDRESS, IFA_LOCAL = 1, 2
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
    uid: int | None = None  # the socket's owner (sock_diag only)


def _dump(protocol: int, msg_type: int, request: bytes) -> Iterator[bytes]:
    """Send one netlink dump request; yield each answer's payload (after its nlmsghdr) until DONE."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, protocol) as s:
        s.bind((0, 0))
        s.send(struct.pack("=IHHII", 16 + len(request), msg_type, NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + request)
        while True:
            data = s.recv(1 << 20)
            off = 0
            while off + 16 <= len(data):
                ln, typ, _flags, _seq, _pid = struct.unpack_from("=IHHII", data, off)
                if ln < 16 or typ == NLMSG_DONE:
                    return
                if typ == NLMSG_ERROR:
                    err = -struct.unpack_from("=i", data, off + 16)[0]
                    raise OSError(err, os.strerror(err))
                if typ != NLMSG_DONE:
                    yield data[off + 16:off + ln]
                off += (ln + 3) & ~3


def _attrs(msg: bytes, off: int) -> Iterator[tuple[int, bytes]]:
    while off + 4 <= len(msg):
        alen, atype = struct.unpack_from("=HH", msg, off)
        if alen < 4 or off + alen > len(msg):
            return
        yield atype, msg[off + 4:off + alen]
        off += (alen + 3) & ~3


def read_listeners_diag(rcvbuf: bool = True) -> list[Listener]:
    """``rcvbuf``: ask for each listener's receive buffer too (only ``forwarded`` needs it)."""
    out: list[Listener] = []
    for fam, version in ((socket.AF_INET, 4), (socket.AF_INET6, 6)):
        # inet_diag_req_v2: family, protocol, ext, pad, states, then inet_diag_sockid (sport, dport,
        # src[16], dst[16], if, cookie[2]) left zero for a dump. The kernel adds INET_DIAG_SKV6ONLY to
        # every AF_INET6 listener by itself; SKMEMINFO (the receive buffer) only when asked for.
        ext = 1 << (INET_DIAG_SKMEMINFO - 1) if rcvbuf else 0
        req = struct.pack("=BBBxI", fam, socket.IPPROTO_TCP, ext, 1 << TCP_LISTEN) + b"\0" * 48
        names: dict[bytes, str] = {}  # thousands of listeners share a few addresses
        attrs = rcvbuf or version == 6  # IPv4 listeners have nothing else to read there
        out += [_parse_diag(msg, version, names, attrs) for msg in _dump(NETLINK_SOCK_DIAG, SOCK_DIAG_BY_FAMILY, req)]
    return out


# inet_diag_msg: family, state, timer, retrans (4 B), then inet_diag_sockid (sport, dport, src[16],
# dst[16], if, cookie[8]: 48 B), expires, rqueue, wqueue, uid, inode (20 B) = 72 B, then attributes.
# One precompiled unpack per listener: 15,000 of them (any local user can open that many) are parsed
# in a fraction of the time field-by-field parsing took.
_DIAG = struct.Struct("=4x2s2x16s16xI8x12xI4x")
_ATTR = struct.Struct("=HH")


def _parse_diag(msg: bytes, version: int, names: dict[bytes, str], attrs: bool = True) -> Listener:
    sport, src, ifindex, uid = _DIAG.unpack_from(msg)
    raw = src[:4] if version == 4 else src
    addr = names.get(raw)
    if addr is None:
        addr = names[raw] = socket.inet_ntop(socket.AF_INET if version == 4 else socket.AF_INET6, raw)
    v6only = rcvbuf = None
    off, end = 72, len(msg) if attrs else 0
    while off + 4 <= end:
        alen, atype = _ATTR.unpack_from(msg, off)
        if alen < 4 or off + alen > end:
            break
        if atype == INET_DIAG_SKV6ONLY and alen > 4:
            v6only = bool(msg[off + 4])
        elif atype == INET_DIAG_SKMEMINFO and alen >= 12:
            rcvbuf = struct.unpack_from("=I", msg, off + 8)[0]
        off += (alen + 3) & ~3
    return Listener(version, addr, int.from_bytes(sport, "big"), ifindex, v6only, rcvbuf, uid)


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


def listening_tcp_ports() -> set[int]:
    """The TCP ports with a listener that is not bound to loopback (any family, any owner)."""
    try:
        listeners = read_listeners_diag(rcvbuf=False)
    except OSError:
        listeners = read_listeners_proc()
    return {li.port for li in listeners if not _is_loopback(li.addr)}


def _is_loopback(addr: str) -> bool:
    return addr.startswith(("127.", "::ffff:127.")) or addr == "::1"


def synproxy_ports(listeners: list[Listener], local_addrs: set[str], protected_ifindexes: set[int],
                   exclude: set[int] = frozenset(), default_rcvbuf: int | None = None) -> dict[int, list[int]]:
    """{4: ports, 6: ports} that SYNPROXY may answer for on the protected uplinks.

    ``local_addrs``: the namespace's addresses as inet_ntop prints them; ``exclude``: ports never to
    proxy (policy). ``default_rcvbuf`` (net.ipv4.tcp_rmem[1]; None: window scales do not matter): a
    listener whose receive buffer differs was locked by SO_RCVBUF and announces a smaller window scale
    than SYNPROXY would, so its port is left out in the families it receives, if its owner speaks for
    the port there (the module's rule). Blind spot: SO_RCVBUF of exactly tcp_rmem[1] / 2 gives the
    default value (the kernel doubles it), and TCP_WINDOW_CLAMP is not visible. Strings, not ipaddress
    objects: 10,000 listeners are classified in a few ms.
    """
    receivers: dict[tuple[int, int], list[Listener]] = {}
    # /proc cannot tell v6only: then the namespace default decides
    dual = any(li.addr == "::" and li.v6only is None for li in listeners) and _bindv6only() == 0
    for li in listeners:
        if li.port not in exclude:
            for version in _families_reached(li, local_addrs, protected_ifindexes, dual):
                receivers.setdefault((version, li.port), []).append(li)
    ports: dict[int, list[int]] = {4: [], 6: []}
    for (version, port), found in sorted(receivers.items()):
        if not (default_rcvbuf and _locked_out(found, default_rcvbuf)):
            ports[version].append(port)
    return ports


def _families_reached(li: Listener, local_addrs: set[str], protected_ifindexes: set[int],
                      dual: bool) -> tuple[int, ...]:
    """The families whose SYNs from a protected uplink ``li`` would receive; () for none. ``dual``: a
    [::] listener of unknown v6only takes IPv4 too."""
    a = li.addr
    if _is_loopback(a) or (li.ifindex and li.ifindex not in protected_ifindexes):
        return ()
    if a == "0.0.0.0":
        return (4,)
    if a == "::":
        v6only = not dual if li.v6only is None else li.v6only
        return (6,) if v6only else (4, 6)  # a dual-stack [::] listener takes IPv4 too
    if a in local_addrs:
        return (li.family,)
    if a.startswith("::ffff:") and a[7:] in local_addrs:  # v4-mapped bind on a dual-stack socket
        return (4,)
    return ()  # bound to an address the node does not have (IP_FREEBIND/transparent)


def _locked_out(receivers: list[Listener], default_rcvbuf: int) -> bool:
    """Is a port of one family, received by ``receivers``, left out for a locked receive buffer? Only
    by a listener whose owner speaks for the port: root, or the owner of every receiver."""
    owners = {li.uid for li in receivers}
    return any(li.rcvbuf is not None and li.rcvbuf != default_rcvbuf and (li.uid == 0 or owners == {li.uid})
               for li in receivers)


def _bindv6only() -> int:
    try:
        with open("/proc/sys/net/ipv6/bindv6only") as f:
            return int(f.read())
    except OSError:
        return 0


def local_addresses() -> tuple[set[str], dict[str, int]]:
    """Every address of this namespace (as inet_ntop prints it) and the interface indexes by name."""
    addrs: set[str] = set()
    req = struct.pack("=BBBBI", socket.AF_UNSPEC, 0, 0, 0, 0)  # struct ifaddrmsg
    for msg in _dump(NETLINK_ROUTE, RTM_GETADDR, req):
        family = msg[0]
        for atype, payload in _attrs(msg, 8):  # after the ifaddrmsg
            if atype in (IFA_ADDRESS, IFA_LOCAL) and len(payload) in (4, 16):
                addrs.add(socket.inet_ntop(family, payload))
    return addrs, {name: index for index, name in socket.if_nameindex()}


def auto_ports(protected: tuple[str, ...], exclude: set[int], synproxy_answers: bool) -> dict[int, list[int]]:
    """``ports: auto``: {4: ports, 6: ports} the node listens on, reachable from ``protected``.
    ``synproxy_answers`` (``forwarded``): SYNPROXY, not the listener, answers engaged host ports, so a
    listener's locked receive buffer matters."""
    try:
        listeners = read_listeners_diag(rcvbuf=synproxy_answers)
    except OSError:
        listeners = read_listeners_proc()
    addrs, index = local_addresses()
    rmem_default = _tcp_rmem_default() if synproxy_answers else None
    return synproxy_ports(listeners, addrs, {index[n] for n in protected if n in index}, exclude, rmem_default)


def _tcp_rmem_default() -> int | None:
    try:
        return int(open("/proc/sys/net/ipv4/tcp_rmem").read().split()[1])
    except (OSError, ValueError, IndexError):
        return None


def server_wscale(proc: Path = Path("/proc/sys/net")) -> int:
    """The window scale this node's TCP announces, as tcp_select_initial_window computes it: SYNPROXY
    announces it in the server's name and never rewrites windows, so it must be exactly this."""
    try:
        space = max(int((proc / "ipv4/tcp_rmem").read_text().split()[2]), int((proc / "core/rmem_max").read_text()))
    except (OSError, ValueError, IndexError):
        return 7  # the kernel's default tcp_rmem max (6 MiB) gives 7
    wscale = 0
    while space > 65535 and wscale < 14:
        space >>= 1
        wscale += 1
    return wscale


def uplink_mss(interfaces: tuple[str, ...], sys_net: Path = Path("/sys/class/net")) -> tuple[int, int]:
    """(IPv4, IPv6) MSS for the smallest MTU among ``interfaces`` (1460/1440 at 1500)."""
    mtus = []
    for name in interfaces:
        try:
            mtus.append(int((sys_net / name / "mtu").read_text()))
        except (OSError, ValueError):
            pass
    mtu = min(mtus) if mtus else 1500
    return mtu - 40, mtu - 60
