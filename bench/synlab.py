"""The SYN-defence lab: namespaces, defences and one measured flood scenario (used by bench/synflood.py).

Topology (every name starts with ``ngs-``; nothing touches the root namespace's ruleset or sysctls):

    ngs-<id>-net  (attacker + clients)  --veth ngs-upp / ngs-up--  ngs-<id>-node  --veth ngs-pod0 / eth0--  ngs-<id>-pod
    10.88.0.2/16, fd88::2/64                                       10.88.0.1, fd88::1                       10.180.0.3 (backend)
    clients 10.88.1.N, fd88::1:N                                   kube-proxy NAT fixture, NodePort 3003 -> 10.180.0.3:80

The node serves a host port (8080, wildcard v4 and v6); NodePort 3003 is DNAT'd by the kube-proxy
fixture's nat rules (KUBE-NODEPORTS -> KUBE-EXT-X27LE4BHSL4DOUIK -> KUBE-SEP-OYPFS5VJICHGATKP) to the pod.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
FIXTURE = ROOT / "tests" / "fixtures" / "kube-rulesets" / "kube-proxy-iptables-tracepacket.rules"
PY = sys.executable
LOCK = "/tmp/nodeguard-kernel-tests.lock"

NODE4, GW4, NODE6, GW6 = "10.88.0.1", "10.88.0.2", "fd88::1", "fd88::2"
POD4, PODGW4 = "10.180.0.3", "10.180.0.1"
HOST_PORT, NODE_PORT, POD_PORT = 8080, 3003, 80
UPLINK = "ngs-up"
USER_HZ = os.sysconf("SC_CLK_TCK")
GEN_BIN = "/tmp/ngs-synflood-gen"

# A minimal IPv6 nat table (kube-proxy's masquerade skeleton): it turns IPv6 conntrack on, as on a
# dual-stack node (the kube-proxy fixture is IPv4 only).
KUBE_NAT6 = """*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-POSTROUTING - [0:0]
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MASQUERADE
COMMIT
"""


def sh(args, check=True, timeout=120, **kw) -> subprocess.CompletedProcess:
    args = shlex.split(args) if isinstance(args, str) else args
    res = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False, **kw)
    if check and res.returncode:
        raise RuntimeError(f"{' '.join(args)} -> {res.returncode}\n{res.stdout}\n{res.stderr}")
    return res


class Ns:
    def __init__(self, name: str):
        self.name = name

    def argv(self, cmd) -> list[str]:
        return ["ip", "netns", "exec", self.name, *(shlex.split(cmd) if isinstance(cmd, str) else cmd)]

    def run(self, cmd, check=True, **kw):
        return sh(self.argv(cmd), check=check, **kw)

    def popen(self, cmd, **kw) -> subprocess.Popen:
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        return subprocess.Popen(self.argv(cmd), text=True, **kw)

    def nft(self, script: str, check=True):
        return self.run(["nft", "-f", "-"], input=script, check=check)

    def sysctl(self, **kv):
        for k, v in kv.items():
            self.run(["sysctl", "-qw", f"{k.replace('__', '.')}={v}"])

    def read(self, path: str) -> str:
        return self.run(["cat", path]).stdout.strip()


def softirq_ticks() -> int:
    """Softirq time of all CPUs (USER_HZ ticks) from the first line of /proc/stat (machine-wide)."""
    with open("/proc/stat") as f:
        return int(f.readline().split()[7])


def softnet_drops() -> int:
    """Packets dropped because a CPU's input backlog was full (/proc/net/softnet_stat, column 2, all CPUs)."""
    with open("/proc/net/softnet_stat") as f:
        return sum(int(line.split()[1], 16) for line in f)


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q / 100 * len(values) + 0.5) - 1))]


