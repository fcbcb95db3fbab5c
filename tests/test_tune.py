"""`nodeguard tune`: fitted to the node's own traffic, the proposal spares every legitimate client and
still limits the flood, which is then checked by enforcing the proposal against the same traffic."""

from __future__ import annotations

import json
import threading

import netlab
from guard.attacklog import read_records
from netlab import ATTACKER4, FRESH4, LEGIT4, TRUSTED4, VICTIM4

PORT = 8080
CLIENTS = {LEGIT4: 4, TRUSTED4: 12, FRESH4[0]: 30}  # new connections per second


def _traffic(victim, attacker, policy: str, seconds: int = 5) -> dict:
    """Legitimate clients at their rates plus a single-source SYN flood, with the sampler running."""
    sampler = netlab.start_sampler(victim, policy)
    results: dict[str, dict] = {}

    def client(src: str, per_s: int) -> None:
        results[src] = netlab.tcp_clients(attacker, src, VICTIM4, PORT, per_s * seconds, "--interval",
                                          f"{1 / per_s:.4f}", "--timeout", "0.9")
    threads = [threading.Thread(target=client, args=item) for item in CLIENTS.items()]
    flood = attacker.popen(["timeout", "-s", "INT", str(seconds), "hping3", "-q", "-S", "-p", str(PORT),
                            "-i", "u500", "-a", ATTACKER4, VICTIM4])
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    flood.wait()
    netlab.stop_sampler(sampler)  # once it has every sample: the window it closes on SIGTERM logs them
    return results


def _condemned_per_source(tmp_path, log: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in read_records(tmp_path / log):
        if r["type"] == "flow" and r["rule"] == "syn-flood":
            out[r["src"]] = out.get(r["src"], 0) + r["estimated"]
    return out


def test_tune_spares_every_legitimate_client_and_still_limits_the_flood(lab, write_policy, tmp_path):
    victim, attacker = lab
    monitor = write_policy(f"mode: monitor\nsyn:\n  per_source: 2/second\nsampler:\n  window_s: 2\n"
                           f"  log: {tmp_path}/monitor.jsonl\n", "monitor.yaml")
    with netlab.tcp_server(victim, VICTIM4, PORT):
        for src in CLIENTS:  # each client has completed a handshake before (a returning client)
            assert netlab.tcp_clients(attacker, src, VICTIM4, PORT, 1) == {"ok": 1, "failed": 0}
        victim.nodeguard("apply", "-c", monitor)
        seen = _traffic(victim, attacker, monitor)
        assert all(r["failed"] == 0 for r in seen.values()), ("monitor mode dropped nothing", seen)

        prop = json.loads(victim.nodeguard("tune", "--json", "-c", monitor, "--margin", "2").stdout)
        syn = next(t for t in prop["threats"] if t["threat"] == "syn-flood")
        print(f"\ntune: {json.dumps(syn)}\npatch: {prop['patch']}")
        assert syn["legit_sources"] == len(CLIENTS), syn
        proposed = int(syn["proposed"].split("/")[0])
        assert 2 * max(CLIENTS.values()) * 0.8 <= proposed <= 2 * max(CLIENTS.values()) * 1.5, syn
        assert syn["proposed_would_drop"]["sources"] == 1 and syn["proposed_would_drop"]["packets"] > 5000, syn

        enforce = write_policy(f"syn:\n  per_source: {syn['proposed']}\nsampler:\n  window_s: 2\n"  # the proposal, not bans
                               f"  log: {tmp_path}/enforce.jsonl\n" + netlab.NO_ESCALATION, "enforce.yaml")
        victim.nodeguard("apply", "-c", enforce)
        after = _traffic(victim, attacker, enforce)
    condemned = _condemned_per_source(tmp_path, "enforce.jsonl")
    print(f"enforcing the proposal: clients {after}; condemned per source {condemned}")
    assert all(r["failed"] == 0 for r in after.values()), after
    assert not any(condemned.get(src) for src in CLIENTS), "a legitimate client was limited"
    assert condemned.get(ATTACKER4, 0) > 5000, "the flood is still limited"
