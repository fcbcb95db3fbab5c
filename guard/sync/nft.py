"""The one nft transaction that takes table ``inet nodeguard`` from what the kernel holds to the render.

The kube-proxy nftables proxier pattern: flush every changed chain and refill it, keep every set and
limit object whose definition did not change (their names end in a digest of the definition, see
model/ruleset.py), delete only what the render no longer has. Meters, trusted sources and backstop buckets
therefore keep their state across re-applies and repairs, and since the whole batch is applied by
the kernel at once, no packet ever sees a half-built table or none.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
from dataclasses import dataclass

from .. import jsontext
from ..backend.nft import NftLive
from ..fingerprints import nft_body
from ..render.ids import id_from_comment
from ..render.nft import FAMILY, NftObjects, PrefixElements


@dataclass(frozen=True)
class NftTransaction:
    """``commands``: the libnftables transaction. ``fills``: new deny sets (render objects, their elements
    with them), created and filled first by a transaction of their own (backend/nft_fill.py) that no
    rule refers to until ``commands`` commits."""

    commands: tuple[dict, ...]
    fills: tuple[dict, ...] = ()
    refills: tuple[dict, ...] = ()  # kept deny sets whose contents are not the render's: flushed and filled again
    recreates: bool = False  # the table is deleted and made anew: every set's state goes (persist.py restores)
    fallback: NftTransaction | None = None  # sent when the kernel refuses this one (a dormant table woken in place)
    moves_jumps_only = False  # nft has no jumps of ours in foreign chains to put back (sync/ipt.py)

    @property
    def filled(self) -> frozenset[str]:
        """The deny sets whose elements it writes anew (all of them when it makes the table anew)."""
        return frozenset(s["name"] for s in (*self.fills, *self.refills))

    @property
    def changes_sets(self) -> bool:
        """It creates, deletes, flushes or fills a set (a chain refilled after a flush changes none)."""
        return bool(self.fills or self.refills or self.recreates) or any(
            "set" in body or "element" in body for c in self.commands for body in c.values())

    def json(self) -> dict:
        """Both transactions as the one libnftables transaction that does the same (check --json, apply
        --dry-run --json): the filled sets added with their elements, right after the table."""
        return self._with_sets(self.fills, self.refills)

    def sent(self) -> dict:
        """What libnftables is sent, after the fill."""
        return {"nftables": list(self.commands)}

    def checked(self) -> dict:
        """What libnftables checks in --dry-run, where the fill is checked and not committed: the filled
        sets added empty."""
        return self._with_sets([{k: v for k, v in s.items() if k != "elem"} for s in self.fills])

    def text(self) -> str:
        n = len(self.fills) + 2 * len(self.refills)
        fill = "" if not n else (
            "# first, a transaction of its own (one nfnetlink batch): the new deny sets and their elements\n"
            + jsontext.dumps({"nftables": self._with_sets(self.fills, self.refills)["nftables"][:1 + n]}, indent=2)
            + "\n# then, referring to them:\n")
        return fill + jsontext.dumps(self.sent(), indent=2) + "\n"

    def _with_sets(self, sets, refills=()) -> dict:
        again = [c for s in refills for c in ({"flush": {"set": _ref(s["table"], s["name"])}},
                                              {"add": {"element": {**_ref(s["table"], s["name"]), "elem": s["elem"]}}})]
        return {"nftables": [*self.commands[:1], *({"add": {"set": s}} for s in sets), *again, *self.commands[1:]]}


def _ref(table: str, name: str) -> dict:
    return {"family": FAMILY, "table": table, "name": name}


def _hook(chain: dict) -> tuple:
    return tuple(chain.get(k) for k in ("type", "hook", "prio", "policy"))


def same_set(live: dict, want: dict) -> bool:
    """The live set has the definition the render asks for (the kernel would not change it on ``add``)."""
    keys = ("type", "size", "timeout")
    return (all(live.get(k) == want.get(k) for k in keys)
            and ("interval" in live.get("flags", [])) == ("interval" in want.get("flags", [])))


def same_limit(live: dict, want: dict) -> bool:
    return all(live.get(k) == want.get(k) for k in ("rate", "per", "burst")) and \
        bool(live.get("inv")) == bool(want.get("inv"))


def build(objs: NftObjects, live: NftLive, fingerprints: dict[str, str] | None = None) -> NftTransaction:
    """``fingerprints`` (the watcher's, fingerprints.py): a chain whose rules carry the rendered ids
    and still the bodies we installed is left alone. Without them every chain is refilled: ids alone
    cannot tell a rule someone rewrote under our comment."""
    table = objs.table["name"]
    # A dormant table filters nothing. The "add table" that opens every transaction clears its flags and
    # wakes it in place, every set's contents kept, when what it holds is known: the objects last read
    # while it was awake (nft 1.0.6 cannot list it now). If the kernel refuses that transaction (the table
    # holds other than was read), or nothing was read, or another flag (an owner) is set, the table is
    # deleted and made anew in one transaction, empty sets and all.
    if live.flags == ("dormant",) and live.chains:
        woken = build(objs, dataclasses.replace(live, flags=()), fingerprints)
        return dataclasses.replace(woken, fallback=build(objs, NftLive(True, flags=live.flags)))
    recreate = bool(live.flags)
    if recreate:
        live = NftLive()
    want_chains = {c["name"]: c for c in objs.chains}
    want_sets = {s["name"]: s for s in objs.sets}
    want_limits = {x["name"]: x for x in objs.limits}
    want_rules: dict[str, list[dict]] = {name: [] for name in want_chains}
    for r in objs.rules:
        want_rules[r["chain"]].append(r)
    kept_sets = {n for n, s in live.sets.items() if n in want_sets and same_set(s, want_sets[n])}
    kept_limits = {n for n, x in live.limits.items() if n in want_limits and same_limit(x, want_limits[n])}
    tampered = any(n in want_sets for n in set(live.sets) - kept_sets) or \
        any(n in want_limits for n in set(live.limits) - kept_limits)
    # A chain whose rules are exactly the render's keeps them (and their counters); a tampered set
    # or limit must be deleted and re-added, which needs every chain emptied first.
    have_ids = live_rule_ids(live)
    moved = {n for n, c in live.chains.items() if n in want_chains and _hook(c) != _hook(want_chains[n])}
    stale = [n for n in live.chains if n not in want_chains]  # a kept chain might still jump to one
    bodies: dict[str, list[str]] = {}
    for r in live.rules:
        bodies.setdefault(r["chain"], []).append(nft_body(r))
    intact = set() if tampered or stale or fingerprints is None else {
        n for n in want_chains if n in live.chains and n not in moved
        and have_ids.get(n) == (ids := [id_from_comment(r["comment"]) for r in want_rules[n]])
        and bodies.get(n, []) == [fingerprints.get(i) for i in ids]}
    cmds: list[dict] = [{"add": {"table": objs.table}}]
    if recreate:  # its deny sets too, elements and all: a fill before would go with the table
        cmds += [{"delete": {"table": {"family": FAMILY, "name": table}}}, {"add": {"table": objs.table}}]
    # 1. empty every other chain first: nothing then refers to what goes away below
    cmds += [{"flush": {"chain": _ref(table, name)}} for name in live.chains if name not in intact]
    # 2. chains no longer wanted, and base chains whose hook or priority changed (nft cannot move one)
    cmds += [{"delete": {"chain": _ref(table, name)}} for name in live.chains
             if name not in want_chains or name in moved]
    # 3. sets and limits no longer wanted, or not what their name promises (someone replaced them)
    cmds += [{"delete": {"set": _ref(table, name)}} for name in live.sets if name not in kept_sets]
    cmds += [{"delete": {"limit": _ref(table, name)}} for name in live.limits if name not in kept_limits]
    # 4. everything the render has. Kept sets and limits are left alone, state and all (an "add" of
    # a dynamic set the kernel flagged "dynamic" itself would even fail with EEXIST). A new deny set is
    # filled before (NftTransaction.fills); one someone replaced under its name is added here, elements and all
    fills = () if recreate else tuple(s for s in objs.sets if isinstance(s.get("elem"), PrefixElements)
                                      and s["name"] not in live.sets)
    # a kept deny set someone emptied or thinned (a flush, deleted elements, or a set of its name made
    # before ours) is refilled by the same batch: flushed and filled in one kernel transaction
    refills = tuple(s for s, _why in unfilled(objs, live) if s["name"] in kept_sets)
    filled = {s["name"] for s in fills}
    for s in objs.sets:
        name = s["name"]
        if name not in kept_sets and name not in filled:
            cmds.append({"add": {"set": s}})
        if name in objs.elements:
            cmds += _elements(_ref(table, name), live.static_elements.get(name, []) if name in kept_sets else None,
                              objs.elements[name])
    cmds += [{"add": {"limit": x}} for x in objs.limits if x["name"] not in kept_limits]
    cmds += [{"add": {"chain": c}} for c in objs.chains if c["name"] not in intact]
    cmds += [{"add": {"rule": r}} for r in objs.rules if r["chain"] not in intact]
    return NftTransaction(tuple(cmds), fills, refills, recreate)


def unfilled(objs: NftObjects, live: NftLive) -> list[tuple[dict, str]]:
    """The deny sets (render objects) whose elements in the kernel are not the render's, and why: a
    sampled prefix is absent (NftLive.deny_absent), or another process added or deleted elements
    (NftLive.deny_written, from its events), whatever they were."""
    out = []
    for s in objs.sets:
        if not isinstance(s.get("elem"), PrefixElements):
            continue
        if (writer := live.deny_written.get(s["name"])) is not None:
            out.append((s, f"had elements added or deleted by {writer}"))
        elif (addr := live.deny_absent.get(s["name"])) is not None:
            out.append((s, f"lacks the prefix at {addr} (one of {len(s['elem'].prefixes)})"))
    return out


def _elements(ref: dict, live: list | None, want: list) -> list[dict]:
    """Fill a set whose elements are configuration (``live``: what a kept set holds; None: a new set).
    Ports (plain numbers) by their difference alone: a ``ports: auto`` set follows the listeners, and a
    local user who opens and closes thousands of them must not cost a refill each time. Allowlists
    (prefixes nft may list back merged) are flushed and refilled when they differ."""
    if live is not None and all(isinstance(e, int) for e in (*live, *want)):
        gone, new = sorted(set(live) - set(want)), sorted(set(want) - set(live))
        return ([{"delete": {"element": {**ref, "elem": gone}}}] if gone else []) + \
            ([{"add": {"element": {**ref, "elem": new}}}] if new else [])
    if live is not None and same_elements(live, want):
        return []
    return [{"flush": {"set": ref}}] + ([{"add": {"element": {**ref, "elem": want}}}] if want else [])


def live_rule_ids(live: NftLive) -> dict[str, list[str | None]]:
    out: dict[str, list[str | None]] = {name: [] for name in live.chains}
    for r in live.rules:
        out.setdefault(r["chain"], []).append(id_from_comment(r.get("comment")))
    return out


def same_elements(live: list, want: list) -> bool:
    """The set holds exactly the rendered elements (prefixes as nft lists them back, normalised; ports)."""
    if all(isinstance(e, int) for e in want) and all(isinstance(e, int) for e in live):
        return set(live) == set(want)
    texts = _texts(live)
    if texts is not None and texts == _texts(want):  # nft lists back what we sent: no parsing needed
        return True
    return networks(live) == networks(want)


def _texts(elems: list) -> set | None:
    """Plain prefixes as their text: equal texts are equal prefixes, whatever else differs."""
    try:
        return {(e["prefix"]["addr"], e["prefix"]["len"]) for e in elems}
    except (TypeError, KeyError):
        return None


def networks(elems: list) -> set:
    """The elements as (IP version, first address as an int, prefix length): equal sets hold the
    same prefixes. inet_pton instead of ipaddress objects (10,000 prefixes each side: ~3 ms, not
    ~60 ms); anything it cannot read goes through ipaddress, which raises as it always did."""
    out: set = set()
    for e in elems:
        if isinstance(e, str):
            addr, _, plen = e.partition("/")
            out.add(_key(addr, plen or None, e))
        elif "prefix" in e:
            out.add(_key(e["prefix"]["addr"], e["prefix"]["len"], f"{e['prefix']['addr']}/{e['prefix']['len']}"))
        elif "range" in e:
            lo, hi = (ipaddress.ip_address(a) for a in e["range"])
            out.update((n.version, int(n.network_address), n.prefixlen)
                       for n in ipaddress.summarize_address_range(lo, hi))
    return out


def _key(addr: str, plen: str | int | None, text: str) -> tuple[int, int, int]:
    version, family, bits = (6, socket.AF_INET6, 128) if ":" in addr else (4, socket.AF_INET, 32)
    try:
        first = int.from_bytes(socket.inet_pton(family, addr), "big")
        length = bits if plen is None else int(plen)
        if isinstance(plen, str) and not (plen.isascii() and plen.isdigit()):
            raise ValueError(plen)
    except (OSError, ValueError):
        first, length = -1, -1
    if not 0 <= length <= bits or first & ((1 << (bits - length)) - 1):  # not a plain prefix: the slow path
        n = ipaddress.ip_network(text)
        return n.version, int(n.network_address), n.prefixlen
    return version, first, length


def delete_table(family_table: dict) -> NftTransaction:
    """Remove the table; "add" first makes a missing table a success."""
    return NftTransaction(({"add": {"table": family_table}}, {"delete": {"table": family_table}}))
