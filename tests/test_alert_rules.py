"""deploy/prometheus/nodeguard-rules.yaml: promtool checks it and runs its unit tests (the file beside
it), and every nodeguard metric it names is one the collector exports."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from guard.metrics import NodeguardCollector
from test_metrics import SNAPSHOT

RULES = Path(__file__).resolve().parent.parent / "deploy" / "prometheus" / "nodeguard-rules.yaml"
TESTS = RULES.with_name("nodeguard-rules.test.yaml")


def promtool_run(promtool: str, *args: str) -> str:
    res = subprocess.run([promtool, *args], cwd=RULES.parent, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def test_promtool_checks_the_rules(promtool):
    assert "SUCCESS: 14 rules found" in promtool_run(promtool, "check", "rules", RULES.name)


def test_promtool_unit_tests_of_the_rules_pass(promtool):
    assert "SUCCESS" in promtool_run(promtool, "test", "rules", TESTS.name)


def test_every_nodeguard_metric_the_rules_name_is_exported(tmp_path):
    netfilter = tmp_path / "net" / "netfilter"
    netfilter.mkdir(parents=True)
    (netfilter / "nf_conntrack_count").write_text("5\n")
    (netfilter / "nf_conntrack_max").write_text("100\n")
    exported = {name for fam in NodeguardCollector(lambda: SNAPSHOT, proc_sys=tmp_path).collect()
                for name in (fam.name, *(s.name for s in fam.samples))}
    exprs = [r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    named = {m for e in exprs for m in re.findall(r"\bnodeguard_[a-z_]+\b", e)}
    assert named and named <= exported, sorted(named - exported)
