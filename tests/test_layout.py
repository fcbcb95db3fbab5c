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


def test_every_package_of_guard_is_in_the_wheel():
    """An editable install (the suite's) imports any package under guard/; a real one (deploy/setup.sh,
    the image) only those pyproject.toml lists. guard/crowdsec was left out, and `nodeguard run` of a
    real install failed at import."""
    import tomllib

    listed = set(tomllib.loads((GUARD.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(GUARD.parent).parts) for p in GUARD.rglob("__init__.py")
             if "__pycache__" not in p.parts}
    assert "guard.crowdsec" in found and found <= listed, f"not in pyproject.toml's packages: {sorted(found - listed)}"
    assert listed - found == {"guard.rules"}  # rules/, mapped by package-dir
