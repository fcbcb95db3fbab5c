"""The policy's schema: every section, every key, its default and its range. Every default lives
here; rules/default.yaml spells them out.

Validation is pydantic's (types, unknown keys, ranges); fields.py adds the parsers for our own syntax.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .. import prefixes as pfx
from ..attacklog import MAX_KEEP
from ..liveness import STATE_FILE
from .fields import (MULTIPORT_SLOTS, Burst, Cidr, DataPath, DenyCidr, IfName, Mode, Port, PortList, PortRanges,
                     PositiveInt, RateField, absolute_path, check_interfaces, check_name, one_burst)
from .rates import Rate, parse_rate

# A window holds ~1.9 KB a flow at its end, flows and their records together (tests/test_sampler_units.py
# measures it): 30,000 flows peak near 55 MiB, well inside the unit's MemoryMax=256M beside the rest.
MAX_FLOWS = 30_000


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


def outermost(nets, version: int) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The CIDRs of one IP version, sorted, with every CIDR inside another dropped (prefixes.outermost
    on their integers; ipaddress.collapse_addresses took ~0.3 s for 10,000 CIDRs)."""
    by_prefix = {(int(n.network_address), n.prefixlen): n for n in nets if n.version == version}
    return [by_prefix[p] for p in pfx.outermost(by_prefix, version)]


class Allow(_Section):
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


class Deny(_Section):
    """Sources dropped at ingress, before anything else runs, unless allowlisted: ``cidrs`` inline and
    ``files`` of CIDRs (absolute paths, one CIDR a line, ``#`` comments; root's alone, as the policy
    file), read on every apply and reload; the daemon polls them as it polls the policy file, and a
    changed one reloads. ``manual_size``: how many ``nodeguard ban`` entries a
    family holds (a full set refuses the next ban)."""

    cidrs: tuple[DenyCidr, ...] = ()
    files: tuple[Annotated[str, Field(strict=True), pydantic.AfterValidator(absolute_path)], ...] = ()
    manual_size: Annotated[int, Field(ge=16, le=4_194_304, strict=True)] = 65536
    _merged: dict = pydantic.PrivateAttr(default_factory=dict)
    _per_file: dict = pydantic.PrivateAttr(default_factory=dict)

    def model_post_init(self, _context) -> None:
        from ..deny import read_deny_file

        listed: dict[int, list[pfx.Prefix]] = {4: [], 6: []}
        for n in self.cidrs:
            listed[n.version].append((int(n.network_address), n.prefixlen))
        for path in self.files:
            found = read_deny_file(path)
            self._per_file[path] = len(found[4]) + len(found[6])
            for version in (4, 6):
                listed[version] += found[version]
        self._merged = {v: tuple(pfx.outermost(listed[v], v)) for v in (4, 6)}

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


class Synproxy(_Section):
    """The stateless SYN defence of the node's own ports, engaged per port only under a SYN flood: SYNs
    to an engaged port skip conntrack (no state for a spoofed SYN) and are answered by the listener's
    own syncookies; with ``forwarded``, by SYNPROXY, which also serves NodePorts. See docs/design/syn-defence.md.

    ports: auto = every TCP port with a listener reachable from a protected interface (refreshed by
    the watcher), minus ``exclude_ports``; or a list; [] turns it off. ``forwarded``: also NodePorts
    (``forwarded_ports``), DNAT'd to pods: needs ``net.netfilter.nf_conntrack_tcp_loose=0`` node-wide,
    which nodeguard sets only with ``set_sysctls`` (else ``status`` reports it).

    ``engage_over``: a port is engaged while the SYNs to these ports that passed the per-source limits
    exceed this rate (all ports together), and for ``hold_s`` after the last SYN over it. In peacetime
    every connection takes the normal path (always-on SYNPROXY failed or delayed 1-2 % of connections).
    """

    ports: Literal["auto"] | tuple[Port, ...] = "auto"
    engage_over: RateField = parse_rate("1000/second burst 500")
    hold_s: Annotated[int, Field(ge=1, le=86400, strict=True)] = 60
    exclude_ports: PortRanges = ((30000, 32767),)  # the NodePort range: DNAT'd, not served by the node
    forwarded: bool = False
    forwarded_ports: PortRanges = ((30000, 32767),)
    set_sysctls: bool = False


