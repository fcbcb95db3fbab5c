"""Which IP versions a check re-reads: a set of them, or None for everything (ipsets too)."""

from __future__ import annotations

Scope = frozenset[int] | None  # IP versions to re-read; None: everything (ipsets too)


def _union(a: Scope, b: Scope) -> Scope:
    return None if a is None or b is None else a | b
