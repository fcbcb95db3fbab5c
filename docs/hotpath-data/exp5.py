import sys, tempfile, time, signal
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
sys.path.insert(0, '/work/wt-hot/bench')
from pathlib import Path
import hotpath as h
IF = h.NODE_IF
T = {
 'netdev-drop': f'table netdev ngh-x {{\n chain c {{\n  type filter hook ingress device "{IF}" priority 0; policy accept;\n  drop\n }}\n}}\n',
 'inet-ingress-drop': f'table inet ngh-x {{\n chain c {{\n  type filter hook ingress device "{IF}" priority 0; policy accept;\n  drop\n }}\n}}\n',
 'netdev-ban-lookup': f'table netdev ngh-x {{\n set b {{ type ipv4_addr; flags dynamic,timeout; timeout 600s; elements = {{ {h.ATT4} }} }}\n chain c {{\n  type filter hook ingress device "{IF}" priority 0; policy accept;\n  ip saddr @b counter drop\n }}\n}}\n',
 'inet-ingress-ban-lookup': f'table inet ngh-x {{\n set b {{ type ipv4_addr; flags dynamic,timeout; timeout 600s; elements = {{ {h.ATT4} }} }}\n chain c {{\n  type filter hook ingress device "{IF}" priority 0; policy accept;\n  ip saddr @b counter drop\n }}\n}}\n',
 'inet-ingress-ban-nocounter': f'table inet ngh-x {{\n set b {{ type ipv4_addr; flags dynamic,timeout; timeout 600s; elements = {{ {h.ATT4} }} }}\n chain c {{\n  type filter hook ingress device "{IF}" priority 0; policy accept;\n  ip saddr @b drop\n }}\n}}\n',
 'drop-350': 'table inet ngh-x {\n chain c {\n  type filter hook prerouting priority -350; policy accept;\n  drop\n }\n}\n',
}
with tempfile.TemporaryDirectory(prefix='ngh-') as tmp, h.Lab(Path(tmp)) as lab:
  with h.locked():
    for rnd in range(3):
        for name, text in T.items():
            lab.node.nft(text)
            for fl in ('icmp', 'syn'):
                r = h.flood_cost(lab, fl, 'flood', 0.8, 2.0)
                print(name, fl, f"{r['us']:.3f} us {r['kpps']:.0f} kpps", flush=True)
            fam = 'netdev' if text.startswith('table netdev') else 'inet'
            lab.node.run(f'nft delete table {fam} ngh-x')
