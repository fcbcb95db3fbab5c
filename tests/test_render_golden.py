"""The whole rendered table for a fixed policy, as the kernel prints it, is pinned."""

from __future__ import annotations

from pathlib import Path

GOLDEN = Path(__file__).resolve().parent / "golden"


def test_small_policy_renders_exactly_the_pinned_table(ns):
    out = ns.nodeguard("check", "-c", str(GOLDEN / "small.yaml")).stdout
    header, _, table = out.partition("\n")
    assert "valid; checked by the kernel" in header
    assert table == (GOLDEN / "small.nft").read_text()
