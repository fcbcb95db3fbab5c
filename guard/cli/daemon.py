"""The long-running verbs: watch (keep the rules in place), run (the daemon), sample; and healthz,
the check of a running daemon."""

from __future__ import annotations

import sys

import click

from .. import lastgood, liveness
from ..configwatch import POLL_S
from ._shared import Stop, config_option, kernel, raise_stop, trusted_config

last_good_option = click.option(
    "--last-good", "last_good", type=click.Path(dir_okay=False), default=str(lastgood.DEFAULT), show_default=True,
    help="Where the last policy the kernel accepted is kept, to start with when the configured one is unusable.")


@click.command()
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

    from ..watch.watcher import Watcher

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s nodeguard watch: %(message)s")
    log = logging.getLogger("nodeguard.watch")
    feed = lastgood.ConfiguredPolicy(trusted_config(config), kernel(), log, Path(last_good))
    log.info("watching with %s", feed.source)
    watcher = Watcher(feed.first, feed.nft, on_good=lambda p: feed.accepted(p, watcher.policy),
                      odds_from_file=True)  # a `nodeguard sample` beside it sets the odds
    feed.note_fallback(watcher)
    reload_requested = []
    wake_r, wake_w = socket.socketpair()
    for s in (wake_r, wake_w):
        s.setblocking(False)
    signal.set_wakeup_fd(wake_w.fileno())  # a signal wakes the watcher's select at once
    signal.signal(signal.SIGHUP, lambda *_: reload_requested.append(True))
    signal.signal(signal.SIGTERM, raise_stop)

    def on_wakeup() -> bool:
        if not reload_requested:
            return False
        reload_requested.clear()
        return feed.reload(watcher)

    try:
        watcher.run(lambda: False, wakeup=wake_r, on_wakeup=on_wakeup)
    except (Stop, KeyboardInterrupt):
        log.info("stopped; the rules stay in place")


@click.command()
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
@click.option("--config-poll", "config_poll_s", type=click.FloatRange(min=0.05), default=POLL_S, show_default=True,
              help="Seconds between looks at the policy file (a changed file reloads, as SIGHUP).")
@click.option("-v", "--verbose", is_flag=True, help="Also log debug events.")
def run(config: str | None, last_good: str, remove_on_exit: bool, log_format: str, metrics_listen: str | None,
        metrics_allow_remote: bool, config_poll_s: float, verbose: bool) -> None:
    """The daemon: apply (or adopt) the policy, keep it in place, sample condemned packets, serve
    metrics, reload on SIGHUP or a changed policy file; systemd notify protocol and watchdog.
    SIGTERM leaves the rules in place."""
    import logging

    from ..daemon.supervisor import Daemon, RunOptions
    from ..logs import setup_logging

    setup_logging(log_format, logging.DEBUG if verbose else logging.INFO)
    opts = RunOptions(config=config, last_good=last_good, remove_on_exit=remove_on_exit,
                      metrics_listen=metrics_listen, metrics_allow_remote=metrics_allow_remote,
                      config_poll_s=config_poll_s)
    sys.exit(Daemon(opts).run())


@click.command()
@config_option
def sample(config: str | None) -> None:
    """Foreground sampler: condemned packets → per-flow attack log (and pcap). Never a bottleneck:
    the kernel has already decided; a dead sampler only loses samples."""
    import logging
    import signal

    from ..apply import make_plan
    from ..errors import NodeguardError
    from ..policy.load import load_policy
    from ..sampler import Sampler

    policy, source = load_policy(config, trusted=True)  # it changes the firewall (the sampling odds)
    nft = kernel()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s nodeguard sample: %(message)s")
    plan = make_plan(policy, nft)
    if plan.sampling is None:
        raise NodeguardError("sampling is off in this policy (sampler.enabled: false)")
    signal.signal(signal.SIGTERM, raise_stop)
    sampler = Sampler(policy, plan, nft)
    try:
        sampler.run(lambda: False)
    except (Stop, KeyboardInterrupt):
        logging.getLogger("nodeguard.sample").info("stopped after %d samples", sampler.samples)


@click.command()
@click.option("--heartbeat", "path", type=click.Path(dir_okay=False), default=str(liveness.heartbeat_path()),
              show_default=True, help="The file `nodeguard run` beats (beside watcher.state_file).")
@click.option("--max-age", type=click.FloatRange(min=0, min_open=True), default=liveness.MAX_AGE_S,
              show_default=True, help="Seconds without a turn of the main loop that make the daemon stale.")
def healthz(path: str, max_age: float) -> None:
    """Exit 0 while `nodeguard run` is alive and its main loop turned within --max-age seconds,
    1 otherwise, with one line: for an exec liveness probe (reads one file, opens no socket)."""
    from pathlib import Path

    click.echo(liveness.check(Path(path), max_age))
