"""The iptables backend of a plan: own chains and jumps per IP version, ipsets, one ``*-restore
--noflush`` per family (base.Backend). Imported only when a policy says ``backend: iptables``."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ..drift import Drift, Reason
from ..fingerprints import of_ipt
from ..model.ruleset import AddrSet, RuleSet
from ..persource import key_of
from ..render.ipt import Ipset as IpsetSpec
from ..render.ipt import VALVE_ELEMENTS, Render
from ..render.ipt_names import ipset_name
from ..render.ids import id_and_label
from ..scratch import in_scratch_netns
from ..sync import ipt as sync_ipt
from .ipset import Ipset
from .ipt import Ipt, IptLive
from .ipt import read_live as read_ipt_live
from .kinds import IPTABLES, Installed, label
from .nft import Nft


@dataclass(frozen=True)
class IptBackend:
    flavour: str  # "nft" or "legacy"
    renders: dict[int, Render]  # per IP version
    ipsets: tuple[IpsetSpec, ...]
    forgets_sources = True  # ipsets cannot refresh a timeout without zeroing the count
    reads_again_what_changed = False  # ``previous`` stands for the families and ipsets a partial read leaves out

    @property
    def installed(self) -> Installed:
        return IPTABLES.installed(self.flavour)

    @property
    def name(self) -> str:
        return label(self.installed)

    @property
    def polled(self) -> bool:
        """iptables-legacy tables raise no nftables events: the watcher polls their fingerprint."""
        return self.flavour == "legacy"

    @property
    def allow_ipsets(self) -> list[str]:
        return [s.name for s in self.ipsets if s.members is not None]

    # --- the live state and the transaction ----------------------------------------------
    def live_key(self) -> tuple:
        return (self.name, tuple(self.allow_ipsets))

    def read_live(self, nft: Nft | None, families: tuple[int, ...] = (4, 6), previous: Any = None,
                  sets_unchanged: bool = False, written: Mapping[str, str] | None = None) -> IptLive:
        """``previous`` (a full read of the same backend) supplies what ``families`` leaves out."""
        if nft is None:
            return IptLive({}, {}, {}, {})
        prev = previous if isinstance(previous, IptLive) else None
        return read_ipt_live(self.flavour, self.allow_ipsets, families, prev)

    def transaction(self, live: IptLive, families: tuple[int, ...] = (4, 6),
                    fingerprints: dict[str, str] | None = None) -> sync_ipt.IptTransaction:
        return sync_ipt.build(self.flavour, self.renders, list(self.ipsets), live.tables, live.ipsets, live.members,
                              families, live.saved, fingerprints)

    def check(self, tx: sync_ipt.IptTransaction, nft: Nft) -> str:
        """Have the kernel check the transaction without changing this namespace. ``*-restore --test``
        needs every set a rule names to exist; when the transaction creates sets, the check runs in a
        scratch network namespace instead (where our old jumps, which the transaction deletes, do not
        exist: those ``-D`` lines are left out there). Returns how it was checked."""
        if not tx.creates:
            Ipt(tx.flavour).restore_families(tx.restore, test=True)
            return "checked by *-restore --test"

        def load() -> str:
            Ipset.restore(tx.ipset_prepare)
            Ipt(tx.flavour).restore_families({v: "".join(ln + "\n" for ln in t.splitlines() if not ln.startswith("-D "))
                                              for v, t in tx.restore.items()})
            return "ok"
        try:
            in_scratch_netns(load)
        except PermissionError:
            return "not checked by the kernel: it creates ipsets, and no scratch namespace can be made here"
        return "checked in a scratch network namespace (new ipsets)"

    def send(self, tx: sync_ipt.IptTransaction, nft: Nft) -> None:
        Ipset.restore(tx.ipset_prepare)
        Ipt(tx.flavour).restore_families(tx.restore)
        Ipset.restore(tx.ipset_cleanup)

    def installed_text(self, tx: sync_ipt.IptTransaction, nft: Nft) -> str:
        return tx.text()

    def tx_data(self, tx: sync_ipt.IptTransaction) -> Any:
        return tx.text()

    def where(self, plan) -> tuple[dict[str, int], str]:
        hooks: dict[str, int] = {}  # built-in chain -> how many of its first rules are our jumps
        for t in next(iter(self.renders.values())).tables.values():
            for jump in t.jumps:
                hooks[f"{t.name} {jump.chain}"] = hooks.get(f"{t.name} {jump.chain}", 0) + 1
        return hooks, "jumps first in " + ", ".join(f"{k}" + (f" (rules 1-{n})" if n > 1 else "")
                                                    for k, n in hooks.items()) + f" ({plan.backend_reason})"

    # --- drift -----------------------------------------------------------------------------
    def diff(self, plan, live: IptLive) -> Drift | None:
        """Our chains hold exactly the rendered rule IDs, our jumps are rules 1..k of their built-in
        chain in render order, and our ipsets have the rendered definitions (allowlists: members)."""
        reasons: list[Reason] = []
        culprit = None
        families: set[int] = set()
        rewrites: list[Reason] = []
        for version, render in self.renders.items():
            saved = live.saved.get(version, {})
            before = len(reasons) + len(rewrites)
            want = render.rule_ids()
            for tname, table in render.tables.items():
                chains, rules = saved.get(tname, ([], []))
                have: dict[str, list[str | None]] = {}
                for r in rules:
                    have.setdefault(r.chain, []).append(r.rule_id)
                for chain in table.chains:
                    where = f"v{version} {tname} {chain}"
                    if chain not in chains:
                        reasons.append(Reason("chain_missing", f"{where} is missing"))
                    elif have.get(chain, []) != want[chain]:
                        kept = sum(1 for i in have.get(chain, []) if i in want[chain])
                        rewrites.append(Reason("rules_changed", f"{where}: {kept} of {len(want[chain])} rules intact"))
                order: dict[str, int] = {}
                for jump in table.jumps:
                    builtin = jump.chain
                    must = order[builtin] = order.get(builtin, 0) + 1  # our jumps are rules 1..k, in order
                    in_builtin = [r for r in rules if r.chain == builtin]
                    positions = [r.position for r in in_builtin if r.rule_id == jump.id]
                    where = f"v{version} {tname} {builtin}"
                    if not positions:
                        reasons.append(Reason("jump", f"jump in {where} to {jump.target} is missing"))
                    elif positions != [must]:
                        copies = f" ({len(positions)} copies)" if len(positions) > 1 else ""
                        reasons.append(Reason("jump", f"jump in {where} to {jump.target} is at position "
                                                      f"{positions[0]}, must be {must}{copies}"))
                        ahead = next((r for r in in_builtin[:positions[0] - 1] if r.rule_id is None), None)
                        if ahead is not None:
                            culprit = culprit or f"{_target(ahead.line)} in {where}"
            stale = {t: lt for t, lt in live.tables.get(version, {}).items()
                     if t not in render.tables or set(lt.chains) - set(render.tables[t].chains)}
            reasons += [Reason("unexpected_objects", f"v{version} {t}: stale nodeguard chains or jumps") for t in stale]
            if len(reasons) + len(rewrites) > before:
                families.add(version)
        for s in self.ipsets:
            have_set = live.ipsets.get(s.name)
            if have_set is None:
                reasons.append(Reason("object_missing", f"ipset {s.name} is missing"))
            elif not have_set.matches(s):
                reasons.append(Reason("object_redefined", f"ipset {s.name} has another definition"))
            elif s.members is not None and not sync_ipt.same_members(live.members.get(s.name, []), s.members):
                reasons.append(Reason("allowlist", f"ipset {s.name} members differ"))
        reasons += [Reason("unexpected_objects", f"unexpected ipset {n}")
                    for n in live.ipsets if n not in {s.name for s in self.ipsets}]
        if not reasons and not rewrites:
            return None
        return Drift((*reasons, *rewrites), culprit, frozenset(families), in_place=not reasons)

    def fingerprints(self, live: IptLive) -> dict[str, str]:
        return of_ipt(live.saved)

    def refill_only(self, fingerprints: dict[str, str] | None) -> bool:
        return False

    def needs_full_read(self, live: IptLive, families: tuple[int, ...], fingerprints: dict[str, str] | None) -> bool:
        # a repair that rebuilds chains needs the ipsets they use as they are now (a partial read keeps old ones)
        return not self.transaction(live, families, fingerprints).moves_jumps_only

    def status_part(self, plan, nft: Nft, live_state: IptLive) -> dict[str, Any]:
        jumps, rules, installed = [], [], False
        for version, render in self.renders.items():
            live = live_state.saved.get(version, {})
            for tname, table in render.tables.items():
                chains, saved = live.get(tname, ([], []))
                installed = installed or any(c in chains for c in table.chains)
                must: dict[str, int] = {}
                for jump in table.jumps:
                    builtin = jump.chain
                    must[builtin] = must.get(builtin, 0) + 1  # our jumps are rules 1..k, in render order
                    in_builtin = [r for r in saved if r.chain == builtin]
                    pos = next((r.position for r in in_builtin if r.rule_id == jump.id), None)
                    jumps.append({"family": f"v{version}", "table": tname, "chain": builtin, "position": pos,
                                  "must": must[builtin], "target": jump.target,
                                  "above": [r.line for r in in_builtin[: (pos or 1) - 1] if r.rule_id is None]})
                for r in saved:
                    if r.chain in table.chains:
                        comment = r.line.split('--comment "', 1)[1].split('"', 1)[0] if "--comment" in r.line else ""
                        rules.append({"chain": f"v{version} {tname} {r.chain}", **id_and_label(comment),
                                      "packets": r.packets, "bytes": r.bytes})
        # a meter's capacity is its admission ipset (see render/ipt.py); connection limits have no set
        meters = _fill([s for s in plan.ruleset.sets if s.kind != "allow"], live_state.ipsets)
        return {"installed": installed, "jumps": jumps, "rules": rules, "meters": meters}

    # --- counters and sets -------------------------------------------------------------------
    def condemning_ids(self, ruleset: RuleSet) -> dict[str, tuple[str, str]]:
        return {rid: key for render in self.renders.values() for rid, key in render.condemning.items()}

    def ban_ids(self, ruleset: RuleSet) -> set[str]:
        return {rid for render in self.renders.values() for rid in render.bans}

    def tally_ids(self, ruleset: RuleSet, tally: str) -> set[str]:
        return {rid for render in self.renders.values() for rid, t in render.tallies.items() if t == tally}

    def rule_counters(self, live: IptLive | None = None) -> Iterator[tuple[str | None, int, int]]:
        saved = live.saved if live is not None else {v: Ipt(self.flavour).tables(v) for v in self.renders}
        for tables in saved.values():
            for _chains, rules in tables.values():
                for r in rules:
                    yield r.rule_id, r.packets, r.bytes

    def meter_fill(self, sets: list[AddrSet]) -> list[dict]:
        return _fill(sets, Ipset.live())

    def source_counts(self, nft: Nft, s: AddrSet) -> Iterator[tuple[int, int]]:
        return ((key_of(addr.split("/")[0]), packets) for addr, (packets, _bytes) in Ipset.counts(ipset_name(s)).items())

    def forget_sources(self, dels: Iterable[tuple[AddrSet, str]]) -> bool:
        """ipsets cannot refresh a timeout without zeroing the count: quiet sources are removed."""
        lines = [f"del {ipset_name(s)} {src} -exist" for s, src in dels]
        Ipset.restore("\n".join(lines) + "\n" if lines else "")
        return True

    def set_members(self, nft: Nft, s: AddrSet) -> set[str]:
        return {a.split("/")[0] for a in Ipset.members(ipset_name(s))}

    def installed_sets(self, nft: Nft, sets: dict[Any, AddrSet]) -> dict[Any, str]:
        live = Ipset.names()
        return {k: ipset_name(s) for k, s in sets.items() if ipset_name(s) in live}

    def timeouts(self, nft: Nft, name: str) -> list[tuple[str, int | None]]:
        return [(addr.split("/")[0], left) for addr, left in Ipset.timeouts(name).items()]

    def delete_elements(self, nft: Nft, names: dict[tuple[str, int], str],
                        targets: list[tuple[str, int]] | None) -> None:
        lines = []
        for (_what, version), name in names.items():
            if targets is None:
                lines.append(f"flush {name}")
            else:
                lines += [f"del {name} {src} -exist" for src, v in targets if v == version]
        Ipset.restore("\n".join(lines) + "\n" if lines else "")

    def add_elements(self, nft: Nft, s: AddrSet, elements: Iterable[str], timeout_s: int) -> None:
        name = ipset_name(s)  # -exist: a member already there gets the new timeout
        Ipset.restore("".join(f"add {name} {e} timeout {timeout_s} -exist\n" for e in elements))

    def valve_elements(self, s: AddrSet) -> tuple[str, ...]:
        return VALVE_ELEMENTS[s.version]

    def ban(self, nft: Nft, name: str, prefix: str, for_s: int | None, reason: str) -> None:
        # -exist: a ban made again takes the new timeout (0: none); an ipset member keeps no reason
        Ipset.restore(f"add {name} {prefix} timeout {for_s or 0} -exist\n")

    def restore_elements(self, nft: Nft, name: str, rows: list[tuple[str, int | None, str]]) -> None:
        # -exist: one already there is no error (its timeout becomes the snapshot's, which is as old)
        Ipset.restore("".join(f"add {name} {key} timeout {left or 0} -exist\n" for key, left, _why in rows))

    def restore_timed(self, nft: Nft, name: str, version: int, rows: list[tuple[str, int]]) -> None:
        self.restore_elements(nft, name, [(key, left, "") for key, left in rows])

    def manual_bans(self, nft: Nft, name: str) -> list[tuple[str, int | None, str]]:
        return [(m, left or None, "") for m, left in Ipset.timeouts(name).items()]

    def valve_ids(self, ruleset: RuleSet) -> set[str]:
        return {rid for render in self.renders.values() for rid in render.valve}


def _fill(sets: list[AddrSet], live: dict) -> list[dict]:
    return [{"set": s.base, "kind": s.kind, "kernel_name": ipset_name(s),
             "elements": live[ipset_name(s)].entries if ipset_name(s) in live else 0, "size": s.size}
            for s in sets if s.kind != "conns"]


def _target(save_line: str) -> str:
    """What a competing rule does: its jump target, else its comment, else the rule itself."""
    parts = save_line.split()
    if "-j" in parts:
        return parts[parts.index("-j") + 1]
    return save_line[:60]
