"""Bans and trusted sources that outlive the kernel's copy: a reboot, a foreign ``nft flush ruleset``.

The sets whose elements the kernel (escalation's ``banned-*``, ``trusted-*``) or ``nodeguard ban``
(``manual-*``) made are snapshotted to a JSON file under the data dirs (``watcher.snapshot_file``),
each element with its absolute wall-clock expiry: monotonic clocks restart with the machine. They are
added back after an install and after a repair that recreated the sets, each with what is left of its
time (capped at its set's timeout and at what it had left when taken); what expired meanwhile is not.
The kernel's sets are read as raw netlink dumps and the file written as they come: full trusted and
banned sets (65,536 each) are never held whole in memory. Deny files are policy, not state,
and are never snapshotted.

The file is untrusted input when read back (statefile.load): a corrupted one is ignored with one
warning, and an entry that is not an address of its set's family is skipped.
"""

from __future__ import annotations

import io
import ipaddress
import json
import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

from . import prefixes, statefile
from .configfile import write_atomic
from .manual import MAX_FOR_S, MAX_REASON, reason_ok
from .model.ruleset import V6_SOURCE_PREFIX, AddrSet
from .policy.sources import outermost

if TYPE_CHECKING:
    from .backend.nft import Nft

log = logging.getLogger("nodeguard.persist")

FORMAT = 1
KINDS = ("banned", "trusted", "manual")  # what an entry's "set" names


@dataclass(frozen=True, slots=True)
class Entry:
    set: str  # one of KINDS
    v: int  # IP version
    key: str  # an address (IPv6: its /64's network address); manual: a prefix
    expires: float | None  # wall-clock time (time.time()); None: until unbanned (manual only)
    reason: str = ""


def persisted_sets(plan) -> dict[tuple[str, int], AddrSet]:
    """(one of KINDS, IP version) -> the plan's set."""
    out = {}
    for s in plan.ruleset.sets:
        kind = "banned" if s.kind == "escalation" and s.role == "banned" else s.kind
        if kind in KINDS:
            out[(kind, s.version)] = s
    return out


SNAPSHOT_NAME = "sets.json"  # beside the last good policy (lastgood.DEFAULT: /var/lib/nodeguard)


def path_for(policy, last_good: str | Path | None) -> Path | None:
    """``watcher.snapshot_file``, else sets.json beside the daemon's last good policy; None: neither
    (``nodeguard watch`` keeps no snapshot)."""
    if policy.watcher.snapshot_file is not None:
        return Path(policy.watcher.snapshot_file)
    return Path(last_good).parent / SNAPSHOT_NAME if last_good is not None else None


# --- taking and writing -------------------------------------------------------------------------
def take(plan, nft: Nft, now: float, previous: Callable[[], list[Entry]] = list) -> Iterator[Entry]:
    """Every element of the persisted sets, from the kernel, as it comes (a full set is 65,536: they
    are never all held at once). A set not installed (flushed away, not yet repaired) keeps its
    entries from ``previous()`` (the last snapshot, read only then): a snapshot is never emptied by
    the damage it is there to undo."""
    sets = persisted_sets(plan)
    names = plan.backend.installed_sets(nft, sets)
    if any(k not in names for k in sets):
        yield from (e for e in previous() if (e.set, e.v) in sets and (e.set, e.v) not in names)
    at = math.floor(now)  # whole seconds: the kernel's seconds left are whole too
    for (kind, version), name in sorted(names.items()):
        if kind == "manual":
            for key, left, why in plan.backend.manual_bans(nft, name):
                yield Entry(kind, version, str(ipaddress.ip_network(key)), None if left is None else at + left, why)
            continue
        for key, left in plan.backend.timeouts(nft, name):
            if left is not None:  # a timed set's element without a timeout: nothing sane to restore it with
                yield Entry(kind, version, key, at + left)


CHUNK = 4096  # entries a write: few system calls, a few hundred kB of text at a time


