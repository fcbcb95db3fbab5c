import sys, tempfile, time, signal
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
sys.path.insert(0, '/work/wt-hot/bench')
from pathlib import Path
import hotpath as h, lean_table as L
V = {}
for where in ('prerouting', 'ingress'):
    t = L.render(h.lean_params(escalate=True, stateless_at=where))
    V[f'{where}'] = t
    V[f'{where}-valve1'] = t.replace('limit rate over 5000/second burst 10000 packets', 'limit rate over 1/second burst 1 packets')
    V[f'{where}-nosample'] = L.render(h.lean_params(escalate=True, stateless_at=where, sample=False))
with tempfile.TemporaryDirectory(prefix='ngh-') as tmp, h.Lab(Path(tmp)) as lab:
  with h.locked():
    for rnd in range(2):
        for name, text in V.items():
            lab.node.nft(text)
            r = h.flood_cost(lab, 'spoofed-syn', 'flood', 1.5, 2.0)
            print(name, 'spoofed-syn', f"{r['us']:.2f} us {r['kpps']:.0f} kpps", flush=True)
            lab.node.run('nft delete table inet nodeguard')
        for d in ('floor', 'drop-350'):
            D = h.Defence(d, lab); D.apply()
            r = h.flood_cost(lab, 'spoofed-syn', 'flood', 1.5, 2.0)
            print(d, 'spoofed-syn', f"{r['us']:.2f} us {r['kpps']:.0f} kpps", flush=True)
            D.remove()
