"""``nodeguard`` verbs. Each error becomes one line on stderr and an exit code:
0 ok, 1 runtime failure, 2 bad input or cannot run here (the kernel is untouched in both).
"""

from __future__ import annotations

import functools
import json
import sys
from typing import Any, Callable

import click

from . import status as status_mod
from .apply import apply_plan, load_into_this_netns, make_plan, read_state, transaction, uninstall
from .backend.nft import Nft, require_net_admin
from .errors import EnvironmentProblem, NodeguardError, PolicyError
from . import lastgood
from .policy import load_policy, read_policy
from .scratch import in_scratch_netns
from .watcher import Watcher
from .watcher import read_state as read_watcher_state


config_option = click.option(
    "-c", "--config", "config", type=click.Path(dir_okay=False), default=None,
    help="Policy YAML (default: /etc/nodeguard/config.yaml if it exists, else the built-in default).")


def _common(func: Callable) -> Callable:
    @config_option
    @click.option("--json", "as_json", is_flag=True, help="Print data as JSON.")
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)
    return wrapper


def _trusted_config(config: str | None) -> str | None:
    """The policy file a verb that writes the firewall will use, refused when not root's alone
    (configfile.check_config_file); None: the built-in default."""
    from .configfile import check_config_file
    from .policy import DEFAULT_CONFIG

    path = config or (str(DEFAULT_CONFIG) if DEFAULT_CONFIG.exists() else None)
    if path is not None:
        check_config_file(path)
    return path


def _kernel() -> Nft:
    require_net_admin()
    return Nft()


def _emit(data: Any, as_json: bool, text: str) -> None:
    out = json.dumps(data, indent=2, sort_keys=True) + "\n" if as_json else text
    click.echo(out, nl=not out.endswith("\n"))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="nodeguard")
def cli() -> None:
    """Host-level DoS protection for Kubernetes nodes."""


@cli.command()
@_common
def check(config: str | None, as_json: bool) -> None:
    """Validate and render the policy; change nothing. Prints the ruleset it would load."""
    policy, source = load_policy(config)
    try:
        nft = _kernel()
    except NodeguardError:
        nft = None  # not privileged: render with default priorities, skip the kernel check
    plan = make_plan(policy, nft)
    fresh = transaction(plan, read_state(plan, None))  # a fresh install: what a scratch namespace gets
    if as_json:
        _emit(fresh.json() if plan.nft is not None else {"backend": plan.backend, "transaction": fresh.text()},
              True, "")
        return
    try:
        text = in_scratch_netns(lambda: load_into_this_netns(plan))
        head = f"# {source}: valid; checked by the kernel in a scratch network namespace ({plan.backend})\n"
    except PermissionError:
        text = fresh.text()
        head = f"# {source}: valid; not root, so not checked by the kernel ({plan.backend})\n"
    for note in plan.priorities.notes:
        head += f"# {note}\n"
    click.echo(head + text, nl=False)


@cli.command()
@_common
@click.option("--dry-run", is_flag=True, help="Print the transaction and have the kernel check it; commit nothing.")
def apply(config: str | None, as_json: bool, dry_run: bool) -> None:
    """Install or update nodeguard's rules in one transaction that keeps meters and trusted sets."""
    from .apply import check as check_tx

    nft = _kernel()  # first: without privileges nothing else matters, whatever the policy file says
    policy, source = load_policy(_trusted_config(config))
    plan = make_plan(policy, nft)
    from .apply import remove_other_backends

    others = remove_other_backends(plan.backend, nft, dry_run=True)  # a backend switch also removes these
    if dry_run:
        tx = transaction(plan, read_state(plan, nft))
        how = check_tx(tx, nft)
    else:
        tx = apply_plan(plan, nft)
        how = "applied"
    if plan.nft is not None:
        hooks = {c.name: c.priority for c in plan.ruleset.base_chains}
        where = ", ".join(f"{k} at priority {v}" for k, v in hooks.items())
    else:
        hooks = {}  # built-in chain -> how many of its first rules are our jumps
        for t in next(iter(plan.ipt.values())).tables.values():
            for b, _spec in t.jumps:
                hooks[f"{t.name} {b}"] = hooks.get(f"{t.name} {b}", 0) + 1
        where = "jumps first in " + ", ".join(f"{k}" + (f" (rules 1-{n})" if n > 1 else "") for k, n in hooks.items()) \
            + f" ({plan.backend_reason})"
    data = {"applied": not dry_run, "dry_run": dry_run, "policy": source, "backend": plan.backend,
            "backend_reason": plan.backend_reason, "hooks": hooks, "checked": how, "other_backends_removed": others,
            "interfaces": list(plan.ruleset.interfaces), "notes": list(plan.priorities.notes)}
    if dry_run:
        data["transaction"] = tx.json() if plan.nft is not None else tx.text()
    verb = f"would apply (dry run, {how})" if dry_run else "applied"
    text = ((tx.text() if dry_run else "")
            + f"{verb} {source} with {plan.backend}: {where}; interfaces {', '.join(plan.ruleset.interfaces)}\n"
            + (f"{'would also remove' if dry_run else 'also removed'} nodeguard's rules from: {', '.join(others)}\n"
               if others else "")
            + "".join(f"note: {n}\n" for n in plan.priorities.notes))
    _emit(data, as_json, text)


