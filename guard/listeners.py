"""``syn.synproxy.ports: auto``: the TCP ports the node itself serves on its protected uplinks.

Read from the kernel: NETLINK_SOCK_DIAG (one dump per family, filtered by the kernel to listeners
not bound to loopback, with v6only, the receive buffer and the owner), /proc/net/tcp{,6} as the
fallback; addresses from an RTM_GETADDR dump. No process is spawned: the watcher refreshes this at
its full verification, at most every watch/ports.py REDETECT_MIN_S.
A port qualifies per family (SYNPROXY completes the handshake before the server is asked, so a
port without a listener of that family would turn a clean RST into "connected, then reset").
Any local user can open a million listeners: they are streamed and folded into per-port facts as
they arrive, never kept, so memory is bounded by ports, not sockets (bench/listeners.py: under 1 MB
at 1M listeners; as objects it was 215 MB). Measured CPU: 0.3 s (kernel) for 1M loopback listeners,
0.8 s for 500,000 reachable ones beside 500,000 loopback ones; a few ms for the tens a node has.

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
from typing import Iterable, Iterator

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


def _dump_at(protocol: int, msg_type: int, request: bytes) -> Iterator[tuple[bytes, int, int]]:
    """Send one netlink dump request; yield (buffer, start, end) of each answer's payload (after its
    nlmsghdr) until DONE: read in place, no copy per answer."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, protocol) as s:
        s.bind((0, 0))
        s.send(struct.pack("=IHHII", 16 + len(request), msg_type, NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + request)
        while True:
            data = s.recv(1 << 16)  # a dump's answers come in batches of at most 32 KiB
            off = 0
            while off + 16 <= len(data):
                ln, typ = _NLMSG.unpack_from(data, off)
                if ln < 16 or typ == NLMSG_DONE:
                    return
                if typ == NLMSG_ERROR:
                    err = -struct.unpack_from("=i", data, off + 16)[0]
                    raise OSError(err, os.strerror(err))
                yield data, off + 16, off + ln
                off += (ln + 3) & ~3


_NLMSG = struct.Struct("=IH10x")


def _dump(protocol: int, msg_type: int, request: bytes) -> Iterator[bytes]:
    return (data[start:end] for data, start, end in _dump_at(protocol, msg_type, request))


def _attrs(msg: bytes, off: int) -> Iterator[tuple[int, bytes]]:
    while off + 4 <= len(msg):
        alen, atype = struct.unpack_from("=HH", msg, off)
        if alen < 4 or off + alen > len(msg):
            return
        yield atype, msg[off + 4:off + alen]
        off += (alen + 3) & ~3


# A listener as the readers yield it: (family 4 or 6, address bytes, port, ifindex, v6only, rcvbuf, uid),
# fields as in Listener. Tuples streamed, never kept: any local user can open a million listeners.
Row = tuple[int, bytes, int, int, bool | None, int | None, int | None]

# inet_diag bytecode (INET_DIAG_REQ_BYTECODE): ops {code, yes, no} run by the kernel on each socket;
# falling off the end accepts, a jump past it rejects. S_COND's hostcond: family, prefix length, port
# (-1: any), address; an AF_INET condition also matches the v4-mapped addresses of IPv6 sockets.
INET_DIAG_REQ_BYTECODE = 1
INET_DIAG_BC_JMP, INET_DIAG_BC_S_COND = 1, 7
_LOOPBACK = ((socket.AF_INET, 8, bytes([127, 0, 0, 0])), (socket.AF_INET6, 128, bytes(15) + b"\1"))


def _no_loopback_bytecode() -> bytes:
    """Reject sockets bound to 127.0.0.0/8, ::ffff:127.0.0.0/104 or ::1 in the kernel: a local user's
    loopback listeners then cost no netlink message, and no Python at all."""
    conds = [struct.pack("=BBxxi", fam, plen, -1) + addr for fam, plen, addr in _LOOPBACK]
    total = sum(4 + len(c) + 4 for c in conds)
    prog, at = b"", 0
    for cond in conds:
        size = 4 + len(cond)  # yes: on to the jump that rejects; no: past it, on to the next condition
        prog += struct.pack("=BBH", INET_DIAG_BC_S_COND, size, size + 4) + cond
        prog += struct.pack("=BBH", INET_DIAG_BC_JMP, 4, total - (at + size) + 4)
        at += size + 4
    return struct.pack("=HH", 4 + len(prog), INET_DIAG_REQ_BYTECODE) + prog


def _diag_rows(rcvbuf: bool, skip_loopback: bool) -> Iterator[Row]:
    """Every TCP listener by sock_diag (LISTEN only, filtered by the kernel), one dump per family."""
    bytecode = _no_loopback_bytecode() if skip_loopback else b""
    for fam, version in ((socket.AF_INET, 4), (socket.AF_INET6, 6)):
        # inet_diag_req_v2: family, protocol, ext, pad, states, then inet_diag_sockid (sport, dport,
        # src[16], dst[16], if, cookie[2]) left zero for a dump. The kernel adds INET_DIAG_SKV6ONLY to
        # every AF_INET6 listener by itself; SKMEMINFO (the receive buffer) only when asked for.
        ext = 1 << (INET_DIAG_SKMEMINFO - 1) if rcvbuf else 0
        req = struct.pack("=BBBxI", fam, socket.IPPROTO_TCP, ext, 1 << TCP_LISTEN) + b"\0" * 48 + bytecode
        head = _DIAG4 if version == 4 else _DIAG6
        attrs = rcvbuf or version == 6  # IPv4 listeners have nothing else to read there
        for msg, off, end in _dump_at(NETLINK_SOCK_DIAG, SOCK_DIAG_BY_FAMILY, req):
            sport, src, ifindex, uid = head.unpack_from(msg, off)
            v6only = size = None
            at, end = off + 72, end if attrs else 0
            while at + 4 <= end:
                alen, atype = _ATTR.unpack_from(msg, at)
                if alen < 4 or at + alen > end:
                    break
                if atype == INET_DIAG_SKV6ONLY and alen > 4:
                    v6only = bool(msg[at + 4])
                elif atype == INET_DIAG_SKMEMINFO and alen >= 12:
                    size = _U32.unpack_from(msg, at + 8)[0]
                at += (alen + 3) & ~3
            yield version, src, socket.ntohs(sport), ifindex, v6only, size, uid


# inet_diag_msg: family, state, timer, retrans (4 B), then inet_diag_sockid (sport, dport, src[16],
# dst[16], if, cookie[8]: 48 B), expires, rqueue, wqueue, uid, inode (20 B) = 72 B, then attributes.
# One precompiled unpack per listener (the port read in host order, then swapped).
_DIAG4 = struct.Struct("=4xH2x4s12x16xI8x12xI4x")
_DIAG6 = struct.Struct("=4xH2x16s16xI8x12xI4x")
_ATTR = struct.Struct("=HH")
_U32 = struct.Struct("=I")


def _listener(row: Row, names: dict[bytes, str]) -> Listener:
    raw = row[1]
    addr = names.get(raw)
    if addr is None:
        addr = names[raw] = socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)
    return Listener(row[0], addr, *row[2:])


