"""Prometheus metrics and the liveness endpoint, served on the policy's ``metrics.listen``.

Every scrape asks a *provider* (a callable the daemon passes in) for one snapshot and turns it
into metrics; only scrapes less than ``SCRAPE_REUSE_S`` apart share one (so that a flood of
requests cannot make the daemon render metrics without pause).
The snapshot is the ``status.collect()`` dict plus a few daemon keys (see ``Snapshot``). A
provider that raises gives ``nodeguard_up 0`` and a log line, never a failed scrape.

Rule groups are named by the provider (``drops``/``sampled`` keys: ``model.build.sample_groups()``,
e.g. ``bogus-flags``, ``icmp-flood``, ``syn-flood``, ``limit-<name>``, ``conn-limit``), never
derived here from rule labels, which are wording for people and may change.

Kernel-wide readings that need no provider come from /proc of the daemon's network namespace:
conntrack fill (``nf_conntrack_count``/``_max``) and NFQUEUE losses
(``/proc/net/netfilter/nfnetlink_queue``).
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any, Callable, Iterator, TypedDict

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, choose_encoder, generate_latest

from . import __version__
from .endpoint import parse_listen  # noqa: F401 (the daemon's and the tests' name for it)
from .httpmessages import Reply, Request, Route, text_reply
from .httpserve import BoundedHTTPServer, Limits

log = logging.getLogger("nodeguard.metrics")

MAX_REASONS = 32  # distinct repair reasons exported; more fold into "other" (bounded cardinality)
_REASON_RE = re.compile(r"[^a-z0-9_]+")
FAMILY = {4: "ipv4", 6: "ipv6"}  # the family label of a set's IP version
SCRAPE_REUSE_S = 1.0  # scrapes closer together than this get the same rendered body


class Snapshot(TypedDict, total=False):
    """What the provider returns: ``status.collect()``'s dict (``backend``, ``in_sync``, ``meters``
    are used from it) plus the daemon's own counters. Every key is optional; a missing one is left
    out of the scrape (or counts as zero where a series must always exist).

    ``drops`` is keyed by ``model.build.sample_groups(policy)`` and read from rules the *model* marks as
    condemning for a group: today ``counters.condemned_by_group`` does this for packets via the
    gotos to ``sample-<group>``; it needs bytes too, and the plain DROP rules when sampling is off
    (a ``group`` field on ``model.ruleset.Rule``, set by ``condemn()``, would make both one lookup)."""

    backend: str                        # "nft", "iptables-nft", "iptables-legacy"
    in_sync: bool                       # the live rules match the policy
    drops: dict[str, dict[str, int]]    # group -> {"packets", "bytes"}: kernel counters of condemned packets
    sampled: dict[str, int]             # group -> samples received by the sampler since the daemon started
    sampler: dict[str, Any]             # {"transport": "nflog"|"nfqueue"|None, "nflog_enobufs": int, "queues": [int]}
                                        # nflog_enobufs: NflogReader.dropped (overruns; each lost >= 1 sample);
                                        # queues: the NFQUEUE numbers in use (queue_base + group index)
    meters: list[dict[str, Any]]        # counters.meter_fill(): [{"set": name, "elements": n, "size": n,
                                        # "version": 4|6, "role": "meter"|"banned"|...}], every per-source set
    bans_refused: int                   # counters.drops_and_refused(): packets of sources due a ban the full set refused
    repairs: dict[str, int]             # reason kind (a short fixed word) -> repairs since start
    contested: bool                     # repairs are being damped (an insert war)
    reloads: dict[str, int]             # {"ok": n, "failed": n} policy reloads since start
    port_updates: int                   # updates of the syn.synproxy.ports: auto set since start (never repairs)
    last_apply: float | None            # unix time of the last transaction that installed our rules
    syn_valve: dict[str, Any] | None    # {"engaged": bool, "engagements": n}: syn.valve auto (daemon/valve_part.py)
    state_snapshot_age_s: float | None  # seconds since bans were last snapshotted (daemon/snapshot_part.py)
    crowdsec: dict[str, Any] | None     # {"decisions": {"ipv4": n, "ipv6": n}, "last_pull": unix time | None,
                                        # "errors": {"pull": n, "kernel": n}, "left_out": n}: crowdsec.enabled
                                        # (daemon/crowdsec_part.py)
    components: dict[str, dict[str, Any]]  # "sampler"/"metrics" -> {"up": bool, "restarts": n}: parts the
                                        # daemon restarts with backoff when they fail
    datapath: dict[str, Any]            # datapath.Reading.data(): {"bypasses": [{"interface", "kind", ...}],
                                        # "problems": [...]}: XDP/tc ingress programs ahead of our hooks


Provider = Callable[[], Snapshot]


# --- kernel readings -----------------------------------------------------------------------
def read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def nfqueue_dropped(queues: list[int], proc_net: Path = Path("/proc/net")) -> int | None:
    """Packets the kernel dropped from our queues: queue full (``queue_dropped``) plus netlink
    send failures (``user_dropped``), from nfnetlink_queue(7)'s proc file. These were condemned
    packets anyway; what is lost is their sample. None when no queue of ours is bound."""
    try:
        lines = (proc_net / "netfilter" / "nfnetlink_queue").read_text().splitlines()
    except OSError:
        return None
    wanted, total, seen = set(queues), 0, False
    for line in lines:
        f = line.split()
        # queue_number peer_portid queue_total copy_mode copy_range queue_dropped user_dropped id_sequence 1
        if len(f) >= 7 and f[0].isdigit() and int(f[0]) in wanted:
            total += int(f[5]) + int(f[6])
            seen = True
    return total if seen else None


# --- the collector -------------------------------------------------------------------------
def _reason(kind: str) -> str:
    return _REASON_RE.sub("_", str(kind).lower()).strip("_")[:40] or "unknown"


class NodeguardCollector:
    """A prometheus_client custom collector: one provider call per scrape."""

    def __init__(self, provider: Provider, proc_net: Path = Path("/proc/net"),
                 proc_sys: Path = Path("/proc/sys")):
        self.provider = provider
        self.proc_net, self.proc_sys = proc_net, proc_sys

    def describe(self) -> list[Metric]:
        return []  # no scrape at registration time

    def collect(self) -> Iterator[Metric]:
        try:
            snap = self.provider()
            if not isinstance(snap, dict):
                raise TypeError(f"provider returned {type(snap).__name__}, not a dict")
            metrics = list(self._from_snapshot(snap))
        except Exception:  # a scrape never fails: say so in the metric and the log
            log.exception("metrics provider failed")
            metrics, up = [], 0
        else:
            up = 1
        yield GaugeMetricFamily("nodeguard_up", "1 if the daemon answered this scrape with its state", value=up)
        yield from metrics
        yield from self._conntrack()

    def _from_snapshot(self, s: Snapshot) -> Iterator[Metric]:
        info = InfoMetricFamily("nodeguard", "version and backend in use")
        info.add_metric([], {"version": __version__, "backend": str(s.get("backend") or ""),
                             "sampler_transport": str((s.get("sampler") or {}).get("transport") or "")})
        yield info
        if "in_sync" in s:
            yield GaugeMetricFamily("nodeguard_in_sync", "1 if the live rules match the policy", value=int(bool(s["in_sync"])))
        if "contested" in s:
            yield GaugeMetricFamily("nodeguard_contested", "1 while repairs are damped (another writer keeps "
                                    "undoing nodeguard's rules)", value=int(bool(s["contested"])))

        drops = s.get("drops") or {}
        pk = CounterMetricFamily("nodeguard_dropped_packets", "Packets condemned by each rule group; mode "
                                 "\"monitor\": would have been dropped, and were not (kernel counters)",
                                 labels=["group", "mode"])
        by = CounterMetricFamily("nodeguard_dropped_bytes", "Bytes condemned by each rule group",
                                 labels=["group", "mode"])
        for key, c in sorted(drops.items()):
            group, mode = key if isinstance(key, tuple) else (key, "enforce")
            pk.add_metric([group, mode], int(c.get("packets", 0)))
            by.add_metric([group, mode], int(c.get("bytes", 0)))
        yield pk
        yield by

        sampled = CounterMetricFamily("nodeguard_sampled_packets", "Condemned packets the sampler received, "
                                      "per rule group", labels=["group"])
        groups = {k[0] if isinstance(k, tuple) else k for k in drops}
        for group in sorted(set(s.get("sampled") or {}) | groups):
            sampled.add_metric([group], int((s.get("sampled") or {}).get(group, 0)))
        yield sampled

        smp = s.get("sampler") or {}
        lost = CounterMetricFamily("nodeguard_sampler_lost", "Samples lost before the sampler read them "
                                   "(the packets were dropped all the same)", labels=["reason"])
        lost.add_metric(["nflog_enobufs"], int(smp.get("nflog_enobufs", 0)))
        queued = nfqueue_dropped(list(smp.get("queues") or ()), self.proc_net)
        lost.add_metric(["nfqueue_dropped"], queued or 0)
        yield lost

        yield from self._sets(s)

        repairs = CounterMetricFamily("nodeguard_repairs", "Repairs of nodeguard's rules, by reason kind", labels=["reason"])
        folded: dict[str, int] = {}
        for kind, n in sorted((s.get("repairs") or {}).items()):
            key = _reason(kind) if len(folded) < MAX_REASONS else "other"
            folded[key] = folded.get(key, 0) + int(n)
        for key, n in folded.items():
            repairs.add_metric([key], n)
        yield repairs

        reloads = CounterMetricFamily("nodeguard_reloads", "Policy reloads (SIGHUP or a changed config file)",
                                      labels=["result"])
        for result in ("ok", "failed"):
            reloads.add_metric([result], int((s.get("reloads") or {}).get(result, 0)))
        yield reloads

        if "port_updates" in s:
            yield CounterMetricFamily("nodeguard_synproxy_port_updates", "Updates of the SYNPROXY port set that "
                                      "follows the listeners (syn.synproxy.ports: auto); not repairs",
                                      value=int(s["port_updates"]))

        valve = s.get("syn_valve")
        if valve is not None:  # syn.valve: auto
            yield GaugeMetricFamily("nodeguard_syn_valve_engaged", "1 while the SYN valve (syn.rate) drops: "
                                    "conntrack failed new connections within syn.valve_hold_s",
                                    value=int(bool(valve["engaged"])))
            yield CounterMetricFamily("nodeguard_syn_valve_engagements", "Times the SYN valve engaged since the "
                                      "daemon started", value=int(valve["engagements"]))

        yield from _crowdsec(s.get("crowdsec"))

        up = GaugeMetricFamily("nodeguard_component_up", "1 while a part of the daemon runs (it is restarted "
                               "with backoff when it fails; the watcher goes on regardless)", labels=["component"])
        restarts = CounterMetricFamily("nodeguard_component_restarts", "Failures of a part of the daemon, each "
                                       "followed by a restart", labels=["component"])
        for name, c in sorted((s.get("components") or {}).items()):
            up.add_metric([name], int(bool(c["up"])))
            restarts.add_metric([name], int(c["restarts"]))
        yield up
        yield restarts

        bypass = GaugeMetricFamily("nodeguard_datapath_bypass", "1 while an XDP program (kind \"xdp\") or a tc "
                                   "ingress filter or tcx program (kind \"tc-ingress\") acts on a protected "
                                   "interface before nodeguard's hooks: what it drops or redirects is never seen",
                                   labels=["interface", "kind"])
        for interface, kind in sorted({(str(b["interface"]), str(b["kind"]))
                                       for b in (s.get("datapath") or {}).get("bypasses", ())}):
            bypass.add_metric([interface, kind], 1)
        yield bypass

        if s.get("last_apply") is not None:
            yield GaugeMetricFamily("nodeguard_last_apply_timestamp_seconds",
                                    "Unix time of the last transaction that installed the rules",
                                    value=float(s["last_apply"]))

    def _sets(self, s: Snapshot) -> Iterator[Metric]:
        """The state nodeguard keeps in kernel sets: how full each one is, the bans it holds and the
        bans a full set refused, and how old the snapshot of the bans is (persist.py)."""
        labels = ["set", "family", "role"]
        entries = GaugeMetricFamily("nodeguard_set_entries", "Elements in a per-source set (meters, ban, "
                                    "trusted and counting sets); a full set adds nobody new", labels=labels)
        capacity = GaugeMetricFamily("nodeguard_set_capacity", "Elements a per-source set can hold", labels=labels)
        banned = {4: 0, 6: 0}
        for m in s.get("meters") or ():
            key = [str(m["set"]), FAMILY[int(m["version"])], str(m["role"])]
            entries.add_metric(key, int(m["elements"]))
            capacity.add_metric(key, int(m["size"]))
            if m["role"] == "banned":
                banned[int(m["version"])] += int(m["elements"])
        yield entries
        yield capacity
        gauge = GaugeMetricFamily("nodeguard_banned_sources", "Sources banned now (IPv6: /64 networks)",
                                  labels=["family"])
        for version, n in banned.items():
            gauge.add_metric([FAMILY[version]], n)
        yield gauge
        if "bans_refused" in s:
            yield CounterMetricFamily("nodeguard_bans_refused", "Packets of sources due a ban (over a per-source "
                                      "limit for escalate.after_s) that a full ban set refused to ban",
                                      value=int(s["bans_refused"]))
        if s.get("state_snapshot_age_s") is not None:
            yield GaugeMetricFamily("nodeguard_state_snapshot_age_seconds", "Seconds since bans, manual bans "
                                    "and trusted sources were last snapshotted (restored after a reboot or a "
                                    "flushed table); it grows when snapshots fail",
                                    value=float(s["state_snapshot_age_s"]))

    def _conntrack(self) -> Iterator[Metric]:
        for name, fname, doc in (("nodeguard_conntrack_entries", "nf_conntrack_count", "Conntrack entries in use"),
                                 ("nodeguard_conntrack_max", "nf_conntrack_max", "Conntrack table capacity")):
            value = read_int(self.proc_sys / "net" / "netfilter" / fname)
            if value is not None:  # conntrack not loaded: no series rather than a false zero
                yield GaugeMetricFamily(name, doc + " (this network namespace)", value=value)


def _crowdsec(cs: dict[str, Any] | None) -> Iterator[Metric]:
    """crowdsec.enabled only: the Local API's decisions held, its last good pull, failures by operation."""
    if cs is None:
        return
    held = GaugeMetricFamily("nodeguard_crowdsec_decisions", "Ban decisions of the CrowdSec Local API the "
                             "node holds (dropped by the ban check)", labels=["family"])
    for version in (4, 6):
        held.add_metric([f"ipv{version}"], int((cs.get("decisions") or {}).get(f"ipv{version}", 0)))
    yield held
    yield GaugeMetricFamily("nodeguard_crowdsec_left_out", "Prefixes of CrowdSec decisions held but not in the "
                            "kernel: its sets are full (crowdsec.size; those that end last are kept)",
                            value=int(cs.get("left_out") or 0))
    if cs.get("last_pull") is not None:
        yield GaugeMetricFamily("nodeguard_crowdsec_last_pull_timestamp_seconds", "Unix time of the last pull "
                                "of the decision stream that reached the kernel", value=float(cs["last_pull"]))
    if cs.get("last_push") is not None:
        yield GaugeMetricFamily("nodeguard_crowdsec_last_push_timestamp_seconds", "Unix time of the last escalation "
                                "ban the CrowdSec Local API took (crowdsec.push)", value=float(cs["last_push"]))
    errors = CounterMetricFamily("nodeguard_crowdsec_errors", "Failed CrowdSec operations (pull: the Local "
                                 "API or its answer; kernel: writing the decisions; push: reporting a ban)",
                                 labels=["op"])
    for op in ("pull", "kernel", "push"):
        errors.add_metric([op], int((cs.get("errors") or {}).get(op, 0)))
    yield errors