@cli.command()
@_common
def status(config: str | None, as_json: bool) -> None:
    """Installed or not, hooks next to foreign chains, counters per rule, meter fill."""
    policy, _source = load_policy(config)
    nft = _kernel()
    watcher = read_watcher_state(policy.watcher.state_file)
    try:
        plan = make_plan(policy, nft)
    except EnvironmentProblem:  # no default route for now: show what the watcher keeps protected
        if not (watcher and watcher.get("alive") and watcher.get("interfaces")):
            raise
        plan = make_plan(policy, nft, interfaces=tuple(watcher["interfaces"]))
    st = status_mod.collect(nft, plan, watcher)
    _emit(st, as_json, status_mod.format_text(st))


def _reading_plan(policy, nft: Nft):
    """The plan, for reading state: with ``interfaces: auto`` and no default route for now, the set
    names (which do not depend on the interfaces) still come out right."""
    try:
        return make_plan(policy, nft)
    except EnvironmentProblem:
        return make_plan(policy, nft, interfaces=("none",))


@cli.command()
@_common
def bans(config: str | None, as_json: bool) -> None:
    """Sources banned by escalation (IPv6: their /64), when each ban expires, and why."""
    import time as _time

    from . import bans as bans_mod
    from .attacklog import read_records

    policy, _source = load_policy(config)
    nft = _kernel()
    plan = _reading_plan(policy, nft)
    found = bans_mod.banned(plan, nft)
    try:
        why = bans_mod.reasons(read_records(policy.sampler.log)) if found else {}
    except OSError:
        why = {}
    now = _time.time()
    rows = [{"source": b.shown, "family": f"ipv{b.version}", "expires_in_s": b.expires_s,
             "expires_at": now + b.expires_s if b.expires_s is not None else None,
             "reason": bans_mod.describe(why.get(b.shown)), "groups": (why.get(b.shown) or {}).get("groups", []),
             "banned_at": (why.get(b.shown) or {}).get("ts")} for b in found]
    if not bans_mod.escalation_sets(plan):
        text = "nothing escalates in this policy (escalate.enabled: false, or no per-source limit in enforce mode)\n"
    elif not rows:
        text = "no banned sources\n"
    else:
        text = f"{len(rows)} banned source{'s' if len(rows) != 1 else ''}:\n" + "".join(
            f"  {r['source']:<24} expires in {r['expires_in_s'] if r['expires_in_s'] is not None else '?':>6} s  "
            f"{r['reason']}\n" for r in rows)
    _emit({"bans": rows, "escalation": bool(bans_mod.escalation_sets(plan))}, as_json, text)


@cli.command()
@_common
@click.argument("address", required=False)
@click.option("--all", "everyone", is_flag=True, help="Unban every source.")
def unban(config: str | None, as_json: bool, address: str | None, everyone: bool) -> None:
    """Lift the ban of ADDRESS (IPv6: its /64), or of every source with --all; it starts from a clean
    slate (its over-limit episode is forgotten too)."""
    from . import bans as bans_mod

    if bool(address) == everyone:
        raise bans_mod.BadAddress("unban: give one address, or --all")
    keys = None if everyone else [bans_mod.key_of(address)]  # a bad address: one line, exit 2, kernel untouched
    policy, _source = load_policy(config)
    nft = _kernel()
    gone = bans_mod.unban(_reading_plan(policy, nft), nft, keys)
    if gone:
        text = f"unbanned {', '.join(gone)}\n"
    else:
        text = "no banned sources\n" if everyone else f"{keys[0][0]}{'/64' if keys[0][1] == 6 else ''} was not banned\n"
    _emit({"unbanned": gone}, as_json, text)


@cli.command(name="uninstall")
@click.option("--json", "as_json", is_flag=True, help="Print data as JSON.")
def uninstall_cmd(as_json: bool) -> None:
    """Remove nodeguard's rules and sets from every backend, and nothing else."""
    removed = uninstall(_kernel())
    text = f"removed nodeguard from: {', '.join(removed)}\n" if removed else "nodeguard was not installed\n"
    _emit({"removed": removed}, as_json, text)


