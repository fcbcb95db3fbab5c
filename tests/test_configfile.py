"""guard/configfile.py with real files, owners, modes, symlinks and hard links (needs root for chown)."""

from __future__ import annotations

import os
import stat
import threading

import pytest

from guard.configfile import UnsafePathError, check_config_file, open_private
from guard.errors import PolicyError

needs_root = pytest.mark.skipif(os.geteuid() != 0 and os.environ.get("CI") != "true",
                                reason="chown to another uid needs root")


@pytest.fixture
def etc(tmp_path):
    d = tmp_path / "etc-nodeguard"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    f = d / "config.yaml"
    f.write_text("backend: nft\n")
    os.chmod(f, 0o644)
    os.chmod(tmp_path, 0o755)
    return f


def mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def refused(path) -> PolicyError:
    with pytest.raises(PolicyError) as exc:
        check_config_file(path)
    assert exc.value.exit_code == 2 and "\n" not in str(exc.value)
    return exc.value


def test_a_root_owned_0644_policy_is_accepted(etc):
    assert check_config_file(etc) == etc


@pytest.mark.parametrize("bad_mode", [0o664, 0o646, 0o666])
def test_a_group_or_world_writable_policy_is_refused(etc, bad_mode):
    os.chmod(etc, bad_mode)
    err = refused(etc)
    assert str(err) == (f"{etc}: refusing: {etc} is group- or world-writable (mode {bad_mode:04o}); "
                        "this file controls the firewall, so only root may be able to change it")


@needs_root
def test_a_policy_owned_by_another_user_is_refused(etc):
    os.chown(etc, 1000, 1000)
    assert "owned by uid 1000, not root" in str(refused(etc))


def test_a_policy_in_a_writable_directory_is_refused(etc):
    os.chmod(etc.parent, 0o777)  # anyone could replace the file
    assert f"{etc.parent} is group- or world-writable (mode 0777)" in str(refused(etc))


def test_a_configmap_style_symlink_is_judged_by_its_target(etc):
    """kubelet mounts config.yaml -> ..data/config.yaml -> ..<timestamp>/config.yaml."""
    d = etc.parent
    (d / "..2024_01_01").mkdir(mode=0o755)
    os.chmod(d / "..2024_01_01", 0o755)
    os.replace(etc, d / "..2024_01_01" / "config.yaml")
    os.symlink("..2024_01_01", d / "..data")
    os.symlink("..data/config.yaml", etc)
    assert check_config_file(etc) == d / "..2024_01_01" / "config.yaml"
    os.chmod(d / "..2024_01_01" / "config.yaml", 0o666)
    assert "..2024_01_01/config.yaml is group- or world-writable" in str(refused(etc))


def test_a_missing_policy_is_one_line(tmp_path):
    assert str(refused(tmp_path / "nope.yaml")) == f"{tmp_path / 'nope.yaml'}: No such file or directory"


def test_a_directory_is_not_a_policy(etc):
    assert "not a regular file" in str(refused(etc.parent))


# --- open_private ------------------------------------------------------------------------------
@pytest.fixture
def logdir(tmp_path):
    d = tmp_path / "log"
    d.mkdir()
    return d


def test_files_are_0640_and_directories_0750_whatever_the_umask(logdir):
    old = os.umask(0)
    try:
        with open_private(logdir / "nodeguard" / "pcap" / "x.pcap", "ab", allowed_dirs=[logdir]) as f:
            f.write(b"\xa1\xb2")
    finally:
        os.umask(old)
    assert mode(logdir / "nodeguard") == 0o750 and mode(logdir / "nodeguard" / "pcap") == 0o750
    assert mode(logdir / "nodeguard" / "pcap" / "x.pcap") == 0o640
    os.umask(0o077)
    try:
        with open_private(logdir / "a.jsonl", "a", allowed_dirs=[logdir]) as f:
            f.write("one\n")
        with open_private(logdir / "a.jsonl", "a", allowed_dirs=[logdir]) as f:
            f.write("two\n")
    finally:
        os.umask(old)
    assert mode(logdir / "a.jsonl") == 0o640 and (logdir / "a.jsonl").read_text() == "one\ntwo\n"


def test_an_existing_file_with_loose_mode_is_tightened(logdir):
    (logdir / "attacks.jsonl").write_text("x")
    os.chmod(logdir / "attacks.jsonl", 0o666)
    open_private(logdir / "attacks.jsonl", "a", allowed_dirs=[logdir]).close()
    assert mode(logdir / "attacks.jsonl") == 0o640


def test_a_symlink_planted_as_the_log_is_never_followed(logdir, tmp_path):
    """The classic attack: whoever can write the log directory points attacks.jsonl at a file
    root will then append to (or truncate)."""
    victim = tmp_path / "shadow"
    victim.write_text("root:secret\n")
    os.symlink(victim, logdir / "attacks.jsonl")
    for m in ("a", "w", "r"):
        with pytest.raises(UnsafePathError, match="attacks.jsonl is a symlink"):
            open_private(logdir / "attacks.jsonl", m, allowed_dirs=[logdir])
    assert victim.read_text() == "root:secret\n"


def test_a_symlinked_directory_on_the_way_is_refused(logdir, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, logdir / "pcap")
    with pytest.raises(UnsafePathError, match="pcap is a symlink"):
        open_private(logdir / "pcap" / "x.pcap", "ab", allowed_dirs=[logdir])
    assert list(elsewhere.iterdir()) == []


def test_a_hard_link_to_another_file_is_refused(logdir, tmp_path):
    victim = tmp_path / "passwd"
    victim.write_text("root:x:0:0\n")
    os.link(victim, logdir / "attacks.jsonl")
    with pytest.raises(UnsafePathError, match="2 hard links"):
        open_private(logdir / "attacks.jsonl", "a", allowed_dirs=[logdir])
    assert victim.read_text() == "root:x:0:0\n"


def test_a_fifo_is_refused_without_blocking(logdir):
    os.mkfifo(logdir / "attacks.jsonl")
    result = []
    t = threading.Thread(target=lambda: result.append(pytest.raises(
        UnsafePathError, open_private, logdir / "attacks.jsonl", "r", allowed_dirs=[logdir])))
    t.start()
    t.join(3)
    assert not t.is_alive() and result and "not a regular file" in str(result[0].value)


def test_writing_outside_the_configured_directories_is_refused(logdir, tmp_path):
    for path in (tmp_path / "x.log", logdir / ".." / "x.log", "/etc/nodeguard-test.log"):
        with pytest.raises(UnsafePathError, match="refusing to write outside"):
            open_private(path, "a", allowed_dirs=[logdir])
    assert not (tmp_path / "x.log").exists()


@needs_root
def test_a_file_owned_by_someone_else_is_not_written(logdir):
    (logdir / "state.json").write_text("{}")
    os.chown(logdir / "state.json", 1000, 1000)
    with pytest.raises(UnsafePathError, match="owned by uid 1000"):
        open_private(logdir / "state.json", "w", allowed_dirs=[logdir])
    assert (logdir / "state.json").read_text() == "{}"


def test_mode_w_truncates_our_own_file(logdir):
    (logdir / "state.json").write_text('{"old": true}')
    with open_private(logdir / "state.json", "w", allowed_dirs=[logdir]) as f:
        f.write("{}")
    assert (logdir / "state.json").read_text() == "{}"
