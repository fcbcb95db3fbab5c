"""Escalation to a ban, with real packets on every backend (docs/design/escalation.md).

A source that stays over a per-source limit for ``escalate.after_s`` (no pause in its drops longer
than ``gap_s``) is banned: its packets are dropped at the head of filter-prerouting, after the
interface check and the failsafe pairs, before conntrack (nft: chain filter-prerouting; iptables:
NODEGUARD-PRE-UPLINK, jumped to from raw PREROUTING). What must hold:

* bursts never ban, though really over their limit (a SYN burst of 2 s at 4x: 1600 SYNs against 800
  tokens, its drops counted against a netdev ingress truth counter; ICMP 2 s at 10x, and 10x with a
  pause longer than gap_s); a flood is banned after_s (-0.05/+0.35 s) after its first packet, timed
  against the truth counter (netlab.Truth); after the ban, the ban rule drops exactly what arrives
  from it; a SYN flood is banned on every backend (ICMP on nft, UDP on iptables-legacy too);
* a legitimate client keeps connecting; allowlisted and trusted (handshake-proven) sources are never
  banned, however hard they flood; an allowlist edit frees a banned source at once;
* IPv6: the /64 is banned (another address of it is dropped by the ban check too);
* a full ban set bans nobody more and drops nothing extra (fails open);
* bans survive an unrelated re-apply and a watcher repair; ``bans`` and ``unban`` work;
* the ban check follows the protected interfaces when the default route moves;
* an apply onto the previous layout (per-device ingress chains, iptables' NODEGUARD-BAN) removes it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import netlab
import pytest
from guard.attacklog import read_records
from guard.model.build import STATELESS_CHAIN
from test_daemon import Run, metrics
from netlab import (
    ATTACKER4,
    ATTACKER6,
    ATTACKER_IF,
    FRESH4,
    HELPERS,
    LEGIT4,
    LEGIT6,
    TRUSTED4,
    VICTIM4,
    VICTIM6,
    VICTIM_IF,
    wait_until,
)

PORT = 8080
AFTER_S = 3  # the default escalate.after_s
SYN_RATE, SYN_BURST = 200, 400  # the default syn.per_source
SYN_BURST_RATE = 4 * SYN_RATE  # a SYN burst really over its limit, for 2 s (< after_s)
SYN_TOKENS_2S = SYN_BURST + SYN_RATE * 2  # what its bucket lets through in those 2 s
SYN_DROP_MARGIN = 20  # measured |(arrived - tokens) - dropped|: 0 in 4 of 4 runs (nft, iptables-nft; 1601 arrived)
ALLOWED4 = FRESH4[2]
BAN_CHECK = STATELESS_CHAIN  # netlab.counters keys (iptables' NODEGUARD-PRE-UPLINK maps to it)


def _node(request, lab, write_policy, tmp_path):
    victim, attacker = lab
    backend = request.param

    def policy(text: str = "", name: str = "policy.yaml") -> str:
        base = (f"allow:\n  cidrs: [{ALLOWED4}/32]\nsampler:\n  log: {tmp_path}/attacks.jsonl\n  window_s: 2\n"
                f"watcher:\n  state_file: {tmp_path}/watch.json\n  verify_interval_s: 0.5\n")
        return write_policy(netlab.backend_policy(backend, base + text), name)
    return victim, attacker, backend, policy


@pytest.fixture(params=netlab.BACKENDS)
def node(request, lab, write_policy, tmp_path):
    return _node(request, lab, write_policy, tmp_path)


@pytest.fixture(params=("nft", "iptables-nft"))
def node2(request, lab, write_policy, tmp_path):
    """nft and iptables-nft only: iptables-legacy shares the iptables rendering (and test_escalation's
    full flood scenario runs on it)."""
    return _node(request, lab, write_policy, tmp_path)


def _bans(victim, policy: str) -> list[str]:
    return victim.bans(policy)


def _replies(attacker, src: str, dst: str = VICTIM4, count: int = 2) -> int:
    return netlab.ping_stats(attacker.run(["ping", "-6" if ":" in dst else "-4", "-c", str(count), "-i", "0.3",
                                           "-W", "1", "-I", src, dst], check=False).stdout)[1]


def _mac(ns, ifname: str) -> str:
    return ns.run(["cat", f"/sys/class/net/{ifname}/address"]).stdout.strip()


def _pace(victim, attacker, *streams: str) -> subprocess.Popen:
    """tests/helpers/pace.py in the attacker's namespace; returns once its frames are built."""
    proc = attacker.popen([sys.executable, str(HELPERS / "pace.py"), netlab.ATTACKER_IF, _mac(victim, VICTIM_IF),
                           *streams])
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    return proc


