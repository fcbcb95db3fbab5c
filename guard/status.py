"""What is installed now, read from the kernel, next to what the policy renders to."""

from __future__ import annotations

from typing import Any

from . import datapath, sysctls
from .apply import Plan, read_state
from .backend.nft import Nft
from .counters import bans_counted, drops_by_group, engaged_ports
from .drift import diff_plan
from .model.banning import BANNED
from .model.build import STATELESS_CHAIN, SYN_GROUP
from .model.matches import DstPorts, OverLimit, SourceInSet
from .model.ruleset import RuleSet
from .probe import HOOKS


def collect(nft: Nft, plan: Plan, watcher_state: dict | None = None) -> dict[str, Any]:
    live = read_state(plan, nft)
    # the running watcher's record of our rules' bodies catches a rule rewritten under our comment
    drift = diff_plan(plan, nft, live, (watcher_state or {}).get("fingerprints") if (watcher_state or {}).get("alive")
                      else None)
    st: dict[str, Any] = {
        "backend": plan.backend.name,
        "backend_reason": plan.backend_reason,
        "drift": str(drift) if drift else None,
        "watcher": watcher_state,
        "sampler": {"transport": plan.sampling.transport if plan.sampling else None,
                    "reason": plan.sampling_reason},
        "interfaces": list(plan.ruleset.interfaces),
        "failsafe": failsafe_entries(plan.ruleset),
        "planned_priorities": {"stateless": plan.priorities.stateless, "stateful": plan.priorities.stateful,
                               "notes": list(plan.priorities.notes)},
        "synproxy": ({"ports_v4": list(plan.synproxy.ports_v4), "ports_v6": list(plan.synproxy.ports_v6),
                      "wscale": plan.synproxy.wscale, "mss": [plan.synproxy.mss_v4, plan.synproxy.mss_v6],
                      "forwarded": plan.synproxy.forwarded, "engaged": engaged_ports(plan, nft),
                      "engage_over": str(plan.synproxy.engage_over),
                      "hold_s": plan.synproxy.hold_s} if plan.synproxy else None),
        "sysctls": sysctls.check(plan.synproxy),
        # XDP and tc ingress programs that act before our earliest hook (datapath.py)
        "datapath": datapath.detect(plan.ruleset.interfaces).data(),
        "foreign_chains": [
            {"family": f.family, "table": f.table, "chain": f.chain, "hook": f.hook, "priority": f.priority}
            for f in plan.foreign
        ],
    }
    st.update(plan.backend.status_part(plan, nft, live))  # installed, hooks or jumps, rules, meters
    # condemned per rule group ("<group>/monitor": would-be drops), from the condemning rules' counters
    drops = drops_by_group(plan, nft, live)
    st["drops"] = {(g if m == "enforce" else f"{g}/monitor"): c for (g, m), c in drops.items()}
    st["in_sync"] = st["installed"] and drift is None
    st["escalation"] = _escalation(plan, live, st["meters"], drops)
    st["syn_valve"] = _valve(plan, nft) if st["installed"] else None
    return st


def failsafe_entries(rs: RuleSet) -> list[dict[str, Any]]:
    """What the policy never limits, bans or counts, read from the render: one entry per failsafe rule
    (an entry of the policy and an IP version)."""
    sets = {s.name: s for s in rs.sets}
    out = []
    for rule in rs.chain(STATELESS_CHAIN).rules:
        fs = [sets[x.set] for x in rule.matches if isinstance(x, SourceInSet) and sets[x.set].role == "failsafe"]
        ports = [x for x in rule.matches if isinstance(x, DstPorts)]
        if fs and ports:
            out.append({"protocol": ports[0].proto, "cidrs": [str(n) for n in fs[0].elements],
                        "ports": [p if isinstance(p, int) else f"{p[0]}-{p[1]}" for p in ports[0].ports]})
    return out


