"""guard/metrics.py: a real HTTP server on a free loopback port, scraped with urllib and parsed with
prometheus_client's own parser; NFQUEUE losses and conntrack fill read from a test namespace."""

from __future__ import annotations

import json
import logging
import socket
import sys
import textwrap
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from guard.metrics import Heartbeat, MetricsServer, nfqueue_dropped, parse_listen
from guard.policy.schema import Metrics

SNAPSHOT = {
    "backend": "nft",
    "in_sync": True,
    "contested": False,
    "drops": {"syn-flood": {"packets": 1200, "bytes": 72000}, "icmp-flood": {"packets": 5, "bytes": 420},
              "bogus-flags": {"packets": 0, "bytes": 0}, "limit-udp-per-source": {"packets": 7, "bytes": 700},
              "conn-limit": {"packets": 1, "bytes": 60}},
    "sampled": {"syn-flood": 200},
    "sampler": {"transport": "nflog", "nflog_enobufs": 3, "queues": []},
    "meters": [{"set": "syn-src-v4", "elements": 300, "size": 65536}],
    "repairs": {"table missing": 2, "priority_undercut": 1},
    "reloads": {"ok": 4, "failed": 1},
    "last_apply": 1700000000.5,
    "rules": [{"chain": "syn-flood", "label": "whatever wording", "packets": 1, "bytes": 2}],  # status extras: ignored
}


