"""A local user against the files nodeguard reads and writes as root (issue 19, items 2, 3 and 11).

The attacker is ``nobody`` for real (setpriv), working in a directory of its own under /tmp (pytest's
own directories are 0700 root: nobody could not even reach them). No netfilter here: the verbs that
change the firewall are checked in a namespace by test_cli.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from guard import lastgood, sampling_odds
from guard.attacklog import AttackLog
from guard.configfile import DATA_DIRS_ENV, UnsafePathError, read_config, write_atomic
from guard.errors import PolicyError
from guard.policy.load import parse_policy, read_policy

NOBODY = 65534
AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
GOOD = "backend: nft\n# root's policy\n"
EVIL = "backend: nft\n# the attacker's policy\n"


@pytest.fixture
def area(root, monkeypatch):
    """A root-owned 0755 directory under /tmp that nobody can reach, and where nodeguard may write."""
    d = Path(tempfile.mkdtemp(prefix="ng-hostile-", dir="/tmp"))
    os.chmod(d, 0o755)
    monkeypatch.setenv(DATA_DIRS_ENV, f"{os.environ.get(DATA_DIRS_ENV, '')}:{d}")
    yield d
    shutil.rmtree(d)


def mkdir(path: Path, owner: int = 0, mode: int = 0o755) -> Path:
    path.mkdir()
    os.chmod(path, mode)
    os.chown(path, owner, owner)
    return path


def as_nobody(code: str) -> None:
    subprocess.run([*AS_NOBODY, sys.executable, "-c", code], check=True, timeout=30)


def victim(area: Path) -> Path:
    """A file only root may read or write, which nobody would like root to overwrite."""
    secret = mkdir(area / "secret", mode=0o700) / "shadow"
    secret.write_text("root:$6$secret\n")
    os.chmod(secret, 0o600)
    return secret


# --- item 3: the policy is read once, from the descriptor that was checked ----------------------
def test_a_symlink_nobody_keeps_swapping_never_gets_its_policy_read(area):
    """nobody swaps conf/config.yaml between root's policy and its own as fast as it can. The old check
    resolved the path, checked the target, then read the path again: 518 of ~3,500 reads in 4 s were
    the attacker's. Now every read is refused (the symlink's directory is nobody's), and none is his."""
    good = mkdir(area / "good") / "config.yaml"
    good.write_text(GOOD)
    evil_dir = mkdir(area / "evil", owner=NOBODY)
    conf = mkdir(area / "conf", owner=NOBODY)
    as_nobody(f"open({str(evil_dir / 'config.yaml')!r}, 'w').write({EVIL!r})")
    link = conf / "config.yaml"
    swap = (f"import os\nwhile True:\n    for t in ({str(good)!r}, {str(evil_dir / 'config.yaml')!r}):\n"
            f"        os.symlink(t, {str(conf / 'tmp')!r}); os.replace({str(conf / 'tmp')!r}, {str(link)!r})\n")
    swapper = subprocess.Popen([*AS_NOBODY, sys.executable, "-c", swap])
    reads = {"attacker": 0, "root": 0, "refused": 0, "plain read got the attacker's": 0}
    try:
        while not os.path.lexists(link):
            time.sleep(0.01)
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            try:
                text = read_policy(link, trusted=True)[2]
                reads["attacker" if "attacker" in text else "root"] += 1
            except PolicyError as exc:
                assert f"refusing: {conf} is owned by uid {NOBODY}, not root" in str(exc), exc
                reads["refused"] += 1
            try:  # the same path read without the check: the swap is live
                reads["plain read got the attacker's"] += "attacker" in read_policy(link)[2]
            except PolicyError:
                pass  # caught between unlink and rename
    finally:
        swapper.kill()
        swapper.wait()
    assert reads["attacker"] == 0 and reads["root"] == 0 and reads["refused"] > 0, reads
    assert reads["plain read got the attacker's"] > 0, reads


def test_an_ancestor_directory_nobody_owns_is_refused_though_the_file_and_its_directory_are_roots(area):
    """sshd's StrictModes: nobody could rename ``shared/etc`` away and put its own in its place."""
    shared = mkdir(area / "shared", owner=NOBODY)
    policy = mkdir(mkdir(shared / "etc") / "nodeguard") / "config.yaml"
    policy.write_text(GOOD)
    as_nobody(f"import os; os.rename({str(shared / 'etc')!r}, {str(shared / 'old')!r}); "
              f"os.makedirs({str(shared / 'etc' / 'nodeguard')!r}); "
              f"open({str(policy)!r}, 'w').write({EVIL!r})")
    with pytest.raises(PolicyError) as exc:
        read_config(policy)
    assert str(exc.value) == (f"{policy}: refusing: {shared} is owned by uid {NOBODY}, not root; this file "
                              "controls the firewall, so only root may be able to change it")


