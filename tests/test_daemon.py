"""``nodeguard run``, the daemon, as a node runs it: in a test network namespace, with a test
NOTIFY_SOCKET standing in for systemd, real floods, real signals and real faults.

Faults injected, and why these:
* a hung main loop: stderr is a pipe of one page that nobody reads (a stalled journald or
  container log reader). The daemon's next log line blocks in write(2) inside the main loop,
  exactly where a real stall would block it; nothing test-only is in the daemon.
* a failing sampler: its attack log is on a full filesystem (a 256 KiB tmpfs in the daemon's
  own mount namespace, filled from outside through /proc/PID/root), so every window's flush
  raises ENOSPC inside the sampler thread. Freeing the space lets it come back.
* a failing metrics server: its port is taken by another process when the daemon starts.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import netlab
from netlab import ATTACKER4, HELPERS, VICTIM4, wait_until

F_SETPIPE_SZ = 1031


class Manager:
    """An AF_UNIX datagram socket as systemd's notify socket: every message, with its arrival time."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, list[str]]] = []
        self._closed = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed:
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode().split("\n")))

    def times(self, key: str) -> list[float]:
        return [t for t, m in list(self.messages) if any(line.startswith(key) for line in m)]

    def lines(self, key: str) -> list[str]:
        return [line for _t, m in list(self.messages) for line in m if line.startswith(key)]

    def close(self) -> None:
        self._closed = True
        self._thread.join(2)
        self.sock.close()


class Run:
    """One ``nodeguard run`` in ``ns``; stderr to a file unless ``stderr`` is given."""

    def __init__(self, ns, tmp_path: Path, policy: str, *args: str, watchdog_s: float | None = 1.0,
                 stderr=None, prefix: list[str] | None = None, name: str = "run"):
        self.ns, self.tmp = ns, tmp_path
        self.manager = Manager(tmp_path / f"{name}.notify")
        self.log_path = tmp_path / f"{name}.log"
        env = dict(os.environ, NOTIFY_SOCKET=str(self.manager.path))
        env.pop("WATCHDOG_USEC", None)
        if watchdog_s:
            env["WATCHDOG_USEC"] = str(int(watchdog_s * 1_000_000))
        cmd = [*(prefix or []), sys.executable, "-m", "guard", "run", "-c", policy,
               "--last-good", str(tmp_path / "last-good.yaml"), *args]
        self._log = None if stderr is not None else open(self.log_path, "w")
        self.proc = ns.popen(cmd, env=env, stdout=subprocess.DEVNULL,
                             stderr=stderr if stderr is not None else self._log)

    @property
    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.manager.times("READY=1"):
            assert self.proc.poll() is None, f"exited {self.proc.returncode}: {self.log}"
            assert time.monotonic() < deadline, f"no READY=1: {self.log}"
            time.sleep(0.02)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.manager.close()
        if self._log:
            self._log.close()


@pytest.fixture
def runs():
    started: list[Run] = []

    def start(*a, **kw) -> Run:
        r = Run(*a, **kw)
        started.append(r)
        return r
    yield start
    for r in started:
        r.close()


def _next_line(text: str) -> int:
    """The line number of what is appended to ``text``."""
    return len(text.splitlines()) + 1


def policy_text(tmp_path: Path, extra: str = "", per_source: str = "10/second burst 10", watcher: str = "",
                sampler: str = "window_s: 1") -> str:
    """A test policy; ``watcher``/``sampler``: more lines for those sections; ``extra``: more sections."""
    def lines(text: str) -> str:
        return "".join(f"  {line}\n" for line in text.splitlines())
    # the daemon's floods outlast escalate.after_s: no bans, the per-source limit is what they measure
    return (netlab.NO_ESCALATION + f"icmp:\n  rate: 100000/second\n  per_source: {per_source}\n"
            f"watcher:\n  state_file: {tmp_path}/watch.json\n{lines(watcher)}"
            f"sampler:\n  log: {tmp_path}/log/attacks.jsonl\n{lines(sampler)}" + textwrap.dedent(extra))


def write(path: Path, text: str) -> str:
    path.write_text(text)
    os.chmod(path, 0o644)
    return str(path)


def state(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "watch.json").read_text())


def scrape(ns, path: str = "/metrics", port: int = 9632) -> str:
    code = ("import sys, urllib.request; "
            f"sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:{port}{path}', timeout=10).read().decode())")
    return ns.run([sys.executable, "-c", code]).stdout


def metrics(ns) -> dict[tuple, float]:
    out = {}
    for fam in text_string_to_metric_families(scrape(ns)):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def dropped(m: dict, group: str, what: str = "packets") -> float:
    return m[(f"nodeguard_dropped_{what}_total", (("group", group), ("mode", "enforce")))]


status_json = netlab.Netns.status


def icmp_flood_counts(st: dict) -> tuple[int, int]:
    rules = [r for r in st["rules"] if r["chain"] == "icmp-flood"]
    return sum(r["packets"] for r in rules), sum(r["bytes"] for r in rules)


