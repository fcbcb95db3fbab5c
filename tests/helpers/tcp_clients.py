"""Legitimate client: connects COUNT times from SRC to DST:PORT, sends data, checks the echo.

usage: tcp_clients.py SRC DST PORT COUNT [--concurrent] [--timeout S] [--interval S] [--times]
Prints JSON {"ok": n, "failed": n}. --concurrent opens all connections and keeps them open.
SRC may be a comma-separated list: connection i comes from SRC[i % len] (brand-new sources, one each).
--times adds "attempts": [[CLOCK_MONOTONIC at the start of the attempt, 1 if it succeeded else 0], ...].
"""
import json
import socket
import sys
import time

srcs, dst, port, count = sys.argv[1].split(","), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
concurrent = "--concurrent" in sys.argv
timeout = float(sys.argv[sys.argv.index("--timeout") + 1]) if "--timeout" in sys.argv else 3.0
interval = float(sys.argv[sys.argv.index("--interval") + 1]) if "--interval" in sys.argv else 0.0
fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
ok = failed = 0
held, attempts = [], []
for i in range(count):
    src = srcs[i % len(srcs)]
    attempts.append([time.monotonic(), 0])
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.bind((src, 0))
        s.connect((dst, port))
        msg = f"hello {i}".encode()
        s.sendall(msg)
        if s.recv(1024) != msg:
            raise OSError("bad echo")
        ok += 1
        attempts[-1][1] = 1
        if concurrent:
            held.append(s)
        else:
            s.close()
    except OSError:
        failed += 1
        s.close()
    time.sleep(interval)
print(json.dumps({"ok": ok, "failed": failed, **({"attempts": attempts} if "--times" in sys.argv else {})}), flush=True)
if concurrent:
    time.sleep(float(sys.argv[sys.argv.index("--hold") + 1]) if "--hold" in sys.argv else 0)