def _hping(attacker, seconds: float, *args: str) -> subprocess.Popen:
    return attacker.popen(["timeout", "-s", "INT", str(seconds), "hping3", "-q", *args], stdout=subprocess.DEVNULL)


def test_bursts_are_never_banned_and_an_ipv6_flood_bans_its_64(node2):
    victim, attacker, backend, policy = node2
    p = policy()
    victim.nodeguard("apply", "-c", p)
    victim_mac = _mac(victim, VICTIM_IF)
    for addr in (VICTIM4, VICTIM6):  # no neighbour discovery needed by the attacker's side
        attacker.run(["ip", "neigh", "replace", addr, "lladdr", victim_mac, "dev", ATTACKER_IF, "nud", "permanent"])
    truth = netlab.Truth(victim, {"syn burst": f"ip saddr {FRESH4[0]} tcp flags syn"})
    pace = _pace(victim, attacker,
                 f"syn,{FRESH4[0]},{VICTIM4},{SYN_BURST_RATE},2",  # 2 s at 4x the SYN limit (a NAT gateway)
                 f"icmp,{FRESH4[1]},{VICTIM4},100,2",  # 2 s at 10x the ICMP limit: dropped, never banned
                 f"icmp,10.77.0.8,{VICTIM4},100,1.5/1.2/1.5",  # 10x, a pause longer than gap_s, 10x again
                 f"icmp,{ATTACKER6},{VICTIM6},100,5")  # 5 s at 10x: over for more than after_s
    sent = json.loads(pace.communicate(timeout=30)[0].splitlines()[-1])
    time.sleep(0.3)
    c = victim.counters(backend)
    syn_arrived, syn_dropped = truth.counts()["syn burst"], c["syn-flood: syn-flood per-source v4"]
    print(f"\n{backend}: sent {sent}; icmp per-source drops v4 {c['icmp-flood: icmp-flood per-source v4']}, "
          f"v6 {c['icmp-flood: icmp-flood per-source v6']}; SYN burst: {syn_arrived} arrived, {syn_dropped} dropped "
          f"(tokens {SYN_TOKENS_2S})")
    assert c["icmp-flood: icmp-flood per-source v4"] > 2 * 150, "the 10x bursts were over their limit"
    assert _bans(victim, p) == ["fd77::/64"], "only the IPv6 source that stayed over for after_s"
    # the SYN burst was over its limit: 1600 SYNs against 800 tokens (burst 400 + 200/s x 2 s), so about
    # 800 dropped. Measured (arrived - tokens) - dropped: 0 in 4 of 4 runs; bound +-SYN_DROP_MARGIN.
    assert syn_arrived >= 0.95 * SYN_BURST_RATE * 2, syn_arrived
    assert abs((syn_arrived - SYN_TOKENS_2S) - syn_dropped) <= SYN_DROP_MARGIN, (syn_arrived, syn_dropped)

    # another address of the banned /64 is dropped by the ban check too
    before = victim.counters(backend)[f"{BAN_CHECK}: banned v6 /64"]
    assert _replies(attacker, LEGIT6, VICTIM6, 3) == 0
    assert victim.counters(backend)[f"{BAN_CHECK}: banned v6 /64"] - before >= 3
    assert _replies(attacker, LEGIT4) == 2, "IPv4 from the same host is another source"


# per backend, one of the three escalating groups (their chains are rendered alike): hping3 arguments, the
# group, and what passes under its per-source limit until the ban (burst + rate x (after_s + 1 s))
FLOODS = {"nft": (["--icmp"], "icmp-flood", 20 + 10 * (AFTER_S + 1)),
          "iptables-nft": (["-S", "-p", "80"], "syn-flood", 400 + 200 * (AFTER_S + 1)),
          "iptables-legacy": (["--udp", "-p", "9999"], "limit-udp-per-source", 4000 + 2000 * (AFTER_S + 1))}


