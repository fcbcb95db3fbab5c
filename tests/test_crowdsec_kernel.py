"""CrowdSec with a real Local API (crowdsec -no-cs, in the attacker's namespace at 10.77.0.2) and a real
``nodeguard run`` on the victim: ban decisions made with cscli reach the victim's ban sets within
pull_interval_s + 1 s and drop that source's packets; an allowlisted address inside a banned range still
gets through; a deleted decision lifts its ban; a LAPI that is gone changes nothing in the kernel, and
the bans in place run out on time. Two nodes: a ban by escalation on one is dropped on the other."""

from __future__ import annotations

import json
import signal
import sys
import time

import crowdsec_lab
import netlab
from guard.crowdsec.decisions import go_duration
from guard.model.build import STATELESS_CHAIN
from netlab import ATTACKER4, FRESH4, TRUSTED4, VICTIM4, wait_until

BAN_CHECK = STATELESS_CHAIN  # the ban rules head filter-prerouting
PULL_S = 1
SAMPLER_WINDOW_S = 1


def _replies(attacker, src: str) -> int:
    return netlab.ping_stats(attacker.run(["ping", "-4", "-c", "1", "-W", "0.3", "-I", src, VICTIM4],
                                          check=False).stdout)[1]


def _set(victim, base: str) -> str:
    return next(s["set"]["name"] for s in victim.nft_json("sets") if "set" in s
                and s["set"]["name"].rsplit("-", 1)[0] == base)


def _metric(victim, name: str) -> float:
    code = ("import sys, urllib.request; "
            "sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:9632/metrics', timeout=10).read().decode())")
    line = next(line for line in victim.run([sys.executable, "-c", code]).stdout.splitlines()
                if line.startswith(name))
    return float(line.split()[-1])


def test_lapi_bans_reach_the_ban_sets_drop_and_lift_and_survive_the_lapi_going_away(lab, write_policy, tmp_path):
    victim, attacker = lab
    banned_ip, (range_a, range_b) = FRESH4[0], FRESH4[1:]  # .5; .6 and .7 = 10.77.0.6/31, .7 allowlisted
    with crowdsec_lab.lapi(attacker, tmp_path / "cs", f"{ATTACKER4}:8080") as server:
        key = crowdsec_lab.secret_file(tmp_path / "secrets" / "key", server.bouncer_key())
        server.cscli("decisions", "add", "--ip", banned_ip, "--duration", "1h")  # before: the startup pull
        policy = write_policy(netlab.NO_ESCALATION + f"allow:\n  cidrs: [{range_b}/32]\n"
                              f"crowdsec:\n  enabled: true\n  url: {server.url}\n  api_key_file: {key}\n"
                              f"  pull_interval_s: {PULL_S}\n")
        log = open(tmp_path / "run.log", "w")
        run = victim.popen([sys.executable, "-m", "guard", "run", "-c", policy, "--last-good",
                            str(tmp_path / "lg.yaml")], stdout=log, stderr=log)
        try:
            addresses, ranges = _wait_sets(victim, run, tmp_path)
            wait_until(lambda: victim.has_element("nft", addresses, banned_ip), timeout=PULL_S + 5, interval=0.05)
            assert _replies(attacker, banned_ip) == 0 and _replies(attacker, TRUSTED4) == 1

            server.cscli("decisions", "add", "--range", f"{range_a}/31", "--duration", "1h")
            took = wait_until(lambda: victim.has_element("nft", ranges, range_a), timeout=PULL_S + 1, interval=0.05)
            print(f"a range decision reached the ban set in {took:.2f} s")
            assert _replies(attacker, range_a) == 0
            assert _replies(attacker, range_b) == 1, "allowlisted: never dropped, even inside a banned range"
            assert victim.counters()[f"{BAN_CHECK}: banned by crowdsec v4 range"] >= 1
            assert victim.counters()[f"{BAN_CHECK}: banned by crowdsec v4"] >= 1
            assert _metric(victim, 'nodeguard_crowdsec_decisions{family="ipv4"}') == 2
            bans = json.loads(victim.nodeguard("bans", "--json", "-c", policy).stdout)["bans"]
            assert sorted((b["source"], b["by"], b["reason"]) for b in bans) == [
                (f"{banned_ip}/32", "crowdsec", "CrowdSec: manual 'ban' from 'nodeA'"),
                (f"{range_a}/31", "crowdsec", "CrowdSec: manual 'ban' from 'nodeA'")]
            assert all(3500 < b["expires_in_s"] <= 3600 for b in bans)

            server.cscli("decisions", "delete", "--ip", banned_ip)
            wait_until(lambda: not victim.has_element("nft", addresses, banned_ip), timeout=PULL_S + 1, interval=0.05)
            assert _replies(attacker, banned_ip) == 1

            server.cscli("decisions", "add", "--ip", banned_ip, "--duration", "3s")  # runs out after the LAPI is gone
            wait_until(lambda: victim.has_element("nft", addresses, banned_ip), timeout=PULL_S + 1, interval=0.05)
            server.stop()  # the LAPI is gone: the range stays banned, status and metrics say so
            wait_until(lambda: _metric(victim, 'nodeguard_crowdsec_errors_total{op="pull"}') >= 1,
                       timeout=PULL_S + 5, interval=0.1)  # each look is a scrape by a new python process
            assert victim.has_element("nft", ranges, range_a) and _replies(attacker, range_a) == 0
            st = json.loads(victim.nodeguard("status", "--json", "-c", policy).stdout)["crowdsec"]
            assert st["decisions"] == {"ipv4": 2, "ipv6": 0} and "pull" in st["problem"] and st["alive"]
            wait_until(lambda: not victim.has_element("nft", addresses, banned_ip), timeout=4, interval=0.1)
            assert _replies(attacker, banned_ip) == 1, "its ban ran out on time, with nobody to ask"
            assert victim.has_element("nft", ranges, range_a), "the hour-long one stays"
        finally:
            run.terminate()
            run.wait(15)
            log.close()
    assert "Traceback" not in (tmp_path / "run.log").read_text()


