"""The daemon's supervised parts: the sampler thread and the metrics endpoint, each restarted with
backoff (1, 2, 4 ... 60 s) when it fails, so that a failure in either never stops the watcher.
The daemon's heartbeat (supervisor.py) ticks them once per turn of the watcher's loop."""

from __future__ import annotations

import dataclasses
import logging
import socket
import threading
import time
from typing import Callable

from ..backend.nft import Nft
from ..metrics import Heartbeat, MetricsServer
from ..policy.schema import Policy

log = logging.getLogger("nodeguard.run")

RESTART_MIN_S, RESTART_MAX_S = 1.0, 60.0
HEALTHY_AFTER_S = 60.0  # a restarted part that ran this long has its backoff reset


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

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 post_odds: Callable[[dict[str, int]], None] | None = None,
                 on_bans: Callable[[list[dict]], None] | None = None):
        self.clock = clock
        self.post_odds = post_odds  # how the sampler asks the watcher for new odds (never directly)
        self.on_bans = on_bans  # where the sampler's new ban records go (CrowdSec's push)
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

    def tick(self, policy: Policy, plan, odds_only: bool = False) -> None:
        """From the main loop: reap, restart, or start for a new plan. ``odds_only``: the plan is the
        watcher's for new sampling odds, which rewrote only sample chains (no counter to re-read)."""
        want = plan is not None and plan.sampling is not None
        # the sampler asks for new odds (sampling_odds.py): a new render, not a new sampler
        key = (dataclasses.replace(plan.sampling, exponents=()), plan.ruleset.sample_groups, plan.backend.name,
               policy.sampler) if want else None
        if self.thread is not None and self.thread.is_alive():
            if key == self.key:
                if self.sampler is not None and self.sampler.plan is not plan:
                    # same sampling, new render (a reload, new odds): count its rules
                    self.sampler.set_plan(plan, rebase=False if odds_only else None)
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
        from ..sampler import Sampler

        try:
            sampler = Sampler(policy, plan, Nft(), post_odds=self.post_odds, on_bans=self.on_bans)
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
