"""Legitimate client for bench/synflood.py.

usage: _syn_client.py SRC DST PORT COUNT SPACING TIMEOUT
COUNT connection attempts from SRC, one started every SPACING seconds (each in its own thread,
so a failed attempt never delays the next), each with TIMEOUT seconds for connect + echo.
Prints JSON: {"ok": n, "failed": n, "lat_ms": [connect latency of each success]}.
"""
import json
import socket
import sys
import threading
import time

src, dst, port, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
spacing, timeout = float(sys.argv[5]), float(sys.argv[6])
fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
lock = threading.Lock()
ok, failed, lat = 0, 0, []


def attempt(i):
    global ok, failed
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(timeout)
    start = time.monotonic()
    try:
        s.bind((src, 0))
        s.connect((dst, port))
        took = time.monotonic() - start
        msg = f"hello {i}".encode()
        s.sendall(msg)
        if s.recv(64) != msg:
            raise OSError("bad echo")
        with lock:
            ok += 1
            lat.append(round(took * 1000, 3))
    except OSError:
        with lock:
            failed += 1
    finally:
        s.close()


threads = []
t0 = time.monotonic()
for i in range(count):
    t = threading.Thread(target=attempt, args=(i,))
    t.start()
    threads.append(t)
    time.sleep(max(0.0, t0 + (i + 1) * spacing - time.monotonic()))
for t in threads:
    t.join()
print(json.dumps({"ok": ok, "failed": failed, "lat_ms": sorted(lat)}), flush=True)
