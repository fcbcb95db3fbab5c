"""The kernel's count of condemned packets per rule group: the rules that send to a sample chain."""

from __future__ import annotations

from .apply import Plan
from .backend.ipt import Ipt
from .backend.nft import Nft, objects
from .model import TABLE
from .render.ipt import chain_name
from .render.nft import FAMILY


def condemned_by_group(plan: Plan, nft: Nft) -> dict[str, int]:
    groups = {f"sample-{g}": g for g in plan.ruleset.sample_groups}
    out = {g: 0 for g in plan.ruleset.sample_groups}
    if plan.nft is not None:
        for r in objects(nft.list(f"table {FAMILY} {TABLE}", terse=True), "rule"):
            target = next((e["goto"]["target"] for e in r["expr"] if "goto" in e), None)
            if target in groups:
                out[groups[target]] += next((e["counter"]["packets"] for e in r["expr"] if "counter" in e), 0)
        return out
    by_chain = {chain_name(name): g for name, g in groups.items()}
    ipt = Ipt(plan.flavour)
    for version in plan.ipt:
        for _chains, rules in ipt.tables(version).values():
            for r in rules:
                if " -g " in r.line:
                    target = r.line.split(" -g ", 1)[1].split()[0]
                    if target in by_chain:
                        out[by_chain[target]] += r.packets
    return out
