"""The Local API over HTTP (stdlib urllib): every call bounded in time and in the size of its answer,
whose JSON the caller still reads as untrusted. Failures are ``LapiError``, one line, never raw bytes."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from .. import __version__

TIMEOUT_S = 10.0  # connect and each read
MAX_ANSWER = 64 << 20  # bytes: ~300,000 decisions; a longer answer is refused, nothing changes
USER_AGENT = f"nodeguard/v{__version__}"  # name/version: the LAPI refuses a machine login without it
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # the LAPI is the cluster's: no proxy


class LapiError(Exception):
    """A call that failed; ``str`` is one printable line."""


def call(base: str, path: str, headers: dict[str, str], body: object = None, max_bytes: int = MAX_ANSWER) -> object:
    """The parsed JSON answer of ``GET`` (or, with ``body``, ``POST``) ``base`` + ``path``."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base.rstrip("/") + path, data=data, method="GET" if body is None else "POST",
                                 headers={"User-Agent": USER_AGENT, **headers,
                                          **({"Content-Type": "application/json"} if data is not None else {})})
    try:
        with _OPENER.open(req, timeout=TIMEOUT_S) as resp:
            raw = resp.read(max_bytes + 1)
    except urllib.error.HTTPError as exc:
        raise LapiError(f"{path.split('?')[0]}: HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise LapiError(f"{path.split('?')[0]}: {_reason(exc)!a}") from None
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
