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
  answered with what it returns (an exception becomes the reply's error string); by default
  the transport's ``serve``.
"""

from __future__ import annotations

from collections.abc import Callable
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
from grenache.peer import Request, error_message
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
from grenache.transports.ws.listening import ListeningTransport, ServerFactory

__all__ = ["RPCServerFactory", "RPCServerProtocol", "Serve", "WSServerTransport"]

log = Logger()

Serve = Callable[[Request], "Deferred[Any]"]

_REQUEST_PARSE = RequestParseError.wire


class RPCServerProtocol(UpgradeRequired, FastPath, WebSocketServerProtocol):  # type: ignore[misc]
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
        self._paused = False
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
        owner: WSServerTransport = self.factory.owner
        self._owner = owner
        configure(self, owner.max_message_size)
        # Invalid UTF-8 is answered with ERR_REQUEST_PARSE, not failed with 1007.
        self.utf8validateIncoming = False
        super().connectionMade()
        owner._sockets.add(self)

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
        owner = self._owner
        self.last_activity = owner._clock.seconds()
        owner._sweeper.due(self.last_activity + owner.idle_timeout)
        self.socket_opened()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        owner = self._owner
        self.last_activity = owner._clock.seconds()
        try:
            message = codec.json_loads(payload)
        except (ValueError, RecursionError):
            self._reply([None, _REQUEST_PARSE, None])
            return
        if not isinstance(message, list) or len(message) < 2 or not isinstance(message[1], str):
            rid = message[0] if isinstance(message, list) and message else None
            self._reply([rid, _REQUEST_PARSE, None])
            return
        rid, key = message[0], message[1]
        payload_value = message[2] if len(message) > 2 else None
        request = Request(rid, key, payload_value, self.fingerprint, self.certificate_der)
        self.in_flight += 1
        if self.in_flight >= owner.max_in_flight and not self._paused:
            self._paused = True
            self.transport.pauseProducing()  # type: ignore[union-attr]
        maybeDeferred(self.request_received, request).addBoth(self._finished, rid)

    def _finished(self, outcome: Any, rid: Any) -> None:
        self.in_flight -= 1
        owner = self._owner
        if not self.in_flight:
            owner._sweeper.due(owner._clock.seconds() + owner.idle_timeout)
        if self._paused and self.in_flight < owner.max_in_flight:
            self._paused = False
            if self.transport is not None:
                self.transport.resumeProducing()
        if isinstance(outcome, Failure):
            self._reply([rid, error_message(outcome), None])
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
        self.send_text(frame)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        super().connectionLost(reason)
        self._owner._sockets.discard(self)
        if not self.gone.called:
            self.gone.callback(None)
            try:
                self.socket_closed(reason)
            except Exception:
                log.failure("socket_closed failed")


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
    ``max_in_flight`` requests is not read from until one finishes. ``factory_class``
    replaces the class attribute of the same name (an :class:`RPCServerFactory` subclass).
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
        interface: str = "",
        factory_class: type[RPCServerFactory] | None = None,
    ) -> None:
        if max_message_size < 1 or max_in_flight < 1 or not idle_timeout > 0:
            raise ValueError("limits and idle_timeout must be positive")
        self._reactor = reactor
        self._clock: Any = reactor
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
