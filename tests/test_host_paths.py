"""The session guard over nodeguard's host paths (conftest.host_paths_untouched) sees what it must."""

from __future__ import annotations

import os
from pathlib import Path

from conftest import HOST_DIRS, host_snapshot, own_paths, snapshot_changes
from guard import lastgood
from guard.policy.load import DEFAULT_CONFIG, parse_policy
from guard.policy.schema import Policy


def test_every_default_host_path_of_nodeguard_is_guarded():
    defaults = (DEFAULT_CONFIG, Policy().watcher.state_file, Policy().sampler.log, lastgood.DEFAULT)
    assert {str(Path(p).parent) for p in defaults} == set(HOST_DIRS)


def test_a_created_written_or_removed_file_is_a_change(tmp_path):
    top = tmp_path / "nodeguard"
    (top / "sub").mkdir(parents=True)
    (top / "sub" / "a").write_text("x")
    dirs = (str(top), str(tmp_path / "absent"))
    before = host_snapshot(dirs)
    assert set(before) == {str(top), str(top / "sub"), str(top / "sub" / "a")}
    assert snapshot_changes(before, host_snapshot(dirs)) == []
    (top / "sub" / "a").write_text("xy")  # another size
    (top / "b").write_text("")
    assert snapshot_changes(before, host_snapshot(dirs)) == [
        f"changed {top}", f"changed {top / 'sub' / 'a'}", f"created {top / 'b'}"]
    os.utime(top / "b", ns=(0, 0))
    mid = host_snapshot(dirs)
    os.utime(top / "b", ns=(0, 10**9))  # same size, another mtime
    (top / "sub" / "a").unlink()
    assert snapshot_changes(mid, host_snapshot(dirs)) == [
        f"changed {top / 'b'}", f"changed {top / 'sub'}", f"removed {top / 'sub' / 'a'}"]


def test_a_test_policy_keeps_its_state_odds_and_log_under_its_own_directory(tmp_path):
    for text in ("{}", "", "icmp:\n  per_source: 5/second\n"):
        p = parse_policy(own_paths(text, tmp_path), "p.yaml")
        assert Path(p.watcher.state_file).parent == tmp_path / "state"
        assert Path(p.sampler.log).parent == tmp_path / "log"
