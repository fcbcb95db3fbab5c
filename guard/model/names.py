"""Kernel names of stateful objects: a base name and a digest of the definition, ``<base>-<digest>``.

The one place that writes such a name and the one that reads one back: a live name comes from the
kernel, where the set of another definition (an older policy's) keeps its state under its own name.
"""

from __future__ import annotations

import hashlib
import re

DIGEST_LEN = 6
_DIGESTED = re.compile(rf"(.+)-[0-9a-f]{{{DIGEST_LEN}}}")


def digest(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:DIGEST_LEN]


def digested(base: str, of: str) -> str:
    """``base`` followed by ``of``, a ``digest``."""
    return f"{base}-{of}"


def base_of(name: str) -> str | None:
    """The base of a name ``digested`` made; None for any other name (a static set's, a foreign one)."""
    m = _DIGESTED.fullmatch(name)
    return m.group(1) if m else None
