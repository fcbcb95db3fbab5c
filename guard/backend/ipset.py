"""ipset for the iptables backend: our sets' definitions (``ipset list -t``), members, counters and
timeouts, restore and destroy. Meters, admission sets and allowlists live here, not in -save output."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import BackendError
from ..render.ipt_names import PREFIX
from .tools import _run


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
                and ("counters" in h) == want.counters
                and _buckets_fit(int(h.get("hashsize", "0")), want.hashsize))


def _buckets_fit(live: int, want: int | None) -> bool:
    """Fewer buckets than wanted: the packet path cannot fill the set. Four times as many or more (the
    earlier quarter-of-size rule): a full timed set would collect garbage on every add it refuses
    (render.ipt.packet_hashsize). In between: a set that userspace adds (a restore) grew."""
    return want is None or want <= live < 4 * want


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
