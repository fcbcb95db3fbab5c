"""Idle cost of `nodeguard run` with the default policy, in a throwaway network namespace.

The daemon runs as a node runs it: the built-in default policy (sampler and metrics on), a
systemd-like notify socket with WatchdogSec=30s, and a Prometheus-like scrape of /metrics every
15 s. After a warm-up, CPU (the daemon's and its children's: user + system, from /proc) and RSS
are read over the measured period. Goals: CPU <= 0.5 % of one core, RSS <= 80 MB.

usage: sudo .venv/bin/python bench/idle.py [--seconds 60] [--scrape 15]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from guard.lab.netns import add_uplink, reexec_in_netns  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CPU_GOAL, RSS_GOAL_MB = 0.5, 80.0


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--scrape", type=float, default=15.0, help="seconds between /metrics scrapes (0: none)")
    args = ap.parse_args()
    add_uplink(reexec_in_netns("idle"), "ngb0")  # from here on in a throwaway namespace
    tmp = Path(tempfile.mkdtemp(prefix="ngidle-"))
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp / "notify"))
    notify.settimeout(0.5)
    got: list[str] = []
    threading.Thread(target=lambda: [got.append(m) for m in iter(lambda: _recv(notify), None)], daemon=True).start()
    env = dict(os.environ, NOTIFY_SOCKET=str(tmp / "notify"), WATCHDOG_USEC="30000000",
               PYTHONPATH=str(ROOT))
    # the built-in policy, except the paths this machine's /run and /var/log would take
    cmd = [sys.executable, "-m", "guard", "run", "--last-good", str(tmp / "last-good.yaml")]
    policy = (ROOT / "rules" / "default.yaml").read_text() \
        .replace("/run/nodeguard/watch.json", str(tmp / "watch.json")) \
        .replace("/var/log/nodeguard/attacks.jsonl", str(tmp / "log" / "attacks.jsonl"))
    (tmp / "config.yaml").write_text(policy)
    os.chmod(tmp / "config.yaml", 0o644)
    cmd += ["-c", str(tmp / "config.yaml")]
    with open(tmp / "daemon.log", "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 20
        while not any(m.startswith("READY=1") for m in got):
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"the daemon did not become ready:\n{(tmp / 'daemon.log').read_text()}")
            time.sleep(0.05)
        time.sleep(5.0)  # warm-up: first verify, sampler window, metrics bound
        scrapes, scrape_ms = 0, []
        c0, t0 = cpu_s(proc.pid), time.monotonic()
        next_scrape = t0
        while time.monotonic() - t0 < args.seconds:
            if args.scrape and time.monotonic() >= next_scrape:
                t = time.perf_counter()
                urllib.request.urlopen("http://127.0.0.1:9632/metrics", timeout=10).read()
                scrape_ms.append((time.perf_counter() - t) * 1000)
                scrapes += 1
                next_scrape += args.scrape
            time.sleep(0.2)
        elapsed = time.monotonic() - t0
        cpu = (cpu_s(proc.pid) - c0) / elapsed * 100
        rss = rss_mb(proc.pid)
        pings = sum(1 for m in got if m.startswith("WATCHDOG=1"))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
        subprocess.run(["nft", "delete", "table", "inet", "nodeguard"], check=False, capture_output=True)
    print(f"nodeguard run, default policy, idle for {elapsed:.0f} s in a network namespace "
          f"({scrapes} scrapes of /metrics, {pings} watchdog pings):")
    print(f"  CPU  {cpu:6.2f} % of a core   (goal <= {CPU_GOAL} %)   {'ok' if cpu <= CPU_GOAL else 'OVER'}")
    print(f"  RSS  {rss:6.1f} MB            (goal <= {RSS_GOAL_MB:.0f} MB)   {'ok' if rss <= RSS_GOAL_MB else 'OVER'}")
    if scrape_ms:
        print(f"  scrape of /metrics: median {sorted(scrape_ms)[len(scrape_ms) // 2]:.1f} ms, max {max(scrape_ms):.1f} ms")


def _recv(sock: socket.socket) -> str | None:
    while True:
        try:
            return sock.recv(4096).decode()
        except socket.timeout:
            continue
        except OSError:
            return None


if __name__ == "__main__":
    main()
