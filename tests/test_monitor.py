"""Monitor mode: every rule meters, counts and samples what it would drop, and drops nothing.

The same fixed-rate floods run twice in one test, in monitor mode and then in enforce mode: in
monitor the attacker gets every answer it would get with no rules at all, and the would-drop
counters (and the attack log, through the sampler) match what enforce then really drops.
"""

from __future__ import annotations

import json
import re
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import netlab
from guard.attacklog import read_records
from netlab import ATTACKER4, VICTIM4

PORT = 8080
N, GAP_US = 3000, 1000  # 3000 packets at 1000/s: 3 s


def _hping(attacker, *args: str) -> tuple[int, int]:
    """Sent and received, from hping3's own statistics."""
    res = attacker.run(["hping3", "-q", "-c", str(N), "-i", f"u{GAP_US}", *args, VICTIM4], check=False, timeout=60)
    m = re.search(r"(\d+) packets transmitted, (\d+) packets received", res.stdout + res.stderr)
    assert m, res.stdout + res.stderr
    return int(m[1]), int(m[2])


def _run(victim, attacker, policy: str, backend: str, tmp_path, mode: str) -> dict:
    victim.nodeguard("apply", "-c", policy)
    sampler = victim.popen([sys.executable, "-m", "guard", "sample", "-c", policy])
    deadline = time.monotonic() + 10
    while "sampling via" not in (line := sampler.stderr.readline()):
        assert line and time.monotonic() < deadline, "sampler did not start"
    time.sleep(1.2)  # buckets full
    with ThreadPoolExecutor(2) as pool:  # both floods at once: 3 s, not 6
        icmp_f = pool.submit(_hping, attacker, "--icmp", "-a", ATTACKER4)
        syn_f = pool.submit(_hping, attacker, "-S", "-p", str(PORT), "-a", ATTACKER4)
        icmp, syn = icmp_f.result(), syn_f.result()
    time.sleep(2.5)  # a window closes
    sampler.send_signal(signal.SIGTERM)
    sampler.wait(timeout=10)
    c = victim.counters(backend)
    counted = {t: sum(v for k, v in c.items() if k.startswith(f"{t}-flood: {t}-flood ") and "admission" not in k)
               for t in ("icmp", "syn")}
    logged = {"icmp": 0, "syn": 0}
    for r in read_records(tmp_path / f"{mode}.jsonl"):
        if r["type"] in ("flow", "other") and r.get("mode") == mode:
            logged[r["rule"].split("-")[0]] += r["estimated"]
    return {"icmp": icmp, "syn": syn, "counted": counted, "logged": logged}


@pytest.mark.parametrize("backend", ["nft", "iptables-nft"])
def test_monitor_mode_drops_nothing_and_counts_what_enforce_then_drops(lab, write_policy, tmp_path, backend):
    victim, attacker = lab

    def policy(mode: str) -> str:
        return write_policy(netlab.backend_policy(backend, f"""
            mode: {mode}
            icmp:
              per_source: 20/second
            syn:
              per_source: 100/second
            sampler:
              window_s: 2
              log: {tmp_path}/{mode}.jsonl
        """) + netlab.NO_ESCALATION, f"{mode}.yaml")  # enforce drops what monitor counted, without bans

    with netlab.tcp_server(victim, VICTIM4, PORT):
        monitor = _run(victim, attacker, policy("monitor"), backend, tmp_path, "monitor")
        enforce = _run(victim, attacker, policy("enforce"), backend, tmp_path, "enforce")
    print(f"\n{backend}: monitor {json.dumps(monitor)}\n{backend}: enforce {json.dumps(enforce)}")

    for threat in ("icmp", "syn"):
        sent, received = monitor[threat]
        assert received >= sent - 5, f"monitor mode dropped {threat}: {sent} sent, {received} answered"
        would, dropped = monitor["counted"][threat], enforce["counted"][threat]
        assert dropped > 1000, (threat, enforce)
        assert abs(would - dropped) <= 0.05 * dropped, (threat, would, dropped)
        assert enforce[threat][1] <= sent - dropped + 5, "enforce did drop"
        assert abs(monitor["logged"][threat] - would) <= 0.05 * would, (threat, monitor["logged"], would)
