"""``interfaces: auto``: the interfaces that carry the default routes (IPv4 and IPv6).

Read from /proc of the current network namespace, so it is cheap and needs no tool.
Pod veths, bridges and tunnels carry no default route and so are never limited.
"""

from __future__ import annotations

import re
from pathlib import Path

from .errors import EnvironmentProblem

# What the kernel accepts (dev_valid_name: 1-15 bytes, not "." or "..", no '/', ':' or whitespace)
# narrowed to what both backends write without quoting: a name from the policy or from /proc alike
_IFNAME_RE = re.compile(r"[A-Za-z0-9_.@-]{1,15}", re.ASCII)  # always fullmatch: "$" would let "eth0\n" in


def is_ifname(name: object) -> bool:
    """A name the kernel may give an interface and nodeguard may write into a rule."""
    return isinstance(name, str) and bool(_IFNAME_RE.fullmatch(name)) and name not in (".", "..")


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
    odd = [name for name in found if not is_ifname(name)]
    if odd:
        raise EnvironmentProblem(f"interfaces: auto found {', '.join(map(repr, odd))}, a name nodeguard cannot "
                                 "write into a rule (letters, digits and _ . @ - only); rename it")
    return found
