"""``metrics.listen`` → (host, port). Its own module so that validating a policy does not import
the metrics server (prometheus_client, http.server: ~40 ms of every CLI start)."""

from __future__ import annotations

import ipaddress
import re


class NotLoopback(ValueError):
    """A remote address without allow_remote: the caller names the switch that allows it."""


def parse_listen(value: str, allow_remote: bool = False) -> tuple[str, int]:
    """``metrics.listen`` (``HOST:PORT``, ``[V6]:PORT``) → (host, port). HOST must be an IP
    literal (no name lookups at start). A non-loopback address is refused unless
    ``metrics.allow_remote: true``: these metrics describe attacks and defences, and the port
    would sit on the very uplinks nodeguard protects. Raises ValueError with one line."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([0-9.]+):(\d{1,5})", value.strip()) if isinstance(value, str) else None
    if not m:
        raise ValueError(f"must be IP:PORT or [IPv6]:PORT, got {value!r}")
    host, port = (m[1], m[2]) if m[1] else (m[3], m[4])
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address") from None
    if not 1 <= int(port) <= 65535:
        raise ValueError(f"port {port} is out of range 1-65535")
    if not addr.is_loopback and not allow_remote:
        raise NotLoopback(f"{host} is not a loopback address; set metrics.allow_remote: true to serve metrics "
                         "beyond this node")
    return str(addr), int(port)
