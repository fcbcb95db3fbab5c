import sys, tempfile, time
sys.path.insert(0, '/work/wt-hot/bench')
from pathlib import Path
import hotpath as h, lean_table as L
def lean(**kw): return L.render(h.lean_params(**kw))
variants = {}
base = lean(escalate=True)
variants['lean+esc'] = base
# syn chain without per-source meter
variants['no-syn-meter'] = base.replace('update @syn-src-v4 { ip saddr limit rate over 200/second burst 400 packets }', 'meta mark 0x7777777')
# backstop first
variants['no-sample'] = lean(escalate=True, sample=False)
variants['meter-small'] = base.replace('set syn-src-v4 {\n\t\ttype ipv4_addr; size 65536', 'set syn-src-v4 {\n\t\ttype ipv4_addr; size 1024')
with tempfile.TemporaryDirectory(prefix='ngh-') as tmp, h.Lab(Path(tmp)) as lab:
    for rnd in range(2):
        for name, text in variants.items():
            lab.node.nft(text)
            r = h.flood_cost(lab, 'spoofed-syn', 'flood', 2.0, 2.0)
            n = lab.node.run('nft list set inet nodeguard syn-src-v4').stdout.count(' expires ')
            print(name, f"{r['us']:.2f} us {r['kpps']:.0f} kpps", flush=True)
            lab.node.run('nft delete table inet nodeguard')
        for d in ('floor', 'today'):
            D = h.Defence(d, lab); D.apply()
            r = h.flood_cost(lab, 'spoofed-syn', 'flood', 2.0, 2.0)
            print(d, f"{r['us']:.2f} us {r['kpps']:.0f} kpps", flush=True)
            D.remove()
