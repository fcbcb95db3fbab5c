"""Per-source estimates from packet-uniform sampling, against what really arrived.

Sources of unequal rates share one rule group. The truth per source is counted at netdev ingress
(before any of our rules). The kernel samples each condemned packet at the same odds, which the
sampler adapts to the flood rate; a source's estimate is its share of the samples times the
group's exact kernel count.

With ten sources or fewer the kernel counts every source exactly (``sampler.count_sources``), so only
the spoofed flood at the end, from more sources than that, checks estimates made from shares alone.
"""

from __future__ import annotations

import json
import signal
import sys
import time

import pytest

import netlab
from guard.attacklog import read_records
from netlab import VICTIM4

TEN = {f"10.77.1.{i}": f"u{100 * i}" for i in range(1, 11)}  # ~10,000/s down to ~1,000/s


# ten sources cover the two-source case (the same odds and counts, more of them): one case a backend
@pytest.mark.parametrize("backend,sources", [("nft", TEN), ("iptables-nft", TEN)],
                         ids=["ten sources-nft", "ten sources-iptables-nft"])
def test_sources_sharing_a_group_are_each_estimated_within_5_percent(lab, write_policy, tmp_path, backend, sources):
    victim, attacker = lab
    policy = write_policy(netlab.backend_policy(backend, f"""
        icmp:
          rate: 1/second burst 1
          per_source: 1/second burst 1
        sampler:
          window_s: 2
          log: {tmp_path}/attacks.jsonl
        watcher:
          state_file: {tmp_path}/watch.json
    """) + netlab.NO_ESCALATION)  # every source's whole flood is condemned by icmp-flood: no bans
    victim.nodeguard("apply", "-c", policy)
    truth = netlab.Truth(victim, {a: f"ip saddr {a} icmp type echo-request" for a in sources})
    sampler = netlab.start_sampler(victim, policy)
    floods = [attacker.popen(["timeout", "-s", "INT", "10", "hping3", "-q", "--icmp", "-a", a, "-i", gap, VICTIM4])
              for a, gap in sources.items()]
    for f in floods:
        f.wait()
    netlab.wait_sampler_idle(sampler)  # it has every sample: the window it closes on SIGTERM logs them
    sampler.send_signal(signal.SIGTERM)
    _out, err = sampler.communicate(timeout=10)
    arrived = truth.counts()
    estimated = {a: 0 for a in sources}
    sampled = {a: 0 for a in sources}
    for r in read_records(tmp_path / "attacks.jsonl"):
        if r["type"] == "flow" and r["src"] in estimated:
            estimated[r["src"]] += r["estimated"]
            sampled[r["src"]] += r["sampled"]
    errors = {a: (estimated[a] - arrived[a]) / arrived[a] for a in sources}
    print(f"\n{backend}: " + "; ".join(f"{a}: estimated {estimated[a]} of {arrived[a]} arrived "
                                      f"({errors[a]:+.1%}, {sampled[a]} samples)" for a in sources))
    print("\n".join(ln for ln in err.splitlines() if "odds" in ln or "DIAG" in ln))
    assert "sampling odds now" in err, "the odds were adapted to the flood"
    for a in sources:
        assert abs(errors[a]) <= 0.05, (a, estimated[a], arrived[a])


