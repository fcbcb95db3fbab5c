"""One long-lived TCP connection: connects from SRC to DST:PORT and checks an echo, prints "connected",
then, for each line read on stdin, sends a message and waits up to TIMEOUT seconds for its echo, printing
JSON {"ok": bool, "seconds": s}. An echo server that echoes every message: tcp_server.py --echo.

usage: tcp_session.py SRC DST PORT TIMEOUT
"""
import json
import socket
import sys
import time

src, dst, port, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET, socket.SOCK_STREAM)
s.settimeout(timeout)
s.bind((src, 0))
s.connect((dst, port))
s.sendall(b"hello 0")
assert s.recv(1024) == b"hello 0"
print("connected", flush=True)
for i, _ in enumerate(sys.stdin, 1):
    msg, start, error = f"hello {i}".encode(), time.monotonic(), None
    try:
        s.sendall(msg)
        got = s.recv(1024)
        ok, error = got == msg, None if got == msg else repr(got)
    except OSError as e:
        ok, error = False, repr(e)
    print(json.dumps({"ok": ok, "seconds": round(time.monotonic() - start, 3), **({"error": error} if error else {})}),
          flush=True)
