"""``nodeguard run``: the one process a node runs.

It applies (or adopts) the policy, then runs three things in one process:

* the **watcher** (guard/watch/) in the main thread: it is the main loop. Its ``heartbeat``
  callback, called once per turn of that loop, pings the systemd watchdog (so a loop that hangs
  stops the pings: no timer thread could notice that), beats ``/healthz``, polls the policy file
  (a Kubernetes ConfigMap update reloads exactly like SIGHUP), keeps the STATUS= line current,
  and supervises the two others;
* the **sampler** (guard/sampler.py) in a thread with its own libnftables context;
* the **metrics** endpoint (guard/metrics.py) in HTTP threads, each scrape answered from the
  watcher's state, the sampler's counters and a cheap kernel read (``MetricsProvider``).

A failure in the sampler or the metrics server never stops the watcher: the thread ends, the
heartbeat sees it, logs one line and starts it again after 1, 2, 4 ... 60 s (a part that then
runs for a minute is healthy again). The watcher itself never dies of an error (watch/loop.py).

Signals: SIGHUP re-reads, validates and kernel-checks the policy, then installs it in one
state-keeping transaction (``RELOADING=1`` ... ``READY=1``); a bad one is logged as
``FILE:LINE: field: message``, counted, and the rules in place stay. SIGTERM/SIGINT stop the
daemon and leave the rules (``--remove-on-exit`` uninstalls them).
"""

from __future__ import annotations

import dataclasses

import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import lastgood
from .apply import uninstall
from .backend.nft import Nft, require_net_admin
from .configfile import check_config_file
from .configwatch import ConfigWatch
from .counters import drops_by_group, meter_fill
from .errors import EnvironmentProblem, NodeguardError
from .metrics import Heartbeat, MetricsServer, Snapshot, parse_listen
from .notify import Notifier, watchdog_interval
from .policy.load import DEFAULT_CONFIG, read_policy
from .policy.schema import Policy
from .watch.watcher import Watcher

log = logging.getLogger("nodeguard.run")

STATUS_EVERY_S = 10.0  # how often the STATUS= line's drops/s is refreshed (one terse listing)
RESTART_MIN_S, RESTART_MAX_S = 1.0, 60.0
HEALTHY_AFTER_S = 60.0  # a restarted part that ran this long has its backoff reset
SCRAPE_CACHE_S = 2.0  # scrapes closer together than this share one kernel read
METER_CACHE_S = 30.0  # meter fill is re-counted at most this often (~0.3 s of kernel time per full 65536 meter)


@dataclass
class RunOptions:
    config: str | None = None
    last_good: str = str(lastgood.DEFAULT)
    remove_on_exit: bool = False
    metrics_listen: str | None = None  # overrides metrics.listen
    metrics_allow_remote: bool = False  # or metrics.allow_remote
    config_poll_s: float = 5.0


def configured_path(config: str | None) -> Path | None:
    """The policy file the operator configured: -c, else /etc/nodeguard/config.yaml if it exists.
    None means the built-in default (shipped in the package, nothing to refuse)."""
    if config is not None:
        return Path(config)
    return DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None


# --- supervised parts -----------------------------------------------------------------------
class Backoff:
    def __init__(self, clock: Callable[[], float]):
        self.clock, self.failures, self.next_at = clock, 0, 0.0

    def failed(self) -> float:
        self.failures += 1
        delay = min(RESTART_MAX_S, RESTART_MIN_S * 2 ** (self.failures - 1))
        self.next_at = self.clock() + delay
        return delay

    def due(self) -> bool:
        return self.clock() >= self.next_at


