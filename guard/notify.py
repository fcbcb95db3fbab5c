"""The systemd notify protocol (sd_notify(3)): readiness, status, watchdog, reload, stop.

A message is one datagram of ``KEY=VALUE`` lines sent to the AF_UNIX socket named in
``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace). Without that
variable (run by hand, in a container, under another supervisor) every call is a no-op.

Hand-written, because the protocol is one ``sendto`` and both ready-made options cost more
than they give: the PyPI ``sdnotify`` package is unmaintained (last release 2017, no
abstract-socket or reload support), and ``systemd-python`` is a C extension that needs the
libsystemd headers and a compiler on every node. Sending never raises and never blocks: a
supervisor that has gone away, or stopped reading, must not take the firewall daemon down with it.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Mapping

log = logging.getLogger("nodeguard.notify")


def _address(value: str) -> str | bytes | None:
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()  # Linux abstract namespace
    return None  # vsock: and other transports systemd 252 does not use


def _clean(text: str) -> str:
    """A value on one line: a newline in a status would start a new KEY=VALUE assignment."""
    return "".join(c if c.isprintable() else " " for c in text)


class Notifier:
    """Talks to the service manager named by ``$NOTIFY_SOCKET`` (or ``address``)."""

    def __init__(self, address: str | None = None, env: Mapping[str, str] | None = None):
        env = os.environ if env is None else env
        raw = address if address is not None else env.get("NOTIFY_SOCKET", "")
        self.address = _address(raw) if raw else None
        if raw and self.address is None:
            log.warning("NOTIFY_SOCKET=%r is not a socket path or @abstract name; not notifying", raw)
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` lines as one datagram; True if the manager got it."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                # non-blocking: a manager that does not read (a full receive queue) loses a message,
                # it never stalls the main loop that sends WATCHDOG=1
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
            self._sock.sendto("\n".join(assignments).encode(), self.address)
            return True
        except OSError as exc:  # manager restarting or gone: say so once per failure, carry on
            log.debug("sd_notify %s failed: %s", assignments[0].split("=", 1)[0], exc)
            return False

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *self._status(status))

    def status(self, text: str) -> bool:
        return self.send(*self._status(text))

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def reloading(self, status: str | None = None) -> bool:
        """Reload has begun; send ``ready()`` when it is done (sd_notify(3), Type=notify-reload).

        MONOTONIC_USEC lets systemd >= 253 tell this reload from an older one; 252 ignores it.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", *self._status(status))

    def stopping(self, status: str | None = None) -> bool:
        return self.send("STOPPING=1", *self._status(status))

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for more time to start, reload or stop (a slow first apply on a huge ruleset)."""
        return self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    @staticmethod
    def _status(text: str | None) -> tuple[str, ...]:
        return () if text is None else (f"STATUS={_clean(text)}",)


def watchdog_interval(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """The watchdog timeout in seconds (``WatchdogSec=``), or None when no watchdog is set for us.

    Ping at half this interval, as sd_watchdog_enabled(3) recommends. ``$WATCHDOG_PID``, when
    set, must be this process: a child that inherited the environment is not watched.
    """
    env = os.environ if env is None else env
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    watched = env.get("WATCHDOG_PID")
    if watched:
        try:
            if int(watched) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    return usec / 1_000_000