@pytest.mark.parametrize("mode", [0o775, 0o757])
def test_an_ancestor_directory_others_can_write_is_refused(area, mode):
    top = mkdir(area / "top", mode=mode)
    policy = mkdir(top / "nodeguard") / "config.yaml"
    policy.write_text(GOOD)
    with pytest.raises(PolicyError, match=f"{top} is group- or world-writable \\(mode 0{mode:o}\\)"):
        read_config(policy)


def test_a_configmap_mount_with_absolute_and_relative_symlinks_is_read(area):
    """kubelet: config.yaml -> ..data/config.yaml, ..data -> ..2024_01_01 (all root's), here behind an
    absolute symlink to the mount too."""
    mount = mkdir(area / "mount")
    stamp = mkdir(mount / "..2024_01_01")
    (stamp / "config.yaml").write_text(GOOD)
    os.symlink("..2024_01_01", mount / "..data")
    os.symlink("..data/config.yaml", mount / "config.yaml")
    etc = mkdir(area / "etc")
    os.symlink(mount / "config.yaml", etc / "config.yaml")
    assert read_config(etc / "config.yaml") == (GOOD.encode(), stamp / "config.yaml")


def test_a_symlink_nobody_owns_is_not_followed_even_to_roots_policy(area):
    """A sticky directory (as /tmp) lets nobody place symlinks among root's files."""
    sticky = mkdir(area / "sticky", mode=0o1777)
    good = mkdir(area / "good") / "config.yaml"
    good.write_text(GOOD)
    as_nobody(f"import os; os.symlink({str(good)!r}, {str(sticky / 'config.yaml')!r})")
    with pytest.raises(PolicyError, match=f"{sticky / 'config.yaml'} is owned by uid {NOBODY}"):
        read_config(sticky / "config.yaml")


# --- item 2: every file the daemon writes --------------------------------------------------------
def _writers(state: Path) -> dict:
    """Each state file the daemon writes, written the way the daemon writes it."""
    from guard.watch.watcher import Watcher

    watcher = Watcher(parse_policy(f"watcher:\n  state_file: {state / 'watch.json'}\n", "p.yaml"), nft=None)
    return {"sampling odds": (state / "sampling.json", lambda: sampling_odds.save(state / "sampling.json", {"g": 3})),
            "last good": (state / "last-good.yaml", lambda: lastgood.save(GOOD, state / "last-good.yaml")),
            "watcher state": (state / "watch.json", watcher._write_state)}


WRITERS = ["sampling odds", "last good", "watcher state"]


def _write(state: Path, which: str) -> tuple[Path, float]:
    """(the file, seconds the write took, at most 1 s: a write still blocked then is let go by opening
    its FIFO for reading); the watcher's own write logs a failure instead of raising."""
    path, write = _writers(state)[which]

    def attempt():
        try:
            write()
        except UnsafePathError:
            pass
    t0 = time.monotonic()
    writer = threading.Thread(target=attempt)
    writer.start()
    writer.join(1.0)
    took = time.monotonic() - t0
    if writer.is_alive():
        os.close(os.open(Path(str(path) + ".tmp"), os.O_RDONLY | os.O_NONBLOCK))
        writer.join()
    return path, took


@pytest.mark.parametrize("which", WRITERS)
def test_a_symlink_nobody_plants_at_the_tmp_name_never_overwrites_a_root_file(area, which):
    secret = victim(area)
    state = mkdir(area / "state", owner=NOBODY, mode=0o750)  # e.g. made by something else beforehand
    tmp = Path(str(_writers(state)[which][0]) + ".tmp")
    as_nobody(f"import os; os.symlink({str(secret)!r}, {str(tmp)!r})")
    path, _took = _write(state, which)
    assert secret.read_text() == "root:$6$secret\n" and oct(os.stat(secret).st_mode) == "0o100600"
    assert not path.exists() and os.path.islink(tmp)


@pytest.mark.parametrize("which", WRITERS)
def test_a_symlink_at_the_tmp_name_in_roots_own_directory_is_not_followed_either(area, which):
    secret = victim(area)
    state = mkdir(area / "state", mode=0o750)
    tmp = Path(str(_writers(state)[which][0]) + ".tmp")
    os.symlink(secret, tmp)
    path, _took = _write(state, which)
    assert secret.read_text() == "root:$6$secret\n" and not path.exists()