def failsafe_lines(entries: list[dict[str, Any]]) -> list[str]:
    return [f"failsafe (never limited, banned or counted): {fs['protocol']} {', '.join(map(str, fs['ports']))} "
            f"from {', '.join(fs['cidrs'])}" for fs in entries] or ["failsafe: none"]


def _valve(plan: Plan, nft: Nft) -> dict[str, Any]:
    """The SYN valve (syn.valve): ``auto`` when its rules wait for the engaged flag, which the kernel's
    timed set holds (engaged now: its seconds left); else ``always`` or ``off`` (no backstop rule)."""
    sets = [s for s in plan.ruleset.sets if s.kind == "valve"]
    if not sets:
        always = any(isinstance(x, OverLimit) for c in plan.ruleset.chains for r in c.rules
                     if r.group == SYN_GROUP for x in r.matches)
        return {"mode": "always" if always else "off", "engaged": always, "expires_in_s": None,
                "hold_s": None}
    names = plan.backend.installed_sets(nft, {s.base: s for s in sets})
    left = [t or 0 for name in names.values() for _member, t in plan.backend.timeouts(nft, name)]
    return {"mode": "auto", "engaged": bool(left), "expires_in_s": max(left) if left else None,
            "hold_s": sets[0].timeout_s}


def _escalation(plan: Plan, live, meters: list[dict], drops: dict) -> dict[str, Any] | None:
    """Bans now, bans counted and packets of banned sources dropped; None when nothing escalates."""
    sets = {(s.role, s.version): s for s in plan.ruleset.sets if s.kind == "escalation"}  # the policy's numbers
    version = {s.base: s.version for (role, _v), s in sets.items() if role == "banned"}
    banned = [m for m in meters if m["set"] in version]
    if not banned:
        return None
    return {"banned": sum(m["elements"] for m in banned), "size": banned[0]["size"],
            "banned_v4": sum(m["elements"] for m in banned if version[m["set"]] == 4),
            "banned_v6": sum(m["elements"] for m in banned if version[m["set"]] == 6),
            "bans": bans_counted(plan, live),
            "banned_drops": drops.get((BANNED, "enforce"), {}).get("packets", 0),
            "after_s": sets[("episode", 4)].timeout_s, "gap_s": sets[("over", 4)].timeout_s,
            "ban_s": sets[("banned", 4)].timeout_s}


def _ports(ports: list[int]) -> str:
    return (", ".join(map(str, ports[:12])) + (f" (+{len(ports) - 12} more)" if len(ports) > 12 else "")) or "none"


