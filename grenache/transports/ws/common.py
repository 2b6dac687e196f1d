"""What every WebSocket transport module shares: limits, socket options, error texts.

Nothing here knows about RPC or pub/sub; it is the vocabulary the server, client, publisher and
subscriber modules of :mod:`grenache.transports.ws` are written in.
"""

from __future__ import annotations

import math
import re
from typing import Any

from autobahn.websocket.protocol import WebSocketProtocol
from OpenSSL import SSL
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.python.failure import Failure

from grenache import codec
from grenache.errors import (
    DestinationUnreachable,
    RequestTooLarge,
    TLSHandshakeError,
    WrongProtocol,
)
from grenache.peer import OutgoingRequest

__all__ = [
    "DEFAULT_MAX_IN_FLIGHT",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "SUBSCRIBER_MESSAGE_LIMIT",
    "UpgradeRequired",
    "configure",
    "encode_request",
    "gather",
    "js_truthy",
    "start_closing",
    "text_bytes",
    "unreachable",
    "wrong_protocol",
]

DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024
"""Largest message accepted by default (Node's ws 7 accepts up to 100 MiB)."""

DEFAULT_MAX_IN_FLIGHT = 1024
"""Requests a server socket runs at once before it stops reading from that socket."""

SUBSCRIBER_MESSAGE_LIMIT = 64 * 1024
"""Largest message a publisher reads from a subscriber (subscribers have nothing to say)."""

OPEN_HANDSHAKE_TIMEOUT = 10.0
"""Seconds a socket may take from TCP connect to an open WebSocket."""

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class UpgradeRequired:
    """Server protocol mixin: a request that is not a WebSocket upgrade gets 426.

    autobahn refuses a plain HTTP request (a ``POST`` from an HTTP client, no ``Upgrade``
    header) with 405 or 426 and a reason text of its own; with this mixin it is always
    ``426 Upgrade Required`` with ``Upgrade: websocket``, so that an HTTP client pointed at a
    WebSocket port can tell what it reached and say so. Put it before autobahn's server
    protocol among the bases.
    """

    def failHandshake(
        self, reason: str, code: int = 400, responseHeaders: list[tuple[str, str]] | None = None
    ) -> None:
        """Refuse the handshake as autobahn does, except that a request without an ``Upgrade``
        header gets ``426 Upgrade Required`` with ``Upgrade: websocket``.
        """
        headers = getattr(self, "http_headers", None)
        if isinstance(headers, dict) and "upgrade" not in headers:
            code, reason = 426, "Upgrade Required"
            responseHeaders = [("Upgrade", "websocket"), ("Connection", "close")]
        super().failHandshake(reason, code, responseHeaders)  # type: ignore[misc]


def configure(protocol: WebSocketProtocol, max_message_size: int) -> None:
    """Per-socket autobahn options (set on the protocol, so they hold whatever the factory)."""
    p: Any = protocol
    p.maxMessagePayloadSize = max_message_size
    p.maxFramePayloadSize = max_message_size
    # Past the limit, close with 1009 (message too big) rather than drop silently.
    p.failByDrop = False
    p.openHandshakeTimeout = OPEN_HANDSHAKE_TIMEOUT
    p.closeHandshakeTimeout = 1.0


def encode_request(request: OutgoingRequest, max_message_size: int) -> bytes:
    """A request's frame, ``[rid, key, payload]`` as JSON (docs/protocol.rst, *RPC over
    WebSocket*).

    Raises :class:`ValueError` for a timeout that is not positive and finite, the codec's
    error for a payload JSON cannot carry, and :class:`~grenache.errors.RequestTooLarge` past
    ``max_message_size`` bytes.
    """
    if not (request.timeout > 0 and math.isfinite(request.timeout)):
        raise ValueError(f"timeout must be positive and finite: {request.timeout!r}")
    frame = codec.json_dumps([request.rid, request.key, request.payload])
    if len(frame) > max_message_size:
        raise RequestTooLarge(f"{RequestTooLarge.wire}: {len(frame)} bytes > {max_message_size}")
    return frame


def js_truthy(value: Any) -> bool:
    """JavaScript truthiness (``[]`` and ``{}`` are true; ``0``, ``""``, ``null`` false)."""
    if value is None or value is False:
        return False
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value != 0 and not (isinstance(value, float) and math.isnan(value))
    if isinstance(value, str):
        return value != ""
    return True


def text_bytes(message: str) -> bytes:
    """UTF-8 of ``message``; lone surrogates become U+FFFD, as Node's Buffer.from does."""
    try:
        return message.encode("utf-8")
    except UnicodeEncodeError:
        return _LONE_SURROGATE.sub("\ufffd", message).encode("utf-8")


def wrong_protocol(dest: str, status_line: str) -> WrongProtocol:
    """The error for a destination that answered the upgrade as a plain HTTP service does."""
    return WrongProtocol(
        f"{DestinationUnreachable.wire}: {dest} is an HTTP service, not WebSocket (it answered "
        f"the WebSocket upgrade with {status_line.strip()!r}); use the http transport "
        "(--transport http)"
    )


def unreachable(dest: str, reason: Any, detail: str | None = None) -> DestinationUnreachable:
    """The error for a socket to ``dest`` that never opened.

    ``reason`` is what ended it (a Failure, an exception or a text); ``detail`` what autobahn
    said about the WebSocket handshake, if it got that far (e.g. a 401 from ``verify_client``).
    """
    if isinstance(reason, Failure):
        reason = reason.value
    if isinstance(reason, DestinationUnreachable):
        return reason
    if isinstance(reason, SSL.Error):
        return TLSHandshakeError(f"{DestinationUnreachable.wire}: TLS: {reason}")
    text = reason if isinstance(reason, str) else (str(reason) or type(reason).__name__)
    if detail:
        text = detail
    return DestinationUnreachable(f"{DestinationUnreachable.wire}: {dest}: {text}")


def start_closing(protocol: WebSocketProtocol, code: int | None = None) -> None:
    """Send a close frame on an open socket; drop one still opening or closing."""
    if protocol.state == WebSocketProtocol.STATE_OPEN:
        protocol.sendClose(code)
    elif protocol.state != WebSocketProtocol.STATE_CLOSED:
        protocol.dropConnection(abort=True)


def gather(waits: list[Deferred[Any]]) -> Deferred[None]:
    """Fires (with ``None``) once every one of ``waits`` has, whatever their outcome."""
    if not waits:
        return succeed(None)
    d = DeferredList(waits, consumeErrors=True)
    return d.addCallback(lambda _: None)
