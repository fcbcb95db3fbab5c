"""guard/configwatch.py against a real ConfigMap volume layout, updated the way kubelet's
AtomicWriter does it (new timestamped directory, symlink renamed over ..data, old one removed)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from guard.configwatch import ConfigWatch


class ConfigMapVolume:
    """kubelet's AtomicWriter layout: config.yaml -> ..data/config.yaml, ..data -> ..<timestamp>."""

    def __init__(self, root: Path, files: dict[str, str]):
        self.root = root
        root.mkdir()
        self.generation = 0
        self.current = self._write_dir(files)
        os.symlink(self.current, root / "..data")
        for name in files:
            os.symlink(f"..data/{name}", root / name)

    def _write_dir(self, files: dict[str, str]) -> str:
        self.generation += 1
        ts = f"..2024_05_01_12_00_{self.generation:02d}.{time.monotonic_ns() % 10**9}"
        os.mkdir(self.root / ts, 0o755)
        for name, text in files.items():
            (self.root / ts / name).write_text(text)
        return ts

    def update(self, files: dict[str, str]) -> None:
        old = self.current
        self.current = self._write_dir(files)
        os.symlink(self.current, self.root / "..data_tmp")
        os.rename(self.root / "..data_tmp", self.root / "..data")  # the atomic swap
        shutil.rmtree(self.root / old)


@pytest.fixture
def volume(tmp_path):
    return ConfigMapVolume(tmp_path / "etc-nodeguard", {"config.yaml": "backend: nft\n"})


def test_a_configmap_update_is_seen_once(volume):
    watch = ConfigWatch(volume.root / "config.yaml")
    assert watch.poll() is False
    volume.update({"config.yaml": "backend: iptables\n"})
    assert watch.poll() is True
    assert watch.poll() is False  # reported once
    assert (volume.root / "config.yaml").read_text() == "backend: iptables\n"


def test_a_swap_with_the_same_content_is_not_a_change(volume):
    watch = ConfigWatch(volume.root / "config.yaml")
    volume.update({"config.yaml": "backend: nft\n"})  # kubelet resyncs, e.g. a label changed
    assert watch.poll() is False and watch.reads == 2  # new inode: read once, same hash


def test_an_unchanged_file_is_never_read_again(volume):
    watch = ConfigWatch(volume.root / "config.yaml")
    for _ in range(1000):
        assert watch.poll() is False
    assert watch.reads == 1  # the read at start; every poll was one stat


def test_an_in_place_edit_is_seen(tmp_path):
    """/etc/nodeguard/config.yaml on a host, edited by an editor that rewrites the same inode."""
    f = tmp_path / "config.yaml"
    f.write_text("backend: nft\n")
    watch = ConfigWatch(f)
    f.write_text("backend: iptables\n")
    assert watch.poll() is True


def test_a_vanished_file_keeps_the_policy_until_new_content_appears(volume, caplog):
    watch = ConfigWatch(volume.root / "config.yaml")
    os.unlink(volume.root / "..data")
    assert watch.poll() is False and watch.poll() is False
    assert caplog.text.count("missing or unreadable") == 1
    os.symlink(volume.current, volume.root / "..data")  # back, same content
    assert watch.poll() is False
    volume.update({"config.yaml": "backend: iptables\n"})
    assert watch.poll() is True


def test_check_polls_only_every_interval(volume):
    now = [0.0]
    watch = ConfigWatch(volume.root / "config.yaml", interval_s=5, clock=lambda: now[0])
    volume.update({"config.yaml": "icmp: {rate: 50/second}\n"})
    assert watch.due_in() == 5
    now[0] = 4.9
    assert watch.check() is False  # not yet looked
    now[0] = 5.0
    assert watch.check() is True and watch.due_in() == 5
