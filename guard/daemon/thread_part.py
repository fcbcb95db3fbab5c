"""A daemon part that runs in a thread of its own, started once from the heartbeat and stopped with
the daemon (the SYN valve, CrowdSec). Subclasses give ``name`` and ``_main``, which loops until
``_stop`` is set."""

from __future__ import annotations

import threading


class ThreadPart:
    name = "part"

    def __init__(self) -> None:
        self._stop = threading.Event()
        self.thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def start(self) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self._main, name=f"nodeguard-{self.name}", daemon=True)
            self.thread.start()

    def _main(self) -> None:
        raise NotImplementedError

    def _woken(self) -> None:
        """Stopping: a part whose thread waits on more than ``_stop`` wakes it here."""

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._woken()
        if self.thread is not None:
            self.thread.join(timeout)
