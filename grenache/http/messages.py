"""HTTP messages as the server and clients of this package see them, and how a response is
written on the wire.

A request's header names are lowercased and keep their order and repetitions; a response
always carries ``Content-Length`` and ``Connection`` (written by :func:`serialize_response`)
and nothing else unless the handler adds headers: no ``Date``, no ``Content-Type``, because the
grape API must send none (docs/protocol.rst, *Grape HTTP API*). Status lines use Node's reason
phrases so that the bytes match a Node server's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import TYPE_CHECKING

import attrs
from twisted.internet.interfaces import IAddress

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

__all__ = [
    "HTTPRequest",
    "HTTPResponse",
    "RequestHandler",
    "header_value",
    "serialize_response",
    "status_line",
]


def header_value(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The value of the first of ``headers`` (names lowercased) called ``name`` (any case)."""
    name = name.lower()
    for key, value in headers:
        if key == name:
            return value
    return None


@attrs.frozen
class HTTPRequest:
    """One complete HTTP request, as a handler sees it.

    ``path`` is the raw request target exactly as sent (query string included), decoded as
    latin-1 so that every byte survives; ``headers`` keeps the order and repetitions of the
    request with names lowercased.
    """

    method: str
    path: str
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    peer: IAddress | None = None

    def header(self, name: bytes) -> bytes | None:
        """The value of the first header called ``name`` (any case), or ``None``."""
        return header_value(self.headers, name)


@attrs.frozen
class HTTPResponse:
    """What a handler answers.

    ``headers`` are extra header lines written verbatim after ``Content-Length`` and
    ``Connection``, which the server always adds itself; they must not contain CR or LF.
    """

    status: int = 200
    body: bytes = b""
    headers: tuple[tuple[bytes, bytes], ...] = ()


RequestHandler = Callable[[HTTPRequest], "HTTPResponse | Deferred[HTTPResponse]"]
"""Answers a request, either at once or through a Deferred (a coroutine is accepted too)."""


# Node's http.STATUS_CODES where Python's phrase differs, so status lines match Node's bytes.
_NODE_REASONS = {
    413: "Payload Too Large",
    414: "URI Too Long",
    416: "Range Not Satisfiable",
}
_STATUS_LINES: dict[int, bytes] = {}


def status_line(status: int) -> bytes:
    """``HTTP/1.1 <status> <reason>\\r\\n``, with Node's reason phrases (``unknown`` if none)."""
    line = _STATUS_LINES.get(status)
    if line is None:
        reason = _NODE_REASONS.get(status)
        if reason is None:
            try:
                reason = HTTPStatus(status).phrase
            except ValueError:
                reason = "unknown"
        line = f"HTTP/1.1 {status} {reason}\r\n".encode("latin-1")
        if len(_STATUS_LINES) < 1000:
            _STATUS_LINES[status] = line
    return line


KEEP_ALIVE = b"\r\nConnection: keep-alive\r\n"
CLOSE = b"\r\nConnection: close\r\n"


def serialize_response(response: HTTPResponse, close: bool, head: bool) -> bytes:
    """The bytes of a complete response (no body for HEAD, but its Content-Length).

    ``close`` writes ``Connection: close`` (the server closes after it), else ``keep-alive``.
    """
    body = response.body
    parts = [
        status_line(response.status),
        b"Content-Length: ",
        str(len(body)).encode("ascii"),
        CLOSE if close else KEEP_ALIVE,
    ]
    for name, value in response.headers:
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    if not head:
        parts.append(body)
    return b"".join(parts)
