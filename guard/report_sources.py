"""The sources behind attack episodes, and the top sources per rule, tallied as the log streams by.

Time is linear in the log and memory bounded whatever the number of sources: a tally keeps at most
``TRACKED_MAX`` rows (networks, or sources); past twice that, the smallest are folded into counts
of the rest (``folded``: rows, sources, estimated packets). Below the bound every figure is exact;
above it a folded network that sends again starts a new row, so ``distinct_sources`` and ``more`` may
count it twice. A random-source flood is the case: its rows are each too small to matter.

Once a tally has folded, a network it does not track whose estimate in a window is at most the last
fold's cut (the smallest estimate it kept) is folded as that window is read, without a row: a row
that small loses the next fold to every kept one (ties: the earliest kept) unless it grows first, so
what changes is only that one which would have grown past the cut in a later window before the next
fold is folded now, and its later flows start anew. The top sources of a rule skip such a source the
same way. A random-source flood's sources are almost all such, and cost no row.

Flows wait in their window until the log has passed it (the next window record), because the episode
records of a window follow its flows: only then is it known whether the window ended an episode.
"""

from __future__ import annotations

import ipaddress
import socket
from collections import defaultdict
from operator import itemgetter
from typing import Iterable

from .records import check

# Sources that share one IPv4 /24 or IPv6 /48 are shown as that network when at least this many do:
# a botnet in one hosting range or a scanner walking a subnet is one line, not a screenful.
SHARED_NETWORK_MIN = 3
V4_PREFIX, V6_PREFIX = 24, 48
SPREAD_MIN_SOURCES, SPREAD_MAX_SHARE = 50, 0.05
TRACKED_MAX = 20_000  # rows per episode and sources per rule kept exactly (module docstring)
# flows held back waiting for their window to pass (a window holds up to the sampler's max_flows); past it,
# as in a log without window records, they are routed at once
PENDING_MAX = 50_000
EPS = 1e-6
PORTS_SHOWN = 10
_pton, _ntop, _V4, _V6 = socket.inet_pton, socket.inet_ntop, int(socket.AF_INET), int(socket.AF_INET6)
_V4_SUFFIX, _V6_SUFFIX = f".0/{V4_PREFIX}", f"/{V6_PREFIX}"
_V6_BYTES = V6_PREFIX // 8
_V6_ZEROS = bytes(16 - _V6_BYTES)


def network_of(src: str) -> str:
    """The /24 (IPv4) or /48 (IPv6) holding ``src``; the text itself when it is not an address.
    Addresses take a path around ``ipaddress`` (a third of a report's time), which gives the same text;
    the families are passed as plain ints (socket's are IntEnum members, slower to convert)."""
    try:
        if ":" not in src:
            _pton(_V4, src)  # dotted decimal, no leading zeros: as ipaddress reads it
            return src[:src.rfind(".")] + _V4_SUFFIX
        if "%" not in src:  # ipaddress keeps a scope
            return _ntop(_V6, _pton(_V6, src)[:_V6_BYTES] + _V6_ZEROS) + _V6_SUFFIX
    except (OSError, ValueError):  # ValueError: a NUL in the text
        pass
    try:
        addr = ipaddress.ip_address(src)
    except ValueError:
        return src
    prefix = V4_PREFIX if addr.version == 4 else V6_PREFIX
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))


# A source's figures in one tally, as a list (the hot path of a report makes millions): estimated,
# sampled, first/last seen, protocols, ports (tuples of distinct values: a set costs three times as
# much to make, and most sources have one of each), peak (its highest estimate in one window, per second),
# its network, the last window it was seen in (a count of add_window calls) and its estimate there.
# A network's: estimated, peak, members (in order of appearance), last window, estimate there.
EST, SAMPLED, FIRST, LAST, PROTOS, DPORTS, PEAK, NET, WINDOW, IN_WINDOW = range(10)
MEMBERS, NET_WINDOW, NET_IN_WINDOW = 2, 3, 4


Flow = tuple  # (source, estimated, sampled, first, last, proto, dport): a flow record as records.check reads it


def _row(flow: Flow, peak: float = 0.0, net: str | None = None, window: int = 0, in_window: float = 0) -> list:
    """A source's figures (EST, SAMPLED, ... above) from its first flow; the fields after DPORTS are
    an episode's (a rule's top sources leave them be): one list of fixed length, the cheapest to make."""
    _src, n, sampled, first, last, proto, dport = flow
    # proto: a flow counted by the kernel but not sampled has none
    return [n, sampled, first, last, (proto,) if proto else (), () if dport is None else (dport,), peak, net, window,
            in_window]


