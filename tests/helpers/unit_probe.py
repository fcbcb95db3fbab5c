"""Stands in for `nodeguard run` inside the shipped unit's sandbox (tests/test_unit_file.py).

It does what the daemon will do that the sandbox could forbid, records what happened in
$STATE_DIRECTORY/probe.json, then speaks the notify protocol with guard.notify like the daemon:
READY=1, WATCHDOG=1 at half the interval, RELOADING=1/READY=1 on SIGHUP, STOPPING=1 on SIGTERM.
SIGUSR1 makes it stop pinging the watchdog (a hung main loop).
"""

import ctypes
import errno
import json
import mmap
import os
import signal
import socket
import subprocess
import sys
import time

from guard.notify import Notifier, watchdog_interval

SYSCTLS_ALLOWED = {"/proc/sys/net/ipv4/tcp_syncookies": "1", "/proc/sys/net/ipv4/tcp_timestamps": "1",
                   "/proc/sys/net/netfilter/nf_conntrack_tcp_loose": "0"}
SYSCTL_FORBIDDEN = "/proc/sys/net/ipv4/ip_forward"


def outcome(fn):
    try:
        return {"ok": fn()}
    except OSError as exc:
        return {"errno": errno.errorcode.get(exc.errno, str(exc.errno))}
    except Exception as exc:  # recorded, not raised: the test reads every outcome
        return {"error": f"{type(exc).__name__}: {exc}"}


def write_sysctl(path, value):
    with open(path, "w") as f:
        f.write(value)
    with open(path) as f:
        return f.read().strip()


def rwx_mmap():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    addr = libc.mmap(None, mmap.PAGESIZE, mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC,
                     mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), "mmap")
    return "mapped"


def ctypes_callback():
    libc = ctypes.CDLL(None)
    cmp = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int))
    arr = (ctypes.c_int * 5)(5, 1, 4, 2, 3)
    libc.qsort(arr, 5, ctypes.sizeof(ctypes.c_int), cmp(lambda a, b: a[0] - b[0]))
    return list(arr)


def libnftables():
    import nftables  # pip-nftables: ctypes over libnftables, as guard/backend/nft.py uses it
    nft = nftables.Nftables(sofile="libnftables.so.1")
    nft.set_json_output(True)
    for cmd in ("add table inet probe", "add chain inet probe c { type filter hook prerouting priority -350; }"):
        rc, _out, err = nft.cmd(cmd)
        if rc:
            raise RuntimeError(err.strip())
    rc, out, err = nft.cmd("list table inet probe")
    return json.loads(out)["nftables"][1]["table"]["name"]


def nfqueue():
    from netfilterqueue import NetfilterQueue
    q = NetfilterQueue()
    q.bind(4999, lambda pkt: pkt.drop())
    q.unbind()
    return "bound"


def child_caps():
    """A spawned tool (iptables-restore) keeps NET_ADMIN: root uid, same bounding set."""
    out = subprocess.run(["/bin/grep", "^CapEff", "/proc/self/status"], capture_output=True, text=True, check=True)
    return out.stdout.split()[1]


def loopback_http():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    c = socket.create_connection(srv.getsockname(), timeout=2)
    conn, _ = srv.accept()
    c.sendall(b"x")
    data = conn.recv(1)
    for s in (c, conn, srv):
        s.close()
    return data.decode()


def write_file(path):
    with open(path, "w") as f:
        f.write("x")
    return oct(os.stat(os.path.dirname(path)).st_mode & 0o777)


def status_field(name):
    with open("/proc/self/status") as f:
        return next(line.split()[1] for line in f if line.startswith(name + ":"))


def main():
    state = os.environ["STATE_DIRECTORY"]
    facts = {
        "cap_eff": status_field("CapEff"), "cap_bnd": status_field("CapBnd"),
        "no_new_privs": status_field("NoNewPrivs"), "seccomp": status_field("Seccomp"),
        "sysctl": {p: outcome(lambda p=p, v=v: write_sysctl(p, v)) for p, v in SYSCTLS_ALLOWED.items()},
        "sysctl_forbidden": outcome(lambda: write_sysctl(SYSCTL_FORBIDDEN, "0")),
        "rwx_mmap": outcome(rwx_mmap),
        "ctypes_callback": outcome(ctypes_callback),
        "libnftables": outcome(libnftables),
        "nfqueue": outcome(nfqueue),
        "child_cap_eff": outcome(child_caps),
        "loopback_tcp": outcome(loopback_http),
        "state_dir": outcome(lambda: write_file(os.path.join(state, "last-good.yaml"))),
        "logs_dir": outcome(lambda: write_file(os.path.join(os.environ["LOGS_DIRECTORY"], "attacks.jsonl"))),
        "runtime_dir": outcome(lambda: write_file(os.path.join(os.environ["RUNTIME_DIRECTORY"], "watch.json"))),
        "etc": outcome(lambda: write_file("/etc/nodeguard-probe")),
        "run": outcome(lambda: write_file("/run/nodeguard-probe")),  # the harness's own /run, not the host's
        "watchdog_s": watchdog_interval(),
        "reloads": 0,
        "python": sys.version.split()[0],
    }

    def publish():
        tmp = os.path.join(state, "probe.json.tmp")
        with open(tmp, "w") as f:
            json.dump(facts, f)
        os.replace(tmp, os.path.join(state, "probe.json"))

    publish()
    notifier = Notifier()
    hung = []

    def on_hup(*_):
        notifier.reloading("reloading")
        facts["reloads"] += 1
        publish()
        notifier.ready(f"reloaded {facts['reloads']}")

    def on_term(*_):
        notifier.stopping("stopping")
        sys.exit(0)

    signal.signal(signal.SIGHUP, on_hup)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGUSR1, lambda *_: hung.append(True))
    notifier.ready("probe ready")
    interval = (facts["watchdog_s"] or 60) / 2
    while True:
        if not hung:
            notifier.watchdog()
        time.sleep(interval)


if __name__ == "__main__":
    main()
