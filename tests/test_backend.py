"""The plan's backend (guard/backend/base.py): both implementations do everything the protocol
names, the plan decides the backend once, and an nft plan loads no iptables module."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from guard.backend.base import Backend
from guard.backend.ipt_backend import IptBackend
from guard.backend.nft_backend import NftBackend

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL = sorted(n for n, v in vars(Backend).items() if callable(v) and not n.startswith("_"))


@pytest.mark.parametrize("impl", [NftBackend, IptBackend])
def test_every_backend_does_what_the_protocol_names(impl):
    missing = [n for n in [*PROTOCOL, "name", "flavour", "polled"] if not hasattr(impl, n) and n not in impl.__annotations__]
    assert not missing, f"{impl.__name__} lacks {missing}"


PROBE = """
import sys
from guard.apply import make_plan, read_state, transaction
from guard.policy.load import parse_policy
policy = parse_policy("backend: {backend}\\nsampler:\\n  enabled: false\\nsyn:\\n  synproxy:\\n    ports: []\\n"
                      "watcher:\\n  state_file: {state}\\n", "p.yaml")
plan = make_plan(policy, None, interfaces=("eth0",), flavour={flavour})
transaction(plan, read_state(plan, None))
print(plan.backend.name, plan.flavour, type(plan.backend).__name__)
print(sorted(m for m in sys.modules if m in ("guard.backend.ipt", "guard.sync.ipt", "guard.backend.ipt_backend",
                                             "guard.render.ipt", "guard.render.ipt_matches")))
"""


@pytest.mark.parametrize("backend,flavour,want", [
    ("nft", None, "nft None NftBackend\n[]\n"),
    ("iptables", ("legacy", "given"), "iptables-legacy legacy IptBackend\n"
     "['guard.backend.ipt', 'guard.backend.ipt_backend', 'guard.render.ipt', 'guard.render.ipt_matches', "
     "'guard.sync.ipt']\n"),
])
def test_the_plan_holds_its_backend_and_nft_loads_no_iptables_module(tmp_path, backend, flavour, want):
    code = PROBE.format(backend=backend, flavour=flavour, state=tmp_path / "watch.json")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert res.stdout == want


def test_an_ipset_transaction_names_the_sets_it_creates_not_those_it_swaps_in():
    """IptBackend.check runs in a scratch namespace exactly when the transaction creates sets."""
    from guard.backend.ipset import LiveIpset
    from guard.render.ipt import Ipset
    from guard.sync.ipt import ipset_scripts

    new = Ipset("NODEGUARD-NEW-V4", "hash:net", "inet", 16, members=("10.0.0.0/8",))
    changed = Ipset("NODEGUARD-ALLOW-V4", "hash:net", "inet", 16, members=("10.0.0.0/8",))
    kept = Ipset("NODEGUARD-KEPT-V4", "hash:ip", "inet", 16, timeout=60)
    live = {s.name: LiveIpset(s.name, s.type, {"family": "inet", "maxelem": "16", **extra}, 0)
            for s, extra in ((changed, {}), (kept, {"timeout": "60"}))}
    prepare, _cleanup, creates = ipset_scripts([new, changed, kept], live, {changed.name: ["192.0.2.0/24"]})
    assert creates == ("NODEGUARD-NEW-V4",)
    assert any(ln.startswith("swap ") and ln.endswith(" NODEGUARD-ALLOW-V4") for ln in prepare.splitlines())
    assert ipset_scripts([changed, kept], live, {changed.name: ["10.0.0.0/8"]})[2] == ()


def test_a_live_ipset_is_kept_only_within_the_buckets_the_packet_path_needs():
    """Fewer buckets than rendered: the packet path cannot fill the set; four times as many or more (the
    earlier quarter-of-size rule): a full timed set collects garbage on every refused add. Both are
    swapped for a new set; a set that a restore grew (twice the buckets) is kept."""
    from guard.backend.ipset import LiveIpset
    from guard.model.ruleset import AddrSet
    from guard.render.ipt import Ipset, packet_hashsize

    meter = AddrSet("trusted-v4", 4, "trusted", size=65536, timeout_s=60)
    want = Ipset("NODEGUARD-SYN-SRC-V4", "hash:ip", "inet", 65536, 63, hashsize=packet_hashsize(meter))
    assert want.hashsize == 4096

    def live(hashsize: int) -> LiveIpset:
        return LiveIpset(want.name, "hash:ip", {"family": "inet", "maxelem": "65536", "timeout": "63",
                                                "hashsize": str(hashsize)}, 0)

    assert [live(n).matches(want) for n in (1024, 2048, 4096, 8192, 16384, 65536)] == \
        [False, False, True, True, False, False]
