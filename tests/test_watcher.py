"""The watcher restores protection after every kind of disturbance, at once, without a war."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

import netlab
from netlab import VICTIM4, wait_until


@pytest.fixture
def watched(lab, tmp_path):
    victim, attacker = lab
    state = tmp_path / "watch.json"
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"""
icmp:
  per_source: 20/second
  per_source_burst: 20
watcher:
  state_file: {state}
  max_repairs_per_minute: 5
  backoff_max_s: 8
""")
    with netlab.watcher(victim, str(policy), str(state)) as proc:
        yield victim, attacker, proc, state, str(policy)


_in_sync = netlab.Netns.in_sync


def _protected(ns) -> bool:
    """The per-source ICMP rule is live (cheap enough to poll)."""
    res = ns.run("nft list chain inet nodeguard icmp-flood", check=False)
    return res.returncode == 0 and "icmp-flood per-source v4" in res.stdout


def _flood_is_limited(victim, attacker) -> bool:
    before = victim.counters().get("icmp-flood: icmp-flood per-source v4", 0)
    attacker.run(f"ping -f -i 0.0002 -q -w 1 {VICTIM4}", check=False)
    return victim.counters()["icmp-flood: icmp-flood per-source v4"] > before + 50


def _delete_one_rule(ns) -> None:
    listing = ns.nft_json("chain inet nodeguard icmp-flood")
    handle = [o["rule"]["handle"] for o in listing if "rule" in o][0]
    ns.run(f"nft delete rule inet nodeguard icmp-flood handle {handle}")


DISRUPTIONS = {
    "nft flush ruleset": lambda ns: ns.run("nft flush ruleset"),
    "delete our table": lambda ns: ns.run("nft delete table inet nodeguard"),
    "delete one rule": _delete_one_rule,
    "flush one chain": lambda ns: ns.run("nft flush chain inet nodeguard icmp-flood"),
    "our table made dormant": lambda ns: ns.run(["nft", "add table inet nodeguard { flags dormant; }"]),
    "foreign chain at -360": lambda ns: ns.run(
        ["nft", "add table ip rival; add chain ip rival pre { type filter hook prerouting priority -360; }"]),
}


@pytest.mark.parametrize("what", list(DISRUPTIONS))
def test_disruption_is_repaired_at_once_and_the_flood_is_limited_again(watched, what):
    victim, attacker, _proc, state, policy = watched
    DISRUPTIONS[what](victim)
    took = wait_until(lambda: _in_sync(victim, policy), timeout=3)
    assert took < 3
    assert _protected(victim)
    assert _flood_is_limited(victim, attacker)
    st = json.loads(state.read_text())
    assert st["repairs"] >= 1 and st["last_repair_ms"] < 100, st
    if what == "foreign chain at -360":
        assert victim.our_priorities()["filter-prerouting"] == -361


def test_a_foreign_dormant_table_is_no_obstacle_and_ours_dormant_is_drift(watched):
    """nft 1.0.6 lists a table with flags as JSON from freed memory: a dormant table anywhere broke
    apply, status and every repair; ours dormant filters nothing."""
    victim, _attacker, proc, _state, policy = watched
    victim.run(["nft", "add table inet foreign { flags dormant; }"])
    tables = victim.run([sys.executable, "-c", "from guard.backend.nft import Nft; print(Nft().list('tables'))"])
    assert "{'family': 'inet', 'name': 'foreign', 'flags': ['dormant']}" in tables.stdout, tables.stdout
    victim.nodeguard("apply", "-c", policy)
    assert _in_sync(victim, policy)
    victim.run("nft flush chain inet nodeguard icmp-flood")
    wait_until(lambda: _in_sync(victim, policy) and _protected(victim), timeout=3)
    proc.kill()
    proc.wait()
    victim.run(["nft", "add table inet nodeguard { flags dormant; }"])
    st = victim.status(policy)
    assert not st["in_sync"] and st["drift"] == "table inet nodeguard has flags dormant", st
    victim.nodeguard("apply", "-c", policy)
    assert _in_sync(victim, policy) and "dormant" not in victim.run("nft list table inet nodeguard").stdout


def test_kube_proxy_full_restore_without_noflush_leaves_protection_alone(watched):
    victim, attacker, _proc, state, policy = watched
    for _ in range(3):
        netlab.load_fixture(victim, "kube-proxy-iptables-tracepacket.rules", "iptables-nft")
    time.sleep(0.3)
    assert _in_sync(victim, policy)
    assert json.loads(state.read_text())["repairs"] == 0  # nothing of ours was touched
    assert _flood_is_limited(victim, attacker)


def test_kill_9_leaves_the_rules_and_a_restart_adopts_them_without_reapplying(watched):
    victim, attacker, proc, state, policy = watched
    assert _flood_is_limited(victim, attacker)
    counted = victim.counters()["icmp-flood: icmp-flood per-source v4"]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _in_sync(victim, policy) and victim.counters()["icmp-flood: icmp-flood per-source v4"] == counted
    state.unlink()
    with netlab.watcher(victim, policy, str(state)):
        wait_until(lambda: json.loads(state.read_text()).get("adopted") is not None)
        st = json.loads(state.read_text())
        assert st["adopted"] is True and st["repairs"] == 0
        assert victim.counters()["icmp-flood: icmp-flood per-source v4"] == counted, "no re-apply, no reset"


def test_a_rival_that_keeps_undercutting_our_priority_is_followed_down_to_minus_399_then_left(watched):
    victim, _attacker, _proc, state, policy = watched
    for prio in range(-351, -402, -1):  # the rival always goes just below us
        victim.run(["nft", f"add table ip rival; add chain ip rival c{-prio} "
                           f"{{ type filter hook prerouting priority {prio}; }}"])
        time.sleep(0.01)
    wait_until(lambda: _in_sync(victim, policy), timeout=5)
    assert victim.our_priorities()["filter-prerouting"] == -399  # never before defrag
    status = victim.nodeguard("status", "-c", policy).stdout
    assert "cannot go below ip rival c401" in status


def test_a_flush_war_is_damped_named_and_cheap(watched):
    victim, _attacker, proc, state, policy = watched
    cpu_before, started = netlab.cpu_seconds(proc.pid), time.monotonic()
    war_s, every_s = 12.0, 0.2
    flushes = 0
    while time.monotonic() - started < war_s:
        victim.run("nft flush chain inet nodeguard icmp-flood")
        flushes += 1
        time.sleep(every_s)
    cpu = (netlab.cpu_seconds(proc.pid) - cpu_before) / (time.monotonic() - started)
    st = json.loads(state.read_text())
    print(f"\nnft flush war: {flushes} flushes, {st['repairs']} repairs, watcher CPU {cpu:.2%}")

    # 6 repairs at once (the 6th trips max_repairs_per_minute 5), then 1, 2, 4 s later: at most 9 in 12 s
    assert flushes >= 50
    assert 5 <= st["repairs"] <= 9, st
    assert st["contested"] and st["contested_by"].startswith("nft (pid"), st
    # Measured: 0.83-0.91 % of a core, quiet and with NODEGUARD_TEST_BUSY=1 (2.0 % before a refill
    # stopped re-reading the table, 5-8 % before strikes were left unchecked while damped).
    assert cpu <= 0.02, f"watcher used {cpu:.1%} of a core during the war"
    assert "CONTESTED by nft (pid" in victim.nodeguard("status", "-c", policy).stdout


@pytest.fixture(params=["nft", "legacy"])
def watched_ipt(request, lab, tmp_path):
    """The watcher over the iptables backend of one flavour."""
    victim, attacker = lab
    state = tmp_path / "watch.json"
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"""
backend: iptables
iptables:
  flavour: {request.param}
