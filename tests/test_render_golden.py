"""The whole rendered table for a fixed policy, as the kernel prints it, is pinned.

(tests/test_render.py pins what is sent, without root; this pins what the kernel made of it.)
After an intended change: ``pytest --update-goldens`` (that run fails), review the diff, run again.
"""

from __future__ import annotations

from pathlib import Path

import pytest

# calm: no floods, no timing: these run beside the other tests, without the machine lock
pytestmark = pytest.mark.calm

GOLDEN = Path(__file__).resolve().parent / "golden"


def test_small_policy_renders_exactly_the_pinned_table(ns, write_policy, golden):
    # through write_policy: its state file (and sampling odds) are this test's, not the host's
    out = ns.nodeguard("check", "-c", write_policy((GOLDEN / "small.yaml").read_text(), "small.yaml")).stdout
    header, _, table = out.partition("\n")
    assert "valid; checked by the kernel" in header
    golden("small.nft", table)
