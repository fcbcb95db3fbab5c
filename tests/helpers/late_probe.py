"""A /healthz probe whose request comes DELAY s after its connect (a request segment a real network
delays), COUNT times, one every INTERVAL s, each with a TIMEOUT. Prints "ready" before the first,
then one JSON line: a list of [status or error name, seconds], one per probe.

usage: late_probe.py SRC DST PORT DELAY INTERVAL COUNT TIMEOUT
"""
import json
import socket
import sys
import time

src, dst, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
delay, interval, count, timeout = float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6]), float(sys.argv[7])


def probe() -> list:
    t0 = time.monotonic()
    try:
        with socket.socket(socket.AF_INET6 if ":" in src else socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.bind((src, 0))
            s.connect((dst, port))
            time.sleep(delay)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while chunk := s.recv(4096):
                answer += chunk
        status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else "empty"
    except OSError as exc:
        status = type(exc).__name__
    return [status, round(time.monotonic() - t0, 4)]


print("ready", flush=True)
results = []
for _ in range(count):
    started = time.monotonic()
    results.append(probe())
    time.sleep(max(0.0, interval - (time.monotonic() - started)))
print(json.dumps(results), flush=True)
