"""``failsafe:``: source-and-port pairs never limited, banned or counted (issue 20).

What must hold: bad entries are one line naming file, line and field; each entry's rule comes right
after the interface check of every base chain (in filter-prerouting: before the ban check), in both backends;
``check`` warns when the node serves SSH or the kubelet without one; and, with real packets, a client
on a failsafe port keeps every connection through a flood from its own address that gets that address
banned, while the same address's other ports are banned.
"""

from __future__ import annotations

import json
import sys

import netlab
import pytest
from guard.errors import PolicyError
from guard.failsafe_check import warning
from guard.model.build import STATELESS_CHAIN, build_ruleset
from guard.model.matches import DstPorts, InterfaceNotIn, Proto, SourceInSet
from guard.model.plans import Priorities
from guard.model.verdicts import RETURN
from guard.policy.load import parse_policy
from guard.render import ipt as render_ipt
from guard.render import nft as render_nft
from guard.status import failsafe_entries, failsafe_lines
from netlab import ATTACKER4, HELPERS, LEGIT4, VICTIM4

FAILSAFE = """failsafe:
  - cidrs: [192.0.2.0/24, 192.0.2.128/25, "2001:db8::/32"]
    ports: [22, "6000-6010"]
  - cidrs: [198.51.100.7/32]
    protocol: udp
    ports: [53]
"""


@pytest.mark.parametrize("text,expected", [
    ("failsafe:\n  - cidrs: [10.0.0.0/8]\n", "f.yaml:2: failsafe[0].ports: required key is missing"),
    ("failsafe:\n  - ports: [22]\n", "f.yaml:2: failsafe[0].cidrs: required key is missing"),
    ("failsafe:\n  - cidrs: []\n    ports: [22]\n", "f.yaml:2: failsafe[0].cidrs: Tuple should have at least 1 item"),
    ("failsafe:\n  - cidrs: [10.0.0.0/8]\n    ports: []\n", "f.yaml:3: failsafe[0].ports: list at least one port"),
    ("failsafe:\n  - cidrs: [0.0.0.0/0]\n    ports: [22]\n",
     "f.yaml:2: failsafe[0].cidrs[0]: '0.0.0.0/0' would allow every source"),
    ("failsafe:\n  - cidrs: [0.0.0.0/1, 128.0.0.0/1]\n    ports: [\"1-65535\"]\n",
     "f.yaml:2: failsafe[0].cidrs[0]: '0.0.0.0/1' is broader than /8: sources that never meet a limit must be "
     "your own networks, not a share of the Internet"),
    ("failsafe:\n  - cidrs: [2001:db8::/31]\n    ports: [22]\n", "f.yaml:2: failsafe[0].cidrs[0]: '2001:db8::/31' "
     "is broader than /32"),
    ("failsafe:\n  - cidrs: [10.0.0.1/8]\n    ports: [22]\n",
     "f.yaml:2: failsafe[0].cidrs[0]: '10.0.0.1/8' is not a CIDR"),
    ("failsafe:\n  - cidrs: [10.0.0.0/8]\n    ports: [\"30-20\"]\n",
     "f.yaml:3: failsafe[0].ports: '30-20' is not within 1-65535"),
    ("failsafe:\n  - cidrs: [10.0.0.0/8]\n    ports: [70000]\n", "f.yaml:3: failsafe[0].ports: 70000 is not within"),
    ("failsafe:\n  - cidrs: [10.0.0.0/8]\n    protocol: icmp\n    ports: [22]\n",
     "f.yaml:3: failsafe[0].protocol: Input should be 'tcp' or 'udp'"),
    ("failsafe:\n  - cidrs: [10.0.0.0/8]\n    ports: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, \"20-30\"]\n",
     "f.yaml:3: failsafe[0].ports: 16 port slots (a range takes two); at most 15"),
    ("failsafe:\n  - cidrs: [10.0.0.0/8]\n    ports: [22]\n    typo: 1\n", "f.yaml:4: failsafe[0].typo: unknown key"),
])
def test_a_bad_failsafe_entry_is_one_line_naming_file_line_and_field(text, expected):
    with pytest.raises(PolicyError) as exc:
        parse_policy(text, "f.yaml")
    assert str(exc.value).startswith(expected) and "\n" not in str(exc.value), str(exc.value)


