"""What runs beside the rules: the watcher, the sampler and its attack log, the metrics endpoint and
the CrowdSec bouncer. Sections of the policy (schema.py)."""

from __future__ import annotations

from typing import Annotated, Literal

import pydantic
from pydantic import Field, field_validator

from ..attacklog import MAX_KEEP
from ..liveness import STATE_FILE
from .fields import DataPath, RateField, Section, SetSize, absolute_path, http_base_url
from .rates import Rate, parse_rate

# A window holds ~1.9 KB a flow at its end, flows and their records together (tests/test_sampler_units.py
# measures it): 30,000 flows peak near 55 MiB, well inside the unit's MemoryMax=256M beside the rest.
MAX_FLOWS = 30_000


class Watcher(Section):
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


class Rotate(Section):
    max_bytes: Annotated[int, Field(ge=4096, strict=True)] = 20 * 1024 * 1024
    keep: Annotated[int, Field(ge=1, le=MAX_KEEP, strict=True)] = 5  # rotated files kept: disk <= max_bytes x (keep+1)


class Sampler(Section):
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

    def group_cap(self) -> Rate:
        """``rate`` with its burst: the samples of one rule group."""
        return self.rate.with_default_burst()

    def total_cap(self) -> Rate:
        """``global_rate`` with its burst: the samples of all groups together."""
        return self.global_rate.with_default_burst()


class Metrics(Section):
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


class Crowdsec(Section):
    """The node as a CrowdSec bouncer (and, with ``push``, a machine) of the Local API at ``url``:
    ban decisions of ``scopes`` (and of ``origins``; empty: every origin) are pulled every
    ``pull_interval_s`` and dropped by the ban check unless allowlisted or failsafe, each until its
    decision ends. The secrets are read from files that are root's alone (``api_key_file``; with
    ``push``, ``password_file`` for ``machine_id``), never from the policy. ``size``: the decisions a
    family holds (a full set takes no more). ``min_prefix_v4``/``_v6``: a Range decision wider than
    this (a /1 drops half the Internet) is skipped and counted, whoever made it; an IPv4-mapped IPv6
    range (``::ffff:0:0/96``) is held to the IPv4 minimum. nft backend only."""

    enabled: bool = False
    url: Annotated[str, Field(strict=True), pydantic.AfterValidator(http_base_url)] = "http://127.0.0.1:8080/"
    api_key_file: Annotated[str, Field(strict=True), pydantic.AfterValidator(absolute_path)] = \
        "/etc/nodeguard/crowdsec-api-key"
    machine_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")] = "nodeguard"
    password_file: Annotated[str, Field(strict=True), pydantic.AfterValidator(absolute_path)] = \
        "/etc/nodeguard/crowdsec-password"
    pull_interval_s: Annotated[int, Field(ge=1, le=3600, strict=True)] = 10
    push: bool = False
    scopes: tuple[Literal["Ip", "Range"], ...] = ("Ip", "Range")
    origins: tuple[Annotated[str, Field(pattern=r"^[A-Za-z0-9._:-]{1,64}$")], ...] = ()
    size: SetSize = 262_144
    min_prefix_v4: Annotated[int, Field(ge=1, le=32, strict=True)] = 8
    min_prefix_v6: Annotated[int, Field(ge=1, le=128, strict=True)] = 32

    @property
    def min_prefix(self) -> dict[int, int]:
        """IP version -> the shortest prefix length of a Range decision held."""
        return {4: self.min_prefix_v4, 6: self.min_prefix_v6}
