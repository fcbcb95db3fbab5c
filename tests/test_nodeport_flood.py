"""The SYN valve at a NodePort (syn.valve: auto, the default): it engages only while conntrack fails new
connections, so where the kernel copes by itself a brand-new client is served as without protection,
and where conntrack hits the SNAT wall the valve engages. Real packets, the daemon running, the
baseline (no protection) measured in the same test. docs/design/syn-valve.md has the figures.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

import netlab
from netlab import ATTACKER4, VICTIM4, wait_until
from test_daemon import Run, metrics

LOCAL, MASQ = 3004, 3003  # DNAT only (externalTrafficPolicy Local), DNAT + MASQUERADE (Cluster)
CLIENTS = 50  # brand-new clients per round, each from an address never used before
FRESH_NET = "10.66.64.0/18"
# The flood runs this long before the first client (3004), or until conntrack fails new connections (3003:
# the SNAT wall at 65,536 entries, reached in 1-3 s). At the 20,000-40,000 SYN/s hping3 reaches here on a
# busy machine, 3004's table (262,144) does not fill within 8 s: that case (early-drop, no failure) is
# guard/valve.py's pure tests' and the design page's (prototype figures).
RAMP_S = 4.0
WALL_S = 5.0  # the longest wait for the SNAT wall
PARALLEL = 17  # client processes at once: a failed connect costs its 1 s timeout, 50 in a row would be 50 s
BACKENDS = ("nft", "iptables-nft")


def _fresh_sources(attacker, n: int) -> list[str]:
    addrs = [f"10.66.{64 + i // 250}.{1 + i % 250}" for i in range(n)]
    attacker.run(["ip", "-batch", "-"], input="".join(f"addr add {a}/32 dev {netlab.ATTACKER_IF}\n" for a in addrs))
    return addrs


def _ct_stat(ns) -> dict[str, int]:
    from guard.valve import parse_ct_stat
    return parse_ct_stat(ns.run("cat /proc/net/stat/nf_conntrack").stdout)


def _failed(victim, before: dict[str, int]) -> int:
    now = _ct_stat(victim)
    return now["drop"] + now["insert_failed"] - before["drop"] - before["insert_failed"]


def _round(victim, attacker, port: int, sources: list[str], engaged=None) -> dict:
    """A spoofed SYN flood at ``port``; after RAMP_S (3004) or once conntrack fails (3003) and, with
    ``engaged`` (a predicate), the valve is engaged, CLIENTS brand-new clients (1 s timeout each)."""
    victim.run("conntrack -F", check=False)
    before = _ct_stat(victim)
    start = time.monotonic()
    flood = netlab.flood(attacker, 30, "-S", "-p", str(port), "--rand-source", VICTIM4)
    extra = {}
    try:
        if port == LOCAL:
            time.sleep(RAMP_S)
        else:
            extra["wall_s"] = round(wait_until(lambda: _failed(victim, before) > 1000, timeout=WALL_S, interval=0.1), 1)
            if engaged is not None:
                extra["engaged_s"] = round(wait_until(engaged, timeout=3, interval=0.1), 1)
        res = {**_clients(attacker, port, sources), **extra}
    finally:
        flood.send_signal(signal.SIGINT)
        flood.wait(timeout=10)
    after = _ct_stat(victim)
    return {**res, "flood_s": round(time.monotonic() - start, 1),
            "stat": {k: after[k] - before[k] for k in ("drop", "insert_failed", "early_drop")}}


def _clients(attacker, port: int, sources: list[str]) -> dict:
    """One connect from each source (1 s timeout, data echoed), PARALLEL processes at once."""
    procs = [attacker.popen([sys.executable, str(netlab.HELPERS / "tcp_clients.py"), ",".join(sources[i::PARALLEL]),
                             VICTIM4, str(port), str(len(sources[i::PARALLEL])), "--timeout", "1", "--interval",
                             "0.1"]) for i in range(PARALLEL)]
    ok = 0
    for p in procs:
        out, err = p.communicate(timeout=60)
        ok += json.loads(out.splitlines()[0])["ok"]
    return {"ok": ok}


def _engaged_now(victim, backend: str, names: dict[int, str]) -> bool:
    return bool(victim.set_members(backend, names[4]))


@pytest.fixture
def node(lab, write_policy):
    """The node of kube-proxy's fixture with its pod (NodePort 3003 masqueraded) and NodePort 3004
    DNATed to the same pod without masquerade, plus an attacker namespace holding fresh sources."""
    victim, attacker = lab
    netlab.load_fixture(victim, "kube-proxy-iptables-tracepacket.rules", "iptables-nft")
    victim.run(["iptables-nft", "-t", "nat", "-A", "KUBE-NODEPORTS", "-m", "tcp", "-p", "tcp", "--dport", str(LOCAL),
                "-j", "KUBE-SEP-OYPFS5VJICHGATKP"])
    victim.run(["ip", "route", "add", FRESH_NET, "via", ATTACKER4])
    sources = iter(_fresh_sources(attacker, CLIENTS * (1 + len(BACKENDS)) * int(os.environ.get("NG_VALVE_RUNS", 1))))
    with netlab.pod(victim) as pod, netlab.tcp_server(pod, netlab.POD4, 80):
        yield victim, attacker, (lambda: [next(sources) for _ in range(CLIENTS)])


def _guarded(victim, attacker, port: int, fresh, backend: str, write_policy, tmp_path: Path) -> dict:
    policy = write_policy(netlab.backend_policy(backend), f"{backend}.yaml")
    run = Run(victim, tmp_path, policy, "--remove-on-exit", watchdog_s=None, name=f"run-{backend}")
    try:
        run.wait_ready(timeout=20)
        st = json.loads(victim.nodeguard("status", "--json", "-c", policy).stdout)
        assert st["syn_valve"] == {"mode": "auto", "engaged": False, "expires_in_s": None, "hold_s": 30}, st
        names = {int(m["set"][-1]): m["kernel_name"] for m in st["meters"] if m["kind"] == "valve"}
        flood_at = time.monotonic()
        res = _round(victim, attacker, port, fresh(), lambda: _engaged_now(victim, backend, names))
        engaged = _engaged_now(victim, backend, names)
        res.update(engaged_at_end=engaged, engagements=metrics(victim)[("nodeguard_syn_valve_engagements_total", ())],
                   log=[ln for ln in run.log.splitlines() if "syn valve" in ln], seconds=time.monotonic() - flood_at)
    finally:
        run.stop(timeout=20)
    return res


@pytest.mark.parametrize("port", [LOCAL, MASQ])
def test_the_valve_engages_only_where_conntrack_fails_new_connections(node, write_policy, tmp_path, port):
    victim, attacker, fresh = node
    runs = int(os.environ.get("NG_VALVE_RUNS", 1))  # > 1: print the distributions the margins come from
    # The decision to engage is the daemon's, whatever the backend: where it must not engage (3004) one
    # backend proves it; where it must (3003) each backend's way of engaging is exercised.
    backends = BACKENDS if port == MASQ else BACKENDS[:1]
    out: dict[str, list[dict]] = {"none": [], **{b: [] for b in backends}}
    for _ in range(runs):
        out["none"].append(_round(victim, attacker, port, fresh()))
        for backend in backends:
            out[backend].append(_guarded(victim, attacker, port, fresh, backend, write_policy, tmp_path))
    for name, rounds in out.items():
        print(f"\nport {port} {name}: ok {[r['ok'] for r in rounds]} stat {[r['stat'] for r in rounds]} "
              f"flood_s {[r['flood_s'] for r in rounds]} wall_s {[r.get('wall_s') for r in rounds]} "
              f"engaged_s {[r.get('engaged_s') for r in rounds]} "
              + " ".join(f"engaged_at_end={r.get('engaged_at_end')} engagements={r.get('engagements')}"
                         for r in rounds if "engagements" in r))
    none = out["none"][-1]
    for backend in backends:
        guarded = out[backend][-1]
        if port == LOCAL:
            # NG_VALVE_RUNS=5: none 50/50 in all 5 runs, nft and iptables-nft 50/50 in all 5 each (no failure,
            # no engagement); the valve engaged at every reading (a mutation of guard/valve.py) gave nft 26/50 and iptables-nft 30/50
            # in one run, none 50/50 (the lottery this replaces). Margin: 2 of
            # 50, for a connect lost to the machine's load, never seen yet.
            assert none["stat"]["drop"] + none["stat"]["insert_failed"] == 0, none  # the kernel copes by itself
            assert guarded["engagements"] == 0 and not guarded["engaged_at_end"], (backend, guarded)
            assert guarded["ok"] >= none["ok"] - 2, (backend, guarded, none)
        else:
            # the SNAT wall is real: conntrack refuses, and no brand-new client gets through
            assert none["stat"]["insert_failed"] > 1000 and none["ok"] <= 5, none
            # engaged within a reading or two of the wall, and still engaged at the end of the flood
            assert guarded["engaged_s"] <= 1.5 and guarded["engagements"] >= 1 and guarded["engaged_at_end"], \
                (backend, guarded)
            # ...but the wall outlives the flood's SYNs (SYN_RECV entries keep their SNAT ports 60 s): new
            # clients fare as without protection, no better and no worse: both at the floor (NG_VALVE_RUNS=5:
            # none 1,0,0,0,0; nft 0,1,0,0,0; iptables-nft 0,0,0,0,0 of 50; CI once none 3, nft 0). A
            # comparison of two figures of 0-3 of 50 is noise, so this case asserts the wall and the
            # engagement only; docs/design/syn-valve.md says the goal is not met here.
