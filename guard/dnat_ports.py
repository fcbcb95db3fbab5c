"""The TCP ports the node DNATs for its own addresses: never ``ports: auto`` host ports.

An engaged host port's SYNs skip conntrack, and so the nat table: a port kube-proxy (NodePorts,
externalIPs and LoadBalancer IPs on the node) or the CNI (hostPorts: CNI-HOSTPORT-DNAT) sends to a
pod would reach whoever listens on it on the node, and any local user may (ports >= 1024).
Measured (tests/test_dnat_ports.py, before): nobody's listener on a NodePort got 10/10 of its
clients with ``nf_conntrack_tcp_loose=0``, and with loose pickup (1) 9/10 failed (the third ACK is
DNAT'd to a pod that never saw the SYN).

Read from the iptables nat tables (``*-save -t nat``, both flavours, both families; read only, and
a flavour without a nat table is not asked): every rule that matches a TCP destination port without
a destination, or for a destination holding one of the node's addresses. Which rules lead to a
DNAT is not followed: a port named in a nat rule (a jump to a Service's chain, or the DNAT itself)
is left out, which can only leave out more (such a port is then tracked, as before the valve).
Foreign text is untrusted: quoted strings (comments) are dropped before matching, a token that does
not parse is ignored, and a table that cannot be read adds nothing (``syn.synproxy.exclude_ports``
and ``forwarded_ports`` still apply). Not read: kube-proxy's nftables mode and nft-native CNIs
(name their ports in ``exclude_ports``), IPVS (it takes Services' packets on input before any
listener; not measured).
"""

from __future__ import annotations

import ipaddress
import re

from .backend.kinds import IPT_FLAVOURS
from .errors import BackendError, EnvironmentProblem

_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
_PORTS = re.compile(r"^(\d{1,5})(?::(\d{1,5}))?$")


def dnat_ports(local_addrs: set[str]) -> set[int]:
    """The TCP destination ports of the nat tables' rules that can match one of ``local_addrs``."""
    from .backend.ipt import Ipt  # the iptables tools' module, only when a look runs (test_backend)

    out: set[int] = set()
    for flavour in IPT_FLAVOURS:
        for version in (4, 6):
            try:
                text = Ipt(flavour).save(version, "nat")
            except (BackendError, EnvironmentProblem):
                continue
            out |= nat_rule_ports(text, local_addrs)
    return out


def nat_rule_ports(saved: str, local_addrs: set[str]) -> set[int]:
    """The ports of ``*-save`` text's nat TCP rules with no destination or one holding a local address."""
    local = [ipaddress.ip_address(a.split("%")[0]) for a in local_addrs]
    out: set[int] = set()
    table = None
    for line in saved.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        if table != "nat" or not line.startswith("-A "):
            continue
        tokens = _QUOTED.sub("", line).split()
        if not _is_tcp(tokens) or not _reaches(_value(tokens, "-d"), local):
            continue
        for flag in ("--dport", "--dports"):
            out |= _ports(_value(tokens, flag))
    return out


def _value(tokens: list[str], flag: str) -> str | None:
    """The value after ``flag`` unless it is negated (``! flag``: a negation matches other ports)."""
    for i, t in enumerate(tokens[:-1]):
        if t == flag and (i == 0 or tokens[i - 1] != "!"):
            return tokens[i + 1]
    return None


def _is_tcp(tokens: list[str]) -> bool:
    return _value(tokens, "-p") in ("tcp", "6")


def _reaches(dest: str | None, local: list) -> bool:
    """Can a rule for destination ``dest`` (None: any) match a packet to one of the node's addresses?"""
    if dest is None:
        return True
    try:
        net = ipaddress.ip_network(dest, strict=False)
    except ValueError:
        return True  # unparsable: assume it can
    return any(a in net for a in local if a.version == net.version)


def _ports(value: str | None) -> set[int]:
    out: set[int] = set()
    for part in (value or "").split(","):
        m = _PORTS.match(part)
        if m:
            low = int(m[1])
            high = int(m[2]) if m[2] else low
            out.update(range(low, min(high, 65535) + 1))
    return out
