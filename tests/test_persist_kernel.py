"""Bans outlive a stopped daemon and a flushed ruleset (guard/persist.py), with real packets: a ban by
hand and an escalation ban are snapshotted on stop, come back with what is left of their time when
``nodeguard run`` starts on an empty ruleset and when it repairs a flush, and drop at ingress again; a
ban that expired while the daemon was down does not come back."""

from __future__ import annotations

import json
import time

import netlab
from netlab import ATTACKER4, FRESH4, TRUSTED4, VICTIM4, VICTIM_IF, wait_until
from test_daemon import Run, write

INGRESS = f"ingress-{VICTIM_IF}"
ESCALATED = FRESH4[0]  # banned by escalation (added to its set directly: no flood needed)


def _policy(tmp_path, snapshot_interval_s: float) -> str:
    """The daemon's policy: no sampler, a fast verification, the snapshot in ``tmp_path``/sets.json."""
    return write(tmp_path / "p.yaml", f"sampler:\n  enabled: false\n  log: {tmp_path}/attacks.jsonl\n"
                 f"watcher:\n  state_file: {tmp_path}/watch.json\n  verify_interval_s: 0.5\n"
                 f"  snapshot_file: {tmp_path / 'sets.json'}\n  snapshot_interval_s: {snapshot_interval_s}\n")


def _bans(victim, policy: str) -> dict[str, tuple[str, int | None]]:
    rows = json.loads(victim.nodeguard("bans", "--json", "-c", policy).stdout)["bans"]
    return {r["source"]: (r["by"], r["expires_in_s"]) for r in rows}


def _replies(attacker, src: str) -> int:
    return netlab.ping_stats(attacker.run(["ping", "-4", "-c", "2", "-i", "0.2", "-W", "1", "-I", src, VICTIM4],
                                          check=False).stdout)[1]


def test_bans_come_back_after_a_stop_and_a_flush_with_their_time_left_and_the_expired_do_not(lab, tmp_path):
    victim, attacker = lab
    snap = tmp_path / "sets.json"
    policy = _policy(tmp_path, snapshot_interval_s=1)
    run = Run(victim, tmp_path, policy)
    run.wait_ready()
    victim.nodeguard("ban", f"{ATTACKER4}/32", "--for", "60s", "--reason", "flooder", "-c", policy)
    banned_at = time.monotonic()  # each ban's clock started before this: its left is at most timeout - since
    banned_set = next(s["set"]["name"] for s in victim.nft_json("sets")
                      if s.get("set", {}).get("name", "").startswith("banned-v4-"))
    victim.run(f"nft add element inet nodeguard {banned_set} {{ {ESCALATED} timeout 40s }}")
    escalated_at = time.monotonic()
    short_at = time.monotonic()
    victim.nodeguard("ban", f"{TRUSTED4}/32", "--for", "4s", "-c", policy)  # expires while the daemon is down
    assert run.stop() == 0, run.log[-4000:]
    held = {(e["set"], e["key"]) for e in json.loads(snap.read_text())["entries"]}
    assert held == {("manual", f"{ATTACKER4}/32"), ("manual", f"{TRUSTED4}/32"), ("banned", ESCALATED)}

    victim.run("nft flush ruleset")
    time.sleep(max(0.0, short_at + 4.2 - time.monotonic()))  # the 4 s ban is over
    run = Run(victim, tmp_path, policy, name="run2")
    run.wait_ready()
    read_at = time.monotonic()  # the time went on while nodeguard was down
    bans = _bans(victim, policy)
    assert set(bans) == {f"{ATTACKER4}/32", ESCALATED}, run.log
    assert bans[f"{ATTACKER4}/32"][0] == "hand" and 0 < bans[f"{ATTACKER4}/32"][1] <= 60 - int(read_at - banned_at)
    assert bans[ESCALATED][0] == "escalation" and 0 < bans[ESCALATED][1] <= 40 - int(read_at - escalated_at)
    assert _replies(attacker, ATTACKER4) == 0
    assert victim.counters()[f"{INGRESS}: banned by hand v4"] >= 2

    # a flush while it runs: the repair (event-driven) brings the bans back with the rules; each look
    # here is a `nodeguard bans` process, slow on a loaded machine
    victim.run("nft flush ruleset")
    wait_until(lambda: set(_bans(victim, policy)) == {f"{ATTACKER4}/32", ESCALATED}, timeout=10)
    state = json.loads((tmp_path / "watch.json").read_text())
    assert state["last_kind"] == "table_missing" and state["last_repair_ms"] < 1000  # bans restored within it
    assert _replies(attacker, ATTACKER4) == 0 and _replies(attacker, TRUSTED4) == 2
    assert victim.counters()[f"{INGRESS}: banned by hand v4"] >= 2
    assert run.stop() == 0, run.log[-4000:]


def test_our_table_made_dormant_is_woken_in_place_with_a_ban_and_a_meter_entry_newer_than_the_snapshot(
        lab, tmp_path):
    """A dormant table filters nothing; deleting and making it anew to wake it emptied every set, and the
    snapshot gives back only what it held. The repair clears the flags in place instead: a ban made after
    the last snapshot and a per-source meter's entry are still there, and the ban drops again."""
    victim, attacker = lab
    snap = tmp_path / "sets.json"
    policy = _policy(tmp_path, snapshot_interval_s=3600)  # no snapshot after the first, at start
    run = Run(victim, tmp_path, policy)
    try:
        run.wait_ready()
        victim.nodeguard("ban", f"{ATTACKER4}/32", "--for", "600s", "--reason", "flooder", "-c", policy)
        assert _replies(attacker, TRUSTED4) == 2  # a meter entry for TRUSTED4 (ICMP per source)
        meter = next(m["kernel_name"] for m in victim.status(policy)["meters"]
                     if m["kind"] == "meter" and m["set"].startswith("icmp") and m["set"].endswith("v4"))
        manual = next(s["set"]["name"] for s in victim.nft_json("sets")
                      if s.get("set", {}).get("name", "").startswith("manual-v4-"))
        assert TRUSTED4 in victim.run(f"nft list set inet nodeguard {meter}").stdout
        assert not snap.exists() or ATTACKER4 not in snap.read_text()  # newer than the last snapshot
        repairs = json.loads((tmp_path / "watch.json").read_text())["repairs"]

        victim.run(["nft", "add table inet nodeguard { flags dormant; }"])
        wait_until(lambda: json.loads((tmp_path / "watch.json").read_text())["repairs"] > repairs, timeout=3,
                   interval=0.02)
        assert "flags dormant" not in victim.run("nft list table inet nodeguard").stdout
        state = json.loads((tmp_path / "watch.json").read_text())
        assert state["repairs"] == repairs + 1 and state["last_kind"] == "table_flags", state
        banned = victim.run(f"nft list set inet nodeguard {manual}").stdout
        assert f"{ATTACKER4} " in banned and 'comment "flooder"' in banned, banned
        assert TRUSTED4 in victim.run(f"nft list set inet nodeguard {meter}").stdout
        assert _replies(attacker, ATTACKER4) == 0 and _replies(attacker, TRUSTED4) == 2
        assert victim.counters()[f"{INGRESS}: banned by hand v4"] >= 2
        assert victim.in_sync(policy)
    finally:
        assert run.stop() == 0, run.log[-4000:]