def _count(s: list, flow: Flow) -> None:
    """Add ``flow`` to source ``s``."""
    _src, n, sampled, first, last, proto, dport = flow
    s[EST] += n
    s[SAMPLED] += sampled
    if first < s[FIRST]:
        s[FIRST] = first
    if last > s[LAST]:
        s[LAST] = last
    if proto and proto not in s[PROTOS]:
        s[PROTOS] += (proto,)
    if dport is not None and dport not in s[DPORTS] and len(s[DPORTS]) < PORTS_SHOWN:
        s[DPORTS] += (dport,)


def _window_sum(row: list, at: int, window: int, n: float, span: float) -> None:
    """Add ``n`` to ``row``'s estimate in ``window`` (fields ``at``, ``at + 1``) and raise its peak (field 1
    of a network, PEAK of a source) to match."""
    if row[at] == window:
        row[at + 1] += n
    else:
        row[at], row[at + 1] = window, n
    peak = PEAK if at == WINDOW else 1
    if row[at + 1] / span > row[peak]:
        row[peak] = row[at + 1] / span


def _biggest(rows: dict[str, list], count: int) -> tuple[list[str], list[str]]:
    """The keys of the ``count`` rows with the largest estimates (ties: the earliest), and of the others,
    each in the order of ``rows``. Sorted by index, without a Python call per row (a fold makes 40,000)."""
    keys, estimates = list(rows), list(map(itemgetter(EST), rows.values()))
    order = sorted(range(len(keys)), key=estimates.__getitem__, reverse=True)  # stable: ties stay in order
    return ([*map(keys.__getitem__, sorted(order[:count]))], [*map(keys.__getitem__, sorted(order[count:]))])


def _folded(net: str, members: int) -> tuple[int, int]:
    """The rows and sources that folding network ``net`` of ``members`` sources takes from a tally's
    result: one row when they would be shown as the network; "other" is the one member of its network."""
    return (1 if members >= SHARED_NETWORK_MIN or net == "other" else members), members - (net == "other")


