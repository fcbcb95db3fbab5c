"""Logging for the daemon: one line per event on stderr, for journald, a container runtime or a person.

* ``text`` under systemd (``$JOURNAL_STREAM`` names our stderr): ``<3>nodeguard.watch: message``,
  the sd-daemon(3) priority prefix that journald turns into the entry's PRIORITY, and no
  timestamp (journald stamps every entry itself).
* ``text`` elsewhere: ``2024-05-01T12:00:00.123Z WARNING nodeguard.watch: message``.
* ``json``: one object per line: ``ts``, ``level``, ``logger``, ``msg``, any ``extra=`` fields,
  and ``exc`` for a traceback (for log shippers in Kubernetes).

Messages carry untrusted text (interface names from netlink, process names of other writers,
packet-derived fields). Whatever the format, an event is exactly one line: text mode escapes
backslashes, newlines and every non-printable character (``\\n``, ``\\x1b``), json escapes them
with ensure_ascii. Nothing from outside can forge a second log line or a terminal sequence.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from typing import IO, Any, Callable, Mapping

FORMATS = ("text", "json")
_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


def escape(text: str) -> str:
    """One printable line: ``\\`` → ``\\\\``, newline → ``\\n``, other control characters → ``\\xNN``."""
    if text.isprintable() and "\\" not in text:
        return text
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif not ch.isprintable():
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


def one_line(text: str) -> str:
    """A field of a text output line (which escape_lines escapes as a whole): its newlines shown as
    U+2424 and its tabs as spaces, the two characters escape_lines keeps, so it cannot forge a line."""
    return text.replace("\n", "\u2424").replace("\t", " ")


def escape_lines(text: str) -> str:
    """Text for a terminal: each line escaped, the newlines and tabs kept (nft's own listing indents
    with tabs). Every verb's output goes through
    it: text from a log, the kernel or another program never reaches a terminal raw."""
    return "\n".join("\t".join(escape(cell) for cell in line.split("\t")) for line in text.split("\n"))


def _priority(levelno: int) -> int:
    return next((p for lvl, p in sorted(_PRIORITY.items(), reverse=True) if levelno >= lvl), 7)


def _iso(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


def under_journald(stream: IO, env: Mapping[str, str] | None = None) -> bool:
    """True when ``stream`` is the journal stream systemd connected (systemd.exec(5): compare
    ``$JOURNAL_STREAM``'s device:inode with the stream's, since children inherit the variable)."""
    value = (os.environ if env is None else env).get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in value.split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


class TextFormatter(logging.Formatter):
    def __init__(self, journald: bool):
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        line = f"{record.name}: {escape(record.getMessage())}"
        for key, value in _extras(record).items():
            line += f" {escape(str(key))}={escape(str(value))}"
        if record.exc_info:
            line += " | " + escape(self.formatException(record.exc_info))
        if self.journald:
            return f"<{_priority(record.levelno)}>{line}"
        return f"{_iso(record.created)} {record.levelname} {line}"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {"ts": _iso(record.created), "level": record.levelname.lower(),
                                "logger": record.name, "msg": record.getMessage()}
        for key, value in _extras(record).items():
            data.setdefault(key, value)
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=True, default=str, separators=(",", ":"))


class Throttle:
    """At most one line per ``interval_s`` for a failure anyone outside can repeat (a request):
    ``allow()`` says whether this one is logged and how many were held back since the last."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic):
        self.interval_s, self.clock = interval_s, clock
        self._next: float | None = None
        self._held = 0
        self._lock = threading.Lock()

    def allow(self) -> int | None:
        """None: hold this one back; else log it, with the returned count of those held back."""
        with self._lock:
            now = self.clock()
            if self._next is not None and now < self._next:
                self._held += 1
                return None
            held, self._held, self._next = self._held, 0, now + self.interval_s
            return held


def setup_logging(fmt: str = "text", level: int = logging.INFO, stream: IO | None = None,
                  env: Mapping[str, str] | None = None) -> logging.Handler:
    """Route every ``nodeguard.*`` logger (and the root logger) to one stderr handler.

    ``fmt`` is ``text`` or ``json`` (the CLI's ``--log-format``). Returns the handler.
    """
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    stream = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(under_journald(stream, env)))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
