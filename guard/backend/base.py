"""The one place that says what a backend does for a plan; ``NftBackend`` and ``IptBackend`` do it.

A plan (apply.Plan) holds the backend it was rendered for, with that backend's render: callers ask
it to read the live state, build the transaction, check or send it, read counters and set members,
and delete set elements. Nothing outside the two implementations asks which backend it is.

apply.py imports ``IptBackend`` (and with it the iptables and ipset tools) only when a policy asks for
it, and this protocol only for type checkers; ``NftBackend`` loads what only status, the daemon and the
watcher need (the raw netlink reads, drift) where it is used, so an ``apply`` pays for neither.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..model.ruleset import AddrSet, RuleSet
    from .kinds import Installed
    from .nft import Nft

Key = tuple[str, str]  # (rule group, mode)


class Backend(Protocol):
    name: str  # "nft", "iptables-nft" or "iptables-legacy" (kinds.label of ``installed``)
    installed: Installed  # which kind, and flavour: what apply.remove_other_backends keeps
    flavour: str | None  # iptables: "nft" or "legacy"
    polled: bool  # raises no nftables events (iptables-legacy): the watcher polls its tables' fingerprint
    forgets_sources: bool  # quiet sources must be removed from the ``counts`` sets (forget_sources)
    reads_again_what_changed: bool  # read_live takes a full read's ``previous`` too (else: partial reads only)

    # --- the live state and the transaction (apply.py) ----------------------------------
    def live_key(self) -> tuple:
        """What a read of the live state depends on: a read with another key is not reused."""

    def read_live(self, nft: Nft | None, families: tuple[int, ...] = (4, 6), previous: Any = None,
                  sets_unchanged: bool = False, written: Mapping[str, str] | None = None) -> Any:
        """What the kernel holds of this backend now (``nft`` None: nothing, for a fresh render).
        ``previous``: the caller's last read, reused where still valid; ``sets_unchanged``: the
        caller's events saw no set of ours change since it; ``written``: sets of ours whose elements
        its events saw another process add or delete (-> who)."""

    def transaction(self, live: Any, families: tuple[int, ...] = (4, 6),
                    fingerprints: dict[str, str] | None = None) -> Any:
        """The transaction that takes the kernel from ``live`` to the render (sync/)."""

    def check(self, tx: Any, nft: Nft) -> str:
        """Have the kernel check ``tx`` without committing it; returns how it was checked."""

    def send(self, tx: Any, nft: Nft) -> Any:
        """Commit ``tx``; returns the transaction the kernel took, when not ``tx`` (else None or ``tx``)."""

    def installed_text(self, tx: Any, nft: Nft) -> str:
        """After ``tx`` was sent: what is installed, as people read it."""

    def tx_data(self, tx: Any) -> Any:
        """``tx`` for ``apply --dry-run --json``."""

    def where(self, plan: Any) -> tuple[dict[str, int], str]:
        """Where the rules hook in, for ``apply``: (hooks, one line)."""

    # --- drift (drift.py, watch/) ----------------------------------------------------------
    def diff(self, plan: Any, live: Any) -> Any:
        """The drift.Drift of ``live`` from the plan, or None."""

    def fingerprints(self, live: Any) -> dict[str, str]:
        """Our rules' bodies in ``live``: rule id -> digest (fingerprints.py)."""

    def refill_only(self, fingerprints: dict[str, str] | None) -> bool:
        """Every rule of the render is one we installed before: the kernel lists them as it did then."""

    def needs_full_read(self, live: Any, families: tuple[int, ...], fingerprints: dict[str, str] | None) -> bool:
        """A repair from a partial read of ``live`` would rebuild what the read left out (ipsets)."""

    def status_part(self, plan: Any, nft: Nft, live: Any) -> dict[str, Any]:
        """status.collect's backend part: installed, hooks or jumps, rules, meters."""

    # --- counters and sets (counters.py, bans.py) ------------------------------------------
    def condemning_ids(self, ruleset: RuleSet) -> dict[str, Key]:
        """rule id -> (group, mode), for every condemning rule."""

    def ban_ids(self, ruleset: RuleSet) -> set[str]:
        """Ids of the rules whose counters count bans."""

    def tally_ids(self, ruleset: RuleSet, tally: str) -> set[str]:
        """Ids of the rules whose counters count ``tally`` (``model.ruleset.Rule.tally``)."""

    def rule_counters(self, live: Any = None) -> Iterator[tuple[str | None, int, int]]:
        """(rule id, packets, bytes) of our rules, from ``live`` or one cheap read."""

    def meter_fill(self, sets: list[AddrSet]) -> list[dict]:
        """Elements in each per-source set, as status shows them."""

    def source_counts(self, nft: Nft, s: AddrSet) -> Iterator[tuple[int, int]]:
        """(source key, packets) of one ``counts`` set (persource.py), read as a stream: a set can
        hold 65,536 sources."""

    def forget_sources(self, dels: Iterable[tuple[AddrSet, str]]) -> bool:
        """Remove sources from ``counts`` sets where their counts cannot age out by themselves;
        returns whether this backend does that (nft: its counts time out)."""

    def set_members(self, nft: Nft, s: AddrSet) -> set[str]:
        """The members of one set, as the backend lists them."""

    def installed_sets(self, nft: Nft, sets: dict[Any, AddrSet]) -> dict[Any, str]:
        """key -> the kernel name of that set as installed (sets not installed are left out)."""

    def timeouts(self, nft: Nft, name: str) -> Iterable[tuple[str, int | None]]:
        """(member, seconds left) of one installed set; a set can hold 65,536 (read it as it comes)."""

    def delete_elements(self, nft: Nft, names: dict[tuple[str, int], str],
                        targets: list[tuple[str, int]] | None) -> None:
        """Delete ``targets`` ((address, IP version)) from the named sets of their version; None: all."""

    def ban(self, nft: Nft, name: str, prefix: str, for_s: int | None, reason: str) -> None:
        """Add ``prefix`` to the installed manual ban set ``name`` for ``for_s`` seconds (None: until
        unbanned) with ``reason``; one already there takes the new expiry and reason. A full set: SetFull."""

    def manual_bans(self, nft: Nft, name: str) -> list[tuple[str, int | None, str]]:
        """(prefix, seconds left or None, reason) of every entry of the manual ban set ``name``."""

    def restore_elements(self, nft: Nft, name: str, rows: list[tuple[str, int | None, str]]) -> None:
        """Add (key, seconds left or None, reason) elements to the installed set ``name`` in one
        transaction (persist.py); an element already there keeps its own timeout."""

    def restore_timed(self, nft: Nft, name: str, version: int, rows: list[tuple[str, int]]) -> None:
        """Add (address, seconds left) elements of IP ``version`` to the installed timed set ``name`` in
        one transaction (persist.py: a full trusted set is 65,536 of them); one already there keeps
        its own timeout."""

    def add_elements(self, nft: Nft, s: AddrSet, elements: Iterable[str], timeout_s: int) -> None:
        """Add ``elements`` to set ``s`` with ``timeout_s``, restarting the timeout of any already there
        (the SYN valve's refresh: the kernel removes them when nobody refreshes them)."""

    # --- the SYN valve (valve.py, daemon/valve_part.py) ------------------------------------
    def valve_elements(self, s: AddrSet) -> tuple[str, ...]:
        """What ``valve`` set ``s`` holds while the valve is engaged."""

    def valve_ids(self, ruleset: RuleSet) -> set[str]:
        """Ids of the rules whose counters count the engaged valve's drops."""
