"""The policy: its sections in the order a file lists them, and the checks across sections. Every
default lives in a section's model (here, sources.py, threats.py, runtime.py); rules/default.yaml
spells them out.

Validation is pydantic's (types, unknown keys, ranges); fields.py adds the parsers for our own syntax.
"""

from __future__ import annotations

from typing import Annotated, Literal

import pydantic
from pydantic import Field, field_validator

from .fields import MAX_ENTRIES, IfName, Mode, Section, check_interfaces
from .rates import parse_rate
from .runtime import Crowdsec, Metrics, Sampler, Watcher
from .sources import Allow, Deny, Failsafe
from .threats import ClosedPorts, ConnLimit, Escalate, Icmp, Limit, Meter, Syn, TcpPickup


class Iptables(Section):
    """``backend: iptables``: which flavour; auto = the one the node's Kubernetes components use."""

    flavour: Literal["auto", "nft", "legacy"] = "auto"


_DEFAULT_LIMITS = (
    Limit(
        name="udp-per-source",
        protocol="udp",
        except_ports=(4789, 6081, 8472, 51820, 51821),
        per_source=parse_rate("2000/second"),
        burst=4000,
    ),
)
_DEFAULT_CONNLIMIT = (ConnLimit(ports=(80, 443), per_source=256),)


class Policy(Section):
    mode: Mode = "enforce"
    backend: Literal["nft", "iptables"] = "nft"
    interfaces: Annotated[Literal["auto"] | tuple[IfName, ...], pydantic.BeforeValidator(check_interfaces)] = "auto"
    allow: Allow = Allow()
    failsafe: Annotated[tuple[Failsafe, ...], Field(max_length=MAX_ENTRIES["failsafe"])] = ()
    deny: Deny = Deny()
    icmp: Icmp = Icmp()
    syn: Syn = Syn()
    limits: Annotated[tuple[Limit, ...], Field(max_length=MAX_ENTRIES["limits"])] = _DEFAULT_LIMITS
    closed_ports: ClosedPorts = ClosedPorts()
    tcp_pickup: TcpPickup = TcpPickup()
    connlimit: Annotated[tuple[ConnLimit, ...], Field(max_length=MAX_ENTRIES["connlimit"])] = Field(
        default=_DEFAULT_CONNLIMIT, validate_default=True)
    meter: Meter = Meter()
    escalate: Escalate = Escalate()
    crowdsec: Crowdsec = Crowdsec()
    iptables: Iptables = Iptables()
    watcher: Watcher = Watcher()
    sampler: Sampler = Sampler()
    metrics: Metrics = Metrics()

    @field_validator("connlimit")
    @classmethod
    def _unique_names(cls, connlimit: tuple, info: pydantic.ValidationInfo) -> tuple:
        """One name, one thing: names are unique across ``limits`` and ``connlimit``."""
        seen: set[str] = set()
        for what, items in (("limits", info.data.get("limits", ())), ("connlimit", connlimit)):
            for i, item in enumerate(items):
                name = item.name if item.name is not None else f"conn-{i}"
                if name in seen:
                    raise ValueError(f"{what}[{i}].name {name!r} is used twice (names are unique across limits "
                                     "and connlimit)")
                seen.add(name)
        return connlimit

    @field_validator("crowdsec")
    @classmethod
    def _crowdsec_nft(cls, crowdsec: Crowdsec, info: pydantic.ValidationInfo) -> Crowdsec:
        if crowdsec.enabled and info.data.get("backend") == "iptables":
            raise ValueError("needs backend: nft (the decision sets hold a timeout per element)")
        return crowdsec

    def mode_of(self, section: "Icmp | Syn | Limit | ConnLimit | ClosedPorts | TcpPickup | None") -> str:
        """A threat's own ``mode``, else the policy's."""
        own = getattr(section, "mode", None)
        return own if own is not None else self.mode

    def connlimit_name(self, index: int) -> str:
        cl = self.connlimit[index]
        return cl.name if cl.name is not None else f"conn-{index}"

