"""The attack log: JSON Lines, rotated by size, with a cap on the disk it may use.

``path`` is rotated to ``path.1`` ... ``path.<keep>`` when it passes ``max_bytes``; the oldest
is deleted, so the log never takes more than ``max_bytes * (keep + 1)``. JSON encoding with
ensure_ascii escapes every control character: nothing from a packet reaches a terminal raw.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any, Iterable, Iterator

import orjson

from .configfile import open_private
from .errors import EnvironmentProblem
from .logs import escape

MAX_KEEP = 100  # rotated files at most (sampler.rotate.keep)


class RotatingFile:
    """Opened with ``configfile.open_private`` (no symlinks, no hard links or FIFOs, 0640 in 0750
    directories), only under ``allowed_dirs``: by default configfile.data_dirs()."""

    def __init__(self, path: str | Path, max_bytes: int, keep: int, mode: str = "a",
                 allowed_dirs: Iterable[str | Path] | None = None):
        self.path, self.max_bytes, self.keep, self.mode = Path(path), max_bytes, keep, mode
        self.allowed_dirs = list(allowed_dirs) if allowed_dirs is not None else None
        self._open()

    def _open(self) -> None:
        self.f = open_private(self.path, self.mode + "b", allowed_dirs=self.allowed_dirs)
        self.size = self.f.tell() if self.mode == "a" else 0
        self.on_open()

    def on_open(self) -> None:
        """Subclasses write a file header here."""

    def write_bytes(self, data: bytes) -> None:
        if self.size > 24 and self.size + len(data) > self.max_bytes:
            self.rotate()
        self.f.write(data)
        self.size += len(data)

    def rotate(self) -> None:
        self.f.close()
        for i in range(self.keep, 0, -1):
            src = self.path if i == 1 else self.path.with_name(f"{self.path.name}.{i - 1}")
            if src.exists():
                os.replace(src, self.path.with_name(f"{self.path.name}.{i}"))
        self._open()

    def flush(self) -> None:
        self.f.flush()

    def close(self) -> None:
        self.f.close()


class AttackLog(RotatingFile):
    def write(self, record: dict) -> None:
        self.write_bytes((json.dumps(record, ensure_ascii=True, separators=(",", ":")) + "\n").encode())


class NoLog(EnvironmentProblem):
    """The attack log to read is not there: one line, exit 2."""


def log_files(path: str | Path) -> list[Path]:
    """The log and its rotations as RotatingFile names them (LOG.1 ... LOG.<MAX_KEEP>), oldest first.
    Raises NoLog when LOG itself is missing (the sampler creates it as it starts)."""
    path = Path(path)
    if not path.is_file():
        raise NoLog(f"{escape(str(path))}: no attack log there ({'not a file' if path.exists() else 'no such file'})")
    rotated = (path.with_name(f"{path.name}.{i}") for i in range(MAX_KEEP, 0, -1))
    return [p for p in rotated if p.is_file()] + [path]


def read_lines(path: str | Path) -> Iterator[Any]:
    """Each line's JSON value, None for a line that is not JSON (a torn last line after a crash, a
    line nested too deep, NaN, a number past a float, bytes not UTF-8); ``records.Records`` checks what
    they hold. orjson: a fifth of the stdlib's time a line (a log holds millions)."""
    loads = orjson.loads
    for f in log_files(path):
        with open(f, "rb") as fh:
            for line in fh:
                try:
                    yield loads(line)
                except orjson.JSONDecodeError:
                    yield None


def read_records(path: str | Path) -> Iterator[dict]:
    """The JSON objects of the log, unchecked (tests read back what the sampler wrote)."""
    return (rec for rec in read_lines(path) if isinstance(rec, dict))


class PcapLog(RotatingFile):
    """Sampled packets as pcap (LINKTYPE_RAW: packets start at the IP header), rotated like the log.

    The format is two fixed structs (libpcap's file and record headers); the tests read the files
    back with scapy, an independent reader.
    """

    LINKTYPE_RAW = 101

    def on_open(self) -> None:
        if self.size == 0:
            self.f.write(struct.pack("=IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, self.LINKTYPE_RAW))
            self.size = 24

    def write(self, payload: bytes, ts: float, wirelen: int) -> None:
        sec, usec = int(ts), int((ts % 1) * 1_000_000)
        self.write_bytes(struct.pack("=IIII", sec, usec, len(payload), max(wirelen, len(payload))) + payload)
