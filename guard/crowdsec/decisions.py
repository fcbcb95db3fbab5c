"""A Local API's decision stream (``GET /v1/decisions/stream``), read as untrusted input: every entry
that is not a well-formed ban of a wanted scope and origin is skipped and counted, never raised."""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass

from ..policy.fields import DROP_ALL, to_network

MAX_DURATION_S = 365 * 86400  # a decision longer than this is held this long (the next startup pull renews it)
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_GO_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h)")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Decision:
    id: int
    net: Network  # Ip: its /32 or /128
    scope: str  # "Ip" | "Range"
    left_s: int  # seconds the decision has left when pulled, capped
    scenario: str
    origin: str


def go_duration(text: object) -> float | None:
    """Seconds in a Go duration (``59m58.9s``, ``3h``, ``1h2m3.5s``, ``-2.1s``); None if it is not one."""
    if not isinstance(text, str) or len(text) > 64:
        return None
    sign, body = (-1.0, text[1:]) if text[:1] == "-" else (1.0, text.lstrip("+"))
    if body == "0":
        return 0.0
    parts = _GO_PART.findall(body)
    if not parts or "".join(n + u for n, u in parts) != body:
        return None
    return sign * sum(float(n) * _GO_UNITS[u] for n, u in parts)


def parse_stream(answer: object, scopes: tuple[str, ...], origins: tuple[str, ...]) -> tuple[
        list[Decision], list[int], int]:
    """(new ban decisions, ids of deleted decisions, entries skipped) of one stream answer. A new one
    that has already run out is skipped; ``origins`` empty: every origin."""
    if not isinstance(answer, dict):
        raise ValueError("the answer is not a JSON object")
    new, skipped = [], 0
    wanted = {s.lower() for s in scopes}
    for entry in _entries(answer.get("new")):
        d = _decision(entry, wanted, origins)
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


def _decision(e: object, scopes: set[str], origins: tuple[str, ...]) -> Decision | None | bool:
    """The decision, None if malformed, False if well-formed but not ours (another type, scope or origin)."""
    if not isinstance(e, dict) or type(e.get("id")) is not int:
        return None
    fields = [e.get(k) for k in ("type", "scope", "value", "scenario", "origin")]
    if not all(isinstance(f, str) and len(f) <= 256 for f in fields):
        return None
    kind, scope, value, scenario, origin = fields
    if kind.lower() != "ban" or scope.lower() not in scopes or (origins and origin not in origins):
        return False
    left = go_duration(e.get("duration"))
    if left is None:
        return None
    try:  # the policy's own parser: plain prefixes, no /0, no zone ids; 10.9.0.5/24 is 10.9.0.0/24
        net = to_network(str(ipaddress.ip_network(value, strict=False)) if "/" in value else value, DROP_ALL)
    except ValueError:
        return None
    if (scope.lower() == "ip") != (net.prefixlen == net.max_prefixlen) or net.network_address.is_unspecified:
        return None
    if left <= 0:
        return False
    return Decision(e["id"], net, "Range" if scope.lower() == "range" else "Ip",
                    min(MAX_DURATION_S, math.ceil(left)), scenario, origin)
