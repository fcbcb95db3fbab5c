"""Send attack-like packets at exact rates (hping3 -i cannot hold 400/s or 4000/s), several streams at once.

usage: pace.py IFACE DST_MAC STREAM [STREAM ...]
STREAM: KIND,SRC,DST,RATE,PATTERN  KIND icmp | syn | udp (IPv4 or IPv6 by the address); PATTERN
"on" or "on/off/on/..." seconds (e.g. "2" or "1.5/1.2/1.5"). Prints "ready" once the frames are
built (scapy's import takes ~2 s: time from there), then one JSON line {SRC: packets sent}.
Frames are built once with scapy and sent on an AF_PACKET socket, paced at 1 ms granularity.
(After bench/pace.py of the hot-path research: git show e4ff56f:bench/pace.py.)
"""

from __future__ import annotations

import json
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
    iface, dmac, *specs = sys.argv[1:]
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((iface, 0))
    with open(f"/sys/class/net/{iface}/address") as f:
        smac = f.read().strip()
    streams = []
    for spec in specs:
        kind, src, dst, rate, pattern = spec.split(",")
        phases, t = [], 0.0
        for i, secs in enumerate(float(x) for x in pattern.split("/")):
            if i % 2 == 0:
                phases.append((t, t + secs))
            t += secs
        streams.append({"pkt": frame(kind, src, dst, dmac, smac), "src": src, "rate": float(rate),
                        "phases": phases, "sent": 0})
    end = max(p[-1][1] for p in (st["phases"] for st in streams))
    print("ready", flush=True)
    t0 = time.monotonic()
    while True:
        now = time.monotonic() - t0
        if now >= end:
            break
        for st in streams:
            due = 0
            for start, stop in st["phases"]:  # packets due by now: rate x the time spent in "on" phases
                if now > start:
                    due += int((min(now, stop) - start) * st["rate"]) + 1
            while st["sent"] < due:
                s.send(st["pkt"])
                st["sent"] += 1
        time.sleep(0.001)
    sent: dict[str, int] = {}
    for st in streams:
        sent[st["src"]] = sent.get(st["src"], 0) + st["sent"]
    print(json.dumps(sent), flush=True)


if __name__ == "__main__":
    main()
