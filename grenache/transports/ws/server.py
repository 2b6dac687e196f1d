"""The server side of RPC over WebSocket: :class:`WSServerTransport` and its protocol.

Each client socket is an :class:`RPCServerProtocol`, built by the transport's
:class:`RPCServerFactory` (``WSServerTransport.factory_class``). The frames are those of
docs/protocol.rst, *RPC over WebSocket*: ``[rid, key, payload]`` in, ``[rid, err, result]`` out,
one text frame each, any number in flight on a socket.

Override points of :class:`RPCServerProtocol` (subclass it, subclass the factory with
``protocol = YourProtocol``, and pass ``factory_class=YourFactory`` to the transport):

- :meth:`~RPCServerProtocol.accept_client` ``(request) -> bool``: whether a client may open
  its socket, after the TLS certificate check (``request`` is autobahn's
  ``ConnectionRequest``: headers, peer, path); false refuses with HTTP 403, and raising
  autobahn's ``ConnectionDeny`` refuses with any status;
- :meth:`~RPCServerProtocol.socket_opened` and :meth:`~RPCServerProtocol.socket_closed`: the
  socket is open, the socket is gone;
- :meth:`~RPCServerProtocol.request_received` ``(request) -> value | Deferred``: one request,
  answered with what it returns (an exception becomes the reply's error string, a
  :class:`~grenache.peer.Reply` sends its error and result together); by default the
  transport's ``serve``.

A request's :attr:`~grenache.peer.Request.meta` is empty: Node's WebSocket server gives its
handlers nothing beyond rid, key, payload and the client certificate
(:attr:`~grenache.peer.Request.peer_certificate`). The socket's bounds (output a client does
not read, the opening handshake) are those of :mod:`grenache.transports.ws.limits`.
"""

from __future__ import annotations

from collections.abc import Callable
from types import MappingProxyType
from typing import Any

from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from grenache import codec
from grenache.endpoints import ListenSpec
from grenache.errors import RequestParseError
from grenache.peer import Reply, Request, error_message
from grenache.speedups.autobahn_ws import FastPath
from grenache.timers import DeadlineTimer
from grenache.tls import peer_certificate
from grenache.transports.ws.certificates import VerifyClient, server_tls
from grenache.transports.ws.common import (
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MAX_MESSAGE_SIZE,
    UpgradeRequired,
    configure,
)
from grenache.transports.ws.limits import (
    DEFAULT_MAX_PENDING_OUTPUT,
    DEFAULT_PENDING_OUTPUT_TIMEOUT,
    HOLD_IN_FLIGHT,
    Limits,
    SocketLimits,
)
from grenache.transports.ws.listening import ListeningTransport, ServerFactory, socket_gone

__all__ = ["RPCServerFactory", "RPCServerProtocol", "Serve", "WSServerTransport"]

log = Logger()

Serve = Callable[[Request], "Deferred[Any]"]

OnRequestError = Callable[[bytes], Any]
"""``on_request_error(message)``: told of each unparseable request (the message's bytes)."""

_REQUEST_PARSE = RequestParseError.wire

_NO_META: MappingProxyType[str, Any] = MappingProxyType({})
"""The meta of every WebSocket request (shared: nothing is allocated per request)."""


