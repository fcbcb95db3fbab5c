"""The iptables transaction: what ``apply`` sends and ``--dry-run`` prints, built from the live state.

Three steps, each atomic on its own, in an order that never leaves a rule pointing at nothing:
1. ``ipset restore``: create the sets the render adds; a set whose definition changed, and an
   allowlist whose contents changed, is built under a temporary name and swapped in (the rules
   keep their set names); an unchanged set keeps its contents (trusted sources, admitted sources).
2. one ``*-restore --noflush`` per family: declare (flush) our chains and refill them, put our
   jumps at rules 1..k of their built-in chain (in render order: in raw PREROUTING the ban check,
   then the stateless chain), delete chains the render no longer has. hashlimit tables whose parameters are
   unchanged keep their names, so the kernel keeps their buckets.
3. ``ipset restore`` again: destroy our sets no rule refers to any more.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from ..backend.ipset import LiveIpset
from ..backend.ipt import LiveTable
from ..backend.kinds import IPTABLES, label
from ..fingerprints import ipt_body, ipt_key
from ..render.ipt import Ipset, Line, Render
from ..render.ipt_names import MAX_IPSET

# Every line we hand to a restore tool is built from validated names; this is the second lock.
_SAFE_LINE = re.compile(r'^[-A-Za-z0-9 _.,:/+=()<>!*"\[\]]*$')


@dataclass(frozen=True)
class IptTransaction:
    flavour: str
    ipset_prepare: str
    restore: dict[int, str]  # IP version -> *-restore --noflush input
    ipset_cleanup: str
    refilled: frozenset[str] = frozenset()  # "v4 raw NODEGUARD-PRE": chains it (re)writes or deletes
    recreates = False  # its ipsets are only made anew when missing or redefined (drift says so)
    changes_sets = True  # nothing is read back of what ipsets hold but allowlists, which every full read reads
    filled: frozenset[str] = frozenset()  # no set of a deny list (an nft table's only)
    creates: tuple[str, ...] = ()  # the ipsets ipset_prepare creates for the rules (not the ones it swaps in)

    @property
    def moves_jumps_only(self) -> bool:
        """It only puts our jumps back in place: every rule body stays as the kernel listed it."""
        return not (self.ipset_prepare or self.ipset_cleanup or self.refilled)

    def text(self) -> str:
        out = "# 1. ipset restore\n" + (self.ipset_prepare or "# (nothing)\n")
        for version, text in self.restore.items():
            out += f"# 2. {'ip' if version == 4 else 'ip6'}tables-{self.flavour}-restore --noflush\n"
            out += text or "# (nothing)\n"
        return out + "# 3. ipset restore\n" + (self.ipset_cleanup or "# (nothing)\n")

    def json(self) -> dict:
        """For ``check --json``: the restore files as text, under the backend's name."""
        return {"backend": label(IPTABLES.installed(self.flavour)), "transaction": self.text()}

    @property
    def empty(self) -> bool:
        return not (self.ipset_prepare or any(self.restore.values()) or self.ipset_cleanup)


def _checked(lines: list[str]) -> str:
    for line in lines:
        if not _SAFE_LINE.match(line) or line.count('"') % 2:
            raise ValueError(f"refusing to send an unsafe line to a restore tool: {line!r}")
    return "\n".join(lines) + "\n" if lines else ""


def restore_text(render: Render | None, live: dict[str, LiveTable], saved: dict | None = None,
                 fingerprints: dict[str, str] | None = None, version: int = 4) -> str:
    return _restore(render, live, saved, fingerprints, version)[0]


