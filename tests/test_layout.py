"""Issue 17, "a house a new maintainer can live in": no module of guard/ over 400 lines. A module
that grows past it is split by meaning (one job a module), not cut at the line. No kernel needed."""

from __future__ import annotations

from pathlib import Path

GUARD = Path(__file__).resolve().parent.parent / "guard"
MAX_LINES = 400


def lines_of(path: Path) -> int:
    """What ``wc -l`` counts: newlines (a last line without one is one more)."""
    data = path.read_bytes()
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


def test_no_module_of_guard_is_over_400_lines():
    modules = sorted(GUARD.rglob("*.py"))
    assert len(modules) > 50 and GUARD / "model" / "build.py" in modules  # the real tree, walked whole
    over = [f"{p.relative_to(GUARD.parent)}: {n}" for p in modules if (n := lines_of(p)) > MAX_LINES]
    assert not over, f"over {MAX_LINES} lines (split by meaning): " + ", ".join(over)


def test_lines_are_counted_as_wc_does(tmp_path):
    for text, n in (("", 0), ("a\n", 1), ("a\nb", 2), ("a\n\n", 2)):
        (tmp_path / "m.py").write_text(text)
        assert lines_of(tmp_path / "m.py") == n
