"""The grape's WebSocket API (served on ``--apw``): the grape operations over one socket.

This frame format is this project's own (docs/protocol.rst, *Grape WebSocket API*). The Node
grape 1.0.0 has no WebSocket API at all; the legacy one (Grape <= 0.3.1) answered 2-element arrays
``[rid, err ? err.message : result]`` where an error was only told apart by its ``ERR_`` prefix.
This API keeps the legacy request and answers with 3 elements, ``[rid, err, result]``, like the
RPC transports, so an error can never be confused with a string result.

Frames
------

Request, one text frame (a binary frame holding UTF-8 is accepted too)::

    [rid, type, data]

``rid`` is any JSON value and is echoed untouched (clients should send UUID strings). ``type`` is
the operation (``announce``, ``lookup``, ``put``, ``get``) and ``data`` its argument, exactly as in
the HTTP API's ``{"rid", "data"}`` envelope. Any other ``type`` goes to the dispatcher as well,
which answers ``ERR_REQ_NOTFOUND``.

Reply, one text frame, compact JSON as Node writes it::

    [rid, null, result]          success (a ``None`` result, e.g. get not found: [rid,null,null])
    [rid, "<message>", null]     failure: the error's wire message, e.g. "ERR_GRAPE_LOOKUP",
                                 "No nodes to query", "302 sequence number less than current";
                                 any unexpected exception is "ERR_GRAPE_GENERIC" (and logged)

Many requests may be in flight on one socket; each reply goes out when its operation finishes,
in any order, and the client matches replies by ``rid``.

Bad frames never close the socket:

- not JSON, or not UTF-8: ``[null,"ERR_GRAPE_PAYLOAD_INVALID",null]``;
- JSON but not a 3-element array whose second element is a string:
  ``[rid,"ERR_GRAPE_PAYLOAD_INVALID",null]`` with ``rid`` the first element if there is one,
  else ``null``;
- a message larger than ``max_message_size`` bytes (the HTTP API's body limit, 8 KiB by default):
  ``[null,"ERR_GRAPE_PAYLOAD_SIZE",null]``;
- more than ``max_in_flight`` unanswered requests on the socket (256 by default):
  ``[rid,"ERR_GRAPE_BUSY",null]`` at once, without running the operation. (``ERR_GRAPE_BUSY`` is
  this API's own string; it has no class in :mod:`grenache.errors`.)

Limits: autobahn itself is told to accept messages up to :func:`hard_message_limit` (four times
``max_message_size``, at least 64 KiB), so a moderately oversize message is read, refused with
``ERR_GRAPE_PAYLOAD_SIZE`` and the socket keeps serving. A message beyond that hard limit makes
autobahn fail the connection with close code 1009 (message too big) as soon as a frame header
announces it, so no more than the hard limit is ever buffered; that is
deliberate, since such a client is not speaking this API. The same hard limit applies to replies
autobahn sends; a reply that cannot be sent is replaced by ``ERR_GRAPE_GENERIC``.

A reply whose socket has closed in the meantime is dropped; the operation itself is not
cancelled, because the dispatcher may share it with other callers (lookup coalescing).

A client that does not read its replies (or the pongs of its pings) is not read from either
once its transport's buffer is full, and is dropped once more than ``max_pending_output`` bytes
(1 MiB) wait for it or its output has not drained for ``pending_output_timeout`` seconds (30);
the opening handshake must finish within 10 seconds with a request head of at most 16 KiB
(:mod:`grenache.transports.ws.limits`, shared with the RPC server and the publisher).

A plain HTTP request (no WebSocket upgrade: an ``http://`` grape URL pointing at this port) is
answered ``426 Upgrade Required`` with ``Upgrade: websocket``, no body, and the connection
closed, so an HTTP client can say that it reached the WebSocket API rather than fail on an
HTML page.

Reactor and subclassing
-----------------------

:func:`grape_ws_factory` (or :class:`GrapeWebSocketFactory`) takes the reactor the grape runs
on: autobahn's handshake timers run on it. The factory's ``protocol`` is
:class:`GrapeWebSocketProtocol`; a subclass may override ``onConnect`` (raise autobahn's
``ConnectionDeny`` to refuse a client), ``onOpen``/``connectionLost`` (call the base method), or
:meth:`GrapeWebSocketProtocol.dispatch_request` to run operations differently.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.defer import maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from grenache import codec
from grenache.errors import GrapePayloadInvalid, GrapePayloadSize, GrenacheError
from grenache.speedups.autobahn_ws import bind_timers
from grenache.transports.ws.common import OPEN_HANDSHAKE_TIMEOUT, UpgradeRequired
from grenache.transports.ws.limits import (
    DEFAULT_MAX_PENDING_OUTPUT,
    DEFAULT_PENDING_OUTPUT_TIMEOUT,
    Limits,
    SocketLimits,
)

__all__ = [
    "ERR_GRAPE_BUSY",
    "ERR_GRAPE_GENERIC",
    "Dispatch",
    "GrapeWebSocketFactory",
    "GrapeWebSocketProtocol",
    "grape_ws_factory",
    "hard_message_limit",
]

Dispatch = Callable[[str, Any], Any]
"""``dispatch(operation, data)``: the same dispatcher the HTTP API uses.