# --- share-based estimates: more sources than the kernel counts ---------------------------------
# Three floods from random sources (hping3 --rand-source). The attacker's own output hook maps each
# packet into a /24 (what `report` merges sources into) by its protocol, size and a random address bit,
# keeping random low bits: 832 sources in all, against count_sources 64 per group.
# A (ICMP, 36 bytes) runs all along from 256 sources in 10.80.1.0/24; B (ICMP, 44 bytes) only from 3 s to
# 8 s, from 64 sources in 10.80.2.0/24, each ~4 times as busy as one of A's: the mix in icmp-flood changes
# inside windows, and a source's share is not one over the number of sources (an estimator that splits
# the count evenly over the sources sampled is off by +11 % and -31 %). C (UDP, slower) runs all along in
# another rule group, split over two /24s of 256 sources. Sampling by the caps alone, uniform in time
# (odds never rendered), stayed within 2 % here: the odds check below is what catches that.
SPOOF = {  # net -> (rule group, the attacker-side match that maps a packet into it, random bits kept)
    "10.80.1.0/24": ("icmp-flood", "meta l4proto icmp ip length 36", "0.0.0.255"),
    "10.80.2.0/24": ("icmp-flood", "meta l4proto icmp ip length 44", "0.0.0.63"),
    "10.80.3.0/24": ("limit-udp-flood", "udp dport 9 ip saddr 0.0.0.0/1", "0.0.0.255"),
    "10.80.4.0/24": ("limit-udp-flood", "udp dport 9 ip saddr 128.0.0.0/1", "0.0.0.255"),
}
FLOODS = (  # (start s, seconds, hping3 arguments)
    (0, 11, ("--flood", "--icmp", "-d", "8")),
    (3, 5, ("--flood", "--icmp", "-d", "16")),
    (0, 11, ("-i", "u50", "--udp", "-p", "9")),
)


def _spoof(attacker) -> None:
    rules = "; ".join(f"add rule ip spoof out {match} ip saddr set ip saddr & {bits} | {net.split('/')[0]} accept"
                      for net, (_group, match, bits) in SPOOF.items())
    attacker.run(["nft", f"add table ip spoof; add chain ip spoof out {{ type filter hook output priority 0; }}; {rules}"])


def _net_truth_table(victim) -> None:
    rules = "; ".join(f"add rule netdev truth in ip saddr {n} counter" for n in SPOOF)
    victim.run(["nft", "add table netdev truth; add chain netdev truth in { type filter hook ingress "
                       f"device {netlab.VICTIM_IF} priority 0; }}; {rules}"])


def _net_truth(victim) -> dict[str, int]:
    out = {}
    for o in victim.nft_json("table netdev truth"):
        r = o.get("rule")
        if r:
            m = next(e["match"]["right"] for e in r["expr"] if "match" in e)
            out[f"{m['prefix']['addr']}/{m['prefix']['len']}"] = next(e["counter"]["packets"] for e in r["expr"]
                                                                     if "counter" in e)
    return out


