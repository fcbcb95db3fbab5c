"""policy → probe → model → render → one transaction per backend. The only write path.

Backends: ``nft`` (table inet nodeguard, one libnftables transaction) and ``iptables-nft`` /
``iptables-legacy`` (own chains plus jumps, one ``*-restore --noflush`` per family, after the
ipsets). After a successful apply, the objects of the other backends are removed, so switching
``backend:`` in the policy never leaves two sets of rules, and never a moment with none.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from . import model, probe
from .backend.ipt import Ipset, Ipt, detect_flavour
from .backend.nft import Nft, objects
from .errors import BackendError
from .interfaces import resolve_interfaces
from .policy import Policy
from .render import ipt as render_ipt
from .render import nft as render_nft

IPT_FLAVOURS = ("nft", "legacy")


@dataclass(frozen=True)
class Plan:
    ruleset: model.RuleSet
    priorities: model.Priorities
    foreign: tuple[probe.ForeignChain, ...]
    backend: str  # "nft", "iptables-nft" or "iptables-legacy"
    backend_reason: str
    sampling: model.Sampling | None
    sampling_reason: str
    transaction: dict | None = None  # nft
    ipt: dict[int, render_ipt.Render] | None = None  # iptables, per IP version

    @property
    def flavour(self) -> str | None:
        return self.backend.split("-", 1)[1] if self.backend.startswith("iptables-") else None


def choose_flavour(policy: Policy, nft: Nft | None) -> tuple[str, str]:
    if policy.iptables.flavour != "auto":
        return policy.iptables.flavour, "iptables.flavour in the policy"
    return detect_flavour() if nft else ("nft", "not probed (no privileges)")


_QUEUE_PROBE: dict[str, bool] = {}


def nft_queue_supported(nft: Nft) -> bool:
    """Does this kernel have the nft ``queue`` expression (CONFIG_NFT_QUEUE)? One check-mode transaction."""
    if "nft" not in _QUEUE_PROBE:
        t = {"family": "inet", "name": "nodeguard-probe"}
        probe_tx = {"nftables": [
            {"add": {"table": t}},
            {"add": {"chain": {**t, "table": t["name"], "name": "c"}}},
            {"add": {"rule": {"family": "inet", "table": t["name"], "chain": "c", "expr": [{"queue": {"num": 0}}]}}},
        ]}
        try:
            nft.run(probe_tx, dry_run=True, what="probe nft queue")
            _QUEUE_PROBE["nft"] = True
        except BackendError:
            _QUEUE_PROBE["nft"] = False
    return _QUEUE_PROBE["nft"]


def choose_sampling(policy: Policy, nft: Nft | None) -> tuple[model.Sampling | None, str]:
    cfg = policy.sampler
    if not cfg.enabled:
        return None, "sampler.enabled is false"
    transport, reason = cfg.transport, "sampler.transport in the policy"
    if transport == "auto":
        if policy.backend == "iptables":
            transport, reason = "nfqueue", "auto: the iptables backend uses xt NFQUEUE"
        elif nft is not None and nft_queue_supported(nft):
            transport, reason = "nfqueue", "auto: this kernel has the nft queue expression"
        elif nft is not None:
            transport, reason = "nflog", "auto: this kernel lacks the nft queue expression (CONFIG_NFT_QUEUE)"
        else:
            transport, reason = "nflog", "auto: not probed (no privileges)"
    return model.Sampling(transport, cfg.rate, cfg.global_rate, cfg.nflog_group, cfg.queue_base, cfg.snaplen), reason


def make_plan(policy: Policy, nft: Nft | None, *, flavour: tuple[str, str] | None = None,
              cache: dict | None = None) -> Plan:
    """Render the policy for this host. Without ``nft`` (no privileges) the default priorities are used.

    The watcher passes the ``flavour`` it decided once and a ``cache``: the render is reused
    while its inputs (interfaces, foreign chains) stay the same.
    """
    foreign = tuple(probe.foreign_base_chains(nft)) if nft else ()
    interfaces = resolve_interfaces(policy.interfaces)
    if policy.backend != "nft" and flavour is None:
        flavour = choose_flavour(policy, nft)
    key = (interfaces, foreign, flavour)
    if cache is not None and key in cache:
        return cache[key]
    priorities = probe.choose_priorities(list(foreign))
    sampling, sampling_reason = choose_sampling(policy, nft)
    ruleset = model.build_ruleset(policy, interfaces, priorities, sampling)
    common = (ruleset, priorities, foreign)
    if policy.backend == "nft":
        plan = Plan(*common, "nft", "backend: nft", sampling, sampling_reason,
                    transaction=render_nft.replace_table(ruleset))
    else:
        renders = {v: render_ipt.render_ipt(ruleset, v) for v in (4, 6)}
        plan = Plan(*common, f"iptables-{flavour[0]}", flavour[1], sampling, sampling_reason, ipt=renders)
    if cache is not None:
        cache.clear()  # only the latest inputs are worth keeping
        cache[key] = plan
    return plan


def apply_plan(plan: Plan, nft: Nft, *, dry_run: bool = False, families=(4, 6), sets: bool = True,
               repair: bool = False) -> None:
    """Install the plan. ``repair`` (the watcher) skips the other-backend cleanup and, for
    iptables, restores only ``families`` (a restore costs ~35 ms each) and the ipsets only if ``sets``."""
    if plan.transaction is not None:
        nft.run(plan.transaction, dry_run=dry_run, what="apply --dry-run" if dry_run else "apply")
    else:
        ipt = Ipt(plan.flavour)
        if dry_run:  # the tool checks a fresh install of our chains; ipsets cannot be dry-run
            ipt.restore_families({v: _without_sets(render_ipt.restore_text(r, {})) for v, r in plan.ipt.items()},
                                 test=True)
            return
        if sets:
            Ipset.restore(render_ipt.ipset_script(plan.ruleset, Ipset.names()))
        ipt.restore_families({v: render_ipt.restore_text(r, ipt.live(v)) for v, r in plan.ipt.items()
                              if v in families})
    if not dry_run and not repair:
        remove_other_backends(plan.backend, nft)


def rendered_text(plan: Plan) -> str:
    """What apply would load, as text: nft's JSON, or the ipset + iptables-restore scripts."""
    if plan.transaction is not None:
        return json.dumps(plan.transaction, indent=2) + "\n"
    out = "# ipset restore\n" + render_ipt.ipset_script(plan.ruleset, set())
    for version, render in plan.ipt.items():
        out += f"# {'ip' if version == 4 else 'ip6'}tables-{plan.flavour}-restore --noflush\n"
        out += render_ipt.restore_text(render, {})
    return out


