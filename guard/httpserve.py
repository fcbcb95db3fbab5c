"""A small HTTP/1 server that no client can starve, for the metrics port (guard/metrics.py).

The port may sit on the node's IP (the DaemonSet's), where anyone who reaches it is a client and
kubelet's liveness probe is one more. So what any client can take is bounded:

* one I/O thread multiplexes every connection (``selectors``): a slow or silent client costs a
  table entry, never a thread, and cheap routes (``/healthz``) are answered on that thread at once;
* each connection has a **whole-request** deadline (``Limits.head_s`` from accept to the end of
  the request head), not a per-read timeout that a byte every few seconds renews, and a second one
  (``Limits.reply_s``) for its answer to be computed and written: a client that never reads is
  closed when it runs out, its unsent bytes dropped;
* a request head is at most ``Limits.head_bytes``;
* at most ``Limits.per_client`` connections per client (an IPv4 address, an IPv6 /64) and
  ``Limits.connections`` in all. A connection over either cap **evicts** another rather than being
  refused, never one whose request is complete (if every one is, the newcomer is closed). Over a
  client's cap: that client's oldest that has sent nothing, else its oldest that sent part of a
  head. Over the total: from the client holding the most connections, its oldest silent one, else
  its oldest partial one. Either way a connection has ``Limits.grace_s`` from its accept to send
  its request before it can be evicted, whoever its client; only beyond ``Limits.connections_max``
  does the total cap take connections in their grace, by the same order. So a probe is answered if
  its request arrives within the grace, unless ``connections_max`` newer connections arrive first
  (from its own address: 512 in 46 ms at the fastest a local flood connected, measured);
  What a connection sent with its connect is read at accept, and a silent victim once more before
  it goes: a request that is in is never what the caps evict;
* expensive routes (``/metrics``) run one at a time in one worker thread, so the process' thread
  count (the unit's ``TasksMax=``) does not depend on clients.

One request per connection (``Connection: close``), GET only.
"""

from __future__ import annotations

import logging
import queue
import selectors
import socket
import struct
import threading
import time
import traceback
from collections import deque

from .httpcaps import Conn, Limits, client_key, client_victim, total_victim
from .httpmessages import Reply, Request, Route, encode, parse_head, text_reply
from .logs import Throttle

ABORT = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset
log = logging.getLogger("nodeguard.metrics")


