"""A real systemd (252) service manager for tests, where systemd is not PID 1.

``systemd --user`` run as root applies the same execution sandbox as PID 1 does (namespaces,
capability bounding set, seccomp filters, MemoryDenyWriteExecute, ReadWritePaths), and it only
insists that ``/run/systemd/system`` exists. So it runs in a private mount namespace
(``unshare -m``) with an empty tmpfs over ``/run``, as at boot before other services filled it
(``/run/netns`` bound back in; ``/run/systemd`` holds the "inaccessible" nodes PID 1 would have
made), and a tmpfs over ``/mnt`` for its directories. The host's mounts, ``/run`` and ``/mnt`` stay
as they were. Commands reach the manager with ``nsenter``; files inside are read through
``/proc/<pid>/root``.

Differences from PID 1 that matter here: the unit directories of a user manager sit under
``$XDG_CONFIG_HOME`` (StateDirectory, ConfigurationDirectory, LogsDirectory) and
``$XDG_RUNTIME_DIR`` (RuntimeDirectory), and IPAddressDeny= needs cgroup v2 with BPF, which this
machine lacks (the manager says so and carries on).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

SYSTEMD = Path("/lib/systemd/systemd")
BASE = "/mnt/ngsd"  # inside the private mount namespace only
ENV = {"XDG_RUNTIME_DIR": f"{BASE}/run", "XDG_CONFIG_HOME": f"{BASE}/config",
       "XDG_STATE_HOME": f"{BASE}/state", "HOME": f"{BASE}/home", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}

_SETUP = f"""
set -e
mount -t tmpfs -o mode=0755 tmpfs /mnt
mkdir -p {BASE}/run {BASE}/config/systemd/user {BASE}/state {BASE}/home {BASE}/probe {BASE}/netns
chmod 0700 {BASE}/run
mount --rbind /run/netns {BASE}/netns
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/netns /run/systemd/system /run/systemd/inaccessible
mount --rbind {BASE}/netns /run/netns
cd /run/systemd/inaccessible
touch reg; mkdir dir; mknod chr c 0 0; mknod blk b 0 0; mkfifo fifo
python3 -c 'import socket; socket.socket(socket.AF_UNIX).bind("sock")'
chmod 000 reg dir chr blk fifo sock
cd /
exec {SYSTEMD} --user
"""


def problem() -> str | None:
    if os.geteuid() != 0:
        return "running systemd units needs root"
    missing = [t for t in ("unshare", "nsenter", "systemctl", "python3") if not shutil.which(t)]
    if not SYSTEMD.exists():
        missing.append(str(SYSTEMD))
    return f"missing: {', '.join(missing)} (apt-get install systemd util-linux python3)" if missing else None


class UserManager:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", _SETUP],
                                     env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 20
        while True:
            res = self.systemctl("is-system-running", check=False)
            if res.stdout.strip() in ("running", "degraded"):
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                out = self.proc.stdout.read() if self.proc.poll() is not None else ""
                self.close()
                raise AssertionError(f"systemd --user did not come up: {res.stdout} {res.stderr} {out}")
            time.sleep(0.1)

    def run(self, args: list[str], check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        res = subprocess.run(["nsenter", "--target", str(self.proc.pid), "--mount", "--", *args],
                             env=ENV, capture_output=True, text=True, timeout=timeout)
        if check and res.returncode != 0:
            raise AssertionError(f"{' '.join(args)} -> {res.returncode}\n{res.stdout}\n{res.stderr}")
        return res

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run(["systemctl", "--user", *args], check=check)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.systemctl("show", unit, *(f"--property={p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def path(self, inside: str) -> Path:
        """A path inside the manager's mount namespace, as the test process can reach it."""
        return Path(f"/proc/{self.proc.pid}/root{inside}")

    def install(self, name: str, text: str) -> None:
        self.path(f"{BASE}/config/systemd/user/{name}").write_text(text)
        self.systemctl("daemon-reload")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.systemctl("exit", check=False)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
