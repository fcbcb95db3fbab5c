"""The nft backend of a plan: table ``inet nodeguard``, one libnftables transaction (base.Backend)."""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import BackendError, NotFound
from ..fingerprints import of_nft
from ..model.matches import BanSource, ValveEngaged
from ..model.names import base_of
from ..model.ruleset import TABLE, AddrSet, RuleSet
from ..prefixes import address_text
from ..render.ids import id_and_label, id_from_comment
from ..render.nft import FAMILY, VALVE_ELEMENTS, NftObjects, PrefixElements, render_chain_rules
from ..sync import nft as sync_nft
from . import nft_fill
from .kinds import NFT
from .nfnetlink import genid, nft_set_sizes
from .nft import Nft, NftLive, objects, read_live

if TYPE_CHECKING:
    from ..drift import Drift
    from .base import Key


@dataclass(frozen=True)
class NftBackend:
    objects: NftObjects
    name: str = "nft"
    flavour: str | None = None
    polled = False  # every change raises an nftables event
    forgets_sources = False  # the counts sets' elements time out by themselves
    reads_again_what_changed = True  # a full read takes what did not change from the previous one (read_live)
    installed = NFT.installed()

    # --- the live state and the transaction ----------------------------------------------
    def live_key(self) -> tuple:
        return (self.name,)

    def read_live(self, nft: Nft | None, families: tuple[int, ...] = (4, 6), previous: Any = None,
                  sets_unchanged: bool = False, written: Mapping[str, str] | None = None) -> NftLive:
        """``previous`` (the caller's last read) stands for what cannot be read or need not be again: the
        objects of our table made dormant (nft 1.0.6 cannot list it), the deny sets' probes while the
        ruleset's generation is the same, or the caller saw no set of our table change
        (``sets_unchanged``: its events). ``written``: deny sets whose elements the caller's events saw
        another process add or delete (-> who): refilled whatever the probe finds.

        A deny set is probed, never counted: a few of its prefixes looked up (nft_fill.sample_keys). A
        dump of a million-prefix interval set cost ~79 s of kernel time (each chunk walks the rbtree from
        its start); a flush or a cut-off fill misses the first or the last prefix, a stray deletion is
        the events' to see (or a probe's, by chance)."""
        if not nft:
            return NftLive()
        gen = genid()  # first: a change during the reads below shows as a new generation next time
        live = read_live(nft, FAMILY, TABLE, self.objects.elements)
        prev = previous if isinstance(previous, NftLive) and previous.chains else None
        if live.flags:
            return dataclasses.replace(prev, flags=live.flags, genid=None) if prev else live
        # a set of that name and another definition is replaced (drift object_redefined): a key of another
        # length would be a request the kernel refuses (EINVAL)
        deny = [s for s in self.objects.sets if isinstance(s.get("elem"), PrefixElements) and s["name"] in live.sets
                and sync_nft.same_set(live.sets[s["name"]], s)]
        same = prev is not None and gen is not None and (sets_unchanged or prev.genid == gen)
        if same and all(s["name"] in prev.deny_absent for s in deny):
            absent = {s["name"]: prev.deny_absent[s["name"]] for s in deny}
        else:
            absent = {s["name"]: _absent(s["name"], s["elem"]) for s in deny}
        return dataclasses.replace(live, genid=gen, deny_absent=absent, deny_written=dict(written or {}))

    def transaction(self, live: NftLive, families: tuple[int, ...] = (4, 6),
                    fingerprints: dict[str, str] | None = None) -> sync_nft.NftTransaction:
        return sync_nft.build(self.objects, live, fingerprints)

    def check(self, tx: sync_nft.NftTransaction, nft: Nft) -> str:
        if tx.fills or tx.refills:
            nft_fill.send(nft_fill.batch(TABLE, _fill_sets(tx.fills), commit=False, refills=_fill_sets(tx.refills)),
                          "apply --dry-run")
        nft.run(tx.checked(), dry_run=True, what="apply --dry-run")
        return "checked by the kernel (libnftables check mode)"

    def send(self, tx: sync_nft.NftTransaction, nft: Nft) -> sync_nft.NftTransaction:
        """Returns the transaction the kernel took: ``tx``, or its fallback when it refused ``tx``."""
        try:
            self._send(tx, nft)
        except BackendError:
            if tx.fallback is None:
                raise
            self._send(tx.fallback, nft)
            return tx.fallback
        return tx

    def _send(self, tx: sync_nft.NftTransaction, nft: Nft) -> None:
        if tx.fills or tx.refills:
            nft_fill.send(nft_fill.batch(TABLE, _fill_sets(tx.fills), refills=_fill_sets(tx.refills)), "apply")
        try:
            nft.run(tx.sent(), what="apply")
        except BackendError:  # the filled sets, which nothing refers to, go too
            ref = {"family": FAMILY, "table": TABLE}
            try:
                nft.run({"nftables": [{"delete": {"set": {**ref, "name": s["name"]}}} for s in tx.fills]},
                        what="apply")
            except BackendError:
                pass  # the next apply deletes them: they are in no render but this one
            raise

    def installed_text(self, tx: sync_nft.NftTransaction, nft: Nft) -> str:
        return nft.text(f"table {FAMILY} {TABLE}")

    def tx_data(self, tx: sync_nft.NftTransaction) -> Any:
        return tx.json()

    def where(self, plan) -> tuple[dict[str, int], str]:
        hooks = {c.name: c.priority for c in plan.ruleset.base_chains}
        return hooks, ", ".join(f"{k} at priority {v}" for k, v in hooks.items())

    # --- drift -----------------------------------------------------------------------------
    def diff(self, plan, live: NftLive) -> Drift | None:
        from ..drift import Drift, Reason, objects_diff

        if not live.exists:
            return Drift((Reason("table_missing", "table inet nodeguard is missing"),))
        if live.flags:
            return Drift((Reason("table_flags", f"table inet nodeguard has flags {', '.join(live.flags)}"),))
        reasons: list[Reason] = []
        culprit = None
        for chain in plan.ruleset.base_chains:
            have = live.chains.get(chain.name)
            if have and (have.get("prio"), have.get("hook")) != (chain.priority, chain.hook):
                reasons.append(Reason("priority", f"{chain.name} at priority {have.get('prio')}, "
                                                  f"must be {chain.priority}"))
                rivals = [f for f in plan.foreign if f.priority <= have.get("prio", 0)]
                culprit = culprit or (str(rivals[0]) if rivals else None)
        want: dict[str, list] = {c["name"]: [] for c in self.objects.chains}
        for r in self.objects.rules:
            want[r["chain"]].append(id_from_comment(r["comment"]))
        have_ids = sync_nft.live_rule_ids(live)
        rewrites: list[Reason] = []
        for name, ids in want.items():
            if name not in have_ids:
                reasons.append(Reason("chain_missing", f"chain {name} is missing"))
            elif have_ids[name] != ids:
                kept = sum(1 for i in have_ids[name] if i in ids)
                rewrites.append(Reason("rules_changed", f"chain {name}: {kept} of {len(ids)} rules intact, "
                                                        f"{len(have_ids[name])} present"))
        reasons += [Reason("unexpected_objects", f"unexpected chain {n}") for n in have_ids if n not in want]
        reasons += objects_diff("set", {s["name"]: s for s in self.objects.sets}, live.sets, sync_nft.same_set)
        reasons += objects_diff("limit", {x["name"]: x for x in self.objects.limits}, live.limits,
                                sync_nft.same_limit)
        reasons += [Reason("deny_elements", f"set {s['name']} {why}") for s, why in sync_nft.unfilled(self.objects, live)]
        for s in plan.ruleset.sets:
            if s.static and s.name in live.sets and not sync_nft.same_elements(live.static_elements.get(s.name, []),
                                                                               self.objects.elements[s.name]):
                reasons.append(Reason("allowlist", f"set {s.name} elements differ"))
        if not reasons and not rewrites:
            return None
        return Drift((*reasons, *rewrites), culprit, in_place=not reasons)

    def fingerprints(self, live: NftLive) -> dict[str, str]:
        return of_nft(live.rules)

    def refill_only(self, fingerprints: dict[str, str] | None) -> bool:
        return bool(fingerprints) and all(id_from_comment(r["comment"]) in fingerprints for r in self.objects.rules)

    def needs_full_read(self, live: NftLive, families: tuple[int, ...], fingerprints: dict[str, str] | None) -> bool:
        return False  # every read is of the whole table

    def status_part(self, plan, nft: Nft, live: NftLive) -> dict[str, Any]:
        # terse: a meter filled by a spoofed flood holds 65,536 elements, and listing them as JSON took
        # 3 s quiet and 11 s on a loaded node; their count comes from one netlink dump per set instead
        listing = nft.list(f"table {FAMILY} {TABLE}", terse=True)
        meters = [s for s in plan.ruleset.sets if s.kind != "allow"]
        return {
            "installed": bool(listing),
            "hooks": [{"chain": c["name"], "hook": c["hook"], "priority": c["prio"]}
                      for c in objects(listing, "chain") if c.get("hook")],
            "rules": [_status_rule(r) for r in objects(listing, "rule")],
            "meters": self.meter_fill(meters, {o["name"] for o in objects(listing, "set")}),
        }

    # --- counters and sets -------------------------------------------------------------------
    def condemning_ids(self, ruleset: RuleSet) -> dict[str, Key]:
        return {rid: (rule.group, rule.mode) for rule, rid in _rule_ids(ruleset) if rule.group}

    def ban_ids(self, ruleset: RuleSet) -> set[str]:
        return {rid for rule, rid in _rule_ids(ruleset) if any(isinstance(x, BanSource) for x in rule.matches)}

    def tally_ids(self, ruleset: RuleSet, tally: str) -> set[str]:
        return {rid for rule, rid in _rule_ids(ruleset) if rule.tally == tally}

    def rule_counters(self, live: NftLive | None = None) -> Iterator[tuple[str | None, int, int]]:
        if live is not None:
            for r in live.rules:
                c = next((e["counter"] for e in r["expr"] if "counter" in e), None)
                if c:
                    yield id_from_comment(r.get("comment")), c["packets"], c["bytes"]
            return
        from .nfnetlink import rule_counters

        for _chain, comment, packets, nbytes in rule_counters():
            yield id_from_comment(comment), packets, nbytes

    def meter_fill(self, sets: list[AddrSet], installed: set[str] | None = None) -> list[dict]:
        """A meter's elements are counted (one dump; a hash set's is linear). A sealed (deny) set holds
        what its name says, when installed (``installed``: the names listed, else assumed): a dump of an
        interval set costs O(n^2 / chunk) on 6.x kernels, ~79 s for a million prefixes."""
        sizes: dict[str, int | None] = nft_set_sizes([s.name for s in sets if not s.sealed])
        sizes.update({s.name: len(s.elements) for s in sets if s.sealed and (installed is None or s.name in installed)})
        return [{"set": s.base, "kind": s.kind, "kernel_name": s.name, "elements": sizes.get(s.name) or 0,
                 "size": s.size} for s in sets]

    def source_counts(self, nft: Nft, s: AddrSet) -> Iterator[tuple[int, int]]:
        from .nfnetlink import set_counters

        width = 4 if s.version == 4 else 8  # IPv6: the /64 the rule counts
        return ((int.from_bytes(key[:width], "big"), packets) for key, packets in set_counters(s.name)
                if len(key) >= width)

    def forget_sources(self, dels: Iterable[tuple[AddrSet, str]]) -> bool:
        return False  # the counts sets' elements time out by themselves

    def set_members(self, nft: Nft, s: AddrSet) -> set[str]:
        return {str(e["val"]) for e in nft.set_elements(FAMILY, TABLE, s.name)
                if isinstance(e.get("val"), (str, int))}

    def installed_sets(self, nft: Nft, sets: dict[Any, AddrSet]) -> dict[Any, str]:
        # an nft set's name carries a digest of its definition: the one installed may be another's
        live = [o["name"] for o in objects(nft.list(f"table {FAMILY} {TABLE}", terse=True), "set")]
        out = {}
        for k, s in sets.items():
            same_base = [n for n in live if base_of(n) == s.base]
            if s.name in live or same_base:
                out[k] = s.name if s.name in live else same_base[0]
        return out

    def timeouts(self, nft: Nft, name: str) -> Iterator[tuple[str, int | None]]:
        # a raw netlink dump, not libnftables' JSON listing: trusted and banned sets fill on a busy node
        from .nfnetlink import set_times

        return ((_key_text(key), ms // 1000 if ms else None) for key, ms in set_times(name))

    def delete_elements(self, nft: Nft, names: dict[tuple[str, int], str],
                        targets: list[tuple[str, int]] | None) -> None:
        ref = {"family": FAMILY, "table": TABLE}
        if targets is None:
            nft.run({"nftables": [{"flush": {"set": {**ref, "name": n}}} for n in names.values()]}, what="unban")
            return
        # one element per transaction: deleting one that is not there fails the whole transaction, and
        # listing the over/episode sets to look first can cost more than a failed delete (the sets exist:
        # installed_sets lists installed ones only)
        for (_what, version), name in names.items():
            for src, v in targets:
                if v != version:
                    continue
                try:
                    nft.run({"nftables": [{"delete": {"element": {**ref, "name": name, "elem": [_value(src)]}}}]},
                            what="unban")
                except NotFound:
                    pass

    def add_elements(self, nft: Nft, s: AddrSet, elements: Iterable[str], timeout_s: int) -> None:
        # nft's "add" leaves an existing element's timeout alone: add (a no-op if it is there), delete,
        # add again, in one transaction, which the kernel applies at once (never a moment without it)
        ref = {"family": FAMILY, "table": TABLE, "name": s.name}
        elems = list(elements)
        add = {"add": {"element": {**ref, "elem": [{"elem": {"val": e, "timeout": timeout_s}} for e in elems]}}}
        nft.run({"nftables": [add, {"delete": {"element": {**ref, "elem": elems}}}, add]}, what="valve")

    def valve_elements(self, s: AddrSet) -> tuple[str, ...]:
        return VALVE_ELEMENTS

    def ban(self, nft: Nft, name: str, prefix: str, for_s: int | None, reason: str) -> None:
        # A ban made again: add (a no-op when there), delete, add, in one transaction, so that it takes the
        # new expiry and reason without a moment unbanned. A new one is added alone: nft 1.0.6 lists every
        # element of every set in the table before a "delete element" or an "add element" (~1 s beside a
        # 100,000-prefix deny list), not before an "add set" that carries its elements.
        ref = {"family": FAMILY, "table": TABLE, "name": name}
        val = _value(prefix)
        elem = {"val": val, **({"timeout": for_s} if for_s else {}), **({"comment": reason} if reason else {})}
        rendered = next((s for s in self.objects.sets if s["name"] == name), None)  # the installed definition
        add = {"add": {"set": {**rendered, "elem": [{"elem": elem}]}}} if rendered else \
            {"add": {"element": {**ref, "elem": [{"elem": elem}]}}}
        again = bool(sync_nft.networks([prefix]) & sync_nft.networks([p for p, _, _ in self.manual_bans(nft, name)]))
        nft.run({"nftables": [add, {"delete": {"element": {**ref, "elem": [val]}}}, add] if again else [add]},
                what="ban")  # a full set: SetFull

    def restore_elements(self, nft: Nft, name: str, rows: list[tuple[str, int | None, str]]) -> None:
        # "add" leaves an element already there alone: the kernel's timeout is the newer one
        elems = [{"elem": {"val": _value(key), **({"timeout": left} if left else {}),
                           **({"comment": why} if why else {})}} for key, left, why in rows]
        nft.run({"nftables": [{"add": {"element": {"family": FAMILY, "table": TABLE, "name": name, "elem": elems}}}]},
                what="restore")

    def restore_timed(self, nft: Nft, name: str, version: int, rows: list[tuple[str, int]]) -> None:
        family = socket.AF_INET if version == 4 else socket.AF_INET6
        nft_fill.send(nft_fill.timed_batch(TABLE, name, [(socket.inet_pton(family, key), left * 1000)
                                                          for key, left in rows]), "restore")

    def manual_bans(self, nft: Nft, name: str) -> list[tuple[str, int | None, str]]:
        out = []
        for e in nft.set_elements(FAMILY, TABLE, name):
            val = e.get("val")
            prefix = f"{val['prefix']['addr']}/{val['prefix']['len']}" if isinstance(val, dict) and "prefix" in val \
                else val if isinstance(val, str) else None
            if prefix is not None:
                reason = e.get("comment")
                out.append((prefix, e.get("expires"), reason if isinstance(reason, str) else ""))
        return out

    def valve_ids(self, ruleset: RuleSet) -> set[str]:
        return {rid for rule, rid in _rule_ids(ruleset) if any(isinstance(x, ValveEngaged) for x in rule.matches)}


def _absent(name: str, elem: PrefixElements) -> str | None:
    """The address of a sampled prefix of deny set ``name`` no interval in the kernel starts at."""
    key = nft_fill.absent_key(name, nft_fill.sample_keys(elem.version, elem.prefixes))
    return None if key is None else address_text(elem.version, int.from_bytes(key, "big"))


def _fill_sets(sets: tuple[dict, ...]) -> list[tuple[str, int, tuple]]:
    """(name, IP version, prefixes) of deny sets (render objects) a transaction fills first."""
    return [(s["name"], s["elem"].version, s["elem"].prefixes) for s in sets]


def _key_text(key: bytes) -> str:
    """A set element's key as nft lists it: an address as inet_ntop writes it (as nft does), any other
    key (the valve's protocol) its bytes in hex."""
    family = {4: socket.AF_INET, 16: socket.AF_INET6}.get(len(key))
    return socket.inet_ntop(family, key) if family else key.hex()


def _value(text: str) -> str | dict:
    """An element as nft's JSON takes it: an address as is, a prefix ("a/len") as a prefix object
    (nft reads a string with a "/" as a host name)."""
    addr, _, plen = text.partition("/")
    return {"prefix": {"addr": addr, "len": int(plen)}} if plen else text


def _rule_ids(ruleset: RuleSet):
    """(model rule, its rule id) for every rule of the ruleset, as render_nft comments it."""
    sets = {s.name: s for s in ruleset.sets}
    for chain in ruleset.chains:
        for rule, rendered in zip(chain.rules, render_chain_rules(ruleset.table, chain, sets), strict=True):
            yield rule, id_from_comment(rendered["comment"])


def _status_rule(r: dict) -> dict:
    counter = next((e["counter"] for e in r["expr"] if "counter" in e), {"packets": 0, "bytes": 0})
    return {"chain": r["chain"], **id_and_label(r.get("comment")), **counter}
