"""policy → probe → model → render → live state → one transaction per backend. The only write path.

Backends: ``nft`` (table inet nodeguard, one libnftables transaction) and ``iptables-nft`` /
``iptables-legacy`` (own chains plus jumps, ipsets, one ``*-restore --noflush`` per family). The
transaction is always built from what the kernel holds now (sync/), so a re-apply keeps every
meter, trusted set and bucket whose definition did not change; ``--dry-run`` prints and checks
that very transaction. After a successful apply, the objects of the other backends are removed,
so switching ``backend:`` never leaves two sets of rules, and never a moment with none.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from . import listeners, probe, sampling_odds, sysctls
from .backend.kinds import KINDS, Installed, Removed, describe, kind_for
from .backend.nft import Nft, NftLive
from .dnat_ports import dnat_ports
from .interfaces import resolve_interfaces
from .model.build import build_ruleset
from .model.plans import Priorities, Sampling, SynproxyPlan
from .model.ruleset import RuleSet
from .policy.schema import Policy

if TYPE_CHECKING:
    from .backend.base import Backend
    from .backend.ipt import IptLive
    from .sync import nft as sync_nft
    from .sync.ipt import IptTransaction

    Transaction = sync_nft.NftTransaction | IptTransaction
    Live = NftLive | IptLive

# The iptables backend's own modules (backend.ipt_backend, backend.ipt, backend.ipset, sync.ipt, render.ipt) are
# imported where they are used (backend/kinds.py), so that an nft apply does not load them; Live and Transaction exist for type checkers.
log = logging.getLogger("nodeguard.apply")


@dataclass(frozen=True)
class Plan:
    ruleset: RuleSet
    priorities: Priorities
    foreign: tuple[probe.ForeignChain, ...]
    backend: Backend  # its render, and what it does with it (backend/base.py); .name: "nft", "iptables-nft", ...
    backend_reason: str
    sampling: Sampling | None
    sampling_reason: str
    synproxy: SynproxyPlan | None = None
    set_sysctls: bool = False  # syn.synproxy.set_sysctls: write what the SYN defence needs (sysctls.py)

    @property
    def flavour(self) -> str | None:
        return self.backend.flavour


def choose_sampling(policy: Policy, nft: Nft | None, odds: dict[str, int] | None = None
                    ) -> tuple[Sampling | None, str]:
    """``odds``: the sampling odds to render (the watcher's); None: those in the odds file."""
    cfg = policy.sampler
    if not cfg.enabled:
        return None, "sampler.enabled is false"
    transport, reason = cfg.transport, "sampler.transport in the policy"
    if transport == "auto":
        transport, reason = kind_for(policy).auto_transport(nft)
    if odds is None:
        odds = sampling_odds.load(sampling_odds.path_for(policy))
    return sampling_settings(policy, transport, odds), reason


def sampling_settings(policy: Policy, transport: str, odds: dict[str, int] | None = None) -> Sampling:
    cfg = policy.sampler
    return Sampling(transport, cfg.group_cap(), cfg.total_cap(), cfg.nflog_group, cfg.queue_base, cfg.snaplen,
                    tuple(sorted((odds or {}).items())), cfg.count_sources, 2 * cfg.window_s + 10, cfg.observe,
                    kind_for(policy).uncounted_groups())


def detect_ports(policy: Policy, interfaces: tuple[str, ...]) -> dict[int, list[int]] | None:
    """``syn.synproxy.ports: auto``: {4: ports, 6: ports} read from the listeners now; None otherwise.
    Never a port the node DNATs (an engaged port's SYNs skip the nat table, guard/dnat_ports.py): not
    ``forwarded_ports`` (the NodePort range), whatever ``exclude_ports`` says, nor one its nat rules name."""
    cfg = policy.syn.synproxy
    if cfg.ports != "auto":
        return None
    exclude = {p for low, high in (*cfg.exclude_ports, *cfg.forwarded_ports) for p in range(low, high + 1)}
    exclude |= dnat_ports(listeners.local_addresses()[0])
    return listeners.auto_ports(interfaces, exclude, cfg.forwarded)


def synproxy_plan(policy: Policy, interfaces: tuple[str, ...],
                  detected: dict[int, list[int]] | None = None) -> SynproxyPlan | None:
    """``syn.synproxy`` for this host: the ports (``auto``: ``detected``, the watcher's, or the
    listeners read now), the MSS of the uplinks and the window scale the node's TCP announces. None
    when there is nothing to proxy."""
    cfg = policy.syn.synproxy
    if cfg.ports == "auto":
        found = detected if detected is not None else detect_ports(policy, interfaces)
        v4, v6 = set(found[4]), set(found[6])
    else:
        v4 = v6 = set(cfg.ports)
    if cfg.forwarded:
        nodeports = {p for low, high in cfg.forwarded_ports for p in range(low, high + 1)}
        v4, v6 = v4 | nodeports, v6 | nodeports
    if not v4 and not v6:
        return None
    mss4, mss6 = listeners.uplink_mss(interfaces)
    return SynproxyPlan(tuple(sorted(v4)), tuple(sorted(v6)), mss4, mss6, listeners.server_wscale(),
                              cfg.forwarded, cfg.engage_rate(), cfg.hold_s)


def make_plan(policy: Policy, nft: Nft | None, *, flavour: tuple[str, str] | None = None,
              cache: dict | None = None, interfaces: tuple[str, ...] | None = None,
              probe_foreign: bool = True, odds: dict[str, int] | None = None,
              ports: dict[int, list[int]] | None = None) -> Plan:
    """Render the policy for this host. Without ``nft`` (no privileges) the default priorities are used.

    The watcher passes the ``flavour`` it decided once, the ``interfaces`` it resolved (so a
    vanished default route does not leave the node unprotected) and a ``cache``: the render is
    reused while its inputs (interfaces, foreign chains) stay the same. It also leaves out the
    probe of foreign base chains (``probe_foreign``) for the iptables backend, whose render does
    not depend on them (its competitors are rules ahead of our jumps), and which costs a listing of
    every chain on each check.

    ``odds``: the sampling odds to render (sampling_odds.py). The daemon's watcher passes the ones
    it holds, so that its render depends on no file another thread writes; None (the one-shot
    verbs, ``nodeguard sample``): those in the odds file. ``ports``: the ``ports: auto`` set the
    watcher holds (it re-detects them on its own schedule); None: the listeners, read now.
    """
    foreign = tuple(probe.foreign_base_chains(nft)) if nft and probe_foreign else ()
    kind = kind_for(policy)
    if interfaces is None:
        interfaces = resolve_interfaces(policy.interfaces)
    if flavour is None:
        flavour = kind.flavour(policy, nft)
    sampling, sampling_reason = choose_sampling(policy, nft, odds)
    synproxy = synproxy_plan(policy, interfaces, ports)
    closed_off = kind.closed_ports_off(policy)
    key = (interfaces, foreign, flavour, sampling, synproxy, closed_off)
    if cache is not None and key in cache:
        return cache[key]
    priorities = probe.choose_priorities(list(foreign))
    if closed_off:
        policy = policy.model_copy(update={"closed_ports": policy.closed_ports.model_copy(update={"enabled": False})})
        priorities = replace(priorities, notes=(*priorities.notes, "closed_ports is off: IPVS is loaded, and "
                                                "iptables has no table after IPVS on input (nft has)"))
    ruleset = build_ruleset(policy, interfaces, priorities, sampling, synproxy)
    proxied = synproxy if any(s.kind == "engaged" for s in ruleset.sets) else None  # not in monitor mode
    backend, backend_reason = kind.backend(ruleset, flavour)
    plan = Plan(ruleset, priorities, foreign, backend, backend_reason, sampling, sampling_reason, proxied,
                policy.syn.synproxy.set_sysctls)
    if cache is not None:
        cache.clear()  # only the latest inputs are worth keeping
        cache[key] = plan
    return plan


def read_state(plan: Plan, nft: Nft | None, families: tuple[int, ...] = (4, 6), previous: Live | None = None,
               sets_unchanged: bool = False, written: Mapping[str, str] | None = None) -> Live:
    """What the kernel holds of the plan's backend now (nft None: nothing, for a fresh render).
    ``previous`` (a full read of the same backend) supplies what ``families`` leaves out (iptables), or
    what need not be read again (nft: Backend.read_live); ``written``: Backend.read_live."""
    return plan.backend.read_live(nft, families, previous, sets_unchanged, written)


def transaction(plan: Plan, live: Live, families: tuple[int, ...] = (4, 6),
                fingerprints: dict[str, str] | None = None) -> Transaction:
    """The transaction that takes the kernel from ``live`` to the plan. ``fingerprints``: see sync/."""
    return plan.backend.transaction(live, families, fingerprints)


def apply_plan(plan: Plan, nft: Nft, *, dry_run: bool = False, families: tuple[int, ...] = (4, 6),
               repair: bool = False, live: Live | None = None, fingerprints: dict[str, str] | None = None
               ) -> Transaction:
    """Install the plan; returns the transaction sent (or, with ``dry_run``, checked and not sent).
    ``repair`` (the watcher) skips the other-backend cleanup and, for iptables, restores only
    ``families`` (a restore costs ~35 ms each). ``live``: the state just read, if the caller has it;
    ``fingerprints``: the watcher's record of our rules' bodies (chains that match are left alone)."""
    if not repair:  # a repair restores what was accepted; status shows a sysctl changed since
        sysctls.refuse_unsafe(plan.synproxy, plan.set_sysctls)
    tx = transaction(plan, live if live is not None else read_state(plan, nft, families), families, fingerprints)
    if dry_run:
        plan.backend.check(tx, nft)
        return tx
    tx = plan.backend.send(tx, nft) or tx
    if plan.set_sysctls:
        sysctls.enforce(plan.synproxy)
    if not repair:
        plan_removed = remove_other_backends(plan.backend.installed, nft)
        if plan_removed:
            log.info("removed nodeguard's rules from the other backends: %s", ", ".join(describe(plan_removed)))
    return tx


def install_in_place(plan: Plan, nft: Nft, recorded: dict[str, str] | None = None) -> None:
    """A change of our own desired state (new sampling odds, a new ``ports: auto`` set), rendered in
    ``plan``: one state-keeping transaction that rewrites only what changed (the sample chains, whose
    rule ids change with the odds; the elements of a port set); every other chain keeps its rules and
    counters (the drops per group the sampler reads). ``recorded``: the watcher's record of our rules'
    bodies, so that a rewrite under our comment not yet noticed is refilled, never kept; else the live bodies."""
    live = read_state(plan, nft)
    apply_plan(plan, nft, repair=True, live=live, fingerprints=recorded or plan.backend.fingerprints(live))


def load_into_this_netns(plan: Plan) -> str:
    """For a scratch netns: apply the plan for real, return the kernel's own text of it."""
    nft = Nft()
    return plan.backend.installed_text(apply_plan(plan, nft), nft)


def remove_other_backends(keep: Installed | None, nft: Nft, dry_run: bool = False) -> list[Removed]:
    """Remove nodeguard's objects from every backend but ``keep`` (None: from all); cheap when there
    are none. Returns what was removed (``dry_run``: what would be, changing nothing)."""
    removed = []
    for kind in KINDS.values():
        removed += kind.remove(kind.present(nft, but=keep), keep, nft, dry_run)
    return removed


def uninstall(nft: Nft) -> list[Removed]:
    """Delete nodeguard's objects in every backend, and nothing else. Returns what was removed."""
    return remove_other_backends(None, nft)
