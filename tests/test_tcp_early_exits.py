"""TCP that nothing in ``filter-prerouting`` condemns leaves it before the allowlist, ICMP and bogus-flag
rules (a spoofed ACK or RST flood then costs a rule or two per packet): checked over all 64 values of
the six classic flags, against the rules the exits skip."""

from __future__ import annotations

from itertools import product
from pathlib import Path

import yaml
from guard.apply import make_plan
from guard.model.build import STATELESS_CHAIN
from guard.model.matches import TcpFlags
from guard.model.verdicts import RETURN
from guard.policy.load import parse_policy

ROOT = Path(__file__).parents[1]
FLAGS = ("fin", "syn", "rst", "psh", "ack", "urg")
ALL_VALUES = [frozenset(f for f, on in zip(FLAGS, bits) if on) for bits in product((0, 1), repeat=len(FLAGS))]


def _ruleset(tmp_path: Path, *limits: dict, failsafe: tuple[dict, ...] = ()):
    doc = yaml.safe_load((ROOT / "rules" / "default.yaml").read_text())
    doc["limits"] += limits
    doc["failsafe"] += failsafe
    policy = parse_policy(yaml.safe_dump(doc), "default.yaml")
    policy = policy.model_copy(update={"watcher": policy.watcher.model_copy(update={"state_file": str(tmp_path / "w")})})
    return make_plan(policy, None, interfaces=("eth0",)).ruleset


def _flags_match(rule, value: frozenset[str]) -> bool | None:
    """Whether the rule's flag tests match a packet with these flags; None when it tests no flags."""
    tests = [x for x in rule.matches if isinstance(x, TcpFlags)]
    return all({f for f in t.mask if f in value} == set(t.comp) for t in tests) if tests else None


def _exits(ruleset):
    chain = next(c for c in ruleset.chains if c.name == STATELESS_CHAIN)
    return [r for r in chain.rules if r.verdict == RETURN and _flags_match(r, frozenset()) is not None], chain


def test_the_exits_skip_no_packet_a_later_rule_condemns_or_sends_to_syn_flood(tmp_path):
    ruleset = _ruleset(tmp_path)
    exits, pre = _exits(ruleset)
    # a bare RST leaves right after the interface check, ahead of the ban check (a banned source's RST is
    # conntrack's to judge); ACKs leave after the ban check, before the allowlist lookups
    rst, ack = exits
    assert pre.rules.index(rst) == 1 and rst.label == "tcp bare rst"
    second = pre.rules.index(ack)
    assert [r.group for r in pre.rules[2:second]] == ["banned"] * (second - 2) and second > 2, \
        [r.label for r in pre.rules[:second]]
    skipped = [r for r in pre.rules[pre.rules.index(exits[-1]) + 1:] if _flags_match(r, frozenset()) is not None]
    skipped += next(c for c in ruleset.chains if c.name == "bogus-flags").rules
    assert len(skipped) == 6, [r.label for r in skipped]  # the five bogus patterns and "syn to syn-flood"
    leaving = [v for v in ALL_VALUES if any(_flags_match(r, v) for r in exits)]
    for value in leaving:
        assert not [r.label for r in skipped if _flags_match(r, value)], sorted(value)
    assert {frozenset({"ack"}), frozenset({"ack", "psh"}), frozenset({"rst"}), frozenset({"rst", "ack"})} <= set(leaving)
    assert len(leaving) == 12  # ACK without SYN or FIN (RST, PSH, URG free): 8; a bare RST (PSH, URG free): 4


def test_a_limit_on_all_tcp_keeps_every_packet_on_its_way_to_it(tmp_path):
    exits, _pre = _exits(_ruleset(tmp_path, {"name": "tcp-all", "protocol": "tcp", "per_source": "1000/second"}))
    assert exits == []


def test_with_a_limit_on_all_tcp_the_ban_check_comes_right_after_the_interface_check_and_failsafe_pairs(tmp_path):
    """No bare-RST exit then: nothing may sit between the failsafe pairs and the ban check (a RST of a
    banned source is dropped before conntrack, as everything else of it)."""
    ruleset = _ruleset(tmp_path, {"name": "tcp-all", "protocol": "tcp", "per_source": "1000/second"},
                       failsafe=({"cidrs": ["192.0.2.0/24", "2001:db8::/48"], "protocol": "tcp", "ports": [22]},))
    pre = next(c for c in ruleset.chains if c.name == STATELESS_CHAIN)
    groups = [r.group for r in pre.rules]
    first_ban = groups.index("banned")
    bans = first_ban + groups[first_ban:].index(next(g for g in groups[first_ban:] if g != "banned"))
    assert pre.rules[0].label == "not a protected interface"
    assert first_ban == 3 and all(r.label.startswith("failsafe ") for r in pre.rules[1:first_ban]), \
        [r.label for r in pre.rules[:first_ban]]
    assert bans - first_ban >= 4 and pre.rules[bans].label.startswith("allowlisted"), [r.label for r in pre.rules[:bans + 1]]