class RPCServerProtocol(  # type: ignore[misc]
    UpgradeRequired, SocketLimits, FastPath, WebSocketServerProtocol
):
    """One client socket of a :class:`WSServerTransport` (see the module's override points).

    ``self.factory.owner`` is the transport. ``fingerprint`` and ``certificate_der`` are the
    client certificate's (``None`` without one), known from :meth:`onConnect` on.
    """

    def __init__(self) -> None:
        super().__init__()
        self.in_flight = 0
        self.last_activity = 0.0
        self.fingerprint: str | None = None
        self.certificate_der: bytes | None = None
        self.gone: Deferred[None] = Deferred()

    # --- override points ---------------------------------------------------------------------

    def accept_client(self, request: ConnectionRequest) -> bool:
        """Whether this client may open its socket (false: HTTP 403). Accepts everyone."""
        return True

    def socket_opened(self) -> None:
        """The WebSocket is open (after the handshake). Does nothing."""

    def socket_closed(self, reason: Failure) -> None:
        """The socket is gone (``reason`` says how). Does nothing."""

    def request_received(self, request: Request) -> Any:
        """Serve one request: its result, a Deferred, or an exception for an error reply."""
        serve = self._owner._serve
        assert serve is not None
        return serve(request)

    # --- autobahn callbacks ------------------------------------------------------------------

    def connectionMade(self) -> None:
        """Apply the transport's limits to the socket (invalid UTF-8 is answered
        ``ERR_REQUEST_PARSE``, not closed with 1007), count it among the transport's sockets and
        bound its output.
        """
        owner: WSServerTransport = self.factory.owner
        self._owner = owner
        configure(self, owner.max_message_size)
        # Invalid UTF-8 is answered with ERR_REQUEST_PARSE, not failed with 1007.
        self.utf8validateIncoming = False
        super().connectionMade()
        owner._sockets.add(self)
        self.limit_output(owner.limits)

    def onConnect(self, request: ConnectionRequest) -> None:
        """Read the client certificate; ``verify_client`` (401) and :meth:`accept_client`
        (403) may refuse the socket."""
        self.fingerprint, self.certificate_der = peer_certificate(self.transport) or (None, None)
        verify = self._owner.verify_client
        if verify is not None:
            try:
                allowed = verify(self.fingerprint)
            except Exception:
                log.failure("verify_client raised; refusing the client")
                allowed = False
            if not allowed:
                log.info(
                    "WebSocket client {peer} refused (certificate {fingerprint})",
                    peer=request.peer,
                    fingerprint=self.fingerprint,
                )
                raise ConnectionDeny(401, "Forbidden")
        if not self.accept_client(request):
            raise ConnectionDeny(403, "Forbidden")

    def onOpen(self) -> None:
        """Start the socket's idle clock and call :meth:`socket_opened`."""
        owner = self._owner
        self.last_activity = owner._clock.seconds()
        owner._sweeper.due(self.last_activity + owner.idle_timeout)
        self.socket_opened()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """One request frame: run it through :meth:`request_received` and answer
        ``[rid, err, result]`` when it ends; an unparseable frame is answered ``ERR_REQUEST_PARSE``.
        Reading pauses while ``max_in_flight`` requests run.
        """
        owner = self._owner
        self.last_activity = owner._clock.seconds()
        try:
            message = codec.json_loads(payload)
        except (ValueError, RecursionError):
            self._unparseable(payload, None)
            return
        if not isinstance(message, list) or len(message) < 2 or not isinstance(message[1], str):
            rid = message[0] if isinstance(message, list) and message else None
            self._unparseable(payload, rid)
            return
        rid, key = message[0], message[1]
        payload_value = message[2] if len(message) > 2 else None
        request = Request(rid, key, payload_value, self.fingerprint, self.certificate_der, _NO_META)
        self.in_flight += 1
        if self.in_flight >= owner.max_in_flight:
            self.hold_reading(HOLD_IN_FLIGHT)
        maybeDeferred(self.request_received, request).addBoth(self._finished, rid)

    def _unparseable(self, payload: bytes, rid: Any) -> None:
        """Answer ``ERR_REQUEST_PARSE`` after telling ``on_request_error``, if there is one."""
        hook = self._owner.on_request_error
        if hook is not None:
            try:
                hook(payload)
            except Exception:
                self._owner._hook_failed()
        self._reply([rid, _REQUEST_PARSE, None])

    def _finished(self, outcome: Any, rid: Any) -> None:
        self.in_flight -= 1
        owner = self._owner
        if not self.in_flight:
            owner._sweeper.due(owner._clock.seconds() + owner.idle_timeout)
        if self._reading_holds and self.in_flight < owner.max_in_flight:
            self.release_reading(HOLD_IN_FLIGHT)
        if isinstance(outcome, Failure):
            self._reply([rid, error_message(outcome), None])
        elif isinstance(outcome, Reply):
            error = outcome.error
            if isinstance(error, BaseException):
                error = error_message(error)
            self._reply([rid, error, outcome.result])
        else:
            self._reply([rid, None, outcome])

    def _reply(self, reply: list[Any]) -> None:
        """Send one reply; drop it if the socket is gone; an unencodable result is an error."""
        if self.state != WebSocketProtocol.STATE_OPEN:
            log.debug("WebSocket reply for rid {rid!r} dropped: socket closed", rid=reply[0])
            return
        self.last_activity = self._owner._clock.seconds()
        try:
            frame = codec.json_dumps(reply)
        except (TypeError, ValueError, RecursionError) as e:
            log.failure("cannot encode the reply for rid {rid!r}", rid=reply[0])
            frame = codec.json_dumps([reply[0], error_message(e), None])
        if self.output_blocked:
            self.send_text(frame)
            self.count_output(len(frame))
        else:
            self.send_text(frame)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        """Forget the socket and its output deadline; fire ``gone``, call :meth:`socket_closed`."""
        self._cancel_output_deadline()
        super().connectionLost(reason)
        self._owner._sockets.discard(self)
        socket_gone(self, reason)


