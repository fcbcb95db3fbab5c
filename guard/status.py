"""What is installed now, read from the kernel, next to what the policy renders to."""

from __future__ import annotations

from typing import Any

from . import model
from .apply import Plan
from .backend.nft import Nft, objects
from .drift import diff_live, read_live
from .render.ids import id_from_comment
from .render.nft import FAMILY


def collect(nft: Nft, plan: Plan, watcher_state: dict | None = None) -> dict[str, Any]:
    drift = diff_live(plan, *read_live(nft))
    listing = nft.list(f"table {FAMILY} {model.TABLE}")  # with meter elements, for fill levels
    chains = objects(listing, "chain")
    sets = objects(listing, "set")
    return {
        "installed": bool(listing),
        "in_sync": bool(listing) and drift is None,
        "drift": str(drift) if drift else None,
        "watcher": watcher_state,
        "interfaces": list(plan.ruleset.interfaces),
        "hooks": [
            {"chain": c["name"], "hook": c["hook"], "priority": c["prio"]} for c in chains if c.get("hook")
        ],
        "planned_priorities": {"stateless": plan.priorities.stateless, "stateful": plan.priorities.stateful,
                               "notes": list(plan.priorities.notes)},
        "foreign_chains": [
            {"family": f.family, "table": f.table, "chain": f.chain, "hook": f.hook, "priority": f.priority}
            for f in plan.foreign
        ],
        "rules": [_rule(r) for r in objects(listing, "rule")],
        "meters": [
            {"set": s["name"], "elements": len(s.get("elem", [])), "size": s["size"]}
            for s in sets if "size" in s
        ],
    }


def _rule(r: dict) -> dict:
    counter = next((e["counter"] for e in r["expr"] if "counter" in e), {"packets": 0, "bytes": 0})
    comment = r.get("comment") or ""
    return {
        "chain": r["chain"],
        "id": id_from_comment(comment),
        "label": comment.split(" ", 1)[1] if " " in comment else comment,
        "packets": counter["packets"],
        "bytes": counter["bytes"],
    }


def format_text(st: dict[str, Any]) -> str:
    if not st["installed"]:
        return "nodeguard: not installed (table inet nodeguard absent)\n"
    lines = [f"nodeguard: installed, {'in sync with the policy' if st['in_sync'] else 'DIFFERS from the policy'}"]
    if st["drift"]:
        lines.append(f"  drift: {st['drift']}")
    w = st.get("watcher")
    if w:
        alive = "running" if w.get("alive") else "not running"
        lines.append(f"watcher: {alive} (pid {w.get('pid')}), {w.get('repairs', 0)} repairs, "
                     f"last: {w.get('last_reason') or '-'}")
        if w.get("contested_by"):
            lines.append(f"  CONTESTED by {w['contested_by']}: repairs damped, next in {w.get('backoff_s', 0):.0f} s")
    lines += [f"protected interfaces: {', '.join(st['interfaces'])}", "", "prerouting hook, in order:"]
    hooks = [(h["priority"], f"inet nodeguard {h['chain']}", "nodeguard") for h in st["hooks"]]
    hooks += [(f["priority"], f"{f['family']} {f['table']} {f['chain']}", "foreign") for f in st["foreign_chains"]]
    for prio, name, owner in sorted(hooks):
        lines.append(f"  {prio:>6}  {name:<50} {owner}")
    for note in st["planned_priorities"]["notes"]:
        lines.append(f"  note: {note}")
    lines += ["", f"{'packets':>12} {'bytes':>14}  chain / rule"]
    for r in st["rules"]:
        lines.append(f"{r['packets']:>12} {r['bytes']:>14}  {r['chain']}: {r['label']}")
    lines += ["", "meters (per-source state):"]
    for m in st["meters"]:
        pct = 100.0 * m["elements"] / m["size"] if m["size"] else 0.0
        lines.append(f"  {m['set']:<28} {m['elements']:>8} / {m['size']:<8} {pct:5.1f}% full")
    return "\n".join(lines) + "\n"