class EpisodeSources:
    """The sources of one episode, per network."""

    def __init__(self, rule: str):
        self.rule = rule
        self.sources: dict[str, list] = {}
        self.networks: dict[str, list] = {}
        self.folded = {"rows": 0, "sources": 0, "estimated": 0}
        self.windows = 0  # add_window calls so far
        self.cut = -1.0  # the smallest network estimate kept by the last fold; -1: none yet

    def add_window(self, start: float, end: float, flows: Iterable[Flow]) -> None:
        """The flows (``Flow``) of one window (``start``, ``end``). Peaks are kept as the window's
        sums grow (a sum only grows): no per-window tables."""
        span = max(end - start, EPS)
        self.windows += 1
        fresh = self._tally(flows, self.windows, span, self.cut)
        if fresh:
            self._tally(self._fold_fresh(fresh), self.windows, span, -1.0)
        if len(self.networks) > 2 * TRACKED_MAX:
            self._fold()

    def _tally(self, flows: Iterable[Flow], window: int, span: float, cut: float) -> dict[str, list[Flow]]:
        """Counts ``flows`` into the rows; returns, per network, those of networks not tracked when the
        tally has folded (``cut`` >= 0), for ``add_window`` to weigh against the cut once the window is read."""
        sources, networks = self.sources, self.networks
        fresh: dict[str, Flow | list[Flow]] = {}
        for flow in flows:
            src, n = flow[0], flow[1]
            s = sources.get(src)
            if s is None:
                net = "other" if src == "other" else network_of(src)
                network = networks.get(net)
                if network is None:
                    if cut >= 0:
                        held = fresh.setdefault(net, flow)  # most have one flow: no list
                        if held is not flow:
                            if type(held) is list:
                                held.append(flow)
                            else:
                                fresh[net] = [held, flow]
                        continue
                    sources[src] = _row(flow, n / span, net, window, n)
                    networks[net] = [n, n / span, [src], window, n]
                    continue
                sources[src] = _row(flow, n / span, net, window, n)
                network[MEMBERS].append(src)
            else:
                _count(s, flow)
                _window_sum(s, WINDOW, window, n, span)
                network = networks[s[NET]]
            network[EST] += n
            _window_sum(network, NET_WINDOW, window, n, span)
        return fresh

    def _fold_fresh(self, fresh: dict[str, Flow | list[Flow]]) -> list[Flow]:
        """Folds at once the networks new in this window whose estimate there is at most the last fold's
        cut: each would be the first to go at the next fold unless it grew by then. Returns the flows of
        the others, to be counted."""
        rows = sources = estimated = 0
        kept: list[Flow] = []
        cut = self.cut
        for net, flows in fresh.items():
            if type(flows) is tuple:  # one flow
                n = flows[1]
                if n > cut:
                    kept.append(flows)
                    continue
                rows, sources, estimated = rows + 1, sources + (net != "other"), estimated + n  # _folded(net, 1)
                continue
            n = sum(map(itemgetter(1), flows))
            if n > cut:
                kept += flows
                continue
            r, m = _folded(net, len({f[0] for f in flows}))
            rows, sources, estimated = rows + r, sources + m, estimated + n
        self.folded["rows"] += rows
        self.folded["sources"] += sources
        self.folded["estimated"] += estimated
        return kept

    def _fold(self) -> None:
        kept, dropped = _biggest(self.networks, TRACKED_MAX)
        self.cut = min(self.networks[net][EST] for net in kept)
        rows = sources = estimated = 0
        for net in dropped:
            network = self.networks.pop(net)
            members = network[MEMBERS]
            r, m = _folded(net, len(members))
            rows, sources, estimated = rows + r, sources + m, estimated + network[EST]
            for m in members:
                del self.sources[m]
        self.folded["rows"] += rows
        self.folded["sources"] += sources
        self.folded["estimated"] += estimated

    def result(self, top: int) -> dict:
        """``{"sources": [rows], "distinct_sources": n, "more": n, "spread": bool, "folded": {...}}``: sources
        sharing a /24 or /48 merged into it when there are at least ``SHARED_NETWORK_MIN`` of them.

        A row: ``source`` (an address, or "N sources"), ``network``, ``addresses`` (how many), ``estimated``,
        ``sampled``, ``first``/``last`` seen, ``peak_pps`` (highest per-window estimate / window length),
        ``rule``, ``protos``, ``dports``. Samples beyond the sampler's flow cap are one row, source "other".
        ``spread``: more than SPREAD_MIN_SOURCES sources and none over SPREAD_MAX_SHARE of the episode
        (what a --rand-source flood looks like). ``folded``: rows, sources and estimate folded (the bound)."""
        ranked = []  # every row's (-estimated, source, order, network, members); rows are made for the top only
        for net, network in self.networks.items():
            srcs = network[MEMBERS]
            if len(srcs) >= SHARED_NETWORK_MIN or net == "other":
                source = srcs[0] if len(srcs) == 1 else f"{len(srcs)} sources"
                ranked.append((-sum(self.sources[m][EST] for m in srcs), source, len(ranked), net, srcs))
            else:
                for m in srcs:
                    ranked.append((-self.sources[m][EST], m, len(ranked), net, None))
        ranked.sort()
        rows = [self._row(net, srcs or [src], srcs is not None) for _est, src, _order, net, srcs in ranked[:top]]
        distinct = sum(1 for s in self.sources if s != "other") + self.folded["sources"]
        total = sum(-r[0] for r in ranked) + self.folded["estimated"]
        # Many sources, none with a real share: random (spoofed) source addresses, not a list to act on.
        spread = distinct > SPREAD_MIN_SOURCES and bool(rows) and rows[0]["estimated"] < SPREAD_MAX_SHARE * total
        return {"sources": rows, "distinct_sources": distinct,
                "more": max(0, len(ranked) + self.folded["rows"] - top), "spread": spread, "folded": dict(self.folded)}

    def _row(self, net: str, group: list[str], shared: bool) -> dict:
        """The row of ``group``, sources of network ``net`` (all of them when ``shared``)."""
        members = [self.sources[s] for s in group]
        return {
            "rule": self.rule,
            "source": group[0] if len(group) == 1 else f"{len(group)} sources",
            "network": net,
            "addresses": len(group),
            "estimated": sum(m[EST] for m in members),
            "sampled": sum(m[SAMPLED] for m in members),
            "first": min(m[FIRST] for m in members),
            "last": max(m[LAST] for m in members),
            "peak_pps": round(self.networks[net][1] if shared else members[0][PEAK], 1),
            "protos": sorted({p for m in members for p in m[PROTOS]}),
            "dports": sorted({p for m in members for p in m[DPORTS]})[:PORTS_SHOWN],
        }


class RuleSources:
    """Every sampled source of one rule group, over the whole log (``report``'s top sources)."""

    def __init__(self) -> None:
        self.sources: dict[str, list] = {}
        self.cut = -1.0  # the smallest estimate kept by the last fold; -1: none yet

    def add(self, *flows: Flow) -> None:
        """``flows`` in log order: a reader passes a run of them at once (one call, not one a flow)."""
        sources, cut = self.sources, self.cut
        for flow in flows:
            s = sources.get(flow[0])
            if s is None:
                if flow[1] <= cut:
                    continue  # it would be the first to go at the next fold unless it grew by then
                if len(sources) >= 2 * TRACKED_MAX:
                    kept, _dropped = _biggest(sources, TRACKED_MAX)
                    self.sources = sources = dict(zip(kept, map(sources.__getitem__, kept)))
                    self.cut = cut = min(s[EST] for s in sources.values())
                sources[flow[0]] = _row(flow)
            else:
                _count(s, flow)

    def top(self, n: int) -> list[dict]:
        return [{"src": src, "estimated": s[EST], "sampled": s[SAMPLED], "first": s[FIRST], "last": s[LAST],
                 "dports": sorted(s[DPORTS]), "protos": sorted(s[PROTOS])}
                for src, s in sorted(self.sources.items(), key=lambda kv: -kv[1][EST])[:n]]


