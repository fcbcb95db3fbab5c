"""The field types the policy schema is built from, and the parsers pydantic calls for nodeguard's own
syntax: rates, CIDRs, names, interface names and port ranges. Apart from the schema, so that each
section there reads as its keys and defaults.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from typing import Annotated, Any, Literal

import pydantic
from pydantic import Field

from .. import inet
from ..configfile import check_data_path
from ..interfaces import is_ifname
from .rates import MAX_BURST, Rate, parse_rate

_NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,19}", re.ASCII)

RateField = Annotated[Rate, pydantic.BeforeValidator(parse_rate)]
PositiveInt = Annotated[int, Field(gt=0, strict=True)]
Burst = Annotated[int, Field(gt=0, le=MAX_BURST, strict=True)]
Port = Annotated[int, Field(ge=1, le=65535, strict=True)]
DataPath = Annotated[str, Field(strict=True), pydantic.AfterValidator(check_data_path)]  # a file nodeguard writes
MULTIPORT_SLOTS = 15  # iptables multiport's limit (a range takes two), kept by both backends for portability
PortList = Annotated[tuple[Port, ...], Field(max_length=MULTIPORT_SLOTS)]

# The most entries of the lists whose every entry adds rules, sets, chains or a range of ports to
# walk: check, apply and every daemon reload cost grows with them (limits: 128 cost `check` 0.65 s
# and 73 MB, 1,000 cost 8 s and 350 MB; a reload blocks the daemon's main loop as long). Each bound is
# several times what one node needs: a limit or connlimit per exposed service and protocol, a
# failsafe entry per management network and protocol, an interface per uplink (bonds and VLANs
# included), a port range per NodePort range or service (each expands to up to 65,535 ports), an
# explicit SYN-defence port per listener (65,535 in one set took the kernel 39 s to check).
MAX_ENTRIES = {"limits": 128, "connlimit": 128, "failsafe": 64, "interfaces": 64, "port ranges": 64,
               "synproxy.ports": 1024}
# The most elements of any dynamic set (meters, trusted, bans, manual bans, CrowdSec decisions): 4 x
# the meters' default, room to raise a default without the runaway: the daemon snapshots the ban,
# trusted and manual sets, and a full ban set of 4,194,304 took 3.67 GB to read back. At this bound a
# full one still takes 5.5 s and peaks at 504 MB (65,536: 0.8 s, 156 MB), over the unit's MemoryMax:
# the snapshot's reader, not this bound, is what keeps a full set within the unit.
MAX_SET_SIZE = 262_144
SetSize = Annotated[int, Field(ge=16, le=MAX_SET_SIZE, strict=True)]


class Section(pydantic.BaseModel):
    """A section of the policy: unknown keys refused, frozen once validated."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


NETWORK = {4: ipaddress.IPv4Network, 6: ipaddress.IPv6Network}
LONGEST_CIDR = 49  # characters: "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255/128"
OPENS_ALL = "would allow every source: nodeguard would protect nothing"


def too_many(count: int, most: int) -> str:
    """The message for a list over its bound (pydantic's ``too_long`` says the same: policy/load.py)."""
    return f"{count} entries; at most {most}"


def shown(text: str, limit: int = 60) -> str:
    """``text`` quoted for a message, its first ``limit`` characters only: a 10 MB line is no message."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "\u2026"


def to_network(text: str, whole: str = OPENS_ALL, *, fast: bool = True,
               echo: int = 60) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A plain prefix (or address: its /32 or /128; IPv4-mapped: the IPv4 one); ``whole`` says what a /0
    would do (refused). The plain forms are read by inet_pton (inet.py), the rest by ipaddress; ``fast=False``: all by
    ipaddress, the reference tests/test_prefixes.py holds the fast reading to. A message quotes at most
    ``echo`` characters of ``text`` (a deny file may be any file: what it holds need not reach a log)."""
    if len(text) > LONGEST_CIDR:
        raise ValueError(f"{shown(text, echo)} is not a CIDR (longer than any)")
    if not text.isascii() or "%" in text:  # no zone ids (fe80::%eth0/64), no non-ASCII digits
        raise ValueError(f"{shown(text, echo)} is not a CIDR (plain IPv4 or IPv6 prefixes only)")
    found = inet.read(text) if fast else None
    if found is not None:  # ~2.5x faster than ipaddress parsing the text: 10,000 allow CIDRs
        version, first, length = found
        return NETWORK[version]((first, length))
    net = None
    if ":" in text:  # never IPv4: ip_network would try IPv4Network first and fail (~3 us a CIDR)
        try:
            net = ipaddress.IPv6Network(text, strict=True)
        except ValueError:
            pass  # ip_network's own message, below
    if net is None:
        try:
            net = ipaddress.ip_network(text, strict=True)
        except ValueError as exc:  # ipaddress's message quotes the whole text: only when it is short enough
            why = str(exc) if len(text) <= echo else "host bits set" if _loose(text) else "not an IPv4 or IPv6 prefix"
            raise ValueError(f"{shown(text, echo)} is not a CIDR ({why})") from None
    version, first, length = inet.unmapped(net.version, int(net.network_address), net.prefixlen)
    if version != net.version:  # ::ffff:a.b.c.d/N: the IPv4 prefix (inet.py)
        net = NETWORK[version]((first, length))
    if net.prefixlen == 0:
        raise ValueError(f"{shown(text, echo)} {whole}")
    return net


def _loose(text: str) -> bool:
    """Whether ``text`` is a prefix once its host bits are cleared."""
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True


# allow and failsafe: the broadest prefix that may skip protection. A /8 is a large organisation's
# (10.0.0.0/8) and a /32 an ISP's IPv6 allocation; anything broader is a share of the Internet, except
# within IPv6's unique local addresses (fd00::/8 is IPv6's 10.0.0.0/8: never routed from the Internet).
BROADEST_OPENING = {4: 8, 6: 32}
UNIQUE_LOCAL = ipaddress.IPv6Network("fc00::/7")


