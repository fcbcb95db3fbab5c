"""``nodeguard report``: attack episodes, top sources per rule and a per-minute timeline from the log."""

from __future__ import annotations

import re
import time
from collections import defaultdict
from datetime import datetime, timezone
from typing import Any, Iterable

from .aggregate import safe

_AGO = re.compile(r"^(\d+)([smhd])$")


def parse_when(text: str | None, now: float) -> float | None:
    """'90s', '15m', '1h', '2d' ago, or an ISO 8601 time; None for no bound."""
    if not text:
        return None
    m = _AGO.match(text.strip())
    if m:
        return now - int(m[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m[2]]
    dt = datetime.fromisoformat(text)
    return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp()


def build(records: Iterable[dict], since: float | None, until: float | None, rule: str | None, top: int) -> dict:
    episodes: dict[tuple, dict] = {}
    sources: dict[str, dict[str, dict]] = defaultdict(dict)
    timeline: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for rec in records:
        ts = rec.get("ts", rec.get("start", 0))
        end = rec.get("end", ts)
        if (since is not None and end < since) or (until is not None and ts > until):
            continue
        if rule and rec.get("rule") not in (None, rule):
            continue
        kind = rec.get("type")
        if kind == "episode_start":
            episodes.setdefault((rec["rule"], rec["ts"]), {"rule": rec["rule"], "start": rec["ts"], "end": None,
                                                           "condemned": None, "peak_pps": None})
        elif kind == "episode_end":
            episodes[(rec["rule"], rec["start"])] = {k: rec[k] for k in ("rule", "start", "end", "condemned", "peak_pps")}
        elif kind == "flow":
            s = sources[rec["rule"]].setdefault(rec["src"], {"src": rec["src"], "estimated": 0, "sampled": 0,
                                                              "first": rec["first"], "last": rec["last"],
                                                              "dports": set(), "protos": set()})
            s["estimated"] += rec.get("estimated", 0)
            s["sampled"] += rec.get("sampled", 0)
            s["first"], s["last"] = min(s["first"], rec["first"]), max(s["last"], rec["last"])
            if rec.get("dport") is not None and len(s["dports"]) < 10:
                s["dports"].add(rec["dport"])
            s["protos"].add(rec.get("proto", ""))
        elif kind == "window":
            for group, n in rec.get("condemned", {}).items():
                if not rule or group == rule:
                    timeline[int(rec["end"] // 60 * 60)][group] += n
    top_sources = {
        r: [dict(v, dports=sorted(v["dports"]), protos=sorted(v["protos"]))
            for v in sorted(srcs.values(), key=lambda v: -v["estimated"])[:top]]
        for r, srcs in sorted(sources.items())
    }
    return {"episodes": sorted(episodes.values(), key=lambda e: e["start"]), "top_sources": top_sources,
            "timeline": [{"minute": m, "condemned": dict(g)} for m, g in sorted(timeline.items())]}


def _t(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) if ts else "ongoing"


def format_text(rep: dict[str, Any]) -> str:
    lines = ["attack episodes (UTC):"]
    if not rep["episodes"]:
        lines.append("  none")
    for e in rep["episodes"]:
        extra = f"{e['condemned']:>10} condemned, peak {e['peak_pps']:.0f} pps" if e["end"] else ""
        lines.append(f"  {safe(e['rule']):<24} {_t(e['start'])} -> {_t(e['end']):<19}  {extra}")
    lines.append("")
    for r, srcs in rep["top_sources"].items():
        lines.append(f"top sources: {safe(r)}")
        lines.append(f"  {'source':<40} {'estimated':>10} {'sampled':>8}  protocols/ports")
        for s in srcs:
            ports = ",".join(str(p) for p in s["dports"])
            lines.append(f"  {safe(s['src'], 45):<40} {s['estimated']:>10} {s['sampled']:>8}  "
                         f"{'/'.join(safe(p) for p in s['protos'])} {ports}")
        lines.append("")
    lines.append("timeline, condemned packets per minute (UTC):")
    for row in rep["timeline"]:
        parts = ", ".join(f"{safe(g)} {n}" for g, n in sorted(row["condemned"].items()) if n)
        lines.append(f"  {_t(row['minute'])[:16]}  {parts or '-'}")
    return "\n".join(lines) + "\n"


_COLOURS = ("#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def timeline_svg(rep: dict[str, Any], width: int = 900, height: int = 320) -> str:
    """The per-minute timeline as a small SVG line chart, one line per rule group."""
    rows = rep["timeline"]
    groups = sorted({g for r in rows for g in r["condemned"]})
    left, right, top, bottom = 70, 180, 20, 40
    w, h = width - left - right, height - top - bottom
    peak = max((n for r in rows for n in r["condemned"].values()), default=0) or 1
    t0, t1 = (rows[0]["minute"], rows[-1]["minute"]) if rows else (0, 60)
    span = max(t1 - t0, 60)

    def xy(minute: float, n: float) -> str:
        return f"{left + (minute - t0) / span * w:.1f},{top + h - n / peak * h:.1f}"

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
           f'font-size="12"><rect width="100%" height="100%" fill="white"/>',
           f'<line x1="{left}" y1="{top + h}" x2="{left + w}" y2="{top + h}" stroke="black"/>',
           f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + h}" stroke="black"/>',
           f'<text x="{left - 5}" y="{top + 10}" text-anchor="end">{peak}</text>',
           f'<text x="{left - 5}" y="{top + h}" text-anchor="end">0</text>',
           f'<text x="{left}" y="{height - 10}">{_t(t0)[:16]} UTC</text>',
           f'<text x="{left + w}" y="{height - 10}" text-anchor="end">{_t(t1)[:16]}</text>',
           f'<text x="{left + w / 2}" y="{top - 5}" text-anchor="middle">condemned packets per minute</text>']
    for i, g in enumerate(groups):
        colour = _COLOURS[i % len(_COLOURS)]
        points = " ".join(xy(r["minute"], r["condemned"].get(g, 0)) for r in rows)
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{points}"/>')
        out.append(f'<text x="{left + w + 10}" y="{top + 15 + 16 * i}" fill="{colour}">{safe(g)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
