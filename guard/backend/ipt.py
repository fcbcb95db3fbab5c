"""The iptables backend: iptables-restore --noflush of nodeguard's own chains and jumps, per flavour.

Each restore is atomic per call (legacy: per table; nft: one transaction). We never save,
edit and restore whole tables: we read ``*-save`` only to find our own chains and jumps.
"""

from __future__ import annotations

import re
import shutil
from collections import deque
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..errors import BackendError, EnvironmentProblem
from ..render.ipt import PREFIX, LiveTable

TABLES = ("raw", "filter")
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


OWN_PIDS: deque[int] = deque(maxlen=256)  # our tool processes: the watcher must not blame them


def _run(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    except FileNotFoundError:
        raise EnvironmentProblem(f"{args[0]} not found: install Debian's iptables (and ipset)") from None
    OWN_PIDS.append(proc.pid)
    try:
        out, err = proc.communicate(stdin, timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


class Ipt:
    """One flavour's tools (``iptables-nft-*`` or ``iptables-legacy-*``)."""

    def __init__(self, flavour: str):
        self.flavour = flavour

    def _tool(self, version: int, kind: str) -> str:
        return f"{'ip' if version == 4 else 'ip6'}tables-{self.flavour}-{kind}"

    def save(self, version: int, table: str, counters: bool = False) -> str:
        if self.flavour == "legacy" and table not in _legacy_tables(version):
            return ""  # never make the kernel instantiate a legacy table just by looking
        res = _run([self._tool(version, "save"), "-t", table, *(["-c"] if counters else [])])
        if res.returncode != 0:
            if "does not exist" in res.stderr or "Table does not exist" in res.stderr:
                return ""
            raise BackendError(f"{self._tool(version, 'save')} -t {table}", res.stderr)
        return res.stdout

    def restore(self, version: int, text: str, *, test: bool = False) -> None:
        if not text:
            return
        tool = self._tool(version, "restore")
        res = _run([tool, "--noflush", *(["--test"] if test else [])], stdin=text)
        if res.returncode != 0:
            raise BackendError(f"{tool} --noflush{' --test' if test else ''}", res.stderr or res.stdout)

    def rules(self, version: int, table: str) -> tuple[list[str], list[SavedRule]]:
        """(chain names, every rule in save order with its position and nodeguard id)."""
        chains, rules, pos = [], [], {}
        for line in self.save(version, table, counters=True).splitlines():
            if line.startswith(":"):
                chains.append(line[1:].split()[0])
                continue
            m = _COUNTERS.match(line)
            body = line[m.end():] if m else line
            if not body.startswith("-A "):
                continue
            chain = body.split()[1]
            pos[chain] = pos.get(chain, 0) + 1
            idm = _COMMENT_ID.search(body)
            rules.append(SavedRule(chain, pos[chain], idm[1] if idm else None, body,
                                   int(m[1]) if m else 0, int(m[2]) if m else 0))
        return chains, rules

    def live(self, version: int) -> dict[str, LiveTable]:
        out = {}
        for table in TABLES:
            chains, rules = self.rules(version, table)
            ours = [c for c in chains if c.startswith(PREFIX + "-")]
            jumps = [r.line for r in rules if not r.chain.startswith(PREFIX + "-") and r.rule_id
                     and f"-j {PREFIX}-" in r.line]
            if ours or jumps:
                out[table] = LiveTable(ours, jumps)
        return out


def _legacy_tables(version: int, proc: Path = Path("/proc/net")) -> set[str]:
    try:
        return set((proc / ("ip_tables_names" if version == 4 else "ip6_tables_names")).read_text().split())
    except OSError:
        return set()


def detect_flavour() -> tuple[str, str]:
    """Which iptables the node's Kubernetes components use, decided as kubelet's iptables wrapper does.

    The flavour holding KUBE-IPTABLES-HINT or KUBE-KUBELET-CANARY wins; else the one with more
    rules; a tie (an empty node) goes to nft. Returns (flavour, reason).
    """
    counts, hints = {}, {}
    for flavour in ("nft", "legacy"):
        ipt = Ipt(flavour)
        text = "".join(ipt.save(4, t) for t in ("mangle", "nat", "filter", "raw")) + \
            "".join(ipt.save(6, t) for t in ("mangle", "nat", "filter", "raw"))
        hints[flavour] = "KUBE-IPTABLES-HINT" in text or "KUBE-KUBELET-CANARY" in text
        counts[flavour] = sum(1 for ln in text.splitlines() if ln.startswith("-A "))
    for flavour in ("nft", "legacy"):
        if hints[flavour]:
            return flavour, f"KUBE-IPTABLES-HINT/KUBE-KUBELET-CANARY found in iptables-{flavour}"
    if counts["legacy"] > counts["nft"]:
        return "legacy", f"iptables-legacy holds more rules ({counts['legacy']} vs {counts['nft']})"
    return "nft", f"iptables-nft holds {counts['nft']} rules, iptables-legacy {counts['legacy']} (nft on a tie)"


class Ipset:
    @staticmethod
    def available() -> bool:
        return shutil.which("ipset") is not None

    @staticmethod
    def names() -> set[str]:
        if not Ipset.available():
            return set()
        res = _run(["ipset", "list", "-n"])
        return {n for n in res.stdout.split() if n.startswith(PREFIX + "-")} if res.returncode == 0 else set()

    @staticmethod
    def restore(script: str) -> None:
        if not script:
            return
        res = _run(["ipset", "restore"], stdin=script)
        if res.returncode != 0:
            raise BackendError("ipset restore", res.stderr)

    @staticmethod
    def destroy(names: set[str]) -> None:
        for name in sorted(names):
            res = _run(["ipset", "destroy", name])
            if res.returncode != 0 and "does not exist" not in res.stderr:
                raise BackendError(f"ipset destroy {name}", res.stderr)