def _ruleset(text: str = FAILSAFE):
    return build_ruleset(parse_policy(f"interfaces: [eth0]\n{text}", "p.yaml"), ("eth0",), Priorities())


def test_each_entry_is_the_first_rule_of_every_base_chain_after_the_interface_check():
    rs = _ruleset()
    sets = {s.name: s for s in rs.sets}
    expected = [
        (Proto("tcp"), DstPorts("tcp", (22, (6000, 6010))), SourceInSet("failsafe-0-v4", 4)),
        (Proto("tcp"), DstPorts("tcp", (22, (6000, 6010))), SourceInSet("failsafe-0-v6", 6)),
        (Proto("udp"), DstPorts("udp", (53,)), SourceInSet("failsafe-1-v4", 4)),  # no v6 prefix: no v6 rule
    ]
    bases = [c for c in rs.chains if c.stage]
    assert {c.stage for c in bases} >= {"stateless", "stateful", "closed"}
    for chain in bases:
        assert isinstance(chain.rules[0].matches[0], InterfaceNotIn), chain.name
        got = chain.rules[1:4]
        assert [r.matches for r in got] == expected and {r.verdict for r in got} == {RETURN}, chain.name
    # nested prefixes merged, as the allowlist's are (nft interval sets refuse overlaps)
    assert [str(n) for n in sets["failsafe-0-v4"].elements] == ["192.0.2.0/24"]
    assert [str(n) for n in sets["failsafe-0-v6"].elements] == ["2001:db8::/32"]
    assert "failsafe-1-v6" not in sets


def test_no_failsafe_renders_no_failsafe_object():
    rs = _ruleset("")
    assert not [s for s in rs.sets if s.base.startswith("failsafe")]
    assert "failsafe" not in repr(render_nft.render_nft(rs)).lower()


def test_both_backends_render_the_ports_and_ranges_before_the_lookup():
    rs = _ruleset()
    nft = [r["expr"] for r in render_nft.render_nft(rs).rules
           if r["chain"] == STATELESS_CHAIN and "failsafe 0 v4" in r["comment"]]
    assert nft == [[
        {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}},
        {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                   "right": {"set": [22, {"range": [6000, 6010]}]}}},
        {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "@failsafe-0-v4"}},
        {"counter": {"packets": 0, "bytes": 0}}, {"return": None}]]
    v6 = [r.spec for r in render_ipt.render_ipt(rs, 6).tables["raw"].rules
          if r.chain == "NODEGUARD-PRE-UPLINK" and "failsafe 0 v6" in r.spec]
    assert len(v6) == 1 and v6[0].endswith(
        "-p tcp -m multiport --dports 22,6000:6010 -m set --match-set NODEGUARD-FAILSAFE-0-V6 src -j RETURN"), v6
    sets = {s.name: s for s in render_ipt.ipsets(rs)}
    assert sets["NODEGUARD-FAILSAFE-1-V4"].members == ("198.51.100.7/32",)


def test_status_shows_each_entry_per_ip_version():
    entries = failsafe_entries(_ruleset())
    assert entries == [{"protocol": "tcp", "cidrs": ["192.0.2.0/24"], "ports": [22, "6000-6010"]},
                       {"protocol": "tcp", "cidrs": ["2001:db8::/32"], "ports": [22, "6000-6010"]},
                       {"protocol": "udp", "cidrs": ["198.51.100.7/32"], "ports": [53]}]
    assert failsafe_lines(entries)[0] == \
        "failsafe (never limited, banned or counted): tcp 22, 6000-6010 from 192.0.2.0/24"
    assert failsafe_lines(failsafe_entries(_ruleset(""))) == ["failsafe: none"]


def test_check_warns_of_an_entry_that_exempts_most_ports_for_a_broad_prefix():
    text = ("failsafe:\n  - cidrs: [10.0.0.0/8, 192.0.2.0/24]\n    ports: [\"1-2000\"]\n"
            "  - cidrs: [10.0.0.0/8]\n    ports: [\"1-1024\", 22]\n"  # 1024 ports: not more
            "  - cidrs: [192.0.2.0/24]\n    ports: [\"1-65535\"]\n")  # a site's /24: narrow
    assert warning(parse_policy(text, "p.yaml"), {22}) == ("warning: failsafe[0] exempts 2000 tcp ports for "
                                                           "10.0.0.0/8: nothing limits those sources there; "
                                                           "name the management ports alone")