READER = """
import os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_NONBLOCK)
print("ready", flush=True)
time.sleep(float(sys.argv[2]))
try:
    print(len(os.read(fd, 65536)), flush=True)
except BlockingIOError:
    print(0, flush=True)
"""


@pytest.mark.parametrize("who", ["nobody in its directory", "root in root's directory",
                                 "root in root's directory, nobody reading"])
@pytest.mark.parametrize("which", WRITERS)
def test_a_fifo_at_the_tmp_name_fails_the_write_at_once(area, which, who):
    """Before, the watcher's state write blocked on a FIFO at watch.tmp for as long as no one opened it
    for reading (the main loop stopped, and with it the watchdog's pings); with a reader, it wrote the
    state to the reader. Now it fails at once, and nothing reaches a reader."""
    state = mkdir(area / "state", owner=NOBODY if who.startswith("nobody") else 0)
    tmp = Path(str(_writers(state)[which][0]) + ".tmp")
    if who.startswith("nobody"):
        as_nobody(f"import os; os.mkfifo({str(tmp)!r})")
    else:
        os.mkfifo(tmp, 0o644)
    reader = None
    if who.endswith("reading"):
        reader = subprocess.Popen([*AS_NOBODY, sys.executable, "-c", READER, str(tmp), "0.8"],
                                  stdout=subprocess.PIPE, text=True)
        assert reader.stdout.readline() == "ready\n"
    path, took = _write(state, which)
    assert took < 1.0 and not path.exists()
    if reader:
        assert reader.stdout.read() == "0\n"  # bytes the reader got
        assert reader.wait(10) == 0


@pytest.mark.parametrize("owner, mode", [(NOBODY, 0o750), (0, 0o777), (0, 0o770), (0, 0o1777)],
                         ids=["nobody's", "world-writable", "group-writable", "sticky"])
def test_a_state_directory_not_roots_alone_is_neither_written_nor_trusted(area, owner, mode):
    """What the daemon reads back from there (last good policy, odds, state) is refused too: anyone
    who could write the directory could have written it."""
    state = area / "state"
    mkdir(state, mode=0o750)
    sampling_odds.save(state / "sampling.json", {"g": 3})
    lastgood.save(GOOD, state / "last-good.yaml")
    write_atomic(state / "watch.json", json.dumps({"alive": False}).encode())
    assert sampling_odds.load(state / "sampling.json") == {"g": 3} and lastgood.load(state / "last-good.yaml")
    os.chown(state, owner, NOBODY)
    os.chmod(state, mode)
    for which in WRITERS:
        with pytest.raises(UnsafePathError, match=f"refusing: {state} is (owned by uid {NOBODY}|group- or world-writable)"):
            {"sampling odds": lambda: sampling_odds.save(state / "sampling.json", {"g": 5}),
             "last good": lambda: lastgood.save(EVIL, state / "last-good.yaml"),
             "watcher state": lambda: write_atomic(state / "watch.json", b"{}")}[which]()
    assert sampling_odds.load(state / "sampling.json") == {}
    assert lastgood.load(state / "last-good.yaml") is None
    from guard.watch.state import read_state
    assert read_state(str(state / "watch.json")) is None


def test_a_data_directory_under_one_nobody_owns_is_refused(area):
    shared = mkdir(area / "var", owner=NOBODY)
    with pytest.raises(UnsafePathError, match=f"refusing: {shared} is owned by uid {NOBODY}"):
        write_atomic(shared / "lib" / "nodeguard" / "watch.json", b"{}")
    assert not (shared / "lib").exists()


# --- item 11: only the data directories --------------------------------------------------------
def test_the_daemon_writes_no_log_outside_the_data_directories(area, monkeypatch):
    monkeypatch.setenv(DATA_DIRS_ENV, "")
    elsewhere = mkdir(area / "etc") / "passwd"
    elsewhere.write_text("root:x:0:0\n")
    with pytest.raises(UnsafePathError, match="refusing to write outside /var/log/nodeguard, /run/nodeguard, "
                                              "/var/lib/nodeguard"):
        AttackLog(elsewhere, 1 << 20, 2)
    assert elsewhere.read_text() == "root:x:0:0\n"


@pytest.mark.parametrize("field, path", [("sampler.log", "/etc/passwd"), ("sampler.pcap", "/etc/shadow"),
                                         ("watcher.state_file", "/etc/ssh/sshd_config"),
                                         ("sampler.log", "/var/log/nodeguard/../../../etc/passwd"),
                                         ("watcher.state_file", "run/nodeguard/watch.json")])
