"""Files the daemon trusts or writes as root, opened so that nobody else can steer it.

* Trust is sshd's StrictModes: the file, every directory from / down to it and every symlink on
  the way belong to root (or to the user running nodeguard) and no directory is writable by
  anyone else. A sticky directory owned by root (/tmp) may be on the way, above one of ours: its
  other users cannot rename or remove what root owns in it. The path is walked once with a
  descriptor per step (``trustpath.walk``), and what is read is read from the descriptor that
  was checked, so nothing can be swapped between the check and the read.
* The policy controls the node's firewall: ``read_config`` refuses one that is not root's alone.
  A ConfigMap's symlinks (config.yaml -> ..data/config.yaml) are followed, each one checked.
* Logs, pcaps and state are written only under the data directories (``data_dirs``), never
  through a symlink, a hard link, a FIFO or a device, 0640 in 0750 directories whatever the
  umask (``open_private``, ``write_atomic``). What the daemon reads back from there (last good
  policy, sampling odds, the watcher's state) passes the same checks (``read_private``).
* A file the operator names for output (``report --plot``) may be anywhere, but is never written
  through a symlink or a hard link, nor someone else's, nor waited on as a FIFO (``open_output``).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import IO, Callable, Iterable

from .errors import EnvironmentProblem, PolicyError
from .trustpath import Untrusted, file_problem, open_in, walk

FILE_MODE = 0o640
# Where the daemon writes (the unit's LogsDirectory, RuntimeDirectory and StateDirectory); an
# operator adds others, which must pass the ownership checks, in NODEGUARD_DATA_DIRS (DIR:DIR...).
DATA_DIRS = ("/var/log/nodeguard", "/run/nodeguard", "/var/lib/nodeguard")
DATA_DIRS_ENV = "NODEGUARD_DATA_DIRS"
_REFUSED = {errno.ELOOP: "refusing: it is a symlink", errno.ENXIO: "refusing: not a regular file"}
# "w" truncates only after the checks (O_TRUNC would empty someone else's file before we look)
_FLAGS = {"r": os.O_RDONLY, "w": os.O_WRONLY | os.O_CREAT, "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND}


class UnsafePathError(EnvironmentProblem):
    """A file the daemon was to write or read back is not safe to use as root: one line, exit 2."""


def add_data_dir(path: str | Path) -> None:
    """Let this process and its children (a lab's nodeguard) write under ``path`` too."""
    os.environ[DATA_DIRS_ENV] = ":".join(filter(None, (os.environ.get(DATA_DIRS_ENV), str(path))))


def data_dirs() -> list[Path]:
    """The directories the daemon may write under: DATA_DIRS and the absolute ones NODEGUARD_DATA_DIRS names."""
    extra = [d for d in os.environ.get(DATA_DIRS_ENV, "").split(":") if os.path.isabs(d)]
    return [Path(os.path.normpath(d)) for d in (*DATA_DIRS, *extra)]


def _root_of(directory: Path, roots: list[Path]) -> Path | None:
    """The allowed directory that ``directory`` is, or is below."""
    return next((r for r in roots if directory == r or r in directory.parents), None)


def check_data_path(value: str) -> str:
    """A path the policy has the daemon write (schema validator): printable, absolute, with no '..',
    under data_dirs()."""
    if not value.isprintable():
        raise ValueError("the path must be printable: no control or other non-printable characters")
    if not os.path.isabs(value) or os.path.normpath(value) != value.rstrip("/") or value.endswith("/"):
        raise ValueError(f"{value!r} must be an absolute file path without '.', '..' or '//'")
    roots = data_dirs()
    if _root_of(Path(value).parent, roots) is None:
        raise ValueError(f"{value!r}: nodeguard writes only under {', '.join(map(str, roots))} "
                         f"(name other directories in {DATA_DIRS_ENV})")
    return value


# --- the policy -------------------------------------------------------------------------------
MiB = 1024 * 1024
# The most of a policy file any verb reads: a policy of 10,000 allowlist CIDRs is ~0.2 MiB, so 4 MiB
# is 20 times that, and no file (a symlink to /dev/zero) can hold a verb's memory beyond it.
POLICY_MAX_BYTES = 4 * MiB


def _read_capped(fd: int, path: Path, limit: int) -> bytes:
    """At most ``limit`` bytes from ``fd`` (its offset moves, the descriptor stays open); a file
    with more is refused (PolicyError), after reading one byte more, never the rest."""
    with os.fdopen(os.dup(fd), "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise PolicyError(str(path), None, "", f"larger than {limit / MiB:g} MiB: refusing to read it")
    return data


def read_regular(path: str | Path, limit: int = POLICY_MAX_BYTES) -> bytes:
    """A file a verb reads without trusting it (``check``): anyone's, symlinks followed, but only a
    regular file (a FIFO would block forever, a device never end: opened O_NONBLOCK and refused
    after fstat) and at most ``limit`` bytes. Raises PolicyError (exit 2)."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise PolicyError(str(path), None, "", _REFUSED[errno.ENXIO])
            return _read_capped(fd, path, limit)
        finally:
            os.close(fd)
    except OSError as exc:
        raise PolicyError(str(path), None, "", exc.strerror or str(exc)) from None


def _config_refused(path: Path, exc: Untrusted) -> PolicyError:
    return PolicyError(str(path), None, "", f"refusing: {exc.what} is {exc.problem}; this file controls the "
                                            "firewall, so only root may be able to change it")


def read_config(path: str | Path, limit: int = POLICY_MAX_BYTES) -> tuple[bytes, Path]:
    """The policy file's bytes (at most ``limit``) and its real path, refused unless it is root's
    alone (StrictModes, above).

    Raises PolicyError (``FILE: refusing ...`` or ``FILE: No such file or directory``, exit 2)."""
    path = Path(path)
    try:
        with open_in(path, os.O_RDONLY, follow=True) as (fd, real):
            problem = file_problem(os.fstat(fd))
            if problem:
                raise Untrusted(real, problem)
            return _read_capped(fd, path, limit), real
    except Untrusted as exc:
        raise _config_refused(path, exc) from None
    except OSError as exc:
        raise PolicyError(str(path), None, "", exc.strerror or str(exc)) from None


def check_config_file(path: str | Path) -> Path:
    """Refuse a policy file that is not root's alone, before anything starts; returns its real path."""
    return read_config(path)[1]


# --- the daemon's own files ---------------------------------------------------------------------
def _claim(fd: int, st: os.stat_result, path: Path, base: str, file_mode: int | None) -> None:
    """Refuse an opened file that could be another one (hard links) or, to write, someone else's;
    then set ``file_mode`` (None: leave it) and, for "w", truncate: only now that it is ours."""
    if st.st_nlink != 1:
        raise UnsafePathError(f"{path}: refusing: it has {st.st_nlink} hard links (it could be another file)")
    if base == "r":
        return
    if st.st_uid != os.geteuid():
        raise UnsafePathError(f"{path}: refusing: owned by uid {st.st_uid}")
    if file_mode is not None and stat.S_IMODE(st.st_mode) != file_mode:
        os.fchmod(fd, file_mode)
    if base == "w":
        os.ftruncate(fd, 0)


def open_private(path: str | Path, mode: str = "a", *, allowed_dirs: Iterable[str | Path] | None = None,
                 file_mode: int = FILE_MODE) -> IO:
    """Open ``path`` for the daemon's own data: ``mode`` is r, w or a, plus b for binary.

    ``allowed_dirs`` (default: data_dirs()): where the file may be. Missing directories from one of
    them down are created 0750. Never blocks (a FIFO is refused at once). Raises UnsafePathError."""
    path = Path(os.path.abspath(path))
    roots = data_dirs() if allowed_dirs is None else [Path(os.path.abspath(r)) for r in allowed_dirs]
    base = mode.replace("b", "")
    if base not in _FLAGS:
        raise ValueError(f"mode must be r, w or a (optionally with b), not {mode!r}")
    root = _root_of(path.parent, roots)
    if root is None:
        raise UnsafePathError(f"{path}: refusing to write outside {', '.join(map(str, roots))}")
    try:
        with open_in(path, _FLAGS[base], follow=False, make_from=root if base != "r" else None,
                     file_mode=file_mode) as (fd, real):
            st = os.fstat(fd)
            _claim(fd, st, path, base, file_mode if base != "r" else None)
            if base == "r" and file_problem(st):
                raise Untrusted(real, file_problem(st))
            mine = os.dup(fd)
    except Untrusted as exc:
        raise UnsafePathError(f"{path}: refusing: {exc.what} is {exc.problem}") from None
    except OSError as exc:
        raise UnsafePathError(f"{path}: {exc.strerror or exc}") from None
    os.set_blocking(mine, True)
    return os.fdopen(mine, mode)


def open_output(path: str | Path, mode: str = "w") -> IO:
    """A file the operator named for a verb's output (``report --plot``), in any directory: created
    0644 (less the umask), or truncated only once it is known to be a regular file of ours with one
    link; never through a symlink at its name nor a directory symlink someone else owns on the way
    (trustpath.walk), never blocking on a FIFO. Raises UnsafePathError."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        dirfd, name, _where = walk(Path(path), follow=True, dirs=False, follow_last=False)
        try:
            fd = os.open(name, flags, 0o644, dir_fd=dirfd)
        finally:
            os.close(dirfd)
    except Untrusted as exc:
        raise UnsafePathError(f"{path}: refusing: {exc}") from None
    except OSError as exc:
        raise UnsafePathError(f"{path}: {_REFUSED.get(exc.errno) or exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePathError(f"{path}: {_REFUSED[errno.ENXIO]}")
        _claim(fd, st, Path(path), "w", None)
        os.set_blocking(fd, True)
        return os.fdopen(fd, mode)
    except BaseException as exc:
        os.close(fd)
        if isinstance(exc, OSError):
            raise UnsafePathError(f"{path}: {exc.strerror or exc}") from None
        raise


def write_atomic(path: str | Path, data: bytes | Iterable[bytes], *, file_mode: int = FILE_MODE,
                 keep: Callable[[], bool] | None = None) -> bool:
    """Replace ``path`` (under data_dirs()) with ``data`` (bytes, or chunks of them written as they
    come) in one rename, through ``path``.tmp opened by open_private: a symlink, FIFO or someone
    else's file planted there is refused, never used. ``keep``, asked once all is written: False
    leaves ``path`` as it was. Returns whether ``path`` was replaced."""
    path = Path(os.path.abspath(path))
    tmp = path.with_name(path.name + ".tmp")
    with open_private(tmp, "wb", file_mode=file_mode) as f:
        if isinstance(data, bytes):
            f.write(data)
        else:
            f.writelines(data)
    if keep is not None and not keep():
        os.unlink(tmp)
        return False
    os.replace(tmp, path)
    return True


def read_private(path: str | Path) -> bytes:
    """What the daemon wrote under data_dirs() and now trusts (last good policy, sampling odds,
    state), read only if no one else could have written it. Raises UnsafePathError."""
    with open_private(path, "rb") as f:
        return f.read()
