"""The one nft transaction a pull makes: from what the sets hold (as the last pull left them) to what
they should hold (held.Want). Text syntax, not JSON: libnftables parses 100,000 elements three times
faster from it. Every element text is ours (addresses from inet_ntop or ipaddress, comments from
held.comment)."""

from __future__ import annotations

import math

from ..model.ruleset import TABLE
from ..render.nft import FAMILY
from .held import Want

CLOCK_SLACK_S = 2  # an expiry that moved less than this is not worth a kernel write


def transaction(names: dict[tuple[int, str], str], want: Want, installed: Want | None, now: float) -> tuple[str, Want]:
    """(nft text, what the sets hold once it is sent). ``installed`` None: the sets' contents are not
    known (first pull, a set recreated): each is flushed and filled. A range set is refilled whenever it
    changes (a range replaced by a wider one cannot be added in the transaction that deletes it)."""
    lines, after = [], {}
    for key, name in sorted(names.items()):
        w = want.get(key, {})
        after[key] = w
        was = (installed or {}).get(key, {})
        held = {n: v for n, v in was.items() if v[0] > now}
        changed = {n: v for n, v in w.items() if n not in held or _differs(held[n], v)}
        gone = [n for n in held if n not in w]
        ref = f"{FAMILY} {TABLE} {name}"
        if installed is None or key not in installed or key[1] == "range" and (changed or gone):
            lines.append(f"flush set {ref}")
            changed = w
        elif touched := ", ".join((*gone, *(n for n in changed if n in was))):
            # what the set may hold: added (a no-op if there, so the delete cannot fail), deleted, then
            # added anew; never a new prefix before the delete (a full set refuses the whole transaction)
            lines += [f"add element {ref} {{ {touched} }}", f"delete element {ref} {{ {touched} }}"]
        if changed:
            lines.append(f"add element {ref} {{ " + ", ".join(
                f'{n} timeout {max(1, math.ceil(until - now))}s comment "{c}"'
                for n, (until, c) in changed.items()) + " }")
    return "\n".join(lines), after


def _differs(a: tuple[float, str], b: tuple[float, str]) -> bool:
    return abs(a[0] - b[0]) >= CLOCK_SLACK_S or a[1] != b[1]

