"""No backend may ever drop a packet because a meter is full, however long the flood lasts.

A spoofed flood (a new source every packet) fills every per-source meter; meanwhile brand-new clients
connect (TCP) and brand-new UDP peers ask for an answer, each attempt from an address that never sent
anything before. They must do as well as with no protection at all, measured in the same run.
Backstops are set far above the flood so that only a meter failing closed could turn a client away
(xt_hashlimit hot-drops a packet when its table is full, which once locked out 50 of 50 new clients on
the iptables backend).

The run outlives every timeout on the path of a new source: the test policy shortens the meters' idle
timeout to 3 s, so the iptables admission ipsets time out after 5 s (render/ipt.admission_timeout_s:
the hashlimit expiry plus its 1 s GC interval plus 1 s), escalation's over/episode sets after 1 s / 3 s;
clients keep arriving for 7.5 s after every meter is full. The admission set is what keeps a hashlimit table
below its htable-max: were it to time out before the hashlimit entries do, it would admit more
sources than the table can hold and new clients would be hot-dropped once the first entries
expired. (The sampler's count sets, 30 s, only count packets already condemned: they decide no drop.)
"""

from __future__ import annotations

import json
import signal
import threading
import time

import pytest

from guard.model.ruleset import AddrSet
from guard.render.ipt import IPSET_BUCKET, packet_hashsize

import netlab
from netlab import ATTACKER_IF, VICTIM4, wait_until

PORT, UDP_PORT, UDP_FLOOD_PORT = 8080, 5353, 9
METER = 4096  # large enough that a table grown past 3 x METER + 4096 (htable-max) by a short admission
TIMEOUT_S = 3  # timeout is seen by the clients as hot drops
ADMISSION_S = TIMEOUT_S + 2  # render/ipt.admission_timeout_s
WARMUP_S, TRIES, GAP_S = 1.5, 45, 0.2  # clients for ~9.5 s from the moment every meter is full
LATE_S = ADMISSION_S + 1.5  # attempts from then on come after every admission entry of that moment expired
TCP_SRCS = [f"10.77.1.{i}" for i in range(1, TRIES + 1)]
UDP_SRCS = [f"10.77.2.{i}" for i in range(1, TRIES + 1)]
BASE_TCP, BASE_UDP = [f"10.77.3.{i}" for i in range(1, 11)], [f"10.77.4.{i}" for i in range(1, 11)]


class _HashlimitPeak:
    """iptables: the largest xt_hashlimit table of the namespace (/proc/net/ipt_hashlimit/*), polled every
    0.2 s in the background: its peak. A read that fails fails the test."""

    def __init__(self, ns, backend: str):
        self.ns, self.on, self.peak, self.reads = ns, backend != "nft", None, 0
        self._stop, self._error = threading.Event(), None
        self._t = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        try:
            while not self._stop.is_set():
                sizes = self.ns.run(["sh", "-c", "for f in /proc/net/ipt_hashlimit/*; do wc -l < $f; done"]).stdout
                self.peak = max(self.peak or 0, *map(int, sizes.split()))
                self.reads += 1
                time.sleep(0.2)
        except Exception as e:  # noqa: BLE001 - handed to the test in __exit__
            self._error = e

    def __enter__(self):
        if self.on:
            self._t.start()
        return self

    def __exit__(self, *exc):
        if self.on:
            self._stop.set()
            self._t.join()
            if self._error:
                raise AssertionError(f"reading the hashlimit tables failed: {self._error}")
            assert self.reads >= 10, f"only {self.reads} reads of the hashlimit tables"


