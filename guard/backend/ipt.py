"""The iptables backend: iptables-restore --noflush of nodeguard's own chains and jumps, per flavour.

Each restore is atomic per call (legacy: per table; nft: one transaction). We never save,
edit and restore whole tables: we read ``*-save`` only to find our own chains and jumps.
Beside it: ``ipset.py`` (our sets), ``tools.py`` (running the tools, their pids) and
``legacy_fingerprint.py`` (the watcher's cheap poll of iptables-legacy).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import BackendError
from ..probe import legacy_tables as _legacy_tables
from ..render.ipt_names import PREFIX
from .ipset import Ipset, LiveIpset
from .tools import _finish, _run, _start

TABLES = ("raw", "mangle", "filter")  # where nodeguard's chains live, or lived in earlier versions
_COMMENT_ID = re.compile(r'--comment "?nodeguard:([0-9a-f]+)')
_COUNTERS = re.compile(r"^\[(\d+):(\d+)\] ")


@dataclass(frozen=True)
class SavedRule:
    chain: str
    position: int  # 1-based within its chain
    rule_id: str | None
    line: str  # as -save prints it, counters removed
    packets: int
    bytes: int


@dataclass(frozen=True)
class LiveTable:
    """What the kernel holds of ours in one table: chain names and our jump lines (save format)."""

    chains: list[str] = field(default_factory=list)
    jump_lines: list[str] = field(default_factory=list)  # "-A PREROUTING ... -j NODEGUARD-PRE"


class Ipt:
    """One flavour's tools (``iptables-nft-*`` or ``iptables-legacy-*``)."""

    def __init__(self, flavour: str):
        self.flavour = flavour

    def _tool(self, version: int, kind: str) -> str:
        return f"{'ip' if version == 4 else 'ip6'}tables-{self.flavour}-{kind}"

    def save(self, version: int, table: str | None = None, counters: bool = False) -> str:
        """``*-save`` of one table, or of every table the kernel has (one process either way)."""
        if self.flavour == "legacy":  # never make the kernel instantiate a legacy table just by looking
            present = _legacy_tables(version)
            if not present or (table and table not in present):
                return ""
        args = [self._tool(version, "save"), *(["-t", table] if table else []), *(["-c"] if counters else [])]
        res = _run(args)
        if res.returncode != 0:
            if "does not exist" in res.stderr:
                return ""
            raise BackendError(" ".join(args), res.stderr)
        return res.stdout

    def restore_families(self, texts: dict[int, str], *, test: bool = False) -> None:
        """One ``*-restore --noflush`` per family, run side by side (IPv4 and IPv6 tables are separate)."""
        procs = []
        for version, text in texts.items():
            if not text:
                continue
            tool = self._tool(version, "restore")
            procs.append((tool, _start([tool, "--noflush", *(["--test"] if test else [])]), text))
        errors = []
        for tool, proc, text in procs:
            res = _finish(proc, text)
            if res.returncode != 0:
                errors.append(f"{tool} --noflush{' --test' if test else ''}: {(res.stderr or res.stdout).strip()}")
        if errors:
            raise BackendError("restore", "; ".join(errors))

    def tables(self, version: int) -> dict[str, tuple[list[str], list[SavedRule]]]:
        """Every table: (chain names, every rule in save order with its position and nodeguard id)."""
        out: dict[str, tuple[list[str], list[SavedRule]]] = {}
        chains: list[str] = []
        rules: list[SavedRule] = []
        pos: dict[str, int] = {}
        for line in self.save(version, counters=True).splitlines():
            if line.startswith("*"):
                chains, rules, pos = [], [], {}
                out[line[1:]] = (chains, rules)
            elif line.startswith(":"):
                chains.append(line[1:].split()[0])
            else:
                m = _COUNTERS.match(line)
                body = line[m.end():] if m else line
                if not body.startswith("-A "):
                    continue
                chain = body.split()[1]
                pos[chain] = pos.get(chain, 0) + 1
                idm = _COMMENT_ID.search(body)
                rules.append(SavedRule(chain, pos[chain], idm[1] if idm else None, body,
                                       int(m[1]) if m else 0, int(m[2]) if m else 0))
        return out

    def live(self, version: int, tables: dict | None = None) -> dict[str, LiveTable]:
        out = {}
        for table, (chains, rules) in (tables if tables is not None else self.tables(version)).items():
            if table not in TABLES:
                continue
            ours = [c for c in chains if c.startswith(PREFIX + "-")]
            jumps = [r.line for r in rules if not r.chain.startswith(PREFIX + "-") and r.rule_id
                     and f"-j {PREFIX}-" in r.line]
            if ours or jumps:
                out[table] = LiveTable(ours, jumps)
        return out


def detect_flavour() -> tuple[str, str]:
    """Which iptables the node's Kubernetes components use, decided as kubelet's iptables wrapper does.

    The flavour holding KUBE-IPTABLES-HINT or KUBE-KUBELET-CANARY wins; else the one with more
    rules; a tie (an empty node) goes to nft. Returns (flavour, reason).
    """
    counts, hints = {}, {}
    for flavour in ("nft", "legacy"):
        ipt = Ipt(flavour)
        text = ipt.save(4) + ipt.save(6)
        hints[flavour] = "KUBE-IPTABLES-HINT" in text or "KUBE-KUBELET-CANARY" in text
        counts[flavour] = sum(1 for ln in text.splitlines() if ln.startswith("-A "))
    for flavour in ("nft", "legacy"):
        if hints[flavour]:
            return flavour, f"KUBE-IPTABLES-HINT/KUBE-KUBELET-CANARY found in iptables-{flavour}"
    if counts["legacy"] > counts["nft"]:
        return "legacy", f"iptables-legacy holds more rules ({counts['legacy']} vs {counts['nft']})"
    return "nft", f"iptables-nft holds {counts['nft']} rules, iptables-legacy {counts['legacy']} (nft on a tie)"

@dataclass(frozen=True)
class IptLive:
    """What the kernel holds of ours for one flavour: chains and jumps per family, and our ipsets."""

    tables: dict[int, dict[str, LiveTable]]
    saved: dict[int, dict]  # version -> Ipt.tables() output (rules with positions and ids), for drift
    ipsets: dict[str, LiveIpset]
    members: dict[str, list[str]]  # allowlists' members (configuration, unlike meters' contents)


def read_live(flavour: str, allow_sets: list[str], families: tuple[int, ...] = (4, 6),
              previous: IptLive | None = None) -> IptLive:
    """Read ``families`` (one ``*-save`` each) and our ipsets. With ``previous`` (the watcher's last
    read), the other families and the ipsets are taken from it: a change that raised an nft event
    for IPv4 tables says nothing about IPv6 tables, and nothing about ipsets, which raise no events
    (the watcher's periodic verification reads them)."""
    ipt = Ipt(flavour)
    saved = dict(previous.saved) if previous else {}
    tables = dict(previous.tables) if previous else {}
    for v in families:
        saved[v] = ipt.tables(v)
        tables[v] = ipt.live(v, saved[v])
    if previous is not None:
        return IptLive(tables, saved, previous.ipsets, previous.members)
    sets = Ipset.live()
    return IptLive(tables, saved, sets, {n: Ipset.members(n) for n in allow_sets if n in sets})
