"""``nodeguard tune``: thresholds fitted to this node's own traffic, proposed, never written.

What it reads: the attack log's ``observed`` records, which the sampler writes each window in
monitor mode (``sampler.observe``): the busiest sources of each threat with their packet rate,
counted by the kernel for every packet (not sampled), and whether each had completed a TCP
handshake. A source that completed a handshake is legitimate (a blind spoofer cannot); the
proposal for a threat's per-source limit is the busiest legitimate source's peak rate times
``--margin``, so that no such source would have been limited, and the table shows what the
proposal would still have dropped (the floods).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import yaml

from .policy.rates import MAX_RATE_PER_S, Rate
from .policy.schema import Policy
from .records import skipped_note


@dataclass
class Threat:
    group: str  # "syn-flood", "icmp-flood", "limit-<name>"
    current: Rate
    legit_peak: float = 0.0
    legit_sources: int = 0
    windows: list = None  # (src, pps, seconds, handshake) of every observed record

    def proposed(self, margin: float) -> Rate | None:
        """The busiest legitimate source's peak times ``margin``, within what a policy may say
        (rates.MAX_RATE_PER_S): never a proposal that ``check`` would refuse."""
        if not self.legit_sources:
            return None
        return Rate(max(1, min(MAX_RATE_PER_S, math.ceil(self.legit_peak * margin))), "second")

    def would_drop(self, rate_per_s: float) -> tuple[int, int]:
        """(packets over ``rate_per_s`` in the observed windows, distinct sources over it)."""
        packets, sources = 0, set()
        for src, pps, seconds, _hs in self.windows:
            if pps > rate_per_s:
                packets += round((pps - rate_per_s) * seconds)
                sources.add(src)
        return packets, len(sources)


def threats(policy: Policy) -> dict[str, Threat]:
    out = {"icmp-flood": Threat("icmp-flood", policy.icmp.per_source, windows=[]),
           "syn-flood": Threat("syn-flood", policy.syn.per_source, windows=[])}
    for lim in policy.limits:
        out[f"limit-{lim.name}"] = Threat(f"limit-{lim.name}", lim.per_source, windows=[])
    return out


def analyse(policy: Policy, records: Iterable[dict], since: float | None, until: float | None) -> dict[str, Threat]:
    found = threats(policy)
    legit: dict[str, set] = {g: set() for g in found}
    for r in records:
        if r.get("type") != "observed" or r.get("rule") not in found:
            continue
        if (since and r["end"] < since) or (until and r["start"] > until):
            continue
        t = found[r["rule"]]
        t.windows.append((r["src"], float(r["pps"]), r["end"] - r["start"], bool(r.get("handshake"))))
        if r.get("handshake"):
            legit[r["rule"]].add(r["src"])
            t.legit_peak = max(t.legit_peak, float(r["pps"]))
    for g, t in found.items():
        t.legit_sources = len(legit[g])
    return found


def proposal(policy: Policy, found: dict[str, Threat], margin: float) -> dict:
    """JSON-ready: per threat the figures, and the YAML patch of the proposal."""
    rows, patch = [], {}
    for g, t in found.items():
        new = t.proposed(margin)
        now_drop = t.would_drop(t.current.per_s)
        new_drop = t.would_drop(new.per_s) if new else now_drop
        rows.append({"threat": g, "current": str(t.current), "legit_sources": t.legit_sources,
                     "legit_peak_pps": t.legit_peak, "proposed": str(new) if new else None,
                     "observed_windows": len(t.windows),
                     "current_would_drop": {"packets": now_drop[0], "sources": now_drop[1]},
                     "proposed_would_drop": {"packets": new_drop[0], "sources": new_drop[1]}})
        if not new:
            continue
        if g == "icmp-flood":
            patch.setdefault("icmp", {})["per_source"] = str(new)
        elif g == "syn-flood":
            patch.setdefault("syn", {})["per_source"] = str(new)
    limits = []
    for lim in policy.limits:
        new = found[f"limit-{lim.name}"].proposed(margin)
        if new:
            limits.append({"name": lim.name, "per_source": str(new)})
    if limits:
        patch["limits"] = limits  # merge by name into your limits list: only per_source changes
    return {"margin": margin, "threats": rows, "patch": patch}


def format_text(prop: dict) -> str:
    lines = [f"{'threat':<22} {'current':>14} {'legit peak':>11} {'proposed':>14} {'would drop now':>16} "
             f"{'with proposal':>16}"]
    for r in prop["threats"]:
        cur, new = r["current_would_drop"], r["proposed_would_drop"]
        lines.append(f"{r['threat']:<22} {r['current']:>14} {r['legit_peak_pps']:>9.1f}/s "
                     f"{r['proposed'] or 'keep':>14} {cur['packets']:>9} ({cur['sources']:>3} src) "
                     f"{new['packets']:>9} ({new['sources']:>3} src)")
        if not r["legit_sources"]:
            lines.append(f"  {r['threat']}: no source that completed a TCP handshake was observed "
                         f"({r['observed_windows']} observations): keep the current limit")
    lines += ["", "# proposed policy patch (nothing was written; review, then merge into your policy):",
              yaml.safe_dump(prop["patch"], sort_keys=False).rstrip() if prop["patch"] else "# (no change)"]
    return "\n".join(lines + [f"# {line}" for line in skipped_note(prop.get("skipped_lines"))]) + "\n"
