"""``interfaces: auto``: the interfaces that carry the default routes (IPv4 and IPv6).

Read from /proc of the current network namespace, so it is cheap and needs no tool.
Pod veths, bridges and tunnels carry no default route and so are never limited.
"""

from __future__ import annotations

from pathlib import Path

from .errors import EnvironmentProblem


def default_route_interfaces(proc: Path = Path("/proc/net")) -> tuple[str, ...]:
    names: set[str] = set()
    try:
        for line in (proc / "route").read_text().splitlines()[1:]:
            f = line.split()
            if len(f) > 7 and f[1] == "00000000" and f[7] == "00000000":
                names.add(f[0])
    except OSError:
        pass
    try:
        for line in (proc / "ipv6_route").read_text().splitlines():
            f = line.split()
            if len(f) == 10 and f[0] == "0" * 32 and f[1] == "00":
                names.add(f[9])
    except OSError:
        pass
    names.discard("lo")
    return tuple(sorted(names))


def resolve_interfaces(setting) -> tuple[str, ...]:
    if setting != "auto":
        return tuple(setting)
    found = default_route_interfaces()
    if not found:
        raise EnvironmentProblem("interfaces: auto found no default route; list the uplink interfaces in the policy")
    return found
