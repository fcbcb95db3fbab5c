"""The iptables backend: iptables-restore --noflush of nodeguard's own chains and jumps, per flavour.

Each restore is atomic per call (legacy: per table; nft: one transaction). We never save,
edit and restore whole tables: we read ``*-save`` only to find our own chains and jumps.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import re
import shutil
import socket
import struct
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BackendError, EnvironmentProblem
from ..probe import legacy_tables as _legacy_tables
from ..render.ipt import PREFIX

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


class OwnPids:
    """Pids of the tools we ran, so the watcher does not blame our own transactions on someone else.

    The kernel names the writer in the event that arrives just after the tool exits; a pid is kept
    for ``grace_s`` after its process ended, then forgotten, since the kernel may give it to a
    foreign writer next."""

    def __init__(self, grace_s: float = 5.0, clock=time.monotonic):
        self.grace_s = grace_s
        self.clock = clock
        self._running: set[int] = set()
        self._ended: dict[int, float] = {}

    def started(self, pid: int) -> None:
        self._running.add(pid)

    def ended(self, pid: int) -> None:
        self._running.discard(pid)
        self._ended[pid] = self.clock()

    def __contains__(self, pid: int) -> bool:
        now = self.clock()
        for old in [p for p, t in self._ended.items() if now - t > self.grace_s]:
            del self._ended[old]
        return pid in self._running or pid in self._ended


OWN_PIDS = OwnPids()


def _start(args: list[str]) -> subprocess.Popen:
    try:
        proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    except FileNotFoundError:
        raise EnvironmentProblem(f"{args[0]} not found: install Debian's iptables (and ipset)") from None
    OWN_PIDS.started(proc.pid)
    return proc


def _finish(proc: subprocess.Popen, stdin: str | None = None) -> subprocess.CompletedProcess:
    try:
        out, err = proc.communicate(stdin, timeout=20)  # under the unit's 30 s watchdog: a held xtables lock is a retry, not a hang
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    OWN_PIDS.ended(proc.pid)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _run(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    return _finish(_start(args), stdin)


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
class LiveIpset:
    """One of our ipsets as ``ipset list -t`` shows it."""

    name: str
    type: str
    header: dict[str, str]  # family, maxelem, timeout, netmask, ...
    entries: int

    def matches(self, want) -> bool:
        """Same definition as ``want`` (render.ipt.Ipset): the sync keeps it, contents and all."""
        h = self.header
        if want.type == "bitmap:port":
            return (self.type == want.type and h.get("range") == "0-65535"
                    and h.get("timeout") == (str(want.timeout) if want.timeout is not None else None))
        return (self.type == want.type and h.get("family") == want.family and h.get("maxelem") == str(want.maxelem)
                and h.get("timeout") == (str(want.timeout) if want.timeout is not None else None)
                and h.get("netmask") == (str(want.netmask) if want.netmask is not None else None)
                and ("counters" in h) == want.counters)


_IPSET_FLAGS = {"counters", "comment", "skbinfo", "forceadd"}  # header words that take no value


def _header(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    words = text.split()
    i = 0
    while i < len(words):
        if words[i] in _IPSET_FLAGS:
            out[words[i]] = "yes"
            i += 1
        else:
            out[words[i]] = words[i + 1] if i + 1 < len(words) else ""
            i += 2
    return out


class Ipset:
    @staticmethod
    def available() -> bool:
        return shutil.which("ipset") is not None

    @staticmethod
    def live() -> dict[str, LiveIpset]:
        """Our ipsets and their definitions: one process, no members listed."""
        if not Ipset.available() or not Path("/sys/module/ip_set").exists():
            return {}
        res = _run(["ipset", "list", "-t"])
        if res.returncode != 0:
            raise BackendError("ipset list -t", res.stderr)
        out: dict[str, LiveIpset] = {}
        for block in res.stdout.split("\n\n"):
            fields = dict(line.split(": ", 1) for line in block.strip().splitlines() if ": " in line)
            name = fields.get("Name", "")
            if not name.startswith(PREFIX + "-"):
                continue
            header = _header(fields.get("Header", ""))
            out[name] = LiveIpset(name, fields.get("Type", ""), header, int(fields.get("Number of entries", 0)))
        return out

    @staticmethod
    def counts(name: str) -> dict[str, tuple[int, int]]:
        """Per member of a ``counters`` set: (packets, bytes)."""
        res = _run(["ipset", "list", "-o", "save", name])
        out = {}
        for line in res.stdout.splitlines() if res.returncode == 0 else []:
            words = line.split()
            if words[:1] == ["add"] and "packets" in words and "bytes" in words:
                out[words[2]] = (int(words[words.index("packets") + 1]), int(words[words.index("bytes") + 1]))
        return out

    @staticmethod
    def timeouts(name: str) -> dict[str, int | None]:
        """Per member of a set: the seconds its timeout has left (None: the set has no timeouts)."""
        res = _run(["ipset", "list", "-o", "save", name])
        out: dict[str, int | None] = {}
        for line in res.stdout.splitlines() if res.returncode == 0 else []:
            words = line.split()
            if words[:1] == ["add"] and len(words) > 2:
                out[words[2]] = int(words[words.index("timeout") + 1]) if "timeout" in words else None
        return out

    @staticmethod
    def members(name: str) -> list[str]:
        res = _run(["ipset", "list", "-o", "save", name])
        if res.returncode != 0:
            return []
        return [ln.split()[2] for ln in res.stdout.splitlines() if ln.startswith("add ")]

    @staticmethod
    def names() -> set[str]:
        return set(Ipset.live())

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


# --- cheap change detection for iptables-legacy, which sends no events -------------------
_SO_GET_INFO, _SO_GET_ENTRIES = 64, 65  # IPT_SO_* == IP6T_SO_*


class _Counters(ctypes.Structure):
    _fields_ = [("pcnt", ctypes.c_uint64), ("bcnt", ctypes.c_uint64)]


class _IptIp(ctypes.Structure):  # struct ipt_ip
    _fields_ = [("addrs", ctypes.c_uint32 * 4), ("ifaces", ctypes.c_ubyte * 64), ("proto", ctypes.c_uint16),
                ("flags", ctypes.c_uint8), ("invflags", ctypes.c_uint8)]


class _Ip6tIp6(ctypes.Structure):  # struct ip6t_ip6
    _fields_ = [("addrs", ctypes.c_ubyte * 64), ("ifaces", ctypes.c_ubyte * 64), ("proto", ctypes.c_uint16),
                ("tos", ctypes.c_uint8), ("flags", ctypes.c_uint8), ("invflags", ctypes.c_uint8)]


def _entry(ip: type) -> type:  # struct ipt_entry / ip6t_entry
    return type("_Entry", (ctypes.Structure,), {"_fields_": [
        ("ip", ip), ("nfcache", ctypes.c_uint), ("target_offset", ctypes.c_uint16), ("next_offset", ctypes.c_uint16),
        ("comefrom", ctypes.c_uint), ("counters", _Counters)]})


class _GetInfo(ctypes.Structure):  # struct ipt_getinfo
    _fields_ = [("name", ctypes.c_char * 32), ("valid_hooks", ctypes.c_uint), ("hook_entry", ctypes.c_uint * 5),
                ("underflow", ctypes.c_uint * 5), ("num_entries", ctypes.c_uint), ("size", ctypes.c_uint)]


_ENTRY = {4: _entry(_IptIp), 6: _entry(_Ip6tIp6)}
_ENTRIES_HEADER = 40  # struct ipt_get_entries: name[32], size, then 8-aligned entries


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def legacy_fingerprint() -> tuple:
    """A fingerprint of every iptables-legacy table's rules, in order, without their counters.

    Two getsockopt calls per existing table (IPT_SO_GET_INFO, IPT_SO_GET_ENTRIES) and a hash,
    no process spawned: the watcher polls this and runs the full comparison only when it
    changes. Only tables that exist are asked about: asking would instantiate a missing one.
    """
    out = []
    libc = _libc()
    for version, fam, level in ((4, socket.AF_INET, socket.IPPROTO_IP), (6, socket.AF_INET6, socket.IPPROTO_IPV6)):
        tables = sorted(_legacy_tables(version))
        if not tables:
            continue
        entry = _ENTRY[version]
        counters_at, counters_len = entry.counters.offset, ctypes.sizeof(_Counters)
        next_at = entry.next_offset.offset
        with socket.socket(fam, socket.SOCK_RAW, socket.IPPROTO_RAW) as s:
            for name in tables:
                info = _GetInfo(name=name.encode())
                n = ctypes.c_uint(ctypes.sizeof(info))
                if libc.getsockopt(s.fileno(), level, _SO_GET_INFO, ctypes.byref(info), ctypes.byref(n)) != 0:
                    out.append((version, name, "error", ctypes.get_errno()))
                    continue
                buf = ctypes.create_string_buffer(_ENTRIES_HEADER + info.size)
                buf[:32] = name.encode().ljust(32, b"\0")
                struct.pack_into("=I", buf, 32, info.size)
                n = ctypes.c_uint(len(buf))
                if libc.getsockopt(s.fileno(), level, _SO_GET_ENTRIES, buf, ctypes.byref(n)) != 0:
                    out.append((version, name, "error", ctypes.get_errno()))  # changed in between: differs anyway
                    continue
                blob = bytearray(buf.raw[_ENTRIES_HEADER:_ENTRIES_HEADER + info.size])
                off = 0
                while off + ctypes.sizeof(entry) <= len(blob):
                    blob[off + counters_at:off + counters_at + counters_len] = bytes(counters_len)
                    step = struct.unpack_from("=H", blob, off + next_at)[0]
                    if step == 0:
                        break
                    off += step
                out.append((version, name, tuple(info.hook_entry), tuple(info.underflow),
                            hashlib.sha256(bytes(blob)).hexdigest()))
    return tuple(out)


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
