"""The sampler's memory under a random-source flood in monitor mode: each threat's ``seen`` sets fill
with up to 65,536 sources per IP version, and every window reads them all against the last read
(persource.py). Reading them as libnftables JSON into dicts of address strings took 108 MB for one
threat's two sets at 32,768 sources each, 217 MB full (the unit's MemoryMax is 256M, and monitor mode
has three such threats)."""

from __future__ import annotations

import json
import sys

import netlab
from guard.attacklog import read_records

HELPER = str(netlab.HELPERS / "window_memory.py")
SOURCES = 32_768  # per set: half full, the test's cost (a full pair took 13 s here, this 4.5 s)
# Peak resident growth over the sampler's start and one window close (tests/helpers/window_memory.py,
# 5 runs): 3,516-3,976 kB; with the sets read whole, 108,320 kB. Bound: twice the measured.
GROWTH_KB = 8_000


def test_a_window_over_two_filled_seen_sets_stays_small_and_logs_what_each_source_sent_in_it(ns, write_policy, tmp_path):
    netlab.add_uplink(ns)
    policy = write_policy("mode: monitor\n" + netlab.NO_ESCALATION)
    ns.nodeguard("apply", "-c", policy)
    growth = json.loads(ns.run([sys.executable, HELPER, policy, "icmp-flood", str(SOURCES)]).stdout)["growth_kb"]

    observed = [r for r in read_records(tmp_path / "log" / "attacks.jsonl") if r["type"] == "observed"]
    assert {r["rule"] for r in observed} == {"icmp-flood"}
    # 2 x 32 sources (i % 1000 == 999) went from 1000 to 3000 packets in the window, the others not at all
    assert len(observed) == 2 * (SOURCES // 1000) and all(r["packets"] == 2000 for r in observed), observed[:3]
    for r in observed:
        i = ([int(x, 16) for x in r["src"].split(":")[1:3]] if ":" in r["src"]
             else [int(x) for x in r["src"].split(".")[1:]])
        i = (i[0] << 16) + i[1] if len(i) == 2 else (i[0] << 16) + (i[1] << 8) + i[2]
        assert i % 1000 == 999, r
    assert growth < GROWTH_KB, f"the sampler's peak resident size grew {growth} kB"
