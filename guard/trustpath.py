"""Walking a path from / one descriptor at a time, trusting each step only if no one else could
have changed it (sshd's StrictModes): the rule configfile.py applies to every file it opens.

Each step opens the next name relative to the descriptor of a directory already checked
(O_PATH | O_NOFOLLOW), then checks what it opened (fstat): a symlink or directory swapped after
its check cannot be, since only trusted owners can change a checked directory's entries.
"""

from __future__ import annotations

import errno
import os
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

DIR_MODE = 0o750
MAX_SYMLINKS = 40  # as the kernel's ELOOP limit
_STEP = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


class Untrusted(Exception):
    """``what`` (a real path) is ``problem``: someone other than root could have changed it."""

    def __init__(self, what: Path, problem: str):
        self.what, self.problem = what, problem
        super().__init__(f"{what} is {problem}")


def owner_problem(st: os.stat_result) -> str | None:
    if st.st_uid not in (0, os.geteuid()):
        return f"owned by uid {st.st_uid}, not root"
    return None


def file_problem(st: os.stat_result) -> str | None:
    """Why a file's content cannot be trusted, or None."""
    if st.st_mode & 0o022:
        return owner_problem(st) or f"group- or world-writable (mode {stat.S_IMODE(st.st_mode):04o})"
    return owner_problem(st)


def _dir_problem(st: os.stat_result, holder: bool) -> str | None:
    """A directory on the way may be root's sticky /tmp (others cannot rename what root owns in it,
    and the next step is checked too); the one holding the file may not: names could be planted there."""
    sticky_ok = not holder and st.st_uid == 0 and st.st_mode & stat.S_ISVTX
    if st.st_mode & 0o022 and not sticky_ok:
        return owner_problem(st) or f"group- or world-writable (mode {stat.S_IMODE(st.st_mode):04o})"
    return owner_problem(st)


def _check(fd: int, where: Path, holder: bool = False) -> os.stat_result:
    st = os.fstat(fd)
    problem = owner_problem(st) if stat.S_ISLNK(st.st_mode) else _dir_problem(st, holder)
    if problem:
        raise Untrusted(where, problem)
    return st


def _below(path: Path, top: Path | None) -> bool:
    return top is not None and (path == top or top in path.parents)


def walk(path: Path, *, follow: bool, make_from: Path | None = None, dirs: bool = True,
         follow_last: bool = True) -> tuple[int, str, Path]:
    """(descriptor of the checked directory holding ``path``'s last name, that name, the directory's
    real path). ``follow``: symlinks owned by root are followed, else any symlink is refused.
    ``make_from``: missing directories from it down are created DIR_MODE. ``dirs`` False: only the
    symlinks on the way are checked, not the directories' owners and modes (an output the operator
    put in any directory, created O_NOFOLLOW and claimed by its opener). ``follow_last`` False: the
    last name is returned as it is, a symlink too (its opener refuses it). The caller closes the fd."""
    todo = [p for p in reversed(Path(os.path.abspath(path)).parts) if p != "/"]
    stack = [(os.open("/", _STEP | os.O_DIRECTORY), Path("/"))]
    hops = 0
    try:
        if dirs:
            _check(stack[0][0], Path("/"))
        while todo:
            name = todo.pop()
            dirfd, where = stack[-1]
            if name in (".", ".."):
                if name == ".." and len(stack) > 1:
                    os.close(stack.pop()[0])
                continue
            here = where / name
            if not todo and not follow_last:
                break
            try:
                fd = os.open(name, _STEP, dir_fd=dirfd)
            except FileNotFoundError:
                if not todo:
                    break  # the file itself: the caller creates it or reports it missing
                if not _below(here, make_from):
                    raise
                os.mkdir(name, DIR_MODE, dir_fd=dirfd)
                os.chmod(name, DIR_MODE, dir_fd=dirfd)  # the umask may have taken bits away
                fd = os.open(name, _STEP, dir_fd=dirfd)
            try:
                st = os.fstat(fd)
                if stat.S_ISLNK(st.st_mode):
                    _check(fd, here)
                    if not follow:
                        raise Untrusted(here, "a symlink")
                    hops += 1
                    if hops > MAX_SYMLINKS:
                        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), str(path))
                    target = os.readlink("", dir_fd=fd)
                    if target.startswith("/"):
                        while len(stack) > 1:
                            os.close(stack.pop()[0])
                    todo.extend(p for p in reversed(Path(target).parts) if p != "/")
                    continue
                if not todo:
                    break  # the file itself: open_in opens it by name and checks what it got
                if not stat.S_ISDIR(st.st_mode):
                    raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(here))
                if dirs:
                    _check(fd, here)
                stack.append((fd, here))
                fd = -1
            finally:
                if fd >= 0:
                    os.close(fd)
        else:
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        dirfd, where = stack.pop()
        try:
            if dirs:
                _check(dirfd, where, holder=True)
        except BaseException:
            os.close(dirfd)
            raise
        return dirfd, name, where
    finally:
        for fd, _where in stack:
            os.close(fd)


@contextmanager
def open_in(path: Path, flags: int, *, follow: bool, make_from: Path | None = None,
            file_mode: int = 0o640) -> Iterator[tuple[int, Path]]:
    """(descriptor, real path) of the regular file ``path`` opened with ``flags`` after walk().
    Never blocks: O_NONBLOCK, and anything but a regular file is refused (Untrusted)."""
    dirfd, name, where = walk(path, follow=follow, make_from=make_from)
    try:
        fd = os.open(name, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, file_mode, dir_fd=dirfd)
    finally:
        os.close(dirfd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise Untrusted(where / name, "not a regular file")
        yield fd, where / name
    finally:
        os.close(fd)
