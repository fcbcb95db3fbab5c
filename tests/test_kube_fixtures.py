"""nodeguard never changes a rule it does not own, on real Kubernetes rulesets."""

from __future__ import annotations

import pytest

import netlab
from netlab import FIXTURE_FILES, fixture_loaders, foreign_snapshot, load_fixture

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
def test_foreign_rules_are_identical_through_apply_reapply_and_uninstall(ns, write_policy, name, loader):
    netlab.add_uplink(ns)
    load_fixture(ns, name, loader)
    before = foreign_snapshot(ns)
    assert any(v.strip() for k, v in before.items() if not k.endswith("stderr")), "fixture loaded nothing"

    ns.nodeguard("apply")
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


def test_priorities_move_below_a_foreign_chain_that_sits_lower(ns):
    netlab.add_uplink(ns)
    ns.run(["nft", "add table ip early; add chain ip early pre { type filter hook prerouting priority -360; }; "
                   "add chain ip early post { type filter hook prerouting priority -195; }"])
    out = ns.nodeguard("apply").stdout
    assert ns.our_priorities() == {"filter-prerouting": -361, "filter-conntrack": -196}
    assert "below ip early pre" in out