def healthz(tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "guard", "healthz", "--heartbeat", str(tmp_path / "heartbeat.json")],
                          capture_output=True, text=True, timeout=10)


# --- systemd protocol ---------------------------------------------------------------------
def test_ready_after_the_first_apply_watchdog_from_the_main_loop_and_a_hung_loop_stops_it(lab, tmp_path, runs):
    victim, attacker = lab
    policy = write(tmp_path / "policy.yaml", policy_text(tmp_path))
    r_fd, w_fd = os.pipe()
    fcntl.fcntl(r_fd, F_SETPIPE_SZ, 4096)  # one page of log, then write(2) blocks
    reader = os.fdopen(r_fd, "rb", buffering=0)
    run = runs(victim, tmp_path, policy, stderr=w_fd)
    os.close(w_fd)
    run.wait_ready()
    ready_at = run.manager.times("READY=1")[0]
    assert victim.run("nft list table inet nodeguard").returncode == 0
    status = run.manager.lines("STATUS=")
    assert status and status[0].startswith("STATUS=nft; in sync; 0 repairs"), status

    time.sleep(2.0)
    pings = [t for t in run.manager.times("WATCHDOG=1") if t > ready_at]
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    assert len(pings) >= 6 and max(gaps) < 0.5, gaps  # WATCHDOG_USEC=1 s: a ping every 0.25 s

    # The stall: every reload of a bad policy logs a line; after a page of them the write blocks.
    write(tmp_path / "policy.yaml", policy_text(tmp_path) + "icmp: twice\n")
    for _ in range(40):
        if run.proc.poll() is not None:
            break
        os.kill(run.proc.pid, signal.SIGHUP)
        time.sleep(0.1)
    time.sleep(2.5)
    last = max(run.manager.times("WATCHDOG=1"))
    print(f"\nhung loop: last WATCHDOG=1 {time.monotonic() - last:.2f} s ago (systemd would abort it after 1 s)")
    assert time.monotonic() - last > 1.5, "the watchdog kept being pinged while the main loop was blocked"
    assert run.proc.poll() is None

    # The reader comes back: the loop runs on and the pings resume.
    drained = []
    t = threading.Thread(target=lambda: drained.append(reader.read()), daemon=True)
    t.start()
    resumed_from = time.monotonic()
    wait_until(lambda: any(t > resumed_from for t in run.manager.times("WATCHDOG=1")), timeout=5, interval=0.05)
    assert run.stop() == 0, run.log[-4000:]
    t.join(5)
    log = b"".join(drained).decode()
    assert "reload failed: " in log and "policy.yaml:" in log
    assert run.manager.lines("STOPPING=1")


def test_sighup_says_reloading_then_ready_and_sigterm_leaves_the_rules(lab, tmp_path, runs):
    victim, attacker = lab
    policy = write(tmp_path / "policy.yaml", policy_text(tmp_path))
    run = runs(victim, tmp_path, policy, watchdog_s=None)
    run.wait_ready()
    os.kill(run.proc.pid, signal.SIGHUP)
    wait_until(lambda: len(run.manager.times("READY=1")) == 2, timeout=5)
    (reloading,) = [m for _t, m in run.manager.messages if m[0] == "RELOADING=1"]
    assert reloading[1].startswith("MONOTONIC_USEC=") and int(reloading[1].split("=")[1]) > 0
    assert run.manager.times("RELOADING=1")[0] < run.manager.times("READY=1")[1]
    assert not run.manager.times("WATCHDOG=1"), "no WATCHDOG_USEC: no pings"
    alive = healthz(tmp_path)  # the DaemonSet's liveness probe, from the file the main loop beats
    assert alive.returncode == 0 and alive.stdout.startswith("ok: the main loop (pid "), alive
    assert run.stop() == 0, run.log[-4000:]
    gone = healthz(tmp_path)
    assert gone.returncode == 1 and "is gone" in gone.stderr and gone.stderr.count("\n") == 1, gone
    assert run.manager.lines("STOPPING=1")
    assert "the rules stay in place" in run.log
    assert victim.run("nft list table inet nodeguard").returncode == 0

    run2 = runs(victim, tmp_path, policy, "--remove-on-exit", name="run2")
    run2.wait_ready()
    assert "adopted the installed rules" in run2.log
    assert run2.stop(signal.SIGINT) == 0
    assert victim.run("nft list table inet nodeguard", check=False).returncode != 0, "--remove-on-exit"
    assert "--remove-on-exit removed nodeguard from: nft" in run2.log


