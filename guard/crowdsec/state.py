"""``crowdsec.json``, beside the watcher's state file: the daemon's CrowdSec part publishes there what
``status`` shows (decisions held, the last good pull, failures), checked as any state file read back."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..statefile import fields, is_int, is_number, is_pid, is_text, load, or_none, running

NAME = "crowdsec.json"


def path(state_file: str | Path) -> Path:
    return Path(state_file).parent / NAME


_CHECK = fields({
    "pid": (is_pid, "a pid"),
    "decisions": (lambda v: isinstance(v, dict) and all(is_int(v.get(f)) for f in ("ipv4", "ipv6")),
                  "a count per family"),
    "last_pull": (or_none(is_number), "a time"),
    "last_push": (or_none(is_number), "a time"),
    "errors": (lambda v: isinstance(v, dict) and all(isinstance(k, str) and is_int(n) for k, n in v.items()),
               "counts per operation"),
    "skipped": (is_int, "a count"),
    "left_out": (is_int, "a count"),
    "problem": (is_text, "text"),
})


def read(state_file: str | Path) -> dict[str, Any] | None:
    """The part's last published state, ``alive`` when its daemon still runs; None without one."""
    data = load(path(state_file), _CHECK)
    if data is None or not all(k in data for k in ("pid", "decisions", "errors")):
        return None
    return {**data, "alive": running(data["pid"])}


def lines(cs: dict[str, Any] | None, url: str) -> list[str]:
    if cs is None:
        return [f"crowdsec: {url}, nothing pulled yet (is nodeguard run running?)"]
    d = cs["decisions"]
    last = cs.get("last_pull")
    when = f"last pull {time.time() - last:.0f} s ago" if isinstance(last, (int, float)) else "no pull yet"
    out = [f"crowdsec: {url}, {d['ipv4']} IPv4 and {d['ipv6']} IPv6 ban decisions held; {when}"
           + ("" if cs["alive"] else " (the daemon is NOT RUNNING: this is its last word)")]
    if cs.get("left_out"):
        out.append(f"  SETS FULL: {cs['left_out']} prefixes left out (crowdsec.size; those that end last are kept)")
    if cs.get("problem"):
        out.append(f"  FAILING: {cs['problem']!a} (the bans in place stay until they run out); errors "
                   + ", ".join(f"{op} {n}" for op, n in sorted(cs["errors"].items())))
    return out