class RPCServerFactory(ServerFactory):
    """Builds the :class:`RPCServerProtocol` of each client socket of a
    :class:`WSServerTransport` (``owner``); set ``protocol`` to a subclass to change it."""

    protocol = RPCServerProtocol


class WSServerTransport(ListeningTransport):
    """The server side of WebSocket RPC (:class:`~grenache.peer.ServerTransport`).

    ``reactor`` provides listening and the clock. :meth:`listen` takes a port number (bound to
    ``interface``: all IPv4 addresses by default, like Node), an endpoint description or an
    endpoint. ``tls`` makes it ``wss`` (see :mod:`grenache.transports.ws`); ``verify_client``
    is called with each client's certificate fingerprint (or ``None``: no certificate, or no
    TLS) and refuses the socket with HTTP 401 when it returns false. Sockets with no request
    running are closed after ``idle_timeout`` seconds without traffic. Messages above
    ``max_message_size`` bytes close the socket (code 1009). A socket running
    ``max_in_flight`` requests is not read from until one finishes. A socket whose client
    does not read its replies stops being read from, and is dropped once more than
    ``max_pending_output`` bytes wait for it or its output has not drained for
    ``pending_output_timeout`` seconds (:mod:`grenache.transports.ws.limits`; ``limits.dropped``
    counts them). ``on_request_error`` is called with each unparseable message, as Node's
    ``request-error`` event is emitted; the message is answered ``ERR_REQUEST_PARSE`` all the
    same. ``factory_class`` replaces the class attribute of the same name (an
    :class:`RPCServerFactory` subclass).
    """

    factory_class: type[RPCServerFactory] = RPCServerFactory

    def __init__(
        self,
        reactor: Any,
        *,
        tls: Any = None,
        verify_client: VerifyClient | None = None,
        idle_timeout: float = 300.0,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        max_pending_output: int = DEFAULT_MAX_PENDING_OUTPUT,
        pending_output_timeout: float = DEFAULT_PENDING_OUTPUT_TIMEOUT,
        on_request_error: OnRequestError | None = None,
        interface: str = "",
        factory_class: type[RPCServerFactory] | None = None,
    ) -> None:
        if max_message_size < 1 or max_in_flight < 1 or not idle_timeout > 0:
            raise ValueError("limits and idle_timeout must be positive")
        self._reactor = reactor
        self._clock: Any = reactor
        self.limits = Limits(
            reactor,
            "WebSocket RPC server",
            max_pending_output=max_pending_output,
            pending_output_timeout=pending_output_timeout,
        )
        self.on_request_error = on_request_error
        self._hook_failures = 0
        self.tls = server_tls(tls) if tls is not None else None
        self.verify_client = verify_client
        self.idle_timeout = idle_timeout
        self.max_message_size = max_message_size
        self.max_in_flight = max_in_flight
        self.interface = interface
        self._serve: Serve | None = None
        self._port: Any = None
        self._sockets: set[RPCServerProtocol] = set()
        self._sweeper = DeadlineTimer(self._clock, self._sweep)
        if factory_class is not None:
            self.factory_class = factory_class
        self.factory: RPCServerFactory = self.factory_class(self, reactor=reactor)

    def listen(self, where: ListenSpec, serve: Serve) -> Deferred[int]:
        """Listen on ``where`` (a port, 0 for any; an endpoint description; an endpoint) and
        serve each request with ``serve``; fires with the bound port (0 for a UNIX socket)."""
        if self._port is not None:
            return fail(RuntimeError("WSServerTransport is already listening"))
        self._serve = serve
        return self._listen(where, "WebSocket RPC server")

    @property
    def sockets(self) -> int:
        """How many client sockets are open."""
        return len(self._sockets)

    def _hook_failed(self) -> None:
        # Logged once with its traceback, then counted: a hook failing on every bad
        # message must not write a traceback per message.
        self._hook_failures += 1
        if self._hook_failures == 1:
            log.failure("on_request_error raised (later failures are counted, not logged)")

    def _sweep(self, now: float) -> float | None:
        nxt: float | None = None
        for protocol in list(self._sockets):
            if protocol.in_flight or protocol.state != WebSocketProtocol.STATE_OPEN:
                continue
            idle_at = protocol.last_activity + self.idle_timeout
            if idle_at <= now:
                log.debug("closing idle WebSocket client {peer}", peer=protocol.peer)
                protocol.sendClose(1000)
            elif nxt is None or idle_at < nxt:
                nxt = idle_at
        return nxt

    def stop(self) -> Deferred[None]:
        """Stop listening and close every client socket; fires once all are gone."""
        self._sweeper.cancel()
        return self._stop_listening(self._sockets)
