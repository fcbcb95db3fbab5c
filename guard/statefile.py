"""The small JSON files the daemon writes and reads back (sampling odds, the watcher's state), and
the checks of JSON values that they and the attack log's records (records.py) share.

What is read back is checked before anything uses it: parsed strictly (no NaN, no Infinity, no
number a float cannot hold), then field by field against what its writer writes. A file that fails
is treated as absent, with one warning naming the file and what is wrong: never a traceback (a
daemon that crashes at start on its own state restarts into the same crash).
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Callable

from .configfile import read_private
from .errors import NodeguardError

log = logging.getLogger("nodeguard.state")

PID_MAX_LIMIT = 4194304  # the kernel's ceiling for /proc/sys/kernel/pid_max (64-bit)
MAX_NUMBER = 2 ** 53  # counts and seconds: what a float holds exactly, far beyond any real value


class Invalid(ValueError):
    """What is wrong with a state file, in words (never its bytes)."""


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise Invalid("a number out of range")
    return value


def _constant(name: str) -> Any:
    raise Invalid(f"{name}, which is not a number")


def load(path: str | Path, check: Callable[[Any], None]) -> Any | None:
    """The parsed file once ``check`` (raising Invalid) passed it; None when it is missing (silently),
    refused by read_private (someone else could have written it) or invalid (then one warning)."""
    raw = read(path)
    return None if raw is None else parse(path, raw, check)


def read(path: str | Path) -> bytes | None:
    """The file's bytes; None when it is missing (silently) or refused by read_private (one warning)."""
    if not os.path.lexists(path):
        return None
    try:
        return read_private(path)
    except NodeguardError as exc:  # names the file and why
        log.warning("ignored as if absent: %s", str(exc)[:300])
        return None


def parse(path: str | Path, raw: bytes, check: Callable[[Any], None]) -> Any | None:
    """``raw`` (the file at ``path``) parsed and passed by ``check``; None when invalid (one warning)."""
    try:
        data = loads(raw)
        check(data)
    except (ValueError, RecursionError) as exc:  # bad JSON or UTF-8, digits over the int limit, Invalid
        invalid(path, exc)
        return None
    return data


def loads(raw: bytes) -> Any:
    """JSON parsed strictly: no NaN, no Infinity, no number a float cannot hold (ValueError)."""
    return json.loads(raw, parse_float=_finite, parse_constant=_constant)


def invalid(path: str | Path, exc: Exception) -> None:
    log.warning("%s: ignored as if absent: %s", path, str(exc)[:120])


def pid_max() -> int:
    """One more than the highest process id this kernel gives."""
    try:
        with open("/proc/sys/kernel/pid_max") as f:
            return int(f.read())
    except (OSError, ValueError):
        return PID_MAX_LIMIT


def is_int(value: Any, low: int = 0, high: float = MAX_NUMBER) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def is_number(value: Any, high: float = MAX_NUMBER) -> bool:
    """A number from 0 to ``high``: NaN and the infinities fail the comparison, ints of any size compare
    exactly."""
    return is_int(value, 0, high) or (isinstance(value, float) and 0 <= value <= high)


def or_none(kind: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or kind(value)


def is_pid(value: Any) -> bool:
    return is_int(value, 1, pid_max() - 1)


def running(pid: int) -> bool:
    """Whether the process ``pid`` (checked by is_pid: 0 and -1 would name our group and everyone)
    exists; someone else's counts."""
    try:
        os.kill(pid, 0)
    except PermissionError:
        return True
    except (OSError, OverflowError, ValueError):
        return False
    return True


def is_text(value: Any) -> bool:
    return value is None or isinstance(value, str)


def is_texts(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def fields(spec: dict[str, tuple[Callable[[Any], bool], str]]) -> Callable[[Any], None]:
    """A check for a JSON object: each field of ``spec`` it has passes its test (``what`` says what it
    should be); other fields are left as they are."""
    def check(data: Any) -> None:
        if not isinstance(data, dict):
            raise Invalid("not a JSON object")
        for name, (ok, what) in spec.items():
            if name in data and not ok(data[name]):
                raise Invalid(f"{name} is not {what}")
    return check
