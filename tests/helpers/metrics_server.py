"""The real metrics server (guard.metrics.MetricsServer, default Limits) for kernel tests, its
heartbeat beaten every second as the daemon's main loop does.

usage: metrics_server.py ADDR PORT   (prints "ready" once it listens)
"""
import sys
import time

from guard.metrics import Heartbeat, MetricsServer

hb = Heartbeat()
hb.beat()
srv = MetricsServer((sys.argv[1], int(sys.argv[2])), lambda: {}, hb)
srv.start()
print("ready", flush=True)
while True:
    hb.beat()
    time.sleep(1)
