"""NFLOG over a raw netlink socket: bind one group, copy ``snaplen`` bytes of each packet.

Hand-written because the only Python binding on PyPI (``nflog``, 2016) is unmaintained;
the protocol is small (linux/netfilter/nfnetlink_log.h). Read from a select loop.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import time
from dataclasses import dataclass

from . import logprefix

NETLINK_NETFILTER = 12
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET, NFULNL_MSG_CONFIG = 0, 1
NFULA_CFG_CMD, NFULA_CFG_MODE, NFULA_CFG_QTHRESH = 1, 2, 5
NFULNL_CFG_CMD_BIND, NFULNL_CFG_CMD_UNBIND = 1, 2
NFULNL_COPY_PACKET = 2
NFULA_IFINDEX_INDEV, NFULA_PAYLOAD, NFULA_PREFIX = 4, 9, 10
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2
_HDR = struct.Struct("=IHHII")


@dataclass(frozen=True)
class Sample:
    group: str  # the rule group that condemned it ("" if unknown)
    payload: bytes  # the first snaplen bytes, from the IP header on
    ifindex: int  # input interface (0 if unknown)
    ts: float
    mode: str = "enforce"  # "monitor": it would have been dropped, and was not


def _attr(atype: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("=HH", n, atype) + payload + b"\0" * ((4 - n % 4) % 4)


def attrs(buf: bytes, off: int, end: int) -> dict[int, bytes]:
    out = {}
    while off + 4 <= end:
        alen, atype = struct.unpack_from("=HH", buf, off)
        if alen < 4 or off + alen > end:
            break
        out[atype & 0x3FFF] = buf[off + 4:off + alen]
        off += (alen + 3) & ~3
    return out


def parse_messages(buf: bytes, now: float) -> list[Sample]:
    """Every NFULNL_MSG_PACKET in one datagram; malformed parts are skipped, never raised."""
    out, off = [], 0
    while off + _HDR.size <= len(buf):
        length, mtype, _flags, _seq, _pid = _HDR.unpack_from(buf, off)
        if length < _HDR.size or off + length > len(buf):
            break
        if mtype == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET:
            a = attrs(buf, off + _HDR.size + 4, off + length)
            prefix = a.get(NFULA_PREFIX, b"").split(b"\0", 1)[0].decode("ascii", "replace").strip()
            ifindex = struct.unpack(">I", a[NFULA_IFINDEX_INDEV])[0] if len(a.get(NFULA_IFINDEX_INDEV, b"")) == 4 else 0
            group, mode = logprefix.decode(prefix) or ("", "enforce")
            out.append(Sample(group, a.get(NFULA_PAYLOAD, b""), ifindex, now, mode))
        off += (length + 3) & ~3
    return out


class NflogReader:
    def __init__(self, group: int, snaplen: int):
        self.group = group
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind((0, 0))
        self._seq = 0
        self._config(struct.pack("B", NFULNL_CFG_CMD_BIND), NFULA_CFG_CMD)
        self._config(struct.pack(">IBB", snaplen, NFULNL_COPY_PACKET, 0), NFULA_CFG_MODE)
        self._config(struct.pack(">I", 1), NFULA_CFG_QTHRESH)
        self.sock.setblocking(False)
        self.dropped = 0  # receive-buffer overruns: samples lost, not packets

    def _config(self, payload: bytes, atype: int) -> None:
        self._seq += 1
        body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(self.group)) + _attr(atype, payload)
        msg = _HDR.pack(_HDR.size + len(body), (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG,
                        NLM_F_REQUEST | NLM_F_ACK, self._seq, 0) + body
        self.sock.send(msg)
        reply = self.sock.recv(65536)
        _len, mtype, *_ = _HDR.unpack_from(reply, 0)
        if mtype == NLMSG_ERROR:
            code = struct.unpack_from("=i", reply, _HDR.size)[0]
            if code != 0:
                raise OSError(-code, f"NFLOG config for group {self.group}: {os.strerror(-code)}")

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self) -> list[Sample]:
        out: list[Sample] = []
        while True:
            try:
                buf = self.sock.recv(1 << 16)
            except BlockingIOError:
                return out
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                self.dropped += 1
                continue
            out += parse_messages(buf, time.time())

    def close(self) -> None:
        try:
            self.sock.setblocking(True)
            self._config(struct.pack("B", NFULNL_CFG_CMD_UNBIND), NFULA_CFG_CMD)
        except OSError:
            pass
        self.sock.close()