def _wait_sets(victim, run, tmp_path) -> tuple[str, str]:
    def installed() -> bool:
        assert run.poll() is None, (tmp_path / "run.log").read_text()
        return any(s["set"]["name"].startswith("crowdsec-ranges-v4") for s in victim.nft_json("sets") if "set" in s)
    wait_until(installed, timeout=15)
    return _set(victim, "crowdsec-v4"), _set(victim, "crowdsec-ranges-v4")


PUSHER = """
import json, sys, time
from guard.crowdsec import lapi
from guard.crowdsec.decisions import parse_stream
from guard.daemon.crowdsec_part import CrowdsecPart
from guard.policy.load import load_policy
policy = load_policy(sys.argv[1])[0]
part = CrowdsecPart(lambda: None, lambda: policy)
cs = policy.crowdsec
answer = lapi.stream(cs.url, open(cs.api_key_file).read().strip(), True)
new, deleted, _ = parse_stream(answer, cs.scopes, (), cs.min_prefix)
part.held.pulled(new, deleted, time.monotonic(), True)  # what the LAPI bans: never pushed back
part.banned([{"type": "ban", "ts": time.time(), "src": s, "groups": ["icmp-flood"], "after_s": 3}
             for s in ("10.66.0.1", "10.66.0.9", "fd00:1:2:3::/64")])
print(json.dumps({"pushed": part.push(), "errors": part.errors, "last_push": part.last_push}))
"""


def test_escalation_bans_are_pushed_to_the_lapi_and_its_own_bans_never_back(ns, write_policy, tmp_path):
    with crowdsec_lab.lapi(ns, tmp_path / "cs", "127.0.0.1:8080") as server:
        key = crowdsec_lab.secret_file(tmp_path / "secrets" / "key", server.bouncer_key())
        password = crowdsec_lab.secret_file(tmp_path / "secrets" / "password", crowdsec_lab.PASSWORD)
        server.cscli("decisions", "add", "--range", "10.66.0.8/29", "--duration", "1h")
        policy = write_policy(f"escalate:\n  ban_s: 600\ncrowdsec:\n  enabled: true\n  url: {server.url}\n"
                              f"  api_key_file: {key}\n  push: true\n  machine_id: {crowdsec_lab.MACHINE}\n"
                              f"  password_file: {password}\n")
        res = ns.run([sys.executable, "-c", PUSHER, policy])
        out = json.loads(res.stdout)
        assert out["pushed"] is True and out["errors"]["push"] == 0 and out["last_push"] > 0, res.stderr
        pushed = {(d["value"], d["scope"], d["scenario"], d["origin"]) for d in server.decisions()
                  if d["scenario"].startswith("nodeguard/")}
        assert pushed == {("10.66.0.1", "Ip", "nodeguard/icmp-flood", crowdsec_lab.MACHINE),
                          ("fd00:1:2:3::/64", "Range", "nodeguard/icmp-flood", crowdsec_lab.MACHINE)}
        left = {d["value"]: d["duration"] for d in server.decisions()}
        assert 590 <= go_duration(left["10.66.0.1"]) <= 600, "the ban lasts escalate.ban_s"