# --- protection and metrics ---------------------------------------------------------------
def test_a_ping_flood_is_limited_and_metrics_agree_with_status(lab, tmp_path, runs):
    victim, attacker = lab
    policy = write(tmp_path / "policy.yaml", policy_text(tmp_path))
    run = runs(victim, tmp_path, policy)
    run.wait_ready()
    flood = netlab.flood(attacker, 3, "--icmp", "-a", netlab.LEGIT4, VICTIM4)
    sent, received = netlab.ping_stats(attacker.run(f"ping -f -i 0.0002 -q -w 3 {VICTIM4}", check=False).stdout)
    flood.wait()
    assert received <= 10 * 3 + 10 + 5, (sent, received)
    time.sleep(1.5)  # a sampler window closes
    m = metrics(victim)
    scraped = time.monotonic()
    packets, nbytes = icmp_flood_counts(status_json(victim, policy))
    print(f"\nping -f: {sent} sent, {received} replies; dropped {packets} packets / {nbytes} bytes")
    assert dropped(m, "icmp-flood") == packets > 1000
    assert dropped(m, "icmp-flood", "bytes") == nbytes > 0
    assert dropped(m, "syn-flood") == 0
    assert m[("nodeguard_up", ())] == 1 and m[("nodeguard_in_sync", ())] == 1
    assert 0 < m[("nodeguard_sampled_packets_total", (("group", "icmp-flood"),))] <= packets
    icmp_meter = (("family", "ipv4"), ("role", "meter"), ("set", "icmp-src-v4"))
    assert m[("nodeguard_set_entries", icmp_meter)] == 2  # the flooder and the pinger
    assert m[("nodeguard_component_up", (("component", "sampler"),))] == 1
    assert m[("nodeguard_info", (("backend", "nft"), ("sampler_transport", "nflog"), ("version", "0.1.0")))] == 1
    health = scrape(victim, "/healthz")
    assert health.startswith("ok: last loop")

    # the same counts with sampling off: the condemning rules drop themselves
    write(tmp_path / "policy.yaml", policy_text(tmp_path, sampler="enabled: false"))
    os.kill(run.proc.pid, signal.SIGHUP)
    wait_until(lambda: state(tmp_path)["reloads_ok"] == 1 and status_json(victim, policy)["in_sync"], timeout=5)
    netlab.flood(attacker, 1, "--icmp", VICTIM4).wait()
    time.sleep(max(0.0, scraped + 2.1 - time.monotonic()))  # past the scrape cache of the last scrape
    m = metrics(victim)
    packets, nbytes = icmp_flood_counts(status_json(victim, policy))
    assert dropped(m, "icmp-flood") == packets > 500 and dropped(m, "icmp-flood", "bytes") == nbytes
    assert m[("nodeguard_sampler_lost_total", (("reason", "nflog_enobufs"),))] == 0
    assert ("nodeguard_component_up", (("component", "sampler"),)) not in m  # sampling off: not a failure


def test_a_scrape_with_full_meters_stays_cheap(lab, tmp_path, runs):
    """Listing a full meter's elements through libnftables JSON takes seconds. A scrape reads rule
    counters with one netlink dump of the rules and counts meter elements over netlink at most every
    30 s; status.collect counts them over netlink too and lists the table without its elements. Both
    must cost well under what listing the elements costs, so they stay cheap when a spoofed flood
    fills a meter."""
    victim, attacker = lab
    policy = write(tmp_path / "policy.yaml", policy_text(tmp_path, "meter:\n  size: 65536\n"))
    run = runs(victim, tmp_path, policy)
    run.wait_ready()
    attacker.run(["hping3", "--icmp", "--rand-source", "-i", "u20", "-c", "90000", "-q", VICTIM4], check=False)
    code = textwrap.dedent(f"""
        import json, time, urllib.request
        from guard.apply import make_plan
        from guard.backend.nft import Nft
        from guard.policy.load import load_policy
        from guard import status
        def timed(f, n=3):
            out = []
            for _ in range(n):
                t = time.perf_counter(); r = f(); out.append(time.perf_counter() - t)
            return min(out), r
        nft = Nft(); plan = make_plan(load_policy({policy!r})[0], nft)
        listing, _ = timed(lambda: nft.list("table inet nodeguard"), 2)  # with the elements
        coll, st = timed(lambda: status.collect(nft, plan), 2)
        def scrape():
            time.sleep(2.1)  # past the scrape cache: every scrape reads the kernel
            t = time.perf_counter()
            body = urllib.request.urlopen("http://127.0.0.1:9632/metrics").read().decode()
            return time.perf_counter() - t, body
        scrapes = [scrape() for _ in range(3)]
        print(json.dumps({{"listing_s": listing, "collect_s": coll, "scrape_s": [s for s, _ in scrapes],
                          "meter": [m for m in st["meters"] if m["set"] == "icmp-src-v4"][0]["elements"],
                          "body": scrapes[-1][1]}}))
    """)
    out = json.loads(victim.run([sys.executable, "-c", code]).stdout)
    entries = [line for line in out["body"].splitlines() if line.startswith('nodeguard_set_entries{')
               and 'set="icmp-src-v4"' in line]
    first, *later = out["scrape_s"]
    print(f"\nfull meter ({out['meter']} entries): listing its elements {out['listing_s'] * 1000:.0f} ms; "
          f"status.collect {out['collect_s'] * 1000:.0f} ms; scrape "
          f"counting the meters {first * 1000:.0f} ms, then (meter fill cached) "
          f"{', '.join(f'{s * 1000:.0f}' for s in later)} ms")
    assert out["meter"] > 60000 and float(entries[0].split()[-1]) == out["meter"], (entries, out["meter"])
    # 3 runs (1 with NODEGUARD_TEST_BUSY=1): listing 1,018-1,155 ms; status.collect 256-334 ms and the
    # first scrape 273-332 ms (0.22-0.29 of the listing); cached scrapes 5-8 ms. Beside 6 helpers' jobs
    # (load 5 on 2 cores): listing 2,203-2,459 ms, status.collect 1,133-1,413 (0.51-0.57), first scrape
    # 937-1,391. status.collect took ~3 s (listing the elements: over 1.0 of the listing) before 266b2d5,
    # so 0.8 still catches that; the first scrape counts in its own thread (provider.Recount).
    assert first < out["listing_s"] * 0.8 and max(later) < 0.1, out
    assert out["collect_s"] < out["listing_s"] * 0.8, out


