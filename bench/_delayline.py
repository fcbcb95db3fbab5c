"""A userspace delay line between two TUN devices (this kernel has no sch_netem).

usage: _delayline.py TUN_A TUN_B DELAY_MS
Every packet read from TUN_A is written to TUN_B DELAY_MS later, and vice versa; order is kept.
The router namespace sends what arrives from each side into its TUN device by policy routing, and
what the delay line writes back comes out of the other TUN and is routed on normally.
Prints "ready" once both devices exist; runs until killed.
"""

import fcntl
import heapq
import os
import select
import struct
import sys
import time

TUNSETIFF, IFF_TUN, IFF_NO_PI = 0x400454CA, 0x0001, 0x1000


def tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


a, b = tun(sys.argv[1]), tun(sys.argv[2])
delay = float(sys.argv[3]) / 1000
peer = {a: b, b: a}
queue: list[tuple[float, int, int, bytes]] = []
seq = 0
print("ready", flush=True)
poll = select.poll()
poll.register(a, select.POLLIN)
poll.register(b, select.POLLIN)
while True:
    timeout = max(0.0, (queue[0][0] - time.monotonic()) * 1000) if queue else 1000
    for fd, _ in poll.poll(timeout):
        now = time.monotonic()
        for _ in range(64):  # drain what is there
            try:
                pkt = os.read(fd, 65535)
            except BlockingIOError:
                break
            seq += 1
            heapq.heappush(queue, (now + delay, seq, peer[fd], pkt))
    now = time.monotonic()
    while queue and queue[0][0] <= now:
        _, _, out, pkt = heapq.heappop(queue)
        try:
            os.write(out, pkt)
        except OSError:
            pass  # queue full on the other side: a loss, as on a real link
