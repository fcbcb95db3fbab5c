"""Rule IDs taken from the render, Felix-style: a hash chained along each chain.

A rule's ID covers its chain, every rule above it and its own rendered body, so a
rule that was edited, deleted, inserted above or reordered no longer shows the ID
the renderer expects. The watcher compares IDs only, never rule bodies.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Iterable, Iterator

PREFIX = "nodeguard:"
ID_LEN = 16
_UNSAFE = re.compile(r"[^A-Za-z0-9 _.,:/+=()<>-]")  # nothing a shell, a restore file or a terminal treats specially


def chained_ids(chain: str, bodies: Iterable[Any]) -> Iterator[str]:
    """One ID per rendered rule body, in chain order."""
    previous = chain
    for body in bodies:
        text = body if isinstance(body, str) else json.dumps(body, sort_keys=True, separators=(",", ":"))
        previous = hashlib.sha256(f"{previous}\n{text}".encode()).hexdigest()[:ID_LEN]
        yield previous


def safe_label(label: str) -> str:
    """Labels are built from code and validated names; this is the second lock on the door."""
    return _UNSAFE.sub("?", label)


def comment(rule_id: str, label: str) -> str:
    """The rule comment: the ID first (what tools match on), then a label for people (escaped)."""
    return f"{PREFIX}{rule_id} {safe_label(label)}"[:128]


def id_from_comment(text: str | None) -> str | None:
    if not text or not text.startswith(PREFIX):
        return None
    return text[len(PREFIX):].split(" ", 1)[0]


def id_and_label(comment_text: str | None) -> dict:
    """A live rule's comment as status shows it: {"id", "label"}."""
    text = comment_text or ""
    return {"id": id_from_comment(text), "label": text.split(" ", 1)[1] if " " in text else text}
