"""The names nodeguard's objects get in iptables: chains (at most 28 characters, Felix's limit, safe
for both flavours), ipsets (31) and xt_hashlimit tables (15). Long names keep a prefix and a digest."""

from __future__ import annotations

import hashlib

from ..model.build import CLOSED_CHAIN, STATEFUL_CHAIN, STATELESS_CHAIN, SYNPROXY_CHAIN
from ..model.ruleset import AddrSet, Chain

PREFIX = "NODEGUARD"
MAX_CHAIN = 28  # Felix's MaxChainNameLength: safe for both flavours
MAX_IPSET = 31  # IPSET_MAXNAMELEN - 1
_BASE_NAMES = {STATELESS_CHAIN: "NODEGUARD-PRE", STATEFUL_CHAIN: "NODEGUARD-CONN",
               SYNPROXY_CHAIN: "NODEGUARD-SYNPROXY", CLOSED_CHAIN: "NODEGUARD-CLOSED"}


def _short(name: str, limit: int) -> str:
    """``name`` if it fits, else a prefix and a 40-bit digest: stable, and unique among a policy's
    few hundred names."""
    if len(name) <= limit:
        return name
    return f"{name[:limit - 11]}-{hashlib.sha1(name.encode()).hexdigest()[:10].upper()}"


_SHORT = {"bogus-flags": "BOGUS", "icmp-flood": "ICMP", "syn-flood": "SYN"}


def ipt_chain_name(c: Chain) -> str:
    """A model chain's iptables name, from what the chain is for."""
    if c.role == "escalate":
        return _short(f"{PREFIX}-ESC-{_SHORT.get(c.group, c.group.upper())}-V{c.version}", MAX_CHAIN)
    return chain_name(c.name)


def chain_name(name: str) -> str:
    """The iptables name of a base or regular chain (not an escalation chain: ipt_chain_name)."""
    if name in _BASE_NAMES:
        return _BASE_NAMES[name]
    return _short(f"{PREFIX}-{_SHORT.get(name, name.upper())}", MAX_CHAIN)


def ipset_name(s: AddrSet) -> str:
    """Stable across definition changes (the sync swaps a changed set in): rules keep referring to it."""
    return _short(f"{PREFIX}-{s.base.upper()}", MAX_IPSET)


def hashlimit_name(key: str) -> str:
    """xt_hashlimit names are at most 15 characters. ``key`` is a set or limit name, which
    already ends in a digest of every parameter, so a changed rate gives a fresh table."""
    return "ng-" + hashlib.sha1(key.encode()).hexdigest()[:12]