def _reaped(request, proc: subprocess.Popen) -> subprocess.Popen:
    """Killed at the end of the test whatever happens (a failed assertion must not leave it running)."""
    request.addfinalizer(lambda: (proc.kill(), proc.wait()))
    return proc


def _ban_delay(samples: list) -> tuple[float, float]:
    """ban_poll samples: the seconds from the flood's first packet (at the truth counter) to the first ban
    drop, as the interval the samples allow. A poll of iptables-*-save can take long on a loaded machine:
    each event lies between the sample that first shows it and the one before."""
    def bracket(col: int) -> tuple[float, float]:
        i = next(i for i, s in enumerate(samples) if s[col] > 0)
        return samples[max(i - 1, 0)][0], samples[i][0]
    (first_after, first_by), (ban_after, ban_by) = bracket(1), bracket(2)
    return ban_after - first_by, ban_by - first_after


def _assert_ban_delay(delay: tuple[float, float]) -> None:
    """The interval the samples allow meets BAN_DELAY."""
    assert delay[0] <= BAN_DELAY[1] and delay[1] >= BAN_DELAY[0], delay


# Ban delay: first ban drop after the flood's first packet, polled every 20 ms. Measured (s), 11 floods
# on a 2-core machine shared with other test runs: SYN 3.03-3.04 (6: nft, iptables-nft, -legacy), ICMP
# (nft) 3.01, 3.02, UDP (iptables-legacy) 3.08, 3.17; median 3.03. The ban itself comes after_s after the
# first per-source drop (the kernel's set timeouts); what is added is the burst (UDP's 4000 at ~100 kpps:
# 40 ms) and the poll.
BAN_DELAY = (AFTER_S - 0.05, AFTER_S + 0.35)


@pytest.mark.backends("nft", "iptables-nft")  # legacy: test_a_flood_is_banned_within_after_s_and_nobody_else_is
def test_a_syn_flood_is_banned_within_after_s(node, request):
    victim, attacker, backend, policy = node
    p = policy()
    # SYNs only: the attacker's kernel answers every SYN-ACK of the victim with a RST
    truth = netlab.Truth(victim, {"attacker": f"ip saddr {ATTACKER4} tcp flags syn"})
    with netlab.tcp_server(victim, VICTIM4, PORT):
        victim.nodeguard("apply", "-c", p)
        poll = _reaped(request, victim.popen([sys.executable, str(HELPERS / "ban_poll.py"), backend, "6", "0.02"]))
        assert poll.stdout.readline().strip() == "ready"
        netlab.flood(attacker, 5, "-S", "-p", str(PORT), "-a", ATTACKER4, VICTIM4).wait()
        samples = json.loads(poll.communicate(timeout=20)[0].splitlines()[-1])
        assert netlab.tcp_clients(attacker, LEGIT4, VICTIM4, PORT, 3) == {"ok": 3, "failed": 0}
    arrived = truth.counts()["attacker"]
    c = victim.counters(backend)
    banned, per_source = c[f"{BAN_CHECK}: banned v4 source"], c["syn-flood: syn-flood per-source v4"]
    assert _bans(victim, p) == [ATTACKER4], f"the SYN flood was not banned ({per_source} per-source drops)"
    delay = _ban_delay(samples)
    print(f"\n{backend}, SYN flood: banned {delay[0]:.2f}-{delay[1]:.2f} s after its first packet; "
          f"arrived {arrived}, dropped as "
          f"banned {banned}, per-source drops before the ban {per_source}")
    _assert_ban_delay(delay)
    # every SYN that arrived was dropped by the ban, or before it by the per-source limit, or passed under
    # that limit: its burst plus its rate until the ban (measured: exactly that, to the packet; 20 for the
    # 20 ms poll and the pacing)
    assert 0 <= arrived - banned - per_source <= SYN_BURST + SYN_RATE * delay[1] + 20, (arrived, banned, per_source)
    assert banned > 0.2 * arrived, (banned, arrived)
    # a bare ACK, which filter-prerouting leaves to conntrack, meets the ban check first
    acks = attacker.run(["timeout", "-s", "INT", "3", "hping3", "-q", "-A", "-c", "50", "-i", "u1000", "-p", str(PORT),
                         "-a", ATTACKER4, VICTIM4], check=False)
    assert "50 packets transmitted" in acks.stderr, acks.stderr
    assert victim.counters(backend)[f"{BAN_CHECK}: banned v4 source"] - banned >= 50