class Icmp(_Section):
    """Echo-request only; all other ICMP types are never limited."""

    mode: Mode | None = None  # None: the policy's ``mode``
    rate: RateField = parse_rate("100/second burst 200")
    burst: Burst | None = None
    per_source: RateField = parse_rate("10/second")
    per_source_burst: Burst | None = None

    _burst = field_validator("burst")(classmethod(one_burst("rate")))
    _per_source_burst = field_validator("per_source_burst")(classmethod(one_burst("per_source")))

    def global_rate(self) -> Rate:
        return self.rate.with_burst(self.burst)

    def source_rate(self) -> Rate:
        return self.per_source.with_burst(self.per_source_burst)


class Syn(_Section):
    """New TCP connections. ``rate`` is a high safety valve; ``per_source`` is the main defence.

    ``valve``: when the global ``rate`` (the valve) drops SYNs. ``auto``: only while conntrack fails
    new connections (its ``drop`` and ``insert_failed`` statistics rose by ``valve_engage_failures`` in
    half a second: the SNAT port wall of a masqueraded NodePort, or a full table early-drop cannot
    clear), and for ``valve_hold_s`` after the last sign of the flood; the daemon engages it, so
    without the daemon it never does. Elsewhere the valve is a lottery a brand-new client loses more
    often than without protection (docs/design/syn-valve.md). ``always``: at all times; ``off``: never.

    ``trusted_after_handshake_s``: a source that completed a TCP handshake (conntrack
    "assured", which a blind spoofer cannot reach) is exempt from the global ``rate``
    for this long, so returning clients keep connecting during a spoofed flood. 0 = off.
    """

    mode: Mode | None = None
    rate: RateField = parse_rate("5000/second")
    burst: Burst | None = None
    per_source: RateField = parse_rate("200/second")
    per_source_burst: Burst | None = None
    trusted_after_handshake_s: Annotated[int, Field(ge=0, le=86400, strict=True)] = 3600
    valve: Literal["auto", "always", "off"] = "auto"
    valve_hold_s: Annotated[int, Field(ge=1, le=3600, strict=True)] = 30
    valve_engage_failures: Annotated[int, Field(ge=1, le=1_000_000, strict=True)] = 10
    synproxy: Synproxy = Synproxy()

    _burst = field_validator("burst")(classmethod(one_burst("rate")))
    _per_source_burst = field_validator("per_source_burst")(classmethod(one_burst("per_source")))
    global_rate = Icmp.global_rate
    source_rate = Icmp.source_rate


class ClosedPorts(_Section):
    """New UDP flows to the node's own addresses that no socket would receive (nothing listens, is
    bound or connected there). Up to ``rate`` of them pass (all sources together), so the kernel still
    answers port unreachable (traceroute); the rest are dropped on input, before conntrack confirms an
    entry for them, so a spoofed flood at closed ports no longer fills conntrack. A socket lookup per
    packet, not a list: a listener opened a moment ago counts at once. Service traffic DNAT'd to pods is
    forwarded and never comes here. See docs/design/closed-ports.md."""

    enabled: bool = True
    mode: Mode | None = None
    rate: RateField = parse_rate("1000/second burst 2000")
    burst: Burst | None = None

    _burst = field_validator("burst")(classmethod(one_burst("rate")))
    global_rate = Icmp.global_rate


class Limit(_Section):
    """A hashlimit-style per-source packet limit, with a global backstop for when its meter is full."""

    name: str
    mode: Mode | None = None
    protocol: Literal["tcp", "udp", "icmp", "all"]
    ports: PortList = ()
    except_ports: PortList = ()
    per_source: RateField
    burst: Burst | None = None
    rate: RateField | None = None

    _name = field_validator("name")(classmethod(lambda cls, v: check_name(v)))
    _burst = field_validator("burst")(classmethod(one_burst("per_source")))

    @model_validator(mode="after")
    def _ports_need_l4(self) -> "Limit":
        if (self.ports or self.except_ports) and self.protocol not in ("tcp", "udp"):
            raise ValueError(f"ports and except_ports need protocol tcp or udp, not {self.protocol}")
        if self.ports and self.except_ports:
            raise ValueError("give ports or except_ports, not both")
        return self

    def source_rate(self) -> Rate:
        return self.per_source.with_burst(self.burst)

    def global_rate(self) -> Rate:
        """The backstop: ``rate`` if given, else 100 sources' worth of ``per_source``."""
        return self.rate if self.rate is not None else self.per_source.scaled(100)


