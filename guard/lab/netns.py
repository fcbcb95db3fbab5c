"""Network namespaces for the demo, the kernel tests and the benches; never the host's ruleset.

Every namespace is named ``<prefix>-<owner pid>-<role>``, so leftovers of a run that was killed
with SIGKILL (which no process can clean up after itself) are recognised and removed by the next
run (``remove_stale``). Every command runs under ``ip netns exec``.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

Failure = Callable[[subprocess.CompletedProcess], Exception]
N = TypeVar("N", bound="Netns")
BENCH_NETNS_ENV = "NODEGUARD_BENCH_NETNS"
TERM_THEN_KILL = (signal.SIGTERM, signal.SIGKILL)


def one_line(res: subprocess.CompletedProcess) -> Exception:
    """A failed command as one line: the demo lists its failures one a line."""
    return RuntimeError(f"{' '.join(res.args)} -> exit {res.returncode}: {(res.stderr or res.stdout).strip()[:400]}")


def sh(args: list[str], check: bool = True, timeout: float = 60, failure: Failure = one_line,
       **kw) -> subprocess.CompletedProcess:
    """Run ``args`` with its output captured as text; ``failure(result)`` is raised on a non-zero exit."""
    res = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)
    if check and res.returncode != 0:
        raise failure(res)
    return res


class Netns:
    """One named namespace. ``timeout`` and ``failure`` are the defaults of ``run``: a subclass sets
    its own (the tests wait longer and fail with the whole output)."""

    timeout: float = 60
    failure: Failure = staticmethod(one_line)

    def __init__(self, name: str):
        self.name = name

    @classmethod
    def owned(cls: type[N], prefix: str, role: str) -> N:
        """The namespace ``role`` of this process: its pid in the name lets ``remove_stale`` find it."""
        return cls(f"{prefix}-{os.getpid()}-{role}")

    def argv(self, cmd: str | list[str]) -> list[str]:
        """``cmd`` (a list, or a shell-like string split as the shell would) run inside this namespace."""
        args = cmd if isinstance(cmd, list) else shlex.split(cmd)
        return ["ip", "netns", "exec", self.name, *args]

    def run(self, cmd: str | list[str], check: bool = True, timeout: float | None = None,
            **kw) -> subprocess.CompletedProcess:
        return sh(self.argv(cmd), check=check, timeout=self.timeout if timeout is None else timeout, failure=self.failure, **kw)

    def popen(self, cmd: str | list[str], **kw) -> subprocess.Popen:
        """``cmd`` started inside this namespace, its stdout and stderr piped (text) unless said otherwise."""
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        return subprocess.Popen(self.argv(cmd), text=True, **kw)

    def sysctl(self, key: str, value: str) -> None:
        self.run(["sysctl", "-qw", f"{key}={value}"])

    def create(self) -> None:
        sh(["ip", "netns", "add", self.name], timeout=self.timeout, failure=self.failure)
        self.run(["ip", "link", "set", "lo", "up"])

    def remove(self, signals: tuple[int, ...] = TERM_THEN_KILL) -> None:
        remove_namespace(self.name, signals)


@contextmanager
def namespace(prefix: str, role: str, cls: type[N] = Netns,
              signals: tuple[int, ...] = TERM_THEN_KILL) -> Iterator[N]:
    """A new namespace of this process, removed (with every process inside) however the block ends."""
    ns = cls.owned(prefix, role)
    try:
        ns.create()
        yield ns
    finally:
        ns.remove(signals)


def veth(a: Netns, a_if: str, b: Netns, b_if: str) -> None:
    """A veth pair, ``a_if`` in ``a`` and ``b_if`` in ``b``, both up."""
    sh(["ip", "link", "add", a_if, "netns", a.name, "type", "veth", "peer", "name", b_if, "netns", b.name],
       timeout=a.timeout, failure=a.failure)
    a.run(["ip", "link", "set", a_if, "up"])
    b.run(["ip", "link", "set", b_if, "up"])


def add_uplink(ns: Netns, ifname: str = "ngu0") -> None:
    """A veth end with an address and the default route, for a namespace that needs no peer (what
    ``interfaces: auto`` picks as the uplink)."""
    ns.run(["ip", "link", "add", ifname, "type", "veth", "peer", "name", ifname + "p"])
    ns.run(["ip", "addr", "add", "192.0.2.1/24", "dev", ifname])
    ns.run(["ip", "link", "set", ifname, "up"])
    ns.run(["ip", "link", "set", ifname + "p", "up"])
    ns.run(["ip", "route", "add", "default", "via", "192.0.2.254"])


def reexec_in_netns(tag: str) -> Netns:
    """Re-run this script inside a fresh namespace and exit with its status; in that re-run, return
    the namespace it runs in. For benches: their whole body runs away from the host's ruleset."""
    inside = os.environ.get(BENCH_NETNS_ENV)
    if inside:
        return Netns(inside)
    remove_stale("ngbench")
    with namespace("ngbench", tag) as ns:
        rc = subprocess.call(ns.argv([sys.executable, *sys.argv]), env=dict(os.environ, **{BENCH_NETNS_ENV: ns.name}))
    sys.exit(rc)


def _alive(pid: int) -> bool:
    """Running, not a zombie: a killed run's processes are reparented to PID 1, and until it reaps them
    (some inits take seconds) kill(pid, 0) still succeeds; waiting for those cost 2 s per namespace."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def namespaces(prefix: str) -> list[str]:
    out = sh(["ip", "netns", "list"], check=False).stdout
    return [ln.split()[0] for ln in out.splitlines() if ln.startswith(prefix + "-")]


def remove_namespace(name: str, signals: tuple[int, ...] = TERM_THEN_KILL) -> None:
    """End every process inside ``name`` (by pid, with each of ``signals`` in turn, up to 2 s each),
    then delete it (its veths go with it). A process left running would keep a core busy while the
    next test or flood measures."""
    for sig in signals:
        pids = [int(p) for p in sh(["ip", "netns", "pids", name], check=False).stdout.split() if p.isdigit()]
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 2
        while pids and any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
    sh(["ip", "netns", "del", name], check=False)


def remove_stale(prefix: str) -> list[str]:
    """Remove ``<prefix>-<pid>-*`` namespaces whose owner process is gone (a run killed by SIGKILL)."""
    removed = []
    for name in namespaces(prefix):
        m = re.match(rf"^{re.escape(prefix)}-(\d+)-", name)
        if m and not _alive(int(m[1])):
            remove_namespace(name)
            removed.append(name)
    return removed
