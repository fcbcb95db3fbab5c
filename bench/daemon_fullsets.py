"""CPU and memory of the whole daemon (``nodeguard run``, the built-in policy in enforce mode) with its
banned and trusted sets full (issue 20): trusted sets fill with no attack on a busy node (every client
that completes a handshake stays an hour), and the daemon snapshots them (persist.py), the sampler
reads the ban sets every window and the metrics count every set's fill.

Each tree (``--tree``, repeatable: a before/after in one run, interleaved ``--reps`` times) runs a fresh
daemon in a namespace of its own: ``--seconds`` idle, then banned-v4, trusted-v4, banned-v6 and
trusted-v6 are filled from outside to their size (``nft -f``, timeout 1 h), ``--settle`` seconds pass
(the sampler logs the new bans once), and ``--seconds`` more are measured full. Measured: the daemon's
CPU (user+sys of all its threads, /proc/PID/stat) per second of wall time, its VmRSS every 0.2 s (peak)
and VmHWM at the end, the snapshot file's size and how often it was rewritten; /metrics is scraped
every 5 s as Prometheus would. Goal (issue 20): full, CPU <= 5 % of a core and peak RSS <= 150 MB.

Measured on 2 shared cores (2026-12-04, --reps 2, 60 s windows, 20 s settle; median [range]):

    tree                    idle CPU   full CPU             full peak VmRSS      full VmHWM    snapshots in 60 s
    main (6de98b1)          0.5 %      84.9 [84.5-85.3] %   514.7 [485-544] MB   519 MB        9 of 25.2 MB
    h20snap                 0.6 %       3.1 [3.1-3.2] %     103.1 [103-103] MB   127 MB        1 of 23.1 MB

(VmHWM: the sampler logging 131,072 new bans once after the fill.)

usage: sudo .venv/bin/python bench/daemon_fullsets.py [--seconds 60] [--tree CHECKOUT ...] [--reps 1]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from daemon_memory import POLL_S, SCRAPE_S, every, proc_kb, scrape, start_daemon, write_policy  # noqa: E402

from guard.lab.lock import machine_lock  # noqa: E402
from guard.lab.netns import add_uplink, namespace, remove_stale  # noqa: E402

PREFIX = "ngbench"
GOAL_CPU, GOAL_MB = 0.05, 150.0
FIRST = {("banned", 4): "198.18.0.0", ("trusted", 4): "100.64.0.0",  # distinct ranges, none of the lab's
         ("banned", 6): "fd10::", ("trusted", 6): "fd20::"}
CHUNK = 8192  # elements an nft command
TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of the process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def sets(ns) -> dict[tuple[str, int], tuple[str, int]]:
    """(kind, version) -> (kernel name, size) of the four sets."""
    out = {}
    for o in json.loads(ns.run(["nft", "-j", "list", "sets", "inet"]).stdout)["nftables"]:
        s = o.get("set", {})
        kind, _, rest = s.get("name", "").partition("-v")
        if s.get("table") == "nodeguard" and kind in ("banned", "trusted") and rest[:1] in "46":
            out[(kind, int(rest[0]))] = (s["name"], s["size"])
    return out


def keys(kind: str, version: int, n: int) -> list[str]:
    """n distinct keys: IPv4 addresses, banned IPv6 /64s (as the kernel keys them), trusted IPv6 addresses."""
    first = int(ipaddress.ip_address(FIRST[(kind, version)]))
    step = 1 << 64 if (kind, version) == ("banned", 6) else 1
    return [str(ipaddress.ip_address(first + i * step)) for i in range(n)]


def fill(ns, tmp: Path) -> int:
    """Fill the four sets to their size from outside the daemon; how many elements."""
    lines, total = [], 0
    for (kind, version), (name, size) in sorted(sets(ns).items()):
        ks = keys(kind, version, size)
        total += len(ks)
        lines += [f"add element inet nodeguard {name} {{ " + ", ".join(f"{k} timeout 1h" for k in ks[i:i + CHUNK])
                  + " }" for i in range(0, len(ks), CHUNK)]
    script = tmp / "fill.nft"
    script.write_text("\n".join(lines) + "\n")
    ns.run(["nft", "-f", str(script)], timeout=600)
    script.unlink()
    return total


def window(ns, proc, seconds: float, snap: Path) -> dict:
    """CPU share, peak VmRSS, scrapes and snapshot rewrites of the daemon over ``seconds``."""
    stop, start = threading.Event(), time.monotonic()
    scrapes, thread = every(SCRAPE_S, stop, start, lambda: scrape(ns))
    cpu0, peak, writes, seen = cpu_s(proc.pid), 0, 0, None
    try:
        while time.monotonic() - start < seconds:
            if proc.poll() is not None:
                sys.exit(f"the daemon exited ({proc.returncode})")
            peak = max(peak, proc_kb(proc.pid, "VmRSS"))
            try:
                st = snap.stat()
                if seen is not None and (st.st_mtime_ns, st.st_ino) != seen:
                    writes += 1
                seen = (st.st_mtime_ns, st.st_ino)
            except FileNotFoundError:
                pass
            time.sleep(POLL_S)
        cpu, wall = cpu_s(proc.pid) - cpu0, time.monotonic() - start
    finally:
        stop.set()
        thread.join(150)
    return {"cpu": cpu / wall, "cpu_s": cpu, "peak_mb": peak / 1024, "snapshots": writes,
            "snap_mb": snap.stat().st_size / 1e6 if snap.exists() else 0.0,
            "scrapes": f"{sum(ok is True for _t, ok in scrapes)}/{len(scrapes)}"}


def run(ns, tree: Path, seconds: float, settle: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="ngfull-") as d:
        tmp = Path(d)
        policy = write_policy(tmp, tree, mode="enforce")
        proc = start_daemon(ns, tmp, policy, tree)
        snap = tmp / "sets.json"
        try:
            idle = window(ns, proc, seconds, snap)
            t = time.monotonic()
            n = fill(ns, tmp)
            fill_s = time.monotonic() - t
            time.sleep(settle)
            full = window(ns, proc, seconds, snap)
            full["hwm_mb"] = proc_kb(proc.pid, "VmHWM") / 1024
            full["elements"], full["fill_s"] = n, fill_s
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(120)
            ns.run(["nft", "delete", "table", "inet", "nodeguard"], check=False)
        said = (tmp / "daemon.log").read_text().splitlines()
        return {"idle": idle, "full": full, "said": [ln for ln in said if "WARNING" in ln or "ERROR" in ln][-5:]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="each measured window")
    ap.add_argument("--settle", type=float, default=20.0, help="after the fill, before the full window")
    ap.add_argument("--tree", type=Path, action="append", help="a checkout whose daemon runs (default: this one)")
    ap.add_argument("--reps", type=int, default=1)
    args = ap.parse_args()
    trees = args.tree or [HERE.parent]
    results: dict[Path, list[dict]] = {t: [] for t in trees}
    with machine_lock(print):
        remove_stale(PREFIX)
        with namespace(PREFIX, "node") as ns:
            add_uplink(ns)
            for rep in range(args.reps):
                for tree in trees:
                    r = run(ns, tree, args.seconds, args.settle)
                    results[tree].append(r)
                    i, f = r["idle"], r["full"]
                    print(f"rep {rep + 1} {tree}: idle {i['cpu'] * 100:.1f} % of a core, peak {i['peak_mb']:.1f} MB | "
                          f"full ({f['elements']:,} elements, filled in {f['fill_s']:.1f} s) "
                          f"{f['cpu'] * 100:.1f} % of a core ({f['cpu_s']:.1f} s CPU), peak {f['peak_mb']:.1f} MB, "
                          f"VmHWM {f['hwm_mb']:.1f} MB, {f['snapshots']} snapshots of {f['snap_mb']:.1f} MB, "
                          f"scrapes {f['scrapes']}", *(f"    {ln[:200]!r}" for ln in r["said"]), sep="\n", flush=True)
    print(f"\nmedian [range] over {args.reps} rep(s), {args.seconds:.0f} s windows; goal full: CPU <= "
          f"{GOAL_CPU * 100:.0f} % of a core, peak RSS <= {GOAL_MB:.0f} MB")
    for tree, rs in results.items():
        def fig(part: str, key: str, scale: float = 1.0) -> str:
            v = [r[part][key] * scale for r in rs]
            return f"{statistics.median(v):.1f} [{min(v):.1f}-{max(v):.1f}]"
        print(f"  {tree}: idle CPU {fig('idle', 'cpu', 100)} %, RSS {fig('idle', 'peak_mb')} MB; full CPU "
              f"{fig('full', 'cpu', 100)} %, peak RSS {fig('full', 'peak_mb')} MB, VmHWM {fig('full', 'hwm_mb')} MB")


if __name__ == "__main__":
    main()