icmp:
  per_source: 20/second
  per_source_burst: 20
watcher:
  state_file: {state}
  legacy_poll_s: 0.5
  max_repairs_per_minute: 5
  backoff_max_s: 8
""")
    with netlab.watcher(victim, str(policy), str(state)) as proc:
        yield victim, attacker, proc, state, str(policy), request.param


def _pre_counter(ns, flavour: str) -> int:
    """Packets counted by the first rule of our IPv4 stateless chain (every packet passes it)."""
    out = ns.run([f"iptables-{flavour}-save", "-c", "-t", "raw"]).stdout
    line = next(ln for ln in out.splitlines() if " -A NODEGUARD-PRE " in ln)
    return int(line[1:line.index(":")])


def _ipt_rules(ns, flavour: str, table: str, chain: str) -> list[str]:
    return [ln for ln in ns.run([f"iptables-{flavour}", "-t", table, "-S", chain]).stdout.splitlines()
            if ln.startswith("-A ")]


@pytest.mark.parametrize("what", ["flush and delete our raw chains", "delete our mangle PREROUTING jump",
                                  "flush our ICMP chain and destroy its ipset"])
def test_iptables_disruption_is_repaired_and_the_flood_is_limited_again(watched_ipt, what):
    victim, attacker, _proc, state, policy, flavour = watched_ipt
    ipt = f"iptables-{flavour}"
    if what.startswith("flush our ICMP"):  # the set, unreferenced once the chain is empty, can go too
        victim.run(["sh", "-c", f"{ipt} -t raw -F NODEGUARD-ICMP && ipset destroy NODEGUARD-ICMP-SRC-V4"])
    elif what.startswith("flush"):
        victim.run(f"{ipt} -t raw -F")
        victim.run(f"{ipt} -t raw -X")
    else:
        assert "NODEGUARD-CONN" in _ipt_rules(victim, flavour, "mangle", "PREROUTING")[0]
        victim.run(f"{ipt} -t mangle -D PREROUTING 1")
    took = wait_until(lambda: _in_sync(victim, policy), timeout=5)
    assert took < (0.5 + 1.0 if flavour == "legacy" else 1.0), took  # legacy: one poll interval
    st = json.loads(state.read_text())
    assert st["repairs"] >= 1 and st["backend"] == f"iptables-{flavour}"
    assert st["errors"] == 0, st["last_error"]  # a repair built on a stale ipset list fails, then retries
    assert "NODEGUARD-CONN" in _ipt_rules(victim, flavour, "mangle", "PREROUTING")[0]
    assert _ipt_flood_is_limited(victim, attacker, flavour)


def _ipt_flood_is_limited(victim, attacker, flavour: str) -> bool:
    backend = f"iptables-{flavour}"
    before = victim.counters(backend).get("icmp-flood: icmp-flood per-source v4", 0)
    attacker.run(f"ping -f -i 0.0002 -q -w 1 {VICTIM4}", check=False)
    return victim.counters(backend)["icmp-flood: icmp-flood per-source v4"] > before + 50


def test_insert_war_with_a_kube_router_style_competitor_is_damped_and_protection_holds(watched_ipt):
    victim, attacker, proc, state, policy, flavour = watched_ipt
    war_s = 12.0
    attacker.run(f"ping -c 5 -i 0.01 -q {netlab.VICTIM4}", check=False)
    counted = _pre_counter(victim, flavour)
    assert counted >= 5, counted
    rival = victim.popen([sys.executable, str(netlab.HELPERS / "competitor.py"), flavour, "raw", "PREROUTING",
                          "0.2", str(war_s)])
    cpu_before, started = netlab.cpu_seconds(proc.pid), time.monotonic()
    present = first = samples = 0
    while rival.poll() is None:
        rules = _ipt_rules(victim, flavour, "raw", "PREROUTING")
        samples += 1
        present += any("NODEGUARD-PRE" in r for r in rules)
        first += bool(rules) and "-j NODEGUARD-" in rules[0]  # our jump comes first (PRE, whose head is the ban check)
        time.sleep(0.1)
    cpu = (netlab.cpu_seconds(proc.pid) - cpu_before) / (time.monotonic() - started)
    reinserts = int(rival.stdout.read().strip())
    st = json.loads(state.read_text())
    print(f"\n{flavour}: rival re-inserted {reinserts}x, nodeguard repaired {st['repairs']}x, jump present "
          f"{present}/{samples}, first {first}/{samples}, watcher CPU {cpu:.2%}")

    assert reinserts >= 5, "the rival did fight"
    assert present == samples, "our jump (with all protection behind it) never disappeared"
    assert 0 < first < samples, "we took rule 1 back at times (repairs), and did not fight for it without end"
    # 6 at once (the 6th trips max_repairs_per_minute 5), then 1, 2, 4 s later: at most 10 in 12 s
    assert 5 <= st["repairs"] <= 10, st
    assert st["contested_by"].startswith("KUBE-ROUTER-INPUT"), st
    # A repair puts our jumps back and rewrites no chain: the counters (and the state of every
    # match) in our chains survive the war.
    assert _pre_counter(victim, flavour) >= counted, "a repair rewrote our chains"
    # Measured on 2 noisy cores (other tests beside, or NODEGUARD_TEST_BUSY=1): iptables-nft
    # 0.98-1.49 %, legacy 0.98-1.74 % (9 repairs, 15 checks), legacy 2.04 % once in a suite run beside
    # seven other jobs; before the fix 7-9 % and 5-6 %. The bound sits between the two.
    assert cpu <= 0.03, f"watcher used {cpu:.1%} of a core during the war"
    assert "CONTESTED by KUBE-ROUTER-INPUT" in victim.nodeguard("status", "-c", policy).stdout


def test_sighup_reloads_the_policy_and_a_bad_edit_keeps_the_current_rules(watched):
    victim, _attacker, proc, state, policy = watched
    text = Path(policy).read_text()
    Path(policy).write_text(text.replace("per_source: 20/second", "per_source: 7/second"))
    os.kill(proc.pid, signal.SIGHUP)
    wait_until(lambda: "7/second" in victim.run("nft list chain inet nodeguard icmp-flood").stdout, timeout=3)
    assert _in_sync(victim, policy)

    def failed() -> int:
        return json.loads(state.read_text())["reloads_failed"]

    Path(policy).write_text(text.replace("per_source: 20/second", "per_source: lots"))
    os.kill(proc.pid, signal.SIGHUP)
    wait_until(lambda: failed() == 1, timeout=5, interval=0.1)
    assert proc.poll() is None, "a bad edit must not kill the watcher"
    assert "7/second" in victim.run("nft list chain inet nodeguard icmp-flood").stdout

    Path(policy).write_text(text.replace("per_source: 20/second", "per_source: 9/second"))
    os.chmod(policy, 0o666)  # a good edit in a file anyone could have written: refused, as at the start
    os.kill(proc.pid, signal.SIGHUP)
    wait_until(lambda: failed() == 2, timeout=5, interval=0.1)
    assert "7/second" in victim.run("nft list chain inet nodeguard icmp-flood").stdout


def test_a_sighup_reload_switches_backend_and_flavour_and_removes_the_old_rules(watched):
    """nft -> iptables-legacy -> iptables-nft by reloads: each new kind or flavour is decided for its
    policy and installed as a switch, which removes what the one before left."""
    victim, _attacker, proc, state, policy = watched
    text = Path(policy).read_text()
    for head, want in (("backend: iptables\niptables:\n  flavour: legacy\n", "iptables-legacy"),
                       ("backend: iptables\niptables:\n  flavour: nft\n", "iptables-nft")):
        Path(policy).write_text(head + text)
        os.kill(proc.pid, signal.SIGHUP)
        wait_until(lambda: json.loads(state.read_text()).get("backend") == want and _in_sync(victim, policy),
                   timeout=5, interval=0.1)
    assert "NODEGUARD" not in victim.run("iptables-legacy-save").stdout
    assert "NODEGUARD-PRE" in victim.run("iptables-nft-save").stdout
    assert "nodeguard" not in victim.run("nft list tables inet").stdout


def test_notes_are_kept_by_topic_and_cleared_by_topic(tmp_path):
    """Status shows one note per condition; clearing one never has to match its text."""
    from guard.lastgood import FALLBACK_NOTE
    from guard.policy.schema import Policy
    from guard.watch.watcher import INTERFACES_NOTE, Watcher

    w = Watcher(Policy.model_validate({"watcher": {"state_file": str(tmp_path / "watch.json")}}), None)
    w.note(FALLBACK_NOTE, "running the last good policy: x")
    w.note(INTERFACES_NOTE, "eth9 is gone: keeping the last known interfaces eth0")
    w.note(INTERFACES_NOTE, "eth8 is gone: keeping the last known interfaces eth0")
    assert w.state["notes"] == ["running the last good policy: x", "eth8 is gone: keeping the last known interfaces eth0"]
    w.clear_note(FALLBACK_NOTE)
    assert not w.has_note(FALLBACK_NOTE) and w.has_note(INTERFACES_NOTE)
    assert w.state["notes"] == ["eth8 is gone: keeping the last known interfaces eth0"]


def test_the_watcher_holds_the_odds_of_the_file_it_started_with(tmp_path):
    """Issue 17: the odds file gives the odds back after a restart; then the watcher renders with
    the ones it holds (set_odds changes them), whoever writes the file meanwhile."""
    from guard import sampling_odds
    from guard.policy.schema import Policy
    from guard.watch.watcher import Watcher

    policy = Policy.model_validate({"watcher": {"state_file": str(tmp_path / "watch.json")}})
    sampling_odds.save(sampling_odds.path_for(policy), {"syn-flood": 5})
    w = Watcher(policy, None)
    sampling_odds.save(sampling_odds.path_for(policy), {"syn-flood": 2})
    assert w.odds == {"syn-flood": 5} and w.set_odds({"syn-flood": 5, "icmp-flood": 0}) is None


def test_an_update_that_cannot_be_installed_keeps_what_was_held(tmp_path):
    """Odds and ``ports: auto`` sets are held only once installed: before the watcher has installed
    anything (a reload not yet in place) both updates are refused, the old value is held again and
    the kernel is looked at again on the next turn, and no port update is counted."""
    from guard.policy.schema import Policy
    from guard.watch.watcher import Watcher

    policy = Policy.model_validate({"interfaces": ["ng-test0"], "watcher": {"state_file": str(tmp_path / "watch.json")}})
    w = Watcher(policy, None)
    assert w.set_odds({"syn-flood": 3}) is None
    assert w.odds == {} and w._recheck and w._live is None

    w._recheck = False
    w.plan()  # holds the listeners' set, as the first check does
    held = {4: [0], 6: [0]}  # no listener is on port 0: the redetected set differs
    w.ports.ports = held
    assert w._update_ports() is None
    assert w.ports.ports is held and w._recheck and w.state["port_updates"] == 0


def test_a_reload_candidate_decides_its_own_flavour_and_the_policy_in_place_keeps_its(tmp_path):
    """The iptables flavour is decided once per policy: a reload's candidate decides its own without
    touching the one in place; falling back to the last good policy decides it again."""
    from guard.policy.load import parse_policy
    from guard.watch.watcher import Watcher

    def policy(head: str):
        return parse_policy(f"{head}interfaces: [ng-test0]\nsampler:\n  enabled: false\nsyn:\n  synproxy:\n"
                            f"    ports: []\nwatcher:\n  state_file: {tmp_path / 'watch.json'}\n", "p.yaml")

    legacy = policy("backend: iptables\niptables:\n  flavour: legacy\n")
    w = Watcher(legacy, None)
    assert (w.plan().backend.name, w.plan().backend_reason) == ("iptables-legacy", "iptables.flavour in the policy")
    candidate = policy("backend: iptables\niptables:\n  flavour: nft\n")
    assert w.plan(candidate, {}).backend.name == "iptables-nft"
    assert w.plan().backend.name == "iptables-legacy"
    w.good_policy = candidate
    w._failed("check", RuntimeError("x"))
    assert (w.plan().backend.name, w.plan().flavour) == ("iptables-nft", "nft")