@pytest.mark.backends("nft", "iptables-legacy")
def test_a_flood_is_banned_within_after_s_and_nobody_else_is(node, tmp_path, request):
    victim, attacker, backend, policy = node
    hping_args, group, passes = FLOODS[backend]
    trusted_flood, trusted_group = ((["--icmp"], "icmp-flood") if group == "syn-flood"
                                    else (["-S", "-p", str(PORT + 1)], "syn-flood"))
    p1 = policy()
    truth = netlab.Truth(victim, {"attacker": f"ip saddr {ATTACKER4}"})
    with netlab.tcp_server(victim, VICTIM4, PORT):
        # applied with the server listening: a later render (the sampler's odds) has the same SYNPROXY ports,
        # so it rewrites no flood chain and no counter read below restarts
        victim.nodeguard("apply", "-c", p1)
        assert netlab.tcp_clients(attacker, TRUSTED4, VICTIM4, PORT, 1) == {"ok": 1, "failed": 0}
        wait_until(lambda: victim.trusted(backend, p1, TRUSTED4), timeout=3, interval=0.1)
        sampler = _reaped(request, netlab.start_sampler(victim, p1, stdout=subprocess.DEVNULL))
        # 8 s floods: banned at ~3 s (AFTER_S), 20 clients served at 5 s, 3 s before the floods end
        poll = _reaped(request, victim.popen([sys.executable, str(HELPERS / "ban_poll.py"), backend, "8", "0.02"]))
        assert poll.stdout.readline().strip() == "ready"
        floods = [netlab.flood(attacker, 8, *hping_args, "-a", ATTACKER4, VICTIM4),
                  _hping(attacker, 8, *trusted_flood, "-i", "u1000", "-a", TRUSTED4, VICTIM4),
                  _hping(attacker, 8, "--icmp", "-i", "u1000", "-a", ALLOWED4, VICTIM4)]
        time.sleep(AFTER_S + 2.0)
        during = netlab.tcp_clients(attacker, LEGIT4, VICTIM4, PORT, 20)
        for f in floods:
            f.wait()
    samples = json.loads(poll.communicate(timeout=20)[0].splitlines()[-1])
    time.sleep(0.5)
    arrived = truth.counts()["attacker"]
    c = victim.counters(backend)
    banned_drops, per_source = c[f"{BAN_CHECK}: banned v4 source"], c[f"{group}: {group} per-source v4"]

    delay = _ban_delay(samples)
    print(f"\n{backend}, {group}: first ban drop {delay[0]:.2f}-{delay[1]:.2f} s after the flood's "
          "first packet (polled every "
          f"20 ms); arrived {arrived}, dropped as banned {banned_drops}, per-source drops before the ban "
          f"{per_source}; client during the flood {during}")
    _assert_ban_delay(delay)
    # every packet that arrived was dropped by the ban, or before it by the per-source limit, or passed
    # under that limit (its burst plus its rate until the ban)
    assert 0 <= arrived - banned_drops - per_source <= passes
    assert banned_drops > 0.5 * arrived
    assert during == {"ok": 20, "failed": 0}
    assert c[f"{trusted_group}: {trusted_group} per-source v4"] > 1000, "the trusted source was over its limit"
    assert _bans(victim, p1) == [ATTACKER4], "allowlisted and trusted sources are never banned"
    sampler.terminate()  # the window it closes on SIGTERM logs the ban, if no window before it did
    sampler.wait(timeout=10)
    # a UDP flood at a closed port is also condemned by closed_ports, past the per-source limit
    groups = sorted({group, *(["closed-port"] if "--udp" in hping_args else [])})
    logged = [(r["src"], r["groups"]) for r in read_records(tmp_path / "attacks.jsonl") if r["type"] == "ban"]
    assert logged == [(ATTACKER4, groups)], logged

    # an unrelated re-apply keeps the ban
    p2 = policy("syn:\n  per_source: 300/second\n", "p2.yaml")
    victim.nodeguard("apply", "-c", p2)
    (row,) = json.loads(victim.nodeguard("bans", "--json", "-c", p2).stdout)["bans"]
    assert row["source"] == ATTACKER4 and row["groups"] == groups and 0 < row["expires_in_s"] <= 300, row
    assert f"over the per-source limit of {', '.join(groups)}" in victim.nodeguard("bans", "-c", p2).stdout
    assert _replies(attacker, ATTACKER4) == 0

    # a watcher repair keeps it too: the ban check itself is disturbed and restored
    with netlab.watcher(victim, p2, str(tmp_path / "watch.json")):
        if backend == "nft":
            victim.run(f"nft flush chain inet nodeguard {BAN_CHECK}")
        else:
            victim.run(f"iptables-{backend.split('-')[1]} -t raw -D PREROUTING 1")  # the jump to the ban check
        wait_until(lambda: json.loads((tmp_path / "watch.json").read_text())["repairs"] >= 1, timeout=5,
                   interval=0.05)
        st = victim.status(p2)
    assert st["in_sync"] and st["escalation"]["banned"] == 1, st["escalation"]
    if backend != "nft":
        assert [(j["target"], j["position"]) for j in st["jumps"] if (j["family"], j["table"]) == ("v4", "raw")] \
            == [("NODEGUARD-PRE", 1)]
    assert _bans(victim, p2) == [ATTACKER4]
    assert _replies(attacker, ATTACKER4) == 0

    # an allowlist edit frees it at once (it stays in the set until it expires or is unbanned)
    p3 = Path(policy("syn:\n  per_source: 300/second\n", "p3.yaml"))
    p3.write_text(p3.read_text().replace(f"[{ALLOWED4}/32]", f"[{ALLOWED4}/32, {ATTACKER4}/32]"))
    victim.nodeguard("apply", "-c", p3)
    assert _replies(attacker, ATTACKER4) == 2
    assert _bans(victim, p3) == [ATTACKER4]

    # unban
    assert victim.nodeguard("unban", "-c", p2, ATTACKER4).stdout == f"unbanned {ATTACKER4}\n"
    assert _bans(victim, p2) == []
    assert victim.nodeguard("unban", "-c", p2, ATTACKER4).stdout == f"{ATTACKER4} was not banned\n"
    assert json.loads(victim.nodeguard("unban", "--json", "-c", p2, "--all").stdout) == {"unbanned": []}


