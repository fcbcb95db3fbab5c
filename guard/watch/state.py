"""Reading the state the watcher publishes (loop.py writes it), for ``status``: ``alive`` is checked
against the pid, since a killed watcher leaves ``alive: true`` behind."""

from __future__ import annotations

import json
import os

from ..configfile import read_private
from ..errors import NodeguardError


def read_state(path: str) -> dict | None:
    """The watcher's last published state, with ``alive`` checked against its pid."""
    try:
        data = json.loads(read_private(path))
    except (NodeguardError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    if data.get("alive"):
        try:
            os.kill(int(data["pid"]), 0)
        except (OSError, ValueError, KeyError):
            data["alive"] = False
    return data
