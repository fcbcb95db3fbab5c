"""A Local API's decision stream (``GET /v1/decisions/stream``), read as untrusted input: every entry
that is not a well-formed ban of a wanted scope and origin is skipped and counted, never raised."""

from __future__ import annotations

import ipaddress
import math
import re
import socket
from dataclasses import dataclass

from .. import inet
from ..policy.fields import DROP_ALL, to_network

MAX_TEXT = 512  # characters of a decision's type, scope, value, scenario and origin together
MAX_DURATION_S = 365 * 86400  # a decision longer than this is held this long (the next startup pull renews it)
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_GO_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h)")
_GO_HMS = re.compile(r"(?:([0-9]{1,9})h)?(?:([0-9]{1,2})m)?(?:([0-9]{1,2}(?:\.[0-9]{1,9})?)s)?")  # what the LAPI says


@dataclass(frozen=True, slots=True)
class Decision:
    id: int
    net: str  # Ip: the address, Range: the prefix, as nft reads them (made here, never the LAPI's text)
    version: int
    scope: str  # "Ip" | "Range"
    left_s: int  # seconds the decision has left when pulled, capped
    scenario: str
    origin: str


def go_duration(text: object) -> float | None:
    """Seconds in a Go duration (``59m58.9s``, ``3h``, ``1h2m3.5s``, ``-2.1s``); None if it is not one."""
    if not isinstance(text, str) or len(text) > 64:
        return None
    m = _GO_HMS.fullmatch(text)
    if m and text:  # the common form first: 100,000 at a startup pull
        h, mi, sec = m.groups()
        return int(h or 0) * 3600.0 + int(mi or 0) * 60.0 + float(sec or 0)
    sign, body = (-1.0, text[1:]) if text[:1] == "-" else (1.0, text.lstrip("+"))
    if body == "0":
        return 0.0
    parts = _GO_PART.findall(body)
    if not parts or "".join(n + u for n, u in parts) != body:
        return None
    return sign * sum(float(n) * _GO_UNITS[u] for n, u in parts)


def parse_stream(answer: object, scopes: tuple[str, ...], origins: tuple[str, ...], min_prefix: dict[int, int]
                 ) -> tuple[list[Decision], list[int], int]:
    """(new ban decisions, ids of deleted decisions, entries skipped) of one stream answer. A new one
    that has already run out is skipped; ``origins`` empty: every origin; a range shorter than
    ``min_prefix`` (IP version -> prefix length) is skipped."""
    if not isinstance(answer, dict):
        raise ValueError("the answer is not a JSON object")
    new, skipped = [], 0
    wanted = {s.lower() for s in scopes}
    for entry in _entries(answer.get("new")):
        d = _decision(entry, wanted, origins, min_prefix)
        if d is None:
            skipped += 1
        elif d is not False:
            new.append(d)
    deleted = []
    for entry in _entries(answer.get("deleted")):
        if isinstance(entry, dict) and type(entry.get("id")) is int:
            deleted.append(entry["id"])
        else:
            skipped += 1
    return new, deleted, skipped


def _entries(value: object) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError("'new' or 'deleted' is not a list")
    return value


def _decision(e: object, scopes: set[str], origins: tuple[str, ...], min_prefix: dict[int, int]
              ) -> Decision | None | bool:
    """The decision, None if malformed, False if well-formed but not ours (another type, scope or origin)."""
    if type(e) is not dict or type(e.get("id")) is not int:
        return None
    kind, scope, value, scenario, origin = e.get("type"), e.get("scope"), e.get("value"), e.get("scenario"), e.get("origin")
    if not (type(kind) is str and type(scope) is str and type(value) is str and type(scenario) is str
            and type(origin) is str and len(kind) + len(scope) + len(value) + len(scenario) + len(origin) <= MAX_TEXT):
        return None
    scope = scope.lower()
    if kind.lower() != "ban" or scope not in scopes or (origins and origin not in origins):
        return False
    left = go_duration(e.get("duration"))
    where = _address(value) if scope == "ip" else _prefix(value, min_prefix)
    if left is None or where is None:
        return None
    if left <= 0:
        return False
    return Decision(e["id"], where[0], where[1], "Ip" if scope == "ip" else "Range",
                    min(MAX_DURATION_S, math.ceil(left)), scenario, origin)


def _address(text: str) -> tuple[str, int] | None:
    """(the address as inet_ntop writes it, IP version; IPv4-mapped: the IPv4 address): inet_pton is
    strict (no zone ids, no leading zeros, ASCII) and a hundred times faster than ipaddress, for
    100,000 at a startup pull."""
    for family, version in ((socket.AF_INET, 4), (socket.AF_INET6, 6)):
        try:
            packed = socket.inet_pton(family, text)
        except (OSError, ValueError):
            continue
        if packed[:12] == inet.MAPPED_HEAD:
            family, version, packed = socket.AF_INET, 4, packed[12:]
        return (None if not any(packed) else (socket.inet_ntop(family, packed), version))
    return None


def _prefix(text: str, min_prefix: dict[int, int]) -> tuple[str, int] | None:
    """A range by the policy's own parser (no /0, no zone ids; an IPv4-mapped one is the IPv4 range);
    10.9.0.5/24 is 10.9.0.0/24. None if it is wider than ``min_prefix`` allows."""
    try:
        net = to_network(str(ipaddress.ip_network(text, strict=False)) if "/" in text else text, DROP_ALL)
    except ValueError:
        return None
    if net.network_address.is_unspecified or net.prefixlen < min_prefix[net.version]:
        return None
    return str(net), net.version
