"""docs/policy.md's reference table is generated from the policy models (guard/policy_doc.py): a
default lives in the model only, and the doc cannot drift from it (no kernel needed)."""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest

from guard import policy_doc

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "policy.md"
FIX = "python -m guard.policy_doc docs/policy.md"


def test_docs_policy_md_is_the_generated_reference():
    text = DOC.read_text()
    fresh = policy_doc.splice(text, policy_doc.generate())
    if fresh != text:
        diff = difflib.unified_diff(text.splitlines(), fresh.splitlines(), "docs/policy.md", "generated", n=0,
                                    lineterm="")
        pytest.fail(f"docs/policy.md is out of date with the policy models; run `{FIX}`\n"
                    + "\n".join(list(diff)[:30]), pytrace=False)


def test_splice_keeps_the_prose_around_the_markers():
    text = f"intro\n{policy_doc.BEGIN}\nold table\n{policy_doc.END}\noutro\n"
    new = policy_doc.splice(text, f"{policy_doc.BEGIN}\nnew\n{policy_doc.END}")
    assert new == f"intro\n{policy_doc.BEGIN}\nnew\n{policy_doc.END}\noutro\n"
    with pytest.raises(ValueError, match="no generated block"):
        policy_doc.splice("no markers here\n", "x")


def test_every_default_shown_is_the_models():
    from guard.policy.schema import Policy

    rows = {r.split(" | ")[0]: r.split(" | ") for r in policy_doc.generate().splitlines() if r.startswith("| `")}
    assert rows["| `meter.size`"][2] == f"`{Policy().meter.size}`"
    assert rows["| `icmp.rate`"][2] == f"`{Policy().icmp.rate}`"
    assert rows["| `limits[].name`"][2] == "required"
