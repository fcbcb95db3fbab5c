"""Send one kind of attack packet at an exact rate (hping3 -i cannot hold 400/s or 4000/s).

usage: pace.py IFACE DST_MAC KIND SRC DST RATE SECONDS[,PAUSE,SECONDS...]
KIND: icmp | syn | udp (IPv4 or IPv6 by the address). Prints the number of packets sent.
Frames are built once with scapy and sent on an AF_PACKET socket, paced at 1 ms granularity.
"""

from __future__ import annotations

import socket
import sys
import time

from scapy.all import ICMP, IP, TCP, UDP, Ether, ICMPv6EchoRequest, IPv6, raw


def frame(kind: str, src: str, dst: str, dmac: str, smac: str) -> bytes:
    l3 = IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst)
    l4 = {"icmp": ICMPv6EchoRequest() if ":" in src else ICMP(), "syn": TCP(sport=40000, dport=80, flags="S"),
          "udp": UDP(sport=40000, dport=9999) / (b"x" * 32)}[kind]
    return raw(Ether(src=smac, dst=dmac) / l3 / l4)


def main() -> None:
    iface, dmac, kind, src, dst, rate, pattern = sys.argv[1:8]
    rate = float(rate)
    phases = [float(x) for x in pattern.split(",")]  # on[,off,on,...] seconds
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((iface, 0))
    smac = open(f"/sys/class/net/{iface}/address").read().strip()
    pkt = frame(kind, src, dst, dmac, smac)
    total = 0
    for i, seconds in enumerate(phases):
        if i % 2:
            time.sleep(seconds)
            continue
        t0 = time.monotonic()
        sent = 0
        while True:
            now = time.monotonic() - t0
            if now >= seconds:
                break
            due = int(now * rate) + 1
            while sent < due:
                s.send(pkt)
                sent += 1
            time.sleep(0.001)
        total += sent
    print(total)


if __name__ == "__main__":
    main()