# --- reloads ------------------------------------------------------------------------------
def test_sighup_bad_policy_keeps_rules_good_one_takes_effect_without_an_unprotected_moment(lab, tmp_path, runs):
    victim, attacker = lab
    policy = write(tmp_path / "policy.yaml", policy_text(tmp_path))
    run = runs(victim, tmp_path, policy)
    run.wait_ready()
    before = victim.run("nft -s list table inet nodeguard").stdout

    write(tmp_path / "policy.yaml", policy_text(tmp_path) + "icmp:\n  per_source: 40/second\n")  # duplicate key
    os.kill(run.proc.pid, signal.SIGHUP)
    wait_until(lambda: state(tmp_path)["reloads_failed"] == 1, timeout=5, interval=0.05)
    assert victim.run("nft -s list table inet nodeguard").stdout == before, "the running rules stay"
    line = next(ln for ln in run.log.splitlines() if "reload failed" in ln)
    dup = _next_line(policy_text(tmp_path))
    assert line.endswith(f"reload failed: {policy}:{dup}: icmp: duplicate key; the rules in place stay"), line
    time.sleep(2.1)
    m = metrics(victim)
    assert m[("nodeguard_reloads_total", (("result", "failed"),))] == 1
    assert m[("nodeguard_reloads_total", (("result", "ok"),))] == 0

    # A good reload under a continuous flood: 10/s -> 40/s per source. Counters are sampled every
    # 10 ms in-process: our condemning rules, and netdev ingress/egress of the victim's uplink.
    netlab.Truth(victim, {"in": f"ip saddr {ATTACKER4} icmp type echo-request"}, {"out": "icmp type echo-reply"})
    poll = victim.popen([sys.executable, str(HELPERS / "counter_poll.py"), "7", "0.01"])
    assert poll.stdout.readline().strip() == "ready"
    flood = netlab.flood(attacker, 7, "--icmp", "-a", ATTACKER4, VICTIM4)
    time.sleep(3.0)
    write(tmp_path / "policy.yaml", policy_text(tmp_path, per_source="40/second burst 10"))
    os.kill(run.proc.pid, signal.SIGHUP)
    flood.wait()
    samples = json.loads(poll.communicate(timeout=20)[0].splitlines()[-1])
    reload_at = run.manager.times("RELOADING=1")[-1]
    assert state(tmp_path)["reloads_ok"] == 1
    assert "40/second" in victim.run("nft list chain inet nodeguard icmp-flood").stdout

    # progress: the condemned count changed (it grows; the new rules start from 0)
    flooded = [s for s in samples if s[2] > 0]
    window = [s for s in flooded if reload_at - 1.0 <= s[0] <= reload_at + 1.5]
    moves = [b[0] for a, b in zip(window, window[1:]) if b[1] != a[1]]
    gap = max(b - a for a, b in zip(moves, moves[1:]))
    interval = max(b[0] - a[0] for a, b in zip(window, window[1:]))
    resets = [b[0] for a, b in zip(window, window[1:]) if b[1] < a[1]]
    assert resets, "the reload replaced the condemning rules (new rate, new rules)"
    rate_in = (window[-1][2] - window[0][2]) / (window[-1][0] - window[0][0])

    def replies(t0: float, t1: float) -> int:
        inside = [s for s in samples if t0 <= s[0] <= t1]
        return inside[-1][3] - inside[0][3]
    around = replies(resets[0] - 0.1, resets[0] + 0.1)
    # The rates are measured from when the kernel had each ruleset (the first counter reset), not from
    # the signal and fixed offsets: a window anchored at RELOADING=1 mixes both rates when the reload or
    # hping3's start is late. Each window starts 1 s after its bucket was full (the flood's start, the
    # swap: burst 10 spent at once) and ends 0.2 s before the next event (the swap, the last sample).
    started = flooded[0][0]
    ended = next(s[0] for s in samples if s[2] == samples[-1][2])
    old_window, new_window = (started + 1.0, resets[0] - 0.2), (resets[0] + 1.0, ended - 0.2)
    old_rate, new_rate = (replies(*w) / (w[1] - w[0]) for w in (old_window, new_window))
    print(f"\nreload under a {rate_in:.0f} pps flood: longest stall of the drop counter {gap * 1000:.0f} ms "
          f"(samples every {interval * 1000:.0f} ms at most); replies in the 200 ms around the swap: {around}; "
          f"swap {resets[0] - reload_at:.2f} s after RELOADING=1 (counter resets at "
          f"{[round(b[0] - reload_at, 2) for a, b in zip(flooded, flooded[1:]) if b[1] < a[1]]}); replies/s before {old_rate:.2f} "
          f"({old_window[1] - old_window[0]:.1f} s), after {new_rate:.2f} ({new_window[1] - new_window[0]:.1f} s)")
    assert min(w[1] - w[0] for w in (old_window, new_window)) >= 1.0, (old_window, new_window)
    assert rate_in > 5000
    assert gap < 0.1, "the drop counter stalled across the reload"
    assert around <= 10 + 10 + 5, "more replies than two buckets' bursts: an unprotected moment"
    # Measured over 1.8 s and 2.7 s windows in 14 runs (9 with NODEGUARD_TEST_BUSY=1, swap 0.02-0.10 s
    # after RELOADING=1): before 9.53-10.01/s; after 39.65-39.99/s, and once 46.8/s (busy core, the
    # flood at 73k pps instead of 116-155k). The kernel's buckets are exact; the bounds are +-15 %
    # (+20 % above the new rate for that run). The old ones, 6-18/s and 28-55/s, let a limit 1.5x too
    # loose pass.
    assert 0.85 * 10 <= old_rate <= 1.15 * 10, old_rate
    assert 0.85 * 40 <= new_rate <= 1.2 * 40, new_rate