@dataclass
class Result:
    scenario: str
    defence: str
    family: int
    target: str  # "host" or "nodeport"
    client: str  # "new" or "returning"
    ok: int = 0
    failed: int = 0
    lat_ms: list[float] = field(default_factory=list)
    ct_end: int = 0
    ct_max: int = 0
    arrived: int = 0
    softirq_s: float = 0.0
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def us_per_pkt(self) -> float | None:
        return self.softirq_s / self.arrived * 1e6 if self.arrived else None

    @property
    def kpps(self) -> float:
        return self.arrived / self.seconds / 1000 if self.seconds else 0.0

    def row(self) -> dict:
        return {"defence": self.defence, "family": self.family, "target": self.target, "client": self.client,
                "ok": self.ok, "of": self.ok + self.failed, "p50_ms": pct(self.lat_ms, 50), "p99_ms": pct(self.lat_ms, 99),
                "ct_end": self.ct_end, "ct_max": self.ct_max, "arrived": self.arrived, "kpps": round(self.kpps, 1),
                "us_per_pkt": round(self.us_per_pkt, 3) if self.us_per_pkt else None, **self.extra}


class Lab:
    """The namespaces and their servers. ``with Lab() as lab:`` deletes every namespace afterwards."""

    def __init__(self, tag: str | None = None):
        tag = tag or str(os.getpid())
        self.node, self.net, self.pod = Ns(f"ngs-{tag}-node"), Ns(f"ngs-{tag}-net"), Ns(f"ngs-{tag}-pod")
        self.servers: list[subprocess.Popen] = []
        self._client_seq = 0
        self.node_mac = ""

    # --- building -------------------------------------------------------------------------
    def __enter__(self):
        try:
            self.build()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(self, *exc):
        self.destroy()

    def build(self):
        for ns in (self.node, self.net, self.pod):
            sh(["ip", "netns", "add", ns.name])
            ns.run("ip link set lo up")
        sh(["ip", "link", "add", UPLINK, "netns", self.node.name, "type", "veth", "peer", "name", "ngs-upp",
            "netns", self.net.name])
        sh(["ip", "link", "add", "ngs-pod0", "netns", self.node.name, "type", "veth", "peer", "name", "eth0",
            "netns", self.pod.name])
        n, t, p = self.node, self.net, self.pod
        n.run(f"ip addr add {NODE4}/16 dev {UPLINK}")
        n.run(f"ip -6 addr add {NODE6}/64 dev {UPLINK} nodad")
        n.run(f"ip addr add {PODGW4}/24 dev ngs-pod0")
        for dev in (UPLINK, "ngs-pod0"):
            n.run(f"ip link set {dev} up")
        n.run(f"ip route add default via {GW4}")
        n.run(f"ip -6 route add default via {GW6}")
        t.run(f"ip addr add {GW4}/16 dev ngs-upp")
        t.run(f"ip -6 addr add {GW6}/64 dev ngs-upp nodad")
        t.run("ip link set ngs-upp up")
        p.run(f"ip addr add {POD4}/24 dev eth0")
        p.run("ip link set eth0 up")
        p.run(f"ip route add default via {PODGW4}")
        # The node is a router (pods); syncookies on (the kernel default); ARP for the spoofed sources'
        # replies goes to the gateway. The net namespace does not forward: replies to spoofed sources die there.
        n.sysctl(net__ipv4__ip_forward=1, net__ipv4__tcp_syncookies=1, net__ipv6__conf__all__forwarding=1)
        t.sysctl(net__ipv4__ip_forward=0)
        # Replies to spoofed sources would leave a real node through its NIC: drop them at the first
        # possible point on arrival here, so their cost in this namespace stays near zero.
        t.nft("""table netdev ngs-sink {
  chain in { type filter hook ingress device "ngs-upp" priority -500; policy accept;
    meta protocol ip ip daddr != 10.88.0.0/16 drop
    meta protocol ip6 ip6 daddr != { fd88::/64, fe80::/10, ff00::/8 } drop
  }
}""")
        n.run(["iptables-nft-restore"], input=FIXTURE.read_text())
        n.run(["ip6tables-nft-restore"], input=KUBE_NAT6)
        self.node_mac = json.loads(n.run(f"ip -j link show {UPLINK}").stdout)[0]["address"]
        self.wait_ping(GW4)
        self.wait_ping(GW6)
        if not Path(GEN_BIN).exists():
            sh(["gcc", "-O2", "-o", GEN_BIN, str(BENCH / "synflood_gen.c")])

    def wait_ping(self, addr):
        for _ in range(50):
            if self.node.run(["ping", "-c1", "-W1", addr], check=False).returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"{addr} unreachable")

    def destroy(self):
        self.stop_servers()
        for ns in (self.node, self.net, self.pod):
            sh(["ip", "netns", "del", ns.name], check=False)

    # --- servers and clients -------------------------------------------------------------------
    def start_servers(self):
        """Fresh listeners (no request socks or cookies state left from an earlier flood)."""
        self.stop_servers()
        for ns, specs in ((self.node, [f"0.0.0.0:{HOST_PORT}", f"[::]:{HOST_PORT}"]), (self.pod, [f"0.0.0.0:{POD_PORT}"])):
            proc = ns.popen([PY, str(BENCH / "_syn_server.py"), *specs])
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
            self.servers.append(proc)

    def stop_servers(self):
        for proc in self.servers:
            proc.kill()
            proc.wait()
        self.servers = []

    def new_client(self, family: int) -> str:
        """A source address that has never sent anything."""
        self._client_seq += 1
        k = self._client_seq
        if family == 4:
            addr = f"10.88.{1 + k // 250}.{1 + k % 250}"
            self.net.run(f"ip addr add {addr}/16 dev ngs-upp")
        else:
            addr = f"fd88::1:{k:x}"
            self.net.run(f"ip -6 addr add {addr}/64 dev ngs-upp nodad")
        return addr

    def connect(self, src: str, dst: str, port: int, count: int = 50, spacing: float = 0.14, timeout: float = 1.0,
                popen: bool = False):
        cmd = [PY, str(BENCH / "_syn_client.py"), src, dst, str(port), str(count), str(spacing), str(timeout)]
        if popen:
            return self.net.popen(cmd)
        return json.loads(self.net.run(cmd).stdout)

    # --- counters ------------------------------------------------------------------------------
    def install_counter(self):
        """Attack packets that really arrived: a netdev ingress counter on the node's uplink (SYN only)."""
        self.node.nft(f"""
            table netdev ngs-count {{
              counter syns {{ }}
              chain in {{ type filter hook ingress device "{UPLINK}" priority -500; policy accept;
                meta protocol ip meta l4proto tcp tcp flags & (syn | ack) == syn counter name syns
                meta protocol ip6 meta l4proto tcp tcp flags & (syn | ack) == syn counter name syns
              }}
            }}""")

    def arrived(self) -> int:
        out = json.loads(self.node.run("nft -j list counter netdev ngs-count syns").stdout)["nftables"]
        return next(o["counter"]["packets"] for o in out if "counter" in o)

    def ct_count(self) -> int:
        return int(self.node.read("/proc/sys/net/netfilter/nf_conntrack_count"))

    def ct_max(self) -> int:
        return int(self.node.read("/proc/sys/net/netfilter/nf_conntrack_max"))


