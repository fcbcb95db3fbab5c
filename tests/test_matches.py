"""Match kinds that share their fields through a base dataclass (model/matches.py) stay distinct
values: renderers dispatch on the kind, and plans compare and hash rules made of them."""

from __future__ import annotations

import dataclasses

import pytest

from guard.model.matches import Assured, BanSource, CtStateNew, FibLocal, OverLimit, UnderLimit, UpdateSource


def test_kinds_with_the_same_fields_are_never_equal():
    ban, update = BanSource("s", 4), UpdateSource("s", 4)
    assert ban == BanSource("s", 4) and hash(ban) == hash(BanSource("s", 4))
    assert ban != update and len({ban, update, BanSource("s", 4)}) == 2
    assert OverLimit("x") != UnderLimit("x") and CtStateNew() != Assured() and FibLocal() == FibLocal()


def test_a_kind_keeps_its_own_name_fields_and_frozenness():
    ban = BanSource("s", 4)
    assert repr(ban) == "BanSource(set='s', version=4)" and repr(Assured()) == "Assured()"
    assert [f.name for f in dataclasses.fields(ban)] == ["set", "version"]
    assert dataclasses.replace(ban, version=6) == BanSource("s", 6)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ban.set = "t"
