"""Run a load in a throwaway network namespace and read back what the kernel made of it.

``nodeguard check`` uses it to have the kernel validate the render, and to print nft's
own text of it, without touching the host's ruleset.
"""

from __future__ import annotations

import ctypes
import os
from typing import Callable

from .errors import BackendError

CLONE_NEWNET = 0x40000000


def in_scratch_netns(load: Callable[[], str]) -> str:
    """``load()`` run in a child in a private netns; returns its text.

    Raises PermissionError where namespaces cannot be created (not root), and
    BackendError when the kernel (or a tool) rejected the load.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: new netns, load, report, exit
        os.close(read_fd)
        try:
            if ctypes.CDLL(None, use_errno=True).unshare(CLONE_NEWNET) != 0:
                raise PermissionError(ctypes.get_errno(), "unshare(CLONE_NEWNET) failed")
            payload = "ok\n" + load()
        except PermissionError as exc:
            payload = f"perm\n{exc}"
        except Exception as exc:  # reported to the parent, which raises it
            payload = f"error\n{exc}"
        os.write(write_fd, payload.encode())
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as f:
        kind, _, body = f.read().partition("\n")
    os.waitpid(pid, 0)
    if kind == "perm":
        raise PermissionError(body)
    if kind != "ok":
        raise BackendError("check", body)
    return body
