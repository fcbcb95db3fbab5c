"""The machine-wide flood lock: one kernel test, bench or demo floods at a time.

Floods and CPU figures of two runs on one machine (two developers, or a bench beside CI)
would distort each other on two cores.
"""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from typing import Iterator

LOCK_PATH = "/tmp/nodeguard-kernel-tests.lock"
LOCK_FD_ENV = "NODEGUARD_LOCK_FD"


def _inherited_lock() -> int | None:
    """A descriptor of LOCK_PATH that the parent holds locked and passed on (a test that already
    holds the lock runs the demo: a second open of the file would wait for itself)."""
    fd = os.environ.get(LOCK_FD_ENV, "")
    try:
        st, want = os.fstat(int(fd)), os.stat(LOCK_PATH)
    except (ValueError, OSError):
        return None
    return int(fd) if (st.st_dev, st.st_ino) == (want.st_dev, want.st_ino) else None


@contextmanager
def machine_lock(say=lambda msg: None) -> Iterator[float]:
    """The machine-wide flood lock the kernel tests take; yields the seconds waited for it.

    With ``NODEGUARD_LOCK_FD`` naming an inherited descriptor of the lock file, that descriptor is
    locked: the same open file as the parent's, so it is the parent's lock (granted at once if the
    parent holds it, waited for like any other if not)."""
    fd = _inherited_lock()
    if fd is not None:
        start = time.monotonic()
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield time.monotonic() - start
        return
    with open(LOCK_PATH, "a") as f:
        start = time.monotonic()
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for {LOCK_PATH}: another flood test or bench is running on this machine")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield time.monotonic() - start
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