def test_a_full_ban_set_bans_nobody_more_and_drops_nothing_extra(node2, tmp_path):
    """...and says so in the daemon's metrics: the ban set's fill, and the bans it refused."""
    victim, attacker, backend, policy = node2
    p = policy("escalate:\n  size: 16\n")
    run = Run(victim, tmp_path, p)
    try:
        run.wait_ready()
        _fill_the_ban_set(victim, attacker, backend, p)
        m = metrics(victim)  # the first scrape: the set fill is counted now
    finally:
        run.stop()
    assert m[("nodeguard_up", ())] == 1, run.log
    banned_v4 = (("family", "ipv4"), ("role", "banned"), ("set", "banned-v4"))
    assert m[("nodeguard_set_entries", banned_v4)] == m[("nodeguard_set_capacity", banned_v4)] == 16
    assert m[("nodeguard_banned_sources", (("family", "ipv4"),))] == 16
    print(f"{backend}: bans refused (packets of unbanned sources due a ban): {m[('nodeguard_bans_refused_total', ())]:.0f}")
    assert m[("nodeguard_bans_refused_total", ())] > 0


def _fill_the_ban_set(victim, attacker, backend: str, p: str) -> None:
    sources = [f"10.77.0.{100 + i}" for i in range(20)]
    attacker.run(["ip", "-batch", "-"], input="".join(f"addr add {s}/24 dev {ATTACKER_IF}\n" for s in sources))
    victim.run(["ip", "neigh", "replace", ATTACKER4, "lladdr", _mac(attacker, ATTACKER_IF), "dev", VICTIM_IF])
    # 20 real sources, each at 5x the ICMP limit for after_s + 2 s: every one stays over its limit
    pace = _pace(victim, attacker, *(f"icmp,{s},{VICTIM4},50,{AFTER_S + 2}" for s in sources))
    pace.communicate(timeout=30)
    banned = _bans(victim, p)
    st = victim.status(p)["escalation"]
    print(f"\n{backend}: 20 sources over their limit, ban set of 16: {len(banned)} banned, bans counted {st['bans']}")
    assert len(banned) == 16 and set(banned) < set(sources)
    assert st["bans"] == 16 and st["banned"] == 16
    time.sleep(1.0)  # the unbanned sources' per-source buckets refill
    drops = victim.counters(backend)[f"{BAN_CHECK}: banned v4 source"]
    for s in sorted(set(sources) - set(banned)):
        assert _replies(attacker, s) == 2, f"{s} is not banned and under its limit now"
    assert _replies(attacker, LEGIT4) == 2
    assert victim.counters(backend)[f"{BAN_CHECK}: banned v4 source"] == drops, "no extra ban drops"
    assert _replies(attacker, banned[0]) == 0


