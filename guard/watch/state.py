"""Reading the state the watcher publishes (loop.py writes it), for ``status``: ``alive`` is checked
against the pid, since a killed watcher leaves ``alive: true`` behind. A file whose fields are not
what the watcher writes is treated as absent (statefile.py)."""

from __future__ import annotations

from typing import Any

from ..statefile import fields, is_int, is_number, is_pid, is_text, is_texts, load, or_none, running

_COUNT = (is_int, "a count")
_FLAG = (or_none(lambda v: isinstance(v, bool)), "true, false or null")
_TEXT = (is_text, "text or null")
_SECONDS = (or_none(is_number), "a finite number from 0 or null")
# the fields status reads, as Watcher.state and WatchLoop._write_state write them
_CHECK = fields({
    "pid": (is_pid, "a process id below pid_max"), "alive": _FLAG, "contested": _FLAG, "adopted": _FLAG,
    "in_sync": _FLAG, "repairs": _COUNT, "checks": _COUNT, "errors": _COUNT, "reloads_ok": _COUNT,
    "reloads_failed": _COUNT, "backoff_s": _SECONDS, "last_repair_ms": _SECONDS, "last_apply": _SECONDS,
    "contested_by": _TEXT, "last_reason": _TEXT, "last_kind": _TEXT, "last_writer": _TEXT, "last_error": _TEXT,
    "backend": _TEXT, "notes": (is_texts, "a list of text"), "interfaces": (is_texts, "a list of text"),
    "fingerprints": (or_none(lambda v: isinstance(v, dict) and is_texts(list(v.values()))),
                     "an object of text or null"),
})


def read_state(path: str) -> dict[str, Any] | None:
    """The watcher's last published state, with ``alive`` checked against its pid."""
    data = load(path, _CHECK)
    if data is None:
        return None
    if data.get("alive") and not ("pid" in data and running(data["pid"])):
        data["alive"] = False
    return data
