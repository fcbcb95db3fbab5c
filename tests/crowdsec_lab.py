"""A real CrowdSec Local API for kernel tests and the bench: Debian's ``crowdsec`` run as the LAPI alone
(``-no-cs``) with a config of its own under a temporary directory (SQLite, no Central API, no metrics),
listening on an address of a test namespace; ``cscli`` with the same config makes its bouncer key and
machine and adds or deletes decisions. Never /etc/crowdsec nor /var/lib/crowdsec. Killed on exit."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

PROFILES = """\
name: default_ip_remediation
filters:
 - Alert.Remediation == true && Alert.GetScope() == "Ip"
decisions:
 - type: ban
   duration: 4h
on_success: break
"""
MACHINE, PASSWORD = "nodeA", "nodeguard-test-machine-password"
UNPACKED = Path(__file__).resolve().parent.parent / ".venv" / "crowdsec" / "usr" / "bin"  # deploy/setup.sh --dev
BIN = {tool: str(UNPACKED / tool) if (UNPACKED / tool).exists() else shutil.which(tool) for tool in ("crowdsec", "cscli")}


def require_crowdsec() -> None:
    """Missing crowdsec fails under CI (deploy/setup.sh installs it), skips elsewhere."""
    if all(BIN.values()):
        return
    if os.environ.get("CI") == "true":
        pytest.fail("crowdsec and cscli are not installed (deploy/setup.sh --dev installs them)")
    pytest.skip("crowdsec and cscli are not installed (apt-get install crowdsec; see deploy/setup.sh)")


class Lapi:
    def __init__(self, ns, root: Path, listen: str):
        self.ns, self.root, self.listen = ns, root, listen
        self.url = f"http://{listen}/"
        self.config = root / "etc" / "config.yaml"
        for d in ("etc", "data", "log", "hub"):
            (root / d).mkdir(parents=True, exist_ok=True)
        (root / "etc" / "profiles.yaml").write_text(PROFILES)
        (root / "etc" / "simulation.yaml").write_text("simulation: off\n")
        (root / "etc" / "acquis.yaml").write_text("")
        self.config.write_text(f"""\
common: {{daemonize: false, log_media: file, log_level: warning, log_dir: {root}/log/, working_dir: .}}
config_paths:
  config_dir: {root}/etc/
  data_dir: {root}/data/
  simulation_path: {root}/etc/simulation.yaml
  hub_dir: {root}/hub/
  index_path: {root}/hub/.index.json
  notification_dir: {root}/etc/notifications/
  plugin_dir: /usr/lib/crowdsec/plugins/
crowdsec_service: {{acquisition_path: {root}/etc/acquis.yaml}}
cscli: {{output: json}}
db_config: {{type: sqlite, db_path: {root}/data/crowdsec.db, log_level: warning, use_wal: true}}
api:
  client: {{credentials_path: {root}/etc/local_api_credentials.yaml}}
  server:
    log_level: warning
    listen_uri: {listen}
    profiles_path: {root}/etc/profiles.yaml
    trusted_ips: [127.0.0.1]
prometheus: {{enabled: false}}
""")
        self.proc: subprocess.Popen | None = None

    def cscli(self, *args: str) -> str:
        res = self.ns.run([BIN["cscli"], "-c", str(self.config), *args], check=False)
        assert res.returncode == 0, f"cscli {' '.join(args)}: {res.stdout}{res.stderr}"
        return res.stdout

    def start(self, timeout: float = 20.0) -> None:
        # the machine's credentials first: cscli decisions add logs in with them
        self.cscli("machines", "add", MACHINE, "--password", PASSWORD, "-f",
                   str(self.root / "etc" / "local_api_credentials.yaml"), "--url", self.url, "--force")
        self.proc = self.ns.popen([BIN["crowdsec"], "-c", str(self.config), "-no-cs"], stdout=subprocess.DEVNULL,
                                  stderr=open(self.root / "log" / "stderr.log", "w"))
        deadline = time.monotonic() + timeout
        host, port = self.listen.rsplit(":", 1)
        while self.ns.run(["bash", "-c", f"exec 3<>/dev/tcp/{host}/{port}"], check=False).returncode:
            assert self.proc.poll() is None, f"crowdsec exited: {(self.root / 'log' / 'stderr.log').read_text()}"
            assert time.monotonic() < deadline, "the LAPI did not listen"
            time.sleep(0.05)

    def bouncer_key(self, name: str = "nodeguard") -> str:
        key = secrets.token_hex(16)
        self.cscli("bouncers", "add", name, "-k", key)
        return key

    def decisions(self) -> list[dict]:
        """Every decision the LAPI holds (--all: without it cscli lists only origins cscli and crowdsec)."""
        alerts = json.loads(self.cscli("decisions", "list", "--all", "-o", "json") or "null") or []
        return [d for a in alerts for d in a.get("decisions") or []]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


@contextmanager
def lapi(ns, root: Path, listen: str):
    require_crowdsec()
    server = Lapi(ns, root, listen)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def secret_file(path: Path, text: str) -> str:
    """A secret as nodeguard reads it: root's alone (configfile.read_config)."""
    path.parent.mkdir(mode=0o755, exist_ok=True)
    for d in (path.parent, path.parent.parent):  # pytest's tmp dirs are 0700, under a sticky /tmp
        os.chmod(d, 0o755)
    path.write_text(text + "\n")
    os.chmod(path, 0o600)
    return str(path)
