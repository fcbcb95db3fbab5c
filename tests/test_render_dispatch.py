"""Every model type has its iptables and nft rendering, and a type without one is refused by name."""

from dataclasses import dataclass
from typing import get_args

import pytest

from guard.model.matches import BanSource, InterfaceNotIn, Match, RememberSourcePort
from guard.model.ruleset import SET_KINDS
from guard.model.verdicts import Continue, Verdict
from guard.render import ipt, ipt_matches, nft


@dataclass(frozen=True)
class Unheard:
    version: int = 4


def test_every_model_type_is_registered_with_every_iptables_dispatcher():
    for t in get_args(Match):
        for fn in (ipt_matches.implied_proto, ipt_matches.carried_target, ipt_matches.families):
            assert fn.dispatch(t) is not fn.dispatch(object), (fn.__name__, t.__name__)
        if t not in (InterfaceNotIn, BanSource, RememberSourcePort):  # rendered by render_ipt/_rule themselves
            assert ipt_matches.match.dispatch(t) is not ipt_matches.match.dispatch(object), t.__name__
    for t in get_args(Verdict):
        assert ipt.verdict.dispatch(t) is not ipt.verdict.dispatch(object), t.__name__


def test_every_verdict_but_continue_is_registered_with_the_nft_dispatcher():
    for t in get_args(Verdict):  # a Continue is no statement: render_rule_expr leaves it out
        assert (nft.verdict.dispatch(t) is nft.verdict.dispatch(object)) == (t is Continue), t.__name__


@pytest.mark.parametrize("call", [lambda x: ipt_matches.match(x, None), lambda x: ipt_matches.implied_proto(x, 4),
                                  lambda x: ipt_matches.carried_target(x, None), ipt_matches.families,
                                  lambda x: ipt.verdict(x, {}), nft.verdict])
def test_an_unknown_type_is_a_type_error_naming_it(call):
    with pytest.raises(TypeError, match="Unheard"):
        call(Unheard())


def test_each_renderer_has_a_set_spec_for_exactly_the_model_set_kinds():
    assert set(ipt.IPSETS) == set(SET_KINDS)
    assert set(nft.SET_SPECS) == set(SET_KINDS)
