"""libnftables' error text is read in one place (backend/nft.py) and becomes the type callers catch."""

import pytest

from guard.backend.nft import refusal
from guard.errors import BackendError, NotFound, SetFull

# as nft 1.0.6 printed them in a network namespace (a set of size 1 given a second element, a delete of
# an element that is not there, a listing of a set that is not there)
FULL = "Error: Could not process rule: Too many open files in system\nadd element inet t s { 2.2.2.2 }\n"
ABSENT = "Error: Could not process rule: No such file or directory\ndelete element inet t s { 3.3.3.3 }\n"
NO_SET = "Error: No such file or directory\nlist set inet t nope\n"
OTHER = "Error: syntax error, unexpected junk\nlist junk\n"


@pytest.mark.parametrize(("err", "kind"), [(FULL, SetFull), (ABSENT, NotFound), (NO_SET, NotFound),
                                           (OTHER, BackendError)])
def test_a_refusal_is_typed_and_keeps_libnftables_first_line(err, kind):
    exc = refusal("ban", err)
    assert type(exc) is kind and isinstance(exc, BackendError) and exc.kind == "ban"
    assert str(exc) == "ban: " + err.splitlines()[0]