def test_the_ban_check_follows_the_default_route(node2):
    """interfaces: auto: when the default route moves, the interface check in front of the ban rules
    (nft: the first rule of filter-prerouting; iptables: NODEGUARD-PRE's jumps to NODEGUARD-PRE-UPLINK)
    names the new device and nothing else."""
    victim, _attacker, backend, policy = node2
    p = policy()
    state = str(Path(p).parent / "watch.json")

    def protected() -> list[str]:
        if backend == "nft":
            (check,) = [r["rule"]["expr"][0]["match"] for r in victim.nft_json(f"chain inet nodeguard {BAN_CHECK}")
                        if "rule" in r and r["rule"]["comment"].endswith(" not a protected interface")]
            assert (check["op"], check["left"]) == ("!=", {"meta": {"key": "iifname"}}), check
            return sorted(check["right"]["set"] if isinstance(check["right"], dict) else [check["right"]])
        save = victim.run(f"iptables-{backend.split('-')[1]}-save -t raw").stdout
        return sorted(ln.split(" -i ")[1].split()[0] for ln in save.splitlines()
                      if ln.startswith("-A NODEGUARD-PRE ") and ln.endswith(" -g NODEGUARD-PRE-UPLINK"))

    with netlab.watcher(victim, p, state):
        wait_until(lambda: protected() == [VICTIM_IF], timeout=5, interval=0.1)
        victim.run("ip route del default")
        victim.run("ip -6 route del default")
        netlab.add_uplink(victim)  # ngu0 with the IPv4 default route
        wait_until(lambda: protected() == ["ngu0"], timeout=5, interval=0.1)
        victim.wait_in_sync(p)


# The previous layout's ban check, as it installed it: nft, a base chain at the ingress hook of each
# protected device; iptables, a jump at rule 1 of raw PREROUTING to NODEGUARD-BAN, which went to
# NODEGUARD-BAN-UPLINK per device. Here its one rule drops the attacker, so that it shows in traffic too.
OLD_NFT = (f'add chain inet nodeguard ingress-{VICTIM_IF} {{ type filter hook ingress device "{VICTIM_IF}" '
           f'priority -500; policy accept; }}; add rule inet nodeguard ingress-{VICTIM_IF} ip saddr {ATTACKER4} '
           f'counter drop comment "nodeguard:c678b6d693dab59e banned v4 source"')


def _old_ipt(version: int) -> str:
    drop = (f'-A NODEGUARD-BAN-UPLINK -m comment --comment "nodeguard:fb51da28d284c44e banned v4 source" '
            f"-s {ATTACKER4}/32 -j DROP\n") if version == 4 else ""
    return ("*raw\n:NODEGUARD-BAN - [0:0]\n:NODEGUARD-BAN-UPLINK - [0:0]\n"
            '-I PREROUTING 1 -m comment --comment "nodeguard:fbba0bf3f3b70999 jump to NODEGUARD-BAN" -j NODEGUARD-BAN\n'
            f'-A NODEGUARD-BAN -m comment --comment "nodeguard:a5c06b253e253bd7 uplink {VICTIM_IF}" -i {VICTIM_IF} '
            f"-g NODEGUARD-BAN-UPLINK\n{drop}COMMIT\n")


