"""Echo services for the demo and the bench: ``python -m guard.demo.services ADDR tcp:PORT [udp:PORT] [sink:PORT]``.

TCP: one message per connection echoed, then closed; ``rr``: echo every message until the peer
closes; UDP: every datagram echoed; sink: read and discard until the peer closes (bulk throughput).
One thread, a selector. Prints "ready" once every socket listens.
"""

from __future__ import annotations

import selectors
import socket
import sys


def main(argv: list[str]) -> None:
    addr, specs = argv[0], argv[1:]
    sel = selectors.DefaultSelector()
    for spec in specs:
        proto, port = spec.split(":")
        if proto in ("tcp", "sink", "rr"):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((addr, int(port)))
            s.listen(4096)
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((addr, int(port)))
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, proto)
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            s, kind = key.fileobj, key.data
            try:
                if kind in ("tcp", "sink", "rr"):
                    conn, _ = s.accept()
                    conn.setblocking(False)
                    sel.register(conn, selectors.EVENT_READ, {"tcp": "conn", "sink": "drain", "rr": "echo"}[kind])
                elif kind in ("drain", "echo"):
                    data = s.recv(1 << 20)
                    if not data:
                        sel.unregister(s)
                        s.close()
                    elif kind == "echo":
                        s.sendall(data)
                elif kind == "udp":
                    for _ in range(64):
                        data, peer = s.recvfrom(2048)
                        s.sendto(data, peer)
                else:
                    data = s.recv(1024)
                    if data:
                        s.send(data)
                    sel.unregister(s)
                    s.close()
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                if kind in ("conn", "drain", "echo"):
                    sel.unregister(s)
                    s.close()


if __name__ == "__main__":
    main(sys.argv[1:])