def samples(text: str) -> dict[tuple, float]:
    """(name, sorted labels) → value, through prometheus_client's parser."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture
def serve():
    servers = []

    def start(provider, heartbeat=None, **kw):
        srv = MetricsServer(("127.0.0.1", 0), provider, heartbeat or Heartbeat(), **kw)
        srv.start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.port}"

    yield start
    for srv in servers:
        srv.stop()


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_a_scrape_reports_every_metric_from_the_provider(serve):
    url = serve(lambda: SNAPSHOT)
    code, text = get(url + "/metrics")
    assert code == 200
    s = samples(text)
    assert s[("nodeguard_up", ())] == 1
    assert s[("nodeguard_in_sync", ())] == 1 and s[("nodeguard_contested", ())] == 0
    assert s[("nodeguard_dropped_packets_total", (("group", "syn-flood"), ("mode", "enforce")))] == 1200
    assert s[("nodeguard_dropped_bytes_total", (("group", "syn-flood"), ("mode", "enforce")))] == 72000
    assert s[("nodeguard_dropped_packets_total", (("group", "limit-udp-per-source"), ("mode", "enforce")))] == 7
    assert s[("nodeguard_dropped_packets_total", (("group", "bogus-flags"), ("mode", "enforce")))] == 0  # series exist before attacks
    assert s[("nodeguard_sampled_packets_total", (("group", "syn-flood"),))] == 200
    assert s[("nodeguard_sampled_packets_total", (("group", "icmp-flood"),))] == 0
    assert s[("nodeguard_sampler_lost_total", (("reason", "nflog_enobufs"),))] == 3
    assert s[("nodeguard_sampler_lost_total", (("reason", "nfqueue_dropped"),))] == 0
    assert s[("nodeguard_meter_entries", (("meter", "syn-src-v4"),))] == 300
    assert s[("nodeguard_meter_size", (("meter", "syn-src-v4"),))] == 65536
    assert s[("nodeguard_repairs_total", (("reason", "table_missing"),))] == 2
    assert s[("nodeguard_repairs_total", (("reason", "priority_undercut"),))] == 1
    assert s[("nodeguard_reloads_total", (("result", "ok"),))] == 4
    assert s[("nodeguard_reloads_total", (("result", "failed"),))] == 1
    assert s[("nodeguard_last_apply_timestamp_seconds", ())] == 1700000000.5
    info = s[("nodeguard_info", (("backend", "nft"), ("sampler_transport", "nflog"), ("version", "0.1.0")))]
    assert info == 1
    assert ("process_resident_memory_bytes", ()) in s
    assert not any("whatever" in str(k) for k in s)


def test_a_raising_provider_gives_up_0_and_a_log_line(serve, caplog):
    def broken():
        raise RuntimeError("libnftables went away")

    url = serve(broken)
    with caplog.at_level(logging.ERROR, logger="nodeguard.metrics"):
        code, text = get(url + "/metrics")
    assert code == 200
    s = samples(text)
    assert s[("nodeguard_up", ())] == 0
    assert not any(name.startswith("nodeguard_dropped") for name, _ in s)
    assert "metrics provider failed" in caplog.text and "libnftables went away" in caplog.text


@pytest.mark.parametrize("bad", [None, ["not", "a", "dict"], {"drops": {"syn-flood": "many"}},
                                 {"meters": [{"set": "x"}]}])
def test_a_malformed_snapshot_gives_up_0_never_a_failed_scrape(serve, bad):
    code, text = get(serve(lambda: bad) + "/metrics")
    assert code == 200 and samples(text)[("nodeguard_up", ())] == 0


def test_repair_reasons_are_bounded():
    from guard.metrics import MAX_REASONS, registry
    from prometheus_client import generate_latest

    snap = {"repairs": {f"reason {i}": 1 for i in range(MAX_REASONS + 10)}}
    reasons = [k for k in samples(generate_latest(registry(lambda: snap)).decode()) if k[0] == "nodeguard_repairs_total"]
    assert len(reasons) == MAX_REASONS + 1
    assert samples(generate_latest(registry(lambda: snap)).decode())[
        ("nodeguard_repairs_total", (("reason", "other"),))] == 10


def test_healthz_follows_the_heartbeat(serve):
    now = [100.0]
    hb = Heartbeat(max_age_s=30, clock=lambda: now[0])
    url = serve(lambda: SNAPSHOT, hb) + "/healthz"
    assert get(url) == (503, "stale: last loop never\n")  # before the first loop turn
    hb.beat()
    now[0] += 10
    assert get(url) == (200, "ok: last loop 10.0 s ago\n")
    now[0] += 25
    assert get(url) == (503, "stale: last loop 35.0 s ago\n")
    assert get(url.replace("/healthz", "/other"))[0] == 404


def test_a_stalled_client_cannot_take_every_thread(serve):
    url = serve(lambda: SNAPSHOT, max_clients=1)
    port = int(url.rsplit(":", 1)[1])
    stalled = socket.create_connection(("127.0.0.1", port))  # says nothing: holds the only slot
    time.sleep(0.2)
    try:
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            urllib.request.urlopen(url + "/metrics", timeout=3).read()
    finally:
        stalled.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the slot is free again once the stalled client left
        try:
            assert get(url + "/metrics")[0] == 200
            break
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)
    else:
        raise AssertionError("server did not recover")


def test_listen_address_policy():
    assert parse_listen(Metrics().listen) == ("127.0.0.1", 9632)  # the policy's default
    assert parse_listen("[::1]:9632") == ("::1", 9632)
    assert parse_listen("127.0.0.2:1") == ("127.0.0.2", 1)
    assert parse_listen("10.0.0.5:9632", allow_remote=True) == ("10.0.0.5", 9632)
    for value in ("0.0.0.0:9632", "10.0.0.5:9632", "[::]:9632"):
        with pytest.raises(ValueError, match="not a loopback address; set metrics.allow_remote"):
            parse_listen(value)
    for value, msg in (("localhost:9632", "must be IP:PORT"), ("127.0.0.1", "must be IP:PORT"),
                       ("127.0.0.1:0", "out of range"), ("127.0.0.1:70000", "out of range"),
                       ("999.1.1.1:80", "not an IP address"), (9632, "must be IP:PORT")):
        with pytest.raises(ValueError, match=msg):
            parse_listen(value)


def test_the_server_refuses_a_remote_bind_unless_allowed():
    from guard.metrics import serve as serve_metrics

    with pytest.raises(ValueError):
        serve_metrics("0.0.0.0:9632", lambda: SNAPSHOT, Heartbeat())


def test_nfqueue_losses_and_conntrack_fill_come_from_the_namespace(ns):
    """A real queue with room for 2 packets, 20 packets queued to it and never read: the kernel
    drops 18, and the collector reads them from the namespace's nfnetlink_queue file."""
    ns.run("iptables-nft -A OUTPUT -m conntrack --ctstate NEW")  # a conntrack user: the netns tracks flows
    ns.run("iptables-nft -A OUTPUT -o lo -p udp --dport 9 -j NFQUEUE --queue-num 4714")
    script = textwrap.dedent("""
        import json, socket, sys, time
        from netfilterqueue import NetfilterQueue
        from prometheus_client import generate_latest
        from guard.metrics import registry
        q = NetfilterQueue()
        q.bind(4714, lambda p: p.drop(), max_len=2)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for _ in range(20):
            try:
                s.sendto(b"x", ("127.0.0.1", 9))
            except OSError:
                pass  # a packet the full queue dropped
        for port in range(10, 15):  # five flows that conntrack keeps
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"y", ("127.0.0.1", port))
        snap = {"sampler": {"transport": "nfqueue", "queues": [4714, 4715]}}
        text = generate_latest(registry(lambda: snap)).decode()
        proc = open("/proc/net/netfilter/nfnetlink_queue").read()
        q.unbind()  # frees the 2 packets still queued and, after an RCU grace period, their conntrack entries
        for _ in range(200):  # up to 10 s
            after = generate_latest(registry(lambda: snap)).decode()
            if "nodeguard_conntrack_entries 5.0" in after:
                break
            time.sleep(0.05)
        print(json.dumps({"text": text, "proc": proc, "after": after}))
    """)
    out = json.loads(ns.run([sys.executable, "-c", script]).stdout)
    s = samples(out["text"])
    fields = out["proc"].split()
    assert fields[0] == "4714" and int(fields[5]) + int(fields[6]) == 18, out["proc"]
    assert s[("nodeguard_sampler_lost_total", (("reason", "nfqueue_dropped"),))] == 18
    conntrack = int(ns.run("conntrack -C").stdout)
    assert samples(out["after"])[("nodeguard_conntrack_entries", ())] == conntrack == 5  # the five flows
    assert s[("nodeguard_conntrack_max", ())] == int(ns.run("sysctl -n net.netfilter.nf_conntrack_max").stdout)
    assert nfqueue_dropped([4714]) is None  # this (root) namespace has no queue 4714 of ours