def test_an_apply_removes_the_previous_layouts_ban_check(node):
    """Upgrading: the ingress chains and NODEGUARD-BAN of the previous layout must go with the first
    apply (they would drop what the policy no longer bans, and cost every packet the ingress hook)."""
    victim, attacker, backend, policy = node
    p = policy()
    victim.nodeguard("apply", "-c", p)
    if backend == "nft":
        victim.run(["nft", OLD_NFT])
    else:
        for tool in ("iptables", "ip6tables"):
            victim.run([f"{tool}-{backend.split('-')[1]}-restore", "--noflush"], input=_old_ipt(4 if tool == "iptables" else 6))
    assert _replies(attacker, ATTACKER4) == 0, "the old ban check drops the attacker"
    assert not victim.in_sync(p), "status sees the previous layout's objects"

    def old_objects() -> list[str]:
        if backend == "nft":
            return [c["chain"]["name"] for c in victim.nft_json("chains")
                    if c.get("chain", {}).get("table") == "nodeguard"
                    and (c["chain"].get("hook") == "ingress" or c["chain"]["name"].startswith("ingress-"))]
        flavour = backend.split("-")[1]
        return [ln for tool in ("iptables", "ip6tables") for ln in victim.run(f"{tool}-{flavour}-save").stdout.splitlines()
                if "NODEGUARD-BAN" in ln and "NODEGUARD-BANNED" not in ln]

    assert old_objects()
    victim.nodeguard("apply", "-c", p)
    assert old_objects() == []
    assert victim.in_sync(p), victim.status(p)["drift"]
    assert _replies(attacker, ATTACKER4) == 2, "the attacker is not banned by this policy"


# --- no kernel -----------------------------------------------------------------------------------
def test_escalation_off_renders_none_of_it():
    from guard.model.build import build_ruleset
    from guard.model.plans import Priorities
    from guard.apply import sampling_settings
    from guard.policy.load import parse_policy
    from guard.render import ipt as render_ipt

    for text in ("interfaces: [eth0]\nescalate:\n  enabled: false\n", "interfaces: [eth0]\nmode: monitor\n"):
        pol = parse_policy(text, "f.yaml")
        rs = build_ruleset(pol, ("eth0",), Priorities(), sampling_settings(pol, "nflog"))
        assert not [c for c in rs.chains if c.name.startswith("escalate-")]
        assert not [s for s in rs.sets if s.kind == "escalation"]
        kinds = {s.name: s.kind for s in rs.sets}  # the ban check holds only the bans by hand
        assert [kinds[r.matches[0].set] for c in rs.chains for r in c.rules if r.group == "banned"] == ["manual"] * 2
        raw = render_ipt.render_ipt(rs, 4).tables["raw"]
        assert [j.target for j in raw.jumps] == ["NODEGUARD-PRE"]
        assert all(j.spec.endswith(f" -j {j.target}") for j in raw.jumps), raw.jumps


@pytest.mark.parametrize("text,expected", [
    ("escalate:\n  gap_s: 3\n", "f.yaml:2: escalate.gap_s: must be shorter than after_s (3)"),
    ("escalate:\n  size: 8\n", "f.yaml:2: escalate.size: Input should be greater than or equal to 16"),
    ("escalate:\n  enabled: true\n  ban_s: 0\n", "f.yaml:3: escalate.ban_s: Input should be greater than or equal to 1"),
    ("escalate:\n  after: 3\n", "f.yaml:2: escalate.after: unknown key"),
    ("escalate:\n  after_s: 1\n", "f.yaml:2: escalate.after_s: must be longer than gap_s (default 1)"),
])
def test_bad_escalate_settings_name_file_line_and_field(text, expected):
    from guard.errors import PolicyError
    from guard.policy.load import parse_policy

    with pytest.raises(PolicyError) as exc:
        parse_policy(text, "f.yaml")
    assert str(exc.value).startswith(expected) and "\n" not in str(exc.value), str(exc.value)


@pytest.mark.parametrize("args", [["10.0.0.1/24"], ["fd00::1/48"], ["nonsense"], [], ["10.0.0.1", "--all"],
                                  ["fe80::1%eth0"], ["0.0.0.0"], ["::"], ["0.0.0.0/0"]])
def test_unban_refuses_a_bad_address_in_one_line_before_touching_anything(args):
    res = subprocess.run([sys.executable, "-m", "guard", "unban", *args], capture_output=True, text=True,
                         cwd=netlab.ROOT, check=False)
    assert res.returncode == 2 and res.stdout == "" and res.stderr.count("\n") == 1, res