def encode(entries: Iterable[Entry], now: float) -> Iterator[bytes]:
    """The file, in chunks: format 1, an entry a line, written as they come (the kernel's keys are
    addresses as inet_ntop writes them; a reason is JSON-escaped). load() reads it a line at a time."""
    yield b'{"format": %d, "taken": %s, "entries": [\n' % (FORMAT, json.dumps(now).encode())
    rows, sep = [], ""
    for e in entries:
        rows.append(f'{sep}{{"set": "{e.set}", "v": {e.v}, "key": "{e.key}", "expires": '
                    f'{"null" if e.expires is None else repr(e.expires)}, '
                    f'"reason": {json.dumps(e.reason) if e.reason else chr(34) * 2}}}\n')
        sep = ","
        if len(rows) == CHUNK:
            yield "".join(rows).encode()
            rows = []
    yield ("".join(rows)).encode() + _TAIL[1:]


def write(path: str | Path, entries: Iterable[Entry], now: float, keep: Callable[[], bool] | None = None) -> bool:
    """Write the snapshot as ``entries`` come; ``keep`` (asked at the end) False: thrown away."""
    return write_atomic(path, encode(entries, now), keep=keep)


# --- reading back ----------------------------------------------------------------------------
def _check(data) -> None:
    statefile.fields({"format": (lambda v: v == FORMAT, f"{FORMAT}"),
                      "taken": (statefile.is_number, "a time"),
                      "entries": (lambda v: isinstance(v, list), "a list")})(data)
    if "entries" not in data or "taken" not in data:
        raise statefile.Invalid("no entries or no time taken")


def load(path: str | Path) -> tuple[float, list[Entry]] | None:
    """(when it was taken, its valid entries); None when missing or unreadable (one warning). A file
    laid out as write() lays it out is parsed a line at a time: 262,144 entries parsed whole took
    ~150 MB of Python objects at once."""
    raw = statefile.read(path)
    if raw is None:
        return None
    lines = _by_line(raw)
    if lines is None:  # any other layout of format 1: parsed whole
        data = statefile.parse(path, raw, _check)
        if data is None:
            return None
        taken, rows = data["taken"], iter(data["entries"])
    else:
        taken, rows = lines
    entries, total, lost = [], 0, 0
    try:
        for one in rows:
            total += 1
            e = entry(one)
            if e is not None:
                entries.append(e)
                lost += e.set == "manual" and e.reason != one.get("reason", "")
    except (ValueError, RecursionError) as exc:  # a line that is not JSON: the whole file, as if parsed whole
        statefile.invalid(path, exc)
        return None
    if len(entries) < total:
        log.warning("%s: %d of %d entries skipped (malformed, or not an address or prefix of their set's "
                    "family)", path, total - len(entries), total)
    if lost:
        log.warning("%s: %d manual bans restored without their reason (not printable text of at most %d "
                    "bytes)", path, lost, MAX_REASON)
    return taken, entries


_HEAD = re.compile(rb'\{"format": %d, "taken": ([0-9.e+-]{1,40}), "entries": \[\n' % FORMAT)
_TAIL = b"\n]}\n"


def _by_line(raw: bytes) -> tuple[float, Iterator] | None:
    """(taken, an iterator of its entries, each parsed when reached) of a file as write() lays it out
    (a line each, a leading comma from the second on); None for any other layout."""
    head = _HEAD.match(raw)
    if head is None or not raw.endswith(_TAIL):
        return None
    try:
        taken = statefile.loads(head[1])
    except ValueError:
        return None
    if not statefile.is_number(taken):
        return None
    body = io.BytesIO(raw)
    body.seek(head.end())

    def rows() -> Iterator:
        for line in body:
            if line == _TAIL[1:]:
                return
            yield statefile.loads(line[1:] if line.startswith(b",") else line)
    return taken, rows()


