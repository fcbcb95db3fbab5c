"""Does nodeguard's connlimit (ct count at prerouting -190 on ct state new) still count connections
to a SYNPROXY port? Functional check, no flood: one source opens 12 concurrent connections, limit 5.

    PYTHONPATH=. .venv/bin/python bench/_connlimit_check.py
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from syndesign import Design, Nodeguard
from synlab import HOST_PORT, NODE4, Lab, settle

POLICY = "connlimit:\n  - ports: [8080]\n    per_source: 5\n"
with Lab() as lab:
    for label, d in (("nodeguard today", Nodeguard(policy=POLICY)),
                     ("design, loose=0", Design(ports=[8080], policy=POLICY)),
                     ("design, loose=0, connlimit in input", Design(ports=[8080], policy=POLICY, connlimit_input=([8080], 5))),
                     ("design, loose=1 + ct state new", Design(ports=[8080], policy=POLICY, states="invalid, untracked, new"))):
        settle(lab)
        d.set_sysctls(lab)
        d.apply(lab)
        src = lab.new_client(4)
        out = lab.net.run([sys.executable, str(Path(__file__).parent.parent / "tests/helpers/tcp_clients.py"), src, NODE4,
                           str(HOST_PORT), "12", "--concurrent", "--timeout", "1"]).stdout.splitlines()[0]
        print(f"{label:32} 12 concurrent connections, connlimit 5: {out}", flush=True)
        d.remove(lab)