def test_an_ipv4_mapped_address_is_its_ipv4_source():
    from guard.bans import key_of

    assert key_of("::ffff:192.0.2.7") == ("192.0.2.7", 4) and key_of("fd00::5") == ("fd00::", 6)


def test_bans_and_unban_find_the_installed_sets_when_the_policy_file_changed(lab, write_policy):
    """The ban set's name carries a digest of ban_s and size: an edited, not yet applied file (or a daemon
    on its last good policy) must still list and lift the bans that are in the kernel."""
    victim, _attacker = lab
    victim.nodeguard("apply", "-c", write_policy("{}"))
    name = next(o["set"]["name"] for o in json.loads(victim.run("nft -j list sets inet").stdout)["nftables"]
                if "set" in o and o["set"]["name"].startswith("banned-v4-"))
    victim.run(["nft", f"add element inet nodeguard {name} {{ 192.0.2.7 timeout 60s }}"])
    edited = write_policy("escalate:\n  ban_s: 600\n", "edited.yaml")
    assert _bans(victim, edited) == ["192.0.2.7"]
    assert victim.nodeguard("unban", "192.0.2.7", "-c", edited).stdout.strip() == "unbanned 192.0.2.7"
    assert _bans(victim, edited) == []


def test_a_full_episode_set_bans_nobody(lab, write_policy):
    """over/episode are sized by meter.size; with the episode set full, a burst over its limit must not
    be banned (it was, at once: "over" without an episode read as an episode that ran out)."""
    victim, attacker = lab
    policy = write_policy("meter:\n  size: 16\n")
    victim.nodeguard("apply", "-c", policy)
    name = next(o["set"]["name"] for o in json.loads(victim.run("nft -j list sets inet").stdout)["nftables"]
                if "set" in o and o["set"]["name"].startswith("episode-v4-"))
    filler = ", ".join(f"198.51.100.{i} timeout 60s" for i in range(1, 17))
    victim.run(["nft", f"add element inet nodeguard {name} {{ {filler} }}"])
    attacker.run(["ping", "-c", "30", "-i", "0.01", "-I", ATTACKER4, VICTIM4], check=False)
    time.sleep(AFTER_S + 0.5)
    assert _bans(victim, policy) == [], "a full episode set must ban nobody"
    assert _replies(attacker, ATTACKER4) == 2


def test_the_sampler_logs_bans_with_the_groups_that_counted_the_source_and_why_they_ended():
    from guard.bans import Ban, ban_records, describe, key_of, reasons

    exact = {("icmp-flood", "enforce"): {"10.0.0.2": 900, "fd00::": 5}, ("syn-flood", "enforce"): {"10.0.0.2": 0},
             ("icmp-flood", "monitor"): {"10.0.0.9": 3}}
    recs = ban_records([Ban("10.0.0.8", 4, 2), Ban("10.0.0.9", 4, 200)],
                       [Ban("10.0.0.2", 4, 297), Ban("fd00::", 6, 299), Ban("10.0.0.9", 4, 190)],
                       exact, 1000.0, 10.0, 3)
    assert recs == [
        {"type": "ban", "ts": 1000.0, "src": "10.0.0.2", "groups": ["icmp-flood", "syn-flood"], "after_s": 3,
         "expires": 1297.0, "dropped_as": "banned"},
        {"type": "ban", "ts": 1000.0, "src": "fd00::/64", "groups": ["icmp-flood"], "after_s": 3, "expires": 1299.0,
         "dropped_as": "banned"},
        {"type": "unban", "ts": 1000.0, "src": "10.0.0.8", "why": "expired"}]
    assert ban_records([Ban("10.0.0.9", 4, 200)], [], {}, 1010.0, 10.0, 3)[0]["why"] == "removed"
    why = reasons([*recs, {"type": "ban", "ts": 900.0, "src": "10.0.0.2", "groups": ["udp"]}])
    assert why["10.0.0.2"]["ts"] == 1000.0 and "icmp-flood, syn-flood without a pause for 3 s" in describe(why["10.0.0.2"])
    assert key_of("fd00::5") == key_of("fd00::/64") == key_of("fd00::5/64") == ("fd00::", 6)
    assert key_of(" 10.0.0.2 ") == key_of("10.0.0.2/32") == ("10.0.0.2", 4)
