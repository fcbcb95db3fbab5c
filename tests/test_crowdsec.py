"""CrowdSec without a kernel: the decision stream read as untrusted input, Go durations, the decisions
held, the nft text one pull sends, the HTTP client's bounds (against a real local HTTP server), the
policy section and the metrics."""

from __future__ import annotations

import http.server
import ipaddress
import json
import threading
import time

import pytest
from prometheus_client import generate_latest

from guard.crowdsec import lapi, state
from guard.crowdsec.decisions import MAX_DURATION_S, Decision, go_duration, parse_stream
from guard.crowdsec.held import Held, comment, scenario
from guard.crowdsec.kernel import transaction
from guard.errors import PolicyError
from guard.metrics import registry
from guard.daemon.crowdsec_part import CrowdsecPart
from guard.policy.load import load_policy, parse_policy
from guard.policy.runtime import Crowdsec
from crowdsec_lab import secret_file
from test_metrics import samples

SCOPES = ("Ip", "Range")
MIN = Crowdsec().min_prefix


def _d(i: int, value: str, scope: str = "Ip", duration: str = "1h", **kw) -> dict:
    return {"id": i, "value": value, "scope": scope, "type": "ban", "duration": duration,
            "origin": "cscli", "scenario": "manual 'ban' from 'nodeA'", **kw}


@pytest.mark.parametrize("text, seconds", [("59m58.9s", 3598.9), ("3h", 10800), ("1h2m3.5s", 3723.5),
                                           ("-2.1s", -2.1), ("0", 0), ("300ms", 0.3), ("1.5h", 5400),
                                           ("3h59m58.123456789s", 14398.123456789), ("1m", 60), ("2h0.5s", 7200.5), ("1h1h", 7200), ("1.s.5s", 1.5)])
def test_go_durations(text, seconds):
    assert go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "3", "1h 2m", "1e3s", "h", "1hh", "1d", None, 3600, "9" * 80 + "s",
                                  "s", "m", ".s", "59m60ss"])
def test_what_is_not_a_go_duration_is_none(text):
    assert go_duration(text) is None


def test_the_stream_keeps_well_formed_bans_and_counts_what_it_skips():
    answer = {"new": [
        _d(1, "10.9.0.5/24", "Range", "59m58.9s"),  # a range written loosely: its network
        _d(2, "fd00::5"),
        _d(3, "10.1.1.1", duration="1000000h"),  # capped
        _d(4, "10.1.1.2", type="captcha"),  # not a ban: not ours, not malformed
        _d(5, "10.1.1.3", origin="CAPI"),  # another origin, filtered out below
        _d(6, "10.1.1.4", duration="-1s"),  # already over
        # malformed: counted
        _d(7, "0.0.0.0/0", "Range"), _d(8, "10.1.1.0/24"), _d(9, "not an address"), _d(10, "10.1.1.5", duration="1d"),
        _d(11, "１０.1.1.6"), _d(12, "fe80::1%eth0"), _d(19, "010.1.1.1"), _d(22, "::"), _d("13", "10.1.1.7"), _d(14, ["x"]), _d(15, "0.0.0.0"),
        {"id": 16}, "junk", None, 17, _d(18, "10.1.1.8", scenario="x" * 600), _d(True, "10.1.1.9"),
    ], "deleted": [_d(20, "10.2.2.2"), {"id": "21"}, None]}
    new, deleted, skipped = parse_stream(answer, SCOPES, ("cscli",), MIN)
    assert [(d.id, d.net, d.version, d.scope) for d in new] == [(1, "10.9.0.0/24", 4, "Range"), (2, "fd00::5", 6, "Ip"),
                                                                 (3, "10.1.1.1", 4, "Ip")]
    assert new[0].left_s == 3599 and new[2].left_s == MAX_DURATION_S
    assert deleted == [20] and skipped == 17 + 2


