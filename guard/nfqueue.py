"""NFQUEUE through the ``netfilterqueue`` binding: one queue per rule group, every packet dropped.

The packets were condemned by the kernel rules before they were queued; the verdict here is
always drop, so a slow or absent sampler loses samples, never protection (no bypass).
"""

from __future__ import annotations

import time

from .nflog import Sample


class NfqueueReader:
    def __init__(self, queues: dict[int, str], snaplen: int):
        from netfilterqueue import COPY_PACKET, NetfilterQueue

        self._pending: list[Sample] = []
        self.queues = []
        for number, group in queues.items():
            q = NetfilterQueue()
            q.bind(number, self._callback(group), max_len=4096, mode=COPY_PACKET, range=snaplen)
            self.queues.append(q)
        self._by_fd = {q.get_fd(): q for q in self.queues}

    def _callback(self, group: str):
        def on_packet(pkt) -> None:
            try:
                self._pending.append(Sample(group, pkt.get_payload(), pkt.indev or 0, time.time()))
            finally:
                pkt.drop()
        return on_packet

    def filenos(self) -> list[int]:
        return list(self._by_fd)

    def read(self, ready_fds: list[int]) -> list[Sample]:
        for fd in ready_fds:
            q = self._by_fd.get(fd)
            if q is not None:
                q.run(block=False)
        out, self._pending = self._pending, []
        return out

    def close(self) -> None:
        for q in self.queues:
            q.unbind()