def load_into_this_netns(plan: Plan) -> str:
    """For a scratch netns: apply the plan for real, return the kernel's own text of it."""
    nft = Nft()
    apply_plan(plan, nft)
    if plan.transaction is not None:
        return nft.text(f"table {render_nft.FAMILY} {model.TABLE}")
    return rendered_text(plan)


def _without_sets(text: str) -> str:
    """--test still asks the kernel about ipset names; a dry run must not need them to exist."""
    return "\n".join(ln for ln in text.splitlines() if "--match-set" not in ln and "--add-set" not in ln) + "\n"


def remove_other_backends(keep: str, nft: Nft) -> list[str]:
    """Remove nodeguard's objects from every backend but ``keep``; cheap when there are none."""
    removed = []
    if keep != "nft" and _nft_installed(nft):
        nft.run(render_nft.delete_table(), what="remove nft backend")
        removed.append("nft")
    for flavour in IPT_FLAVOURS:
        if keep == f"iptables-{flavour}" or not _may_hold_ipt(flavour, nft):
            continue
        ipt = Ipt(flavour)
        scripts = {v: render_ipt.restore_text(None, ipt.live(v)) for v in (4, 6)}
        ipt.restore_families(scripts)
        removed += [f"iptables-{flavour} v{v}" for v, text in scripts.items() if text]
    # ipsets exist only for the iptables backend: look (one process) after removing it, or on uninstall
    ipt_gone = any(r.startswith("iptables-") for r in removed) or keep == "none"
    if not keep.startswith("iptables-") and ipt_gone and Path("/sys/module/ip_set").exists():
        stale = Ipset.names()
        if stale:
            Ipset.destroy(stale)
            removed.append("ipsets")
    return removed


def _may_hold_ipt(flavour: str, nft: Nft) -> bool:
    """iptables-nft chains are nft chains (one in-process listing); legacy needs legacy tables."""
    if flavour == "legacy":
        return any(Path(f"/proc/net/{f}").exists() and Path(f"/proc/net/{f}").read_text().split()
                   for f in ("ip_tables_names", "ip6_tables_names"))
    return any(c["name"].startswith(render_ipt.PREFIX + "-") for c in objects(nft.list("chains"), "chain")
               if c["family"] in ("ip", "ip6"))


def _nft_installed(nft: Nft) -> bool:
    return any(t["family"] == render_nft.FAMILY and t["name"] == model.TABLE
               for t in objects(nft.list("tables"), "table"))


def uninstall(nft: Nft) -> bool:
    """Delete nodeguard's objects in every backend, and nothing else. Returns whether any existed."""
    return bool(remove_other_backends("none", nft))
