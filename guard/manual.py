"""Manual bans (``nodeguard ban``): prefixes an operator drops before conntrack, each with its own
expiry or none, and a reason. They live in the kernel's ``manual-v4``/``manual-v6`` sets (state, like a meter:
an apply keeps them), whose elements carry the expiry and the reason: ``banned`` lists them as plain
``ManualBan`` values, ready to be snapshotted and added back. A repair that recreates the table (a
foreign ``nft flush ruleset``) loses them until the snapshot of the persistence work restores them."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import prefixes
from .errors import NodeguardError, SetFull
from .model.ruleset import AddrSet
from .policy.fields import DROP_ALL, to_network

if TYPE_CHECKING:
    from .backend.nft import Nft

MAX_REASON = 100  # UTF-8 bytes: an nft element comment holds at most 128
MAX_FOR_S = 365 * 86400
HALF = "half of its family's addresses or more: it would drop nearly every source"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class BadBan(NodeguardError):
    exit_code = 2


@dataclass(frozen=True)
class ManualBan:
    prefix: str  # "10.1.2.0/24", "fd00::/48"
    version: int
    expires_s: int | None  # seconds left; None: until unbanned
    reason: str = ""


def target(text: str) -> tuple[str, int]:
    """An address or CIDR to ban, as (prefix text, IP version); anything else is one line, exit 2."""
    try:
        net = to_network(text.strip() if isinstance(text, str) else "", DROP_ALL)
    except ValueError as exc:
        raise BadBan(str(exc)) from None
    if net.num_addresses == 1 and net.network_address.is_unspecified:
        raise BadBan(f"{text.strip()!r} is the unspecified address, no source")
    if prefixes.too_broad([(int(net.network_address), net.prefixlen)], net.version):
        raise BadBan(f"{text.strip()!r} covers {HALF}")
    return str(net), net.version


def duration(text: str) -> int:
    """``--for``: seconds, or a number with s, m, h or d (``90s``, ``10m``, ``2h``, ``7d``)."""
    m = re.fullmatch(r"([0-9]{1,9})([smhd]?)", text.strip(), re.ASCII)
    seconds = int(m[1]) * _UNITS[m[2] or "s"] if m else 0
    if not 1 <= seconds <= MAX_FOR_S:
        raise BadBan(f"--for {text!r}: give 1 s to 365 d, as seconds or with s, m, h or d (90s, 10m, 2h, 7d)")
    return seconds


def reason_ok(text: str) -> bool:
    """A reason the kernel's comment holds and a terminal shows as it is."""
    return text.isprintable() and len(text.encode(errors="replace")) <= MAX_REASON


def reason(text: str | None) -> str:
    text = text or ""
    if not reason_ok(text):
        raise BadBan(f"--reason: at most {MAX_REASON} bytes of printable text (UTF-8)")
    return text


def manual_sets(plan) -> dict[int, AddrSet]:
    """IP version -> the manual ban set."""
    return {s.version: s for s in plan.ruleset.sets if s.kind == "manual"}


def installed(plan, nft: Nft) -> dict[tuple[str, int], str]:
    """("manual", IP version) -> the set's kernel name, for the sets installed."""
    return plan.backend.installed_sets(nft, {("manual", v): s for v, s in manual_sets(plan).items()})


def ban(plan, nft: Nft, prefix: str, version: int, for_s: int | None, why: str) -> None:
    """Add the ban; the same prefix banned again takes the new expiry and reason. A prefix that
    overlaps another ban is refused (an interval set holds no overlaps): one line, exit 2."""
    names = installed(plan, nft)
    if ("manual", version) not in names:
        raise BadBan("nodeguard is not installed here (nodeguard apply first)")
    fits(prefix, [m.prefix for m in banned(plan, nft) if m.version == version])
    try:
        plan.backend.ban(nft, names[("manual", version)], prefix, for_s, why)
    except SetFull:
        raise BadBan(f"the manual ban set is full (deny.manual_size {manual_sets(plan)[version].size}): "
                     "unban some or raise it") from None


def fits(prefix: str, bans: list[str]) -> None:
    """Refuses (BadBan) ``prefix`` beside the ``bans`` of its family: it overlaps one (an interval set
    holds no overlaps), or together they cover half the family. The same prefix again is no overlap."""
    new = ipaddress.ip_network(prefix)
    others = [ipaddress.ip_network(b) for b in bans if b != prefix]
    for other in others:
        if other.overlaps(new):
            raise BadBan(f"{prefix} overlaps the ban of {other}: unban that first")
    together = [(int(n.network_address), n.prefixlen) for n in [new, *others]]
    if prefixes.too_broad(prefixes.outermost(together, new.version), new.version):
        raise BadBan(f"{prefix} and the other bans together cover {HALF}")


def banned(plan, nft: Nft) -> list[ManualBan]:
    out = []
    for (_what, version), name in sorted(installed(plan, nft).items(), key=lambda kv: kv[0][1]):
        # a one-address entry is listed bare: shown (and unbanned) as its /32 or /128, as ``target`` gives it
        out += [ManualBan(str(ipaddress.ip_network(p)), version, left, why)
                for p, left, why in plan.backend.manual_bans(nft, name)]
    return out


def unban(plan, nft: Nft, targets: list[tuple[str, int]] | None) -> list[str]:
    """Remove ``targets`` (from ``target``) from the manual ban sets; None: every entry. Returns the
    prefixes that were banned by hand and are not now."""
    names = installed(plan, nft)
    before = {(m.prefix, m.version) for m in banned(plan, nft)}
    gone = sorted(before if targets is None else before & set(targets))
    if gone or targets is None:
        plan.backend.delete_elements(nft, names, None if targets is None else gone)
    return [p for p, _v in gone]
