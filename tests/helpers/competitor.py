"""A kube-router-style competitor: keeps its jump at position 1 of filter INPUT.

Every PERIOD seconds for DURATION seconds, like kube-router's ensureRuleAtPosition: if its
rule is not rule 1, delete it (if present) and insert it at 1.
usage: competitor.py FLAVOUR PERIOD DURATION   (prints how many times it re-inserted)
"""
import subprocess
import sys
import time

flavour, period, duration = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
ipt = f"iptables-{flavour}"
spec = ["-m", "comment", "--comment", "kube-router netpol", "-j", "KUBE-ROUTER-INPUT"]
subprocess.run([ipt, "-N", "KUBE-ROUTER-INPUT"], capture_output=True)
inserted = 0
end = time.monotonic() + duration
while time.monotonic() < end:
    rules = subprocess.run([ipt, "-S", "INPUT"], capture_output=True, text=True).stdout.splitlines()
    body = [r for r in rules if r.startswith("-A INPUT")]
    if not body or "KUBE-ROUTER-INPUT" not in body[0]:
        subprocess.run([ipt, "-D", "INPUT", *spec], capture_output=True)
        subprocess.run([ipt, "-I", "INPUT", "1", *spec], check=True)
        inserted += 1
    time.sleep(period)
print(inserted, flush=True)
