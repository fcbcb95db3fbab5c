"""``nodeguard sample``: read the kernel's capped sample of condemned packets, aggregate, log.

The kernel rules decide and drop; this process only watches. If it is slow or dead,
samples are lost (NFLOG drops them, NFQUEUE without bypass drops the packets, which
were condemned anyway), never protection.
"""

from __future__ import annotations

import heapq
import logging
import select
import socket
import time
from operator import itemgetter
from typing import Callable

from .aggregate import Episodes, Window, safe, source_key
from . import bans, pace, sampling_odds
from .apply import Plan, install_in_place, make_plan
from .errors import NodeguardError
from .attacklog import AttackLog, PcapLog
from .backend.nft import Nft
from .counters import condemning_ids, condemned_by_group, count_sets, trusted_sources
from .nflog import NflogReader, Sample
from .packet import parse
from .persource import LastCounts, address
from .policy.schema import Policy

log = logging.getLogger("nodeguard.sample")


def _ifname(index: int, cache: dict[int, str]) -> str:
    if index not in cache:
        try:
            cache[index] = socket.if_indextoname(index) if index else ""
        except OSError:
            cache[index] = str(index)
    return cache[index]


OBSERVED_TOP = 100  # sources per rule group and window kept in the log for `nodeguard tune`


def observed_records(start: float, end: float, observed: dict[tuple[str, str], dict[str, int]],
                     trusted: set[str]) -> list[dict]:
    """The busiest sources of every observed threat in this window, with their packet rate, and
    whether each had completed a TCP handshake (the trusted sets: what a blind spoofer cannot do)."""
    seconds = max(end - start, 1e-3)
    out = []
    for (group, _mode), counts in observed.items():
        for src, n in sorted(counts.items(), key=lambda kv: -kv[1])[:OBSERVED_TOP]:
            if n:
                out.append({"type": "observed", "start": start, "end": end, "rule": group, "src": safe(src),
                            "packets": n, "pps": round(n / seconds, 1), "handshake": src in trusted})
    return out


