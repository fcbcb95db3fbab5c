"""The verbs that render, install, show and remove the ruleset: check, apply, status, uninstall."""

from __future__ import annotations

import click

from ._shared import common, emit, kernel, show


@click.command()
@common
def check(config: str | None, as_json: bool) -> None:
    """Validate and render the policy; change nothing. Prints the ruleset it would load."""
    from ..apply import load_into_this_netns, make_plan, read_state, transaction
    from ..errors import NodeguardError
    from ..failsafe_check import warning as failsafe_warning
    from ..listeners import listening_tcp_ports
    from ..policy.load import load_policy
    from ..scratch import in_scratch_netns

    policy, source = load_policy(config)
    try:
        nft = kernel()
    except NodeguardError:
        nft = None  # not privileged: render with default priorities, skip the kernel check
    plan = make_plan(policy, nft)
    fresh = transaction(plan, read_state(plan, None))  # a fresh install: what a scratch namespace gets
    warn = failsafe_warning(policy, listening_tcp_ports())
    if as_json:
        if warn:
            click.echo(warn, err=True)
        emit(fresh.json(), True, "")
        return
    try:
        text = in_scratch_netns(lambda: load_into_this_netns(plan))
        head = f"# {source}: valid; checked by the kernel in a scratch network namespace ({plan.backend.name})\n"
    except PermissionError:
        text = fresh.text()
        head = f"# {source}: valid; not root, so not checked by the kernel ({plan.backend.name})\n"
    for note in plan.priorities.notes:
        head += f"# {note}\n"
    if warn:
        head += f"# {warn}\n"
    show(head + text)


@click.command()
@common
@click.option("--dry-run", is_flag=True, help="Print the transaction and have the kernel check it; commit nothing.")
def apply(config: str | None, as_json: bool, dry_run: bool) -> None:
    """Install or update nodeguard's rules in one transaction that keeps meters and trusted sets."""
    nft = kernel()  # first: without privileges nothing else matters, whatever the policy file says
    from .. import datapath
    from ..apply import apply_plan, make_plan, read_state, remove_other_backends, transaction
    from ..backend.kinds import describe
    from ..policy.load import load_policy

    policy, source = load_policy(config, trusted=True)
    plan = make_plan(policy, nft)
    others = describe(remove_other_backends(plan.backend.installed, nft, dry_run=True))  # a backend switch also removes these
    if dry_run:
        tx = transaction(plan, read_state(plan, nft))
        how = plan.backend.check(tx, nft)
    else:
        tx = apply_plan(plan, nft)
        how = "applied"
    hooks, where = plan.backend.where(plan)
    bypass = datapath.detect(plan.ruleset.interfaces)
    data = {"applied": not dry_run, "dry_run": dry_run, "policy": source, "backend": plan.backend.name,
            "backend_reason": plan.backend_reason, "hooks": hooks, "checked": how, "other_backends_removed": others,
            "interfaces": list(plan.ruleset.interfaces), "notes": list(plan.priorities.notes),
            "datapath": bypass.data()}
    if dry_run:
        data["transaction"] = plan.backend.tx_data(tx)
    verb = f"would apply (dry run, {how})" if dry_run else "applied"
    text = ((tx.text() if dry_run else "")
            + f"{verb} {source} with {plan.backend.name}: {where}; interfaces {', '.join(plan.ruleset.interfaces)}\n"
            + (f"{'would also remove' if dry_run else 'also removed'} nodeguard's rules from: {', '.join(others)}\n"
               if others else "")
            + "".join(f"note: {n}\n" for n in plan.priorities.notes)
            + "".join(f"{line}\n" for line in datapath.warnings(bypass)))
    emit(data, as_json, text)


@click.command()
@common
def status(config: str | None, as_json: bool) -> None:
    """Installed or not, hooks next to foreign chains, counters per rule, meter fill."""
    from .. import status as status_mod
    from ..apply import make_plan
    from ..errors import EnvironmentProblem
    from ..policy.load import load_policy
    from ..watch.state import read_state as read_watcher_state

    policy, _source = load_policy(config)
    nft = kernel()
    watcher = read_watcher_state(policy.watcher.state_file)
    try:
        plan = make_plan(policy, nft)
    except EnvironmentProblem:  # no default route for now: show what the watcher keeps protected
        if not (watcher and watcher.get("alive") and watcher.get("interfaces")):
            raise
        plan = make_plan(policy, nft, interfaces=tuple(watcher["interfaces"]))
    st = status_mod.collect(nft, plan, watcher)
    text = status_mod.format_text(st)
    if policy.crowdsec.enabled:
        from ..crowdsec import state as crowdsec_state

        st["crowdsec"] = crowdsec_state.read(policy.watcher.state_file)
        text += "".join(f"{line}\n" for line in crowdsec_state.lines(st["crowdsec"], policy.crowdsec.url))
    emit(st, as_json, text)


@click.command(name="uninstall")
@click.option("--json", "as_json", is_flag=True, help="Print data as JSON.")
def uninstall_cmd(as_json: bool) -> None:
    """Remove nodeguard's rules and sets from every backend, and nothing else."""
    from ..apply import uninstall
    from ..backend.kinds import describe

    removed = describe(uninstall(kernel()))
    text = f"removed nodeguard from: {', '.join(removed)}\n" if removed else "nodeguard was not installed\n"
    emit({"removed": removed}, as_json, text)