Key = tuple  # an episode's (rule, start)


class EpisodeTallies:
    """Routes each window's flows to the tallies of the episodes holding them, as ``report.build``
    reads the log: a flow belongs to every episode of its rule that started at most at its window's start
    and, once ended, ended at least at its window's end. The episodes of one rule follow each other in
    the log, as the sampler writes them."""

    def __init__(self) -> None:
        self.tallies: dict[Key, EpisodeSources] = {}
        self.lasting: dict[str, list[Key]] = defaultdict(list)  # per rule: episodes without an end (yet)
        self.closed: dict[str, list[tuple[Key, float]]] = defaultdict(list)  # per rule: (episode, end), log order
        self.waiting: dict[tuple[float, float, str], list[Flow]] = defaultdict(list)  # flows per window and rule
        self.held = 0  # flows in ``waiting``, less those appended to ``open`` (counted by the next ``pending``)
        self.open: tuple[list[Flow], int] | None = None  # the list ``pending`` handed out last, and its length then
        # per rule: flows of no known episode, since its last one; an episode whose start the log has
        # lost (--since, rotation) claims them when its end comes
        self.unclaimed: dict[str, tuple[EpisodeSources, list[float]]] = {}

    def flow(self, rec: dict) -> Flow:
        """A valid "flow" or "other" record, one at a time (``report.build`` appends runs of them through
        ``pending``); returns it as read (``records.check``)."""
        flow, key = check(rec)
        flows, room = self.pending(key)
        flows.append(flow)
        if len(flows) > room:
            self.window_passed(float("inf"))
        return flow

    def pending(self, key: tuple[float, float, str]) -> tuple[list[Flow], int]:
        """The list of flows waiting in window and rule group ``key`` (start, end, group), for the reader
        to append each flow of it to (one look-up a run of flows, not one a flow), and the length it may
        grow to before more than PENDING_MAX flows are held: past it, the reader calls
        ``window_passed(inf)``. A list handed out is stale once ``window_passed`` has run."""
        if self.open is not None:  # count in ``held`` what was appended to the list handed out last
            flows, n = self.open  # (routed since: ``window_passed`` took its whole length off ``held``)
            self.held += len(flows) - n
        flows = self.waiting[key]
        self.open = (flows, len(flows))
        return flows, PENDING_MAX - self.held + len(flows)

    def window_passed(self, start: float) -> None:
        """A window record starting at ``start``: the windows before it are complete."""
        for key in [k for k in self.waiting if k[0] < start - EPS]:
            flows = self.waiting.pop(key)
            self.held -= len(flows)
            self._route(key[2], key[0], key[1], flows)

    def _route(self, rule: str, start: float, end: float, flows: list[Flow]) -> None:
        holders = [key for key in self.lasting.get(rule, ()) if key[1] <= start + EPS]
        for key, last in reversed(self.closed.get(rule, ())):
            if last + EPS < start:
                break  # this one and every one before it ended before the window
            if key[1] <= start + EPS and end <= last + EPS:
                holders.append(key)
        for key in holders:
            self.tallies[key].add_window(start, end, flows)
        if not holders:
            tally, span = self.unclaimed.setdefault(rule, (EpisodeSources(rule), [start, end]))
            span[0], span[1] = min(span[0], start), max(span[1], end)
            tally.add_window(start, end, flows)

    def started(self, key: Key) -> None:
        if key not in self.tallies:
            self.tallies[key] = EpisodeSources(key[0])
            self.lasting[key[0]].append(key)
            self.unclaimed.pop(key[0], None)  # flows before an episode belong to none

    def ended(self, key: Key, end: float) -> None:
        rule = key[0]
        if key in self.lasting[rule]:
            self.lasting[rule].remove(key)
        elif key not in self.tallies:
            tally, span = self.unclaimed.pop(rule, (None, None))
            fits = span is not None and span[0] >= key[1] - EPS and span[1] <= end + EPS
            self.tallies[key] = tally if fits else EpisodeSources(rule)
        else:  # ended twice: the last end holds, as the report's episode does
            self.closed[rule] = [(k, e) for k, e in self.closed[rule] if k != key]
        self.closed[rule].append((key, end))

    def result(self, key: Key, top: int) -> dict:
        """The sources of one episode, once the whole log was read (``finish``)."""
        return self.tallies[key].result(top)

    def finish(self) -> None:
        self.window_passed(float("inf"))
