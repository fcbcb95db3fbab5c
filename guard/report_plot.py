"""Pictures of a ``report.build`` report: the timeline as SVG (no library) or PNG (matplotlib, Agg).

The PNG shows condemned packets per rule over time (per minute; per sampler window when the whole
report spans under 10 minutes, so a short attack is not one dot), each attack episode shaded in its
rule's colour and labelled with its top source or network.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from datetime import datetime, timezone
from typing import IO, Any

from .aggregate import safe
from .report import _clean, _t, banned_over

_COLOURS = ("#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
PNG_SIZE = (1200, 560)  # pixels: 12 x 5.6 inches at 100 dpi
FINE_SPAN_S = 600


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


def bin_seconds(rep: dict[str, Any]) -> int:
    """60 (per minute); the sampler's window length when the whole report spans under 10 minutes."""
    wins = rep.get("windows") or []
    if not wins or wins[-1]["end"] - wins[0]["start"] >= FINE_SPAN_S:
        return 60
    return max(1, round(statistics.median(w["end"] - w["start"] for w in wins)))


def segments(rep: dict[str, Any], bin_s: int) -> dict[str, list[tuple[float, float, int]]]:
    """rule -> [(start, end, condemned)] in time order, only where it condemned something: one per
    sampler window when ``bin_s`` is the window length (the windows' real edges), else per ``bin_s``
    bin, a window counted in the bin of its middle. Gaps are drawn as zero."""
    wins = rep.get("windows") or []
    out: dict[str, list[tuple[float, float, int]]] = defaultdict(list)
    if bin_s != 60 or not wins:
        for w in wins:
            for g, n in w["condemned"].items():
                if n > 0:
                    out[g].append((w["start"], w["end"], n))
        return {g: sorted(v) for g, v in out.items()}
    bins: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for w in wins:
        for g, n in w["condemned"].items():
            if n > 0:
                bins[g][int((w["start"] + w["end"]) / 2 // bin_s * bin_s)] += n
    return {g: [(k, k + bin_s, n) for k, n in sorted(b.items())] for g, b in bins.items()}


def _steps(segs: list[tuple[float, float, int]]) -> tuple[list[float], list[int]]:
    """x, y for a post-step line that is 0 before, between (gaps) and after the segments."""
    xs, ys = [segs[0][0] - (segs[0][1] - segs[0][0])], [0]
    for start, end, n in segs:
        if start > xs[-1] + 1e-6 and ys[-1] != 0:
            xs.append(xs[-1])
            ys.append(0)
        xs.append(start)
        ys.append(n)
        xs.append(end)
        ys.append(n)
    xs.append(segs[-1][1])
    ys.append(0)
    xs.append(segs[-1][1] + (segs[-1][1] - segs[-1][0]))
    ys.append(0)
    return xs, ys


def episode_label(e: dict[str, Any]) -> str:
    """"<rule>: <top source> (<network>) <share>", or what stands in for it: a spread, a banned source
    (the groups it was banned over; "and N more" when several share the ban drops), no source."""
    rows, total = e.get("sources") or [], e.get("condemned") or sum(r["estimated"] or 0 for r in e.get("sources") or [])
    head = f"{safe(e['rule'])}: "
    if not rows:
        return head + "no sampled source"
    if e.get("spread"):
        return head + f"{e['distinct_sources']:,} sources, none over 5 % (spoofed?)"
    top = rows[0]
    share = f" {100 * top['estimated'] / total:.0f} %" if total and top["estimated"] is not None else ""
    label = head + f"{_clean(top['source'])} ({_clean(top['network'])}){share}"
    if "banned_over" in top:
        label += f", over {banned_over(top)}"
        more = e.get("distinct_sources", 1) - 1
        label += f" and {more} more" if more > 0 else ""
    return label


def timeline_png(rep: dict[str, Any], out: IO[bytes]) -> None:
    """Draw the timeline to ``out`` (a file opened for binary writing) as PNG (PNG_SIZE pixels)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    from matplotlib.transforms import blended_transform_factory

    bin_s = bin_seconds(rep)
    data = segments(rep, bin_s)
    groups = sorted(set(data) | {e["rule"] for e in rep["episodes"]})
    colour = {g: _COLOURS[i % len(_COLOURS)] for i, g in enumerate(groups)}

    def dt(ts: float) -> datetime:
        return datetime.fromtimestamp(ts, timezone.utc).replace(tzinfo=None)

    fig, ax = plt.subplots(figsize=(PNG_SIZE[0] / 100, PNG_SIZE[1] / 100), dpi=100)
    try:
        values = [n for segs in data.values() for _s, _e, n in segs if n > 0]
        for g in groups:
            if not data.get(g):
                continue
            xs, ys = _steps(data[g])  # zero before, between and after: the shape of an attack
            ax.plot([dt(x) for x in xs], ys, drawstyle="steps-post", color=colour[g], linewidth=2, label=safe(g))
        labels = min(len(rep["episodes"]), 8)
        if values and max(values) / max(min(values), 1) > 50:
            ax.set_yscale("symlog", linthresh=max(1, min(values)))
            ax.set_ylim(0, max(values) * 10 ** (0.4 + 0.35 * labels))  # room above the data for the labels
        elif values:
            ax.set_ylim(0, max(values) * (1.1 + 0.09 * labels))
        trans = blended_transform_factory(ax.transData, ax.transAxes)
        spans = []
        for e in rep["episodes"]:
            start = e["start"]
            end = e["end"] or max((w["end"] for w in rep.get("windows") or []), default=start + bin_s)
            ax.axvspan(dt(start), dt(end), color=colour.get(e["rule"], "#999999"), alpha=0.13, linewidth=0)
            spans.append((e, start, end))
        lo, hi = ax.get_xlim()
        for k, (e, start, end) in enumerate(spans):
            right = mdates.date2num(dt(start)) > (lo + hi) / 2  # labels of late episodes end at the episode
            ax.text(dt(end if right else start), 0.97 - 0.075 * (k % 8), f" {episode_label(e)} ", transform=trans,
                    fontsize=9, va="top", ha="right" if right else "left", color=colour.get(e["rule"], "#333333"),
                    bbox={"facecolor": "white", "alpha": 0.75, "edgecolor": "none", "pad": 1})
        unit = "minute" if bin_s == 60 else f"sampler window ({bin_s} s)"
        ax.set_ylabel(f"condemned packets per {unit}")
        ax.set_xlabel("time (UTC)")
        ax.set_title("nodeguard: condemned packets per rule; shaded = attack episodes, labelled with the top source",
                     fontsize=11)
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S" if bin_s < 60 else "%m-%d %H:%M"))
        ax.grid(True, alpha=0.3)
        if groups and data:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
        else:
            ax.text(0.5, 0.5, "no condemned packets in this period", transform=ax.transAxes, ha="center")
        if not values:
            ax.set_ylim(0, 1)
        fig.subplots_adjust(left=0.08, right=0.82, top=0.92, bottom=0.12)
        fig.savefig(out, format="png", dpi=100)
    finally:
        plt.close(fig)
