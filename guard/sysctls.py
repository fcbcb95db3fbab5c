"""The kernel settings the SYN defence relies on: checked for ``status``, written only when the
policy says ``syn.synproxy.set_sysctls: true`` (they belong to the node's owner, not to us).

All three are per network namespace (the node's).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import EnvironmentProblem
from .model.plans import SynproxyPlan

PROC = Path("/proc/sys")


@dataclass(frozen=True)
class Sysctl:
    name: str  # dotted, as sysctl(8) prints it
    ok: tuple[str, ...]  # acceptable values
    set_to: str  # what set_sysctls writes
    why: str
    required: bool = False  # off, it refuses the policy unless set_sysctls is to set it (refuse_unsafe)

    @property
    def path(self) -> Path:
        return PROC / self.name.replace(".", "/")

    def read(self) -> str | None:
        try:
            return self.path.read_text().strip()
        except OSError:
            return None


def wanted(synproxy: SynproxyPlan | None) -> list[Sysctl]:
    if synproxy is None:
        return []
    out = [Sysctl("net.ipv4.tcp_syncookies", ("1", "2"), "1",
                  "engaged host ports are answered by the listener's own syncookies"),
           Sysctl("net.ipv4.tcp_timestamps", ("1", "2"), "1",
                  "window scaling and SACK ride in a cookie's timestamp; without it a cookie carries no "
                  "window scale (measured through SYNPROXY: 0.11 x the throughput over 50 ms)")]
    if synproxy.forwarded:
        out.append(Sysctl("net.netfilter.nf_conntrack_tcp_loose", ("0",), "0",
                          "the third ACK of a NodePort connection must reach SYNPROXY before kube-proxy's DNAT",
                          required=True))
    return out


def check(synproxy: SynproxyPlan | None) -> list[dict]:
    return [{"name": s.name, "value": s.read(), "ok": s.read() in s.ok, "want": "/".join(s.ok), "why": s.why}
            for s in wanted(synproxy)]


def enforce(synproxy: SynproxyPlan | None) -> list[str]:
    """Write every wanted sysctl that is off; returns what was changed ("name: old -> new")."""
    changed = []
    for s in wanted(synproxy):
        old = s.read()
        if old is not None and old not in s.ok:
            s.path.write_text(s.set_to)
            changed.append(f"{s.name}: {old} -> {s.set_to}")
    return changed


def refuse_unsafe(synproxy: SynproxyPlan | None, will_set: bool) -> None:
    """``forwarded`` with conntrack's loose pickup on refuses every connection to an engaged port
    (the third ACK is DNAT'd, or picked up, before SYNPROXY sees it): refuse the policy instead, before
    anything changes, unless nodeguard is to set the sysctl itself."""
    if synproxy is None or not synproxy.forwarded or will_set:
        return
    for s in wanted(synproxy):
        if s.required and s.read() not in s.ok:
            raise EnvironmentProblem(
                f"syn.synproxy.forwarded needs {s.name}={'/'.join(s.ok)} (it is {s.read()}): set it on the node, "
                "or set syn.synproxy.set_sysctls: true; nothing was changed")
