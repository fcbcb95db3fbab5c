"""Echo services for the demo and the bench: ``python -m guard.demo.services ADDR tcp:PORT [udp:PORT ...]``.

TCP: one message per connection echoed; UDP: every datagram echoed. One thread, a selector.
Prints "ready" once every socket listens.
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
        if proto == "tcp":
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
                if kind == "tcp":
                    conn, _ = s.accept()
                    conn.setblocking(False)
                    sel.register(conn, selectors.EVENT_READ, "conn")
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
                if kind == "conn":
                    sel.unregister(s)
                    s.close()


if __name__ == "__main__":
    main(sys.argv[1:])
