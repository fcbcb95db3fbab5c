"""Where the closed-port rules go on each backend, and where they cannot go (pure: the render)."""

from __future__ import annotations

import pytest

from guard import probe
from guard.apply import make_plan, read_state, transaction
from guard.placement import PLACEMENTS
from guard.policy.load import parse_policy


def _text(backend: str) -> tuple[str, tuple[str, ...]]:
    policy = parse_policy(f"backend: {backend}\ninterfaces: [eth0]\nsampler: {{enabled: false}}\n", "test.yaml")
    plan = make_plan(policy, None, flavour=None if backend == "nft" else ("nft", "given"))
    tx = transaction(plan, read_state(plan, None))
    return (str(tx.json()) if backend == "nft" else tx.text()), plan.priorities.notes


def test_nft_checks_closed_ports_on_input_after_ipvs_and_nat(monkeypatch):
    """kube-proxy's IPVS mode takes a Service's packets on input at 99 (they have no socket on the node):
    the closed-port chain must come after it, and after nat (100), on nft whether IPVS is loaded or not."""
    assert PLACEMENTS["closed"].nft_hook == "input" and PLACEMENTS["closed"].default_priority > 100
    for loaded in (False, True):
        monkeypatch.setattr(probe, "ipvs_loaded", lambda loaded=loaded: loaded)
        text, notes = _text("nft")
        assert "'name': 'closed-ports', 'type': 'filter', 'hook': 'input', 'prio': 200" in text, text[:2000]
        assert "udp to a closed port over the rate" in text and not notes


@pytest.mark.parametrize("loaded", [False, True])
def test_iptables_leaves_closed_ports_out_where_ipvs_is_loaded_and_says_so(monkeypatch, loaded):
    """iptables has no table after IPVS's input hook: there, a closed-port rule would drop Services."""
    monkeypatch.setattr(probe, "ipvs_loaded", lambda: loaded)
    text, notes = _text("iptables")
    assert ("udp to a closed port over the rate" in text) is not loaded
    assert any("closed_ports is off: IPVS is loaded" in n for n in notes) is loaded
