"""The NFLOG prefix of a condemning rule's sample: which rule group and mode condemned the packet.

Written into the rule (model.matches.Log, rendered by both renderers) and read back from every packet
the kernel copies (nflog.py): the one place that knows its shape, "ng:<group>" in enforce mode and
"ngm:<group>" in monitor mode. A prefix that is not one of these (another program's rule logging to
the same group, bytes of any kind) is not ours.
"""

from __future__ import annotations

_MARKS = {"enforce": "ng:", "monitor": "ngm:"}


def encode(group: str, mode: str) -> str:
    return f"{_MARKS[mode]}{group}"


def decode(prefix: str) -> tuple[str, str] | None:
    """(group, mode) of a prefix ``encode`` wrote, else None."""
    for mode, mark in _MARKS.items():
        if prefix.startswith(mark) and len(prefix) > len(mark):
            return prefix[len(mark):], mode
    return None
