"""The backend kinds (guard/backend/kinds.py): each answers what apply.py and the watcher once asked
with ``policy.backend ==``, and a removal's text is the one people always read."""

from __future__ import annotations

import pytest

from guard import probe
from guard.apply import choose_sampling, make_plan
from guard.backend.kinds import IPTABLES, NFT, Installed, Removed, describe, kind_for, label
from guard.model.build import build_ruleset
from guard.policy.load import parse_policy

BASE = "sampler:\n  enabled: {sampler}\nsyn:\n  synproxy:\n    ports: []\nwatcher:\n  state_file: {state}\n"
# a foreign chain just ahead of our stateful one (-190, after conntrack): nft moves under it (placement.py)
FOREIGN = probe.ForeignChain("ip", "mangle", "PREROUTING", "prerouting", -195)


def policy_for(tmp_path, backend: str, extra: str = "", sampler: str = "true"):
    head = f"backend: {backend}\n{extra}"
    return parse_policy(head + BASE.format(sampler=sampler, state=tmp_path / "watch.json"), "p.yaml")


def test_the_policy_names_its_kind(tmp_path):
    assert kind_for(policy_for(tmp_path, "nft")) is NFT
    assert kind_for(policy_for(tmp_path, "iptables")) is IPTABLES


@pytest.mark.parametrize("extra,want", [
    ("", ("nft", "not probed (no privileges)")),
    ("iptables:\n  flavour: legacy\n", ("legacy", "iptables.flavour in the policy")),
])
def test_only_the_iptables_kind_has_a_flavour(tmp_path, extra, want):
    assert NFT.flavour(policy_for(tmp_path, "nft", extra), None) is None
    assert IPTABLES.flavour(policy_for(tmp_path, "iptables", extra), None) == want


def test_the_auto_transport_is_nfqueue_for_iptables_and_unprobed_nft_logs(tmp_path):
    """Without privileges the nft kind cannot probe the queue expression: NFLOG, as before."""
    for backend, want in (("nft", ("nflog", "auto: not probed (no privileges)")),
                          ("iptables", ("nfqueue", "auto: the iptables backend uses xt NFQUEUE"))):
        sampling, reason = choose_sampling(policy_for(tmp_path, backend), None, {})
        assert (sampling.transport, reason) == want


def test_only_iptables_turns_closed_ports_off_and_only_under_ipvs(tmp_path):
    on = "closed_ports:\n  enabled: true\n"
    assert not NFT.closed_ports_off(policy_for(tmp_path, "nft", on))
    assert IPTABLES.closed_ports_off(policy_for(tmp_path, "iptables", on)) == probe.ipvs_loaded()
    assert not IPTABLES.closed_ports_off(policy_for(tmp_path, "iptables", "closed_ports:\n  enabled: false\n"))


@pytest.mark.parametrize("backend", ["nft", "iptables"])
def test_a_kind_reads_foreign_chains_exactly_when_its_render_depends_on_them(tmp_path, backend):
    """The watcher skips the probe of foreign base chains (a listing of every chain) where it
    changes nothing: the render with a foreign chain on our hook differs only for nft."""
    policy = policy_for(tmp_path, backend, sampler="false")
    kind, flavour = kind_for(policy), kind_for(policy).flavour(policy, None)

    def render(foreign):
        ruleset = build_ruleset(policy, ("eth0",), probe.choose_priorities(foreign), None, None)
        backend_ = kind.backend(ruleset, flavour)[0]
        return backend_.transaction(backend_.read_live(None)).json()

    assert (render([]) != render([FOREIGN])) == kind.reads_foreign
    assert kind.reads_foreign == (backend == "nft")


@pytest.mark.parametrize("backend,extra,installed,name,reason", [
    ("nft", "", Installed(NFT), "nft", "the policy says backend: nft"),
    ("iptables", "iptables:\n  flavour: legacy\n", Installed(IPTABLES, "legacy"), "iptables-legacy",
     "iptables.flavour in the policy"),
])
def test_the_plans_backend_is_installed_as_its_kind_and_flavour(tmp_path, backend, extra, installed, name, reason):
    """What remove_other_backends keeps after an apply: this backend, and no other flavour or kind."""
    plan = make_plan(policy_for(tmp_path, backend, extra, sampler="false"), None, interfaces=("eth0",))
    assert (plan.backend.installed, plan.backend.name, plan.backend_reason) == (installed, name, reason)
    assert label(installed) == name
    others = {Installed(NFT), Installed(IPTABLES, "nft"), Installed(IPTABLES, "legacy")} - {installed}
    assert len(others) == 2


def test_removals_read_as_they_always_did():
    """``uninstall --json`` and ``apply``'s "also removed" print these."""
    removed = [Removed(Installed(NFT)), Removed(Installed(IPTABLES, "nft"), 4), Removed(Installed(IPTABLES, "legacy"), 6),
               Removed(None)]
    assert describe(removed) == ["nft", "iptables-nft v4", "iptables-legacy v6", "ipsets"]


@pytest.mark.parametrize("backend", ["nft", "iptables"])
def test_the_daemon_names_the_policys_kind_before_anything_is_installed(tmp_path, backend):
    """Status and metrics, before the watcher's first check: the kind the policy asks for."""
    from guard.backend.nft import Nft
    from guard.daemon.supervisor import Daemon, RunOptions
    from guard.watch.watcher import Watcher

    daemon = Daemon(RunOptions(config=str(tmp_path / "p.yaml"), last_good=str(tmp_path / "last-good.yaml")), env={})
    daemon.watcher = Watcher(policy_for(tmp_path, backend, sampler="false"), Nft())
    assert daemon.status_text().split("; ")[0] == backend
    assert daemon.snapshot()["backend"] == backend
