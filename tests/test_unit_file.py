"""systemd/nodeguard.service: scored by systemd-analyze, verified, and run for real under systemd.

The run uses a systemd 252 user manager as root in a private mount namespace (tests/sdharness.py),
which applies the unit's sandbox as PID 1 would; the service joins a test network namespace
(NetworkNamespacePath=), so its sysctl writes and nft tables never reach the host's.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

import sdharness
import netlab
from netlab import HELPERS, ROOT

UNIT = ROOT / "systemd" / "nodeguard.service"
SHIPPED_BIN = "/opt/nodeguard/bin/nodeguard"
MAX_EXPOSURE = 1.8  # measured: systemd-analyze 252 scores the unit 1.8 "OK"
TOUCH_LOCK = "+/bin/touch /run/xtables.lock"
NET_ADMIN_NET_RAW = f"{(1 << 12) | (1 << 13):016x}"


def directives(text: str) -> dict[str, list[str]]:
    """Key → every value, in order (unit files repeat keys: ReadWritePaths=, SystemCallFilter=)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_systemd_analyze_scores_the_unit_at_most_1_8():
    res = subprocess.run(["systemd-analyze", "security", "--offline=true", str(UNIT)],
                         capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", res.stdout)
    assert m, res.stdout + res.stderr
    assert float(m[1]) <= MAX_EXPOSURE, res.stdout


def test_systemd_analyze_verify_passes(tmp_path):
    """verify insists that ExecStart's binary exists. The shipped path is where deploy/setup.sh
    installs this checkout (a venv at /opt/nodeguard with the `nodeguard` console script), so the
    copy verified points at the same console script of the environment running the tests."""
    setup = (ROOT / "deploy" / "setup.sh").read_text()
    assert "venv=/opt/nodeguard" in setup and 'nodeguard = "guard.cli:main"' in (ROOT / "pyproject.toml").read_text()
    installed = Path(sys.executable).parent / "nodeguard"
    assert installed.exists(), f"{installed} missing: install the checkout (pip install -e .)"
    copy = tmp_path / "nodeguard.service"
    copy.write_text(UNIT.read_text().replace(SHIPPED_BIN, str(installed)))
    res = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "nodeguard.service" not in res.stderr, res.stderr


def test_the_unit_says_what_the_daemon_needs():
    d = directives(UNIT.read_text())
    assert d["Type"] == ["notify"] and d["NotifyAccess"] == ["main"] and d["Restart"] == ["always"]
    assert d["ExecStart"] == [f"{SHIPPED_BIN} run"]
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert d["StartLimitIntervalSec"] == ["0"] and d["Before"] == ["kubelet.service"]
    assert "Wants" not in d and "Requires" not in d  # ordering only
    assert d["CapabilityBoundingSet"] == ["CAP_NET_ADMIN CAP_NET_RAW"]
    assert d["ReadOnlyPaths"] == ["/run"]
    # one fixed command runs outside the sandbox ("+"), nothing else with more privilege
    assert [v for k, vs in d.items() if k.startswith("Exec") for v in vs if v.startswith(("+", "!"))] == [TOUCH_LOCK]
    assert sorted(" ".join(d["ReadWritePaths"]).split()) == sorted([
        "/proc/sys/net/ipv4/tcp_syncookies", "/proc/sys/net/ipv4/tcp_timestamps",
        "-/proc/sys/net/netfilter/nf_conntrack_tcp_loose"])
    assert not (ROOT / "systemd" / "nodeguard-sample.service").exists()  # the daemon runs the sampler


# --- the sandbox, for real ----------------------------------------------------------------
@pytest.fixture
def manager(ns):
    problem = sdharness.problem()
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and {problem}", pytrace=False)
        pytest.skip(problem)
    m = sdharness.UserManager()
    try:
        yield m
    finally:
        m.close()


def _stage_probe(m: sdharness.UserManager) -> str:
    """The probe and what it imports, copied to where the sandbox can read them (not /root, not
    /tmp: ProtectHome= and PrivateTmp= hide those). Debian's python3 runs it, as on a node."""
    import netfilterqueue
    import nftables

    lib = m.path(f"{sdharness.BASE}/probe/lib")
    (lib / "guard").mkdir(parents=True)
    for name in ("__init__.py", "notify.py"):
        shutil.copy(ROOT / "guard" / name, lib / "guard" / name)
    shutil.copy(nftables.__file__, lib / "nftables.py")
    shutil.copytree(Path(netfilterqueue.__file__).parent, lib / "netfilterqueue")
    shutil.copy(HELPERS / "unit_probe.py", m.path(f"{sdharness.BASE}/probe/unit_probe.py"))
    return f"{sdharness.BASE}/probe"


def _wait(cond, timeout: float, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what() if callable(what) else what}")


def test_the_shipped_sandbox_lets_the_daemon_work_and_nothing_more(manager, ns):
    probe = _stage_probe(manager)
    unit = UNIT.read_text().replace(f"ExecStart={SHIPPED_BIN} run", f"ExecStart=/usr/bin/python3 {probe}/unit_probe.py")
    unit = unit.replace("[Service]\n", f"[Service]\nNetworkNamespacePath=/run/netns/{ns.name}\n"
                                       f"Environment=PYTHONPATH={probe}/lib\n", 1)
    manager.install("nodeguard.service", unit)

    # Type=notify: start returns once the probe said READY=1 through guard.notify
    manager.systemctl("start", "nodeguard.service")
    st = manager.show("nodeguard.service", "ActiveState", "StatusText")
    assert st == {"ActiveState": "active", "StatusText": "probe ready"}
    state_dir = manager.path(f"{sdharness.BASE}/config/nodeguard")
    facts = json.loads((state_dir / "probe.json").read_text())

    assert facts["cap_eff"] == NET_ADMIN_NET_RAW and facts["cap_bnd"] == NET_ADMIN_NET_RAW
    assert facts["child_cap_eff"] == {"ok": NET_ADMIN_NET_RAW}
    assert facts["no_new_privs"] == "1" and facts["seccomp"] == "2"
    # ProtectKernelTunables= with exactly three writable sysctls (in the test netns)
    assert facts["sysctl"] == {"/proc/sys/net/ipv4/tcp_syncookies": {"ok": "1"},
                               "/proc/sys/net/ipv4/tcp_timestamps": {"ok": "1"},
                               "/proc/sys/net/netfilter/nf_conntrack_tcp_loose": {"ok": "0"}}
    assert facts["sysctl_forbidden"] == {"errno": "EROFS"}
    assert ns.run("sysctl -n net.netfilter.nf_conntrack_tcp_loose").stdout.strip() == "0"
    # MemoryDenyWriteExecute=: W+X memory refused, yet ctypes callbacks, libnftables, nfqueue work
    assert facts["rwx_mmap"] == {"errno": "EPERM"}
    assert facts["ctypes_callback"] == {"ok": [1, 2, 3, 4, 5]}
    assert facts["libnftables"] == {"ok": "probe"} and facts["nfqueue"] == {"ok": "bound"}
    assert "inet probe" in ns.run("nft list tables").stdout
    assert facts["loopback_tcp"] == {"ok": "x"}
    # directories: its own are writable with their modes; /etc is not
    assert facts["state_dir"] == {"ok": "0o750"} and facts["logs_dir"] == {"ok": "0o750"}
    assert facts["runtime_dir"] == {"ok": "0o750"}
    assert facts["etc"] == {"errno": "EROFS"} and facts["run"] == {"errno": "EROFS"}
    assert facts["watchdog_s"] == 30.0

    # systemctl reload: ExecReload sends SIGHUP; RELOADING=1 ... READY=1. systemd 252 completes the
    # reload job when kill exits, so the daemon's own RELOADING=1/READY=1 may come just after it.
    manager.systemctl("reload", "nodeguard.service")
    _wait(lambda: json.loads((state_dir / "probe.json").read_text())["reloads"] == 1, 5, "the reload")
    _wait(lambda: manager.show("nodeguard.service", "StatusText", "ActiveState") ==
          {"StatusText": "reloaded 1", "ActiveState": "active"}, 5, "READY=1 after the reload")

    # a hung main loop stops pinging: systemd aborts it and restarts it (operator drop-in: 2 s)
    dropin = manager.path(f"{sdharness.BASE}/config/systemd/user/nodeguard.service.d")
    dropin.mkdir()
    (dropin / "watchdog.conf").write_text("[Service]\nWatchdogSec=2s\n")
    manager.systemctl("daemon-reload")
    manager.systemctl("restart", "nodeguard.service")
    assert json.loads((state_dir / "probe.json").read_text())["watchdog_s"] == 2.0
    manager.systemctl("kill", "--signal=SIGUSR1", "nodeguard.service")
    _wait(lambda: manager.show("nodeguard.service", "Result")["Result"] == "watchdog", 10, "the watchdog to fire")
    _wait(lambda: manager.show("nodeguard.service", "NRestarts", "ActiveState") ==
          {"NRestarts": "1", "ActiveState": "active"}, 15, "the restart")

    manager.systemctl("stop", "nodeguard.service")
    assert manager.show("nodeguard.service", "ActiveState", "Result") == {"ActiveState": "inactive", "Result": "success"}


def _bind(m: sdharness.UserManager, source: Path, name: str) -> str:
    """``source`` bound at BASE/name in the manager's namespace, where the sandbox can read it
    even when the checkout or the venv lives under /root, /home or /tmp (hidden from the unit)."""
    inside = f"{sdharness.BASE}/{name}"
    m.path(inside).mkdir()
    m.run(["mount", "--bind", str(source), inside])
    return inside


def test_at_boot_the_unit_starts_on_iptables_legacy_before_the_xtables_lock_exists(manager, ns):
    """Boot order: /run is empty (no kube-proxy yet, so no /run/xtables.lock) and read-only in the
    sandbox. The real `nodeguard run` of this checkout, on Debian's python3 as deploy/setup.sh's venv
    runs it, with the iptables-legacy backend in the test namespace. Without the ExecStartPre= line
    iptables-legacy-restore cannot create the lock and the daemon never becomes ready; with it, the
    unit starts and the chains are in place."""
    netlab.add_uplink(ns)  # what `interfaces: auto` picks
    src, site = _bind(manager, ROOT, "src"), _bind(manager, Path(sysconfig.get_paths()["purelib"]), "site")
    conf, run, logs = (f"{sdharness.BASE}/{d}/nodeguard" for d in ("config", "run", "config/log"))
    manager.path(conf).mkdir(parents=True)
    manager.path(f"{conf}/config.yaml").write_text(netlab.backend_policy(
        "iptables-legacy", f"watcher:\n  state_file: {run}/watch.json\nsampler:\n  log: {logs}/attacks.jsonl\n"))
    log = manager.path(f"{conf}/daemon.log")  # no journald in the harness
    unit = UNIT.read_text().replace(
        f"ExecStart={SHIPPED_BIN} run",
        f"ExecStart=/usr/bin/python3 -m guard run -c {conf}/config.yaml --last-good {conf}/last-good.yaml")
    unit = unit.replace("[Service]\n", f"[Service]\nNetworkNamespacePath=/run/netns/{ns.name}\n"
                                       f"Environment=PYTHONPATH={src}:{site}\nEnvironment=NODEGUARD_DATA_DIRS={conf}:{run}:{logs}\n"
                                       f"StandardError=append:{conf}/daemon.log\n", 1)
    lock = manager.path("/run/xtables.lock")
    assert not lock.exists()

    unfixed = re.sub(r"^ExecStartPre=.*\n", "", unit, flags=re.M)
    assert unfixed != unit
    manager.install("nodeguard.service", unfixed)
    manager.systemctl("start", "--no-block", "nodeguard.service")
    daemon_log = lambda: log.read_text() if log.exists() else ""  # noqa: E731
    _wait(lambda: "can't open lock file /run/xtables.lock: Read-only file system" in daemon_log(), 15,
          lambda: f"iptables-legacy-restore to fail on the lock (the daemon's log: {daemon_log()[-2000:]!r})")
    assert manager.show("nodeguard.service", "ActiveState")["ActiveState"] == "activating"  # no READY=1
    assert not lock.exists()
    manager.systemctl("stop", "nodeguard.service")

    manager.install("nodeguard.service", unit)
    manager.systemctl("start", "nodeguard.service")  # Type=notify: returns at READY=1
    st = manager.show("nodeguard.service", "ActiveState", "StatusText")
    assert st["ActiveState"] == "active" and st["StatusText"].startswith("iptables-legacy; in sync"), st
    info = lock.stat()
    assert stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == 0
    assert ":NODEGUARD-PRE - " in ns.run("iptables-legacy-save -t raw").stdout
    manager.systemctl("stop", "nodeguard.service")
