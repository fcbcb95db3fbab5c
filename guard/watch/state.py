"""Reading the state the watcher publishes (loop.py writes it), for ``status``: ``alive`` is checked
against the pid, since a killed watcher leaves ``alive: true`` behind."""

from __future__ import annotations

import json
import os
from pathlib import Path


def read_state(path: str) -> dict | None:
    """The watcher's last published state, with ``alive`` checked against its pid."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if data.get("alive"):
        try:
            os.kill(int(data["pid"]), 0)
        except (OSError, ValueError, KeyError):
            data["alive"] = False
    return data