def _clients(attacker, tcp_srcs, udp_srcs, gap: float) -> dict:
    """TCP connects and UDP requests side by side, each attempt from a source never seen before."""
    out: dict[str, dict] = {}
    args = ("--timeout", "1", "--interval", str(gap), "--times")
    threads = [threading.Thread(target=lambda: out.__setitem__("tcp", netlab.tcp_clients(
                   attacker, ",".join(tcp_srcs), VICTIM4, PORT, len(tcp_srcs), *args))),
               threading.Thread(target=lambda: out.__setitem__("udp", netlab.udp_clients(
                   attacker, ",".join(udp_srcs), VICTIM4, UDP_PORT, len(udp_srcs), *args)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def _full(backend: str) -> int:
    """Entries of a full meter: nft's set takes METER; an iptables admission ipset fills its buckets first
    (render/ipt.packet_hashsize: a sixteenth of METER, 12 each), so it is full, refusing every new source,
    at three quarters of METER (the last buckets fill slowest: 95 % of that)."""
    if backend == "nft":
        return METER
    return int(0.95 * IPSET_BUCKET * packet_hashsize(AddrSet("m", 4, "trusted", size=METER, timeout_s=1)))


def _round(victim, attacker, backend: str, policy: str | None) -> dict:
    """A spoofed SYN and UDP flood; meanwhile brand-new TCP clients and UDP peers."""
    victim.run("conntrack -F", check=False)
    truth = netlab.Truth(victim, {"syn": f"tcp dport {PORT} tcp flags syn", "udp": f"udp dport {UDP_FLOOD_PORT}"})
    floods = [netlab.flood(attacker, 60, "-S", "-p", str(PORT), "--rand-source", VICTIM4),
              netlab.flood(attacker, 60, "--udp", "-p", str(UDP_FLOOD_PORT), "--rand-source", VICTIM4)]
    out: dict = {"meters": {}, "kept": {}, "hashlimit": None}
    if not policy:
        time.sleep(WARMUP_S)
        start = time.monotonic()
        clients = _clients(attacker, BASE_TCP, BASE_UDP, 0.05)
    else:
        names = {n: m["kernel_name"] for n, m in victim.meters(policy).items()
                 if n in ("syn-src-v4", "limit-udp-per-source-v4")}
        wait_until(lambda: min(len(victim.set_members(backend, k)) for k in names.values()) >= _full(backend),
                   timeout=10, interval=0.2)
        start = time.monotonic()  # every meter full; the attacker's namespace shares CLOCK_MONOTONIC
        early = {n: victim.set_members(backend, k) for n, k in names.items()}
        out["meters"] = {n: len(m) for n, m in early.items()}
        with _HashlimitPeak(victim, backend) as peak:
            clients = _clients(attacker, TCP_SRCS, UDP_SRCS, GAP_S)
        out["hashlimit"] = peak.peak
        # the members of the start still there at the end: a meter that outlived its timeout has ~none
        out["kept"] = {n: len(early[n] & victim.set_members(backend, k)) for n, k in names.items()}
    conntrack = victim.conntrack_count()  # while the floods still run
    # they did run until the end (hping3 with -i and --rand-source once stalled within a second)
    a = truth.counts()
    time.sleep(0.5)
    out["flood pps at the end"] = {k: int((n - a[k]) / 0.5) for k, n in truth.counts().items()}
    for f in floods:
        f.send_signal(signal.SIGINT)
        f.wait(timeout=10)
    for proto in ("tcp", "udp"):
        attempts = clients[proto].pop("attempts")
        out[proto] = clients[proto]["ok"] / len(attempts)
        late = [ok for t, ok in attempts if t - start >= LATE_S]
        out[f"{proto} late"] = (sum(late), len(late))
    out["conntrack"] = conntrack
    return out


@pytest.mark.backends("nft", "iptables-legacy")  # iptables-nft: its rendering and xt matches are legacy's
@pytest.mark.parametrize("backend", netlab.BACKENDS)
def test_brand_new_clients_are_served_as_without_protection_after_every_meter_timed_out(lab, write_policy, backend):
    victim, attacker = lab
    # the victim answers them through its default route, the attacker's namespace
    attacker.run(["ip", "-batch", "-"], input="".join(f"addr add {s}/32 dev {ATTACKER_IF}\n" for s in
                                                      TCP_SRCS + UDP_SRCS + BASE_TCP + BASE_UDP))
    netlab.load_fixture(victim, "kube-proxy-iptables-tracepacket.rules", netlab.kube_loader(backend))
    policy = write_policy(netlab.backend_policy(backend, f"""
        meter:
          size: {METER}
          timeout_s: {TIMEOUT_S}
        syn:
          rate: 500000/second
          per_source: 50/second
        limits:
          - name: udp-per-source
            protocol: udp
            per_source: 50/second
            rate: 500000/second
    """))
    with netlab.tcp_server(victim, VICTIM4, PORT), netlab.udp_echo(victim, VICTIM4, UDP_PORT):
        none = _round(victim, attacker, backend, None)
        victim.nodeguard("apply", "-c", policy)
        guarded = _round(victim, attacker, backend, policy)
    print(f"\n{backend}: brand-new clients during a spoofed flood, meters full, timeouts {TIMEOUT_S} s/"
          f"{ADMISSION_S} s: {json.dumps(guarded)}; same run without protection: {json.dumps(none)}")

    # full: concurrent adds may even overshoot an ipset's maxelem a little (see render/ipt.py)
    assert min(guarded["meters"].values()) >= _full(backend), "the flood filled the meters"
    assert min(guarded["flood pps at the end"].values()) >= 10_000, "the floods ran until the clients were done"
    # ...and every member of the warm-up timed out and was replaced during the run
    assert max(guarded["kept"].values()) <= METER // 100, guarded["kept"]
    for proto in ("tcp", "udp"):
        ok, late = guarded[f"{proto} late"]
        assert late >= 5, f"the clients outlived the admission timeout ({proto}: {late} late attempts)"
        # measured: every late attempt served (13-15 of 13-15, 3 backends x 3 runs); one may be lost
        assert ok >= late - 1, f"{proto}: new sources refused once the first meter entries expired: {guarded}"
        assert guarded[proto] >= min(none[proto], 1.0) - 1 / TRIES - 0.05, (proto, guarded, none)
    if backend != "nft":
        # render/ipt.py: the admission set bounds a hashlimit table to 2 x meter.size (+ maxelem overshoot).
        # Measured peaks 4254-4426 (iptables-nft and -legacy, 5 runs); with the admission set timing out
        # after 1 s instead (shorter than the 3 s expiry) 16272 and 16384, the table's htable-max.
        assert guarded["hashlimit"] <= 2 * METER + 512, guarded["hashlimit"]
