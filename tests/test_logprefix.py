"""The NFLOG prefix codec (guard/logprefix.py): what a rule writes is read back from the packet as
the group and mode that condemned it; any other prefix is not ours and never raises."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guard import logprefix
from guard.model.matches import Log
from guard.nflog import parse_messages


@pytest.mark.parametrize("group", ["syn-flood", "icmp-flood", "limit-dns", "x", "ng:", "ngm:odd"])
@pytest.mark.parametrize("mode", ["enforce", "monitor"])
def test_a_prefix_decodes_to_the_group_and_mode_it_was_encoded_from(group, mode):
    assert logprefix.decode(logprefix.encode(group, mode)) == (group, mode)


@pytest.mark.parametrize("prefix", ["", "ng:", "ngm:", "ng", "NG:syn-flood", "nodeguard:abc", "xng:syn-flood",
                                    " ng:syn-flood", "\x1b[31m", "ng\0:x", "\ufffd\ufffd"])
def test_a_foreign_or_garbage_prefix_is_not_ours(prefix):
    assert logprefix.decode(prefix) is None


@settings(max_examples=2000, deadline=None)
@given(st.text(max_size=70))
def test_any_text_decodes_to_ours_or_nothing_without_raising(text):
    got = logprefix.decode(text)
    assert got is None or logprefix.encode(*got) == text


def _packet(prefix: bytes) -> bytes:
    attr = lambda t, p: struct.pack("=HH", 4 + len(p), t) + p + b"\0" * ((4 - len(p) % 4) % 4)  # noqa: E731
    body = struct.pack("=BBH", 2, 0, 0) + attr(10, prefix) + attr(9, b"\x45" + b"\0" * 19)
    return struct.pack("=IHHII", 16 + len(body), 0x400, 0, 0, 0) + body


@pytest.mark.parametrize("monitor", [False, True])
def test_a_sample_carries_the_group_and_mode_of_the_rule_that_logged_it(monitor):
    """The prefix a Log match renders (nft adds a space), as the kernel hands it back NUL-terminated."""
    log = Log("syn-flood", 5, 128, monitor=monitor)
    (sample,) = parse_messages(_packet(f"{log.prefix} ".encode() + b"\0"), 0.0)
    assert (sample.group, sample.mode) == ("syn-flood", "monitor" if monitor else "enforce")


def test_a_sample_with_a_foreign_prefix_has_no_group():
    (sample,) = parse_messages(_packet(b"someone else's\0"), 0.0)
    assert (sample.group, sample.mode) == ("", "enforce")