class SamplerPart:
    """The sampler in a thread, restarted with backoff when it fails, and with a new plan when the
    sampling configuration changed (a reload). Its counters survive restarts."""

    name = "sampler"

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.backoff = Backoff(clock)
        self.thread: threading.Thread | None = None
        self.sampler = None
        self.key: tuple | None = None
        self.started_at = 0.0
        self.error: BaseException | None = None
        self.restarts = 0
        self._stop = False
        self._lock = threading.Lock()
        self._sampled: dict[str, int] = {}  # totals of sampler instances that have ended
        self._enobufs = 0
        self._wake_r, self._wake_w = socket.socketpair()
        for s in (self._wake_r, self._wake_w):
            s.setblocking(False)

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive() and self.sampler is not None

    def sampled(self) -> dict[str, int]:
        with self._lock:
            out = dict(self._sampled)
            if self.sampler is not None:
                for g, n in dict(self.sampler.sampled).items():
                    out[g] = out.get(g, 0) + n
            return out

    def enobufs(self) -> int:
        with self._lock:
            return self._enobufs + (self.sampler.nflog_enobufs if self.sampler is not None else 0)

    def tick(self, policy: Policy, plan) -> None:
        """From the main loop: reap, restart, or start for a new plan."""
        want = plan is not None and plan.sampling is not None
        # the sampler changes its own odds (sampling_odds.py): a new render, not a new sampler
        key = (dataclasses.replace(plan.sampling, exponents=()), plan.ruleset.sample_groups, plan.backend.name,
               policy.sampler) if want else None
        if self.thread is not None and self.thread.is_alive():
            if key == self.key:
                if self.sampler is not None and self.sampler.plan is not plan:
                    self.sampler.set_plan(plan)  # same sampling, new render (a reload): count its rules
                if self.backoff.failures and self.clock() - self.started_at >= HEALTHY_AFTER_S:
                    self.backoff.failures = 0
                return
            self.stop()  # the sampling configuration changed: start again below with the new plan
            if self.thread is not None:
                return  # still finishing its last window: next turn
        if self.thread is not None:
            self._reap()
        if not want or not self.backoff.due():
            return
        self._stop, self.error, self.key = False, None, key
        self.started_at = self.clock()
        self.thread = threading.Thread(target=self._main, args=(policy, plan), name="nodeguard-sampler", daemon=True)
        self.thread.start()

    def _main(self, policy: Policy, plan) -> None:
        from .sampler import Sampler

        try:
            sampler = Sampler(policy, plan, Nft())
            with self._lock:
                self.sampler = sampler
            sampler.run(lambda: self._stop, wake=self._wake_r)
        except BaseException as exc:  # noqa: BLE001 - reported by the main loop, which restarts us
            self.error = exc
        finally:
            with self._lock:
                if self.sampler is not None:
                    for g, n in self.sampler.sampled.items():
                        self._sampled[g] = self._sampled.get(g, 0) + n
                    self._enobufs += self.sampler.nflog_enobufs
                    self.sampler = None

    def _reap(self) -> None:
        self.thread.join()
        self.thread = None
        if self.error is not None and not self._stop:
            delay = self.backoff.failed()
            self.restarts += 1
            log.error("sampler failed (%s: %s); restarting it in %.0f s (failure %d); protection is unaffected",
                      type(self.error).__name__, self.error, delay, self.backoff.failures)

    def stop(self, timeout: float = 5.0) -> None:
        if self.thread is None:
            return
        self._stop = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        self.thread.join(timeout)
        if not self.thread.is_alive():
            self.thread = None


class MetricsPart:
    """The HTTP endpoint: bound again with backoff when binding fails or its thread dies."""

    name = "metrics"

    def __init__(self, listen: tuple[str, int], provider, heartbeat: Heartbeat,
                 clock: Callable[[], float] = time.monotonic):
        self.listen, self.provider, self.heartbeat, self.clock = listen, provider, heartbeat, clock
        self.backoff = Backoff(clock)
        self.server: MetricsServer | None = None
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.started_at = 0.0
        self.restarts = 0

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def tick(self) -> None:
        if self.running:
            if self.backoff.failures and self.clock() - self.started_at >= HEALTHY_AFTER_S:
                self.backoff.failures = 0
            return
        if self.thread is not None:  # serve_forever ended by itself: an error
            self._close()
            self._failed(self.error or RuntimeError("the server thread ended"))
        if not self.backoff.due():
            return
        try:
            self.server = MetricsServer(self.listen, self.provider, self.heartbeat)
        except OSError as exc:
            self.server = None
            self._failed(exc)
            return
        self.error = None
        self.started_at = self.clock()
        self.thread = threading.Thread(target=self._serve, name="nodeguard-metrics", daemon=True)
        self.thread.start()
        log.info("metrics on http://%s/metrics", _hostport(self.listen))

    def _serve(self) -> None:
        try:
            self.server.serve_forever()
        except BaseException as exc:  # noqa: BLE001 - the main loop restarts us
            self.error = exc

    def _failed(self, exc: BaseException) -> None:
        delay = self.backoff.failed()
        self.restarts += 1
        log.error("metrics endpoint %s failed (%s); trying again in %.0f s", _hostport(self.listen), exc, delay)

    def _close(self) -> None:
        if self.server is not None:
            try:
                self.server.server_close()
            except OSError:
                pass
        self.server, self.thread = None, None

    def stop(self) -> None:
        if self.server is not None and self.running:
            self.server.shutdown()
        self._close()

    def move(self, listen: tuple[str, int]) -> None:
        if listen != self.listen:
            self.stop()
            self.listen = listen
            self.backoff = Backoff(self.clock)


