"""Rule IDs taken from the render, Felix-style: a hash chained along each chain.

A rule's ID covers its chain, every rule above it and its own rendered body, so a
rule that was edited, deleted, inserted above or reordered no longer shows the ID
the renderer expects. The watcher compares IDs only, never rule bodies.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable, Iterator

PREFIX = "nodeguard:"
ID_LEN = 16


def chained_ids(chain: str, bodies: Iterable[Any]) -> Iterator[str]:
    """One ID per rendered rule body, in chain order."""
    previous = chain
    for body in bodies:
        text = body if isinstance(body, str) else json.dumps(body, sort_keys=True, separators=(",", ":"))
        previous = hashlib.sha256(f"{previous}\n{text}".encode()).hexdigest()[:ID_LEN]
        yield previous


def comment(rule_id: str, label: str) -> str:
    """The rule comment: the ID first (what tools match on), then a label for people."""
    return f"{PREFIX}{rule_id} {label}"[:128]


def id_from_comment(text: str | None) -> str | None:
    if not text or not text.startswith(PREFIX):
        return None
    return text[len(PREFIX):].split(" ", 1)[0]
