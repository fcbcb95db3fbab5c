"""Files the daemon trusts or writes as root, opened so that nobody else can steer it.

* The policy controls the node's firewall: a policy file someone other than root could have
  written is refused (``check_config_file``), as sshd refuses a group-writable authorized_keys.
* Logs, pcaps and state are written as root into directories other software can often list:
  ``open_private`` only writes under the configured directories, never follows a symlink
  (O_NOFOLLOW on the file, no symlinks in its directories), refuses hard links, FIFOs and
  devices, and leaves files 0640 and directories 0750 whatever the umask.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import IO, Iterable

from .errors import EnvironmentProblem, PolicyError

FILE_MODE = 0o640
DIR_MODE = 0o750
# "w" truncates only after the checks (O_TRUNC would empty someone else's file before we look)
_FLAGS = {"r": os.O_RDONLY, "w": os.O_WRONLY | os.O_CREAT, "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND}


class UnsafePathError(EnvironmentProblem):
    """A file the daemon was to write is not safe to write as root: one line, exit 2."""


def _who(st: os.stat_result) -> str | None:
    if st.st_uid != 0:
        return f"owned by uid {st.st_uid}, not root"
    if st.st_mode & 0o022:
        return f"group- or world-writable (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def check_config_file(path: str | Path) -> Path:
    """Refuse a policy file (after symlinks, e.g. a ConfigMap's ..data) that is not root's alone.

    The file and the directory holding it must be owned by root and not group/world-writable.
    Returns the resolved path; raises PolicyError (``FILE: refusing ...``, exit 2).
    """
    path = Path(path)
    try:
        real = path.resolve(strict=True)
        st = os.stat(real)
        parent = os.stat(real.parent)
    except OSError as exc:
        raise PolicyError(str(path), None, "", exc.strerror or str(exc)) from None
    if not stat.S_ISREG(st.st_mode):
        raise PolicyError(str(path), None, "", "refusing: not a regular file")
    for what, s in ((real, st), (real.parent, parent)):
        problem = _who(s)
        if problem:
            raise PolicyError(str(path), None, "", f"refusing: {what} is {problem}; this file controls the "
                                                   "firewall, so only root may be able to change it")
    return real


def _root_of(directory: Path, roots: list[Path]) -> Path | None:
    """The allowed directory that ``directory`` is, or is below."""
    return next((r for r in roots if directory == r or r in directory.parents), None)


def _make_dirs(directory: Path) -> None:
    missing = []
    d = directory
    while not d.exists():
        missing.append(d)
        d = d.parent
    for d in reversed(missing):
        os.mkdir(d, DIR_MODE)
        os.chmod(d, DIR_MODE)  # the umask may have taken bits away


def open_private(path: str | Path, mode: str = "a", *, allowed_dirs: Iterable[str | Path]) -> IO:
    """Open ``path`` for the daemon's own data: ``mode`` is r, w or a, plus b for binary.

    ``allowed_dirs``: where the daemon may write (the policy's log/state directories, e.g.
    /var/log/nodeguard, /var/lib/nodeguard, /run/nodeguard). Missing directories below one
    of them are created 0750. Raises UnsafePathError.
    """
    path = Path(os.path.abspath(path))
    roots = [Path(os.path.abspath(r)) for r in allowed_dirs]
    base = mode.replace("b", "")
    if base not in _FLAGS:
        raise ValueError(f"mode must be r, w or a (optionally with b), not {mode!r}")
    root = _root_of(path.parent, roots)
    if root is None:
        raise UnsafePathError(f"{path}: refusing to write outside {', '.join(map(str, roots))}")
    if base != "r":
        if root.exists() and root.resolve() != root:
            raise UnsafePathError(f"{path}: refusing: {root} is a symlink")
        _make_dirs(path.parent)
    if path.parent.resolve() != path.parent:
        raise UnsafePathError(f"{path}: refusing: a directory on the way is a symlink ({path.parent.resolve()})")
    try:
        fd = os.open(path, _FLAGS[base] | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, FILE_MODE)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symlink
            raise UnsafePathError(f"{path}: refusing to follow a symlink") from None
        raise UnsafePathError(f"{path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePathError(f"{path}: refusing: not a regular file")
        if st.st_nlink != 1:
            raise UnsafePathError(f"{path}: refusing: it has {st.st_nlink} hard links (it could be another file)")
        if base != "r":
            if st.st_uid != os.geteuid():
                raise UnsafePathError(f"{path}: refusing: owned by uid {st.st_uid}")
            if stat.S_IMODE(st.st_mode) != FILE_MODE:
                os.fchmod(fd, FILE_MODE)
            if base == "w":
                os.ftruncate(fd, 0)
        os.set_blocking(fd, True)
        return os.fdopen(fd, mode)
    except BaseException:
        os.close(fd)
        raise
