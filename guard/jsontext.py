"""JSON with parts already written as text: a deny list's 100,000 elements cost ~0.35 s as dicts
passed through json.dumps, ~0.15 s written straight to text. ``dumps`` is json.dumps that takes
``JsonText`` values where any JSON value may stand."""

from __future__ import annotations

import json
import os
import re
from typing import Any, Callable


class JsonText:
    """One JSON value, written when first serialized (a re-apply keeps the deny set and never sends
    its elements): only ever text nodeguard writes itself, never untrusted bytes."""

    __slots__ = ("_write", "_text")

    def __init__(self, write: Callable[[], str]) -> None:
        self._write, self._text = write, None

    @property
    def text(self) -> str:
        if self._text is None:
            self._text = self._write()
        return self._text

    def __repr__(self) -> str:
        return f"JsonText({self.text[:60]!r}...)"

    def __eq__(self, other: object) -> bool:  # two renders of one policy are equal
        return isinstance(other, JsonText) and other.text == self.text


def dumps(obj: Any, **kw: Any) -> str:
    """``json.dumps(obj, **kw)``, each JsonText put in as written. Each stands in as a placeholder
    string first, with a nonce of this call, so no string of the data can pass for one."""
    texts: list[str] = []
    nonce = os.urandom(8).hex()

    def placeholder(o: Any) -> str:
        if not isinstance(o, JsonText):
            raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")
        texts.append(o.text)
        return f"{nonce}:{len(texts) - 1}"

    out = json.dumps(obj, default=placeholder, **kw)
    if not texts:
        return out
    return re.sub(f'"{nonce}:([0-9]+)"', lambda m: texts[int(m[1])], out)
