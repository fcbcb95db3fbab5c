"""The CLI loads a verb's modules only when it runs: ``--version`` and ``--help`` import click and
nothing heavy (the startup figures are bench/startup.py's; no timing here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("pydantic", "yaml", "nftables", "scapy", "prometheus_client", "matplotlib", "rich", "numpy",
         "guard.model", "guard.policy", "guard.status", "guard.apply", "guard.render", "guard.backend")


def probe(report: str) -> str:
    """A script that runs the CLI with its own argv, then prints ``report`` (Python, after the CLI exited)."""
    return ("import gc, sys\n"
            "sys.argv = ['nodeguard', *sys.argv[1:]]\n"
            "from guard.cli import main\n"
            "try:\n"
            "    main()\n"
            "except SystemExit:\n"
            "    pass\n" + report + "\n")


PROBE = probe("heavy = sorted(m for m in sys.modules if any(m == h or m.startswith(h + '.') for h in {heavy!r}))\n"
              "print('HEAVY', heavy, file=sys.stderr)")


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["apply", "--help"], ["run", "--help"]])
def test_version_and_help_import_nothing_heavy(argv):
    res = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *argv], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    assert res.stderr.strip().splitlines()[-1] == "HEAVY []", res.stderr
    assert res.stdout


def test_every_lazy_verb_loads_under_its_own_name():
    from guard.cli import VERBS, cli

    ctx = click.Context(cli)
    assert cli.list_commands(ctx) == sorted(VERBS)
    for name in VERBS:
        cmd = cli.get_command(ctx, name)
        assert isinstance(cmd, click.Command) and cmd.name == name
    assert cli.get_command(ctx, "nosuch") is None


GC_PROBE = probe("print('GC', gc.isenabled())")


@pytest.mark.parametrize("argv, collects", [(["unban"], False), (["report", "--log", "{log}"], False),
                                           (["tune", "-c", "{policy}", "--log", "{log}"], True)])
def test_one_shot_verbs_run_without_the_cyclic_collector(tmp_path, default_policy, argv, collects):
    log = tmp_path / "attacks.jsonl"
    log.write_text("")
    res = subprocess.run([sys.executable, "-c", GC_PROBE, *(a.format(log=log, policy=default_policy) for a in argv)],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    assert res.stdout.strip().splitlines()[-1] == f"GC {collects}", res.stdout + res.stderr
