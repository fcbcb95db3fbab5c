"""The Local API over HTTP (stdlib urllib): every call bounded in time and in the size of its answer,
whose JSON the caller still reads as untrusted. Failures are ``LapiError``, one line, never raw bytes."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import urllib.error
import urllib.request

from .. import __version__

TIMEOUT_S = 10.0  # connect and each read
DEADLINE_S = 30.0  # a whole call: a server that drips its answer is cut off then
MAX_ANSWER = 64 << 20  # bytes: ~300,000 decisions; a longer answer is refused, nothing changes
USER_AGENT = f"nodeguard/v{__version__}"  # name/version: the LAPI refuses a machine login without it


class LapiError(Exception):
    """A call that failed; ``str`` is one printable line."""


class _Deadline:
    """Shuts a call's sockets down when its time is up: the per-read timeout alone lets a server that
    sends a byte now and then hold the call (and the CrowdSec thread) forever. Each socket is kept as a
    dup, so a shutdown can never reach a descriptor reused after the call closed its own."""

    def __init__(self, seconds: float):
        self.expired = False
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._socks.append(sock.dup())
            if self.expired:
                _shut(self._socks[-1])

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._socks:
                _shut(sock)

    def close(self) -> None:
        self._timer.cancel()
        with self._lock:
            for sock in self._socks:
                sock.close()


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _opener(deadline: _Deadline) -> urllib.request.OpenerDirector:
    """No proxy (the LAPI is the cluster's); every connection's socket watched by ``deadline``."""
    def watched(base: type) -> type:
        class Handler(base):
            def do_open(self, http_class, req, **kw):
                def connection(*args, **kwargs):
                    conn = http_class(*args, **kwargs)
                    create = conn._create_connection  # the TCP socket, before any TLS handshake

                    def created(*a, **k):
                        sock = create(*a, **k)
                        deadline.watch(sock)
                        return sock
                    conn._create_connection = created
                    return conn
                return super().do_open(connection, req, **kw)
        return Handler
    return urllib.request.build_opener(urllib.request.ProxyHandler({}), watched(urllib.request.HTTPHandler)(),
                                       watched(urllib.request.HTTPSHandler)())


def call(base: str, path: str, headers: dict[str, str], body: object = None, max_bytes: int = MAX_ANSWER,
         deadline_s: float | None = None) -> object:
    """The parsed JSON answer of ``GET`` (or, with ``body``, ``POST``) ``base`` + ``path``, within
    ``deadline_s`` (None: DEADLINE_S)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base.rstrip("/") + path, data=data, method="GET" if body is None else "POST",
                                 headers={"User-Agent": USER_AGENT, **headers,
                                          **({"Content-Type": "application/json"} if data is not None else {})})
    seconds = DEADLINE_S if deadline_s is None else deadline_s
    deadline = _Deadline(seconds)
    try:
        with _opener(deadline).open(req, timeout=TIMEOUT_S) as resp:
            raw = resp.read(max_bytes + 1)
    except urllib.error.HTTPError as exc:
        raise LapiError(f"{path.split('?')[0]}: HTTP {exc.code}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        if not deadline.expired:
            raise LapiError(f"{path.split('?')[0]}: {_reason(exc)!a}") from None
    finally:
        deadline.close()
    if deadline.expired:  # whatever the cut-off answer raised or held
        raise LapiError(f"{path.split('?')[0]}: no whole answer within {seconds:g} s")
    if len(raw) > max_bytes:
        raise LapiError(f"{path.split('?')[0]}: answer over {max_bytes} bytes")
    try:
        return json.loads(raw) if raw.strip() else None
    except (ValueError, RecursionError):
        raise LapiError(f"{path.split('?')[0]}: the answer is not JSON") from None


def stream(base: str, api_key: str, startup: bool) -> object:
    """The decision stream's answer: everything with ``startup``, else what changed since the last call."""
    return call(base, f"/v1/decisions/stream?startup={'true' if startup else 'false'}", {"X-Api-Key": api_key})


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or exc
    return str(reason)[:200]
