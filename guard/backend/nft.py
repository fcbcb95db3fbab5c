"""Runs libnftables JSON transactions; the one place that talks to the nft kernel API.

Every change is one ``nft_run_cmd_from_buffer`` call, which libnftables sends as one
netlink batch: the kernel applies all of it or none of it.
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import sys
import threading
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from .. import jsontext
from ..errors import BackendError, EnvironmentProblem, NotFound, SetFull
from . import nfnetlink
from .nft_elements import address_elements

_LIB = "libnftables.so.1"

# libnftables keeps process-wide state that its contexts share unguarded: strtok(3) in the JSON
# listing of a set's type (json.c set_dtype_json: two threads listing sets at once garble each
# other's JSON or abort the process, "Assertion `__out' failed"), the interface list that every
# command and nft_ctx_free release, and nft_ctx_new's first-call setup. The daemon's parts each have
# a context in a thread of their own, so every call into the library, a context's creation and
# freeing included, holds this one lock. Re-entrant: the garbage collector may free a context
# inside a locked section of the same thread.
_LIBRARY = threading.RLock()


@functools.cache
def _binding() -> type:
    """The pip-nftables binding whose context is freed under ``_LIBRARY`` (by whichever thread drops
    the last reference)."""
    import nftables

    class Locked(nftables.Nftables):
        def __del__(self) -> None:
            if sys.is_finalizing():
                return  # a daemon thread stopped inside a call holds the lock for good; exit frees all
            with _LIBRARY:
                super().__del__()
    return Locked


class Nft:
    """A libnftables context in the calling process's network namespace. Threads may each have one:
    their calls into the library take turns (``_LIBRARY``)."""

    def __init__(self) -> None:
        # Load the library before the binding: a binding object whose __init__ failed half-way
        # raises again from its __del__ later, far from here.
        try:
            _binding()  # the pip-nftables binding
            self._lib = ctypes.CDLL(_LIB)
        except (ImportError, OSError) as exc:
            raise EnvironmentProblem(
                f"libnftables is not usable ({exc}); install Debian's libnftables1 and the pip-nftables package"
            ) from None
        self._lib.nft_ctx_set_dry_run.argtypes = [ctypes.c_void_p, ctypes.c_bool]
        self._renew()

    def _renew(self) -> None:
        with _LIBRARY:
            self._nft = _binding()(sofile=_LIB)
            self._nft.set_json_output(True)
            self._nft.set_handle_output(True)

    def _cmd(self, text: str) -> tuple[int, str, str]:
        """One command, under ``_LIBRARY``. A context keeps its netlink socket: after the kernel's
        replies overflowed it (ENOBUFS, e.g. a transaction every message of which was refused), the
        unread ones answer the next request ("Protocol error") for good, so the context is renewed."""
        rc, out, err = self._nft.cmd(text)
        if rc != 0 and any(words in err for words in _JAMMED):
            self._renew()
        return rc, out, err

    def _set_dry_run(self, on: bool) -> None:
        # The binding wraps no dry-run setter; the C API has one (nft -c).
        self._lib.nft_ctx_set_dry_run(self._nft._Nftables__ctx, on)

    def run(self, transaction: dict, *, dry_run: bool = False, what: str = "transaction") -> None:
        """Send one transaction; with ``dry_run`` the kernel checks it and commits nothing."""
        text = jsontext.dumps(transaction)
        with _LIBRARY:
            self._set_dry_run(dry_run)
            try:
                rc, _out, err = self._cmd(text)
            finally:
                self._set_dry_run(False)
        if rc != 0:
            raise refusal(what, err)

    def run_text(self, commands: str, *, what: str = "transaction") -> None:
        """Send commands in nft's own syntax as one transaction (for element lists: libnftables parses
        them faster than JSON). Only text we made: nothing of anyone else's may reach it unescaped."""
        with _LIBRARY:
            rc, _out, err = self._cmd(commands)
        if rc != 0:
            raise refusal(what, err)

    def list(self, what: str, *, terse: bool = False) -> list[dict]:
        """``nft -j list <what>`` as a list of objects; missing objects give [].

        ``terse`` leaves out set elements (nft -t): meters can hold millions.

        nft 1.0.6 prints a table with flags (e.g. dormant) from freed memory (table_flags_json): no
        listing that holds one is ever asked of libnftables. ``tables`` comes from netlink; a flagged
        table is listed as its table object alone, with its flags; a ``ruleset`` listing holding one
        is refused.
        """
        words = what.split()
        if words[0] == "tables":
            return [{"table": _table(*t)} for t in nfnetlink.tables()]
        if words[0] in ("table", "ruleset"):
            flagged = {(f, n): flags for f, n, flags in nfnetlink.tables() if flags}
            if words[0] == "table" and (key := (words[1], words[2])) in flagged:
                return [{"table": _table(*key, flagged[key])}]
            in_family = any(len(words) == 1 or f == words[1] for f, _n in flagged)
            if words[0] == "ruleset" and in_family:
                raise BackendError(f"list {what}", "it holds a table with flags, which nft 1.0.6 cannot list as JSON")
            if terse and words[0] == "table":
                return self._terse_table(*words[1:3], safe=not in_family)
        return self._listing(what, terse=terse)

    def _listing(self, what: str, *, terse: bool, strict: bool = True) -> list[dict] | None:
        """``strict=False``: None when nft printed no JSON (see ``list``: from freed memory)."""
        with _LIBRARY:
            self._nft.set_terse_output(terse)
            try:
                rc, out, err = self._cmd(f"list {what}")
            finally:
                self._nft.set_terse_output(False)
        if rc != 0:
            if isinstance(refused := refusal(f"list {what}", err), NotFound):
                return []
            raise refused
        try:
            return json.loads(out)["nftables"] if out else []
        except ValueError:
            if not strict:
                return None
            raise BackendError(f"list {what}", "nft printed no valid JSON") from None

    def _terse_table(self, family: str, name: str, safe: bool) -> list[dict]:
        """``list table`` without set elements. nft 1.0.6 fetches every element of every set for
        ``list table`` even with -t (1.1 s for one 65,536-element meter; status, the watcher's reads and
        bans paid it on every call), while ``list ruleset <family>`` -t skips them (20 ms): the table's
        objects are taken from that unless another table of the family has flags (not ``safe``: see
        ``list``). [] when the table does not exist, as ``list table`` gives."""
        listing = self._listing(f"ruleset {family}", terse=True, strict=False) if safe else None
        if listing is None:  # a table of the family may have been given flags since ``list`` looked
            return self._listing(f"table {family} {name}", terse=True)
        mine = [o for o in listing if "metainfo" in o or any(
            v.get("family") == family and v.get("table" if k != "table" else "name") == name for k, v in o.items())]
        return mine if any("table" in o for o in mine) else []

    def set_elements(self, family: str, table: str, name: str) -> list[dict]:
        """The elements of one set, each as a dict with "val" (plus "counter", "expires", ... where the
        set has them: nft lists a bare value otherwise); [] when the set is missing."""
        listing = objects(self.list(f"set {family} {table} {name}"), "set")
        return [(e["elem"] if isinstance(e, dict) and "elem" in e else {"val": e})
                for e in (listing[0].get("elem", []) if listing else [])]

    def text(self, what: str) -> str:
        """``nft list <what>`` as nft prints it (no handles), for people."""
        with _LIBRARY:
            self._nft.set_json_output(False)
            self._nft.set_handle_output(False)
            try:
                rc, out, err = self._cmd(f"list {what}")
            finally:
                self._nft.set_json_output(True)
                self._nft.set_handle_output(True)
        if rc != 0:
            raise refusal(f"list {what}", err)
        return out


