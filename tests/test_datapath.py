"""guard/datapath.py: XDP and tc ingress programs ahead of nodeguard's hooks.

Pure: the parsers on iproute2 JSON captured from a real namespace (tests/fixtures/datapath/capture.sh),
owners by the names Cilium and Calico give, untrusted output. Kernel: a veth uplink in a throwaway
namespace gets a tc bpf filter, a generic XDP program (tests/bpf/ng_pass.c, compiled by clang here) and
a tcx program; status, apply and the daemon's metrics name each, and forget each once it is removed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import netlab
from guard.lab.netns import sh as core_sh
from guard import datapath
from guard.datapath import TC_INGRESS, XDP, Bypass, Reading

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "datapath"
SOURCE = Path(__file__).resolve().parent / "bpf" / "ng_pass.c"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def prog_ids(name: str) -> list[int]:
    """The program ids the capture got from the kernel (they differ at every capture)."""
    return [o["options"]["prog"]["id"] for o in json.loads(fixture(name)) if "options" in o]


# --- pure: the parsers on captured output ----------------------------------------------------
def test_xdp_generic_and_native_are_read_from_captured_ip_link_json():
    for name, mode in (("link-xdp-generic.json", "generic"), ("link-xdp-native.json", "native")):
        (found,) = datapath.parse_links(fixture(name), ["ngv0", "ngi0"])
        assert (found.interface, found.kind, found.attach, found.program, found.owner) == \
            ("ngv0", XDP, mode, "ng_xdp_pass", None)
        assert isinstance(found.program_id, int) and found.program_id > 0
        assert datapath.parse_links(fixture(name), ["nga0", "ngi0"]) == []  # only the interfaces asked for
    assert datapath.parse_links(fixture("link-none.json"), ["ngv0", "ngi0", "nga0"]) == []


def test_tc_ingress_filters_are_read_from_captured_tc_json_one_per_program():
    clsact = datapath.parse_tc_filters(fixture("tc-clsact-bpf.json"), "ngv0")
    assert [(b.interface, b.kind, b.attach, b.program, b.filter_name, b.owner) for b in clsact] == \
        [("ngv0", TC_INGRESS, "bpf", "ng_tc_pass", "ng_pass.o:[tc]", None)] * 2  # pref 3 and the default pref
    assert [b.program_id for b in clsact] == prog_ids("tc-clsact-bpf.json")
    (old,) = datapath.parse_tc_filters(fixture("tc-ingress-qdisc.json"), "ngi0")  # the ingress qdisc, not clsact
    assert (old.kind, old.attach, old.program, old.program_id) == \
        (TC_INGRESS, "bpf", "ng_tc_pass", prog_ids("tc-ingress-qdisc.json")[0])
    assert datapath.parse_tc_filters(fixture("tc-none.json"), "ngv0") == []


def test_a_filter_without_a_program_is_one_bypass_of_its_kind():
    raw = json.dumps([{"protocol": "ip", "pref": 9, "kind": "u32", "chain": 0},
                      {"protocol": "ip", "pref": 9, "kind": "u32", "chain": 0, "options": {"fh": "800:"}},
                      {"protocol": "all", "pref": 7, "kind": "matchall", "chain": 0}]).encode()
    assert [(b.attach, b.program, b.owner) for b in datapath.parse_tc_filters(raw, "eth0")] == \
        [("u32", None, None), ("matchall", None, None)]


@pytest.mark.parametrize("names, owner", [
    (("cil_from_netdev", "cil_from_netdev-eth0"), "cilium"),   # Cilium 1.13+: tc or tcx
    (("cil_xdp_entry",), "cilium"),
    ((None, "bpf_netdev_eth0.o:[from-netdev]"), "cilium"),      # Cilium before 1.13
    (("from-netdev", "bpf_xdp.o:[from-netdev]"), "cilium"),
    (("cali_tc_preambl", "cali_tc_preambl:[7]"), "calico"),     # names are cut to 15 bytes by the kernel
    (("cali_xdp_preamb",), "calico"),
    (("calico_tc_main",), "calico"),
    (("ng_tc_pass", "ng_pass.o:[tc]"), None),
    ((None, None), None),
])
def test_owners_are_told_by_the_names_their_loaders_give(names, owner):
    assert datapath.owner_of(*names) == owner


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
                        st.sampled_from(["ifname", "xdp", "mode", "prog", "attached", "id", "name", "kind", "pref",
                                         "chain", "options", "bpf_name", "ifindex"]), inner, max_size=6),
                    max_leaves=30)


@settings(max_examples=300, deadline=None)
@given(JSON)
def test_any_json_parses_without_raising(doc):
    raw = json.dumps(doc).encode()
    for one in (raw, raw[: len(raw) // 2], b"\xff\xfe" + raw):
        datapath.parse_links(one, ["ngv0", ""])
        datapath.parse_tc_filters(one, "ngv0")


def test_names_from_outside_are_escaped_in_warnings():
    evil = Bypass("eth0", TC_INGRESS, "bpf\n", None, "x\x1b[2J", 3, "f\nWARNING fake")
    (line,) = datapath.warnings(Reading((evil,)))
    assert "\n" not in line and "\x1b" not in line and "\\x1b[2J" in line and "f\\nWARNING fake" in line
    (note,) = datapath.warnings(Reading((), ("tc:\x07 bell\nx",)))
    assert note == "note: could not read the datapath: tc:\\x07 bell\\nx"


def test_a_tool_that_cannot_run_is_a_problem_not_an_exception():
    def missing(args):
        raise FileNotFoundError(2, "No such file or directory", args[0])

    reading = datapath.detect(["eth0"], run=missing, tcx_query=lambda i: [])
    assert reading.bypasses == () and reading.problems[0].startswith("ip link show: ")

    def tc_fails(args):
        if args[0] == "ip":
            return b'[{"ifindex": 2, "ifname": "eth0"}]'
        raise subprocess.CalledProcessError(1, args, b"", b"Cannot find device\n")

    def refused(ifindex):
        raise datapath.tcx.Refused("bpf(BPF_PROG_QUERY): Operation not permitted")

    reading = datapath.detect(["eth0"], run=tc_fails, tcx_query=refused, cilium_devices=Path("/nonexistent"))
    assert reading.problems == ("tc filter show dev eth0 ingress: exit 1 (Cannot find device)",
                                "tcx of eth0: bpf(BPF_PROG_QUERY): Operation not permitted")
    assert Reading.of(json.loads(json.dumps(reading.data()))) == reading


def test_with_bpf_refused_ciliums_pinned_tcx_link_still_tells(tmp_path):
    """The systemd unit refuses bpf(2): Cilium's tcx link is then known by its pin on bpffs."""
    (tmp_path / "bond0-100" / "links").mkdir(parents=True)  # bond0.100: Cilium writes "." as "-"
    (tmp_path / "bond0-100" / "links" / "cil_from_netdev").touch()
    (tmp_path / "eth1" / "links").mkdir(parents=True)
    (tmp_path / "eth1" / "links" / "cil_to_netdev").touch()  # egress: not ahead of nodeguard

    def links(args):
        return b'[{"ifindex": 2, "ifname": "bond0.100"}, {"ifindex": 3, "ifname": "eth1"}]' if args[0] == "ip" else b"[]"

    def refused(ifindex):
        raise datapath.tcx.Refused("bpf(BPF_PROG_QUERY): Operation not permitted")

    reading = datapath.detect(["bond0.100", "eth1"], run=links, tcx_query=refused, cilium_devices=tmp_path)
    assert reading.bypasses == (Bypass("bond0.100", TC_INGRESS, "tcx", "cilium", "cil_from_netdev", None),)
    assert len(reading.problems) == 2


# --- kernel: real programs on a protected veth -----------------------------------------------
@pytest.fixture
def bpf_object(kernel, tmp_path) -> Path:
    """tests/bpf/ng_pass.c compiled for BPF (clang is in conftest.TOOLS: missing, it fails under CI)."""
    out = tmp_path / "ng_pass.o"
    arch_include = Path(f"/usr/include/{os.uname().machine}-linux-gnu")  # Debian: asm/types.h lives there
    include = ["-I", str(arch_include)] if arch_include.is_dir() else []
    core_sh(["nice", "-n", "19", "clang", "-O2", "-target", "bpf", *include, "-c", str(SOURCE), "-o", str(out)])
    return out


def bypasses(st: dict) -> set[tuple]:
    return {(b["interface"], b["kind"], b["attach"], b["owner"], b["program"]) for b in st["datapath"]["bypasses"]}


def test_status_and_apply_name_every_program_ahead_of_nodeguard_until_it_is_removed(ns, default_policy, bpf_object):
    netlab.add_uplink(ns)  # ngu0, the default route: the protected interface (interfaces: auto)
    ns.nodeguard("apply", "-c", default_policy)
    st = ns.status(default_policy)
    assert st["datapath"] == {"bypasses": [], "problems": []}
    assert "WARNING" not in ns.nodeguard("status", "-c", default_policy).stdout

    ns.run("tc qdisc add dev ngu0 clsact")
    ns.run(f"tc filter add dev ngu0 ingress bpf da obj {bpf_object} sec tc")
    ns.run("tc qdisc add dev ngu0p clsact")  # not protected: not reported
    ns.run(f"tc filter add dev ngu0p ingress bpf da obj {bpf_object} sec tc")
    ns.run(f"ip link set dev ngu0 xdpgeneric obj {bpf_object} sec xdp")
    holder = ns.popen([sys.executable, str(netlab.HELPERS / "tcx_hold.py"), "ngu0", "cil_from_netdev"],
                      stdin=subprocess.PIPE)
    try:
        assert holder.stdout.readline().startswith("attached "), holder.stderr.read()
        want = {("ngu0", "tc-ingress", "bpf", None, "ng_tc_pass"), ("ngu0", "xdp", "generic", None, "ng_xdp_pass"),
                ("ngu0", "tc-ingress", "tcx", "cilium", "cil_from_netdev")}
        st = ns.status(default_policy)
        assert bypasses(st) == want and st["datapath"]["problems"] == []
        text = ns.nodeguard("status", "-c", default_policy).stdout
        assert "WARNING datapath bypass: ngu0: XDP (generic) program of unknown owner [ng_xdp_pass id " in text
        assert "WARNING datapath bypass: ngu0: tc ingress (bpf) program of unknown owner [ng_tc_pass id " in text
        assert "WARNING datapath bypass: ngu0: tc ingress (tcx) program of cilium [cil_from_netdev id " in text
        assert "ngu0p" not in text
        applied = ns.nodeguard("apply", "--json", "-c", default_policy).stdout
        assert bypasses(json.loads(applied)) == want
        assert "WARNING datapath bypass: ngu0: XDP (generic)" in ns.nodeguard("apply", "-c", default_policy).stdout
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)

    assert bypasses(ns.status(default_policy)) == want - {("ngu0", "tc-ingress", "tcx", "cilium", "cil_from_netdev")}
    ns.run("ip link set dev ngu0 xdpgeneric off")
    assert {b[1] for b in bypasses(ns.status(default_policy))} == {"tc-ingress"}
    ns.run("tc qdisc del dev ngu0 clsact")
    assert ns.status(default_policy)["datapath"] == {"bypasses": [], "problems": []}
    assert "WARNING" not in ns.nodeguard("status", "-c", default_policy).stdout


def test_the_daemon_exports_a_bypass_while_it_is_there(ns, tmp_path, bpf_object):
    from test_daemon import Run, metrics, policy_text, write

    netlab.add_uplink(ns)
    policy = write(tmp_path / "policy.yaml", policy_text(tmp_path, watcher="verify_interval_s: 1"))
    run = Run(ns, tmp_path, policy)
    try:
        run.wait_ready()
        key = ("nodeguard_datapath_bypass", (("interface", "ngu0"), ("kind", "xdp")))
        assert not any(name == "nodeguard_datapath_bypass" for name, _ in metrics(ns))
        ns.run(f"ip link set dev ngu0 xdpgeneric obj {bpf_object} sec xdp")
        # re-read at most every verify_interval_s (1 s here), and scrapes share one read for 2 s
        netlab.wait_until(lambda: metrics(ns).get(key) == 1, timeout=6, interval=0.5)
        ns.run("ip link set dev ngu0 xdpgeneric off")
        netlab.wait_until(lambda: key not in metrics(ns), timeout=6, interval=0.5)
    finally:
        run.stop()
