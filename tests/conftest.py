"""Kernel tests need root, network namespaces and the packet tools.

Under CI=true a missing requirement fails the test (CI must never pass by skipping);
elsewhere the test is skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import settings

import netlab
from guard.lab.lock import machine_lock

# Property tests assert what holds, never how fast: a shared CI machine ran one example over
# Hypothesis' default 200 ms deadline (355 ms) and failed a test that has no timing in it.
settings.register_profile("nodeguard", deadline=None)
settings.load_profile("nodeguard")

# Every program the kernel tests, tests/netlab.py and tests/helpers run, and the ones nodeguard itself runs
# under them (guard/backend/tools.py: {ip,ip6}tables-{nft,legacy}-{save,restore}, ipset). tests/sdharness.py
# checks its own (unshare, nsenter, systemctl) for test_unit_file.
TOOLS = ("ip", "nft", "iptables-nft", "iptables-legacy",
         *(f"{ip}tables-{flavour}-{kind}" for ip in ("ip", "ip6") for flavour in ("nft", "legacy")
           for kind in ("save", "restore")),
         "ipset", "hping3", "conntrack", "ping", "sysctl", "setpriv", "timeout", "unshare", "sh",
         "tc", "clang")  # tc, clang: test_datapath.py attaches a tc filter and XDP it compiles (tests/bpf/)
TOOL_PACKAGES = "nftables iptables ipset hping3 conntrack iputils-ping iproute2 procps util-linux coreutils clang"

# nodeguard's host paths (policy/load.py, lastgood.py): no test may read or write them (every test has its
# own, under tmp_path), so a node's real policy, state or logs never change a test's result, nor the
# reverse. Checked over the whole session (host_paths_untouched).
HOST_DIRS = ("/etc/nodeguard", "/run/nodeguard", "/var/log/nodeguard", "/var/lib/nodeguard")


def _kernel_problem() -> str | None:
    if os.geteuid() != 0:
        return "kernel tests need root (network namespaces, CAP_NET_ADMIN)"
    missing = [t for t in TOOLS if not shutil.which(t)]
    if missing:
        return f"missing tools: {', '.join(missing)} (apt-get install {TOOL_PACKAGES})"
    return None


def host_snapshot(dirs: tuple[str, ...] = HOST_DIRS) -> dict[str, tuple[int, int, int]]:
    """path -> (file type, size, mtime in ns) of everything under ``dirs`` (the dirs themselves included,
    whose mtime moves when an entry is created, renamed or removed); a missing dir is simply absent."""
    out = {}
    for top in dirs:
        if not os.path.lexists(top):
            continue
        for here, subdirs, files in os.walk(top):
            for path in (here, *(os.path.join(here, n) for n in subdirs + files)):
                st = os.lstat(path)
                out[path] = (stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns)
    return out


def snapshot_changes(before: dict, after: dict) -> list[str]:
    return sorted([f"created {p}" for p in after.keys() - before.keys()]
                  + [f"removed {p}" for p in before.keys() - after.keys()]
                  + [f"changed {p}" for p in before.keys() & after.keys() if before[p] != after[p]])


@pytest.fixture(scope="session", autouse=True)
def data_dirs(tmp_path_factory):
    """The tests' directories are where nodeguard may write (configfile.data_dirs), for this process and
    every nodeguard it starts: their policies put the state and the logs under tmp_path (own_paths)."""
    base = str(tmp_path_factory.getbasetemp())
    old = os.environ.get("NODEGUARD_DATA_DIRS")
    os.environ["NODEGUARD_DATA_DIRS"] = base
    yield base
    if old is None:
        del os.environ["NODEGUARD_DATA_DIRS"]
    else:
        os.environ["NODEGUARD_DATA_DIRS"] = old


@pytest.fixture(scope="session", autouse=True)
def host_paths_untouched():
    """Fails the run (an error at the last test's teardown) when anything under HOST_DIRS was created,
    removed or written while the tests ran: some test used nodeguard's host paths instead of its own."""
    before = host_snapshot()
    yield
    changes = snapshot_changes(before, host_snapshot())
    if changes:
        pytest.fail("the tests changed nodeguard's host paths (a test without its own -c, state_file, "
                    f"sampler.log or --last-good?): {'; '.join(changes[:20])}", pytrace=False)
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
    """Unrelated CPU load for the session when NODEGUARD_TEST_BUSY asks for it; killed at the end.
    Under pytest-xdist every worker runs session fixtures: only the first one spins, so N means N cores."""
    first = os.environ.get("PYTEST_XDIST_WORKER", "gw0") == "gw0"
    procs = [subprocess.Popen([sys.executable, "-c", _SPIN, str(os.getpid())]) for _ in range(_busy_count() * first)]
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


def unmet(problem: str | None) -> None:
    """A requirement the test cannot run without: fails under CI=true, skips elsewhere."""
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and {problem}", pytrace=False)
        pytest.skip(problem)


@pytest.fixture(scope="session")
def kernel() -> None:
    unmet(_kernel_problem())


@pytest.fixture(scope="session")
def root() -> None:
    """Pure tests that need root (chown, setpriv to run as nobody) and no netfilter: like ``kernel``,
    they fail under CI=true when they cannot run, and are skipped elsewhere."""
    problem = "needs root (chown, setpriv)" if os.geteuid() != 0 else \
        None if shutil.which("setpriv") else "needs setpriv (apt-get install util-linux)"
    unmet(problem and f"this test {problem}")


@pytest.fixture(scope="session")
def promtool() -> str:
    """Prometheus' promtool (Debian: the prometheus package; deploy/setup.sh --dev installs it)."""
    path = shutil.which("promtool")
    unmet(None if path else "no promtool (apt-get install --no-install-recommends prometheus)")
    return path


@pytest.fixture
def exclusive(kernel, request):
    """One kernel test at a time on this machine: floods and CPU figures from two test runs
    (two developers, or a bench beside CI) would distort each other on 2 cores. A test marked
    ``calm`` (it floods nothing and times nothing) runs beside the others, as pure tests do."""
    if os.environ.get("NODEGUARD_TEST_LOCK") == "off" or request.node.get_closest_marker("calm"):
        yield  # off: a developer who accepts noisy neighbours
        return
    with machine_lock():
        yield


@pytest.fixture
def ns(exclusive):
    with netlab.namespace() as n:
        yield n


@pytest.fixture
def lab(exclusive):
    with netlab.lab() as pair:
        yield pair


def own_paths(text: str, where: Path) -> str:
    """``text`` (a policy) with its host paths moved under ``where``: a ``watcher`` section with the
    state_file (and so the sampler's odds file beside it) and a ``sampler`` section with the attack log,
    unless the policy has such a section of its own (then it names its own paths). The defaults,
    /run/nodeguard and /var/log/nodeguard, are the host's: another test's odds left there changed what
    a later render said, and a node's own files would change a test's result."""
    text = textwrap.dedent(text)
    text = "" if text.strip() == "{}" else text.rstrip("\n") + "\n" if text.strip() else ""
    if "watcher:" not in text and "state_file" not in text:
        text += f"watcher:\n  state_file: {where}/state/watch.json\n"
    if "sampler:" not in text:
        text += f"sampler:\n  log: {where}/log/attacks.jsonl\n"
    return text


@pytest.fixture
def write_policy(tmp_path: Path):
    """Writes a policy under tmp_path, with its host paths there too (own_paths)."""
    def write(text: str, name: str = "policy.yaml") -> str:
        path = tmp_path / name
        path.write_text(own_paths(text, tmp_path))
        return str(path)
    return write


@pytest.fixture
def default_policy(write_policy) -> str:
    """The built-in default policy with this test's own paths: what ``nodeguard <verb>`` without ``-c``
    would use on a node with no /etc/nodeguard/config.yaml, minus the host's state and log."""
    return write_policy("{}", "default.yaml")


GOLDEN = Path(__file__).resolve().parent / "golden"


def pytest_addoption(parser):
    parser.addoption("--update-goldens", action="store_true",
                     help="rewrite tests/golden/ from the code; every test that wrote one fails (review the diff, "
                          "then run again without this option: an update never passes)")
    parser.addoption("--image", action="store_true",
                     help="also run the tests marked image (tests/test_image.py): they build the DaemonSet's "
                          "image, minutes unless NODEGUARD_IMAGE_DIR holds an earlier build")


@pytest.fixture
def golden(request):
    """``golden(name, text)``: ``text`` must be tests/golden/<name> exactly. With ``--update-goldens``
    the file is written instead and the test fails at teardown, after all its goldens are written."""
    update = request.config.getoption("--update-goldens")
    written = []

    def check(name: str, text: str) -> str:
        path = GOLDEN / name
        if update:
            path.write_text(text)
            written.append(name)
            return text
        assert path.exists(), f"tests/golden/{name} is missing: write it with pytest --update-goldens, then review it"
        assert text == path.read_text(), \
            f"tests/golden/{name} differs from the code; if intended: pytest --update-goldens, review git diff, rerun"
        return text

    yield check
    if written:
        pytest.fail(f"--update-goldens wrote {', '.join(written)}: review git diff tests/golden, then run the tests "
                    "again without --update-goldens", pytrace=False)


def pytest_sessionfinish(session, exitstatus):
    """A run with --update-goldens never passes, even one whose tests wrote nothing."""
    if session.config.getoption("--update-goldens") and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _join_xdist_group(config, item, group: str) -> None:
    """Under ``--dist loadgroup``, a test goes to its group's one worker when its node id ends in
    ``@<group>``. pytest-xdist adds that suffix in its own pytest_collection_modifyitems, which runs
    before this one (so it never saw our mark) and writes ``item._nodeid``, which pytest 9.2 no longer
    reads (a node id is a NodeId in ``item._id``). Without the suffix every kernel test went to either
    worker: each waited on the other's lock with pure tests queued behind it, and the lock stood idle
    whenever both ran pure tests. The suffix is written here through whichever attribute this pytest
    has; a pytest where neither takes effect gets a warning (the suite still runs, only slower)."""
    if not getattr(config.option, "loadgroup", False) or item.nodeid.endswith(f"@{group}"):
        return  # not an xdist worker under loadgroup, or xdist already did it
    new = f"{item.nodeid}@{group}"
    try:
        from _pytest.nodeid import coerce_node_id
        item._id = coerce_node_id(new)
    except ImportError:  # pytest < 9.2: a plain string
        item._nodeid = new
    if item.nodeid != new:
        import warnings
        warnings.warn(f"xdist group {group!r} not applied to {item.nodeid}: kernel tests go to both workers")


def pytest_collection_modifyitems(config, items):
    """``@pytest.mark.backends("nft", "iptables-nft")``: the other backends' variants are deselected, not
    skipped. Used where iptables-legacy would repeat iptables-nft's rendering and xt matches to keep the
    suite under 15 minutes; legacy's own kernel path keeps its variants of the other tests. Tests marked
    ``image`` are deselected too, unless ``--image``: a fresh image build takes minutes."""
    import netlab

    keep, drop = [], []
    with_image = config.getoption("--image")
    for item in items:
        if item.get_closest_marker("image") and not with_image:
            drop.append(item)
            continue
        if {"exclusive", "kernel"} & set(getattr(item, "fixturenames", ())):  # `-m "not kernel"`: pure tests
            item.add_marker(pytest.mark.kernel)
            if not item.get_closest_marker("calm"):  # calm ones go to either worker, beside the others
                item.add_marker(pytest.mark.xdist_group("kernel"))
                _join_xdist_group(config, item, "kernel")
        mark = item.get_closest_marker("backends")
        params = getattr(getattr(item, "callspec", None), "params", {})
        backend = next((v for v in params.values() if isinstance(v, str) and v in netlab.BACKENDS), None)
        (drop if mark and backend and backend not in mark.args else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
