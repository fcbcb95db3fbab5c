"""Monitor mode: every rule meters, counts and samples what it would drop, and drops nothing.

The same fixed-rate floods run twice in one test, in monitor mode and then in enforce mode. Both are
judged against an independent truth, netdev counters on the victim's interface (netlab.Truth): what
arrived at ingress, and what the victim answered at egress. In monitor mode every ping and every SYN
that arrived is answered (nothing dropped), and the would-drop counters are what the per-source buckets
condemn of what arrived (arrived - burst - rate x duration); enforce then really drops that, and
answers only the rest. The attack log (through the sampler) adds up to the would-drops.
"""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import netlab
from guard.attacklog import read_records
from netlab import ATTACKER4, VICTIM4

CLOSED_PORT = 8081  # every SYN is answered by exactly one RST: no retransmitted SYN-ACKs to count
N, GAP_US = 3000, 1000  # 3000 packets at (nominally) 1000/s: ~3.3 s
RATE, BURST = 20, 20  # per source, for ICMP and SYN: what passes (BURST + RATE x duration) is known to ~10
# The duration is the flood's at the victim (first to last packet at the truth counter, polled): hping3's
# run time also holds its start, which a loaded machine stretches (4.7-4.9 s against ~3.3: ~21 packets).
# Measured |would-drops - (arrived - BURST - RATE x duration)|: 0.0-1.0, and for enforce's drops 0.1-0.8
# (nft, iptables-nft x ICMP, SYN; 3000 arrived each time). The duration is known within bounds that a
# slow poll widens (_durations); beyond them, bound 15 (0.5 % of 3000): a flood that stalls for over
# BURST / RATE s loses the refill past the burst.
POLL_S = 0.02
MARGIN = 15


def _hping(attacker, *args: str) -> None:
    res = attacker.run(["hping3", "-q", "-c", str(N), "-i", f"u{GAP_US}", *args, VICTIM4], check=False, timeout=60)
    m = re.search(r"(\d+) packets transmitted", res.stdout + res.stderr)
    assert m and int(m[1]) == N, res.stdout + res.stderr


def _durations(truth, names: tuple[str, ...], done) -> dict[str, tuple[float, float]]:
    """Polls ``truth`` until ``done()``: per counter, the shortest and longest the flood can have taken
    at the victim, from its first packet to its last. Each read happens somewhere between the start and
    the end of its ``nft`` call, which a loaded machine stretches to seconds: the first packet came
    after the start of the last read that saw none and before the end of the first that saw one, and
    the same for the last packet, so the bounds hold however slow the reads."""
    reads: list[tuple[float, float, dict[str, int]]] = []
    while not done():
        start = time.monotonic()
        counts = truth.counts()
        reads.append((start, time.monotonic(), counts))
        time.sleep(POLL_S)
    start = time.monotonic()
    reads.append((start, time.monotonic(), truth.counts()))  # after the floods: every packet counted
    out = {}
    for name in names:
        final = reads[-1][2][name]
        a = next(i for i, r in enumerate(reads) if r[2][name])  # the first read that saw a packet
        b = next(i for i, r in enumerate(reads) if r[2][name] == final)  # the first that saw the last
        first = (reads[a - 1][0] if a else float("-inf"), reads[a][1])
        last = (reads[b - 1][0] if b else float("-inf"), reads[b][1])
        out[name] = (max(0.0, last[0] - first[1]), last[1] - first[0])
    return out


def _run(victim, attacker, policy: str, backend: str, tmp_path, mode: str) -> dict:
    victim.nodeguard("apply", "-c", policy)
    truth = netlab.Truth(victim, {"icmp in": f"ip saddr {ATTACKER4} icmp type echo-request",
                                  "syn in": f"ip saddr {ATTACKER4} tcp flags syn"},
                         {"icmp out": f"ip daddr {ATTACKER4} icmp type echo-reply",
                          "syn out": f"ip daddr {ATTACKER4} tcp flags rst"})
    sampler = netlab.start_sampler(victim, policy)
    time.sleep(1.2)  # buckets full
    with ThreadPoolExecutor(2) as pool:  # both floods at once: 3 s, not 6
        floods = [pool.submit(_hping, attacker, "--icmp", "-a", ATTACKER4),
                  pool.submit(_hping, attacker, "-S", "-p", str(CLOSED_PORT), "-a", ATTACKER4)]
        spans = _durations(truth, ("icmp in", "syn in"), lambda: all(f.done() for f in floods))
        for f in floods:
            f.result()
    took = {k: spans[f"{k} in"] for k in ("icmp", "syn")}
    netlab.stop_sampler(sampler)  # once it has every sample: the window it closes on SIGTERM logs them
    c, t = victim.counters(backend), truth.counts()
    counted = {k: sum(v for k2, v in c.items() if k2.startswith(f"{k}-flood: {k}-flood ") and "admission" not in k2)
               for k in ("icmp", "syn")}
    logged = {"icmp": 0, "syn": 0}
    for r in read_records(tmp_path / f"{mode}.jsonl"):
        if r["type"] in ("flow", "other") and r.get("mode") == mode:
            logged[r["rule"].split("-")[0]] += r["estimated"]
    return {k: {"arrived": t[f"{k} in"], "answered": t[f"{k} out"], "counted": counted[k], "logged": logged[k],
                "took": took[k]} for k in ("icmp", "syn")}


# iptables renders monitor mode as its golden pins (tests/golden/monitor.iptables.txt); the kernel case on nft
@pytest.mark.parametrize("backend", ["nft"])
def test_monitor_mode_drops_nothing_and_counts_what_enforce_then_drops(lab, write_policy, tmp_path, backend):
    victim, attacker = lab

    def policy(mode: str) -> str:
        return write_policy(netlab.backend_policy(backend, f"""
            mode: {mode}
            icmp:
              per_source: {RATE}/second burst {BURST}
            syn:
              per_source: {RATE}/second burst {BURST}
            sampler:
              window_s: 2
              log: {tmp_path}/{mode}.jsonl
        """) + netlab.NO_ESCALATION, f"{mode}.yaml")  # enforce drops what monitor counted, without bans

    monitor = _run(victim, attacker, policy("monitor"), backend, tmp_path, "monitor")
    enforce = _run(victim, attacker, policy("enforce"), backend, tmp_path, "enforce")
    for threat in ("icmp", "syn"):  # what the per-source bucket condemns of what arrived, in either mode
        for run in (monitor[threat], enforce[threat]):  # each flood's own duration at the victim
            run["condemned"] = [round(run["arrived"] - BURST - RATE * took, 1) for took in reversed(run["took"])]
    print(f"\n{backend}: monitor {json.dumps(monitor)}\n{backend}: enforce {json.dumps(enforce)}")

    for threat in ("icmp", "syn"):
        m, e = monitor[threat], enforce[threat]
        assert m["arrived"] >= 0.99 * N and e["arrived"] >= 0.99 * N, (threat, m, e)
        assert m["answered"] == m["arrived"], f"monitor mode dropped {threat}: {m}"
        for run, what in ((m, "monitor's would-drops"), (e, "enforce's drops")):
            low, high = run["condemned"]
            assert low - MARGIN <= run["counted"] <= high + MARGIN, f"{what} against the truth: {run}"
        assert e["answered"] == e["arrived"] - e["counted"], f"enforce answered what it did not drop: {e}"
        assert abs(m["logged"] - m["counted"]) <= 0.05 * m["counted"], f"attack log against the counters: {m}"
