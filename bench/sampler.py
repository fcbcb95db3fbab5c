"""Sampler costs: parse+aggregate rate on one core, and CPU at the default cap under a real flood.

1. Replay: 200,000 sampled packets (TCP SYN, UDP, ICMP, IPv6; 50,000 distinct sources) encoded
   as NFLOG netlink datagrams, decoded, parsed and aggregated as `nodeguard sample` does.
   Baseline, same run: dissecting the same packets with scapy (what the hot path avoids).
   Goal (issue 5): >= 50,000 packets/s.
2. Flood: the default policy in a victim netns, `nodeguard sample` running, hping3 floods
   (ICMP + SYN, two sources) for 20 s; the sampler's CPU from /proc. Baseline: the same
   sampler idle for 10 s. Goal: <= 10 % of a core.

usage: sudo .venv/bin/python bench/sampler.py
"""

from __future__ import annotations

import os
import random
import signal
import struct
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from scapy.all import ICMP, IP, TCP, UDP, IPv6, raw  # noqa: E402

from guard.aggregate import Window  # noqa: E402
from guard.nflog import parse_messages  # noqa: E402
from guard.packet import parse  # noqa: E402


def nflog_datagram(payload: bytes, prefix: bytes) -> bytes:
    def attr(t: int, p: bytes) -> bytes:
        return struct.pack("=HH", 4 + len(p), t) + p + b"\0" * ((4 - len(p) % 4) % 4)
    body = struct.pack("=BBH", 2, 0, 0) + attr(10, prefix) + attr(4, struct.pack(">I", 2)) + attr(9, payload[:128])
    return struct.pack("=IHHII", 16 + len(body), 0x400, 0, 0, 0) + body


def replay_set(n: int = 200_000) -> list[bytes]:
    rnd = random.Random(1)
    templates = [(bytearray(raw(IP(dst="10.0.0.1") / TCP(dport=443, flags="S"))), b"ng:syn-flood\0"),
                 (bytearray(raw(IP(dst="10.0.0.1") / UDP(dport=53) / (b"q" * 40))), b"ng:limit-udp\0"),
                 (bytearray(raw(IP(dst="10.0.0.1") / ICMP())), b"ng:icmp-flood\0")]
    v6 = raw(IPv6(src="fd00::1", dst="fd00::2") / TCP(dport=80, flags="S"))
    out = []
    for i in range(n):
        if i % 10 == 0:
            out.append(nflog_datagram(v6, b"ng:syn-flood\0"))
            continue
        pkt, prefix = templates[i % 3]
        pkt[12:16] = struct.pack("!I", 0x0B000000 + rnd.randrange(50_000))
        out.append(nflog_datagram(bytes(pkt), prefix))
    return out


def replay() -> None:
    data = replay_set()
    t = time.process_time()
    window = Window(0, 10_000)
    for dgram in data:
        for s in parse_messages(dgram, 0.0):
            window.add(s.group, parse(s.payload), "eth0", s.ts)
    ours = len(data) / (time.process_time() - t)
    window.records(10.0, {})
    subset = data[:20_000]
    t = time.process_time()
    for dgram in subset:
        for s in parse_messages(dgram, 0.0):
            IP(s.payload) if s.payload[0] >> 4 == 4 else IPv6(s.payload)
    scapy = len(subset) / (time.process_time() - t)
    verdict = "ok" if ours >= 50_000 else "MISSED"
    print(f"replay: decode+parse+aggregate {ours:,.0f} packets/s on one core "
          f"(scapy dissection alone: {scapy:,.0f}/s; ratio {ours / scapy:.1f}x); goal >= 50,000/s {verdict}")


def cpu_s(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def flood() -> None:
    import netlab
    from netlab import ATTACKER4, LEGIT4, VICTIM4

    tmp = Path(tempfile.mkdtemp())
    policy = tmp / "p.yaml"
    policy.write_text(f"sampler:\n  log: {tmp}/attacks.jsonl\n")
    with netlab.lab() as (victim, attacker):
        victim.nodeguard("apply", "-c", str(policy))
        proc = victim.popen([sys.executable, "-m", "guard", "sample", "-c", str(policy)])
        while "sampling via" not in proc.stderr.readline():
            pass
        c0, t0 = cpu_s(proc.pid), time.monotonic()
        time.sleep(10)
        idle = (cpu_s(proc.pid) - c0) / (time.monotonic() - t0) * 100
        c0, t0 = cpu_s(proc.pid), time.monotonic()
        floods = [netlab.flood(attacker, 20, "--icmp", "-a", ATTACKER4, VICTIM4),
                  netlab.flood(attacker, 20, "-S", "-p", "80", "-a", LEGIT4, VICTIM4)]
        for f in floods:
            f.wait()
        busy = (cpu_s(proc.pid) - c0) / (time.monotonic() - t0) * 100
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        c = victim.counters()
        condemned = c["icmp-flood: icmp-flood per-source v4"] + c["syn-flood: syn-flood per-source v4"]
        sampled = c["sample-icmp-flood: sample icmp-flood via nflog"] + c["sample-syn-flood: sample syn-flood via nflog"]
    verdict = "ok" if busy <= 10 else "MISSED"
    print(f"flood: {condemned / 20:,.0f} condemned packets/s for 20 s, {sampled / 20:,.0f}/s sampled (cap 2 x 200/s); "
          f"sampler CPU {busy:.2f} % of a core (idle baseline {idle:.2f} %); goal <= 10 % {verdict}")


if __name__ == "__main__":
    replay()
    flood()