def registry(provider: Provider, **kw: Any) -> CollectorRegistry:
    """Our collector plus process_* (CPU, resident memory, open fds) for the daemon itself."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(NodeguardCollector(provider, **kw))
    ProcessCollector(registry=reg)
    return reg


# --- liveness ------------------------------------------------------------------------------
class Heartbeat:
    """The daemon's main loop calls ``beat()`` each turn (where it sends WATCHDOG=1);
    ``/healthz`` answers 200 while the last beat is younger than ``max_age_s``."""

    def __init__(self, max_age_s: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.max_age_s, self.clock = max_age_s, clock
        self.last: float | None = None

    def beat(self) -> None:
        self.last = self.clock()

    def age(self) -> float | None:
        return None if self.last is None else self.clock() - self.last

    def alive(self) -> bool:
        age = self.age()
        return age is not None and age < self.max_age_s


def encoder_for(accept: str) -> tuple[Callable[[CollectorRegistry], bytes], str]:
    """prometheus_client's choice for ``accept``, or the plain text format when its parser fails
    on the header (``version=x`` raises inside it) or the type it would answer echoes bytes a
    header cannot carry: the client gets metrics, never a 500 (nor a log line) for a header."""
    try:
        encoder, ctype = choose_encoder(accept)
    except Exception:
        return generate_latest, CONTENT_TYPE_PLAIN_0_0_4
    if not (ctype.isascii() and ctype.isprintable()):
        return generate_latest, CONTENT_TYPE_PLAIN_0_0_4
    return encoder, ctype


# --- the server ----------------------------------------------------------------------------
class MetricsServer(BoundedHTTPServer):
    """``/healthz`` answered on the I/O thread at once (slow clients cannot starve the liveness
    probe), ``/metrics`` scraped in the worker; what clients can take is bounded by ``limits``
    (guard/httpserve.py)."""

    def __init__(self, listen: tuple[str, int], provider: Provider, heartbeat: Heartbeat,
                 limits: Limits = Limits(), **kw: Any):
        self.registry = registry(provider, **kw)
        self.heartbeat = heartbeat
        self._rendered: dict[str, tuple[float, bytes]] = {}  # content type -> (when, body)
        super().__init__(listen, {"/metrics": Route(self._scrape, inline=False),
                                  "/healthz": Route(self._healthz, inline=True)}, limits)

    def _scrape(self, request: Request) -> Reply:
        """Scrapes less than SCRAPE_REUSE_S apart share one rendering: a flood of requests costs
        one rendering a second, not one each (runs in the worker only: no lock needed)."""
        encoder, ctype = encoder_for(request.headers.get("accept", ""))
        when, body = self._rendered.get(ctype, (None, b""))
        now = time.monotonic()
        if when is None or now - when >= SCRAPE_REUSE_S:
            body = encoder(self.registry)
            self._rendered[ctype] = (now, body)
        return Reply(200, ctype, body)

    def _healthz(self, request: Request) -> Reply:
        age, ok = self.heartbeat.age(), self.heartbeat.alive()
        text = f"{'ok' if ok else 'stale'}: last loop {'never' if age is None else f'{age:.1f} s ago'}\n"
        return text_reply(200 if ok else 503, text)


def serve(listen: str, provider: Provider, heartbeat: Heartbeat, allow_remote: bool = False, **kw: Any) -> MetricsServer:
    """Validate ``listen``, bind, and serve in a background thread. Raises ValueError (bad or
    refused address) or OSError (port taken)."""
    server = MetricsServer(parse_listen(listen, allow_remote), provider, heartbeat, **kw)
    server.start()
    return server
