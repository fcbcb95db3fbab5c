"""The metrics server under a flood of silent connections from many addresses (issue 19, item 4,
review): the real server in a victim namespace, the flood and kubelet-like probes in an attacker
namespace over a veth, real sockets end to end."""

from __future__ import annotations

import json
import sys
import time

import pytest

from guard.httpserve import Limits
from netlab import ATTACKER_IF, HELPERS, VICTIM4, _server

PORT = 9632
PROBE_SRC = "10.77.0.200"  # a fresh address: it holds one connection at a time, its probe's
PROBE_DELAY_S = 0.02       # request comes 20 ms after its connect (a segment a real network delays)
PROBES, PROBE_EVERY_S, PROBE_TIMEOUT_S = 20, 0.25, 1.0  # kubelet's default timeoutSeconds: 1
# Measured, 5 runs of each case (40 probes each): all 200, the slowest 0.20 s from connect to answer
# (20 ms of it the probe's own delay); before the fix 2-8 of 40 (24x14) and 0 of 40 (81x1) were
# answered. One CI run under load lost one probe of 40 at the flood's first burst (its SYN to a full
# accept queue, retransmitted after the probe's 1 s: a documented limit): the probes start once the
# flood is steady, and one of 20 may still be lost to the machine.
SETTLE_S, MAY_LOSE = 1.0, 1
PROBE_BOUND_S = 0.6


@pytest.mark.parametrize("sources, per_source", [(24, 14), (81, 1)], ids=["24x14", "81x1"])
def test_a_late_probe_from_a_fresh_address_outlives_a_silent_flood_from_many(lab, sources, per_source):
    """More sources than Limits.connections / Limits.per_client, each holding silent connections and
    reopening any the server closes, so the server is over its total cap for the whole run: every
    probe, whose request arrives 20 ms after its connect, is answered 200 (one may be lost: MAY_LOSE)."""
    victim, attacker = lab
    flooders = [f"10.77.0.{100 + i}" for i in range(sources)] if sources <= 100 else []
    assert len(flooders) * per_source > Limits().connections
    for a in (*flooders, PROBE_SRC):
        attacker.run(f"ip addr add {a}/24 dev {ATTACKER_IF}")
    with _server(victim, "metrics_server.py", VICTIM4, str(PORT)):
        seconds = SETTLE_S + PROBES * PROBE_EVERY_S + 2
        flood = attacker.popen([sys.executable, str(HELPERS / "silent_flood.py"), VICTIM4, str(PORT),
                                str(seconds), str(per_source), *flooders])
        try:
            assert flood.stdout.readline().strip() == "ready", flood.stderr.read()
            time.sleep(SETTLE_S)
            probe = attacker.run([sys.executable, str(HELPERS / "late_probe.py"), PROBE_SRC, VICTIM4, str(PORT),
                                  str(PROBE_DELAY_S), str(PROBE_EVERY_S), str(PROBES), str(PROBE_TIMEOUT_S)])
            churn = json.loads(flood.communicate(timeout=seconds + 30)[0].splitlines()[-1])
        finally:
            flood.kill()
            flood.wait()
    results = json.loads(probe.stdout.splitlines()[-1])
    print(f"{sources}x{per_source}: flood {churn}, probes {sorted(t for _, t in results)[-3:]} s slowest")
    assert churn["closed_by_server"] > 0, churn  # the flood was over the cap: the server evicted
    answered = [took for status, took in results if status == 200]
    assert len(results) == PROBES and len(answered) >= PROBES - MAY_LOSE, results
    assert max(answered) < PROBE_BOUND_S, results
