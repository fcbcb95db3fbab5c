"""A random-source IPv6 flood, which hping3 cannot send: ICMPv6 echo requests, TCP SYNs and UDP
datagrams, each from a new random /64 (the kernel meters IPv6 sources per /64), written as whole
frames to a packet socket, at a fixed rate per protocol (PPS 0: as fast as it can).

Each frame is a template whose source's bits 16-63 are random and whose last 16 bits make up for
them in the one's-complement sum, so every checksum stays right without being computed again.

usage: _flood6.py IFNAME DST_MAC DST_ADDR TCP_PORT UDP_PORT PPS SECONDS [KIND ...]
KIND: icmp6, syn6, udp6 (default: all three). Prints {"sent": {KIND: N, ...}} at the end (or at SIGINT).
"""

from __future__ import annotations

import ipaddress
import json
import random
import socket
import struct
import sys
import time

SRC = ipaddress.IPv6Address("fd99::1").packed  # the template's source: fd99:<48 random bits>::<balance>
BATCH = 64  # frames per protocol between two looks at the clock
SRC_AT = 14 + 8  # the source address's offset in the frame


def fold(s: int) -> int:
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return s


def ones_sum(data: bytes) -> int:
    return fold(sum(struct.unpack(f"!{len(data) // 2}H", data + b"\0" * (len(data) % 2))))


def template(eth: bytes, dst: bytes, proto: int, l4: bytes, at: int) -> bytearray:
    """Ethernet + IPv6 from SRC + ``l4`` with its checksum (at byte ``at`` of ``l4``) over the pseudo-header."""
    s = ~ones_sum(SRC + dst + struct.pack("!I3xB", len(l4), proto) + l4) & 0xffff
    l4 = l4[:at] + struct.pack("!H", s) + l4[at + 2:]
    return bytearray(eth + struct.pack("!IHBB", 6 << 28, len(l4), proto, 64) + SRC + dst + l4)


def new_source(frame: bytearray) -> None:
    """Random bits 16-63 of the source, its last word lowered by as much (one's complement): same sum."""
    r = random.getrandbits(48)
    words = (r >> 32, (r >> 16) & 0xffff, r & 0xffff)
    last = fold(1 + (~fold(sum(words)) & 0xffff))  # 1 (the template's last word) - their sum
    frame[SRC_AT + 2:SRC_AT + 8] = r.to_bytes(6, "big")
    frame[SRC_AT + 14:SRC_AT + 16] = last.to_bytes(2, "big")


def main() -> None:
    ifname, dst_mac, dst_addr, tcp_port, udp_port, pps, seconds = sys.argv[1:8]
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.bind((ifname, 0))
    eth = bytes.fromhex(dst_mac.replace(":", "")) + sock.getsockname()[4] + b"\x86\xdd"
    dst = ipaddress.IPv6Address(dst_addr).packed
    payload = b"nodeguard-bench-6\n"
    frames = {
        "icmp6": template(eth, dst, 58, struct.pack("!BBHHH", 128, 0, 0, 0x4e47, 1), 2),
        "syn6": template(eth, dst, 6, struct.pack("!HHIIBBHHH", 40000, int(tcp_port), 1, 0, 5 << 4, 0x02, 64240, 0, 0),
                         16),
        "udp6": template(eth, dst, 17, struct.pack("!HHHH", 40000, int(udp_port), 8 + len(payload), 0) + payload, 6),
    }
    frames = {k: frames[k] for k in sys.argv[8:] or frames}
    sent = dict.fromkeys(frames, 0)
    interval = BATCH / float(pps) if float(pps) else 0.0
    start = time.monotonic()
    next_at = start
    try:
        while time.monotonic() - start < float(seconds):
            for name, frame in frames.items():
                for _ in range(BATCH):
                    new_source(frame)
                    sock.send(frame)
                sent[name] += BATCH
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))
    except KeyboardInterrupt:  # SIGINT: stopped early, as hping3 is
        pass
    print(json.dumps({"sent": sent}))


if __name__ == "__main__":
    main()