def format_text(st: dict[str, Any]) -> str:
    bypass = datapath.warnings(datapath.Reading.of(st["datapath"]))
    if not st["installed"]:
        return "\n".join([f"nodeguard: not installed ({st['backend']} backend)", *bypass]) + "\n"
    lines = [f"nodeguard: installed ({st['backend']}; {st['backend_reason']}), "
             f"{'in sync with the policy' if st['in_sync'] else 'DIFFERS from the policy'}", *bypass]
    if st["drift"]:
        lines.append(f"  drift: {st['drift']}")
    w = st.get("watcher")
    if w and w.get("alive"):
        lines.append(f"watcher: running (pid {w.get('pid')}), {w.get('repairs', 0)} repairs, "
                     f"last: {w.get('last_reason') or '-'}")
        if w.get("contested_by"):
            lines.append(f"  CONTESTED by {w['contested_by']}: repairs damped, next in {w.get('backoff_s', 0):.0f} s")
        for note in w.get("notes") or []:
            lines.append(f"  note: {note}")
        if w.get("errors") or w.get("reloads_failed"):
            lines.append(f"  {w.get('errors', 0)} errors (last: {w.get('last_error') or '-'}); "
                         f"reloads ok {w.get('reloads_ok', 0)}, failed {w.get('reloads_failed', 0)}")
    elif w:
        lines.append(f"watcher: NOT RUNNING (last seen pid {w.get('pid')}; its last state is history, not news)")
    else:
        lines.append("watcher: not running")
    sp = st.get("synproxy")
    if sp:
        answer = (f"SYNPROXY (NodePorts too), window scale {sp['wscale']}, mss {sp['mss'][0]}/{sp['mss'][1]}"
                  if sp["forwarded"] else "the listeners' own syncookies")
        lines.append(f"syn defence: ports v4 {_ports(sp['ports_v4'])}, v6 {_ports(sp['ports_v6'])}; engaged ports "
                     f"answered by {answer}")
        lines.append(f"  engaged now on: {_ports(sp['engaged']) if sp['engaged'] else 'no port'} (engages above "
                     f"{sp['engage_over']} SYNs to these ports, stays {sp['hold_s']} s after the flood)")
    valve = st.get("syn_valve")
    if valve and valve["mode"] == "auto":
        lines.append("syn valve: auto, " + (f"ENGAGED (expires in {valve['expires_in_s']} s unless refreshed)"
                                             if valve["engaged"] else "not engaged") +
                     f"; engages while conntrack fails new connections, holds {valve['hold_s']} s")
    elif valve:
        lines.append(f"syn valve: {valve['mode']}")
    for sc in st.get("sysctls", []):
        if not sc["ok"]:
            lines.append(f"  WRONG SYSCTL {sc['name']} = {sc['value']} (want {sc['want']}): {sc['why']}; nodeguard "
                         "changes it only with syn.synproxy.set_sysctls: true")
    smp = st["sampler"]
    lines.append(f"sampling: {smp['transport'] or 'off'} ({smp['reason']})")
    lines.append(f"protected interfaces: {', '.join(st['interfaces'])}")
    lines += failsafe_lines(st["failsafe"])
    lines.append("")
    esc = st.get("escalation")
    if esc:
        lines.append(f"escalation: {esc['banned']} sources banned now (v4 {esc['banned_v4']}, v6 /64s "
                     f"{esc['banned_v6']}; room for {esc['size']}), {esc['bans']} bans and {esc['banned_drops']} "
                     f"packets of banned sources dropped since the rules were installed; a source over a per-source "
                     f"limit for {esc['after_s']} s (no pause of {esc['gap_s']} s) is banned for {esc['ban_s']} s")
    if "hooks" in st:
        for hook in HOOKS:
            hooks = [(h["priority"], f"inet nodeguard {h['chain']}", "nodeguard") for h in st["hooks"]
                     if h["hook"] == hook]
            if not hooks:
                continue
            lines.append(f"{hook} hook, in order:")
            hooks += [(f["priority"], f"{f['family']} {f['table']} {f['chain']}", "foreign")
                      for f in st["foreign_chains"] if f["hook"] == hook]
            lines += [f"  {prio:>6}  {name:<50} {owner}" for prio, name, owner in sorted(hooks)]
        lines += [f"  note: {note}" for note in st["planned_priorities"]["notes"]]
    else:
        lines.append("jumps (ours must be the first rules of each built-in chain, in this order):")
        for j in st["jumps"]:
            where = "MISSING" if j["position"] is None else f"position {j['position']}" + \
                ("" if j["position"] == j["must"] else f", MUST BE {j['must']}")
            lines.append(f"  {j['family']} {j['table']} {j['chain']} -> {j['target']}: {where}")
            lines += [f"      above it: {line}" for line in j["above"]]
    lines += ["", f"{'packets':>12} {'bytes':>14}  chain / rule"]
    lines += [f"{r['packets']:>12} {r['bytes']:>14}  {r['chain']}: {r['label']}" for r in st["rules"]]
    lines += ["", "meters (per-source state):"]
    for m in st["meters"]:
        pct = 100.0 * m["elements"] / m["size"] if m["size"] else 0.0
        lines.append(f"  {m['set']:<28} {m['elements']:>8} / {m['size']:<8} {pct:5.1f}% full")
    return "\n".join(lines) + "\n"
