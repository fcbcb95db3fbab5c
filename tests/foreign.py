"""What nodeguard must leave as it found it: every table it does not own, as text, before and after.

Kept apart from netlab.py: only the kube-fixture tests compare such snapshots.
"""

from __future__ import annotations

import json
import re

from netlab import Netns

_COUNTER = re.compile(r"\[\d+:\d+\]")


def foreign_snapshot(ns: Netns) -> dict[str, str]:
    """Every table nodeguard does not own, as text, with counters and timestamps removed."""
    snap: dict[str, str] = {}
    for o in ns.nft_json("tables"):
        t = o.get("table")
        if t and not (t["family"] == "inet" and t["name"] == "nodeguard"):
            key = f"nft {t['family']} {t['name']}"
            snap[key] = ns.run(["nft", "-s", "list", "table", t["family"], t["name"]]).stdout
            snap[key + " json"] = _strip_counters_json(ns.run(["nft", "-s", "-j", "list", "table", t["family"], t["name"]]).stdout)
    for tool in ("iptables-nft-save", "ip6tables-nft-save", "iptables-legacy-save", "ip6tables-legacy-save"):
        res = ns.run(tool)
        snap[tool] = "\n".join(_COUNTER.sub("[0:0]", ln) for ln in res.stdout.splitlines() if not ln.startswith("#"))
        snap[tool + " stderr"] = res.stderr
    return snap


def _strip_counters_json(text: str) -> str:
    data = json.loads(text)["nftables"]
    data = [o for o in data if "metainfo" not in o]
    return json.dumps(data, sort_keys=True, indent=1)


IPT_TABLE_NAMES = ("raw", "mangle", "nat", "filter", "security")


def without_nodeguard(snap: dict[str, str]) -> dict[str, str]:
    """A snapshot with nodeguard's iptables lines and the empty tables they needed taken out.

    For the iptables backend: our chains and jumps live inside foreign tables, so what must
    stay identical is every other line. iptables-nft tables are compared through *-save
    (their nft listings hold our chains too); a built-in table left with no rule at all
    (iptables-legacy cannot unregister one) is dropped, and so is iptables-nft-save's notice
    that legacy tables exist, which the legacy backend must create to protect a family.
    """
    out = {}
    for key, text in snap.items():
        if key.endswith("stderr"):
            text = "".join(ln for ln in text.splitlines(True) if "legacy tables present" not in ln)
        parts = key.split()
        if parts[0] == "nft" and parts[1] in ("ip", "ip6") and parts[2] in IPT_TABLE_NAMES:
            continue
        if key.endswith("-save"):
            text = _drop_empty_tables("\n".join(ln for ln in text.splitlines() if "NODEGUARD" not in ln))
        out[key] = text
    return out


def _drop_empty_tables(text: str) -> str:
    blocks, current = [], []
    for line in text.splitlines():
        current.append(line)
        if line == "COMMIT":
            blocks.append(current)
            current = []
    keep = [b for b in blocks if any(ln.startswith("-A ") for ln in b)
            or any(ln.startswith(":") and " - [" in ln for ln in b)]
    return "\n".join(ln for b in keep for ln in b) + ("\n".join(current) if current else "")
