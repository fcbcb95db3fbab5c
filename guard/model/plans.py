"""What a build takes besides the policy, decided for this host when a plan is made: where the base
chains sit on their hooks (Priorities, from probe.py), how condemned packets are sampled (Sampling) and
which ports SYNPROXY guards (SynproxyPlan). The build only reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..placement import PLACEMENTS, Stage
from ..policy.rates import Rate


@dataclass(frozen=True)
class Sampling:
    """How condemned packets are sampled (policy ``sampler`` plus the transport the kernel allows)."""

    transport: Literal["nflog", "nfqueue"]
    rate: Rate
    global_rate: Rate
    nflog_group: int
    queue_base: int
    snaplen: int
    exponents: tuple[tuple[str, int], ...]  # (group, k): sample 1 in 2**k (sampling_odds.py)
    count_sources: int  # per group and family: sources counted exactly by the kernel
    count_timeout_s: int  # > 2 windows: the sampler reads each count before it can expire
    observe: Literal["monitor", "always", "never"]  # count every packet per source, for tune
    uncounted: tuple[str, ...] = ()  # groups whose sources the backend does not count (the samples estimate them)

    def one_in(self, group: str) -> int:
        return 2 ** dict(self.exponents).get(group, 0)


@dataclass(frozen=True)
class SynproxyPlan:
    """The host's side of ``syn.synproxy``: which ports per family, and what to announce (the
    policy's settings are passed in: their defaults live in the policy schema alone)."""

    ports_v4: tuple[int, ...]
    ports_v6: tuple[int, ...]
    mss_v4: int
    mss_v6: int
    wscale: int  # the server's own (listeners.server_wscale)
    forwarded: bool  # NodePorts too: the node runs with nf_conntrack_tcp_loose=0
    engage_over: Rate  # SYNs to proxied ports per second that engage it
    hold_s: int  # engaged this long after the last SYN over that rate

    @property
    def states(self) -> tuple:
        """With loose=1 conntrack picks the third ACK up as "new" (host ports); with loose=0 it stays
        invalid, which also keeps kube-proxy's DNAT from seeing it before SYNPROXY does."""
        return ("invalid", "untracked") if self.forwarded else ("invalid", "untracked", "new")


@dataclass(frozen=True)
class Priorities:
    """Where the base chains sit on their hook (see probe.choose_priorities)."""

    stateless: int = PLACEMENTS["stateless"].default_priority
    stateful: int = PLACEMENTS["stateful"].default_priority
    notes: tuple[str, ...] = field(default=())
    input: int = PLACEMENTS["input"].default_priority
    closed: int = PLACEMENTS["closed"].default_priority

    def of(self, stage: Stage) -> int:
        return {"stateless": self.stateless, "stateful": self.stateful, "input": self.input,
                "closed": self.closed}[stage]
