"""Kernel tests need root, network namespaces and the packet tools.

Under CI=true a missing requirement fails the test (CI must never pass by skipping);
elsewhere the test is skipped with the reason.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import netlab

TOOLS = ("ip", "nft", "iptables-nft-restore", "iptables-legacy-restore", "hping3", "conntrack", "ping")


def _kernel_problem() -> str | None:
    if os.geteuid() != 0:
        return "kernel tests need root (network namespaces, CAP_NET_ADMIN)"
    missing = [t for t in TOOLS if not shutil.which(t)]
    if missing:
        return f"missing tools: {', '.join(missing)} (apt-get install nftables iptables hping3 conntrack iputils-ping iproute2)"
    return None


# NODEGUARD_TEST_BUSY=N (N >= 1): N processes that only spin, one core each, for the whole session. The
# suite must pass on a noisy machine too (issue 16: five tests passed alone and failed under light load);
# this makes "the suite under one busy core" one command: NODEGUARD_TEST_BUSY=1 pytest tests.
_SPIN = """
import ctypes, os, signal, sys
ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: dies with pytest, even after its kill -9
if os.getppid() != int(sys.argv[1]):
    sys.exit(0)
while True:
    pass
"""


def _busy_count() -> int:
    value = os.environ.get("NODEGUARD_TEST_BUSY", "0")
    if not value.isdigit():
        raise pytest.UsageError(f"NODEGUARD_TEST_BUSY={value!r}: a number of busy cores (0: none)")
    return int(value)


@pytest.fixture(scope="session", autouse=True)
def busy_cores():
    """Unrelated CPU load for the session when NODEGUARD_TEST_BUSY asks for it; killed at the end."""
    procs = [subprocess.Popen([sys.executable, "-c", _SPIN, str(os.getpid())]) for _ in range(_busy_count())]
    try:
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()


def pytest_configure(config) -> None:
    _busy_count()  # a bad value stops the run before any test


def pytest_report_header(config) -> str | None:
    n = _busy_count()
    return f"NODEGUARD_TEST_BUSY={n}: {n} busy-loop process(es) run beside the tests" if n else None


@pytest.fixture(scope="session")
def kernel() -> None:
    problem = _kernel_problem()
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and {problem}", pytrace=False)
        pytest.skip(problem)


@pytest.fixture
def exclusive(kernel):
    """One kernel test at a time on this machine: floods and CPU figures from two test runs
    (two developers, or a bench beside CI) would distort each other on 2 cores."""
    if os.environ.get("NODEGUARD_TEST_LOCK") == "off":  # a developer who accepts noisy neighbours
        yield
        return
    with open("/tmp/nodeguard-kernel-tests.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@pytest.fixture
def ns(exclusive):
    with netlab.namespace() as n:
        yield n


@pytest.fixture
def lab(exclusive):
    with netlab.lab() as pair:
        yield pair


@pytest.fixture
def write_policy(tmp_path: Path):
    """Writes a policy under tmp_path. Without a ``watcher`` section of its own it gets one whose
    state_file (and so the sampler's odds file beside it) is under tmp_path: the default,
    /run/nodeguard, is the host's, and another test's odds left there changed what a later render says."""
    def write(text: str, name: str = "policy.yaml") -> str:
        path = tmp_path / name
        text = textwrap.dedent(text)
        if "watcher:" not in text and "state_file" not in text:
            text = ("" if text.strip() == "{}" else text.rstrip("\n") + "\n") + \
                f"watcher:\n  state_file: {tmp_path}/state/watch.json\n"
        path.write_text(text)
        return str(path)
    return write


def pytest_collection_modifyitems(config, items):
    """``@pytest.mark.backends("nft", "iptables-nft")``: the other backends' variants are deselected, not
    skipped. Used where iptables-legacy would repeat iptables-nft's rendering and xt matches to keep the
    suite under 15 minutes; legacy's own kernel path keeps its variants of the other tests."""
    import netlab

    keep, drop = [], []
    for item in items:
        mark = item.get_closest_marker("backends")
        params = getattr(getattr(item, "callspec", None), "params", {})
        backend = next((v for v in params.values() if isinstance(v, str) and v in netlab.BACKENDS), None)
        (drop if mark and backend and backend not in mark.args else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
