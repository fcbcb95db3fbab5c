"""The sampler's memory under a random-source flood in monitor mode: each threat's ``seen`` sets fill
to 65,536 sources per IP version, and every window reads them all against the last read
(persource.py). Reading them as libnftables JSON into dicts of address strings took 216 MB for one
threat's two sets (the unit's MemoryMax is 256M, and monitor mode has three such threats)."""

from __future__ import annotations

import json
import sys

import netlab
from guard.attacklog import read_records
from guard.sampler import OBSERVED_TOP

HELPER = str(netlab.HELPERS / "window_memory.py")
# Peak resident growth over the sampler's start and one window close, both sets full (5 runs): 8.7-8.9 MB;
# before the streamed read, 216 MB. Bound: twice the measured.
GROWTH_KB = 18_000


def test_a_window_over_two_full_seen_sets_stays_small_and_logs_their_busiest_sources(ns, write_policy, tmp_path):
    netlab.add_uplink(ns)
    policy = write_policy("mode: monitor\n" + netlab.NO_ESCALATION)
    ns.nodeguard("apply", "-c", policy)
    growth = json.loads(ns.run([sys.executable, HELPER, policy, "icmp-flood"]).stdout)["growth_kb"]

    observed = [r for r in read_records(tmp_path / "log" / "attacks.jsonl") if r["type"] == "observed"]
    assert {r["rule"] for r in observed} == {"icmp-flood"}
    # 2 x 65 sources counted 1000 packets (i % 1000 == 999), the most: the busiest 100 are among them
    assert len(observed) == OBSERVED_TOP and all(r["packets"] == 1000 for r in observed), observed[:3]
    for r in observed:
        i = ([int(x, 16) for x in r["src"].split(":")[1:3]] if ":" in r["src"]
             else [int(x) for x in r["src"].split(".")[1:]])
        i = (i[0] << 16) + i[1] if len(i) == 2 else (i[0] << 16) + (i[1] << 8) + i[2]
        assert i % 1000 == 999, r
    assert growth < GROWTH_KB, f"the sampler's peak resident size grew {growth} kB"
