"""``check``'s warning when the node serves SSH or the kubelet and no failsafe entry covers the port:
a flood from the operator's own address would then get the operator banned too."""

from __future__ import annotations

from .policy.schema import Policy

ESSENTIAL_TCP = {22: "SSH", 10250: "kubelet"}  # the ports an operator must never be locked out of


def uncovered(policy: Policy, listening: set[int]) -> list[int]:
    """The essential TCP ports the node listens on that no failsafe entry covers, in order."""
    return [port for port in sorted(ESSENTIAL_TCP) if port in listening
            and not any(entry.covers("tcp", port) for entry in policy.failsafe)]


def warning(policy: Policy, listening: set[int]) -> str | None:
    """One line, or None when every essential port the node serves has a failsafe entry."""
    ports = uncovered(policy, listening)
    if not ports:
        return None
    named = ", ".join(f"{ESSENTIAL_TCP[p]} ({p}/tcp)" for p in ports)
    them = "them" if len(ports) > 1 else "it"
    return (f"warning: this node serves {named} and no failsafe entry covers {them}: a flood from your own "
            "address would get you banned too; add one for your management or control-plane network")
