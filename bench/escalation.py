"""Escalation behaviour of the prototypes (docs/hotpath.md): bursts never ban, floods do.

For the lean nft table with escalation (bench/lean_table.py) and the iptables prototype
(bench/ipt_proto.py, iptables-nft flavour), in the bench/hotpath.py lab:

* short bursts over a per-source limit (ICMP echo, SYN, UDP): 2 s at 2x and 2 s at 10x the
  limit, and 1.5 s at 10x / 1.2 s pause / 1.5 s at 10x: never banned;
* 10 s floods (hping3 --flood, and an exact 2x the limit): banned, and when;
* an allowlisted source flooding: never banned; a TCP-handshake-proven (trusted) source
  flooding: never banned (a spoofer cannot get real clients banned);
* IPv6: the /64 is banned, another address of it is dropped at ingress;
* a full ban set (size 1): the second flooder is not banned and nothing else is dropped.

usage: sudo PYTHONPATH=. /work/main/.venv/bin/python bench/escalation.py [--after-s 3] [--only nft|ipt]
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import hotpath as h  # noqa: E402
import ipt_proto  # noqa: E402
import lean_table  # noqa: E402

LIMITS = {"icmp": 10, "syn": 200, "udp": 2000}  # default per-source limits (packets/s)
ALLOWED4, OTHER4, OTHER6 = "10.99.0.9", "10.99.0.5", "fd99::5"
PY = str(h.VENV_PY)


class Backend:
    def __init__(self, kind: str, lab: h.Lab, after_s: int, ban_size: int = 65536):
        self.kind, self.lab, self.after_s, self.ban_size = kind, lab, after_s, ban_size

    def install(self) -> None:
        n = self.lab.node
        if self.kind == "nft":
            n.nft(lean_table.render(h.lean_params(escalate=True, ban_size=self.ban_size) if self.after_s == h.AFTER_S else
                                    lean_table.Params((h.NODE_IF,), h.ALLOW4, h.ALLOW6, after_s=self.after_s, ban_size=self.ban_size)))
        else:
            ipt_proto.install(n, ipt_proto.Params((h.NODE_IF,), h.ALLOW4, h.ALLOW6, after_s=self.after_s, ban_size=self.ban_size))

    def remove(self) -> None:
        if self.kind == "nft":
            self.lab.node.run("nft delete table inet nodeguard")
        else:
            ipt_proto.uninstall(self.lab.node)

    def banned(self, version: int = 4) -> list[str]:
        n = self.lab.node
        if self.kind == "nft":
            out = json.loads(n.run(f"nft -j list set inet nodeguard banned-v{version}").stdout)["nftables"]
            elems = next(o["set"] for o in out if "set" in o).get("elem", [])
            return [e["elem"]["val"] if isinstance(e, dict) else e for e in elems]
        out = n.run(f"ipset list NODEGUARD-BANNED-V{version}").stdout
        return [ln.split()[0] for ln in out.split("Members:")[1].splitlines() if ln.strip()]


def pace(lab: h.Lab, kind: str, src: str, rate: float, seconds: float | str) -> subprocess.Popen:
    """``seconds``: a duration, or "on,off,on,..." seconds in one process (no import delay in between)."""
    dst = h.NODE6 if ":" in src else h.NODE4
    return lab.att.popen([PY, str(HERE / "pace.py"), h.ATT_IF, lab.node_mac, kind, src, dst, str(rate), str(seconds)])


def hping(lab: h.Lab, kind: str, src: str, seconds: float) -> subprocess.Popen:
    args = {"icmp": ["--icmp"], "syn": ["-S", "-p", "80"], "udp": ["--udp", "-p", "9999"]}[kind]
    six = ["-6"] if ":" in src else []  # hping3 has no IPv6: not used for v6
    assert not six
    return lab.att.popen(["timeout", "-s", "INT", str(seconds), "hping3", "--flood", "-q", *args, "-a", src, h.NODE4],
                         stdout=subprocess.DEVNULL)


def watch_ban(be: Backend, procs: list[subprocess.Popen], version: int = 4, extra_s: float = 1.0,
              rx0: int = 0) -> tuple[float | None, list[str]]:
    """Seconds from the first packet of the senders (seen by the node's ingress counter) until the
    first ban (None: no ban while the senders ran, plus extra_s). pace.py needs ~2 s to import scapy:
    timing from the process start would add that."""
    t0, first = time.monotonic(), None
    while be.lab.rx_packets() <= rx0 + 5 and any(p.poll() is None for p in procs):
        time.sleep(0.02)
    t0 = time.monotonic()
    while True:
        b = be.banned(version)
        if b and first is None:
            first = time.monotonic() - t0
        if all(p.poll() is not None for p in procs):
            break
        time.sleep(0.1)
    time.sleep(extra_s)
    b = be.banned(version)
    if b and first is None:
        first = time.monotonic() - t0
    return first, b


def case(be: Backend, title: str, start, version: int = 4) -> dict:
    be.install()
    try:
        with h.locked():
            be.lab.node.run("conntrack -F", check=False)
            rx0 = be.lab.rx_packets()
            procs = start()
            ban_t, banned = watch_ban(be, procs, version, rx0=rx0)
            for p in procs:
                p.wait()
    finally:
        res = {"case": title, "ban_after_s": None if ban_t is None else round(ban_t, 1), "banned": banned}
        be.remove()
    print(f"{be.kind:4} {title:58} ban after: {'-' if ban_t is None else f'{ban_t:.1f} s':8} banned: {banned}", flush=True)
    return res


def run(kind: str, lab: h.Lab, after_s: int) -> list[dict]:
    be = Backend(kind, lab, after_s)
    out = []
    src = h.ATT4
    for k, lim in LIMITS.items():
        out.append(case(be, f"{k}: 2 s at 2x the limit ({2 * lim}/s)", lambda k=k, lim=lim: [pace(lab, k, src, 2 * lim, 2)]))
        out.append(case(be, f"{k}: 2 s at 10x the limit ({10 * lim}/s)", lambda k=k, lim=lim: [pace(lab, k, src, 10 * lim, 2)]))

        out.append(case(be, f"{k}: 1.5 s at 10x, 1.2 s pause, 1.5 s at 10x", lambda k=k, lim=lim: [pace(lab, k, src, 10 * lim, "1.5,1.2,1.5")]))
        out.append(case(be, f"{k}: 1.5 s at 10x, 0.5 s pause, 1.5 s at 10x", lambda k=k, lim=lim: [pace(lab, k, src, 10 * lim, "1.5,0.5,1.5")]))
        out.append(case(be, f"{k}: 10 s hping3 --flood", lambda k=k: [hping(lab, k, src, 10)]))
        out.append(case(be, f"{k}: 10 s at 2x the limit ({2 * lim}/s)", lambda k=k, lim=lim: [pace(lab, k, src, 2 * lim, 10)]))
    out.append(case(be, "icmp: 10 s flood from an allowlisted source", lambda: [hping(lab, "icmp", ALLOWED4, 10)]))

    def trusted():
        lab.att.run([str(lab.nettx), "crr", h.NODE4, "80", "0.2", OTHER4, "1"])  # handshakes: OTHER4 becomes trusted
        time.sleep(0.2)
        return [hping(lab, "icmp", OTHER4, 8)]
    out.append(case(be, "icmp: 8 s flood from a trusted (handshake-proven) source", trusted))
    out.append(case(be, "icmp v6: 10 s at 100/s from fd99::2 (bans the /64)", lambda: [pace(lab, "icmp", h.ATT6, 100, 10)], version=6))
    # the /64 ban drops another address of the same /64 at ingress
    be.install()
    try:
        with h.locked():
            pace(lab, "icmp", h.ATT6, 100, after_s + 2).wait()
            r = lab.att.run(["ping", "-6", "-c", "3", "-i", "0.2", "-W", "1", "-I", OTHER6, h.NODE6], check=False).stdout
            got = r.split("received")[0].split(",")[-1].strip() if "received" in r else "?"
            line = f"ping from {OTHER6} (same /64) after the ban: {got}/3 answered; banned-v6: {be.banned(6)}"
            print(f"{kind:4} {line}", flush=True)
            out.append({"case": line})
    finally:
        be.remove()
    # a full ban set fails open
    full = Backend(kind, lab, after_s, ban_size=1)
    full.install()
    try:
        with h.locked():
            hping(lab, "icmp", h.ATT4, after_s + 2).wait()
            first = full.banned()
            hping(lab, "icmp", OTHER4, after_s + 2).wait()
            time.sleep(0.5)
            second = full.banned()
            time.sleep(2.5)  # OTHER4's per-source bucket refills
            r = lab.att.run(["ping", "-c", "3", "-i", "0.3", "-W", "1", "-I", OTHER4, h.NODE4], check=False).stdout
            got = r.split("received")[0].split(",")[-1].strip() if "received" in r else "?"
            line = (f"ban set of size 1: after flooder 1 {first}, after flooder 2 {second}; "
                    f"flooder 2 pings at 3/s afterwards: {got}/3 answered")
            print(f"{kind:4} {line}", flush=True)
            out.append({"case": line})
    finally:
        full.remove()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--after-s", type=int, default=h.AFTER_S)
    ap.add_argument("--only", default="nft,ipt")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results = {}
    with tempfile.TemporaryDirectory(prefix="ngh-") as tmp, h.Lab(Path(tmp)) as lab:
        for addr in (ALLOWED4, OTHER4):
            lab.att.run(f"ip addr add {addr}/32 dev {h.ATT_IF}")
            lab.node.run(["ip", "neigh", "replace", addr, "lladdr", lab.att_mac, "dev", h.NODE_IF, "nud", "permanent"])
        lab.att.run(f"ip -6 addr add {OTHER6}/64 dev {h.ATT_IF} nodad")
        lab.node.run(["ip", "neigh", "replace", OTHER6, "lladdr", lab.att_mac, "dev", h.NODE_IF, "nud", "permanent"])
        print(f"after_s = {a.after_s}, gap_s = 1; per-source limits: {LIMITS}", flush=True)
        with h.locked():  # every case in one hold (~6 min)
            for kind in a.only.split(","):
                results[kind] = run(kind, lab, a.after_s)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