def test_a_spoofed_flood_beyond_count_sources_is_estimated_per_network_within_5_percent(lab, write_policy, tmp_path):
    victim, attacker = lab
    began = time.monotonic()
    policy = write_policy(netlab.backend_policy("nft", f"""
        icmp:
          rate: 1/second burst 1
          per_source: 1/second burst 1
        limits:
          - name: udp-flood
            protocol: udp
            per_source: 1/second burst 1
            rate: 1/second burst 1
        sampler:            # caps: samples enough for 5 %, within what the sampler reads on 2 busy cores
          window_s: 2
          rate: 8000/second
          global_rate: 10000/second
          count_sources: 64
          log: {tmp_path}/attacks.jsonl
        watcher:
          state_file: {tmp_path}/watch.json
    """) + netlab.NO_ESCALATION)
    victim.nodeguard("apply", "-c", policy)
    _net_truth_table(victim)
    _spoof(attacker)
    sampler = victim.popen([sys.executable, "-m", "guard", "sample", "-c", policy])
    floods: list = []
    try:
        deadline = time.monotonic() + 10
        while "sampling via" not in (line := sampler.stderr.readline()):
            assert line and time.monotonic() < deadline, "sampler did not start"
        t0 = time.monotonic()
        for start, seconds, args in FLOODS:
            time.sleep(max(0.0, t0 + start - time.monotonic()))
            floods.append(attacker.popen(["timeout", "-s", "INT", str(seconds), "hping3", "-q", "--rand-source",
                                          *args, VICTIM4]))
        for f in floods:
            f.wait()
        netlab.wait_sampler_idle(sampler)  # it has every sample: the window it closes on SIGTERM logs them
        sampler.send_signal(signal.SIGTERM)
        _out, err = sampler.communicate(timeout=10)
    finally:
        for p in (sampler, *floods):  # a failed start: SIGTERM, which timeout(1) passes on to hping3
            if p.poll() is None:
                p.terminate()
                p.wait(timeout=10)
    arrived = _net_truth(victim)
    rep = json.loads(victim.nodeguard("report", "--json", "--top", "1000", "-c", policy).stdout)
    est = {n: 0 for n in SPOOF}
    sampled = {n: 0 for n in SPOOF}
    for e in rep["episodes"]:
        for row in e["sources"]:
            if row["network"] in est:
                assert SPOOF[row["network"]][0] == row["rule"], row
                est[row["network"]] += row["estimated"]
                sampled[row["network"]] += row["sampled"]
    groups = {g for g, *_ in SPOOF.values()}
    group_est = {g: sum(est[n] for n in SPOOF if SPOOF[n][0] == g) for g in groups}
    group_arrived = {g: sum(arrived[n] for n in SPOOF if SPOOF[n][0] == g) for g in groups}
    windows = [r for r in read_records(tmp_path / "attacks.jsonl") if r["type"] == "window"]
    errors = {n: (est[n] - arrived[n]) / arrived[n] for n in SPOOF}
    group_errors = {g: (group_est[g] - group_arrived[g]) / group_arrived[g] for g in groups}
    # the odds' effect: windows whose odds held from their start to their end (the previous window ended
    # with the same odds: no change was being applied as they began)
    odds_errors = {}
    for g in sorted(groups):
        steady = [w for prev, w in zip(windows, windows[1:]) if prev["one_in"].get(g) == w["one_in"].get(g)
                  and w["one_in"].get(g, 1) > 1]
        expected = sum(w["condemned"][g] / w["one_in"][g] for w in steady)
        got = sum(w["sampled"].get(g, 0) for w in steady)
        odds_errors[g] = (got - expected) / expected if expected else None
        print(f"\nodds {g}: {got} sampled in {len(steady)} steady windows, condemned/odds {expected:.0f}")
    print("\n" + "; ".join(f"{n}: estimated {est[n]} of {arrived[n]} ({errors[n]:+.2%}, {sampled[n]} samples)"
                          for n in SPOOF))
    print("groups: " + "; ".join(f"{g} {e:+.3%}" for g, e in sorted(group_errors.items()))
          + "; odds: " + "; ".join(f"{g} {e:+.2%}" for g, e in sorted(odds_errors.items()) if e is not None)
          + f"; took {time.monotonic() - began:.1f} s")
    print("\n".join(ln for ln in err.splitlines() if "odds" in ln))
    # Every /24's sources are nearly all beyond count_sources: its estimate is its share of the group's
    # samples times what the kernel's per-source counts leave of the group's count. Measured over 7 runs
    # (2 busy cores): 10.80.1 -0.28..+0.48 %, 10.80.2 (64 sources, ~6,500 samples) -1.40..+0.89 %,
    # 10.80.3 -0.52..+0.44 %, 10.80.4 -0.36..+0.51 %. Bound: the 5 % docs/design/sampling.md promises.
    for n in SPOOF:
        assert abs(errors[n]) <= 0.05, (n, est[n], arrived[n], f"{errors[n]:+.2%}")
    # Per rule group the estimates add up to the kernel's count of condemned packets, which is what
    # arrived less the few the buckets let through (1/second). Measured over 7 runs: icmp-flood within
    # 0.001 %, limit-udp-flood -0.022..+0.039 %.
    for g in groups:
        assert abs(group_errors[g]) <= 0.005, (g, group_est[g], group_arrived[g], f"{group_errors[g]:+.3%}")
    # The odds' effect: samples taken at 1 in N are condemned / N (the kernel's count, checked against the
    # truth just above). Binomial noise plus samples lost to a full socket buffer; measured over 7 runs:
    # icmp-flood -0.38..+1.21 % (~15,000 samples), limit-udp-flood -0.94..+0.31 %. Odds rendered as
    # 1 in 2N measured -50.6 %, not rendered at all +113 %.
    assert odds_errors["icmp-flood"] is not None, "icmp-flood was sampled at odds for whole windows"
    for g, e in odds_errors.items():
        assert e is None or abs(e) <= 0.05, (g, f"{e:+.2%} samples against condemned/odds")