def entry(raw) -> Entry | None:
    """One entry of the file, checked; None when anything is wrong with it."""
    if not isinstance(raw, dict) or raw.get("set") not in KINDS or raw.get("v") not in (4, 6) \
            or isinstance(raw.get("v"), bool) or not isinstance(raw.get("key"), str) or len(raw["key"]) > 64:
        return None
    kind, version, expires, why = raw["set"], raw["v"], raw.get("expires"), raw.get("reason", "")
    if not statefile.or_none(statefile.is_number)(expires) or (expires is None and kind != "manual"):
        return None
    if not isinstance(why, str) or not reason_ok(why):
        why = ""  # the ban stands; only its reason is lost
    try:  # an address set's key is a bare address (ip_address: a third of ip_network's cost)
        net = ipaddress.ip_network(raw["key"], strict=True) if kind == "manual" else ipaddress.ip_address(raw["key"])
    except ValueError:
        return None
    addr = net.network_address if kind == "manual" else net
    if net.version != version or (addr.is_unspecified and (kind != "manual" or net.num_addresses == 1)):
        return None  # a prefix may start at 0.0.0.0 (the bogon 0.0.0.0/8); a source is never that address
    if kind == "manual" and prefixes.too_broad([(int(addr), net.prefixlen)], version):
        return None  # ``nodeguard ban`` refuses it: a snapshot never restores it either
    if kind != "manual" and version == 6:  # a source set keys its /64, as the kernel does (keyed_by_prefix)
        addr = ipaddress.ip_network(f"{addr}/{V6_SOURCE_PREFIX}", strict=False).network_address
    key = str(net) if kind == "manual" else str(addr)
    return Entry(kind, version, key, expires, why if kind == "manual" else "")


# --- restoring ---------------------------------------------------------------------------------
def due(entries: list[Entry], sets: dict[tuple[str, int], AddrSet], now: float,
        held: dict[tuple[str, int], int] | None = None,
        taken: float | None = None) -> dict[tuple[str, int], list[tuple[str, int | None, str]]]:
    """(kind, version) -> [(key, seconds left or None, reason)] to add back: what expired is left
    out, the rest capped at what it had left when the snapshot was ``taken`` (its own timeout is no
    less: a wall clock set back since then would otherwise stretch a 1 h ban by as much) and at its
    set's timeout (manual: at the longest ban ``nodeguard ban`` makes);
    manual prefixes inside another are dropped (an interval set refuses overlaps), and no set gets
    more than the room its size leaves beside the ``held`` elements it has: the kernel refuses a
    transaction that overfills a set whole, and every entry of it would be lost."""
    out: dict[tuple[str, int], list[tuple[str, int | None, str]]] = {}
    for e in entries:
        s = sets.get((e.set, e.v))
        if s is None:
            continue
        left = None
        if e.expires is not None:
            left = min(math.floor(e.expires - now), s.timeout_s or MAX_FOR_S,
                       math.ceil(e.expires - taken) if taken is not None else MAX_FOR_S)
            if left <= 0:
                continue
        out.setdefault((e.set, e.v), []).append((e.key, left, e.reason))
    for (kind, version), rows in out.items():
        if kind == "manual":
            keep = {str(n) for n in outermost([ipaddress.ip_network(k) for k, _l, _r in rows], version)}
            rows[:] = [r for r in dict((r[0], r) for r in rows).values() if r[0] in keep]
        del rows[max(0, sets[(kind, version)].size - (held or {}).get((kind, version), 0)):]
    return out


def restore(plan, nft: Nft, path: str | Path, now: float | None = None) -> int:
    """Add back what the snapshot at ``path`` holds and has time left; returns how many elements.
    An element already in the kernel keeps its own timeout. A failure is one warning: protection
    stands without the restored entries."""
    loaded = load(path)
    if loaded is None:
        return 0
    now = time.time() if now is None else now
    sets = persisted_sets(plan)
    names = plan.backend.installed_sets(nft, sets)
    fill = {row["kernel_name"]: row["elements"] for row in plan.backend.meter_fill([sets[k] for k in names])}
    held = {k: fill.get(name, 0) for k, name in names.items()}
    added = 0
    for key, rows in sorted(due(loaded[1], sets, now, held, loaded[0]).items()):
        if key not in names or not rows:
            continue
        try:
            if key[0] == "manual":
                plan.backend.restore_elements(nft, names[key], rows)
            else:
                plan.backend.restore_timed(nft, names[key], key[1], [(k, left) for k, left, _why in rows])
        except Exception as exc:  # noqa: BLE001 - a bad snapshot must never stop an install or repair
            log.warning("%s: restoring %s-v%d: %s", path, key[0], key[1], str(exc)[:200])
            continue
        added += len(rows)
    if added:
        log.info("restored %d banned, trusted and manually banned sources from %s", added, path)
    return added
