"""What our rules looked like in the kernel right after our own transaction: a digest per rule id.

Rule ids (render/ids.py) say which rule the renderer meant; they live in comments, which anyone can
copy onto a rule with another body (``nft replace rule ... comment "<our comment>"``). The kernel lists
a rule in its own normal form, not as we sent it, so the reference is what it listed after we wrote:
the watcher keeps these digests and compares them on every check, and a repair refills every chain
whose rules no longer match them.
"""

from __future__ import annotations

import functools
import hashlib
import json

from .render.ids import id_from_comment

Fingerprints = dict[str, str]  # rule id -> digest of its body as the kernel lists it


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def nft_body(rule: dict) -> str:
    """A live rule's expressions without counter values (which traffic moves) or handles."""
    expr = [{"counter": None} if "counter" in e else e for e in rule.get("expr", [])]
    return _digest(json.dumps(expr, sort_keys=True, separators=(",", ":")))


def of_nft(rules) -> Fingerprints:
    return {rid: nft_body(r) for r in rules if (rid := id_from_comment(r.get("comment")))}


@functools.lru_cache(maxsize=8192)
def ipt_body(version: int, save_line: str) -> str:
    """Cached: every check digests every one of our lines, and they rarely change."""
    return _digest(f"{version} {save_line}")


def ipt_key(version: int, rule_id: str) -> str:
    """IPv4 and IPv6 tables hold rules with the same id (the same rule of the policy): one key each."""
    return f"v{version} {rule_id}"


def of_ipt(saved: dict) -> Fingerprints:
    """From ``Ipt.tables()`` per family: each of our lines as -save prints it, counters removed."""
    return {ipt_key(version, r.rule_id): ipt_body(version, r.line) for version, tables in saved.items()
            for _chains, rules in tables.values() for r in rules if r.rule_id}

