"""The one nft transaction that takes table ``inet nodeguard`` from what the kernel holds to the render.

The kube-proxy nftables proxier pattern: flush every chain and refill it, keep every set and
limit object whose definition did not change (their names end in a digest of the definition, see
model.py), delete only what the render no longer has. Meters, trusted sources and backstop buckets
therefore keep their state across re-applies and repairs, and since the whole batch is applied by
the kernel at once, no packet ever sees a half-built table or none.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..backend.nft import NftLive
from ..render.nft import FAMILY, NftObjects


@dataclass(frozen=True)
class NftTransaction:
    commands: tuple[dict, ...]

    def json(self) -> dict:
        return {"nftables": list(self.commands)}

    def text(self) -> str:
        return json.dumps(self.json(), indent=2) + "\n"


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


def build(objs: NftObjects, live: NftLive) -> NftTransaction:
    table = objs.table["name"]
    want_chains = {c["name"]: c for c in objs.chains}
    want_sets = {s["name"]: s for s in objs.sets}
    want_limits = {x["name"]: x for x in objs.limits}
    cmds: list[dict] = [{"add": {"table": objs.table}}]
    # 1. empty every chain first: nothing then refers to what goes away below
    cmds += [{"flush": {"chain": _ref(table, name)}} for name in live.chains]
    # 2. chains no longer wanted, and base chains whose hook or priority changed (nft cannot move one)
    cmds += [{"delete": {"chain": _ref(table, name)}} for name, c in live.chains.items()
             if name not in want_chains or _hook(c) != _hook(want_chains[name])]
    # 3. sets and limits no longer wanted, or not what their name promises (someone replaced them)
    kept_sets = {n for n, s in live.sets.items() if n in want_sets and same_set(s, want_sets[n])}
    kept_limits = {n for n, x in live.limits.items() if n in want_limits and same_limit(x, want_limits[n])}
    cmds += [{"delete": {"set": _ref(table, name)}} for name in live.sets if name not in kept_sets]
    cmds += [{"delete": {"limit": _ref(table, name)}} for name in live.limits if name not in kept_limits]
    # 4. everything the render has. Kept sets and limits are left alone, state and all (an "add" of
    # a dynamic set the kernel flagged "dynamic" itself would even fail with EEXIST)
    for s in objs.sets:
        if s["name"] not in kept_sets:
            cmds.append({"add": {"set": s}})
        if s["name"] in objs.elements:  # allowlists are configuration: refilled every time
            cmds.append({"flush": {"set": _ref(table, s["name"])}})
            if objs.elements[s["name"]]:
                cmds.append({"add": {"element": {**_ref(table, s["name"]), "elem": objs.elements[s["name"]]}}})
    cmds += [{"add": {"limit": x}} for x in objs.limits if x["name"] not in kept_limits]
    cmds += [{"add": {"chain": c}} for c in objs.chains]
    cmds += [{"add": {"rule": r}} for r in objs.rules]
    return NftTransaction(tuple(cmds))


def delete_table(family_table: dict) -> NftTransaction:
    """Remove the table; "add" first makes a missing table a success."""
    return NftTransaction(({"add": {"table": family_table}}, {"delete": {"table": family_table}}))