class ConnLimit(_Section):
    """Concurrent TCP connections per source (IPv6: per /64) to ``ports`` (empty = all)."""

    name: str | None = None
    mode: Mode | None = None
    ports: PortList = ()
    per_source: PositiveInt

    _name = field_validator("name")(classmethod(lambda cls, v: v if v is None else check_name(v)))


class Meter(_Section):
    """Size and idle timeout of every per-source meter (nft dynamic set / hashlimit table)."""

    size: Annotated[int, Field(ge=16, le=4_194_304, strict=True)] = 65536
    timeout_s: Annotated[int, Field(ge=1, le=86400, strict=True)] = 60


class Watcher(_Section):
    """``nodeguard watch``: how fast it verifies, and how it damps insert wars. ``nodeguard run``
    snapshots bans and trusted sources to ``snapshot_file`` (persist.path_for) every
    ``snapshot_interval_s`` and on stop, and adds them back after an install or a repair that
    recreated their sets (persist.py)."""

    verify_interval_s: Annotated[float, Field(gt=0, le=3600)] = 10.0
    legacy_poll_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    max_repairs_per_minute: Annotated[int, Field(ge=1, le=1000, strict=True)] = 10
    backoff_max_s: Annotated[float, Field(ge=1, le=3600)] = 30.0
    state_file: DataPath = STATE_FILE
    snapshot_file: DataPath | None = None  # None: sets.json beside the last good policy (/var/lib/nodeguard)
    snapshot_interval_s: Annotated[float, Field(ge=1, le=3600)] = 5.0


class Rotate(_Section):
    max_bytes: Annotated[int, Field(ge=4096, strict=True)] = 20 * 1024 * 1024
    keep: Annotated[int, Field(ge=1, le=MAX_KEEP, strict=True)] = 5  # rotated files kept: disk <= max_bytes x (keep+1)


class Sampler(_Section):
    """A capped sample of condemned packets goes to userspace for the attack log; the rest is dropped.

    transport: nfqueue (the packet is queued and dropped there) or nflog (logged, then dropped);
    auto = nfqueue where the kernel supports it (nft: probed once; iptables: xt NFQUEUE).
    """

    enabled: bool = True
    transport: Literal["auto", "nfqueue", "nflog"] = "auto"
    rate: RateField = parse_rate("200/second")  # per rule group
    global_rate: RateField = parse_rate("1000/second")  # all groups together
    nflog_group: Annotated[int, Field(ge=1, le=65535, strict=True)] = 4714
    queue_base: Annotated[int, Field(ge=0, le=65000, strict=True)] = 4714  # group i uses queue_base + i
    snaplen: Annotated[int, Field(ge=40, le=1500, strict=True)] = 128
    window_s: Annotated[int, Field(ge=1, le=3600, strict=True)] = 10
    max_flows: Annotated[int, Field(ge=10, le=MAX_FLOWS, strict=True)] = 10_000  # per window; the rest: "other"
    # sources per rule group (and family) whose condemned packets the kernel counts exactly; 0 = none
    count_sources: Annotated[int, Field(ge=0, le=65536, strict=True)] = 1024
    # per-source rates of *all* traffic of a threat, for `nodeguard tune` (one counting set update per
    # packet of that threat): in monitor mode only, always, or never
    observe: Literal["monitor", "always", "never"] = "monitor"
    log: DataPath = "/var/log/nodeguard/attacks.jsonl"
    rotate: Rotate = Rotate()
    pcap: DataPath | None = None


class Metrics(_Section):
    """The daemon's Prometheus endpoint (``/metrics``, ``/healthz``). ``allow_remote`` comes first:
    ``listen`` is checked against it (a non-loopback address needs it)."""

    allow_remote: bool = False
    listen: str = "127.0.0.1:9632"

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str, info: pydantic.ValidationInfo) -> str:
        from ..endpoint import parse_listen

        parse_listen(value, bool(info.data.get("allow_remote", False)))
        return value