def flood_cmd(lab: Lab, family: int, port: int, seconds: float, pps: int = 0, tool: str = "auto") -> list[str]:
    dst = NODE4 if family == 4 else NODE6
    if tool == "auto":
        tool = "hping3" if family == 4 and not pps else "gen"
    if tool == "hping3":
        return ["timeout", "-s", "INT", str(seconds), "hping3", "-S", "--flood", "-q", "--rand-source",
                "-p", str(port), dst]
    return ["timeout", "-s", "INT", str(seconds + 2), GEN_BIN, "ngs-upp", lab.node_mac, dst, str(port),
            str(seconds), str(pps)]


FLOOD_COMMS = ("hping3", "ngs-synflood-ge", "synflood_gen", "iperf3", "trafgen", "pktgen")


class ForeignFloods:
    """Samples, every 0.5 s, the flood tools running in network namespaces that are not this lab's.

    The softirq figure is machine-wide: a flood of someone who did not take the lock distorts it.
    ``peak`` is the largest number of such processes seen at once; rows with peak > 0 are flagged.
    """

    def __init__(self, lab: Lab):
        import threading
        self.mine = {os.stat(f"/run/netns/{ns.name}").st_ino for ns in (lab.node, lab.net, lab.pod)}
        self.peak, self._stop = 0, threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def count(self) -> int:
        n = 0
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/comm") as f:
                    comm = f.read().strip()
                if comm.startswith(FLOOD_COMMS) and os.stat(f"/proc/{pid}/ns/net").st_ino not in self.mine:
                    n += 1
            except OSError:
                pass
        return n

    def _loop(self):
        while not self._stop.wait(0.5):
            self.peak = max(self.peak, self.count())

    def __enter__(self):
        self.peak = self.count()
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.count())