def _restore(render: Render | None, live: dict[str, LiveTable], saved: dict | None = None,
             fingerprints: dict[str, str] | None = None, version: int = 4) -> tuple[str, list[str]]:
    """(restore text, the chains it refills or deletes, as "v4 raw CHAIN"). Remove our old jumps and
    stale chains, write ours. ``render`` None: the uninstall script.

    With ``saved`` (``Ipt.tables()`` of this family) and ``fingerprints`` (the watcher's), a chain
    that holds exactly the rendered rule ids with the bodies we installed is left alone (its
    counters too), and so are a built-in chain's jumps when they already are its rules 1..k in render
    order with the bodies we installed and nothing else of ours is in it; otherwise all our jumps in
    that built-in chain are deleted and inserted again at 1..k. Without fingerprints everything of
    ours is rewritten. One COMMIT per table; tables with nothing of ours to do are skipped."""
    out: list[str] = []
    refilled: list[str] = []
    saved = saved or {}

    def same(rules) -> bool:
        return fingerprints is not None and all(
            fingerprints.get(ipt_key(version, r.rule_id)) == ipt_body(version, r.line) for r in rules)
    names = sorted(set(live) | (set(render.tables) if render else set()))
    for tname in names:
        want = render.tables.get(tname) if render else None
        have = live.get(tname, LiveTable())
        if not want and not have.chains and not have.jump_lines:
            continue
        live_rules = saved.get(tname, ([], []))[1]
        have_ids = _live_ids(live_rules)
        by_chain: dict[str, list] = {}
        for r in live_rules:
            by_chain.setdefault(r.chain, []).append(r)
        want_ids = render.rule_ids() if want else {}
        new_chains = want.chains if want else []
        stale = [c for c in have.chains if c not in new_chains]
        changed = [c for c in new_chains if c not in have.chains or have_ids.get(c, []) != want_ids[c]
                   or stale or not same(by_chain.get(c, []))]
        by_builtin: dict[str, list[Line]] = {}  # our jumps: rules 1..k of their built-in chain, in render order
        for jump in want.jumps if want else []:
            by_builtin.setdefault(jump.chain, []).append(jump)
        redo = {b for b, jumps in by_builtin.items()
                if have_ids.get(b, [])[:len(jumps)] != [j.id for j in jumps]
                or sum(1 for ln in have.jump_lines if _builtin(ln) == b) != len(jumps)
                or not same([r for r in by_chain.get(b, []) if r.rule_id in {j.id for j in jumps}])}
        redo |= {_builtin(ln) for ln in have.jump_lines if _builtin(ln) not in by_builtin}
        lines = [f":{c} - [0:0]" for c in changed + stale]  # declaring a chain flushes it
        lines += ["-D" + line[2:] for line in have.jump_lines if _builtin(line) in redo]
        lines += [f"-I {b} {i} {j.spec}" for b, jumps in by_builtin.items() if b in redo
                  for i, j in enumerate(jumps, 1)]
        if want:
            lines += [f"-A {r.chain} {r.spec}" for r in want.rules if r.chain in changed]
        lines += [f"-X {c}" for c in stale]
        refilled += [f"v{version} {tname} {c}" for c in changed + stale]
        if lines:
            out += [f"*{tname}", *lines, "COMMIT"]
    return _checked(out), refilled


def _builtin(save_line: str) -> str:
    return save_line.split()[1]


def _live_ids(rules: list) -> dict[str, list]:
    """chain -> rule ids in order (foreign rules: None), built-in chains included."""
    ids: dict[str, list] = {}
    for r in rules:
        ids.setdefault(r.chain, []).append(r.rule_id)
    return ids


def same_members(live: list[str], want: tuple[str, ...]) -> bool:
    """ipset lists a /32 (/128) member of a hash:net set as the bare address; compare networks."""
    def norm(x: str):
        try:
            return ipaddress.ip_network(x, strict=False)
        except ValueError:
            return x  # ports
    return {norm(x) for x in live} == {norm(x) for x in want}


def ipset_scripts(want: list[Ipset], live: dict[str, LiveIpset], live_members: dict[str, list[str]]
                  ) -> tuple[str, str, tuple[str, ...]]:
    """(prepare, cleanup) ``ipset restore`` scripts, and the sets prepare creates (for the rules to use)."""
    prepare: list[str] = []
    creates: list[str] = []
    for s in want:
        have = live.get(s.name)
        members_differ = s.members is not None and (have is None or not same_members(live_members.get(s.name, []),
                                                                                      s.members))
        if have is None:
            prepare.append(f"create {s.name} {s.create_args()}")
            creates.append(s.name)
            prepare += [f"add {s.name} {n}" for n in s.members or ()]
        elif not have.matches(s) or members_differ:
            tmp = f"{s.name[:MAX_IPSET - 4]}-NEW"
            prepare += [f"create {tmp} {s.create_args()} -exist", f"flush {tmp}"]
            prepare += [f"add {tmp} {n}" for n in s.members or ()]
            prepare += [f"swap {tmp} {s.name}", f"destroy {tmp}"]
    wanted = {s.name for s in want}
    cleanup = [f"destroy {name}" for name in sorted(live) if name not in wanted]
    return _checked(prepare), _checked(cleanup), tuple(creates)


def build(flavour: str, renders: dict[int, Render], want_sets: list[Ipset], live_tables: dict[int, dict],
          live_sets: dict[str, LiveIpset], live_members: dict[str, list[str]],
          families: tuple[int, ...] = (4, 6), saved: dict[int, dict] | None = None,
          fingerprints: dict[str, str] | None = None) -> IptTransaction:
    prepare, cleanup, creates = ipset_scripts(want_sets, live_sets, live_members)
    done = {v: _restore(renders[v], live_tables.get(v, {}), (saved or {}).get(v), fingerprints, v) for v in families}
    return IptTransaction(flavour, prepare, {v: text for v, (text, _) in done.items()}, cleanup,
                          frozenset(c for _, chains in done.values() for c in chains), creates=creates)


def uninstall(flavour: str, live_tables: dict[int, dict]) -> IptTransaction:
    return IptTransaction(flavour, "", {v: restore_text(None, t) for v, t in live_tables.items()}, "")