def test_a_flooder_banned_on_node_a_is_dropped_on_node_b_and_a_lapi_delete_lifts_it_there(lab, tmp_path):
    """Node A (the victim) and node B (its own namespace behind the attacker's, 10.78.0.1) each run
    nodeguard with CrowdSec on; A pushes. The attacker floods A from .5 until escalation bans it there;
    B drops .5 soon after, by A's pushed decision; deleting that decision on the LAPI lifts the ban on
    both."""
    node_a, attacker = lab
    src = FRESH4[0]
    with netlab.namespace("ngv") as node_b, crowdsec_lab.lapi(attacker, tmp_path / "cs", "0.0.0.0:8080") as server:
        netlab.core.veth(node_b, "ngv1", attacker, "ngb1")
        node_b.run("ip addr add 10.78.0.1/24 dev ngv1")
        attacker.run("ip addr add 10.78.0.2/24 dev ngb1")
        node_b.run("ip route add default via 10.78.0.2")
        secrets = tmp_path / "secrets"
        password = crowdsec_lab.secret_file(secrets / "password", crowdsec_lab.PASSWORD)
        runs = []
        for name, node, url, extra in (
                ("a", node_a, f"http://{ATTACKER4}:8080/", f"  push: true\n  machine_id: {crowdsec_lab.MACHINE}\n"
                                                          f"  password_file: {password}\n"),
                ("b", node_b, "http://10.78.0.2:8080/", "")):
            (tmp_path / name).mkdir(mode=0o755)
            key = crowdsec_lab.secret_file(secrets / f"key-{name}", server.bouncer_key(f"node-{name}"))
            policy = tmp_path / name / "policy.yaml"
            policy.write_text(
                "icmp:\n  rate: 100000/second\n  per_source: 10/second burst 10\n"
                "escalate:\n  after_s: 2\n  gap_s: 1\n  ban_s: 60\n"
                f"watcher:\n  state_file: {tmp_path}/{name}/watch.json\n"
                f"sampler:\n  window_s: {SAMPLER_WINDOW_S}\n  log: {tmp_path}/{name}/attacks.jsonl\n"
                f"crowdsec:\n  enabled: true\n  url: {url}\n  api_key_file: {key}\n  pull_interval_s: {PULL_S}\n"
                + extra)
            log = open(tmp_path / name / "run.log", "w")
            runs.append((node.popen([sys.executable, "-m", "guard", "run", "-c", str(policy), "--last-good",
                                     str(tmp_path / name / "lg.yaml")], stdout=log, stderr=log), log))
        try:
            _wait_sets(node_a, runs[0][0], tmp_path / "a")
            b_set = _wait_sets(node_b, runs[1][0], tmp_path / "b")[0]
            a_banned = _set(node_a, "banned-v4")
            flood = netlab.flood(attacker, 8, "--icmp", "-a", src, VICTIM4)
            wait_until(lambda: node_a.has_element("nft", a_banned, src), timeout=6, interval=0.02)
            banned_at = time.monotonic()
            # A's sampler sees the ban at its window's end and A pushes at once; B pulls every PULL_S: 3 s
            # at most on an idle machine. Measured: 0.94, 1.03, 1.45 s; over 4 s once on this 2-core machine
            # at load 6 (other kernel tests beside): the bound is twice the design's
            wait_until(lambda: node_b.has_element("nft", b_set, src), timeout=15, interval=0.02)
            took = time.monotonic() - banned_at
            print(f"banned on A, in B's ban set {took:.2f} s later")
            assert took <= 2 * (SAMPLER_WINDOW_S + PULL_S + 1), took
            flood.send_signal(signal.SIGINT)  # timeout(1) hands it to hping3
            flood.wait()
            assert netlab.ping_stats(attacker.run(["ping", "-c", "1", "-W", "0.3", "-I", src, "10.78.0.1"],
                                                  check=False).stdout)[1] == 0
            pushed = [d for d in server.decisions() if d["value"] == src]
            assert [(d["scenario"], d["origin"]) for d in pushed] == [("nodeguard/icmp-flood", crowdsec_lab.MACHINE)]
            assert node_a.has_element("nft", a_banned, src), "still banned on A (escalate.ban_s: 60)"
            server.cscli("decisions", "delete", "--ip", src)
            # each node lifts it at its next pull (every PULL_S); the bound is twice the design's, as above: a
            # full-suite run on this 2-core machine once took over PULL_S + 1 s on node A
            lifted = 2 * (PULL_S + 1)
            wait_until(lambda: not node_b.has_element("nft", b_set, src), timeout=lifted, interval=0.05)
            wait_until(lambda: not node_a.has_element("nft", a_banned, src), timeout=lifted, interval=0.05)
            assert netlab.ping_stats(attacker.run(["ping", "-c", "1", "-W", "1", "-I", src, "10.78.0.1"],
                                                  check=False).stdout)[1] == 1
        finally:
            for proc, log in runs:
                proc.terminate()
                proc.wait(15)
                log.close()
    for name in ("a", "b"):
        assert "Traceback" not in (tmp_path / name / "run.log").read_text()