def test_a_configmap_symlink_swap_reloads_as_sighup(lab, tmp_path, runs):
    from test_configwatch import ConfigMapVolume

    victim, attacker = lab
    deny = write(tmp_path / "deny.txt", "198.51.100.0/24\n")  # a blocklist beside the ConfigMap, as a cron job keeps it
    listed = f"deny:\n  files: [{deny}]\n"
    volume = ConfigMapVolume(tmp_path / "etc-nodeguard", {"config.yaml": policy_text(tmp_path, listed)})
    os.chmod(volume.root, 0o755)
    run = runs(victim, tmp_path, str(volume.root / "config.yaml"), "--config-poll", "0.2")
    run.wait_ready()
    volume.update({"config.yaml": policy_text(tmp_path, listed, per_source="25/second burst 10")})
    wait_until(lambda: state(tmp_path)["reloads_ok"] == 1, timeout=5, interval=0.05)
    wait_until(lambda: "25/second" in victim.run("nft list chain inet nodeguard icmp-flood").stdout, timeout=5)
    assert len(run.manager.times("RELOADING=1")) == 1 and "changed; reloading" in run.log
    volume.update({"config.yaml": policy_text(tmp_path, listed, per_source="25/second burst 10")})  # same content
    time.sleep(1.0)
    assert state(tmp_path)["reloads_ok"] == 1 and len(run.manager.times("RELOADING=1")) == 1
    write(tmp_path / "deny.txt", "198.51.100.0/24\n203.0.113.0/24\n")  # the blocklist alone changes
    wait_until(lambda: "203.0.113.0/24" in victim.run("nft list sets inet").stdout, timeout=5, interval=0.05)
    wait_until(lambda: state(tmp_path)["reloads_ok"] == 2, timeout=5, interval=0.05)  # the state file follows
    assert state(tmp_path)["repairs"] == 0, state(tmp_path)
    assert f"{deny} changed; reloading" in run.log
    assert "no longer dropped" not in run.log
    # a failed download leaves the blocklist empty: the list is lifted, as asked, but with a warning
    write(tmp_path / "deny.txt", "")
    wait_until(lambda: state(tmp_path)["reloads_ok"] == 3, timeout=5, interval=0.05)
    wait_until(lambda: "198.51.100.0/24" not in victim.run("nft list sets inet").stdout, timeout=5, interval=0.05)
    wait_until(lambda: f"WARNING nodeguard.run: deny file {deny} lists no prefix now: the 2 it listed are no longer "
               "dropped" in run.log, timeout=5, interval=0.05)


