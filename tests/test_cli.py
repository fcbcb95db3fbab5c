"""CLI contract: bad input exits 2 with one line and leaves the kernel exactly as it was."""

from __future__ import annotations

import json
import sys

import pytest

import netlab

# calm: no floods, no timing: these run beside the other tests, without the machine lock
pytestmark = pytest.mark.calm

BAD = "icmp:\n  rate: 100/second\n  per_source: lots\n"


def _ruleset(ns) -> str:
    return ns.run("nft -s -j list ruleset").stdout  # -s: without counters, which traffic moves


def test_bad_policy_exits_2_with_one_line_and_changes_nothing(ns, write_policy, default_policy):
    netlab.add_uplink(ns)
    ns.nodeguard("apply", "-c", default_policy)
    before = _ruleset(ns)
    bad = write_policy(BAD)
    for verb in (["apply"], ["apply", "--dry-run"], ["status"], ["check"]):
        res = ns.nodeguard(*verb, "-c", bad, check=False)
        assert res.returncode == 2, (verb, res)
        assert res.stderr == f"{bad}:3: icmp.per_source: rate must look like 'N/second', 'N/minute' or " \
                             f"'N/hour' (optionally 'burst M'), got 'lots'\n", res.stderr
        assert res.stdout == ""
    assert _ruleset(ns) == before


def test_bad_policy_on_a_clean_node_installs_nothing(ns, write_policy):
    netlab.add_uplink(ns)
    res = ns.nodeguard("apply", "-c", write_policy("syn: {rate: fast}\n"), check=False)
    assert res.returncode == 2 and ": syn.rate: rate must look like" in res.stderr
    assert json.loads(_ruleset(ns))["nftables"][1:] == []


def test_dry_run_checks_with_the_kernel_but_commits_nothing(ns, default_policy):
    netlab.add_uplink(ns)
    res = ns.nodeguard("apply", "--dry-run", "--json", "-c", default_policy)
    assert json.loads(res.stdout)["applied"] is False
    assert json.loads(_ruleset(ns))["nftables"][1:] == []


def test_not_root_is_refused_with_exit_2_and_one_line(ns, default_policy):
    """Refused before the policy is read (nobody could not read this test's policy under tmp_path anyway)."""
    netlab.add_uplink(ns)
    res = ns.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
                  sys.executable, "-m", "guard", "apply", "-c", default_policy], check=False)
    assert res.returncode == 2, res
    assert res.stderr == "nodeguard: needs CAP_NET_ADMIN: run as root (or with CAP_NET_ADMIN)\n"
    assert json.loads(_ruleset(ns))["nftables"][1:] == []


def test_uninstall_removes_only_our_table_and_is_idempotent(ns, default_policy):
    netlab.add_uplink(ns)
    ns.run(["nft", "add table ip other; add chain ip other c { type filter hook input priority 0; }"])
    ns.nodeguard("apply", "-c", default_policy)
    assert json.loads(ns.nodeguard("uninstall", "--json").stdout) == {"removed": ["nft"]}
    assert json.loads(ns.nodeguard("uninstall", "--json").stdout) == {"removed": []}
    tables = [o["table"]["name"] for o in json.loads(_ruleset(ns))["nftables"] if "table" in o]
    assert tables == ["other"]


def test_status_reports_hooks_foreign_chains_counters_and_meters(ns, default_policy):
    netlab.add_uplink(ns)
    ns.run(["nft", "add table ip kube; add chain ip kube nat-pre { type nat hook prerouting priority -100; }"])
    ns.nodeguard("apply", "-c", default_policy)
    st = json.loads(ns.nodeguard("status", "--json", "-c", default_policy).stdout)
    assert st["installed"] and st["in_sync"]
    assert {h["chain"]: h["priority"] for h in st["hooks"]} == {"filter-prerouting": -350, "filter-conntrack": -190,
                                                                "closed-ports": 200}
    assert {"family": "ip", "table": "kube", "chain": "nat-pre", "hook": "prerouting", "priority": -100} \
        in st["foreign_chains"]
    assert any(r["label"] == "syn-flood backstop v4 (valve engaged)" for r in st["rules"])
    assert st["syn_valve"] == {"mode": "auto", "engaged": False, "expires_in_s": None, "hold_s": 30}
    meters = {m["set"]: m for m in st["meters"]}
    assert meters["syn-src-v4"]["elements"] == 0 and meters["syn-src-v4"]["size"] == 65536
    text = ns.nodeguard("status", "-c", default_policy).stdout
    assert "in sync with the policy" in text and "ip kube nat-pre" in text
    assert "syn valve: auto, not engaged" in text

    ns.run("nft flush chain inet nodeguard syn-flood")
    assert json.loads(ns.nodeguard("status", "--json", "-c", default_policy).stdout)["in_sync"] is False


def test_check_prints_the_kernel_text_and_changes_nothing(ns, default_policy):
    netlab.add_uplink(ns)
    res = ns.nodeguard("check", "-c", default_policy)
    assert res.stdout.startswith(f"# {default_policy}: valid; checked by the kernel")
    assert "table inet nodeguard {" in res.stdout and "chain filter-prerouting {" in res.stdout
    assert json.loads(_ruleset(ns))["nftables"][1:] == []


def test_a_policy_file_others_could_write_is_refused_by_every_verb_that_writes_the_firewall(ns, tmp_path):
    import os
    netlab.add_uplink(ns)
    from conftest import own_paths
    path = tmp_path / "shared.yaml"
    path.write_text(own_paths("icmp:\n  per_source: 5/second\n", tmp_path))  # a verb that read it writes there
    os.chmod(path, 0o666)
    for verb in (["apply"], ["apply", "--dry-run"], ["sample"], ["unban", "--all"]):
        res = ns.nodeguard(*verb, "-c", str(path), check=False)
        assert res.returncode == 2 and res.stderr.count("\n") == 1 and "refusing" in res.stderr, res
    assert json.loads(_ruleset(ns))["nftables"][1:] == []


def test_dry_run_of_a_backend_switch_says_what_else_it_removes(ns, write_policy, default_policy):
    netlab.add_uplink(ns)
    ns.nodeguard("apply", "-c", default_policy)
    out = ns.nodeguard("apply", "--dry-run", "-c", write_policy("backend: iptables\niptables:\n  flavour: nft\n")).stdout
    assert "would also remove nodeguard's rules from: nft" in out, out
    assert any(o.get("table", {}).get("name") == "nodeguard" for o in json.loads(_ruleset(ns))["nftables"])