def test_ranges_wider_than_the_minimum_prefix_are_skipped_and_counted_the_mapped_by_the_ipv4_one():
    assert MIN == {4: 8, 6: 32}
    wide = ["128.0.0.0/1", "0.0.0.0/1", "10.0.0.0/7", "8000::/1", "2001::/31", "::ffff:0:0/97", "::ffff:10.0.0.0/103"]
    ok = ["10.0.0.0/8", "2001:db8::/32", "::ffff:10.0.0.0/104"]
    new, _deleted, skipped = parse_stream({"new": [_d(i, n, "Range") for i, n in enumerate(wide + ok)]}, SCOPES, (),
                                          MIN)
    assert [d.net for d in new] == ["10.0.0.0/8", "2001:db8::/32", "10.0.0.0/8"] and skipped == len(wide)
    new, _deleted, skipped = parse_stream({"new": [_d(1, "10.0.0.0/8", "Range")]}, SCOPES, (), {4: 9, 6: 32})
    assert new == [] and skipped == 1
    assert parse_policy("crowdsec: {min_prefix_v4: 16, min_prefix_v6: 48}\n", "p.yaml").crowdsec.min_prefix == \
        {4: 16, 6: 48}
    with pytest.raises(PolicyError):
        parse_policy("crowdsec: {min_prefix_v4: 33}\n", "p.yaml")


def test_an_ipv4_mapped_decision_is_the_ipv4_address_or_range():
    """On the wire an IPv4 source is never ::ffff:a.b.c.d: held as that, the decision would drop nobody."""
    new, _deleted, skipped = parse_stream({"new": [_d(1, "::ffff:10.1.1.9"), _d(2, "::ffff:10.2.0.0/112", "Range"),
                                                   _d(3, "::ffff:0.0.0.0")]}, SCOPES, (), MIN)
    assert [(d.net, d.version, d.scope) for d in new] == [("10.1.1.9", 4, "Ip"), ("10.2.0.0/16", 4, "Range")]
    assert skipped == 1


def test_scopes_filter_and_a_stream_that_is_not_an_object_raises_a_value_error():
    new, _deleted, skipped = parse_stream({"new": [_d(1, "10.0.0.0/8", "Range"), _d(2, "10.0.0.1")]}, ("Ip",), (), MIN)
    assert [d.id for d in new] == [2] and skipped == 0
    assert parse_stream({"new": None, "deleted": None}, SCOPES, (), MIN) == ([], [], 0)
    for bad in ([], "x", None, {"new": {"a": 1}}, {"deleted": "x"}):
        with pytest.raises(ValueError):
            parse_stream(bad, SCOPES, (), MIN)


def _decision(i: int, net: str, left: int = 100, scenario: str = "s") -> Decision:
    n = ipaddress.ip_network(net)
    one = n.prefixlen == n.max_prefixlen
    return Decision(i, str(n.network_address) if one else net, n.version, "Ip" if one else "Range", left, scenario,
                    "cscli")


@pytest.mark.parametrize("name", ["crowdsecurity/ssh-bf", "s", "crowdsec x", "a:b@c.d'e-f_g"])
def test_an_element_comment_gives_back_the_scenario_it_was_written_from(name):
    assert scenario(comment(_decision(1, "10.0.0.1/32", scenario=name))) == name


@pytest.mark.parametrize("text", ["", "someone's ban", "crowdsec", "CROWDSEC x", "\x1b[31m"])
def test_a_comment_crowdsec_did_not_write_is_shown_as_it_is(text):
    """Another writer's element (CAP_NET_ADMIN): its text is passed on, escaped where shown (cli/bans.py)."""
    assert scenario(text) == text


def test_held_decisions_one_prefix_lasts_as_long_as_its_longest_and_nested_ranges_keep_the_outermost():
    held = Held()
    held.pulled([_decision(1, "10.0.0.1/32", 100), _decision(2, "10.0.0.1/32", 300, "other"),
                 _decision(3, "10.0.0.0/16", 50), _decision(4, "10.0.5.0/24", 500), _decision(5, "fd00::/64", 1000)],
                [], now=1000.0, startup=True)
    want = held.want(16)[0]
    assert want[(4, "address")] == {"10.0.0.1": (1300.0, "crowdsec other")}
    assert list(want[(4, "range")]) == ["10.0.0.0/16"]
    assert held.holds(ipaddress.ip_network("10.0.9.0/24")) and held.holds(ipaddress.ip_network("10.0.0.1/32"))
    assert not held.holds(ipaddress.ip_network("10.1.0.1/32"))
    assert held.counts() == {4: 4, 6: 1}
    held.pulled([], [2, 3], now=1010.0, startup=False)  # the longer scenario and the wide range deleted
    want = held.want(16)[0]
    assert want[(4, "address")] == {"10.0.0.1": (1100.0, "crowdsec s")}
    assert list(want[(4, "range")]) == ["10.0.5.0/24"], "the nested range comes back"
    held.pulled([], [], now=1200.0, startup=False)  # decision 1 ran out
    assert held.counts() == {4: 1, 6: 1}
    held.pulled([_decision(9, "10.7.7.7/32")], [], now=1200.0, startup=True)  # a startup pull replaces all
    assert held.counts() == {4: 1, 6: 0}