# --- restarts and adoption ----------------------------------------------------------------
def test_kill_9_then_restart_adopts_the_table_without_a_counter_reset(lab, tmp_path, runs):
    victim, attacker = lab
    policy = write(tmp_path / "policy.yaml", policy_text(tmp_path))
    run = runs(victim, tmp_path, policy)
    run.wait_ready()
    netlab.flood(attacker, 1, "--icmp", VICTIM4).wait()
    run.stop(signal.SIGKILL)
    assert not run.manager.lines("STOPPING=1")
    packets, _ = icmp_flood_counts(status_json(victim, policy))
    assert packets > 100
    # killed between the sampler's new odds and their rules: the restart renders other odds than
    # the kernel holds, and rewrites that sample chain alone
    (tmp_path / "sampling.json").write_text(json.dumps({"icmp-flood": 9}))
    run2 = runs(victim, tmp_path, policy, name="run2")
    run2.wait_ready()
    assert state(tmp_path)["adopted"] is True, run2.log
    assert "adopted the installed rules, rewriting in place: chain sample-icmp-flood" in run2.log, run2.log
    time.sleep(0.3)
    assert icmp_flood_counts(status_json(victim, policy))[0] >= packets, "the counters were reset"
    assert dropped(metrics(victim), "icmp-flood") >= packets
    assert run2.stop() == 0, run2.log[-4000:]


# --- faults in the other parts ------------------------------------------------------------
def test_a_sampler_on_a_full_disk_fails_and_comes_back_while_the_watcher_keeps_repairing(lab, tmp_path, runs):
    victim, attacker = lab
    logdir = tmp_path / "log"
    logdir.mkdir(mode=0o750)
    policy = write(tmp_path / "policy.yaml", policy_text(tmp_path, watcher="verify_interval_s: 0.5",
                                                        sampler=f"window_s: 1\npcap: {logdir}/sample.pcap"))
    wrap = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            f'mount -t tmpfs -o size=256k,mode=0750 ng-full "{logdir}" && exec "$0" "$@"']
    run = runs(victim, tmp_path, policy, prefix=wrap)
    run.wait_ready()
    inside = Path(f"/proc/{run.proc.pid}/root{logdir}")
    flood = netlab.flood(attacker, 14, "--icmp", "-a", ATTACKER4, VICTIM4)
    try:
        time.sleep(1.5)
        with open(inside / "filler", "wb", buffering=0) as f:  # the disk fills up
            try:
                while f.write(b"\0" * 4096):
                    pass
            except OSError:
                pass
        wait_until(lambda: "sampler failed (OSError: [Errno 28]" in run.log, timeout=5, interval=0.1)
        victim.run("nft flush chain inet nodeguard icmp-flood")
        wait_until(lambda: state(tmp_path)["repairs"] >= 1, timeout=5, interval=0.05)
        wait_until(lambda: metrics(victim)[("nodeguard_component_restarts_total", (("component", "sampler"),))] >= 1,
                   timeout=5, interval=0.1)  # a scrape less than 2 s later reads the same snapshot (the scrape cache)
        m = metrics(victim)
        restarts = m[("nodeguard_component_restarts_total", (("component", "sampler"),))]
        assert restarts >= 1
        assert m[("nodeguard_in_sync", ())] == 1 and run.proc.poll() is None
        sampled = m[("nodeguard_sampled_packets_total", (("group", "icmp-flood"),))]

        os.unlink(inside / "filler")  # space again: the next restart sticks
        wait_until(lambda: metrics(victim)[("nodeguard_sampled_packets_total", (("group", "icmp-flood"),))]
                   > sampled + 200, timeout=10, interval=0.5)
        m = metrics(victim)
        assert m[("nodeguard_component_up", (("component", "sampler"),))] == 1
        print(f"\nsampler: {int(m[('nodeguard_component_restarts_total', (('component', 'sampler'),))])} restarts "
              f"on a full disk, back once space returned; watcher repairs meanwhile: {state(tmp_path)['repairs']}")
    finally:
        flood.kill()
        flood.wait()
    assert run.stop() == 0, run.log[-4000:]


def test_a_taken_metrics_port_does_not_stop_the_watcher_and_the_endpoint_comes_back(lab, tmp_path, runs):
    victim, attacker = lab
    policy = write(tmp_path / "policy.yaml", policy_text(tmp_path))
    squatter = victim.popen([sys.executable, "-c", "import socket,sys,time; s=socket.socket(); "
                             "s.bind(('127.0.0.1', 9632)); s.listen(); print('ready', flush=True); time.sleep(60)"])
    assert squatter.stdout.readline().strip() == "ready"
    run = runs(victim, tmp_path, policy)
    try:
        run.wait_ready()
        wait_until(lambda: "metrics endpoint 127.0.0.1:9632 failed" in run.log, timeout=5, interval=0.05)
        victim.run("nft delete table inet nodeguard")
        wait_until(lambda: state(tmp_path)["repairs"] >= 1, timeout=5, interval=0.05)
    finally:
        squatter.kill()
        squatter.wait()
    wait_until(lambda: "metrics on http://127.0.0.1:9632/metrics" in run.log, timeout=10, interval=0.1)
    m = metrics(victim)
    assert m[("nodeguard_component_restarts_total", (("component", "metrics"),))] >= 1
    assert m[("nodeguard_repairs_total", (("reason", "table_missing"),))] == 1
    assert run.stop() == 0, run.log[-4000:]