def _hostport(listen: tuple[str, int]) -> str:
    host, port = listen
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- metrics provider -----------------------------------------------------------------------
class MetricsProvider:
    """One snapshot per scrape (metrics.Snapshot): the watcher's state, the sampler's counters,
    the kernel counters of the condemning rules (one terse listing) and meter fill (a netlink
    element count, at most every METER_CACHE_S). Scrapes within SCRAPE_CACHE_S share one read.
    Runs in HTTP threads, so it has its own libnftables context."""

    def __init__(self, daemon: "Daemon", clock: Callable[[], float] = time.monotonic):
        self.daemon, self.clock = daemon, clock
        self._lock = threading.Lock()
        self._nft: Nft | None = None
        self._snap: tuple[float, Snapshot] | None = None
        self._meters: tuple[float, Any, list] | None = None
        self.reads = 0  # kernel reads (tests check the cache)

    def __call__(self) -> Snapshot:
        with self._lock:
            now = self.clock()
            if self._snap is not None and now - self._snap[0] < SCRAPE_CACHE_S:
                return self._snap[1]
            snap = self.daemon.snapshot()
            plan = self.daemon.watcher.last_plan
            if plan is not None:
                if self._nft is None:
                    self._nft = Nft()
                self.reads += 1
                snap["drops"] = drops_by_group(plan, self._nft)
                key = tuple(s.name for s in plan.ruleset.sets)
                if self._meters is None or self._meters[1] != key or now - self._meters[0] >= METER_CACHE_S:
                    self._meters = (now, key, meter_fill(plan))
                snap["meters"] = self._meters[2]
            self._snap = (now, snap)
            return snap