def test_check_refuses_a_path_outside_the_data_directories_with_one_line(tmp_path, field, path):
    section, key = field.split(".")
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"backend: nft\n{section}:\n  {key}: {path}\n")
    res = subprocess.run([sys.executable, "-m", "guard", "check", "-c", str(policy)], capture_output=True,
                         text=True, timeout=60, env=dict(os.environ, **{DATA_DIRS_ENV: ""}))
    assert res.returncode == 2 and res.stdout == "", res
    assert res.stderr.startswith(f"{policy}:3: {field}: ") and res.stderr.count("\n") == 1, res.stderr
    assert ("nodeguard writes only under /var/log/nodeguard, /run/nodeguard, /var/lib/nodeguard"
            in res.stderr) != (".." in path or not path.startswith("/")), res.stderr


def test_a_directory_the_operator_names_is_allowed(tmp_path, monkeypatch):
    policy = f"sampler:\n  log: {tmp_path}/ng/attacks.jsonl\n"
    monkeypatch.setenv(DATA_DIRS_ENV, "")
    with pytest.raises(PolicyError, match="sampler.log: .* nodeguard writes only under"):
        parse_policy(policy, "p.yaml")
    monkeypatch.setenv(DATA_DIRS_ENV, f"/srv/x:{tmp_path}/ng")
    assert parse_policy(policy, "p.yaml").sampler.log == f"{tmp_path}/ng/attacks.jsonl"


def _report(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "guard", "report", "--json", *args], capture_output=True, text=True,
                          timeout=60)


def test_report_reads_the_log_and_its_own_rotations_only(tmp_path):
    """RotatingFile names them LOG.1 ... LOG.<keep>; notes.txt.3 or LOG.old are someone else's."""
    from guard.attacklog import log_files

    def episode(rule: str) -> str:
        return json.dumps({"type": "episode_start", "rule": rule, "ts": 1000.0}) + "\n"

    log = tmp_path / "attacks.jsonl"
    for name, rule in [("attacks.jsonl", "now"), ("attacks.jsonl.1", "one"), ("attacks.jsonl.2", "two"),
                       ("attacks.jsonl.old", "old"), ("attacks.jsonl.2.bak", "bak"), ("notes.txt.3", "notes")]:
        (tmp_path / name).write_text(episode(rule))
    assert log_files(log) == [tmp_path / "attacks.jsonl.2", tmp_path / "attacks.jsonl.1", log]
    rules = {e["rule"] for e in json.loads(_report("--log", str(log)).stdout)["episodes"]}
    assert rules == {"now", "one", "two"}
    res = _report("--log", f"{tmp_path}/*")  # a glob is a name like any other: there is no such log
    assert res.returncode == 2 and res.stderr == f"nodeguard: {tmp_path}/*: no attack log there (no such file)\n"


def test_report_of_a_missing_log_is_one_line_and_exit_2(tmp_path):
    res = _report("--log", str(tmp_path / "attacks.jsonl"))
    assert res.returncode == 2 and res.stdout == "", res
    assert res.stderr == f"nodeguard: {tmp_path / 'attacks.jsonl'}: no attack log there (no such file)\n"


def test_a_refused_last_good_directory_is_logged_and_the_policy_stays_accepted(area, caplog):
    """The kernel runs the policy: failing to keep it for the next boot must not fail the watcher's check."""
    import logging

    state = mkdir(area / "state", owner=NOBODY)
    feed = lastgood.ConfiguredPolicy.__new__(lastgood.ConfiguredPolicy)
    policy = parse_policy(GOOD, "p.yaml")
    feed.good, feed.log, feed._texts = state / "last-good.yaml", logging.getLogger("test"), {id(policy): GOOD}
    with caplog.at_level(logging.ERROR):
        feed.accepted(policy, policy)
    assert f"cannot keep the last good policy: {state / 'last-good.yaml.tmp'}: refusing: {state} is owned by uid" \
        in caplog.text and not (state / "last-good.yaml").exists()


# --- report --plot: the operator's path, written as root -------------------------------------------
def _plot(log: Path, plot: Path) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "guard", "report", "--log", str(log), "--plot", str(plot)],
                         capture_output=True, text=True, timeout=30)
    return res, time.monotonic() - start


@pytest.mark.parametrize("name", ["plot.svg", "plot.png"])
def test_report_plot_never_writes_through_a_symlink_nobody_plants(area, name):
    secret = victim(area)
    (area / "attacks.jsonl").write_text("")
    drop = mkdir(area / "drop", owner=NOBODY)
    as_nobody(f"import os; os.symlink({str(secret)!r}, {str(drop / name)!r})")
    res, _ = _plot(area / "attacks.jsonl", drop / name)
    assert res.returncode == 2 and res.stdout == "", res
    assert res.stderr == f"nodeguard: {drop / name}: refusing: it is a symlink\n"
    assert secret.read_text() == "root:$6$secret\n"