# --- refusals -----------------------------------------------------------------------------
@pytest.mark.calm
@pytest.mark.parametrize("how", ["other owner", "world-writable"])
def test_a_policy_file_others_could_write_is_refused_with_one_line(ns, tmp_path, how):
    policy = tmp_path / "policy.yaml"
    write(policy, policy_text(tmp_path))
    if how == "other owner":
        os.chown(policy, 1000, 1000)
    else:
        os.chmod(policy, 0o666)
    res = ns.nodeguard("run", "-c", str(policy), "--last-good", str(tmp_path / "lg.yaml"), check=False)
    assert res.returncode == 2 and len(res.stderr.splitlines()) == 1, res.stderr
    assert res.stderr.startswith(f"{policy}: refusing: ") and (
        "owned by uid 1000" if how == "other owner" else "world-writable") in res.stderr
    assert "nodeguard" not in ns.run("nft list tables").stdout


@pytest.mark.calm
def test_a_remote_metrics_address_needs_allow_remote(ns, tmp_path):
    netlab.add_uplink(ns)
    policy = write(tmp_path / "policy.yaml", policy_text(tmp_path, "metrics:\n  listen: 192.0.2.1:9632\n"))
    res = ns.nodeguard("run", "-c", policy, "--last-good", str(tmp_path / "lg.yaml"), check=False)
    assert res.returncode == 2 and res.stderr.strip() == (
        f"{policy}:{_next_line(policy_text(tmp_path)) + 1}: metrics.listen: 192.0.2.1 is not a loopback address; "
        "set metrics.allow_remote: true "
        "to serve metrics beyond this node"), res.stderr
    ok = write(tmp_path / "ok.yaml", policy_text(tmp_path))
    res = ns.nodeguard("run", "-c", ok, "--metrics-listen", "192.0.2.1:9632", check=False)
    assert res.returncode == 2 and len(res.stderr.splitlines()) == 1 and "--metrics-allow-remote" in res.stderr
    assert "nodeguard" not in ns.run("nft list tables").stdout


def test_the_last_good_policy_runs_when_the_configured_one_is_broken_and_a_fix_takes_over(lab, tmp_path, runs):
    victim, attacker = lab
    policy = write(tmp_path / "policy.yaml", policy_text(tmp_path))
    run = runs(victim, tmp_path, policy)
    run.wait_ready()
    assert run.stop() == 0, run.log[-4000:]
    assert (tmp_path / "last-good.yaml").read_text() == Path(policy).read_text()
    write(tmp_path / "policy.yaml", policy_text(tmp_path) + "icmp: twice\n")
    run2 = runs(victim, tmp_path, policy, name="run2")
    run2.wait_ready()
    assert "RUNNING THE LAST GOOD POLICY" in run2.manager.lines("STATUS=")[0]
    dup = _next_line(policy_text(tmp_path))
    assert "the configured policy is unusable" in run2.log and f"policy.yaml:{dup}: icmp: duplicate key" in run2.log
    write(tmp_path / "policy.yaml", policy_text(tmp_path, per_source="30/second burst 10"))
    os.kill(run2.proc.pid, signal.SIGHUP)
    wait_until(lambda: len(run2.manager.times("READY=1")) == 2, timeout=5)
    assert "RUNNING THE LAST GOOD POLICY" not in run2.manager.lines("STATUS=")[-1]
    assert "30/second" in victim.run("nft list chain inet nodeguard icmp-flood").stdout
    assert run2.stop() == 0, run2.log[-4000:]