@pytest.mark.parametrize("text,listening,expected", [
    ("", {22, 10250, 80}, "warning: this node serves SSH (22/tcp), kubelet (10250/tcp) and no failsafe entry "
                          "covers them"),
    ("", {80}, None),  # serves neither
    ("failsafe:\n  - cidrs: [10.0.0.0/8]\n    ports: [\"20-30\"]\n", {22, 10250},
     "warning: this node serves kubelet (10250/tcp) and no failsafe entry covers it"),
    ("failsafe:\n  - cidrs: [10.0.0.0/8]\n    protocol: udp\n    ports: [22, 10250]\n", {22},
     "warning: this node serves SSH (22/tcp) and no failsafe entry covers it"),  # udp covers no tcp port
    ("failsafe:\n  - cidrs: [10.0.0.0/8]\n    ports: [22]\n  - cidrs: [fd00::/8]\n    ports: [10250]\n",
     {22, 10250}, None),
])
def test_check_warns_in_one_line_when_ssh_or_the_kubelet_has_no_failsafe(text, listening, expected):
    got = warning(parse_policy(text or "{}", "p.yaml"), listening)
    if expected is None:
        assert got is None, got
    else:
        assert got.startswith(expected) and "\n" not in got, got


# --- real packets ------------------------------------------------------------------------------
PORT, FAILSAFE_PORT = 8080, 2222
AFTER_S = 2  # escalate.after_s: shorter than the default 3 s (one second less flood)


def test_a_failsafe_client_keeps_every_connection_through_a_flood_that_bans_its_address(lab, write_policy, request):
    """A SYN flood from ATTACKER4 at PORT gets ATTACKER4 banned after after_s; ATTACKER4's connections to its
    failsafe port, made every 0.1 s from before the ban to after it, and 3 more once the ban is seen, all succeed."""
    victim, attacker = lab
    p = write_policy(f"failsafe:\n  - cidrs: [{ATTACKER4}/32]\n    ports: [{FAILSAFE_PORT}]\n"
                     f"escalate:\n  after_s: {AFTER_S}\n")
    with netlab.tcp_server(victim, VICTIM4, PORT), netlab.tcp_server(victim, VICTIM4, FAILSAFE_PORT):
        victim.nodeguard("apply", "-c", p)
        flood = netlab.flood(attacker, AFTER_S + 1, "-S", "-p", str(PORT), "-a", ATTACKER4, VICTIM4)
        request.addfinalizer(lambda: (flood.kill(), flood.wait()))
        clients = attacker.popen([sys.executable, str(HELPERS / "tcp_clients.py"), ATTACKER4, VICTIM4,
                                  str(FAILSAFE_PORT), "30", "--interval", "0.1"])
        failsafe = json.loads(clients.communicate(timeout=120)[0].splitlines()[0])  # 3 s per failed connect
        flood.wait(timeout=10)
        banned = [b["source"] for b in json.loads(victim.nodeguard("bans", "--json", "-c", p).stdout)["bans"]]
        other_port = netlab.tcp_clients(attacker, ATTACKER4, VICTIM4, PORT, 1, "--timeout", "0.5")
        after = netlab.tcp_clients(attacker, ATTACKER4, VICTIM4, FAILSAFE_PORT, 3)
        legit = netlab.tcp_clients(attacker, LEGIT4, VICTIM4, PORT, 2)
    c = victim.counters()
    passed_ban = c.get(f"{STATELESS_CHAIN}: failsafe 0 v4", 0)
    print(f"\nfailsafe client during the flood {failsafe}, after {after}; banned {banned}; other port {other_port}; "
          f"failsafe packets past the ban check {passed_ban}, dropped as banned "
          f"{c[f'{STATELESS_CHAIN}: banned v4 source']}")
    assert banned == [ATTACKER4], "the flood from the failsafe address was banned"
    assert failsafe == {"ok": 30, "failed": 0} and after == {"ok": 3, "failed": 0}
    assert other_port == {"ok": 0, "failed": 1}, "the same address's other port is banned"
    assert legit == {"ok": 2, "failed": 0}
    assert passed_ban > 0