class Crowdsec(_Section):
    """The node as a CrowdSec bouncer (and, with ``push``, a machine) of the Local API at ``url``:
    ban decisions of ``scopes`` (and of ``origins``; empty: every origin) are pulled every
    ``pull_interval_s`` and dropped at ingress unless allowlisted or failsafe, each until its
    decision ends. The secrets are read from files that are root's alone (``api_key_file``; with
    ``push``, ``password_file`` for ``machine_id``), never from the policy. ``size``: the decisions a
    family holds (a full set takes no more). ``min_prefix_v4``/``_v6``: a Range decision wider than
    this (a /1 drops half the Internet) is skipped and counted, whoever made it; an IPv4-mapped IPv6
    range (``::ffff:0:0/96``) is held to the IPv4 minimum. nft backend only."""

    enabled: bool = False
    url: Annotated[str, Field(pattern=r"^https?://[^\s/?#]+/?$")] = "http://127.0.0.1:8080/"
    api_key_file: Annotated[str, Field(strict=True), pydantic.AfterValidator(absolute_path)] = \
        "/etc/nodeguard/crowdsec-api-key"
    machine_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")] = "nodeguard"
    password_file: Annotated[str, Field(strict=True), pydantic.AfterValidator(absolute_path)] = \
        "/etc/nodeguard/crowdsec-password"
    pull_interval_s: Annotated[int, Field(ge=1, le=3600, strict=True)] = 10
    push: bool = False
    scopes: tuple[Literal["Ip", "Range"], ...] = ("Ip", "Range")
    origins: tuple[Annotated[str, Field(pattern=r"^[A-Za-z0-9._:-]{1,64}$")], ...] = ()
    size: Annotated[int, Field(ge=16, le=4_194_304, strict=True)] = 262_144
    min_prefix_v4: Annotated[int, Field(ge=1, le=32, strict=True)] = 8
    min_prefix_v6: Annotated[int, Field(ge=1, le=128, strict=True)] = 32

    @property
    def min_prefix(self) -> dict[int, int]:
        """IP version -> the shortest prefix length of a Range decision held."""
        return {4: self.min_prefix_v4, 6: self.min_prefix_v6}


class Escalate(_Section):
    """In-kernel escalation: a source that stays over a per-source limit (enforce mode) for ``after_s``
    seconds, with no pause in its per-source drops longer than ``gap_s``, is banned for ``ban_s``: its
    packets are dropped at the very start of the receive path (nft ingress hook; iptables raw PREROUTING
    rule 1). Never for allowlisted sources or sources that completed a TCP handshake (trusted); never
    from the global backstops, which spoofed floods reach. IPv6: the /64 is banned. A full ban set
    (``size``) bans nobody more (fails open)."""

    enabled: bool = True
    after_s: Annotated[int, Field(ge=1, le=3600, strict=True)] = 3
    gap_s: Annotated[int, Field(ge=1, le=3600, strict=True)] = 1
    ban_s: Annotated[int, Field(ge=1, le=604800, strict=True)] = 300
    size: Annotated[int, Field(ge=16, le=4_194_304, strict=True)] = 65536

    @field_validator("gap_s")
    @classmethod
    def _gap_shorter(cls, gap_s: int, info: pydantic.ValidationInfo) -> int:
        after_s = info.data.get("after_s")
        if isinstance(after_s, int) and gap_s >= after_s:
            raise ValueError(f"must be shorter than after_s ({after_s}): a pause of gap_s ends an episode, "
                             "so two drops after_s apart would otherwise ban")
        return gap_s

    @field_validator("after_s")
    @classmethod
    def _after_longer_than_default_gap(cls, after_s: int) -> int:
        """gap_s is validated only when given: with its default (1), after_s must be at least 2."""
        if after_s <= cls.model_fields["gap_s"].default:
            raise ValueError(f"must be longer than gap_s (default {cls.model_fields['gap_s'].default})")
        return after_s


class Iptables(_Section):
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


class Policy(_Section):
    mode: Mode = "enforce"
    backend: Literal["nft", "iptables"] = "nft"
    interfaces: Annotated[Literal["auto"] | tuple[IfName, ...], pydantic.BeforeValidator(check_interfaces)] = "auto"
    allow: Allow = Allow()
    failsafe: tuple[Failsafe, ...] = ()
    deny: Deny = Deny()
    icmp: Icmp = Icmp()
    syn: Syn = Syn()
    limits: tuple[Limit, ...] = _DEFAULT_LIMITS
    closed_ports: ClosedPorts = ClosedPorts()
    connlimit: tuple[ConnLimit, ...] = Field(default=_DEFAULT_CONNLIMIT, validate_default=True)
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

    def mode_of(self, section: "Icmp | Syn | Limit | ConnLimit | ClosedPorts | None") -> str:
        """A threat's own ``mode``, else the policy's."""
        own = getattr(section, "mode", None)
        return own if own is not None else self.mode

    def connlimit_name(self, index: int) -> str:
        cl = self.connlimit[index]
        return cl.name if cl.name is not None else f"conn-{index}"

