"""deploy/setup.sh builds /opt/nodeguard's venv on the system python3, never PATH's first one, and
refuses one the unit could not see (ProtectHome=, PrivateTmp=, PrivateDevices=)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from netlab import ROOT

PICKER = ROOT / "deploy" / "system_python.sh"
HIDDEN = ("/root/", "/home/", "/run/user/", "/tmp/", "/var/tmp/", "/dev/shm/")


def system_python(*args: str, path: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=path or os.environ["PATH"])
    return subprocess.run(["bash", "-c", f'. "{PICKER}"; system_python "$@"', "bash", *args],
                          capture_output=True, text=True, env=env, timeout=10)


def test_picks_usr_bin_python3_whatever_path_puts_first(tmp_path):
    shim = tmp_path / "bin" / "python3"  # a pyenv shim, first in PATH as on this machine
    shim.parent.mkdir()
    shim.write_text("#!/bin/sh\nexit 0\n")
    shim.chmod(0o755)
    res = system_python(path=f"{shim.parent}:{os.environ['PATH']}")
    assert (res.returncode, res.stdout, res.stderr) == (0, "/usr/bin/python3\n", "")
    # the venv setup.sh makes with it runs a python the unit can see
    venv = tmp_path / "venv"
    subprocess.run([res.stdout.strip(), "-m", "venv", "--without-pip", str(venv)], check=True, timeout=30)
    real = os.path.realpath(venv / "bin" / "python")
    assert not real.startswith(HIDDEN) and Path(real).is_file(), real


def test_refuses_an_interpreter_the_unit_cannot_see(tmp_path):
    link = tmp_path / "python3"
    link.symlink_to("/usr/bin/python3")
    res = system_python(str(link))
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr == (f"setup.sh: {link}: hidden from the unit (ProtectHome=, PrivateTmp=, PrivateDevices=); "
                          "use /usr/bin/python3\n")


def test_a_missing_interpreter_is_one_line_and_exit_2(tmp_path):
    res = system_python("/usr/bin/no-such-python3")
    assert (res.returncode, res.stdout) == (2, "")
    assert res.stderr == "setup.sh: /usr/bin/no-such-python3: no such interpreter (apt-get install python3 python3-venv)\n"


def test_setup_builds_the_venv_on_the_picked_interpreter():
    lines = (ROOT / "deploy" / "setup.sh").read_text().splitlines()
    assert ". deploy/system_python.sh" in lines
    assert 'python=$(system_python) || exit 2' in lines and '"$python" -m venv "$venv"' in lines
    assert not [ln for ln in lines if "-m venv" in ln and not ln.startswith('"$python"')]
