"""The daemon itself (``nodeguard run``; the whole design in guard/daemon/__init__.py): it prepares
everything that can refuse to start, runs the watcher's loop with its heartbeat, handles signals
and reloads, and says what it does (the STATUS= line, its part of a metrics snapshot)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .. import lastgood
from ..apply import uninstall
from ..backend.kinds import describe, kind_for
from ..backend.nft import Nft, require_net_admin
from ..configfile import check_config_file
from ..configwatch import POLL_S, ConfigWatch
from ..counters import drops_by_group
from ..errors import EnvironmentProblem, NodeguardError
from ..endpoint import NotLoopback, parse_listen
from ..liveness import MAX_AGE_S, HeartbeatFile, heartbeat_path
from ..metrics import Heartbeat, Snapshot
from ..notify import Notifier, watchdog_interval
from ..policy.load import configured_path
from ..policy.schema import Policy
from ..watch.watcher import Watcher
from .crowdsec_part import CrowdsecPart
from .parts import MetricsPart, SamplerPart
from .provider import MetricsProvider
from .snapshot_part import SnapshotPart
from .valve_part import ValvePart

log = logging.getLogger("nodeguard.run")

STATUS_EVERY_S = 10.0  # how often the STATUS= line's drops/s is refreshed (one terse listing)


@dataclass
class RunOptions:
    config: str | None = None
    last_good: str = str(lastgood.DEFAULT)
    remove_on_exit: bool = False
    metrics_listen: str | None = None  # overrides metrics.listen
    metrics_allow_remote: bool = False  # or metrics.allow_remote
    config_poll_s: float = POLL_S


# --- the daemon -----------------------------------------------------------------------------
class Daemon:
    def __init__(self, opts: RunOptions, notifier: Notifier | None = None, env: dict | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.opts, self.clock = opts, clock
        self.env = os.environ if env is None else env
        self.notifier = notifier or Notifier(env=self.env)
        self.watchdog_s = watchdog_interval(self.env)
        self.heartbeat = Heartbeat(max_age_s=MAX_AGE_S)
        self.heartbeat_file = HeartbeatFile()  # for `nodeguard healthz`, the DaemonSet's liveness probe
        self.watcher: Watcher | None = None
        self.crowdsec = CrowdsecPart(lambda: self.watcher.last_plan if self.watcher else None,
                                     lambda: self.watcher.policy if self.watcher else None, clock)
        self.sampler = SamplerPart(clock, post_odds=self._post_odds, on_bans=self.crowdsec.banned)
        self.metrics: MetricsPart | None = None
        self.valve = ValvePart(lambda: self.watcher.last_plan if self.watcher else None,
                               lambda: self.watcher.policy.syn.valve_engage_failures, clock)
        self.provider = MetricsProvider(self, clock)
        self.snapshots = SnapshotPart(lambda: self.watcher, clock)
        self.configured: Path | None = configured_path(opts.config)
        self.repair_kinds: dict[str, int] = {}
        self._stop = False
        self._reload = False
        self._ready = False
        self._reloaded = False  # READY=1 owed after a reload
        self._seen_repairs = 0
        self._deny_watches: dict[str, ConfigWatch] = {}  # the policy's deny files, polled as the policy is
        self._status = ""
        self._rate: tuple[float, int] | None = None  # (when, total condemned packets) for drops/s
        self._drops_per_s = 0.0
        self._next_status = 0.0
        self._last_watchdog = 0.0
        self._wake_r, self._wake_w = socket.socketpair()
        for s in (self._wake_r, self._wake_w):
            s.setblocking(False)
        self._odds_lock = threading.Lock()
        self._odds_wanted: dict[str, int] | None = None  # asked for by the sampler thread, not yet installed
        self._odds_plan = None  # the watcher's plan for the odds it installed last

    # --- start ------------------------------------------------------------------------------
    def _metrics_listen(self, policy: Policy) -> tuple[str, int]:
        listen = self.opts.metrics_listen or policy.metrics.listen
        allow = self.opts.metrics_allow_remote or policy.metrics.allow_remote
        try:
            return parse_listen(listen, allow)
        except ValueError as exc:
            where = "--metrics-listen" if self.opts.metrics_listen else "metrics.listen"
            hint = "; add --metrics-allow-remote" if self.opts.metrics_listen and isinstance(exc, NotLoopback) else ""
            raise EnvironmentProblem(f"{where}: {exc}{hint}") from None

    def prepare(self) -> None:
        """Everything that can refuse to start (exit 2, one line) before anything runs."""
        require_net_admin()
        if self.configured is not None:
            check_config_file(self.configured)  # only the operator's file: the built-in one is ours
        self.nft = Nft()
        # the poller's first look comes before the policy is read, so no edit can fall in between
        self.configwatch = ConfigWatch(self.configured, self.opts.config_poll_s, self.clock) \
            if self.configured is not None else None
        config = str(self.configured) if self.configured is not None else None
        self.feed = lastgood.ConfiguredPolicy(config, self.nft, log, Path(self.opts.last_good))
        self.metrics = MetricsPart(self._metrics_listen(self.feed.first), self.provider, self.heartbeat, self.clock)
        self.watcher = Watcher(self.feed.first, self.nft,
                               on_good=lambda p: self.feed.accepted(p, self.watcher.policy),
                               last_good=Path(self.opts.last_good))
        self.feed.note_fallback(self.watcher)

    # --- run --------------------------------------------------------------------------------
    def run(self) -> int:
        self.prepare()
        tick = min(1.0, self.watchdog_s / 4) if self.watchdog_s else 1.0
        log.info("starting with %s (pid %d; notify %s, watchdog %s, config poll %s)", self.feed.source, os.getpid(),
                 "on" if self.notifier.enabled else "off",
                 f"{self.watchdog_s:g} s" if self.watchdog_s else "off",
                 f"every {self.opts.config_poll_s:g} s" if self.configwatch else "off (built-in policy)")
        old = self._signals()
        try:
            self.watcher.run(lambda: self._stop, wakeup=self._wake_r, on_wakeup=self._on_wakeup,
                             heartbeat=self._heartbeat, tick_s=tick)
        finally:
            self.notifier.stopping("stopping")
            self.sampler.stop()
            self.valve.stop()
            self.snapshots.stop()
            self.crowdsec.stop()
            if self.metrics is not None:
                self.metrics.stop()
            for sig, handler in old.items():
                signal.signal(sig, handler)
            signal.set_wakeup_fd(-1)
        if self.opts.remove_on_exit:
            removed = describe(uninstall(self.nft))
            log.info("stopped; --remove-on-exit removed nodeguard from: %s", ", ".join(removed) or "nothing (not installed)")
        else:
            log.info("stopped; the rules stay in place")
        return 0

    def _signals(self) -> dict:
        import faulthandler

        faulthandler.register(signal.SIGUSR2, all_threads=True)  # `kill -USR2`: every thread's stack on stderr
        faulthandler.enable(all_threads=True)  # a fatal error (SIGABRT, SIGSEGV) says where each thread was
        old = {}
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)

        def stop(signum: int, _frame: Any) -> None:
            self._stop = True

        def hup(_signum: int, _frame: Any) -> None:
            self._reload = True
        for sig, handler in ((signal.SIGTERM, stop), (signal.SIGINT, stop), (signal.SIGHUP, hup)):
            old[sig] = signal.signal(sig, handler)
        return old

    def request_reload(self) -> None:
        self._reload = True
        try:
            self._wake_w.send(b"r")
        except OSError:
            pass

    def _post_odds(self, wanted: dict[str, int]) -> None:
        """From the sampler thread: new sampling odds, for the watcher to install in its own thread
        (it is the only writer of the kernel and of the odds file). The latest ask wins."""
        with self._odds_lock:
            self._odds_wanted = dict(wanted)
        try:
            self._wake_w.send(b"o")
        except OSError:  # full: a wakeup is pending anyway
            pass

    # --- called by the watcher's loop -------------------------------------------------------
    def _heartbeat(self) -> None:
        now = self.clock()
        if self.watchdog_s:
            self.notifier.watchdog()
        self.heartbeat.beat()
        w = self.watcher
        self.heartbeat_file.beat(heartbeat_path(w.policy.watcher.state_file))
        repairs = w.state["repairs"]
        if repairs > self._seen_repairs:  # at most one repair per turn: last_reason is its reason
            kind = w.state.get("last_kind") or "other"
            self.repair_kinds[kind] = self.repair_kinds.get(kind, 0) + repairs - self._seen_repairs
            self._seen_repairs = repairs
        if w.good_policy is not None and not self._ready:
            self._ready = True
            self._refresh_rate(now)
            self._status = self.status_text()
            self.notifier.ready(self._status)
            log.info("ready: %s", self._status)
        elif self._reloaded and self._ready:
            self._reloaded = False
            self._status = self.status_text()
            self.notifier.ready(self._status)
        if self.configwatch is not None and self.configwatch.check():
            log.info("%s changed; reloading", self.configured)
            self.request_reload()
        elif self.configwatch is not None and (changed := self._deny_files_changed(w.policy)):
            log.info("%s changed; reloading", ", ".join(changed))
            self.request_reload()
        if self._ready:
            self.sampler.tick(w.policy, w.last_plan, odds_only=w.last_plan is self._odds_plan)
            self.metrics.tick()
            self.valve.tick()
            self.snapshots.tick()
            self.crowdsec.tick()
            if now >= self._next_status:
                self._refresh_rate(now)
            text = self.status_text()
            if text != self._status:
                self._status = text
                self.notifier.status(text)

    def _deny_files_changed(self, policy) -> list[str]:
        """The deny files of ``policy`` whose content changed since the last look (each polled as the
        policy file is: a blocklist refreshed by a cron job reloads without a SIGHUP)."""
        paths = tuple(policy.deny.files)
        if tuple(self._deny_watches) != paths:
            self._deny_watches = {p: self._deny_watches.get(p) or ConfigWatch(p, self.opts.config_poll_s, self.clock)
                                  for p in paths}
        return [p for p, watch in self._deny_watches.items() if watch.check()]

    def _refresh_rate(self, now: float) -> None:
        self._next_status = now + STATUS_EVERY_S
        plan = self.watcher.last_plan
        if plan is None:
            return
        try:
            total = sum(c["packets"] for c in drops_by_group(plan, self.watcher.nft).values())
        except NodeguardError as exc:
            log.debug("reading counters for the status line: %s", exc)
            return
        if self._rate is not None and now > self._rate[0]:
            before = self._rate[1] if total >= self._rate[1] else 0  # a counter reset: a new rule
            self._drops_per_s = (total - before) / (now - self._rate[0])
        self._rate = (now, total)

    def _on_wakeup(self) -> bool:
        # odds first: installed with the policy in place, not with a reloaded one not yet installed
        with self._odds_lock:
            wanted, self._odds_wanted = self._odds_wanted, None
        if wanted is not None:
            try:
                self._odds_plan = self.watcher.set_odds(wanted) or self._odds_plan
            except Exception:
                if self._reload:
                    self.request_reload()  # the loop logs this and goes on: the reload comes next turn
                raise
        if not self._reload:
            return False
        self._reload = False
        self._reloaded = True
        where = str(self.configured) if self.configured is not None else "the built-in policy"
        self.notifier.reloading(f"reloading {where}")
        listen: list[tuple[str, int]] = []
        if not self.feed.reload(self.watcher, check=lambda new: listen.append(self._metrics_listen(new))):
            return False
        self.metrics.move(listen[0])
        return True  # the watcher now installs it: one state-keeping transaction

    # --- what is reported -------------------------------------------------------------------
    def _backend_name(self) -> str:
        """The backend as the watcher last named it; before its first check, the plan's, else the policy's kind."""
        plan = self.watcher.last_plan
        return self.watcher.state.get("backend") or (plan.backend.name if plan else kind_for(self.watcher.policy).name)

    def status_text(self) -> str:
        st = self.watcher.state
        parts = [self._backend_name()]
        if st.get("contested_by") and self.watcher.damper.contested:
            parts.append(f"CONTESTED by {st['contested_by']}")
        parts.append("in sync" if st.get("in_sync") else "DRIFT")
        parts.append(f"{st['repairs']} repairs")
        parts.append(f"{self._drops_per_s:.0f} drops/s")
        if self.valve.engaged:
            parts.append("SYN VALVE ENGAGED")
        if self.crowdsec.problem is not None and self.crowdsec.enabled:
            parts.append("CROWDSEC PULL FAILING")
        if self.watcher.has_note(lastgood.FALLBACK_NOTE):
            parts.append("RUNNING THE LAST GOOD POLICY")
        down = [p.name for p in (self.sampler, self.metrics) if p is not None and p.backoff.failures and not p.running]
        if down:
            parts.append(f"{' and '.join(down)} restarting")
        return "; ".join(parts)

    def snapshot(self) -> Snapshot:
        """The daemon's part of a metrics snapshot (the provider adds the kernel readings)."""
        w = self.watcher
        st = dict(w.state)
        plan = w.last_plan
        sampling = plan.sampling if plan is not None else None
        queues = []
        if sampling is not None and sampling.transport == "nfqueue":
            queues = [sampling.queue_base + i for i in range(len(plan.ruleset.sample_groups))]
        return {
            "backend": self._backend_name(),
            "in_sync": bool(st.get("in_sync")),
            "contested": bool(w.damper.contested),
            "repairs": dict(self.repair_kinds),
            "reloads": {"ok": st.get("reloads_ok", 0), "failed": st.get("reloads_failed", 0)},
            "port_updates": st.get("port_updates", 0),
            "last_apply": st.get("last_apply"),
            "sampled": self.sampler.sampled(),
            "sampler": {"transport": sampling.transport if sampling else None,
                        "nflog_enobufs": self.sampler.enobufs(), "queues": queues},
            "syn_valve": self.valve.snapshot(),
            "state_snapshot_age_s": self.snapshots.age(),
            "crowdsec": self.crowdsec.snapshot(),
            "components": {p.name: {"up": p.running, "restarts": p.restarts}
                           for p in (self.sampler, self.metrics) if p is not None
                           and (p is not self.sampler or sampling is not None)},
        }
