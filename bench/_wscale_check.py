"""Which window scale does a listener announce? (SYNPROXY must announce the same: section 7.)
Default listener vs listeners with SO_RCVBUF set before listen(); read on the client from TCP_INFO.

    PYTHONPATH=. .venv/bin/python bench/_wscale_check.py
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synlab import NODE4, PY, Lab

SERVER = r"""
import socket, sys, time
socks = []
for port, rcvbuf in ((9001, 0), (9002, 65536), (9003, 262144), (9004, 4194304)):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if rcvbuf: s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.bind(("0.0.0.0", port)); s.listen(16); socks.append(s)
print("ready", flush=True); time.sleep(30)
"""
CLIENT = r"""
import socket, struct, sys
for port in (9001, 9002, 9003, 9004):
    c = socket.create_connection((sys.argv[1], port), timeout=2)
    info = c.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    ws = info[6]  # byte 6: tcpi_snd_wscale:4 (low nibble), tcpi_rcv_wscale:4
    print(port, "server announced wscale", ws & 0x0f); c.close()
"""
with Lab() as lab:
    srv = lab.node.popen([PY, "-c", SERVER])
    assert srv.stdout.readline().strip() == "ready"
    print("listeners: 9001 default, 9002 SO_RCVBUF 64 KiB, 9003 SO_RCVBUF 256 KiB, 9004 SO_RCVBUF 4 MiB")
    print(lab.net.run([PY, "-c", CLIENT, NODE4]).stdout)
    srv.kill()
    srv.wait()