class BoundedHTTPServer:
    """Serves ``routes`` (path -> Route) on ``listen`` within ``limits`` (see the module's doc).
    ``serve_forever()`` runs the I/O loop (and its worker) until ``shutdown()``."""

    def __init__(self, listen: tuple[str, int], routes: dict[str, Route], limits: Limits = Limits()):
        self.routes, self.limits = routes, limits
        family = socket.AF_INET6 if ":" in listen[0] else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind(listen)
            self.socket.listen(limits.backlog)
        except OSError:
            self.socket.close()
            raise
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()[:2]
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.socket, selectors.EVENT_READ)
        self._wake_r, self._wake_w = socket.socketpair()
        for s in (self._wake_r, self._wake_w):
            s.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ)
        self._conns: dict[socket.socket, Conn] = {}  # in order of arrival: the first is the oldest
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._done: deque[tuple[Conn, Reply]] = deque()
        self._by_client: dict[str, dict[socket.socket, Conn]] = {}  # each client's, in order of arrival
        self._crowded: set[str] = set()  # clients over their cap with silent ones still in grace
        self._over = False               # over the total cap with every candidate still in grace
        self._stop = False
        self._stopped = threading.Event()
        self._stopped.set()
        self._failures = Throttle(limits.error_log_s)

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    # --- lifecycle ------------------------------------------------------------------------
    def start(self) -> threading.Thread:
        t = threading.Thread(target=self.serve_forever, name="nodeguard-metrics", daemon=True)
        t.start()
        return t

    def serve_forever(self) -> None:
        self._stopped.clear()
        worker = threading.Thread(target=self._work, name="nodeguard-metrics-work", daemon=True)
        worker.start()
        try:
            while not self._stop:
                self._turn()
        finally:
            self._jobs.put(None)
            self._stopped.set()

    def shutdown(self) -> None:
        self._stop = True
        self._wake()
        self._stopped.wait()

    def server_close(self) -> None:
        for conn in list(self._conns.values()):
            self._close(conn)
        for s in (self.socket, self._wake_r, self._wake_w):
            s.close()
        self._sel.close()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    # --- the I/O loop ---------------------------------------------------------------------
    def _turn(self) -> None:
        now = time.monotonic()
        soonest = min((c.deadline for c in self._conns.values()), default=now + 1.0)
        if self._crowded or self._over:
            soonest = min(soonest, now + self.limits.grace_s / 2)
        events = self._sel.select(min(1.0, max(0.0, soonest - now)))
        events.sort(key=lambda event: event[0].fileobj is self.socket)  # accepts last (see _accept)
        for key, _ in events:
            if key.fileobj is self.socket:
                self._accept()
            elif key.fileobj is self._wake_r:
                self._drain_wake()
            elif key.data.closed:
                continue  # evicted by an accept earlier in this batch
            elif key.data.out is None:
                self._read(key.data)
            else:
                self._write(key.data)
        while self._done:
            conn, reply = self._done.popleft()
            if not conn.closed:
                self._answer(conn, reply)
        for client in list(self._crowded):
            self._make_room(client)
        if self._over:
            self._over = False
            self._make_room(None)
        now = time.monotonic()
        for conn in [c for c in self._conns.values() if c.deadline <= now]:
            log.debug("metrics client %s: out of time, closed", conn.client)
            self._close(conn)

    def _accept(self) -> None:
        """Up to ``Limits.backlog`` per turn, after the turn's reads: a burst of connects is taken
        off the kernel's queue before it overflows (a dropped SYN costs a probe a second). Each new
        connection is read at once (non-blocking): a request sent with the connect is in before
        the caps are enforced, so it is never what they evict."""
        for _ in range(self.limits.backlog):
            try:
                sock, addr = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. out of descriptors: the connection stays queued
                log.warning("metrics server cannot accept: %s", exc)
                return
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.limits.send_buffer)
            now = time.monotonic()
            conn = Conn(sock, client_key(addr[0]), now, now + self.limits.head_s)
            self._sel.register(sock, selectors.EVENT_READ, conn)
            self._read(conn)
            if not conn.closed:  # answered at once (a probe) never counts against a cap
                self._conns[sock] = conn
                self._by_client.setdefault(conn.client, {})[sock] = conn
                self._make_room(conn.client)

    def _make_room(self, client: str | None) -> None:
        """Evict while over a cap (the order: the module's doc); ``client``: the one that just grew, if
        any. A silent victim is read once more first: a request that arrived since its accept saves it."""
        while True:
            now, victim = time.monotonic(), None
            if client is not None:
                victim, waiting = client_victim(self._by_client.get(client, {}), self.limits, now)
                self._crowded.discard(client)
                if waiting:
                    self._crowded.add(client)  # looked at again each turn, until within the cap
            if victim is None and len(self._conns) > self.limits.connections:
                victim, over = total_victim(self._conns, self._by_client, self.limits, now)
                self._over = self._over or over  # looked at again each turn, until within the cap
            if victim is None:
                return
            if victim.eviction_rank() == 0 and self._read(victim):
                continue  # it spoke (or hung up): look again
            log.debug("metrics client %s: evicted by a newer connection", victim.client)
            self._close(victim)

    def _read(self, conn: Conn) -> bool:
        """Read what ``conn`` sent and act on it; False if there was nothing to read yet."""
        try:
            data = conn.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            data = b""
        if not data:
            self._close(conn)
            return True
        conn.head += data
        self._on_head(conn)
        return True

    def _on_head(self, conn: Conn) -> None:
        """Answer, queue or keep waiting for ``conn``'s request head, as much of it as is in."""
        end = min((i for i in (conn.head.find(b"\r\n\r\n"), conn.head.find(b"\n\n")) if i >= 0), default=-1)
        if end < 0:
            if len(conn.head) > self.limits.head_bytes:
                self._answer(conn, text_reply(431, "request head too large\n"))
            return
        if end > self.limits.head_bytes:
            self._answer(conn, text_reply(431, "request head too large\n"))
            return
        conn.complete = True
        conn.deadline = time.monotonic() + self.limits.reply_s
        request = parse_head(bytes(conn.head[:end]))
        if isinstance(request, Reply):
            self._answer(conn, request)
            return
        route = self.routes.get(request.path)
        if route is None:
            self._answer(conn, text_reply(404, f"not found: try {' or '.join(self.routes)}\n"))
        elif route.inline:
            self._answer(conn, self._run(route, request))
        else:
            self._sel.unregister(conn.sock)  # nothing to read until its answer is written
            self._jobs.put((conn, route, request))

    def _answer(self, conn: Conn, reply: Reply) -> None:
        conn.out = memoryview(encode(reply))
        try:
            self._sel.modify(conn.sock, selectors.EVENT_WRITE, conn)
        except KeyError:
            self._sel.register(conn.sock, selectors.EVENT_WRITE, conn)
        self._write(conn)

    def _write(self, conn: Conn) -> None:
        try:
            sent = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        conn.out = conn.out[sent:]
        if not conn.out:
            self._close(conn, lingering=True)

    def _close(self, conn: Conn, lingering: bool = False) -> None:
        """Close; ``lingering``: after a full answer, read what the client sent beyond its head
        first, so that the kernel ends with FIN rather than a reset that could discard the answer.
        Else (evicted, out of time, hung up) with a reset: nothing is owed, and a flood of connects
        leaves no TIME_WAIT behind (at 2,500/s, 150,000 of them on the node)."""
        if conn.closed:
            return
        conn.closed = True
        self._conns.pop(conn.sock, None)
        mine = self._by_client.get(conn.client, {})
        if mine.pop(conn.sock, None) is not None and not mine:
            del self._by_client[conn.client]
        try:
            self._sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        try:
            if lingering:
                conn.sock.shutdown(socket.SHUT_WR)
                conn.sock.recv(65536)
            else:
                conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, ABORT)
        except OSError:
            pass
        conn.sock.close()

    # --- the worker -----------------------------------------------------------------------
    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            conn, route, request = job
            if not conn.closed:  # not gone out of time while queued
                self._done.append((conn, self._run(route, request)))
                self._wake()

    def _run(self, route: Route, request: Request) -> Reply:
        """One failed answer (500), never a dead server, nor a log line per request: a client that
        can make a route fail could otherwise fill the log (``Limits.error_log_s``)."""
        try:
            return route.handler(request)
        except Exception as exc:
            held = self._failures.allow()
            if held is not None:
                frame = traceback.extract_tb(exc.__traceback__)[-1]
                log.error("metrics route %s failed: %s: %s (in %s:%d; %d more since the last such line, "
                          "at most one per %g s)", request.path, type(exc).__name__, exc, frame.filename,
                          frame.lineno, held, self.limits.error_log_s)
            return text_reply(500, "internal error\n")

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass  # full (a wake-up is pending anyway) or closed (stopping)

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass
