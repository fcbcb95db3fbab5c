"""nodeguard never changes a rule it does not own, on real Kubernetes rulesets."""

from __future__ import annotations

import json

import pytest

import netlab
from foreign import foreign_snapshot, without_nodeguard
from netlab import FIXTURE_FILES, fixture_loaders, load_fixture

# calm: no floods, no timing: these run beside the other tests, without the machine lock
pytestmark = pytest.mark.calm

CASES = [(name, loader) for name in FIXTURE_FILES for loader in fixture_loaders(name)]

CHANGED = """
icmp:
  rate: 50/second
  per_source: 5/second
syn:
  per_source: 100/second
allow:
  cidrs: [10.0.0.0/8, "fd00::/8"]
limits:
  - name: dns
    protocol: udp
    ports: [53]
    per_source: 100/second
connlimit:
  - ports: [22]
    per_source: 8
"""


def test_fixture_list_is_not_empty():
    assert len(FIXTURE_FILES) >= 7, FIXTURE_FILES


def _prerouting_chains(ns) -> list[dict]:
    return [o["chain"] for o in ns.nft_json("chains") if o.get("chain", {}).get("hook") == "prerouting"]


def _assert_ours_run_first(ns) -> None:
    chains = _prerouting_chains(ns)
    ours = {c["name"]: c["prio"] for c in chains if c["table"] == "nodeguard"}
    foreign = [c["prio"] for c in chains if c["table"] != "nodeguard"]
    assert ours["filter-prerouting"] < min(foreign, default=0), (ours, chains)
    after_ct = [p for p in foreign if p > -200]
    assert -200 < ours["filter-conntrack"] < min(after_ct, default=0), (ours, chains)


@pytest.mark.parametrize("name,loader", CASES, ids=[f"{n}-{l}" for n, l in CASES])
def test_foreign_rules_are_identical_through_apply_reapply_and_uninstall(ns, write_policy, default_policy, name,
                                                                        loader):
    netlab.add_uplink(ns)
    load_fixture(ns, name, loader)
    before = foreign_snapshot(ns)
    assert any(v.strip() for k, v in before.items() if not k.endswith("stderr")), "fixture loaded nothing"

    ns.nodeguard("apply", "-c", default_policy)
    assert foreign_snapshot(ns) == before
    _assert_ours_run_first(ns)

    ns.nodeguard("apply", "-c", write_policy(CHANGED))
    assert foreign_snapshot(ns) == before
    _assert_ours_run_first(ns)
    for tool in ("iptables-nft-save", "ip6tables-nft-save"):  # stderr is also part of the snapshot
        err = ns.run(tool).stderr
        assert "incompatible" not in err.lower() and "nodeguard" not in err.lower(), err

    ns.nodeguard("uninstall")
    assert foreign_snapshot(ns) == before
    assert not any(o.get("table", {}).get("name") == "nodeguard" for o in ns.nft_json("tables"))


def test_priorities_move_below_a_foreign_chain_that_sits_lower(ns, default_policy):
    netlab.add_uplink(ns)
    ns.run(["nft", "add table ip early; add chain ip early pre { type filter hook prerouting priority -360; }; "
                   "add chain ip early post { type filter hook prerouting priority -195; }"])
    # foreign chains at the ingress hook, at any priority, are no rivals: nothing of ours hooks ingress
    ns.run(["nft", "add table netdev early; add chain netdev early rival { type filter hook ingress device ngu0 "
                   "priority -600; }; add chain netdev early tap { type filter hook ingress device ngu0 priority -1000; }"])
    out = ns.nodeguard("apply", "-c", default_policy).stdout
    assert ns.our_priorities() == {"filter-prerouting": -361, "filter-conntrack": -196,
                                   "closed-ports": 200}  # after every chain on input, on purpose (placement.py)
    assert "below ip early pre" in out and "netdev early" not in out, out


IPT_CASES = [(name, loader, "nft" if loader == "nft" else loader.split("-")[1])
             for name, loader in CASES]


def _assert_jumps_first(ns, flavour: str) -> None:
    """Our jumps are the first rules of raw PREROUTING (the stateless chain, which begins with the ban
    check) and of mangle PREROUTING, in both families."""
    for tool in (f"iptables-{flavour}-save", f"ip6tables-{flavour}-save"):
        for table, builtin, ours in (("raw", "PREROUTING", ["NODEGUARD-PRE"]),
                                     ("mangle", "PREROUTING", ["NODEGUARD-CONN"])):
            rules = [ln for ln in ns.run([tool, "-t", table]).stdout.splitlines() if ln.startswith(f"-A {builtin} ")]
            assert [ln.rsplit(" ", 1)[1] for ln in rules[:len(ours)]] == ours, (tool, table, builtin, rules[:3])
            assert sum("-j NODEGUARD-" in ln for ln in rules) == len(ours), (tool, table, builtin)


@pytest.mark.parametrize("name,loader,flavour", IPT_CASES, ids=[f"{n}-{l}" for n, l, _ in IPT_CASES])
def test_iptables_backend_changes_only_its_own_lines_through_apply_reapply_and_uninstall(
        ns, write_policy, name, loader, flavour):
    netlab.add_uplink(ns)
    load_fixture(ns, name, loader)
    before = foreign_snapshot(ns)
    head = f"backend: iptables\niptables:\n  flavour: {flavour}\n"

    ns.nodeguard("apply", "-c", write_policy(head))
    assert without_nodeguard(foreign_snapshot(ns)) == without_nodeguard(before)
    _assert_jumps_first(ns, flavour)
    assert json.loads(ns.nodeguard("status", "--json", "-c", write_policy(head)).stdout)["in_sync"]

    ns.nodeguard("apply", "-c", write_policy(head + CHANGED))
    assert without_nodeguard(foreign_snapshot(ns)) == without_nodeguard(before)
    _assert_jumps_first(ns, flavour)

    ns.nodeguard("uninstall")
    after = foreign_snapshot(ns)
    assert "NODEGUARD" not in "".join(after.values())
    assert without_nodeguard(after) == without_nodeguard(before)
    assert ns.run("ipset list -n").stdout.strip() == ""


def test_switching_backend_removes_the_other_backends_objects(ns, write_policy, default_policy):
    netlab.add_uplink(ns)
    ns.nodeguard("apply", "-c", default_policy)
    ns.nodeguard("apply", "-c", write_policy("backend: iptables\niptables:\n  flavour: legacy\n"))
    assert not any(o.get("table", {}).get("name") == "nodeguard" for o in ns.nft_json("tables"))
    assert "NODEGUARD-PRE" in ns.run("iptables-legacy-save").stdout
    ns.nodeguard("apply", "-c", write_policy("backend: iptables\niptables:\n  flavour: nft\n"))
    assert "NODEGUARD" not in ns.run("iptables-legacy-save").stdout
    assert "NODEGUARD-PRE" in ns.run("iptables-nft-save").stdout
    ns.nodeguard("apply", "-c", default_policy)
    assert "NODEGUARD" not in ns.run("iptables-nft-save").stdout + ns.run("iptables-legacy-save").stdout
    assert ns.run("ipset list -n").stdout.strip() == ""
    assert any(o.get("table", {}).get("name") == "nodeguard" for o in ns.nft_json("tables"))


def test_flavour_auto_follows_the_kubelet_canary(ns, write_policy):
    netlab.add_uplink(ns)
    load_fixture(ns, "kubelet-docker-iptables-nft-2021-filter.rules", "iptables-legacy")
    out = json.loads(ns.nodeguard("apply", "--json", "-c", write_policy("backend: iptables\n")).stdout)
    assert out["backend"] == "iptables-legacy"
    assert "KUBE-KUBELET-CANARY found in iptables-legacy" in out["backend_reason"]
