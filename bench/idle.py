"""Idle cost of `nodeguard run` with the default policy, in a throwaway network namespace.

The daemon runs as a node runs it: the built-in default policy (sampler and metrics on), a
systemd-like notify socket with WatchdogSec=30s, and a Prometheus-like scrape of /metrics every
15 s. After a warm-up, CPU (the daemon's and its children's: user + system, from /proc) and RSS
are read over the measured period. Goals: CPU <= 0.5 % of one core, RSS <= 80 MB.

With ``--deny-lines N`` the policy also denies an N-line file (bench/_policies.py); with ``--baseline
TREE`` a daemon run from TREE (e.g. main's worktree) is measured too, interleaved with this tree's,
``--rounds`` times each, and the medians compared.

usage: sudo .venv/bin/python bench/idle.py [--seconds 60] [--scrape 15] [--deny-lines N]
                                           [--baseline TREE --rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _policies import deny_lines  # noqa: E402

from guard.configfile import DATA_DIRS_ENV  # noqa: E402
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
    ap.add_argument("--deny-lines", type=int, default=0, help="a deny file of this many lines in the policy")
    ap.add_argument("--baseline", type=Path, help="another tree (e.g. main's worktree) measured in the same run, "
                                                  "interleaved with this one")
    ap.add_argument("--rounds", type=int, default=1, help="measurements of each tree")
    args = ap.parse_args()
    add_uplink(reexec_in_netns("idle"), "ngb0")  # from here on in a throwaway namespace
    tmp = Path(tempfile.mkdtemp(prefix="ngidle-"))
    os.chmod(tmp, 0o755)  # a deny file is read only from a directory of root's alone
    os.environ[DATA_DIRS_ENV] = str(tmp)
    policy = (ROOT / "rules" / "default.yaml").read_text() \
        .replace("/run/nodeguard/watch.json", str(tmp / "watch.json")) \
        .replace("/var/log/nodeguard/attacks.jsonl", str(tmp / "log" / "attacks.jsonl"))
    if args.deny_lines:
        (tmp / "deny.txt").write_text(deny_lines(args.deny_lines))
        os.chmod(tmp / "deny.txt", 0o644)
        policy += f"deny:\n  files: [{tmp / 'deny.txt'}]\n"
    (tmp / "config.yaml").write_text(policy)
    os.chmod(tmp / "config.yaml", 0o644)
    trees = [("baseline", args.baseline.resolve()), ("this tree", ROOT)] if args.baseline else [("this tree", ROOT)]
    results: dict[str, list[tuple]] = {name: [] for name, _ in trees}
    for _ in range(args.rounds):
        for name, tree in trees:
            results[name].append(measure(tree, tmp, args.seconds, args.scrape))
    what = f"default policy{f' + a {args.deny_lines:,}-line deny file' if args.deny_lines else ''}"
    print(f"nodeguard run, {what}, idle for {args.seconds:.0f} s a measurement in a network namespace "
          f"({args.rounds} round(s), trees interleaved):")
    for name, tree in trees:
        cpus, rsss = [r[0] for r in results[name]], [r[1] for r in results[name]]
        cpu, rss = statistics.median(cpus), statistics.median(rsss)
        print(f"  {name} ({tree}):")
        print(f"    CPU  {cpu:6.2f} % of a core (range {min(cpus):.2f}-{max(cpus):.2f})   (goal <= {CPU_GOAL} %)   "
              f"{'ok' if cpu <= CPU_GOAL else 'OVER'}")
        print(f"    RSS  {rss:6.1f} MB   (goal <= {RSS_GOAL_MB:.0f} MB)   {'ok' if rss <= RSS_GOAL_MB else 'OVER'}")
        scrape_ms = [ms for r in results[name] for ms in r[4]]
        print(f"    {sum(r[2] for r in results[name])} scrapes of /metrics, {sum(r[3] for r in results[name])} "
              f"watchdog pings" + (f"; scrape median {statistics.median(scrape_ms):.1f} ms, max {max(scrape_ms):.1f} ms"
                                   if scrape_ms else ""))
    if args.baseline:
        ratio = statistics.median(r[0] for r in results["this tree"]) / \
            max(statistics.median(r[0] for r in results["baseline"]), 1e-9)
        print(f"  CPU this tree / baseline: {ratio:.2f}")


def measure(tree: Path, tmp: Path, seconds: float, scrape: float) -> tuple[float, float, int, int, list[float]]:
    """One daemon of ``tree`` from start to stop: (CPU % of a core, RSS MB, scrapes, watchdog pings,
    scrape ms) over ``seconds`` after it is ready and warmed up."""
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    (tmp / "notify").unlink(missing_ok=True)
    notify.bind(str(tmp / "notify"))
    notify.settimeout(0.5)
    got: list[str] = []
    threading.Thread(target=lambda: [got.append(m) for m in iter(lambda: _recv(notify), None)], daemon=True).start()
    env = dict(os.environ, NOTIFY_SOCKET=str(tmp / "notify"), WATCHDOG_USEC="30000000", PYTHONPATH=str(tree))
    # the built-in policy, except the paths this machine's /run and /var/log would take
    cmd = [sys.executable, "-m", "guard", "run", "--last-good", str(tmp / "last-good.yaml"),
           "-c", str(tmp / "config.yaml")]
    with open(tmp / "daemon.log", "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log, cwd=tree)
    try:
        deadline = time.monotonic() + 60
        while not any(m.startswith("READY=1") for m in got):
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"the daemon did not become ready:\n{(tmp / 'daemon.log').read_text()}")
            time.sleep(0.05)
        time.sleep(5.0)  # warm-up: first verify, sampler window, metrics bound
        scrapes, scrape_ms = 0, []
        c0, t0 = cpu_s(proc.pid), time.monotonic()
        next_scrape = t0
        while time.monotonic() - t0 < seconds:
            if scrape and time.monotonic() >= next_scrape:
                t = time.perf_counter()
                urllib.request.urlopen("http://127.0.0.1:9632/metrics", timeout=10).read()
                scrape_ms.append((time.perf_counter() - t) * 1000)
                scrapes += 1
                next_scrape += scrape
            time.sleep(0.2)
        elapsed = time.monotonic() - t0
        cpu = (cpu_s(proc.pid) - c0) / elapsed * 100
        rss = rss_mb(proc.pid)
        pings = sum(1 for m in got if m.startswith("WATCHDOG=1"))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
        notify.close()
        subprocess.run(["nft", "delete", "table", "inet", "nodeguard"], check=False, capture_output=True)
        for f in ("watch.json", "last-good.yaml", "sets.json"):
            (tmp / f).unlink(missing_ok=True)
    return cpu, rss, scrapes, pings, scrape_ms


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
