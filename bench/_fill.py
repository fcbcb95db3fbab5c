"""Entries / size of the named per-source sets of POLICY as installed, one JSON line: the bench's
proof that its flood filled them, read outside the daemon it measures (the kernel's element count,
as ``nodeguard status`` reads it, for these sets only: all 18 of a flood take too long).

usage: _fill.py POLICY SET ...    (model names: seen-icmp-flood-v4, ...)
"""
import json
import sys

from guard.apply import make_plan
from guard.backend.nft import Nft
from guard.policy.load import load_policy

policy, _ = load_policy(sys.argv[1], trusted=True)
plan = make_plan(policy, Nft())
wanted = [s for s in plan.ruleset.sets if s.base in sys.argv[2:]]
print(json.dumps({m["set"]: (m["elements"], m["size"]) for m in plan.backend.meter_fill(wanted)}))
