"""An insert-mode competitor (kube-router's ensureRuleAtPosition, Felix with ChainInsertMode=insert):
keeps its jump at position 1 of TABLE CHAIN.

Every PERIOD seconds for DURATION seconds: if its rule is not rule 1, delete it (if present) and
insert it at 1. The chain it jumps to is empty, so it takes no packets from us; it only fights.
usage: competitor.py FLAVOUR TABLE CHAIN PERIOD DURATION   (prints how many times it re-inserted)
"""
import subprocess
import sys
import time

flavour, table, chain, period, duration = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5])
ipt = [f"iptables-{flavour}", "-t", table]
spec = ["-m", "comment", "--comment", "kube-router netpol", "-j", "KUBE-ROUTER-INPUT"]
subprocess.run([*ipt, "-N", "KUBE-ROUTER-INPUT"], capture_output=True)
inserted = 0
end = time.monotonic() + duration
while time.monotonic() < end:
    rules = subprocess.run([*ipt, "-S", chain], capture_output=True, text=True).stdout.splitlines()
    body = [r for r in rules if r.startswith(f"-A {chain}")]
    if not body or "KUBE-ROUTER-INPUT" not in body[0]:
        subprocess.run([*ipt, "-D", chain, *spec], capture_output=True)
        subprocess.run([*ipt, "-I", chain, "1", *spec], check=True)
        inserted += 1
    time.sleep(period)
print(inserted, flush=True)
