"""Silent connections from many sources: each source keeps PER_SOURCE connections open and sends
nothing; one the server closes is opened again at once, so the flood churns as fast as the server
evicts. Prints "ready" once every connection was opened once, then, at the end, one JSON line
{"connects": N, "closed_by_server": M}.

usage: silent_flood.py DST PORT SECONDS PER_SOURCE SRC [SRC ...]
"""
import json
import selectors
import socket
import sys
import time

dst, port, seconds, per_source, sources = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5:]
sel = selectors.DefaultSelector()
stats = {"connects": 0, "closed_by_server": 0}


def open_one(src: str) -> None:
    s = socket.socket(socket.AF_INET6 if ":" in src else socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    s.bind((src, 0))
    try:
        s.connect((dst, port))
    except BlockingIOError:
        pass
    sel.register(s, selectors.EVENT_READ, src)
    stats["connects"] += 1


for src in sources:
    for _ in range(per_source):
        open_one(src)
print("ready", flush=True)
until = time.monotonic() + seconds
while (left := until - time.monotonic()) > 0:
    for key, _ in sel.select(min(left, 0.5)):
        try:
            gone = key.fileobj.recv(1) == b""
        except BlockingIOError:
            continue
        except OSError:
            gone = True
        if gone:
            sel.unregister(key.fileobj)
            key.fileobj.close()
            stats["closed_by_server"] += 1
            open_one(key.data)
print(json.dumps(stats), flush=True)