# --- pieces, without a kernel ---------------------------------------------------------------
def test_each_drift_carries_its_kind_and_only_rule_changes_are_in_place(tmp_path):
    """The repair metric's label comes from the drift itself (Reason.kind), not from its text."""
    import dataclasses

    from guard.apply import make_plan
    from guard.backend.nft import NftLive
    from guard.drift import KINDS
    from guard.policy.load import load_policy

    policy = load_policy(Path(__file__).parents[1] / "rules" / "default.yaml")[0]
    # its own state directory: the render reads the sampling odds beside the state file (not the host's /run)
    policy = policy.model_copy(update={"watcher": policy.watcher.model_copy(update={"state_file": str(tmp_path / "w")})})
    plan = make_plan(policy, None, interfaces=("eth0",))
    o = plan.backend.objects
    live = NftLive(True, {c["name"]: c for c in o.chains}, {s["name"]: s for s in o.sets},
                   {x["name"]: x for x in o.limits}, tuple(o.rules), dict(o.elements))
    assert plan.backend.diff(plan, live) is None
    chain = o.rules[-1]["chain"]
    base = next(c for c in o.chains if "hook" in c)
    allow = next(n for n in o.elements if n.startswith("allow-"))
    cases = {
        "table_missing": NftLive(),
        "rules_changed": dataclasses.replace(live, rules=tuple(o.rules[:-1])),
        "chain_missing": dataclasses.replace(live, chains={n: c for n, c in live.chains.items() if n != chain},
                                             rules=tuple(r for r in o.rules if r["chain"] != chain)),
        "priority": dataclasses.replace(live, chains={**live.chains, base["name"]: {**base, "prio": base["prio"] + 1}}),
        "unexpected_objects": dataclasses.replace(live, chains={**live.chains, "evil": {"name": "evil"}}),
        "object_missing": dataclasses.replace(live, sets={n: x for n, x in live.sets.items() if n != allow}),
        "allowlist": dataclasses.replace(live, static_elements={**live.static_elements, allow: ["10.9.9.9"]}),
        "table_flags": dataclasses.replace(live, flags=("dormant",)),
    }
    for kind, state in cases.items():
        drift = plan.backend.diff(plan, state)
        assert drift is not None and drift.kind == kind and kind in KINDS, (kind, str(drift))
        assert drift.in_place == (kind == "rules_changed"), (kind, str(drift))
    # a dormant table whose objects were read while awake is woken in place by the "add table" (flags 0)
    # that opens the transaction: no table deleted, no set added again (their contents stay)
    woken = plan.backend.transaction(cases["table_flags"])
    assert woken.commands[0] == {"add": {"table": {"family": "inet", "name": "nodeguard"}}} and not woken.recreates
    assert [c for c in woken.commands if "table" in c.get("delete", {}) or "set" in c.get("add", {})] == []
    # if the kernel refuses that, or nothing was read of it awake, or it has another flag (an owner's), the
    # table is deleted and made anew in the one transaction, nothing of it kept
    for tx in (woken.fallback, plan.backend.transaction(NftLive(True, flags=("dormant",))),
               plan.backend.transaction(dataclasses.replace(live, flags=("owner",)))):
        cmds = tx.commands
        assert tx.recreates and tx.fallback is None
        assert [next(iter(c)) for c in cmds[:3]] == ["add", "delete", "add"] and "table" in cmds[1]["delete"], cmds[:3]
        assert [c for c in cmds if "chain" in c.get("flush", {})] == [] and \
            len([c for c in cmds if "set" in c.get("add", {})]) == len(o.sets)


def test_netlink_dumps_of_garbage_never_raise():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from guard.backend.nfnetlink import count_elements, parse_gen, parse_rules, parse_set_counters, parse_tables

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=400))
    def check(data):
        parse_rules(data)
        count_elements(data)
        parse_set_counters(data)
        parse_tables(data)
        parse_gen(data)
    check()


def test_a_table_dump_gives_each_table_with_its_flags_and_skips_malformed_ones():
    import struct

    from guard.backend import nfnetlink as nl

    def table(family: int, *attrs: bytes) -> bytes:
        body = struct.pack("=BBH", family, 0, 0) + b"".join(attrs)
        return nl._NLMSG.pack(nl._NLMSG.size + len(body), (nl.NFNL_SUBSYS_NFTABLES << 8) | 0, 0, 1, 0) + body

    flags = nl._nla(nl.NFTA_TABLE_FLAGS, struct.pack(">I", 1))
    buf = (table(1, nl._nla(nl.NFTA_TABLE_NAME, b"foreign\0"), flags) + table(10, nl._nla(nl.NFTA_TABLE_NAME, b"t\0"))
           + table(1, flags)  # no name: skipped
           + table(1, nl._nla(nl.NFTA_TABLE_NAME, b"\x1b[31m\xff\0"), nl._nla(nl.NFTA_TABLE_FLAGS, b"\1"))  # short flags
           + nl._NLMSG.pack(nl._NLMSG.size, nl.NLMSG_DONE, 0, 1, 0))
    out, done, err = nl.parse_tables(buf)
    assert out == [("inet", "foreign", 1), ("ip6", "t", 0), ("inet", "\x1b[31m\ufffd", 0)] and done and not err
    assert nl.flag_names(1) == ["dormant"] and nl.flag_names(0) == [] and nl.flag_names(0x101) == ["dormant", "256"]


def test_the_attack_log_and_pcap_are_private_files_that_never_follow_a_symlink(tmp_path):
    import stat

    from guard.attacklog import AttackLog, PcapLog
    from guard.configfile import UnsafePathError

    logdir = tmp_path / "log" / "nodeguard"
    log = AttackLog(logdir / "attacks.jsonl", 1 << 20, 2)
    pcap = PcapLog(logdir / "sample.pcap", 1 << 20, 2)
    log.close()
    pcap.close()
    for f in ("attacks.jsonl", "sample.pcap"):
        assert stat.S_IMODE(os.stat(logdir / f).st_mode) == 0o640
    assert stat.S_IMODE(os.stat(logdir).st_mode) == 0o750
    (tmp_path / "elsewhere").write_text("precious\n")
    os.unlink(logdir / "attacks.jsonl")
    os.symlink(tmp_path / "elsewhere", logdir / "attacks.jsonl")
    with pytest.raises(UnsafePathError, match="attacks.jsonl is a symlink"):
        AttackLog(logdir / "attacks.jsonl", 1 << 20, 2)
    assert (tmp_path / "elsewhere").read_text() == "precious\n"
