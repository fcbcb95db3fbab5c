"""Load a transaction into a throwaway network namespace and read back nft's own text.

``nodeguard check`` uses it to print exactly what the kernel would hold, and to have
the kernel validate it, without touching the host's ruleset.
"""

from __future__ import annotations

import ctypes
import os

from .backend.nft import Nft
from .errors import BackendError
from .model import TABLE
from .render.nft import FAMILY

CLONE_NEWNET = 0x40000000


def kernel_text(transaction: dict) -> str:
    """nft's text for our table after loading ``transaction`` in a private netns.

    Raises PermissionError where namespaces cannot be created (not root), and
    BackendError (from the child) when the kernel rejects the transaction.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: new netns, load, print, exit
        os.close(read_fd)
        status = 0
        try:
            if ctypes.CDLL(None, use_errno=True).unshare(CLONE_NEWNET) != 0:
                raise PermissionError(ctypes.get_errno(), "unshare(CLONE_NEWNET) failed")
            nft = Nft()
            nft.run(transaction, what="check")
            payload = "ok\n" + nft.text(f"table {FAMILY} {TABLE}")
        except PermissionError as exc:
            payload, status = f"perm\n{exc}", 0
        except Exception as exc:  # reported to the parent, which raises it
            payload = f"error\n{exc}"
        os.write(write_fd, payload.encode())
        os._exit(status)
    os.close(write_fd)
    with os.fdopen(read_fd) as f:
        kind, _, body = f.read().partition("\n")
    os.waitpid(pid, 0)
    if kind == "perm":
        raise PermissionError(body)
    if kind != "ok":
        raise BackendError("check", body)
    return body