def read_listeners_diag(rcvbuf: bool = True) -> list[Listener]:
    """``rcvbuf``: ask for each listener's receive buffer too (only ``forwarded`` needs it)."""
    names: dict[bytes, str] = {}  # thousands of listeners share a few addresses
    return [_listener(row, names) for row in _diag_rows(rcvbuf, skip_loopback=False)]


def _proc_rows() -> Iterator[Row]:
    """The listeners in /proc/net/tcp{,6}, read line by line: no v6only, ifindex, rcvbuf or owner."""
    swap = socket.htonl(1) != 1  # the kernel prints each 32-bit word in host byte order
    for version, path in ((4, "/proc/net/tcp"), (6, "/proc/net/tcp6")):
        try:
            with open(path, "rb") as f:
                next(f, None)
                for line in f:
                    parts = line.split(None, 4)
                    if len(parts) < 4 or parts[3] != b"0A":
                        continue
                    hexaddr, _, hexport = parts[1].partition(b":")
                    try:
                        raw = bytes.fromhex(hexaddr.decode())
                        port = int(hexport, 16)
                    except ValueError:
                        continue
                    if swap:
                        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                    if len(raw) == (4 if version == 4 else 16):
                        yield version, raw, port, 0, None, None, None
        except FileNotFoundError:
            pass


def read_listeners_proc() -> list[Listener]:
    names: dict[bytes, str] = {}
    return [_listener(row, names) for row in _proc_rows()]


def listening_tcp_ports() -> set[int]:
    """The TCP ports with a listener that is not bound to loopback (any family, any owner)."""
    try:
        return {row[2] for row in _diag_rows(rcvbuf=False, skip_loopback=True)}
    except OSError:
        return {row[2] for row in _proc_rows() if not _is_loopback(row[1])}


def _is_loopback(raw: bytes) -> bool:
    """127.0.0.0/8, ::ffff:127.0.0.0/104, ::1."""
    return raw[0] == 127 if len(raw) == 4 else raw == _LOOPBACK[1][2] or raw[:13] == _MAPPED + b"\x7f"


_MAPPED = bytes(10) + b"\xff\xff"
_WILDCARD6 = bytes(16)
_MANY = object()  # a port's receivers have more than one owner


