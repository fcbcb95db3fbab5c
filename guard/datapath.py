"""What acts on a protected interface's packets before nodeguard sees them: XDP and tc ingress.

nodeguard's earliest chain hooks prerouting (after defrag). XDP runs first (native XDP in the driver,
before an skb exists), then tc ingress (tcx, then clsact or ingress qdisc filters), then netfilter.
Cilium's eBPF datapath and Calico's eBPF dataplane sit at the first two: what their programs drop,
redirect to a pod or send back out never reaches nodeguard's rules. This module says which of them
sit on which interface, as data (``Bypass``); wording for people is in ``describe``.

Read from ``ip -j -d link show`` and ``tc -j filter show dev X ingress`` (iproute2; rtnetlink carries
both) and, for tcx, from bpf(2) (``tcx.py``). Their output is untrusted: unexpected JSON is skipped,
never a crash, and every name is escaped before it is printed.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from . import tcx
from .logs import escape

XDP, TC_INGRESS = "xdp", "tc-ingress"
# iproute2's "mode" numbers are the kernel's XDP_ATTACHED_* (linux/if_link.h)
XDP_MODES = {1: "native", 2: "generic", 3: "offload"}
# Names their loaders give: Cilium's programs are cil_* (cil_from_netdev, cil_xdp_entry) and its tc
# filters "<program>-<device>"; before 1.13 the filters were named after the object, bpf_netdev_<dev>.o,
# bpf_xdp.o, bpf_host.o. Calico's programs are cali_* (cali_tc_preamble, cali_xdp_preamble), older
# ones calico_*.
OWNERS = (("cilium", ("cil_", "bpf_netdev", "bpf_xdp", "bpf_host")), ("calico", ("cali_", "calico")))
TIMEOUT_S = 5.0
# Where Cilium pins the tcx links of a device (its bpffsDeviceLinksDir; "." in a device name becomes "-"):
# seen without bpf(2), which the systemd unit's sandbox refuses.
CILIUM_DEVICES = Path("/sys/fs/bpf/cilium/devices")
CILIUM_TCX_INGRESS = "cil_from_netdev"


@dataclass(frozen=True)
class Bypass:
    """One program or filter ahead of nodeguard on a protected interface."""

    interface: str
    kind: str                  # XDP or TC_INGRESS
    attach: str                # XDP: "native", "generic", "offload"; tc: "tcx" or the filter's kind ("bpf", "u32", ...)
    owner: str | None          # "cilium", "calico", or None when its names do not tell
    program: str | None        # the BPF program's name (None: not BPF, or the kernel would not say)
    program_id: int | None
    filter_name: str | None = None  # a tc bpf filter's own name (Cilium: "cil_from_netdev-eth0")


@dataclass(frozen=True)
class Reading:
    bypasses: tuple[Bypass, ...]
    problems: tuple[str, ...] = ()  # what could not be read: the answer may be incomplete

    def data(self) -> dict[str, Any]:
        return {"bypasses": [asdict(b) for b in self.bypasses], "problems": list(self.problems)}

    @classmethod
    def of(cls, data: dict[str, Any]) -> "Reading":
        """Back from ``data()`` (status's JSON dict)."""
        return cls(tuple(Bypass(**b) for b in data["bypasses"]), tuple(data["problems"]))


def owner_of(*names: str | None) -> str | None:
    for owner, prefixes in OWNERS:
        if any(n and n.startswith(prefixes) for n in names):
            return owner
    return None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _dicts(value: Any) -> list[dict]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _load(raw: bytes) -> Any:
    try:
        return json.loads(raw.decode("utf-8", "replace"))
    except ValueError:
        return None


def parse_links(raw: bytes, interfaces: Iterable[str]) -> list[Bypass]:
    """XDP programs on ``interfaces`` from ``ip -j -d link show``: one per attach mode (the kernel
    allows native and offload at once; ``attached`` lists each, older iproute2 only ``mode``/``prog``)."""
    wanted, out = set(interfaces), []
    for link in _dicts(_load(raw)):
        name, xdp = _str(link.get("ifname")), link.get("xdp")
        if name not in wanted or not isinstance(xdp, dict):
            continue
        attached = _dicts(xdp.get("attached")) or [xdp]
        for one in attached:
            mode = XDP_MODES.get(_int(one.get("mode")))
            if mode is None:
                continue
            prog = one.get("prog") if isinstance(one.get("prog"), dict) else {}
            program = _str(prog.get("name"))
            out.append(Bypass(name, XDP, mode, owner_of(program), program, _int(prog.get("id"))))
    return out


def parse_tc_filters(raw: bytes, interface: str) -> list[Bypass]:
    """tc ingress filters from ``tc -j filter show dev X ingress``: one per BPF program, one per
    other filter (chain, priority, kind). tc prints a filter's head and then each handle as
    separate objects; a head whose handles name programs adds nothing of its own."""
    found: dict[tuple, Bypass] = {}
    told: set[tuple] = set()  # filters whose handles named their programs
    for f in _dicts(_load(raw)):
        kind = _str(f.get("kind"))
        if kind is None:
            continue
        opts = f.get("options") if isinstance(f.get("options"), dict) else {}
        prog = opts.get("prog") if isinstance(opts.get("prog"), dict) else {}
        program, program_id, filter_name = _str(prog.get("name")), _int(prog.get("id")), _str(opts.get("bpf_name"))
        key = (_int(f.get("chain")), _int(f.get("pref")), kind)
        if program is None and program_id is None and filter_name is None:
            if key not in told:
                found.setdefault(key, Bypass(interface, TC_INGRESS, kind, None, None, None))
            continue
        told.add(key)
        found.pop(key, None)  # the head, now told apart by its programs
        found[(*key, program_id, filter_name)] = Bypass(interface, TC_INGRESS, kind, owner_of(program, filter_name),
                                                       program, program_id, filter_name)
    return list(found.values())


def tcx_bypasses(interface: str, programs: Iterable[tcx.TcxProgram]) -> list[Bypass]:
    return [Bypass(interface, TC_INGRESS, "tcx", owner_of(p.name), p.name, p.id) for p in programs]


def cilium_pinned_tcx(interface: str, devices: Path = CILIUM_DEVICES) -> list[Bypass]:
    """Cilium's tcx ingress link of ``interface`` as pinned on bpffs: what is known of tcx when bpf(2)
    is refused. A pin can outlive its device's program only briefly (Cilium unpins defunct links)."""
    pin = devices / interface.replace(".", "-") / "links" / CILIUM_TCX_INGRESS
    try:
        present = pin.exists()
    except OSError:
        return []
    return [Bypass(interface, TC_INGRESS, "tcx", "cilium", CILIUM_TCX_INGRESS, None)] if present else []


Runner = Callable[[list[str]], bytes]


def _run(args: list[str]) -> bytes:
    """stdout of an iproute2 command; OSError or CalledProcessError when it cannot answer."""
    res = subprocess.run(args, capture_output=True, timeout=TIMEOUT_S, check=False)
    if res.returncode != 0:
        raise subprocess.CalledProcessError(res.returncode, args, res.stdout, res.stderr)
    return res.stdout


def _ifindexes(raw: bytes) -> dict[str, int]:
    return {link["ifname"]: link["ifindex"] for link in _dicts(_load(raw))
            if isinstance(link.get("ifname"), str) and _int(link.get("ifindex")) is not None}


def _failed(what: str, exc: Exception) -> str:
    if isinstance(exc, subprocess.CalledProcessError):
        err = (exc.stderr or b"").decode("utf-8", "replace").strip().splitlines()
        return f"{what}: exit {exc.returncode}" + (f" ({err[-1][:200]})" if err else "")
    return f"{what}: {exc}"


def detect(interfaces: Iterable[str], run: Runner = _run,
           tcx_query: Callable[[int], list[tcx.TcxProgram]] = tcx.ingress_programs,
           cilium_devices: Path = CILIUM_DEVICES) -> Reading:
    """Every XDP program and tc ingress filter or tcx program on ``interfaces`` (in this network
    namespace). A tool or query that fails is a problem in the reading, never an exception."""
    interfaces = tuple(interfaces)
    bypasses: list[Bypass] = []
    problems: list[str] = []
    try:
        links = run(["ip", "-j", "-d", "link", "show"])
    except (OSError, subprocess.SubprocessError) as exc:
        links = b"[]"
        problems.append(_failed("ip link show", exc))
    bypasses += parse_links(links, interfaces)
    index = _ifindexes(links)
    for name in interfaces:
        if name not in index:
            continue  # not there (yet): nothing acts on it, and nodeguard matches it by name only
        try:
            bypasses += parse_tc_filters(run(["tc", "-j", "filter", "show", "dev", name, "ingress"]), name)
        except (OSError, subprocess.SubprocessError) as exc:
            problems.append(_failed(f"tc filter show dev {name} ingress", exc))
        try:
            bypasses += tcx_bypasses(name, tcx_query(index[name]))
        except tcx.Refused as exc:
            problems.append(f"tcx of {name}: {exc}")
            bypasses += cilium_pinned_tcx(name, cilium_devices)
    return Reading(tuple(bypasses), tuple(problems))


def describe(b: Bypass) -> str:
    """One line for people, every outside name escaped."""
    what = "XDP" if b.kind == XDP else "tc ingress"
    prog = " ".join(x for x in (escape(b.program) if b.program else None,
                                f"id {b.program_id}" if b.program_id is not None else None,
                                f"filter {escape(b.filter_name)}" if b.filter_name else None) if x)
    who = b.owner or "unknown owner"
    return (f"{escape(b.interface)}: {what} ({escape(b.attach)}) program of {who}{f' [{prog}]' if prog else ''}: "
            f"traffic it drops, redirects or answers never reaches nodeguard")


def warnings(reading: Reading) -> list[str]:
    """Warning lines for ``apply`` and ``status``: nothing when nothing sits ahead of nodeguard."""
    lines = [f"WARNING datapath bypass: {describe(b)}" for b in reading.bypasses]
    lines += [f"note: could not read the datapath: {escape(p)}" for p in reading.problems]
    return lines
