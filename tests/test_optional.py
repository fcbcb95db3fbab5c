"""The image leaves out matplotlib and rich (pyproject extras plot and demo): the verbs that need them
say so in one line, exit 2, and write nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HIDDEN = "import sys; sys.modules.update({m: None for m in %r}); from guard.cli import main; sys.argv[0] = 'nodeguard'; main()"


def run_without(modules: tuple[str, ...], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", HIDDEN % (modules,), *args], capture_output=True, text=True,
                          timeout=60)


def test_report_plot_png_without_matplotlib_is_one_line_and_no_file(tmp_path: Path):
    log = tmp_path / "attacks.jsonl"
    log.write_text("")
    res = run_without(("matplotlib",), "report", "--log", str(log), "--plot", str(tmp_path / "t.png"))
    assert res.returncode == 2 and res.stdout == "", res
    assert res.stderr == ("nodeguard: report --plot FILE.png (FILE.svg needs nothing) needs matplotlib: "
                          "pip install 'nodeguard[plot]'\n")
    assert not (tmp_path / "t.png").exists()
    res = run_without(("matplotlib",), "report", "--log", str(log), "--plot", str(tmp_path / "t.svg"))
    assert res.returncode == 0, res
    assert (tmp_path / "t.svg").read_text().startswith("<svg")


def test_demo_without_rich_is_one_line_before_anything_runs():
    res = run_without(("rich",), "demo", "--quick")
    assert res.returncode == 2 and res.stdout == "", res
    assert res.stderr == "nodeguard demo: nodeguard demo needs rich: pip install 'nodeguard[demo]'\n"
