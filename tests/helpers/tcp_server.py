"""Echo server for traffic tests: accepts forever, echoes one message per connection.

usage: tcp_server.py ADDR PORT [--hold | --echo]   (--hold keeps connections open until the peer closes;
--echo also echoes every message until then)
"""
import socket
import sys
import threading

addr, port = sys.argv[1], int(sys.argv[2])
hold = "--hold" in sys.argv
echo = "--echo" in sys.argv
fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
srv = socket.socket(fam, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((addr, port))
srv.listen(4096)
print("ready", flush=True)


def serve(conn):
    with conn:
        try:
            data = conn.recv(1024)
            if data:
                conn.sendall(data)
            while (hold or echo) and data:
                data = conn.recv(1024)
                if echo and data:
                    conn.sendall(data)
        except OSError:
            pass


while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
