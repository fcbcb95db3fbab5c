"""What the bounded HTTP server (httpserve.py) reads and writes: a request head parsed into a
``Request`` (or the error ``Reply`` to send), a route's handler, and a ``Reply`` encoded as an
HTTP/1.1 answer that closes the connection. No sockets here."""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus
from typing import Callable


@dataclass(frozen=True)
class Request:
    method: str
    path: str                   # without the query
    headers: dict[str, str]     # lower-case name -> value (the last one of a repeated name)


@dataclass(frozen=True)
class Reply:
    code: int
    ctype: str
    body: bytes


@dataclass(frozen=True)
class Route:
    handler: Callable[[Request], Reply]
    inline: bool                # cheap and never blocking: answered on the I/O thread


def encode(reply: Reply) -> bytes:
    head = (f"HTTP/1.1 {reply.code} {HTTPStatus(reply.code).phrase}\r\nContent-Type: {reply.ctype}\r\n"
            f"Content-Length: {len(reply.body)}\r\nConnection: close\r\n\r\n")
    return head.encode("ascii") + reply.body


def text_reply(code: int, text: str) -> Reply:
    return Reply(code, "text/plain; charset=utf-8", text.encode())


def parse_head(raw: bytes) -> Request | Reply:
    """A request head (without its blank line) -> the Request, or the error Reply to send."""
    lines = raw.decode("latin-1").replace("\r\n", "\n").split("\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return text_reply(400, "bad request line\n")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    if parts[0] != "GET":
        return text_reply(405, "only GET\n")
    return Request(parts[0], parts[1].split("?", 1)[0], headers)
