"""``nodeguard sample``: read the kernel's capped sample of condemned packets, aggregate, log.

The kernel rules decide and drop; this process only watches. If it is slow or dead,
samples are lost (NFLOG drops them, NFQUEUE without bypass drops the packets, which
were condemned anyway), never protection.
"""

from __future__ import annotations

import logging
import select
import socket
import time
from typing import Callable

from .aggregate import Episodes, Window
from .apply import Plan
from .attacklog import AttackLog, PcapLog
from .backend.nft import Nft
from .counters import condemned_by_group
from .nflog import NflogReader, Sample
from .packet import parse
from .policy import Policy

log = logging.getLogger("nodeguard.sample")


def _ifname(index: int, cache: dict[int, str]) -> str:
    if index not in cache:
        try:
            cache[index] = socket.if_indextoname(index) if index else ""
        except OSError:
            cache[index] = str(index)
    return cache[index]


class Sampler:
    def __init__(self, policy: Policy, plan: Plan, nft: Nft, clock: Callable[[], float] = time.time):
        if plan.sampling is None:
            raise ValueError("sampling is off in this policy (sampler.enabled: false)")
        cfg = policy.sampler
        self.cfg, self.plan, self.nft, self.clock = cfg, plan, nft, clock
        self.nflog = self.nfq = self.pcap = None
        self.log = AttackLog(cfg.log, cfg.rotate.max_bytes, cfg.rotate.keep)
        try:
            self.pcap = PcapLog(cfg.pcap, cfg.rotate.max_bytes, cfg.rotate.keep) if cfg.pcap else None
            s = plan.sampling
            if s.transport == "nflog":
                self.nflog = NflogReader(s.nflog_group, s.snaplen)
            else:
                from .nfqueue import NfqueueReader
                queues = {s.queue_base + i: g for i, g in enumerate(plan.ruleset.sample_groups)}
                self.nfq = NfqueueReader(queues, s.snaplen)
            self.episodes = Episodes()
            self.ifnames: dict[int, str] = {}
            self.samples = 0
            self.sampled: dict[str, int] = {}  # samples received per rule group
            self._last_counts = condemned_by_group(plan, nft)
            self.window = Window(self.clock(), cfg.max_flows)
        except BaseException:
            self._close()  # a half-built sampler must not keep the NFLOG group or queues bound
            raise

    @property
    def nflog_enobufs(self) -> int:
        return self.nflog.dropped if self.nflog else 0

    def handle(self, samples: list[Sample]) -> None:
        for smp in samples:
            pkt = parse(smp.payload)
            self.window.add(smp.group, pkt, _ifname(smp.ifindex, self.ifnames), smp.ts)
            if self.pcap:
                self.pcap.write(smp.payload, smp.ts, pkt.length)
            self.sampled[smp.group] = self.sampled.get(smp.group, 0) + 1
        self.samples += len(samples)

    def close_window(self) -> None:
        now = self.clock()
        counts = condemned_by_group(self.plan, self.nft)
        # a counter that went down was reset by a re-apply: count from zero
        delta = {g: (n - self._last_counts.get(g, 0)) if n >= self._last_counts.get(g, 0) else n
                 for g, n in counts.items()}
        self._last_counts = counts
        records = self.window.records(now, delta) + self.episodes.update(self.window.start, now, delta)
        for rec in records:
            if rec["type"] != "window" or any(delta.values()) or rec["sampled"]:
                self.log.write(rec)
        self.log.flush()
        if self.pcap:
            self.pcap.flush()
        self.window = Window(now, self.cfg.max_flows)

    def run(self, should_stop: Callable[[], bool], wake: socket.socket | None = None) -> None:
        """Until ``should_stop()``; a byte on ``wake`` makes the loop look at once (the daemon
        stopping or restarting it)."""
        fds = [self.nflog.fileno()] if self.nflog else self.nfq.filenos()
        waits = fds + ([wake] if wake is not None else [])
        log.info("sampling via %s (%s); log %s", self.plan.sampling.transport, self.plan.sampling_reason, self.cfg.log)
        try:
            while not should_stop():
                deadline = self.window.start + self.cfg.window_s
                ready, _, _ = select.select(waits, [], [], max(0.0, deadline - self.clock()))
                if wake is not None and wake in ready:
                    _drain(wake)
                    ready = [fd for fd in ready if fd is not wake]
                if ready:
                    self.handle(self.nflog.read() if self.nflog else self.nfq.read(ready))
                if self.clock() >= deadline:
                    self.close_window()
        finally:
            try:
                self.close_window()
            finally:
                self._close()

    def _close(self) -> None:
        """Release the kernel side first (the group or queues can then be bound again), then the files."""
        for thing in (self.nflog, self.nfq, self.log, self.pcap):
            if thing is None:
                continue
            try:
                thing.close()
            except OSError as exc:  # e.g. the last flush of a full disk: the fd is closed anyway
                log.warning("closing %s: %s", type(thing).__name__, exc)


def _drain(sock: socket.socket) -> None:
    try:
        while sock.recv(64):
            pass
    except (BlockingIOError, InterruptedError):
        pass
