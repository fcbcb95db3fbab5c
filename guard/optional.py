"""Optional dependencies: the daemon's image leaves out what only a verb's picture or the demo's
display needs (matplotlib and rich with theirs: ~180 MB of 337). A verb that needs one says so in one
line, before it changes anything."""

from __future__ import annotations

import importlib.util

from .errors import NodeguardError


class MissingExtra(NodeguardError):
    exit_code = 2


def missing(modules: tuple[str, ...], extra: str, what: str) -> str | None:
    """The line to print when one of ``modules`` is not installed, or None."""
    absent = [m for m in modules if importlib.util.find_spec(m) is None]
    if not absent:
        return None
    return f"{what} needs {', '.join(absent)}: pip install 'nodeguard[{extra}]'"


def require(modules: tuple[str, ...], extra: str, what: str) -> None:
    problem = missing(modules, extra, what)
    if problem:
        raise MissingExtra(problem)
