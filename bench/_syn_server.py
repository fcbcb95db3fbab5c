"""Echo server for bench/synflood.py: one listener per address given (ADDR:PORT or [ADDR6]:PORT), backlog 4096.

Accepts forever; echoes whatever a connection sends until it closes (so the throughput test can
stream into it). Prints "ready" once every listener is bound.
"""
import socket
import sys
import threading


def serve(conn):
    with conn:
        try:
            while True:
                data = conn.recv(262144)
                if not data:
                    return
                if len(data) < 64:  # the connect test's short message: echo it; bulk data is only drained
                    conn.sendall(data)
        except OSError:
            pass


def listen(spec):
    host, port = spec.rsplit(":", 1)
    host = host.strip("[]")
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((host, int(port)))
    s.listen(4096)
    return s


def accept_loop(s):
    while True:
        c, _ = s.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()


socks = [listen(a) for a in sys.argv[1:]]
print("ready", flush=True)
threads = [threading.Thread(target=accept_loop, args=(s,), daemon=True) for s in socks]
for t in threads:
    t.start()
threads[0].join()
