"""Bench client (runs in the client namespace): ``_client.py MODE ...``, prints one JSON object.

connects TARGET PORT DURATION INTERVAL TIMEOUT RETURNING_SRC NEW_SRC...
    every INTERVAL s for DURATION s, one connect+echo from RETURNING_SRC and one from the next
    never-used address of NEW_SRC (each in its own thread); per attempt: ok and latency.
crr TARGET PORT DURATION [SRC...]  sequential connect+request+response+close, source addresses in turn: /s
rr TARGET PORT DURATION       request/response on one connection: transactions/s
bulk TARGET PORT DURATION     one TCP stream to a sink: bytes/s
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time


def connect_once(src: str, dst: str, port: int, timeout: float) -> tuple[bool, float]:
    t0 = time.monotonic()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.bind((src, 0))
            s.connect((dst, port))
            s.sendall(b"hello\n")
            ok = s.recv(64) == b"hello\n"
    except OSError:
        ok = False
    return ok, (time.monotonic() - t0) * 1000


def connects(dst, port, duration, interval, timeout, returning, *new_srcs):
    port, duration, interval, timeout = int(port), float(duration), float(interval), float(timeout)
    results = {"returning": [], "new": []}
    lock = threading.Lock()
    fresh = iter(new_srcs)

    def one(kind: str, src: str) -> None:
        ok, ms = connect_once(src, dst, port, timeout)
        with lock:
            results[kind].append([ok, round(ms, 2)])

    threads, tick, end = [], time.monotonic(), time.monotonic() + duration
    while tick < end:
        for kind, src in (("returning", returning), ("new", next(fresh, None))):
            if src:
                t = threading.Thread(target=one, args=(kind, src), daemon=True)
                t.start()
                threads.append(t)
        tick += interval
        time.sleep(max(0.0, tick - time.monotonic()))
    for t in threads:
        t.join(timeout + 1)
    return results


def crr(dst, port, duration, *srcs):
    n, i, end = 0, 0, time.monotonic() + float(duration)
    srcs = srcs or ("0.0.0.0",)
    t0 = time.monotonic()
    while time.monotonic() < end:
        ok, _ = connect_once(srcs[i % len(srcs)], dst, int(port), 2.0)
        n += ok
        i += 1
    return {"per_s": n / (time.monotonic() - t0)}


def rr(dst, port, duration):
    n = 0
    with socket.create_connection((dst, int(port)), timeout=2) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t0 = time.monotonic()
        end = t0 + float(duration)
        while time.monotonic() < end:
            s.sendall(b"x" * 64)
            got = 0
            while got < 64:
                got += len(s.recv(64 - got))
            n += 1
    return {"per_s": n / (time.monotonic() - t0)}


def bulk(dst, port, duration):
    chunk, sent = b"\0" * (1 << 18), 0
    with socket.create_connection((dst, int(port)), timeout=5) as s:
        t0 = time.monotonic()
        end = t0 + float(duration)
        while time.monotonic() < end:
            sent += s.send(chunk)
        took = time.monotonic() - t0
    return {"bytes_per_s": sent / took}


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    print(json.dumps({"connects": connects, "crr": crr, "rr": rr, "bulk": bulk}[mode](*args)), flush=True)
