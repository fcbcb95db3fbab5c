"""What a rule does with a packet it matched.

Verdicts are drop, return, jump, goto and queue: an accept would not stop later base chains anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union


@dataclass(frozen=True)
class Drop:
    pass


@dataclass(frozen=True)
class Return:
    pass


@dataclass(frozen=True)
class Continue:
    """No verdict: the rule only acts (remembers a source, logs) and evaluation goes on."""


@dataclass(frozen=True)
class Jump:
    chain: str


@dataclass(frozen=True)
class Goto:
    """Continue in ``chain`` and never come back here (condemned packets go to their sample chain)."""

    chain: str


@dataclass(frozen=True)
class Queue:
    """Hand the packet to NFQUEUE ``number`` (terminal; no bypass: it was condemned anyway)."""

    number: int
    group: str


@dataclass(frozen=True)
class Synproxy:
    """Answer the SYN with a cookie and build the connection to the server only for a valid ACK
    (terminal). ``wscale`` must be the server's own: SYNPROXY never rewrites windows."""

    mss: int
    wscale: int


Verdict = Union[Drop, Return, Continue, Jump, Goto, Queue, Synproxy]
DROP, RETURN, CONTINUE = Drop(), Return(), Continue()
