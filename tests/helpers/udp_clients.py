"""A UDP peer: sends COUNT requests from SRC to DST:PORT, one at a time, and counts the answers.

usage: udp_clients.py SRC DST PORT COUNT [--timeout S] [--interval S] [--times]
Prints JSON {"ok": n, "failed": n}.
SRC may be a comma-separated list: request i comes from SRC[i % len] (a socket per source).
--times adds "attempts": [[CLOCK_MONOTONIC when the request was sent, 1 if it was answered else 0], ...].
"""
import json
import socket
import sys
import time

srcs, dst, port, count = sys.argv[1].split(","), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
timeout = float(sys.argv[sys.argv.index("--timeout") + 1]) if "--timeout" in sys.argv else 1.0
interval = float(sys.argv[sys.argv.index("--interval") + 1]) if "--interval" in sys.argv else 0.0
socks = {}
for src in srcs:
    socks[src] = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET, socket.SOCK_DGRAM)
    socks[src].bind((src, 0))
ok = failed = 0
attempts = []
for i in range(count):
    s = socks[srcs[i % len(srcs)]]
    msg = f"ping {i}".encode()
    attempts.append([time.monotonic(), 0])
    s.sendto(msg, (dst, port))
    deadline = time.monotonic() + timeout
    try:
        while True:
            s.settimeout(max(0.001, deadline - time.monotonic()))
            data, _ = s.recvfrom(2048)
            if data == msg:
                ok += 1
                attempts[-1][1] = 1
                break
    except OSError:
        failed += 1
    time.sleep(interval)
print(json.dumps({"ok": ok, "failed": failed, **({"attempts": attempts} if "--times" in sys.argv else {})}), flush=True)
