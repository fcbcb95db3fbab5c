"""The demo's live figures, without a kernel: drops per threat from the model's own rule groups,
rates over the last second of 4/s reads, and "stale" only when the drop counters really were not read."""

from __future__ import annotations

from pathlib import Path

from guard.apply import make_plan
from guard.counters import condemning_ids
from guard.demo import drops as drops_mod
from guard.demo.floods import drops_by_threat, threats
from guard.demo.live import Display
from guard.demo.scenario import Demo
from guard.demo.telemetry import STALE_S, Telemetry
from guard.policy.load import parse_policy

ROOT = Path(__file__).parents[1]


def _condemning_keys(tmp_path: Path) -> set[tuple[str, str]]:
    """(group, mode) of every rule that condemns in the shipped default policy, as the model says."""
    policy = parse_policy((ROOT / "rules" / "default.yaml").read_text(), "default.yaml")
    policy = policy.model_copy(update={"watcher": policy.watcher.model_copy(update={"state_file": str(tmp_path / "w")})})
    return set(condemning_ids(make_plan(policy, None, interfaces=("up0",))).values())


def test_each_flood_counts_the_drops_of_the_groups_the_default_policy_drops_it_with(tmp_path):
    keys = _condemning_keys(tmp_path)
    packets = {key: 1000 * (i + 1) for i, key in enumerate(sorted(keys))}
    t, parsed = drops_mod.parse(drops_mod.line(12.5, packets))  # what the reader in the node prints
    assert (t, parsed) == (12.5, packets)
    got = drops_by_threat({**parsed, ("icmp-flood", "monitor"): 7}, threats())  # monitor mode drops nothing
    want = {"icmp": ("icmp-flood", "banned"), "udp": ("limit-udp-per-source", "banned"), "syn": ("syn-flood",)}
    assert got == {k: sum(packets[(g, "enforce")] for g in groups) for k, groups in want.items()}


def _telemetry(drops_per_s: int, arrive_per_s: int, reads: int, t0: float = 1024.0) -> Telemetry:
    """Reads 4 times a second, as the demo's pollers do, of counters growing at the given rates
    (times in binary fractions: a read exactly a second older counts)."""
    tel = Telemetry()
    for i in range(reads):
        t = t0 + i / 4
        tel.dropped.append((t + 0.0625, {"syn": int(drops_per_s * i / 4)}))  # the two pollers are not in phase
        tel.arrived.append((t, {"syn": int(arrive_per_s * i / 4)}))
    return tel


def test_rates_are_the_last_second_of_reads_and_stale_only_after_a_second_without_one():
    tel = _telemetry(drops_per_s=0, arrive_per_s=60_000, reads=8)
    for i in range(8, 12):  # the flood is now dropped: the next second of reads shows it at once
        tel.dropped.append((1024.0625 + i / 4, {"syn": 55_000 * (i - 7) // 4}))
        tel.arrived.append((1024 + i / 4, {"syn": 60_000 * i // 4}))
    assert tel.arriving_pps("syn") == 60_000
    assert tel.dropped_pps("syn") == 55_000
    newest = tel.dropped[-1][0]
    assert tel.stale(newest + 0.3) == "" and tel.stale(newest + STALE_S) == ""
    assert tel.stale(newest + 1.6) == " (drops 1.6 s old)"
    assert tel.fresh_drops(newest - 0.01) == {"syn": 55_000}


def test_the_plain_line_shows_the_second_it_happens_and_marks_only_stale_drops(tmp_path):
    demo = Demo(True, str(tmp_path / "t.png"), keep=str(tmp_path))
    tel = demo.tel = _telemetry(drops_per_s=58_000, arrive_per_s=61_000, reads=9, t0=1024.0)
    syn = next(th for th in demo.threats if th.key == "syn")
    syn.started = 1023.0
    newest = tel.dropped[-1][0]
    line = Display(demo).plain_line(newest + 0.2)
    assert "syn  flood  arriving    61,000 pps  dropped    58,000 pps  client" in line, line
    assert "dropped    58,000 pps (drops 2.0 s old)  client" in Display(demo).plain_line(newest + 2.0)