It answers the operation's result or a Deferred that fires with it, or fails with a
:class:`~grenache.errors.GrenacheError` whose ``message`` is what goes on the wire
(``GrapeRequestNotFound`` for an unknown operation).
"""

ERR_GRAPE_BUSY = "ERR_GRAPE_BUSY"
"""Answered when a socket already has ``max_in_flight`` requests waiting for their replies."""

ERR_GRAPE_GENERIC = "ERR_GRAPE_GENERIC"
"""Answered for an unexpected exception (the old Node grape's catch-all string)."""

DEFAULT_MAX_MESSAGE_SIZE = 8192
DEFAULT_MAX_IN_FLIGHT = 256

_HARD_LIMIT_FACTOR = 4
_HARD_LIMIT_FLOOR = 64 * 1024

_PAYLOAD_INVALID = GrapePayloadInvalid.wire
_PAYLOAD_SIZE = GrapePayloadSize.wire


def hard_message_limit(max_message_size: int) -> int:
    """The size above which autobahn fails the connection (close 1009) instead of us answering.

    It is well above ``max_message_size`` so that an ordinary oversize request is answered with
    ``ERR_GRAPE_PAYLOAD_SIZE`` on a socket that stays open, and still bounded so one message can
    never make the grape buffer more than this many bytes.
    """
    return max(_HARD_LIMIT_FACTOR * max_message_size, _HARD_LIMIT_FLOOR)


def _wire_error(failure: Failure, log: Logger, operation: str) -> str:
    """The wire string for a failed operation; unexpected exceptions are logged with traceback."""
    if failure.check(GrenacheError):
        error = failure.value
        assert isinstance(error, GrenacheError)
        return error.message
    log.failure("grape WS API: {operation} failed unexpectedly", failure, operation=operation)
    return ERR_GRAPE_GENERIC


class GrapeWebSocketProtocol(  # type: ignore[misc]
    UpgradeRequired, SocketLimits, WebSocketServerProtocol
):
    """One client socket: parses request frames, runs them concurrently, answers each by rid."""

    log = Logger()

    #: requests dispatched on this socket and not yet answered
    in_flight: int = 0

    @property
    def _grape_factory(self) -> GrapeWebSocketFactory:
        """The factory, with its grape attributes visible to the type checker."""
        factory = self.factory
        assert isinstance(factory, GrapeWebSocketFactory)
        return factory

    def onOpen(self) -> None:
        """Start with no request in flight."""
        self.in_flight = 0

    def connectionMade(self) -> None:
        """Count the socket among the factory's connections (the output bound and shutdown
        see it), then let autobahn start the handshake."""
        self._grape_factory.connections.add(self)
        super().connectionMade()
        self.limit_output(self._grape_factory.limits)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Cancel the output deadline and forget the socket."""
        self._cancel_output_deadline()
        self._grape_factory.connections.discard(self)
        super().connectionLost(reason)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """Answer a bad frame at once, or dispatch the request and answer when it finishes."""
        factory = self._grape_factory
        if len(payload) > factory.max_message_size:
            self._send_reply([None, _PAYLOAD_SIZE, None])
            return
        try:
            # json_loads decodes UTF-8 itself (UnicodeDecodeError is a ValueError); deep nesting
            # raises RecursionError, which is a bad payload too, not a server error.
            message = codec.json_loads(payload)
        except (ValueError, RecursionError):
            self._send_reply([None, _PAYLOAD_INVALID, None])
            return
        if not (isinstance(message, list) and len(message) == 3 and isinstance(message[1], str)):
            rid = message[0] if isinstance(message, list) and message else None
            self._send_reply([rid, _PAYLOAD_INVALID, None])
            return
        rid, operation, data = message
        if self.in_flight >= factory.max_in_flight:
            self._send_reply([rid, ERR_GRAPE_BUSY, None])
            return
        self.in_flight += 1
        d = maybeDeferred(self.dispatch_request, operation, data)
        d.addBoth(self._finished, rid, operation)

    def dispatch_request(self, operation: str, data: Any) -> Any:
        """Run one operation: its result, a Deferred, or a GrenacheError for an error reply.

        The factory's dispatcher by default (the one the HTTP API uses).
        """
        return self._grape_factory.dispatch(operation, data)

    def _finished(self, outcome: Any, rid: Any, operation: str) -> None:
        """Turn an operation's result or failure into its reply frame and send it."""
        self.in_flight -= 1
        if isinstance(outcome, Failure):
            self._send_reply([rid, _wire_error(outcome, self.log, operation), None])
        else:
            self._send_reply([rid, None, outcome])

    def _send_reply(self, reply: list[Any]) -> None:
        """Send one reply frame; drop it quietly if the socket is no longer open.

        A result that cannot be encoded as JSON, or whose frame is over the hard limit, is a
        server bug: it is logged and the client gets ``ERR_GRAPE_GENERIC`` for that rid instead
        (and ``null`` as rid if even the rid cannot be encoded, e.g. a lone surrogate).
        """
        if self.state != WebSocketProtocol.STATE_OPEN:
            self.log.debug(
                "grape WS API: socket closed, reply for rid {rid!r} dropped",
                rid=reply[0],
            )
            return
        rid = reply[0]
        for candidate in (
            reply,
            [rid, ERR_GRAPE_GENERIC, None],
            [None, ERR_GRAPE_GENERIC, None],
        ):
            try:
                frame = codec.json_dumps(candidate)
                if len(frame) > self._grape_factory.hard_limit:
                    raise ValueError(
                        f"reply of {len(frame)} bytes exceeds the WebSocket message limit"
                    )
            except (TypeError, ValueError, RecursionError):
                self.log.failure("grape WS API: cannot send the reply for rid {rid!r}", rid=rid)
                continue
            blocked = self.output_blocked
            self.sendMessage(frame, isBinary=False)
            if blocked:
                self.count_output(len(frame))
            return


class GrapeWebSocketFactory(WebSocketServerFactory):
    """Builds :class:`GrapeWebSocketProtocol` sockets sharing one dispatcher and its limits.

    ``reactor`` runs autobahn's handshake timers and the output deadlines (autobahn falls
    back to the global reactor when it is ``None``; the grape passes its own).
    ``max_pending_output`` and ``pending_output_timeout`` bound what a client that does not
    read can make the grape hold (``limits.dropped`` counts the sockets dropped for it).
    """

    protocol = GrapeWebSocketProtocol

    def __init__(
        self,
        dispatch: Dispatch,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        url: str | None = None,
        reactor: IReactorTime | None = None,
        max_pending_output: int = DEFAULT_MAX_PENDING_OUTPUT,
        pending_output_timeout: float = DEFAULT_PENDING_OUTPUT_TIMEOUT,
    ) -> None:
        if max_message_size < 1:
            raise ValueError("max_message_size must be positive")
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be positive")
        super().__init__(url=url, reactor=reactor)
        if reactor is not None:
            bind_timers(self, reactor)
        self.limits = Limits(
            reactor if reactor is not None else self.reactor,
            "grape WebSocket API",
            max_pending_output=max_pending_output,
            pending_output_timeout=pending_output_timeout,
        )
        self.dispatch = dispatch
        self.connections: set[GrapeWebSocketProtocol] = set()
        self.max_message_size = max_message_size
        self.max_in_flight = max_in_flight
        self.hard_limit = hard_message_limit(max_message_size)
        self.setProtocolOptions(
            maxMessagePayloadSize=self.hard_limit,
            maxFramePayloadSize=self.hard_limit,
            # Invalid UTF-8 in a text frame would make autobahn fail the connection (1007);
            # this API answers ERR_GRAPE_PAYLOAD_INVALID and keeps the socket, so decoding is
            # done (and refused) in onMessage instead.
            utf8validateIncoming=False,
            # Past the hard limit, send a 1009 close frame (and then drop) rather than drop the
            # TCP connection silently, so the client learns why.
            failByDrop=False,
            # A request without an upgrade gets 426 Upgrade Required, not an HTML status page.
            webStatus=False,
            openHandshakeTimeout=OPEN_HANDSHAKE_TIMEOUT,
            closeHandshakeTimeout=1.0,
        )

    def closeConnections(self) -> None:
        """Drop every open socket, e.g. when the grape stops (stopping the port does not)."""
        for proto in list(self.connections):
            if proto.transport is not None:
                proto.transport.abortConnection()


def grape_ws_factory(
    dispatch: Dispatch,
    *,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    url: str | None = None,
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    reactor: IReactorTime | None = None,
    max_pending_output: int = DEFAULT_MAX_PENDING_OUTPUT,
    pending_output_timeout: float = DEFAULT_PENDING_OUTPUT_TIMEOUT,
) -> GrapeWebSocketFactory:
    """The factory for the grape's WebSocket API, to listen on with any stream endpoint.

    ``dispatch`` runs one operation (the HTTP API's dispatcher); ``max_message_size`` is the
    request size limit (the grape's ``--check_maxPayloadSize``); ``url`` is the public
    ``ws://host:port`` when the handshake should check it; ``max_in_flight`` bounds unanswered
    requests per socket; ``reactor`` is the one autobahn schedules its timeouts on (pass the
    grape's; when ``None`` autobahn itself picks the global one); ``max_pending_output`` and
    ``pending_output_timeout`` bound a client that does not read (see the module docstring).
    """
    return GrapeWebSocketFactory(
        dispatch,
        max_message_size=max_message_size,
        max_in_flight=max_in_flight,
        url=url,
        reactor=reactor,
        max_pending_output=max_pending_output,
        pending_output_timeout=pending_output_timeout,
    )
