"""Markdown tables from bench/synflood.py --json output (used for docs/syn-defence.md).

    python bench/synreport.py /tmp/ngs-full.jsonl [more.jsonl ...]

Per scenario: median [min–max] over the runs; results measured while a flood outside the lab ran
(``foreign_floods`` > 0) are left out, unless no clean run exists (then marked *).
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict


def spread(values, fmt="{:.2f}") -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    med = statistics.median(values)
    if len(values) == 1 or min(values) == max(values):
        return fmt.format(med)
    return f"{fmt.format(med)} [{fmt.format(min(values))}–{fmt.format(max(values))}]"


def main(paths: list[str]) -> None:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for p in paths:
        with open(p) as f:
            for line in f:
                r = json.loads(line)
                groups[(r["defence"].split()[0], r["defence"], r["family"], r["target"], r["client"])].append(r)
    parts = defaultdict(list)
    for key, rows in groups.items():
        parts[key[0]].append((key, rows))
    base = {}  # hand-made chains, same family/target/client, any part of the same run(s)
    for (pt, label, fam, target, client), rows in groups.items():
        if label.endswith("handmade"):
            clean = [r for r in rows if not r.get("foreign_floods")] or rows
            base.setdefault((fam, target, client), statistics.median(r["us_per_pkt"] for r in clean))
    for part, items in parts.items():
        print(f"\n#### {part}\n")
        print("| defence | fam | target | client | runs | client ok (of 50) | p50 ms | p99 ms | conntrack at end | "
              "conntrack peak | attack kpps arrived | softirq µs / attack pkt | vs hand-made |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for (pt, label, fam, target, client), rows in items:
            clean = [r for r in rows if not r.get("foreign_floods")]
            star = "" if clean else "*"
            rows = clean or rows
            us = [r["us_per_pkt"] for r in rows]
            b = base.get((fam, target, client))
            ratio = f"{statistics.median(us) / b:.2f}" if b else "–"
            eng = (f" (engaged {spread([r['engaged_s'] for r in rows], '{:.1f}')} s of the flood)"
                   if any(r.get("toggles") for r in rows) else "")
            print(f"| {label.split(' ', 1)[1]}{eng} | v{fam} | {target} | {client} | {len(rows)}{star} | "
                  f"{spread([r['ok'] for r in rows], '{:g}')} | {spread([r['p50_ms'] for r in rows])} | "
                  f"{spread([r['p99_ms'] for r in rows])} | {spread([r['ct_end'] for r in rows], '{:,.0f}')} | "
                  f"{spread([r['ct_max'] for r in rows], '{:,.0f}')} | {spread([r['kpps'] for r in rows], '{:.0f}')} | "
                  f"{spread(us)} | {ratio} |")


if __name__ == "__main__":
    main(sys.argv[1:])
