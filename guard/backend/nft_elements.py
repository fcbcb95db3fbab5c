"""An address set's elements read from nft's text listing, in the shapes its JSON listing gives them
(an address as a string, ``{"prefix": ...}``, ``{"range": [...]}``): libnftables writes the text of
10,000 prefixes in about half the time of the JSON, and a re-apply lists every allowlist. Only a
listing that holds nothing but those is read; anything else (a comment, a timeout, a counter, text
that is not an address) gives None, and the caller lists the set as JSON instead."""

from __future__ import annotations

import re

_ADDRESS = r"[0-9a-f]*[.:][0-9a-f.:]*"  # as nft writes them: lower-case hex, dots and colons
_ELEMENT = re.compile(rf"({_ADDRESS})(?:/(\d{{1,3}})|-({_ADDRESS}))?")
_OPEN = "elements = {"


def address_elements(listing: str) -> list | None:
    """The elements of the one set in ``listing`` (``nft list set`` text), or None."""
    start = listing.find(_OPEN)
    if start < 0:  # an empty set lists no elements line
        return [] if "elements" not in listing else None
    end = listing.find("}", start)
    if end < 0 or listing.count(_OPEN) != 1 or set(listing[end + 1:].split()) - {"}"}:
        return None
    out: list = []
    for token in listing[start + len(_OPEN):end].split(","):
        m = _ELEMENT.fullmatch(token.strip())
        if m is None:
            return None
        addr, length, high = m.groups()
        out.append({"prefix": {"addr": addr, "len": int(length)}} if length else
                   {"range": [addr, high]} if high else addr)
    return out
