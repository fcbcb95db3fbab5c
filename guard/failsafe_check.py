"""``check``'s warnings about failsafe entries: when the node serves SSH or the kubelet and no entry
covers the port (a flood from the operator's own address would then get the operator banned too), and
when an entry opens most ports to a broad network (protection off for much of the node)."""

from __future__ import annotations

from .policy.schema import Policy

ESSENTIAL_TCP = {22: "SSH", 10250: "kubelet"}  # the ports an operator must never be locked out of
MANY_PORTS = 1024  # more than this many ports is a service range, not management access
NARROW = {4: 16, 6: 48}  # a prefix at least this long is one site's


def uncovered(policy: Policy, listening: set[int]) -> list[int]:
    """The essential TCP ports the node listens on that no failsafe entry covers, in order."""
    return [port for port in sorted(ESSENTIAL_TCP) if port in listening
            and not any(entry.covers("tcp", port) for entry in policy.failsafe)]


def broad(policy: Policy) -> list[str]:
    """One line per failsafe entry that exempts more than MANY_PORTS ports for a prefix broader than
    NARROW: legal, but likely a mistake that switches protection off."""
    out = []
    for i, entry in enumerate(policy.failsafe):
        ports = len({p for low, high in entry.ports for p in range(low, high + 1)})
        wide = [str(n) for n in entry.cidrs if n.prefixlen < NARROW[n.version]]
        if ports > MANY_PORTS and wide:
            out.append(f"warning: failsafe[{i}] exempts {ports} {entry.protocol} ports for {', '.join(wide)}: "
                       "nothing limits those sources there; name the management ports alone")
    return out


def warning(policy: Policy, listening: set[int]) -> str | None:
    """Lines (``broad``'s, then the uncovered ports'), or None when all is well."""
    lines = broad(policy)
    ports = uncovered(policy, listening)
    if not ports:
        return "\n".join(lines) or None
    named = ", ".join(f"{ESSENTIAL_TCP[p]} ({p}/tcp)" for p in ports)
    them = "them" if len(ports) > 1 else "it"
    return "\n".join([*lines, f"warning: this node serves {named} and no failsafe entry covers {them}: a flood "
                       "from your own address would get you banned too; add one for your management or "
                       "control-plane network"])
