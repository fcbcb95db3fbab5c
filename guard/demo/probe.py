"""A legitimate client: ``python -m guard.demo.probe INTERVAL TIMEOUT KIND=TARGET ...``.

Every INTERVAL seconds it starts one attempt per KIND (each in its own thread, so a slow attempt
never delays the next tick) and prints one JSON line per finished attempt:
``{"k": kind, "t": start (epoch s), "ok": bool, "ms": latency}``. Kinds: ``tcp=ADDR:PORT``
(connect, send, read the echo), ``udp=ADDR:PORT`` (a datagram and its echo), ``ping=ADDR``
(ICMP echo over a raw socket). Stops on SIGTERM/SIGINT or after ``--for S``.
"""

from __future__ import annotations

import json
import os
import select
import socket
import struct
import sys
import threading
import time

_out = threading.Lock()
_seq = iter(range(1, 1 << 30))


def _emit(kind: str, start: float, ok: bool, t0: float) -> None:
    line = json.dumps({"k": kind, "t": round(start, 3), "ok": ok, "ms": round((time.monotonic() - t0) * 1000, 2)})
    with _out:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def tcp(target: str, timeout: float) -> bool:
    host, port = target.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(b"hello\n")
        return s.recv(64) == b"hello\n"


def udp(target: str, timeout: float) -> bool:
    host, port = target.rsplit(":", 1)
    payload = f"q{next(_seq)}".encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.connect((host, int(port)))
        s.send(payload)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s.settimeout(max(0.001, deadline - time.monotonic()))
            if s.recv(2048) == payload:
                return True
    return False


def _checksum(data: bytes) -> int:
    data += b"\0" * (len(data) % 2)
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF


def ping(target: str, timeout: float) -> bool:
    ident, seq = os.getpid() & 0xFFFF, next(_seq) & 0xFFFF
    body = struct.pack("!HH", ident, seq) + b"nodeguard-demo"
    msg = struct.pack("!BBH", 8, 0, _checksum(struct.pack("!BBH", 8, 0, 0) + body)) + body
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
        s.sendto(msg, (target, 0))
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([s], [], [], left)[0]:
                break
            data = s.recv(2048)
            ihl = (data[0] & 0x0F) * 4
            if len(data) >= ihl + 8 and data[ihl] == 0 and data[ihl + 4:ihl + 8] == body[:4]:
                return True
    return False


KINDS = {"tcp": tcp, "udp": udp, "ping": ping}


def attempt(label: str, kind: str, target: str, timeout: float) -> None:
    start, t0 = time.time(), time.monotonic()
    try:
        ok = KINDS[kind](target, timeout)
    except OSError:
        ok = False
    _emit(label, start, ok, t0)


def main(argv: list[str]) -> None:
    interval, timeout = float(argv[0]), float(argv[1])
    duration = float(argv[argv.index("--for") + 1]) if "--for" in argv else None
    jobs = []
    for spec in argv[2:]:
        if "=" not in spec:
            continue
        label, target = spec.split("=", 1)
        jobs.append((label, label.split("-")[0], target))
    end = time.monotonic() + duration if duration else None
    tick = time.monotonic()
    while end is None or tick < end:
        for label, kind, target in jobs:
            threading.Thread(target=attempt, args=(label, kind, target, timeout), daemon=True).start()
        tick += interval
        time.sleep(max(0.0, tick - time.monotonic()))
    time.sleep(timeout + 0.2)  # the last attempts finish


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except KeyboardInterrupt:
        pass