def run_flood(lab: Lab, *, family: int, target: str, client: str, defence: str, seconds: float = 9.0,
              pps: int = 0, tool: str = "auto", count: int = 50, spacing: float = 0.14, timeout: float = 1.0,
              monitor=None) -> Result:
    """One scenario: flood ``seconds`` against the host port or the NodePort; a client connects during it.

    ``client`` "returning": the source completed one handshake right before the flood. "new": a source
    address added for this run that never sent anything. ``monitor``: an object with start()/stop()->dict
    (the conntrack monitor or the valve agent), run around the flood.
    """
    port = HOST_PORT if target == "host" else NODE_PORT
    dst = NODE4 if family == 4 else NODE6
    src = lab.new_client(family)
    res = Result(f"{defence}/{target}/v{family}/{client}", defence, family, target, client)
    if client == "returning":
        pre = lab.connect(src, dst, port, count=1, spacing=0, timeout=3)
        res.extra["pre_ok"] = pre["ok"]
    if monitor:
        monitor.start()
    with ForeignFloods(lab) as foreign:
        a0, s0, t0, d0 = lab.arrived(), softirq_ticks(), time.monotonic(), softnet_drops()
        flood = lab.net.popen(flood_cmd(lab, family, port, seconds, pps, tool))
        time.sleep(1.0)
        cl = lab.connect(src, dst, port, count=count, spacing=spacing, timeout=timeout, popen=True)
        flood.wait()
        s1, t1, a1 = softirq_ticks(), time.monotonic(), lab.arrived()
    res.extra["foreign_floods"] = foreign.peak
    res.extra["backlog_drops"] = softnet_drops() - d0
    res.ct_end = lab.ct_count()
    out = json.loads(cl.communicate()[0])
    res.ok, res.failed, res.lat_ms = out["ok"], out["failed"], out["lat_ms"]
    res.arrived, res.softirq_s, res.seconds = a1 - a0, (s1 - s0) / USER_HZ, t1 - t0
    if monitor:
        res.extra.update(monitor.stop())
    res.ct_max = max(res.ct_end, res.extra.pop("ct_max", 0))
    return res


class CtMonitor:
    """Polls nf_conntrack_count in the node namespace (bench/ctvalve.py --monitor-only); reports the max."""

    def __init__(self, lab: Lab, args: list[str] | None = None):
        self.lab, self.args, self.proc = lab, args or ["--monitor-only"], None

    def start(self):
        self.proc = self.lab.node.popen([PY, str(BENCH / "ctvalve.py"), *self.args], env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert self.proc.stdout.readline().strip() == "ready", self.proc.stderr.read()

    def stop(self) -> dict:
        self.proc.send_signal(2)
        out, err = self.proc.communicate(timeout=10)
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        if not lines:
            raise RuntimeError(err)
        return json.loads(lines[-1])


def settle(lab: Lab):
    """Between scenarios: forget conntrack state and restart the listeners."""
    lab.node.run("conntrack -F", check=False)
    lab.start_servers()
    time.sleep(0.3)


@contextmanager
def kernel_lock():
    """The machine-wide flood lock; NGS_LOCK_HELD=1 when a parent (flock(1) around a batch) holds it."""
    import fcntl
    if os.environ.get("NGS_LOCK_HELD") == "1":
        yield
        return
    with open(LOCK, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def median_spread(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]"


def nft_tables(ns: Ns) -> list[str]:
    return re.findall(r"^table (\S+ \S+)", ns.run("nft list tables").stdout, re.MULTILINE)