class _Stop(BaseException):
    """SIGTERM: not an error, so the watcher's per-iteration error handling lets it through."""


def _raise_stop(signum: int, frame: Any) -> None:
    raise _Stop()


last_good_option = click.option(
    "--last-good", "last_good", type=click.Path(dir_okay=False), default=str(lastgood.DEFAULT), show_default=True,
    help="Where the last policy the kernel accepted is kept, to start with when the configured one is unusable.")


@cli.command()
@config_option
@last_good_option
@click.option("-v", "--verbose", is_flag=True, help="Also log each check.")
def watch(config: str | None, last_good: str, verbose: bool) -> None:
    """Keep the rules installed and first in line: repair flushes, deletions, reorders and
    lower-priority rivals at once, with damping against insert wars. Stopping leaves the rules."""
    import logging
    import signal
    import socket
    from pathlib import Path

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s nodeguard watch: %(message)s")
    log = logging.getLogger("nodeguard.watch")
    config = _trusted_config(config)
    nft = _kernel()
    good_path = Path(last_good)
    policy, source, text, why = lastgood.startup_policy(config, nft, log, good_path)
    texts = {id(policy): text}
    log.info("watching with %s", source)
    watcher = Watcher(policy, nft, on_good=lambda p: texts.get(id(p)) and lastgood.save(texts[id(p)], good_path))
    if why:
        watcher.state["notes"] = [f"running the last good policy: the configured one is unusable: {why}"]
    reload_requested = []
    wake_r, wake_w = socket.socketpair()
    for s in (wake_r, wake_w):
        s.setblocking(False)
    signal.set_wakeup_fd(wake_w.fileno())  # a signal wakes the watcher's select at once
    signal.signal(signal.SIGHUP, lambda *_: reload_requested.append(True))
    signal.signal(signal.SIGTERM, _raise_stop)

    def on_wakeup() -> bool:
        if not reload_requested:
            return False
        reload_requested.clear()
        try:
            new, where, new_text = read_policy(config)
        except NodeguardError as exc:  # a bad edit must not drop the protection in place
            watcher.state["reloads_failed"] += 1
            log.error("reload: keeping the current policy: %s", exc)
            return False
        texts[id(new)] = new_text
        if not watcher.reload(new, where):
            return False
        watcher.state["notes"] = [n for n in watcher.state["notes"] if not n.startswith("running the last good")]
        return True

    try:
        watcher.run(lambda: False, wakeup=wake_r, on_wakeup=on_wakeup)
    except (_Stop, KeyboardInterrupt):
        log.info("stopped; the rules stay in place")


@cli.command()
@config_option
@last_good_option
@click.option("--remove-on-exit", is_flag=True, help="Uninstall nodeguard's rules when the daemon stops "
              "(by default they stay in the kernel).")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="One line per event on stderr: text (journald priorities under systemd) or JSON.")
@click.option("--metrics-listen", default=None, metavar="ADDR:PORT",
              help="Serve /metrics and /healthz here (overrides metrics.listen; [V6]:PORT for IPv6).")
@click.option("--metrics-allow-remote", is_flag=True, help="Allow a non-loopback --metrics-listen "
              "(as metrics.allow_remote: true).")
@click.option("--config-poll", "config_poll_s", type=click.FloatRange(min=0.05), default=5.0, show_default=True,
              help="Seconds between looks at the policy file (a changed file reloads, as SIGHUP).")
@click.option("-v", "--verbose", is_flag=True, help="Also log debug events.")
def run(config: str | None, last_good: str, remove_on_exit: bool, log_format: str, metrics_listen: str | None,
        metrics_allow_remote: bool, config_poll_s: float, verbose: bool) -> None:
    """The daemon: apply (or adopt) the policy, keep it in place, sample condemned packets, serve
    metrics, reload on SIGHUP or a changed policy file; systemd notify protocol and watchdog.
    SIGTERM leaves the rules in place."""
    import logging

    from .daemon import Daemon, RunOptions
    from .logs import setup_logging

    setup_logging(log_format, logging.DEBUG if verbose else logging.INFO)
    opts = RunOptions(config=config, last_good=last_good, remove_on_exit=remove_on_exit,
                      metrics_listen=metrics_listen, metrics_allow_remote=metrics_allow_remote,
                      config_poll_s=config_poll_s)
    sys.exit(Daemon(opts).run())