def opening_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """An allow or failsafe prefix: ``to_network``'s, no broader than ``BROADEST_OPENING``."""
    net = to_network(text)
    if net.prefixlen < BROADEST_OPENING[net.version] and not (net.version == 6 and net.subnet_of(UNIQUE_LOCAL)):
        raise ValueError(f"{text!r} is broader than /{BROADEST_OPENING[net.version]}: sources that never meet "
                         "a limit must be your own networks, not a share of the Internet")
    return net


def absolute_path(value: str) -> str:
    """A file nodeguard reads (a deny file): printable and absolute, so that it never depends on the
    directory a verb was started in."""
    if not value.isprintable() or not value.startswith("/"):
        raise ValueError(f"{value!r} must be a printable absolute path")
    return value


_HOSTNAME_RE = re.compile(r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                          r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?", re.ASCII)


def http_base_url(value: str) -> str:
    """An HTTP(S) server's base URL, ``http(s)://host[:port][/]``: what urllib will connect to, parsed
    as urllib parses it (scheme, host, port), so nothing that passes here fails at the first request.
    The host is an IP address (IPv6 in brackets) or a DNS name; no user, path, query or fragment."""
    if not value.isascii() or not value.isprintable() or any(c.isspace() for c in value):
        raise ValueError(f"{shown(value)} is not an http(s)://host[:port]/ URL (printable ASCII, no spaces)")
    try:
        url = urllib.parse.urlsplit(value)
        host, port = url.hostname, url.port  # .port parses (and range-checks) the port
    except ValueError as exc:
        raise ValueError(f"{shown(value)} is not an http(s)://host[:port]/ URL: {exc}") from None
    if url.scheme not in ("http", "https"):
        raise ValueError(f"{shown(value)}: the scheme must be http or https")
    if url.username is not None or url.path not in ("", "/") or url.query or url.fragment or value.endswith(("?", "#")):
        raise ValueError(f"{shown(value)}: give only http(s)://host[:port]/ (no user, path, query or fragment)")
    bracketed = url.netloc.rpartition("@")[2].startswith("[")
    if not host or (bracketed and not _is_ipv6(host)) or (not bracketed and not _HOSTNAME_RE.fullmatch(host)):
        raise ValueError(f"{shown(value)}: the host must be an IP address (IPv6 in brackets) or a DNS name")
    if port == 0 or url.netloc.endswith(":"):
        raise ValueError(f"{shown(value)}: the port must be 1-65535")
    return value


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def check_name(name: str) -> str:
    """Names become chain, set and comment text in both backends: a small alphabet, nothing to escape."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ValueError("must be 1-20 characters of a-z, 0-9 and '-', starting with a letter")
    return name


def _check_ifname(name: str) -> str:
    if not is_ifname(name):
        raise ValueError(f"{name!r} is not an interface name (1-15 of letters, digits and _ . @ -, as the kernel "
                         "and both backends take them)")
    if name == "lo":
        raise ValueError("loopback is never limited; remove 'lo'")
    return name


def check_interfaces(value: Any) -> Any:
    if value == "auto" or isinstance(value, (list, tuple)):
        if isinstance(value, (list, tuple)) and not value:
            raise ValueError("list at least one interface, or say 'auto'")
        if isinstance(value, (list, tuple)) and len(value) > MAX_ENTRIES["interfaces"]:
            raise ValueError(too_many(len(value), MAX_ENTRIES["interfaces"]))
        return value
    raise ValueError(f"must be 'auto' or a list of interface names, got {value!r}")


Cidr = Annotated[str, Field(strict=True), pydantic.AfterValidator(opening_network)]
DROP_ALL = "would drop every source: name a narrower prefix"
DenyCidr = Annotated[str, Field(strict=True), pydantic.AfterValidator(lambda text: to_network(text, DROP_ALL))]
IfName = Annotated[str, Field(strict=True), pydantic.AfterValidator(_check_ifname)]


def one_burst(rate_field: str):
    """A burst may be written inside the rate ('100/second burst 200') or in its own key, not both:
    two places for one number would leave the reader guessing which one the kernel got."""

    def check(cls, burst: int | None, info: pydantic.ValidationInfo) -> int | None:
        rate = info.data.get(rate_field)
        if burst is not None and isinstance(rate, Rate) and rate.burst is not None and rate.burst != burst:
            raise ValueError(f"{rate_field} already says 'burst {rate.burst}'; give the burst once")
        return burst
    return check


Mode = Literal["enforce", "monitor"]  # monitor: meter, count and sample what would be dropped; drop nothing


def _port_ranges(value: Any) -> tuple[tuple[int, int], ...]:
    """A list of ports and "low-high" ranges."""
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"must be a list of ports or 'low-high' ranges, got {value!r}")
    if len(value) > MAX_ENTRIES["port ranges"]:
        raise ValueError(too_many(len(value), MAX_ENTRIES["port ranges"]))
    out = []
    for item in value:
        if isinstance(item, int) and not isinstance(item, bool):
            low = high = item
        elif isinstance(item, str) and re.fullmatch(r"\d{1,5}-\d{1,5}", item.strip()):
            low, high = (int(x) for x in item.strip().split("-"))
        else:
            raise ValueError(f"{item!r} is not a port or a 'low-high' range")
        if not 1 <= low <= high <= 65535:
            raise ValueError(f"{item!r} is not within 1-65535, low to high")
        out.append((low, high))
    return tuple(out)


PortRanges = Annotated[tuple[tuple[int, int], ...], pydantic.BeforeValidator(_port_ranges)]