class Sampler:
    def __init__(self, policy: Policy, plan: Plan, nft: Nft, clock: Callable[[], float] = time.time,
                 post_odds: Callable[[dict[str, int]], None] | None = None,
                 on_bans: Callable[[list[dict]], None] | None = None):
        """``post_odds`` (the daemon): new odds are asked of it, whose watcher installs them and
        hands the new plan back (set_plan); without it (``nodeguard sample``) this sampler installs them.
        ``on_bans`` (the daemon): each window's new ``ban`` records, for CrowdSec to hear of."""
        if plan.sampling is None:
            raise ValueError("sampling is off in this policy (sampler.enabled: false)")
        cfg = policy.sampler
        self.policy, self.cfg, self.plan, self.nft, self.clock = policy, cfg, plan, nft, clock
        self.post_odds, self.on_bans = post_odds, on_bans
        self.asked: dict[str, int] | None = None  # odds posted and not yet in a plan handed to us
        self.nflog = self.nfq = self.pcap = None
        self.log = AttackLog(cfg.log, cfg.rotate.max_bytes, cfg.rotate.keep)
        try:
            self.pcap = PcapLog(cfg.pcap, cfg.rotate.max_bytes, cfg.rotate.keep) if cfg.pcap else None
            s = plan.sampling
            # NFLOG carries the nflog transport and every monitor-mode group (whatever the transport)
            monitored = any(c.role == "monitor" for c in plan.ruleset.chains)
            if s.transport == "nflog" or monitored:
                self.nflog = NflogReader(s.nflog_group, s.snaplen)
            if s.transport == "nfqueue":
                from .nfqueue import NfqueueReader
                queues = {s.queue_base + i: g for i, g in enumerate(plan.ruleset.sample_groups)}
                self.nfq = NfqueueReader(queues, s.snaplen)
            self.episodes = Episodes()
            self.ifnames: dict[int, str] = {}
            self.samples = 0
            self.sampled: dict[str, int] = {}  # samples received per rule group
            self._last_counts = condemned_by_group(plan, nft)
            self._sources = LastCounts()
            self._read_sources()
            self._bans, self._bans_at = self._read_bans(), self.clock()  # bans from before we ran: not logged
            self._bans_due = self._bans_at
            self.window = Window(self.clock(), cfg.max_flows, self._one_in())
        except BaseException:
            self._close()  # a half-built sampler must not keep the NFLOG group or queues bound
            raise

    @property
    def nflog_enobufs(self) -> int:
        return self.nflog.dropped if self.nflog else 0

    def handle(self, samples: list[Sample]) -> None:
        for smp in samples:
            pkt = parse(smp.payload)
            self.window.add(smp.group, pkt, _ifname(smp.ifindex, self.ifnames), smp.ts, smp.mode)
            if self.pcap:
                self.pcap.write(smp.payload, smp.ts, pkt.length)
            self.sampled[smp.group] = self.sampled.get(smp.group, 0) + 1
        self.samples += len(samples)

    def close_window(self, adapt: bool = True) -> None:
        now = self.clock()
        counts = condemned_by_group(self.plan, self.nft)
        # a counter that went down was reset by a re-apply: count from zero
        delta = {g: (n - self._last_counts.get(g, 0)) if n >= self._last_counts.get(g, 0) else n
                 for g, n in counts.items()}
        self._last_counts = counts
        seconds = max(now - self.window.start, 1e-3)
        exact, observed = self._exact()
        records = (self.window.records(now, delta, exact) + self.episodes.update(self.window.start, now, delta)
                   + observed_records(self.window.start, now, observed,
                                      {source_key(a) for a in trusted_sources(self.plan, self.nft)} if observed else set()))
        records += self._ban_records(now, exact)
        if adapt:
            self._adapt_odds(delta, seconds)
        for rec in records:
            if rec["type"] != "window" or any(delta.values()) or rec["sampled"]:
                self.log.write(rec)
        self.log.flush()
        if self.pcap:
            self.pcap.flush()
        self.window = Window(now, self.cfg.max_flows, self._one_in())

    def _one_in(self) -> dict[str, int]:
        """The sampling odds the kernel has now, per group (the log's window records say them: a
        window's ``sampled`` is about ``condemned`` / ``one_in`` once the odds held all of it).
        Odds just posted are the kernel's a few ms into the window: the window is theirs."""
        asked = self.asked
        if asked is not None:
            return {g: 2 ** asked.get(g, 0) for g in self.plan.ruleset.sample_groups}
        return {g: self.plan.sampling.one_in(g) for g in self.plan.ruleset.sample_groups}

    def _read_bans(self) -> list[bans.Ban]:
        return bans.banned(self.plan, self.nft)

    def _ban_records(self, now: float, exact: dict) -> list[dict]:
        """``ban``/``unban`` records: the ban sets against the last read's (escalation, bans.py). Paced
        (pace.py): full ban sets are read every few windows, not every one."""
        if now < self._bans_due:
            return []
        cpu = pace.cpu()
        current = self._read_bans()
        cost = pace.cpu() - cpu
        self._bans_due = now if cost < pace.CHEAP_S else pace.next_due(now, 0.0, cost, pace.BANS)
        out = bans.ban_records(self._bans, current, exact, now, now - self._bans_at, self.policy.escalate.after_s)
        self._bans, self._bans_at = current, now
        if self.on_bans is not None and any(r["type"] == "ban" for r in out):
            self.on_bans([r for r in out if r["type"] == "ban"])
        return out

    def _exact(self) -> tuple[dict[tuple[str, str], dict[str, int]], dict[tuple[str, str], dict[str, int]]]:
        """The kernel's per-source counts in this window (a count that went down is new): every source of
        the enforce and monitor sets, and the busiest ``OBSERVED_TOP`` of each observed threat's (a
        random-source flood fills those: only the busiest are logged, and only they are kept)."""
        exact: dict[tuple[str, str], dict[str, int]] = {}
        observed: dict[tuple[str, str], dict[str, int]] = {}
        forget = []
        for (group, mode, version), s in count_sets(self.plan).items():
            quiet: list[int] | None = [] if self.plan.backend.forgets_sources else None
            rows = self._sources.since(s.name, self.plan.backend.source_counts(self.nft, s), quiet)
            if mode == "observed":
                rows = heapq.nlargest(OBSERVED_TOP, rows, key=itemgetter(1))
            (observed if mode == "observed" else exact).setdefault((group, mode), {}).update(
                (address(key, version), n) for key, n in rows)
            forget += [(s, address(key, version)) for key in quiet or ()]
        self._sources.keep(s.name for s in count_sets(self.plan).values())
        if forget:
            self.plan.backend.forget_sources(forget)
        return exact, observed

    def _read_sources(self) -> None:
        """Take the kernel's per-source counts as they are now as the last read (nothing logged)."""
        for s in count_sets(self.plan).values():
            for _ in self._sources.since(s.name, self.plan.backend.source_counts(self.nft, s)):
                pass

    def set_plan(self, plan: Plan, rebase: bool | None = None) -> None:
        """The rules changed (a reload): count and adapt against the new ones from now on. The
        counters are read afresh only when the rules or sets they live in changed (``rebase`` None:
        find out), else packets between the last read and now would go uncounted."""
        old, self.plan, self.asked = self.plan, plan, None
        if rebase is None:
            rebase = (condemning_ids(old) != condemning_ids(plan)
                      or {s.name for s in old.ruleset.sets if s.kind == "counts"}
                      != {s.name for s in plan.ruleset.sets if s.kind == "counts"})
        if rebase:
            self._last_counts = condemned_by_group(plan, self.nft)
            self._sources = LastCounts()
            self._read_sources()

    def _adapt_odds(self, delta: dict[tuple[str, str], int], seconds: float) -> None:
        """Keep each group's samples near half its cap with the odds 1 in 2**k (sampling_odds.py);
        a change is one state-keeping transaction that rewrites the sample chains only (in the
        daemon, the watcher's: ``post_odds``)."""
        s = self.plan.sampling
        current = dict(s.exponents)
        cap = self.cfg.rate.per_s
        wanted = {}
        for group in self.plan.ruleset.sample_groups:
            rate = sum(n for (g, _mode), n in delta.items() if g == group) / seconds
            wanted[group] = sampling_odds.next_exponent(current.get(group, 0), rate, cap)
        self.asked = None
        if {g: k for g, k in wanted.items() if k} == {g: k for g, k in current.items() if k}:
            return
        if self.post_odds is not None:  # the daemon's watcher installs them, then hands us its plan
            self.asked = wanted
            self.post_odds(wanted)
            return
        try:
            sampling_odds.save(sampling_odds.path_for(self.policy), wanted)
        except (OSError, NodeguardError) as exc:  # a watcher beside us renders from the file: keep both as they are
            log.warning("cannot save the sampling odds (%s); keeping them", exc)
            return
        try:
            flavour = (self.plan.flavour, self.plan.backend_reason) if self.plan.flavour else None
            plan = make_plan(self.policy, self.nft, flavour=flavour, interfaces=self.plan.ruleset.interfaces,
                             odds={g: k for g, k in wanted.items() if k})
            install_in_place(plan, self.nft)
        except NodeguardError as exc:
            sampling_odds.save(sampling_odds.path_for(self.policy), current)  # the watcher renders from the file
            log.warning("could not change the sampling odds (%s); keeping them", exc)
            return
        log.info("sampling odds now %s", sampling_odds.describe(wanted))
        self.set_plan(plan, rebase=False)

    def run(self, should_stop: Callable[[], bool], wake: socket.socket | None = None) -> None:
        """Until ``should_stop()``; a byte on ``wake`` makes the loop look at once (the daemon
        stopping or restarting it)."""
        fds = ([self.nflog.fileno()] if self.nflog else []) + (self.nfq.filenos() if self.nfq else [])
        waits = fds + ([wake] if wake is not None else [])
        log.info("sampling via %s (%s); log %s", self.plan.sampling.transport, self.plan.sampling_reason, self.cfg.log)
        try:
            while not should_stop():
                deadline = self.window.start + self.cfg.window_s
                ready, _, _ = select.select(waits, [], [], max(0.0, deadline - self.clock()))
                if wake is not None and wake in ready:
                    _drain(wake)
                    ready = [fd for fd in ready if fd is not wake]
                if self.nflog and self.nflog.fileno() in ready:
                    self.handle(self.nflog.read())
                if self.nfq and ready:
                    self.handle(self.nfq.read(ready))
                if self.clock() >= deadline:
                    self.close_window()
        finally:
            try:
                self.close_window(adapt=False)  # stopping: log what we have, change nothing in the kernel
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