NAMES = {(4, "address"): "crowdsec-v4-aa", (4, "range"): "crowdsec-ranges-v4-bb"}


def test_the_first_pull_refills_each_set_and_later_pulls_send_only_what_changed():
    held = Held()
    held.pulled([_decision(1, "10.0.0.1/32", 100, "ssh-bf \"x\" } ; flush ruleset\n"), _decision(2, "10.1.0.0/16")],
                [], now=0.0, startup=True)
    text, installed = transaction(NAMES, held.want(16)[0], None, now=0.0)
    assert text.splitlines() == [
        "flush set inet nodeguard crowdsec-v4-aa",
        'add element inet nodeguard crowdsec-v4-aa { 10.0.0.1 timeout 100s comment '
        '"crowdsec ssh-bf _x_ _ _ flush ruleset_" }',
        "flush set inet nodeguard crowdsec-ranges-v4-bb",
        'add element inet nodeguard crowdsec-ranges-v4-bb { 10.1.0.0/16 timeout 100s comment "crowdsec s" }']
    assert transaction(NAMES, held.want(16)[0], installed, now=5.0)[0] == "", "nothing changed: nothing sent"

    held.pulled([_decision(3, "10.0.0.2/32", 60)], [1], now=10.0, startup=False)
    text, installed = transaction(NAMES, held.want(16)[0], installed, now=10.0)
    assert text.splitlines() == [
        "add element inet nodeguard crowdsec-v4-aa { 10.0.0.1 }",
        "delete element inet nodeguard crowdsec-v4-aa { 10.0.0.1 }",
        'add element inet nodeguard crowdsec-v4-aa { 10.0.0.2 timeout 60s comment "crowdsec s" }']
    held.pulled([_decision(4, "10.0.0.0/8", 30)], [], now=20.0, startup=False)  # a wider range: refilled
    text, _installed = transaction(NAMES, held.want(16)[0], installed, now=20.0)
    assert text.splitlines() == [
        "flush set inet nodeguard crowdsec-ranges-v4-bb",
        'add element inet nodeguard crowdsec-ranges-v4-bb { 10.0.0.0/8 timeout 30s comment "crowdsec s" }']


def test_a_set_never_gets_more_than_its_size_the_longest_are_kept_and_deletions_still_apply():
    held = Held()
    held.pulled([_decision(i, f"10.0.0.{i}/32", 100 + i) for i in range(1, 17)], [], now=0.0, startup=True)
    _text, installed = transaction(NAMES, held.want(16)[0], None, now=0.0)
    held.pulled([_decision(100 + i, f"12.0.0.{i}/32", 1000 + i) for i in range(1, 18)], [3], now=1.0, startup=False)
    want, left_out = held.want(16)
    assert len(want[(4, "address")]) == 16 and left_out == 16 and held.counts()[4] == 32
    assert "12.0.0.1" not in want[(4, "address")] and "12.0.0.17" in want[(4, "address")], "the latest end wins"
    text, _installed = transaction(NAMES, want, installed, now=1.0)
    first, delete, add = text.splitlines()
    assert first.startswith("add element") and "10.0.0.3" in first and "12.0.0." not in first, \
        "a full set takes no new prefix before the deletes"
    assert delete.startswith("delete element") and add.count("12.0.0.") == 16


class _Answer(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        if self.headers["X-Api-Key"] == "drip":
            return self._drip()
        body = {"/big": b"[" + b"0," * 600 + b"0]", "/junk": b"\x00\xff{[",
                "/ok": json.dumps({"new": None, "deleted": None, "key": self.headers["X-Api-Key"]}).encode()
                }.get(self.path.split("?")[0])
        if body is None:
            self.send_response(403)
            self.end_headers()
            return
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body)

    def _drip(self):  # headers, then a byte every so often: never the whole answer
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        try:
            while True:
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:  # the client gave up
            pass

    def log_message(self, *a):
        pass


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/"
    srv.shutdown()
    srv.server_close()


