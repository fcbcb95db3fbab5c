"""A UDP peer: sends COUNT requests from SRC to DST:PORT, one at a time, and counts the answers.

usage: udp_clients.py SRC DST PORT COUNT [--timeout S] [--interval S]
Prints JSON {"ok": n, "failed": n}.
"""
import json
import socket
import sys
import time

src, dst, port, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
timeout = float(sys.argv[sys.argv.index("--timeout") + 1]) if "--timeout" in sys.argv else 1.0
interval = float(sys.argv[sys.argv.index("--interval") + 1]) if "--interval" in sys.argv else 0.0
s = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET, socket.SOCK_DGRAM)
s.bind((src, 0))
s.settimeout(timeout)
ok = failed = 0
for i in range(count):
    msg = f"ping {i}".encode()
    s.sendto(msg, (dst, port))
    deadline = time.monotonic() + timeout
    try:
        while True:
            s.settimeout(max(0.001, deadline - time.monotonic()))
            data, _ = s.recvfrom(2048)
            if data == msg:
                ok += 1
                break
    except OSError:
        failed += 1
    time.sleep(interval)
print(json.dumps({"ok": ok, "failed": failed}), flush=True)