# --- the daemon -----------------------------------------------------------------------------
class Daemon:
    def __init__(self, opts: RunOptions, notifier: Notifier | None = None, env: dict | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.opts, self.clock = opts, clock
        self.env = os.environ if env is None else env
        self.notifier = notifier or Notifier(env=self.env)
        self.watchdog_s = watchdog_interval(self.env)
        self.heartbeat = Heartbeat(max_age_s=60.0)
        self.watcher: Watcher | None = None
        self.sampler = SamplerPart(clock)
        self.metrics: MetricsPart | None = None
        self.provider = MetricsProvider(self, clock)
        self.configured: Path | None = configured_path(opts.config)
        self.source = ""
        self.repair_kinds: dict[str, int] = {}
        self._texts: dict[int, str] = {}
        self._stop = False
        self._reload = False
        self._ready = False
        self._reloaded = False  # READY=1 owed after a reload
        self._seen_repairs = 0
        self._status = ""
        self._rate: tuple[float, int] | None = None  # (when, total condemned packets) for drops/s
        self._drops_per_s = 0.0
        self._next_status = 0.0
        self._last_watchdog = 0.0
        self._wake_r, self._wake_w = socket.socketpair()
        for s in (self._wake_r, self._wake_w):
            s.setblocking(False)

    # --- start ------------------------------------------------------------------------------
    def _metrics_listen(self, policy: Policy) -> tuple[str, int]:
        listen = self.opts.metrics_listen or policy.metrics.listen
        allow = self.opts.metrics_allow_remote or policy.metrics.allow_remote
        try:
            return parse_listen(listen, allow)
        except ValueError as exc:
            where = "--metrics-listen" if self.opts.metrics_listen else "metrics.listen"
            hint = "; add --metrics-allow-remote" if self.opts.metrics_listen and "loopback" in str(exc) else ""
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
        good = Path(self.opts.last_good)
        config = str(self.configured) if self.configured is not None else None
        policy, self.source, text, why = lastgood.startup_policy(config, self.nft, log, good)
        self.metrics = MetricsPart(self._metrics_listen(policy), self.provider, self.heartbeat, self.clock)
        self._texts = {id(policy): text}
        self.watcher = Watcher(policy, self.nft, on_good=self._keep_good)
        if why:
            self.watcher.state["notes"] = [f"running the last good policy: the configured one is unusable: {why}"]

    def _keep_good(self, policy: Policy) -> None:
        text = self._texts.get(id(policy))
        if text is not None:
            lastgood.save(text, Path(self.opts.last_good))
        self._texts = {k: v for k, v in self._texts.items() if k in (id(policy), id(self.watcher.policy))}

    # --- run --------------------------------------------------------------------------------
    def run(self) -> int:
        self.prepare()
        tick = min(1.0, self.watchdog_s / 4) if self.watchdog_s else 1.0
        log.info("starting with %s (pid %d; notify %s, watchdog %s, config poll %s)", self.source, os.getpid(),
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
            if self.metrics is not None:
                self.metrics.stop()
            for sig, handler in old.items():
                signal.signal(sig, handler)
            signal.set_wakeup_fd(-1)
        if self.opts.remove_on_exit:
            removed = uninstall(self.nft)
            log.info("stopped; --remove-on-exit removed nodeguard from: %s", ", ".join(removed) or "nothing (not installed)")
        else:
            log.info("stopped; the rules stay in place")
        return 0

    def _signals(self) -> dict:
        import faulthandler

        faulthandler.register(signal.SIGUSR2, all_threads=True)  # `kill -USR2`: every thread's stack on stderr
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

    # --- called by the watcher's loop -------------------------------------------------------
    def _heartbeat(self) -> None:
        now = self.clock()
        if self.watchdog_s:
            self.notifier.watchdog()
        self.heartbeat.beat()
        w = self.watcher
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
        if self._ready:
            self.sampler.tick(w.policy, w.last_plan)
            self.metrics.tick()
            if now >= self._next_status:
                self._refresh_rate(now)
            text = self.status_text()
            if text != self._status:
                self._status = text
                self.notifier.status(text)

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
        if not self._reload:
            return False
        self._reload = False
        self._reloaded = True
        where = str(self.configured) if self.configured is not None else "the built-in policy"
        self.notifier.reloading(f"reloading {where}")
        try:
            if self.configured is not None:
                check_config_file(self.configured)
            new, source, text = read_policy(str(self.configured) if self.configured is not None else None)
            listen = self._metrics_listen(new)
        except NodeguardError as exc:  # a bad edit must not drop the protection in place
            self.watcher.state["reloads_failed"] += 1
            log.error("reload failed: %s; the rules in place stay", exc)
            return False
        self._texts[id(new)] = text
        if not self.watcher.reload(new, source):  # kernel-checked first; it logs and counts a refusal
            return False
        self.source = source
        self.watcher.state["notes"] = [n for n in self.watcher.state["notes"]
                                       if not n.startswith("running the last good")]
        self.metrics.move(listen)
        return True  # the watcher now installs it: one state-keeping transaction

    # --- what is reported -------------------------------------------------------------------
    def status_text(self) -> str:
        st = self.watcher.state
        parts = [st.get("backend") or self.watcher.policy.backend]
        if st.get("contested_by") and self.watcher.damper.contested:
            parts.append(f"CONTESTED by {st['contested_by']}")
        parts.append("in sync" if st.get("in_sync") else "DRIFT")
        parts.append(f"{st['repairs']} repairs")
        parts.append(f"{self._drops_per_s:.0f} drops/s")
        if self.watcher.state.get("notes") and any(n.startswith("running the last good") for n in st["notes"]):
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
            "backend": st.get("backend") or (plan.backend.name if plan else w.policy.backend),
            "in_sync": bool(st.get("in_sync")),
            "contested": bool(w.damper.contested),
            "repairs": dict(self.repair_kinds),
            "reloads": {"ok": st.get("reloads_ok", 0), "failed": st.get("reloads_failed", 0)},
            "last_apply": st.get("last_apply"),
            "sampled": self.sampler.sampled(),
            "sampler": {"transport": sampling.transport if sampling else None,
                        "nflog_enobufs": self.sampler.enobufs(), "queues": queues},
            "components": {p.name: {"up": p.running, "restarts": p.restarts}
                           for p in (self.sampler, self.metrics) if p is not None
                           and (p is not self.sampler or sampling is not None)},
        }