def test_the_client_bounds_and_names_every_failure_in_one_line(server):
    assert lapi.call(server, "/ok", {"X-Api-Key": "k1"})["key"] == "k1"
    for path, why in (("/big", "answer over 1000 bytes"), ("/junk", "not JSON"), ("/v1/decisions/stream", "HTTP 403")):
        with pytest.raises(lapi.LapiError) as exc:
            lapi.call(server, path, {}, max_bytes=1000)
        assert why in str(exc.value) and str(exc.value).isprintable()
    with pytest.raises(lapi.LapiError, match="refused"):
        lapi.call("http://127.0.0.1:1/", "/v1/decisions/stream", {})


def test_an_answer_that_drips_is_cut_off_at_the_deadline_as_one_line(server):
    t0 = time.monotonic()
    with pytest.raises(lapi.LapiError) as exc:
        lapi.call(server, "/v1/decisions/stream", {"X-Api-Key": "drip"}, deadline_s=1)
    assert str(exc.value) == "/v1/decisions/stream: no whole answer within 1 s"
    assert time.monotonic() - t0 < 1 + lapi.TIMEOUT_S / 4, "each byte came well within the read timeout"


def test_a_dripping_lapi_is_a_pull_failure_that_status_shows(server, write_policy, tmp_path, monkeypatch):
    monkeypatch.setattr(lapi, "DEADLINE_S", 1)
    key = secret_file(tmp_path / "secrets" / "key", "drip")
    policy = load_policy(write_policy(f"crowdsec:\n  enabled: true\n  url: {server}\n  api_key_file: {key}\n"))[0]
    part = CrowdsecPart(lambda: object(), lambda: policy)
    assert part.step() is False and part.errors["pull"] == 1
    shown = state.lines(state.read(policy.watcher.state_file), server)
    assert shown[1].startswith("  FAILING: 'pull: /v1/decisions/stream: no whole answer within 1 s'"), shown


def test_the_section_is_off_by_default_and_refused_with_iptables():
    assert parse_policy("{}", "p.yaml").crowdsec.enabled is False
    with pytest.raises(PolicyError) as exc:
        parse_policy("backend: iptables\ncrowdsec: {enabled: true}\n", "p.yaml")
    assert exc.value.exit_code == 2 and "needs backend: nft" in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(PolicyError):
        parse_policy("crowdsec: {url: 'http://a b/'}\n", "p.yaml")


def test_the_metrics_say_decisions_held_last_pull_and_errors():
    snap = {"crowdsec": {"decisions": {"ipv4": 3, "ipv6": 1}, "last_pull": 1700000000.0,
                         "errors": {"pull": 2, "kernel": 0}, "left_out": 5}}
    got = samples(generate_latest(registry(lambda: snap)).decode())
    assert got[("nodeguard_crowdsec_decisions", (("family", "ipv4"),))] == 3
    assert got[("nodeguard_crowdsec_decisions", (("family", "ipv6"),))] == 1
    assert got[("nodeguard_crowdsec_last_pull_timestamp_seconds", ())] == 1700000000.0
    assert got[("nodeguard_crowdsec_errors_total", (("op", "pull"),))] == 2
    assert got[("nodeguard_crowdsec_left_out", ())] == 5
    assert not [k for k in samples(generate_latest(registry(lambda: {})).decode()) if "crowdsec" in k[0]]


def test_status_lines_say_what_is_held_and_escape_the_failure():
    from guard.crowdsec.state import lines

    cs = {"decisions": {"ipv4": 2, "ipv6": 0}, "last_pull": None, "errors": {"pull": 3, "kernel": 0},
          "problem": "pull: '\x1b[31m'", "alive": True}
    out = lines(cs, "http://lapi:8080/")
    assert out[0] == "crowdsec: http://lapi:8080/, 2 IPv4 and 0 IPv6 ban decisions held; no pull yet"
    assert out[1].startswith("  FAILING: ") and "\x1b" not in out[1] and "pull 3" in out[1]
    assert lines({**cs, "problem": None, "left_out": 3}, "http://lapi:8080/")[1] == \
        "  SETS FULL: 3 prefixes left out (crowdsec.size; those that end last are kept)"
    assert lines(None, "http://lapi:8080/") == ["crowdsec: http://lapi:8080/, nothing pulled yet (is nodeguard run "
                                                "running?)"]