def _table(family: str, name: str, flags: int) -> dict:
    """A table object as nft's JSON gives it (less its handle), from netlink."""
    return {"family": family, "name": name, **({"flags": nfnetlink.flag_names(flags)} if flags else {})}


# libnftables' words (strerror's), read here and nowhere else: the refusals callers act on, and those
# that say a context's netlink socket is jammed (ENOBUFS, then EPROTO for good: _cmd renews it)
_JAMMED = ("No buffer space available", "Protocol error")
_REFUSALS = (("No such file or directory", NotFound),  # ENOENT: no such table, set or element
             ("Too many open files in system", SetFull))  # ENFILE, on an element: the set holds its size


def refusal(what: str, err: str) -> BackendError:
    """What libnftables printed on a failed command, as the error type callers catch."""
    kind = next((k for words, k in _REFUSALS if words in err), BackendError)
    return kind(what, _first_error(err))


def _first_error(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    return lines[0].replace("internal:0:0-0: ", "") if lines else "unknown error"


def require_net_admin() -> None:
    """CAP_NET_ADMIN is needed to read and write the ruleset."""
    try:
        with open("/proc/self/status") as f:
            caps = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
    except (OSError, StopIteration, ValueError):
        caps = -1 if os.geteuid() == 0 else 0
    if not caps & (1 << 12):
        raise EnvironmentProblem("needs CAP_NET_ADMIN: run as root (or with CAP_NET_ADMIN)")


def objects(listing: list[dict], kind: str) -> list[dict[str, Any]]:
    return [o[kind] for o in listing if kind in o]


@dataclass(frozen=True)
class NftLive:
    """What the kernel holds of one table now: objects by name (set elements left out, but
    the static sets' elements, which are configuration, not state)."""

    exists: bool = False
    chains: dict[str, dict] = field(default_factory=dict)
    sets: dict[str, dict] = field(default_factory=dict)
    limits: dict[str, dict] = field(default_factory=dict)
    rules: tuple[dict, ...] = ()
    static_elements: dict[str, list] = field(default_factory=dict)
    flags: tuple[str, ...] = ()  # the table's (dormant: it filters nothing); its objects are then not read
    genid: int | None = None  # the ruleset's generation, read before everything else (nfnetlink.genid)
    # deny set -> the address of a sampled prefix no interval of the kernel's starts at (None: all there)
    deny_absent: dict[str, str | None] = field(default_factory=dict)
    deny_written: dict[str, str] = field(default_factory=dict)  # deny set -> who else added or deleted elements


def read_live(nft: Nft, family: str, table: str, static: Collection[str]) -> NftLive:
    """``static``: the names of the sets whose elements are configuration (the render's: NftObjects.elements),
    read when present; every other set's elements are state, left out."""
    listing = nft.list(f"table {family} {table}", terse=True)  # meters can hold millions of elements
    if not listing:
        return NftLive()
    flags = next((t.get("flags") for t in objects(listing, "table")), None)
    if flags:
        return NftLive(True, flags=tuple(flags))
    sets = {s["name"]: s for s in objects(listing, "set")}
    allow = {}
    for name in static:
        if name in sets:
            allow[name] = _static_elements(nft, family, table, name, sets[name].get("type"))
    return NftLive(True, {c["name"]: c for c in objects(listing, "chain")}, sets,
                   {x["name"]: x for x in objects(listing, "limit")}, tuple(objects(listing, "rule")), allow)


def _static_elements(nft: Nft, family: str, table: str, name: str, kind: Any) -> list:
    """A static set's elements as its JSON listing gives them: an address set's from the text listing
    when that holds plain elements only (nft_elements.py, half the cost for 10,000 prefixes)."""
    if kind in ("ipv4_addr", "ipv6_addr"):
        try:
            found = address_elements(nft.text(f"set {family} {table} {name}"))
        except BackendError:  # gone since the table was listed: the JSON listing says so
            found = None
        if found is not None:
            return found
    full = objects(nft.list(f"set {family} {table} {name}"), "set")
    return full[0].get("elem", []) if full else []
