"""Can slow clients lock out ``/healthz``? (issue 19, item 4). The metrics server of a tree runs in
a child process on a free loopback port (its heartbeat beaten every second, as the daemon's main
loop does); N slowloris clients each send a request head one byte every INTERVAL s and never
finish it; meanwhile ``/healthz`` is probed every PROBE s with kubelet's timeout (the DaemonSet's
``timeoutSeconds: 5``). Prints how many probes failed and the longest stretch of failures.

usage: .venv/bin/python bench/slow_clients.py [--tree PATH] [--clients 4] [--interval 6]
                                              [--seconds 40] [--probe 1]

``--tree`` (default: this one) is put on PYTHONPATH of the child, so main can be measured beside
a branch. Loopback only: no namespace, no netfilter, no root needed.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROBE_TIMEOUT_S = 5.0  # deploy/kubernetes/daemonset.yaml: livenessProbe.timeoutSeconds

SERVER = """
import time
from guard.metrics import Heartbeat, MetricsServer
hb = Heartbeat()
hb.beat()
srv = MetricsServer(("127.0.0.1", 0), lambda: {}, hb)
print(srv.port, flush=True)
srv.start()
while True:
    hb.beat()
    time.sleep(1)
"""


def slowloris(port: int, interval: float, stop: threading.Event) -> None:
    """A request head that never ends: one byte every ``interval`` s, on one connection."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\n")
            while not stop.wait(interval):
                s.sendall(b"X")
    except OSError:
        pass  # the server closed it: the client's job is over


def probe(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT_S) as r:
            return r.status == 200
    except (OSError, urllib.error.URLError):
        return False


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tree", type=Path, default=ROOT)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--interval", type=float, default=6.0)
    ap.add_argument("--seconds", type=float, default=40.0)
    ap.add_argument("--probe", type=float, default=1.0)
    args = ap.parse_args()

    env = dict(os.environ, PYTHONPATH=str(args.tree.resolve()))
    child = subprocess.Popen([sys.executable, "-c", SERVER], env=env, stdout=subprocess.PIPE, text=True)
    try:
        port = int(child.stdout.readline())
        url = f"http://127.0.0.1:{port}/healthz"
        assert probe(url), "the server does not answer /healthz before the attack"
        stop = threading.Event()
        for _ in range(args.clients):
            threading.Thread(target=slowloris, args=(port, args.interval, stop), daemon=True).start()
        time.sleep(0.5)
        results: list[tuple[float, bool]] = []
        t0 = time.monotonic()
        while time.monotonic() - t0 < args.seconds:
            started = time.monotonic()
            results.append((started - t0, probe(url)))
            time.sleep(max(0.0, args.probe - (time.monotonic() - started)))
        stop.set()
    finally:
        child.kill()
        child.wait()

    failed = [t for t, ok in results if not ok]
    longest, run_start = 0.0, None
    for t, ok in results + [(args.seconds, True)]:
        if not ok and run_start is None:
            run_start = t
        elif ok and run_start is not None:
            longest, run_start = max(longest, t - run_start), None
    print(f"tree {args.tree}: {args.clients} clients, a byte every {args.interval:g} s, {args.seconds:g} s")
    print(f"/healthz probes: {len(results)}, failed: {len(failed)}, longest failing stretch: {longest:.1f} s")


if __name__ == "__main__":
    main()