class _Receivers:
    """Per family and port, only what the rule decides on, whatever the number of listeners: whether
    an uplink reaches one, its owner if it has only one, whether a listener has a locked receive buffer,
    whether root's has. Memory is bounded by ports (65,536 a family), not sockets."""

    def __init__(self, local_addrs: set[str], protected_ifindexes: set[int], exclude: set[int],
                 default_rcvbuf: int | None):
        self.reach = _reach_table(local_addrs)
        self.protected, self.exclude, self.default_rcvbuf = protected_ifindexes, exclude, default_rcvbuf
        self.dual: bool | None = None  # /proc cannot tell v6only: then the namespace default decides
        self.owner: dict[int, object] = {}  # version << 16 | port: the uid (or _MANY) of its receivers
        self.locked: set[int] = set()  # ... that have a listener with a locked receive buffer
        self.root_locked: set[int] = set()  # ... that have root's

    def add(self, version: int, raw: bytes, port: int, ifindex: int, v6only: bool | None,
            rcvbuf: int | None, uid: int | None) -> None:
        if port in self.exclude or (ifindex and ifindex not in self.protected):
            return
        families = self.reach.get(raw, ())
        if families is None:  # [::]: a dual-stack listener takes IPv4 too
            if v6only is None:
                if self.dual is None:
                    self.dual = _bindv6only() == 0
                v6only = not self.dual
            families = (6,) if v6only else (4, 6)
        locked = bool(self.default_rcvbuf) and rcvbuf is not None and rcvbuf != self.default_rcvbuf
        for fam in families:
            key = fam << 16 | port
            owner = self.owner.setdefault(key, uid)
            if owner is not _MANY and owner != uid:
                self.owner[key] = _MANY
            if locked:
                self.locked.add(key)
                if uid == 0:
                    self.root_locked.add(key)

    def ports(self) -> dict[int, list[int]]:
        """A port is left out for a locked receive buffer only by a listener whose owner speaks for it
        in that family: root, or the owner of every receiver."""
        out: dict[int, list[int]] = {4: [], 6: []}
        for key in sorted(self.owner):
            if key in self.root_locked or (key in self.locked and self.owner[key] is not _MANY):
                continue
            out[key >> 16].append(key & 0xFFFF)
        return out


def _reach_table(local_addrs: set[str]) -> dict[bytes, tuple[int, ...] | None]:
    """The families whose SYNs from a protected uplink a listener bound to each address would receive
    (None: [::], by its v6only); an address missing here is reached by none: loopback, or one the node
    does not have (IP_FREEBIND/transparent)."""
    v4, v6 = {}, {}
    for a in local_addrs:
        fam = socket.AF_INET6 if ":" in a else socket.AF_INET
        try:
            raw = socket.inet_pton(fam, a)
        except OSError:
            continue
        if socket.inet_ntop(fam, raw) == a and not _is_loopback(raw):
            if fam == socket.AF_INET:
                v4[raw] = v4[_MAPPED + raw] = (4,)  # a v4-mapped bind on a dual-stack socket takes IPv4
            else:
                v6[raw] = (6,)
    return {**v4, **v6, bytes(4): (4,), _WILDCARD6: None}


def synproxy_ports(listeners: Iterable[Listener], local_addrs: set[str], protected_ifindexes: set[int],
                   exclude: set[int] = frozenset(), default_rcvbuf: int | None = None) -> dict[int, list[int]]:
    """{4: ports, 6: ports} that SYNPROXY may answer for on the protected uplinks.

    ``local_addrs``: the namespace's addresses as inet_ntop prints them; ``exclude``: ports never to
    proxy (policy). ``default_rcvbuf`` (net.ipv4.tcp_rmem[1]; None: window scales do not matter): a
    listener whose receive buffer differs was locked by SO_RCVBUF and announces a smaller window scale
    than SYNPROXY would, so its port is left out in the families it receives, if its owner speaks for
    the port there (the module's rule). Blind spot: SO_RCVBUF of exactly tcp_rmem[1] / 2 gives the
    default value (the kernel doubles it), and TCP_WINDOW_CLAMP is not visible.
    """
    found = _Receivers(local_addrs, protected_ifindexes, exclude, default_rcvbuf)
    for li in listeners:
        raw = socket.inet_pton(socket.AF_INET6 if ":" in li.addr else socket.AF_INET, li.addr)
        found.add(li.family, raw, li.port, li.ifindex, li.v6only, li.rcvbuf, li.uid)
    return found.ports()


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
    addrs, index = local_addresses()
    rmem_default = _tcp_rmem_default() if synproxy_answers else None
    rule = (addrs, {index[n] for n in protected if n in index}, exclude, rmem_default)
    try:  # sock_diag, loopback dropped by the kernel; streamed, so a failure may come half-way
        found = _receivers(_diag_rows(synproxy_answers, skip_loopback=True), *rule)
    except OSError:
        found = _receivers(_proc_rows(), *rule)
    return found.ports()


def _receivers(rows: Iterable[Row], *args) -> _Receivers:
    found = _Receivers(*args)
    add = found.add
    for row in rows:
        add(*row)
    return found


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