@cli.command()
@config_option
def sample(config: str | None) -> None:
    """Foreground sampler: condemned packets → per-flow attack log (and pcap). Never a bottleneck:
    the kernel has already decided; a dead sampler only loses samples."""
    import logging
    import signal

    from .sampler import Sampler

    policy, source = load_policy(config)
    nft = _kernel()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s nodeguard sample: %(message)s")
    plan = make_plan(policy, nft)
    if plan.sampling is None:
        raise NodeguardError("sampling is off in this policy (sampler.enabled: false)")
    signal.signal(signal.SIGTERM, _raise_stop)
    sampler = Sampler(policy, plan, nft)
    try:
        sampler.run(lambda: False)
    except (_Stop, KeyboardInterrupt):
        logging.getLogger("nodeguard.sample").info("stopped after %d samples", sampler.samples)


@cli.command()
@config_option
@click.option("--log", "log_path", type=click.Path(dir_okay=False), default=None, help="Attack log to read.")
@click.option("--since", default=None, help="'15m', '1h', '2d' ago, or an ISO 8601 time.")
@click.option("--until", default=None, help="As --since.")
@click.option("--rule", default=None, help="Only this rule group (e.g. syn-flood).")
@click.option("--top", default=10, show_default=True, help="Sources per rule and per episode.")
@click.option("--json", "as_json", is_flag=True, help="Print data as JSON (same as --format json).")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "csv"]), default="text", show_default=True,
              help="csv: one row per source (or shared /24, /48) per episode, for spreadsheets.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None,
              help="Also draw the timeline to FILE.png (matplotlib) or FILE.svg.")
def report(config, log_path, since, until, rule, top, as_json, fmt, plot) -> None:
    """Attack episodes, the sources behind each (with their networks), top sources per rule and a
    per-minute timeline from the attack log."""
    import time as _time

    from . import report as report_mod
    from .attacklog import read_records

    path = log_path or load_policy(config)[0].sampler.log
    now = _time.time()
    try:
        bounds = report_mod.parse_when(since, now), report_mod.parse_when(until, now)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if plot and not plot.endswith((".svg", ".png")):
        raise click.BadParameter("the picture is FILE.png or FILE.svg", param_hint="--plot")
    rep = report_mod.build(read_records(path), *bounds, rule, top)
    if plot:
        from . import report_plot
        if plot.endswith(".png"):
            report_plot.timeline_png(rep, plot)
        else:
            with open(plot, "w") as f:
                f.write(report_plot.timeline_svg(rep))
    if fmt == "csv":
        click.echo(report_mod.format_csv(rep), nl=False)
    else:
        _emit(rep, as_json or fmt == "json", report_mod.format_text(rep))


@cli.command()
@_common
@click.option("--log", "log_path", type=click.Path(dir_okay=False), default=None, help="Attack log to read.")
@click.option("--since", default="24h", show_default=True, help="'15m', '1h', '2d' ago, or an ISO 8601 time.")
@click.option("--until", default=None, help="As --since.")
@click.option("--margin", default=2.0, show_default=True, type=click.FloatRange(min=1.0),
              help="Headroom over the busiest legitimate source.")
def tune(config, as_json, log_path, since, until, margin) -> None:
    """Propose per-source thresholds from what this node observed (monitor mode); writes nothing."""
    import time as _time

    from . import report as report_mod
    from . import tune as tune_mod
    from .attacklog import read_records

    policy, _source = load_policy(config)
    now = _time.time()
    try:
        bounds = report_mod.parse_when(since, now), report_mod.parse_when(until, now)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    found = tune_mod.analyse(policy, read_records(log_path or policy.sampler.log), *bounds)
    prop = tune_mod.proposal(policy, found, margin)
    _emit(prop, as_json, tune_mod.format_text(prop))


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except NodeguardError as exc:
        click.echo(str(exc) if isinstance(exc, PolicyError) else f"nodeguard: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)


@cli.command()
@click.option("--quick", is_flag=True, help="Short floods (the whole demo in under a minute; what CI runs).")
@click.option("--plot", type=click.Path(dir_okay=False), default="nodeguard-demo-timeline.png", show_default=True,
              help="Where to write the attack timeline picture (PNG).")
@click.option("--keep", type=click.Path(file_okay=False), default=None,
              help="Keep the attack log and the policy in this directory (default: a temporary one, removed).")
@click.option("--cleanup", "cleanup_only", is_flag=True,
              help="Only remove namespaces left by a demo that was killed (kill -9), then exit.")
def demo(quick: bool, plot: str, keep: str | None, cleanup_only: bool) -> None:
    """Floods against a Kubernetes-like node protected by the default policy, in throwaway network
    namespaces (the host's ruleset is never touched), shown live; then the attack report."""
    from .demo.run import main as demo_main

    sys.exit(demo_main(quick, plot, cleanup_only, keep))
