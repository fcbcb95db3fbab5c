"""policy → probe → model → render → one transaction. The only write path."""

from __future__ import annotations

from dataclasses import dataclass

from . import model, probe
from .backend.nft import Nft
from .errors import NodeguardError
from .interfaces import resolve_interfaces
from .policy import Policy
from .render import nft as render


@dataclass(frozen=True)
class Plan:
    ruleset: model.RuleSet
    priorities: model.Priorities
    foreign: tuple[probe.ForeignChain, ...]
    transaction: dict


def make_plan(policy: Policy, nft: Nft | None) -> Plan:
    """Render the policy for this host. Without ``nft`` (no privileges) the default priorities are used."""
    if policy.backend != "nft":
        raise NodeguardError(f"backend {policy.backend!r} is not available in this version; use backend: nft")
    foreign = tuple(probe.foreign_base_chains(nft)) if nft else ()
    priorities = probe.choose_priorities(list(foreign))
    ruleset = model.build_ruleset(policy, resolve_interfaces(policy.interfaces), priorities)
    return Plan(ruleset, priorities, foreign, render.replace_table(ruleset))


def apply_plan(plan: Plan, nft: Nft, *, dry_run: bool = False) -> None:
    nft.run(plan.transaction, dry_run=dry_run, what="apply --dry-run" if dry_run else "apply")


def uninstall(nft: Nft, *, dry_run: bool = False) -> bool:
    """Delete nodeguard's table, and nothing else. Returns whether it was installed."""
    installed = bool(nft.list(f"table {render.FAMILY} {model.TABLE}"))
    nft.run(render.delete_table(), dry_run=dry_run, what="uninstall")
    return installed
