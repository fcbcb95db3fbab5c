"""The sources the rules treat apart: the allowlist (never limited), the failsafe pairs (never limited,
banned or counted, first in every chain) and the deny lists (dropped by the ban check, which only the
failsafe pairs precede). Sections of the policy (schema.py)."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

import pydantic
from pydantic import Field, field_validator, model_validator

from .. import prefixes as pfx
from .fields import MULTIPORT_SLOTS, Cidr, DenyCidr, PortRanges, Section, SetSize, absolute_path


def outermost(nets, version: int) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The CIDRs of one IP version, sorted, with every CIDR inside another dropped (prefixes.outermost
    on their integers; ipaddress.collapse_addresses took ~0.3 s for 10,000 CIDRs)."""
    by_prefix = {(int(n.network_address), n.prefixlen): n for n in nets if n.version == version}
    return [by_prefix[p] for p in pfx.outermost(by_prefix, version)]


class Allow(Section):
    cidrs: tuple[Cidr, ...] = ()  # parsed once into ip_network objects

    @field_validator("cidrs")
    @classmethod
    def _not_half(cls, cidrs: tuple) -> tuple:
        for version in (4, 6):
            bits = pfx.BITS[version]
            if 2 * sum(1 << (bits - n.prefixlen) for n in cidrs if n.version == version) < 1 << bits:
                continue  # under half even counting overlaps twice: no merge needed (10,000 CIDRs: ~15 ms)
            merged = [(int(n.network_address), n.prefixlen) for n in outermost(cidrs, version)]
            if pfx.too_broad(merged, version):
                raise ValueError(f"these prefixes together cover half of IPv{version} or more: nodeguard would "
                                 "protect nothing")
        return cidrs

    def networks(self, version: int) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return outermost(self.cidrs, version)


class Deny(Section):
    """Sources dropped by the ban check (after the failsafe pairs, before conntrack) unless
    allowlisted: ``cidrs`` inline and ``files`` of CIDRs (absolute paths, one CIDR a line, ``#``
    comments; root's alone, as the policy file), read on every apply and reload; the daemon polls them
    as it polls the policy file, and a changed one reloads. ``manual_size``: how many ``nodeguard ban``
    entries a family holds (a full set refuses the next ban)."""

    cidrs: tuple[DenyCidr, ...] = ()
    files: tuple[Annotated[str, Field(strict=True), pydantic.AfterValidator(absolute_path)], ...] = ()
    manual_size: SetSize = 65536
    _merged: dict = pydantic.PrivateAttr(default_factory=dict)
    _per_file: dict = pydantic.PrivateAttr(default_factory=dict)

    def model_post_init(self, _context) -> None:
        from ..deny import read_deny_file

        keys: dict[int, list[int]] = {4: [], 6: []}  # a million lines: kept as keys, not tuples (prefixes.key)
        for n in self.cidrs:
            keys[n.version].append(pfx.key(int(n.network_address), n.prefixlen))
        for path in self.files:
            before = len(keys[4]) + len(keys[6])
            for version, first, length in read_deny_file(path):
                keys[version].append(pfx.key(first, length))
            self._per_file[path] = len(keys[4]) + len(keys[6]) - before
        self._merged = {v: tuple(pfx.outermost_keys(keys.pop(v), v)) for v in (4, 6)}

    @model_validator(mode="after")
    def _not_half(self) -> "Deny":
        for version in (4, 6):
            if pfx.too_broad(self._merged[version], version):
                raise ValueError(f"cidrs and files together cover half of IPv{version} or more: nodeguard would "
                                 "drop nearly every source")
        return self

    def prefixes(self, version: int) -> tuple[pfx.Prefix, ...]:
        """The deny list of one IP version, merged: (first address, length) integers (prefixes.py)."""
        return self._merged[version]

    def listed(self) -> dict[str, int]:
        """Deny file -> how many prefixes it listed when read (before merging)."""
        return dict(self._per_file)


class Failsafe(Allow):
    """Sources and ports that are never limited, banned or counted: SSH from the management network,
    the apiserver and kubelet from the control plane. Their rules come first in every chain (the ban
    check included), so a banned source still reaches them. Ports: as many as iptables multiport
    takes (a range counts twice), for portability. Prefixes, here and in ``allow``: no broader than
    /8 (IPv4) or /32 (IPv6; unique local fc00::/7 aside), and not half a family together."""

    cidrs: Annotated[tuple[Cidr, ...], Field(min_length=1)]
    protocol: Literal["tcp", "udp"] = "tcp"
    ports: PortRanges

    @field_validator("ports")
    @classmethod
    def _fits_multiport(cls, ports: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
        if not ports:
            raise ValueError("list at least one port")
        slots = sum(1 if low == high else 2 for low, high in ports)
        if slots > MULTIPORT_SLOTS:
            raise ValueError(f"{slots} port slots (a range takes two); at most {MULTIPORT_SLOTS}: split the entry")
        return ports

    def covers(self, protocol: str, port: int) -> bool:
        return self.protocol == protocol and any(low <= port <= high for low, high in self.ports)
