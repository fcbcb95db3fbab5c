"""Kernel names of stateful objects (guard/model/names.py): ``base_of`` reads back exactly what
``digested`` wrote, and no other name (a static set's, a foreign one, garbage)."""

from __future__ import annotations

from pathlib import Path

import pytest
from guard.model.build import build_ruleset
from guard.model.names import base_of, digest, digested
from guard.model.plans import Priorities
from guard.policy.load import parse_policy

DEFAULT = Path(__file__).resolve().parent.parent / "rules" / "default.yaml"


@pytest.mark.parametrize("base", ["syn-src-v4", "banned-v6", "x", "a-b-c-d", "over-abcdef"])
def test_a_digested_name_decodes_to_its_base(base):
    for parts in ((), (1,), ("rate", 2.5, None)):
        assert base_of(digested(base, digest(*parts))) == base


@pytest.mark.parametrize("name", ["allow-v4", "failsafe-0-v6", "synproxy-ports-v4", "", "-", "-abcdef",
                                  "x-ABCDEF", "x-abcde", "x-abcdefa", "x_abcdef", "x-abcdeg", "x-abc\ndef",
                                  "\x1b[31m-abcdef\n"])
def test_a_name_digested_did_not_make_is_not_ours(name):
    assert base_of(name) is None


def test_every_object_of_a_built_ruleset_round_trips():
    """What the model names: a stateful set's or limit's name decodes to its base, a static set's to nothing."""
    text = DEFAULT.read_text().replace("interfaces: auto", "interfaces: [eth0]")
    text = text.replace("cidrs: []", "cidrs: [192.0.2.0/24]")  # an allowlist: static sets too
    policy = parse_policy(text, str(DEFAULT))
    rs = build_ruleset(policy, ("eth0",), Priorities())
    stateful = [s for s in rs.sets if not s.static]
    assert stateful and rs.limits and any(s.static for s in rs.sets)
    for obj in (*stateful, *rs.limits):
        assert base_of(obj.name) == obj.base, obj.name
    for s in rs.sets:
        if s.static:
            assert base_of(s.name) is None, s.name
