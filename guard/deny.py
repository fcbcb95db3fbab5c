"""Deny files: one CIDR or address a line, ``#`` comments and blank lines (the format of the common
blocklists: Spamhaus DROP, FireHOL, abuse.ch). Read like the policy file (configfile.read_config: root's
alone), since they decide what the node drops; a bad line is ``FILE:LINE: message`` and exit 2, and
nothing changes."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from . import prefixes
from .configfile import MiB, read_config
from .errors import PolicyError
from .policy.fields import DROP_ALL

ECHOED = 24  # characters of a bad entry a message quotes: deny.files may name any file (/etc/shadow by mistake)


LINES_AT_ONCE = 1 << 20  # characters split into lines at a time: 1,000,000 lines as strings held at once took 60 MB


def deny_entries(text: str, file: str) -> Iterator[tuple[int, int, int]]:
    """``(version, first, length)`` of each prefix ``text`` lists, in its order (integers: prefixes.py);
    a bare address is its /32 or /128. Raises PolicyError naming the line, quoting ``ECHOED`` characters
    of it at most. Lines end at LF alone (CRLF read too), as grep and sed count them: str.splitlines also
    splits at VT, FF, U+0085, U+2028 and the rest."""
    number = 0
    for line in _lines(text.removeprefix("\ufeff")):  # a BOM: Windows editors
        number += 1
        entry = line.split("#", 1)[0].split(";", 1)[0].strip()  # Spamhaus DROP: "1.2.3.0/24 ; SBL123"
        if not entry:
            continue
        try:
            yield prefixes.parse(entry, DROP_ALL, ECHOED)
        except ValueError as exc:
            raise PolicyError(file, number, "", str(exc)) from None


def _lines(text: str) -> Iterator[str]:
    """``text.split("\n")``, a block at a time."""
    start = 0
    while (end := text.find("\n", start + LINES_AT_ONCE)) >= 0:
        yield from text[start:end].split("\n")
        start = end + 1
    yield from text[start:].split("\n")


# The most of one deny file read: ~900,000 lines of IPv4 CIDRs, hundreds of times Spamhaus DROP's
# ~1,500; a file that never ends (a symlink to /dev/zero) is refused at this size, not read to the end.
DENY_MAX_BYTES = 16 * MiB


def read_deny_file(path: str | Path) -> Iterator[tuple[int, int, int]]:
    """The prefixes of one deny file (deny_entries), refused (PolicyError, exit 2) unless it is root's
    alone; the file is read and decoded before the first is asked for."""
    data, _real = read_config(path, DENY_MAX_BYTES)
    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        raise PolicyError(str(path), None, "", f"not UTF-8 text (byte {exc.start})") from None
    return deny_entries(text, str(path))


def emptied(before: dict[str, int], after: dict[str, int]) -> list[tuple[str, int]]:
    """(file, prefixes it listed) for each deny file that listed some in ``before`` and none in
    ``after`` (``Deny.listed`` of two policies). Emptying a list is allowed (an operator may mean it),
    but a failed blocklist download leaves the same empty file: the daemon says so louder than a reload."""
    return [(path, n) for path, n in before.items() if n and after.get(path) == 0]
