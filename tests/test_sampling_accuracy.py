"""Per-source estimates from packet-uniform sampling, against what really arrived.

Sources of unequal rates share one rule group. The truth per source is counted at netdev ingress
(before any of our rules). The kernel samples each condemned packet at the same odds, which the
sampler adapts to the flood rate; a source's estimate is its share of the samples times the
group's exact kernel count.
"""

from __future__ import annotations

import signal
import time

import pytest

import netlab
from guard.attacklog import read_records
from netlab import FRESH4, VICTIM4

TWO = {"10.77.0.2": "u100", FRESH4[0]: "u1000"}  # ~10,000/s and ~1,000/s: 1:10
TEN = {f"10.77.1.{i}": f"u{100 * i}" for i in range(1, 11)}  # ~10,000/s down to ~1,000/s


# iptables-nft with ten sources covers its two-source case too (one fewer 13 s flood in the suite)
@pytest.mark.parametrize("backend,sources", [("nft", TWO), ("nft", TEN), ("iptables-nft", TEN)],
                         ids=["two sources-nft", "ten sources-nft", "ten sources-iptables-nft"])
def test_sources_sharing_a_group_are_each_estimated_within_5_percent(lab, write_policy, tmp_path, backend, sources):
    victim, attacker = lab
    policy = write_policy(netlab.backend_policy(backend, f"""
        icmp:
          rate: 1/second burst 1
          per_source: 1/second burst 1
        sampler:
          window_s: 2
          log: {tmp_path}/attacks.jsonl
        watcher:
          state_file: {tmp_path}/watch.json
    """) + netlab.NO_ESCALATION)  # every source's whole flood is condemned by icmp-flood: no bans
    victim.nodeguard("apply", "-c", policy)
    truth = netlab.Truth(victim, {a: f"ip saddr {a} icmp type echo-request" for a in sources})
    sampler = netlab.start_sampler(victim, policy)
    floods = [attacker.popen(["timeout", "-s", "INT", "10", "hping3", "-q", "--icmp", "-a", a, "-i", gap, VICTIM4])
              for a, gap in sources.items()]
    for f in floods:
        f.wait()
    time.sleep(2.5)
    sampler.send_signal(signal.SIGTERM)
    _out, err = sampler.communicate(timeout=10)
    arrived = truth.counts()
    estimated = {a: 0 for a in sources}
    sampled = {a: 0 for a in sources}
    for r in read_records(tmp_path / "attacks.jsonl"):
        if r["type"] == "flow" and r["src"] in estimated:
            estimated[r["src"]] += r["estimated"]
            sampled[r["src"]] += r["sampled"]
    errors = {a: (estimated[a] - arrived[a]) / arrived[a] for a in sources}
    print(f"\n{backend}: " + "; ".join(f"{a}: estimated {estimated[a]} of {arrived[a]} arrived "
                                      f"({errors[a]:+.1%}, {sampled[a]} samples)" for a in sources))
    print("\n".join(ln for ln in err.splitlines() if "odds" in ln))
    assert "sampling odds now" in err, "the odds were adapted to the flood"
    for a in sources:
        assert abs(errors[a]) <= 0.05, (a, estimated[a], arrived[a])
