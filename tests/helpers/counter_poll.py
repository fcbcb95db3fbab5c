"""Samples counters every INTERVAL seconds for SECONDS, in the namespace it runs in, in-process
(libnftables, no tool spawned per sample), and prints one JSON list of samples at the end.

usage: counter_poll.py SECONDS INTERVAL

Each sample: [CLOCK_MONOTONIC seconds, condemned, arrived, replied] where
  condemned = the sum of every counter in chain inet nodeguard icmp-flood (its rules all condemn),
  arrived/replied = the counters of chains netdev truth in / out (the test adds them), or -1.
"""
import json
import sys
import time

from guard.backend.nft import Nft

seconds, interval = float(sys.argv[1]), float(sys.argv[2])
nft = Nft()
out = []
print("ready", flush=True)
end = time.monotonic() + seconds
while time.monotonic() < end:
    now = time.monotonic()
    condemned, truth = 0, {"in": -1, "out": -1}
    for o in nft.list("ruleset", terse=True):
        rule = o.get("rule")
        if not rule:
            continue
        c = next((e["counter"]["packets"] for e in rule["expr"] if "counter" in e), 0)
        if rule["table"] == "nodeguard" and rule["chain"] == "icmp-flood":
            condemned += c
        elif rule["table"] == "truth":
            truth[rule["chain"]] = c
    out.append([now, condemned, truth["in"], truth["out"]])
    time.sleep(max(0.0, now + interval - time.monotonic()))
print(json.dumps(out), flush=True)