def test_datapath_bypasses_are_one_series_per_interface_and_kind(serve):
    b = {"owner": None, "program": "p", "program_id": 1, "filter_name": None}
    snap = dict(SNAPSHOT, datapath={"problems": [], "bypasses": [
        dict(b, interface="eth0", kind="xdp", attach="native"), dict(b, interface="eth0", kind="tc-ingress", attach="bpf"),
        dict(b, interface="eth0", kind="tc-ingress", attach="tcx"), dict(b, interface="eth1", kind="xdp", attach="generic")]})
    s = samples(get(serve(lambda: snap) + "/metrics")[1])
    assert {k: v for k, v in s.items() if k[0] == "nodeguard_datapath_bypass"} == {
        ("nodeguard_datapath_bypass", (("interface", "eth0"), ("kind", "xdp"))): 1,
        ("nodeguard_datapath_bypass", (("interface", "eth0"), ("kind", "tc-ingress"))): 1,
        ("nodeguard_datapath_bypass", (("interface", "eth1"), ("kind", "xdp"))): 1}
    code, text = get(serve(lambda: SNAPSHOT) + "/metrics")  # nothing ahead of nodeguard: no series, the family stays
    assert "# TYPE nodeguard_datapath_bypass gauge" in text and "nodeguard_datapath_bypass{" not in text


def test_the_provider_reads_the_datapath_at_the_watchers_verify_interval(monkeypatch):
    from types import SimpleNamespace

    from guard.daemon import provider as provider_mod

    calls = []
    monkeypatch.setattr(provider_mod.datapath, "detect",
                        lambda interfaces: calls.append(interfaces) or provider_mod.datapath.Reading(()))
    monkeypatch.setattr(provider_mod, "drops_by_group", lambda plan, nft: {})
    monkeypatch.setattr(provider_mod, "meter_fill", lambda plan: [])
    monkeypatch.setattr(provider_mod, "Nft", lambda: None)
    plan = SimpleNamespace(ruleset=SimpleNamespace(sets=(), interfaces=("eth0",)))
    watcher = SimpleNamespace(last_plan=plan, policy=SimpleNamespace(watcher=SimpleNamespace(verify_interval_s=10.0)))
    now = [0.0]
    p = provider_mod.MetricsProvider(SimpleNamespace(snapshot=dict, watcher=watcher), clock=lambda: now[0])
    for t in (0.0, 3.0, 6.0, 9.9, 12.5, 15.0, 23.0):  # scrapes 2 s or more apart: each a new snapshot
        now[0] = t
        assert p()["datapath"] == {"bypasses": [], "problems": []}
    assert len(calls) == 3  # at 0, 12.5 and 23: 10 s or more since the last reading
    plan.ruleset.interfaces = ("eth0", "eth1")  # a reload that changes the interfaces reads at once
    now[0] = 26.0
    p()
    assert calls[-1] == ("eth0", "eth1")
