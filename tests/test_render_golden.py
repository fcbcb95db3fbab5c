"""The whole rendered table for a fixed policy, as the kernel prints it, is pinned.

(tests/test_render.py pins what is sent, without root; this pins what the kernel made of it.)
Regenerate after an intended change with ``NODEGUARD_UPDATE_GOLDEN=1``.
"""

from __future__ import annotations

import os
from pathlib import Path

GOLDEN = Path(__file__).resolve().parent / "golden"


def test_small_policy_renders_exactly_the_pinned_table(ns, write_policy):
    # through write_policy: its state file (and sampling odds) are this test's, not the host's
    out = ns.nodeguard("check", "-c", write_policy((GOLDEN / "small.yaml").read_text(), "small.yaml")).stdout
    header, _, table = out.partition("\n")
    assert "valid; checked by the kernel" in header
    if os.environ.get("NODEGUARD_UPDATE_GOLDEN") == "1":
        (GOLDEN / "small.nft").write_text(table)
    assert table == (GOLDEN / "small.nft").read_text()
