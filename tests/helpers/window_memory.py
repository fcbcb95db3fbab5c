"""The sampler's memory for one window close after a random-source flood filled the ``seen`` sets of
one threat, in the namespace it runs in (the policy is applied there, in monitor mode).

usage: window_memory.py POLICY THREAT SOURCES

Every ``seen-THREAT`` set (IPv4 and IPv6) is filled with SOURCES sources in one ``nft -f`` batch, source i
counting i % 1000 + 1 packets, as the rule's ``update`` with a counter leaves them; then the sampler
starts (it reads them all); then the sources with i % 1000 == 999 count BUSY packets (each
is deleted and added again with its new counter); then one window closes (it reads them all again,
against its first read): a flood's steady state. Prints {"growth_kb": the peak resident size over both, less that before them}.
"""
import gc
import json
import re
import subprocess
import sys

from guard.apply import make_plan
from guard.backend.nft import Nft
from guard.model.ruleset import TABLE
from guard.policy.load import load_policy
from guard.sampler import Sampler


def peak_kb() -> int:
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+)", f.read())[1])


def source(i: int, version: int) -> str:
    return f"fd00:{i >> 16:x}:{i & 0xffff:x}::" if version == 6 else f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}"


BUSY = 3000


def elements(s, indices, packets) -> str:
    return ", ".join(f"{source(i, s.version)} counter packets {packets(i)} bytes {64 * packets(i)} timeout 1h"
                     for i in indices)


def nft_batch(lines: list[str]) -> None:
    subprocess.run(["nft", "-f", "-"], input="\n".join(lines) + "\n", text=True, check=True)


policy, _ = load_policy(sys.argv[1], trusted=True)
nft = Nft()
plan = make_plan(policy, nft)
n = int(sys.argv[3])
seen = [s for s in plan.ruleset.sets if s.kind == "counts" and s.mode == "observed" and s.group == sys.argv[2]]
nft_batch([f"add element inet {TABLE} {s.name} {{ {elements(s, range(lo, min(n, lo + 4096)), lambda i: i % 1000 + 1)} }}"
           for s in seen for lo in range(0, n, 4096)])
gc.collect()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak so far is the batch's text: from here it is the resident size now
before = peak_kb()
sampler = Sampler(policy, plan, nft)
nft_batch([f"delete element inet {TABLE} {s.name} {{ {', '.join(source(i, s.version) for i in range(999, n, 1000))} }}"
           for s in seen]
          + [f"add element inet {TABLE} {s.name} {{ {elements(s, range(999, n, 1000), lambda i: BUSY)} }}"
             for s in seen])
sampler.close_window(adapt=False)
after = peak_kb()
sampler._close()
print(json.dumps({"growth_kb": after - before}))