OVERFLOW = """
import http.server, json, subprocess, sys, threading
from guard.cli._shared import kernel, reading_plan
from guard.daemon.crowdsec_part import CrowdsecPart
from guard.policy.load import load_policy

def ban(i, ip, duration):
    return {"id": i, "type": "ban", "scope": "Ip", "value": ip, "duration": duration, "scenario": "s", "origin": "x"}

answers = [{"new": [ban(i, f"10.9.0.{i}", "1h") for i in range(1, 17)]},  # a full set
           {"new": [ban(100 + i, f"10.8.0.{i}", f"{7200 + i}s") for i in range(1, 18)], "deleted": [{"id": 3}]},
           {"deleted": [{"id": 100 + i} for i in range(1, 18)]}]

class Lapi(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps(answers.pop(0)).encode()
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass

threading.Thread(target=http.server.HTTPServer(("127.0.0.1", 18181), Lapi).serve_forever, daemon=True).start()
policy = load_policy(sys.argv[1])[0]
plan = reading_plan(policy, kernel())
part = CrowdsecPart(lambda: plan, lambda: policy)
for _ in range(3):
    ok = part.step()
    name = part._sets[(4, "address")][0]
    got = json.loads(subprocess.run(["nft", "-j", "list", "set", "inet", "nodeguard", name], capture_output=True,
                                    check=True).stdout)["nftables"][1]["set"].get("elem", [])
    print(json.dumps({"ok": ok, "problem": part.problem, "left_out": part.left_out, "held": part.held.counts()[4],
                      "kernel": sorted(e["elem"]["val"] for e in got)}))
"""


def test_more_decisions_than_the_set_holds_keep_the_longest_and_deletions_still_reach_the_kernel(ns, write_policy,
                                                                                                  tmp_path):
    key = crowdsec_lab.secret_file(tmp_path / "secrets" / "key", "k")
    ns.run(["ip", "link", "add", "ng0", "type", "veth", "peer", "name", "ng1"])
    policy = write_policy("interfaces: [ng0]\ncrowdsec:\n  enabled: true\n  url: http://127.0.0.1:18181/\n  size: 16\n"
                          f"  api_key_file: {key}\n")
    ns.nodeguard("apply", "-c", policy)
    res = ns.run([sys.executable, "-c", OVERFLOW, policy], check=False)
    assert res.returncode == 0, res.stderr
    full, over, deleted = (json.loads(line) for line in res.stdout.splitlines())
    assert full["ok"] and len(full["kernel"]) == 16
    assert over["ok"] and over["problem"] is None and over["held"] == 32 and over["left_out"] == 16
    assert over["kernel"] == sorted(f"10.8.0.{i}" for i in range(2, 18)), "the 16 that end last"
    assert deleted["ok"] and deleted["left_out"] == 0
    assert deleted["kernel"] == sorted(f"10.9.0.{i}" for i in range(1, 17) if i != 3), "deleted on the LAPI: gone"
