"""Samples, every INTERVAL seconds for SECONDS, in the namespace it runs in: the packets of the truth
counter (``table netdev truth``, chain ``in``: netlab.Truth, at ingress priority -1000, one counting
rule for the source it watches) and the drops of nodeguard's ban check for IPv4 (its "banned v4
source" rule; nft: in chain filter-prerouting; iptables: in raw NODEGUARD-PRE-UPLINK).

usage: ban_poll.py BACKEND SECONDS INTERVAL
Prints "ready", then one JSON list of samples [CLOCK_MONOTONIC seconds, truth, ban drops].
"""
import json
import re
import subprocess
import sys
import time

from guard.backend.nft import Nft

backend, seconds, interval = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
nft = Nft()
_IPT = re.compile(r'^\[(\d+):\d+\] -A NODEGUARD-PRE-UPLINK .*nodeguard:[0-9a-f]+ banned v4 source"')


def counter(rule: dict) -> int:
    return next((e["counter"]["packets"] for e in rule["expr"] if "counter" in e), 0)


out = []
print("ready", flush=True)
end = time.monotonic() + seconds
while time.monotonic() < end:
    now = time.monotonic()
    truth = drops = 0
    listing = nft.list("table netdev truth" if backend != "nft" else "ruleset", terse=True)
    for o in listing:
        rule = o.get("rule")
        if not rule:
            continue
        if rule["table"] == "truth" and rule["chain"] == "in":
            truth += counter(rule)
        elif rule["table"] == "nodeguard" and rule["chain"] == "filter-prerouting" \
                and rule.get("comment", "").endswith(" banned v4 source"):
            drops += counter(rule)
    if backend != "nft":
        save = subprocess.run([f"iptables-{backend.split('-', 1)[1]}-save", "-c", "-t", "raw"],
                              capture_output=True, text=True, check=False).stdout
        drops = sum(int(m[1]) for m in map(_IPT.match, save.splitlines()) if m)
    out.append([now, truth, drops])
    time.sleep(max(0.0, now + interval - time.monotonic()))
print(json.dumps(out), flush=True)
