"""``nodeguard report``: attack episodes, the sources behind each, and a per-minute timeline, from the log.

Builds one JSON-ready report from the attack log's records and formats it for people (text) or
for spreadsheets (CSV). Pictures of it are drawn by ``report_plot``.
"""

from __future__ import annotations

import csv
import io
import re
import time
from collections import defaultdict
from datetime import datetime, timezone
from typing import Any, Iterable, Iterator

from .aggregate import safe
from .records import checked, group_of, skipped_note
from .report_sources import EPS as _EPS
from .report_sources import SPREAD_MAX_SHARE, EpisodeTallies, RuleSources, network_of

_AGO = re.compile(r"^(\d+)([smhd])$")

_SHOWN = set("abcdefghijklmnopqrstuvwxyz0123456789-_.:/ ")


def _clean(text: Any, limit: int = 64) -> str:
    """``safe`` that also keeps '/' and spaces (networks, "12 sources"): log text is untrusted."""
    return "".join(c if c.lower() in _SHOWN else "?" for c in str(text)[:limit])


def parse_when(text: str | None, now: float) -> float | None:
    """'90s', '15m', '1h', '2d' ago, or an ISO 8601 time; None for no bound."""
    if not text:
        return None
    m = _AGO.match(text.strip())
    if m:
        ago = int(m[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m[2]]
        if ago > now:
            raise ValueError(f"{text.strip()[:24]} ago is before 1970")
        return now - ago
    dt = datetime.fromisoformat(text)
    return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp()


def _within(pairs: Iterable[tuple[dict, Any]], since: float | None, until: float | None,
            rule: str | None) -> Iterator[tuple[dict, Any]]:
    """The records of ``pairs`` (``records.checked``) that overlap the bounds and are of group ``rule``
    (or its monitor group) or of none."""
    for rec, fields in pairs:
        ts = rec.get("ts", rec.get("start", 0))
        end = rec.get("end", ts)
        if (since is not None and end < since) or (until is not None and ts > until):
            continue
        if rule and group_of(rec) not in (None, rule, f"{rule}/monitor"):
            continue
        yield rec, fields


def build(records: Iterable[dict], since: float | None, until: float | None, rule: str | None, top: int) -> dict:
    """The report of ``records`` in log order, read once: time linear in the log, memory bounded
    (report_sources). ``records``: a ``records.Records``, or records in memory, checked the same way."""
    episodes: dict[tuple, dict] = {}
    tallies = EpisodeTallies()
    sources: dict[str, RuleSources] = defaultdict(RuleSources)
    timeline: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    windows: list[dict] = []
    bans: list[dict] = []  # ban/unban records (escalation), in log order
    pairs = checked(records)
    if since is not None or until is not None or rule:
        pairs = _within(pairs, since, until, rule)
    at = None  # the window and group of the last flow, whose waiting list is ``pending``
    run: list = []  # the "flow" records since the window or group last changed, for their group's RuleSources
    run_of = None
    for rec, flow in pairs:
        if flow is not True:  # a "flow" or "other" record (records.FLOWS): most of a log, first
            flow, key = flow
            if key != at:
                if run:
                    sources[run_of].add(*run)
                    run = []
                at, run_of = key, key[2]
                pending, room = tallies.pending(key)
            pending.append(flow)
            if len(pending) > room:
                tallies.window_passed(float("inf"))
                at = None
            if rec["type"] == "flow":
                run.append(flow)
            continue
        kind = rec["type"]
        if kind in ("ban", "unban"):
            if not rule or kind == "unban" or rule in (rec.get("groups") or []) or rule == rec.get("dropped_as"):
                bans.append({k: rec.get(k) for k in ("type", "ts", "src", "groups", "expires", "why", "dropped_as")
                             if k in rec})
        elif kind == "episode_start":
            group = group_of(rec)
            episodes.setdefault((group, rec["ts"]), {"rule": group, "start": rec["ts"], "end": None,
                                                     "condemned": None, "peak_pps": None})
            tallies.started((group, rec["ts"]))
        elif kind == "episode_end":
            group = group_of(rec)
            episodes[(group, rec["start"])] = {"rule": group, **{k: rec[k] for k in ("start", "end", "condemned",
                                                                                     "peak_pps")}}
            tallies.ended((group, rec["start"]), rec["end"])
        elif kind == "window":
            tallies.window_passed(rec["start"])
            at = None
            condemned = {g: n for g, n in rec.get("condemned", {}).items()
                         if not rule or g in (rule, f"{rule}/monitor")}
            windows.append({"start": rec["start"], "end": rec["end"], "condemned": condemned})
            for g, n in condemned.items():
                timeline[int(rec["end"] // 60 * 60)][g] += n
    if run:
        sources[run_of].add(*run)
    tallies.finish()
    top_sources = {r: srcs.top(top) for r, srcs in sorted(sources.items())}
    eps = sorted(episodes.values(), key=lambda e: e["start"])
    banned = ban_intervals(bans, windows)
    for e in eps:
        e.update(ban_sources(e, banned, top) or tallies.result((e["rule"], e["start"]), top))
    return {"episodes": eps, "top_sources": top_sources,
            "timeline": [{"minute": m, "condemned": dict(g)} for m, g in sorted(timeline.items())],
            "windows": sorted(windows, key=lambda w: w["start"]), "bans": bans}


def ban_intervals(bans: list[dict], windows: list[dict]) -> list[dict]:
    """Each logged ban that names the rule group dropping its packets (``dropped_as``), as ``{"src",
    "groups", "dropped_as", "from", "until"}``: from the start of the sampler window at whose end it was
    seen, until the ``unban`` that ended it, else its expiry (None: not known)."""
    window_start = {w["end"]: w["start"] for w in windows}
    out: list[dict] = []
    banned: dict[str, dict] = {}
    for b in bans:  # log order
        src, ts = b.get("src"), b.get("ts")
        if not isinstance(src, str) or not isinstance(ts, (int, float)):
            continue
        if b["type"] == "ban" and isinstance(b.get("dropped_as"), str):
            expires = b.get("expires")
            banned[src] = {"src": src, "groups": [str(g) for g in b.get("groups") or []], "dropped_as": b["dropped_as"],
                           "from": window_start.get(ts, ts),
                           "until": expires if isinstance(expires, (int, float)) else None}
            out.append(banned[src])
        elif b["type"] == "unban" and src in banned:
            banned.pop(src)["until"] = ts
    return out


def ban_sources(episode: dict, intervals: list[dict], top: int) -> dict | None:
    """The sources behind an episode of the group that drops banned sources (their bans' ``dropped_as``),
    in ``episode_sources``' shape; None for any other episode. That group's drops are neither sampled
    nor counted per source: a lone banned source gets the episode's figures, several get none
    (``estimated`` and ``peak_pps`` None). ``banned_over``: the groups its ban record names."""
    start, end = episode["start"], episode["end"]
    rows: dict[str, dict] = {}
    for iv in intervals:
        if iv["dropped_as"] != episode["rule"] or (end is not None and iv["from"] > end + _EPS) or (
                iv["until"] is not None and iv["until"] <= start + _EPS):
            continue
        first, last = max(start, iv["from"]), min((t for t in (end, iv["until"]) if t is not None), default=None)
        row = rows.setdefault(iv["src"], {"rule": episode["rule"], "source": iv["src"], "network": network_of(iv["src"]),
                                          "addresses": 1, "estimated": None, "sampled": 0, "first": first, "last": last,
                                          "peak_pps": None, "protos": [], "dports": [], "banned_over": []})
        row["banned_over"] = sorted(set(row["banned_over"]) | set(iv["groups"]))  # banned again in one episode
        row["first"] = min(row["first"], first)
        row["last"] = None if None in (row["last"], last) else max(row["last"], last)
    if not rows:
        return None
    if len(rows) == 1:
        next(iter(rows.values())).update(estimated=episode["condemned"], peak_pps=episode["peak_pps"])
    return {"sources": sorted(rows.values(), key=lambda r: r["source"])[:top], "distinct_sources": len(rows),
            "more": max(0, len(rows) - top), "spread": False}


def _t(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) if ts else "ongoing"


def _n(value: float | None) -> str:
    """A figure, or "-" where it is not known (several banned sources share one counter)."""
    return "-" if value is None else f"{value:.0f}"


def banned_over(row: dict) -> str:
    """The groups a banned source's row says it was banned over, escaped (log text is untrusted)."""
    return ", ".join(_clean(g) for g in row["banned_over"]) or "a per-source limit"


def _what(row: dict) -> str:
    """A source row's protocols and ports, or for a banned source the groups it was banned over."""
    if "banned_over" in row:
        return f"banned over {banned_over(row)}"
    return f"{'/'.join(safe(p) for p in row['protos'])} {_clean(','.join(str(p) for p in row['dports']))}"


def format_text(rep: dict[str, Any]) -> str:
    lines = ["attack episodes (UTC):"]
    if not rep["episodes"]:
        lines.append("  none")
    for e in rep["episodes"]:
        extra = f"{e['condemned']:>10} condemned, peak {e['peak_pps']:.0f} pps" if e["end"] else ""
        lines.append(f"  {safe(e['rule']):<24} {_t(e['start'])} -> {_t(e['end']):<19}  {extra}")
    for e in rep["episodes"]:
        if not e.get("sources"):
            continue
        n = e["distinct_sources"]
        lines += ["", f"episode {safe(e['rule'])} from {_t(e['start'])}: {n} distinct source{'s' if n != 1 else ''}"]
        if e.get("spread"):
            lines.append(f"  none of them sent over {100 * SPREAD_MAX_SHARE:.0f} % of it: random (spoofed) source "
                         "addresses; blocking sources will not help, the global limits do the work")
        lines.append(f"  {'source':<26} {'network':<22} {'estimated':>10} {'peak pps':>9}  "
                     f"{'first seen':<8} {'last seen':<8}  protocols/ports")
        for s in e["sources"]:
            lines.append(f"  {_clean(s['source'], 45):<26} {_clean(s['network'], 45):<22} {_n(s['estimated']):>10} "
                         f"{_n(s['peak_pps']):>9}  {_t(s['first'])[11:]:<8} {_t(s['last'])[11:]:<8}  "
                         f"{_what(s)}".rstrip())
        if e["more"]:
            lines.append(f"  ... and {e['more']} more rows (--top)")
    if rep.get("bans"):
        lines += ["", "bans (escalation, UTC):"]
        for b in rep["bans"]:
            what = (f"over {', '.join(safe(str(g)) for g in b.get('groups') or []) or 'a per-source limit'}, until "
                    f"{_t(b.get('expires'))[11:]}") if b["type"] == "ban" else safe(str(b.get("why", "")))
            lines.append(f"  {_t(b.get('ts'))}  {b['type']:<5}  {_clean(b.get('src'), 45):<26} {what}")
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
    return "\n".join(lines + skipped_note(rep.get("skipped_lines"))) + "\n"


CSV_COLUMNS = ("episode_rule", "episode_start", "episode_end", "episode_condemned", "episode_peak_pps",
               "source", "network", "addresses", "estimated", "sampled", "first_seen", "last_seen",
               "peak_pps", "protocols", "ports")


def _iso(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if ts else ""


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> Any:
    """A value safe to open in a spreadsheet: numbers as they are (-3 is a number, not a formula);
    text reduced to the safe alphabet and, as OWASP has it, quoted when it starts like a formula."""
    if isinstance(value, (int, float)) or value is None:
        return "" if value is None else value
    text = _clean(value, 80)
    return "'" + text if text[:1] in _FORMULA_STARTS else text


def format_csv(rep: dict[str, Any]) -> str:
    """One row per source (or shared network) per episode, with the episode's figures repeated, for
    spreadsheets. An episode with no sampled source is one row with the source columns empty."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for e in rep["episodes"]:
        head = [_cell(v) for v in (e["rule"], _iso(e["start"]), _iso(e["end"]), e["condemned"], e["peak_pps"])]
        for s in e.get("sources") or [None]:
            if s is None:
                w.writerow(head + [""] * (len(CSV_COLUMNS) - len(head)))
                continue
            w.writerow(head + [_cell(v) for v in (s["source"], s["network"], s["addresses"], s["estimated"],
                                                  s["sampled"], _iso(s["first"]), _iso(s["last"]), s["peak_pps"],
                                                  " ".join(s["protos"]), " ".join(str(p) for p in s["dports"]))])
    return out.getvalue()