def test_report_plot_never_writes_through_a_directory_symlink_nobody_plants(area):
    """nobody's symlink on the way (a directory of the path) could send root's picture anywhere: it is
    refused before anything is created; root's own directory symlink is followed."""
    secret_dir = victim(area).parent
    (area / "attacks.jsonl").write_text("")
    drop = mkdir(area / "drop", owner=NOBODY)
    as_nobody(f"import os; os.symlink({str(secret_dir)!r}, {str(drop / 'plots')!r})")
    res, _ = _plot(area / "attacks.jsonl", drop / "plots" / "today.svg")
    assert res.returncode == 2 and res.stdout == "", res
    assert res.stderr == (f"nodeguard: {drop / 'plots' / 'today.svg'}: refusing: {drop / 'plots'} is owned by "
                          f"uid {NOBODY}, not root\n"), res
    assert sorted(p.name for p in secret_dir.iterdir()) == ["shadow"]
    os.symlink(secret_dir, area / "mine")
    assert _plot(area / "attacks.jsonl", area / "mine" / "today.svg")[0].returncode == 0
    assert (secret_dir / "today.svg").read_text().startswith("<svg")


def test_report_plot_refuses_a_file_nobody_owns_without_emptying_it(area):
    (area / "attacks.jsonl").write_text("")
    drop = mkdir(area / "drop", owner=NOBODY)
    as_nobody(f"open({str(drop / 'plot.svg')!r}, 'w').write('mine')")
    res, _ = _plot(area / "attacks.jsonl", drop / "plot.svg")
    assert res.returncode == 2 and res.stderr == f"nodeguard: {drop / 'plot.svg'}: refusing: owned by uid {NOBODY}\n"
    assert (drop / "plot.svg").read_text() == "mine"


@pytest.mark.parametrize("reader", [False, True], ids=["no reader", "a reader"])
def test_report_plot_to_a_fifo_fails_at_once(area, reader):
    """open() of a FIFO for writing waits for a reader: it hung the command. Now it is refused at once
    (O_NONBLOCK, then fstat), whether nobody holds it open or not."""
    from guard.configfile import open_output

    (area / "attacks.jsonl").write_text("")
    drop = mkdir(area / "drop", owner=NOBODY)
    fifo = drop / "plot.png"
    as_nobody(f"import os; os.mkfifo({str(fifo)!r})")
    opened = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK) if reader else None
    try:
        start = time.monotonic()
        with pytest.raises(UnsafePathError, match="refusing: not a regular file"):
            open_output(fifo, "wb")
        assert time.monotonic() - start < 1.0
        res, took = _plot(area / "attacks.jsonl", fifo)
        assert res.returncode == 2 and res.stderr == f"nodeguard: {fifo}: refusing: not a regular file\n", res
        assert took < 10  # the whole command, Python's start included: it returned, it did not wait
    finally:
        if opened is not None:
            os.close(opened)


def test_report_plot_to_a_new_or_own_file_is_written(area):
    (area / "attacks.jsonl").write_text("")
    (area / "plot.svg").write_text("x" * 100_000)  # root's own, longer than the picture: truncated
    assert _plot(area / "attacks.jsonl", area / "plot.svg")[0].returncode == 0
    assert (area / "plot.svg").read_text().startswith("<svg") and (area / "plot.svg").read_text().endswith("</svg>\n")
    assert _plot(area / "attacks.jsonl", area / "new.png")[0].returncode == 0
    assert (area / "new.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("field", ["sampler.log", "sampler.pcap", "watcher.state_file"])
@pytest.mark.parametrize("char", ["\\x1b", "\\n", "\\x7f", "\\u202e", "\\t"], ids=["ESC", "LF", "DEL", "RLO", "TAB"])
def test_check_refuses_a_data_path_with_control_characters_in_one_line(tmp_path, field, char):
    section, key = field.split(".")
    policy = tmp_path / "policy.yaml"
    policy.write_text(f'backend: nft\n{section}:\n  {key}: "{tmp_path}/a{char}[31mb"\n')
    res = subprocess.run([sys.executable, "-m", "guard", "check", "-c", str(policy)], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 2 and res.stdout == "", res
    assert res.stderr == (f"{policy}:3: {field}: the path must be printable: no control or other non-printable "
                          "characters\n")
    assert os.listdir(tmp_path) == ["policy.yaml"]
