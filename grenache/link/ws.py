"""The client of this project's grape WebSocket API (docs/protocol.rst, *Grape WebSocket API*):
one socket, frames ``[rid, type, data]`` answered by ``[rid, err, result]``, many requests in
flight matched by rid. The socket connects through
:func:`grenache.endpoints.client_endpoint`, so host names and IPv6 literals
(``ws://[::1]:30002``) work."""

from __future__ import annotations

import uuid
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.util import parse_url
from twisted.internet.base import DelayedCall
from twisted.internet.defer import Deferred, DeferredList, fail, maybeDeferred, succeed
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from grenache.codec import json_dumps, json_loads
from grenache.endpoints import client_endpoint
from grenache.errors import GrapeReplyError, GrapeUnreachable, GrapeWrongAPI, TransportClosed
from grenache.link.client import other_api_url
from grenache.link.results import text_of

__all__ = ["EndpointAgent", "WSGrapeClient"]

log = Logger()

#: How long :meth:`WSGrapeClient.close` waits for the grape to complete the WebSocket close
#: handshake before it drops the connection.
CLOSE_TIMEOUT = 1.0


class EndpointAgent:
    """Opens WebSockets through :func:`grenache.endpoints.client_endpoint` (the shape of
    autobahn's ``IWebSocketClientAgent``: ``open(url, options, protocol_class)``, firing with
    the protocol once the handshake completed)."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor

    def open(self, url: str, options: dict[str, Any], protocol_class: Any) -> Deferred[Any]:
        """Connect to the WebSocket at ``url`` (over TLS, checked against the host name, for
        ``wss://``) with an autobahn client factory made from ``options``; fires with the
        ``protocol_class`` instance once the opening handshake completed.
        """
        secure, host, port, _resource, _path, _params = parse_url(url)
        if secure:
            from twisted.internet.ssl import optionsForClientTLS

            tls: Any = optionsForClientTLS(host)
        else:
            tls = None
        factory = WebSocketClientFactory(url=url, reactor=self.reactor, **options)
        if ":" in host:
            factory.host = f"[{host}]"  # the Host header of an IPv6 literal
        factory.protocol = protocol_class
        endpoint: Any = client_endpoint(self.reactor, host, port, tls=tls)
        d = endpoint.connect(factory)
        return d.addCallback(lambda proto: proto.is_open.addCallback(lambda _: proto))


class WSGrapeClient:
    """A :class:`~grenache.link.client.GrapeClient` for ``ws://`` and ``wss://`` URLs.

    One socket carries every request; it is opened by the first request and again after it
    closes. A connection attempt that has not opened within ``attempt_timeout`` seconds is given
    up when the next request comes (a grape that accepts nothing would otherwise hold requests
    until the TCP timeout); the requests queued on it, never sent, move to the new attempt.
    ``agent`` replaces the connecting agent (e.g. ``autobahn.twisted.testing``'s memory agent).
    """

    def __init__(
        self, url: str, reactor: Any, *, attempt_timeout: float, agent: Any = None
    ) -> None:
        self.url = url
        self.reactor = reactor
        self.attempt_timeout = attempt_timeout
        self.agent: Any = agent if agent is not None else EndpointAgent(reactor)
        self._connection: _WSConnection | None = None
        self._closing: list[Deferred[Any]] = []

    def request(self, type_: str, payload: Any) -> Deferred[Any]:
        """Send the frame on the socket, opening one if there is none (or giving up an attempt older
        than ``attempt_timeout``); fires with the result matched by rid (see :class:`GrapeClient
        <grenache.link.client.GrapeClient>` for the failures).
        """
        connection = self._connection
        if connection is not None and not connection.closed:
            waited = self.reactor.seconds() - connection.started
            if connection.is_open or waited < self.attempt_timeout:
                return connection.request(type_, payload)
            stale = connection
            connection = self._connection = _WSConnection(self)
            stale.hand_over(connection)
            self._close_connection(stale)
        else:
            connection = self._connection = _WSConnection(self)
        d = connection.request(type_, payload)
        connection.connect(self.agent)
        return d

    def close(self) -> Deferred[None]:
        """Close the socket (and attempts still closing); fires once they are gone."""
        if self._connection is not None:
            connection, self._connection = self._connection, None
            self._close_connection(connection)
        waits, self._closing = self._closing, []
        if not waits:
            return succeed(None)
        return DeferredList(waits, consumeErrors=True).addCallback(lambda _: None)

    def _close_connection(self, connection: _WSConnection) -> None:
        closed = connection.close()
        if not closed.called:
            self._closing.append(closed)
            closed.addBoth(
                lambda _: self._closing.remove(closed) if closed in self._closing else None
            )

    def _cancelled(self, rid: str) -> None:
        if self._connection is not None:
            self._connection.forget(rid)

    def _finished(self, connection: _WSConnection) -> None:
        if self._connection is connection:
            self._connection = None


class _GrapeWSProtocol(WebSocketClientProtocol):
    """The client end of the grape WebSocket API; reports everything to its connection."""

    def __init__(self, connection: _WSConnection) -> None:
        super().__init__()
        self.connection = connection

    def connectionMade(self) -> None:
        super().connectionMade()
        self.connection.made(self)

    def onOpen(self) -> None:
        self.connection.opened()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.connection.received(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        # autobahn keeps the status line of the handshake response: anything but 101 is an
        # HTTP server that is not a WebSocket one.
        status_line = getattr(self, "http_status_line", None) or ""
        parts = status_line.split()
        if len(parts) >= 2 and parts[1].isdigit() and parts[1] != "101":
            self.connection.wrong_api(int(parts[1]))
        else:
            self.connection.closing(f"code {code}" + (f": {reason}" if reason else ""))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self.connection.lost(reason)


class _WSConnection:
    """One WebSocket to the grape: many requests in flight, matched by rid.

    Requests made before the handshake completes are queued and sent on open. When the socket
    closes, every request on it fails at once with TransportClosed (GrapeUnreachable if it
    never opened); the client opens a new socket for the next request.
    """

    def __init__(self, client: WSGrapeClient) -> None:
        self.client = client
        self.url = client.url
        self.started: float = client.reactor.seconds()
        self.protocol: _GrapeWSProtocol | None = None
        self.is_open = False
        self.closed = False
        self.abandoned = False
        self.error: Exception = TransportClosed()
        self.pending: dict[str, Deferred[Any]] = {}
        self.queue: list[tuple[str, bytes]] = []
        #: fires when the attempt is over: connection failed or lost
        self.done: Deferred[None] = Deferred()
        self._close_timer: DelayedCall | None = None

    def connect(self, agent: Any) -> None:
        d = maybeDeferred(agent.open, self.url, {}, protocol_class=lambda: _GrapeWSProtocol(self))
        d.addErrback(self._connect_failed)

    def _connect_failed(self, failure: Failure) -> None:
        if self.protocol is None:
            reason = failure.getErrorMessage() or type(failure.value).__name__
            self._end(GrapeUnreachable(f"{GrapeUnreachable.wire}: {self.url}: {reason}"))
            self._finished()

    # requests

    def request(self, type_: str, payload: Any) -> Deferred[Any]:
        if self.closed:
            return fail(self.error)
        rid = str(uuid.uuid4())
        frame = json_dumps([rid, type_, payload])

        d: Deferred[Any] = Deferred(lambda _: self.client._cancelled(rid))
        self.pending[rid] = d
        if self.is_open:
            self._send(rid, frame)
        else:
            self.queue.append((rid, frame))
        return d

    def forget(self, rid: str) -> None:
        """Drop a request: a reply for it will be ignored, and it is not sent if queued."""
        self.pending.pop(rid, None)
        self.queue = [(r, f) for r, f in self.queue if r != rid]

    def hand_over(self, other: _WSConnection) -> None:
        """Move the requests queued here (never sent) to ``other``."""
        for rid, frame in self.queue:
            d = self.pending.pop(rid, None)
            if d is not None:
                other.pending[rid] = d
                other.queue.append((rid, frame))
        self.queue = []

    def _send(self, rid: str, frame: bytes) -> None:
        assert self.protocol is not None
        try:
            self.protocol.sendMessage(frame, isBinary=False)
        except Exception as error:
            d = self.pending.pop(rid, None)
            if d is not None:
                d.errback(TransportClosed(f"{TransportClosed.wire}: {error}"))

    # protocol events

    def made(self, protocol: _GrapeWSProtocol) -> None:
        self.protocol = protocol
        if self.abandoned:
            protocol.dropConnection(abort=True)

    def opened(self) -> None:
        if self.abandoned or self.closed:
            return
        self.is_open = True
        queue, self.queue = self.queue, []
        for rid, frame in queue:
            self._send(rid, frame)

    def received(self, payload: bytes) -> None:
        try:
            message = json_loads(payload)
        except (ValueError, RecursionError):
            log.warn("grape WS API sent a frame that is not JSON: {frame!r}", frame=payload[:200])
            return
        if not (isinstance(message, list) and len(message) == 3):
            log.warn("grape WS API sent an unexpected frame: {frame!r}", frame=payload[:200])
            return
        rid, err, result = message
        d = self.pending.pop(rid, None) if isinstance(rid, str) else None
        if d is None:
            if rid is not None:
                log.debug("grape WS API reply for unknown rid {rid!r} dropped", rid=rid)
            else:
                log.warn("grape WS API answered {err!r} to a frame it could not read", err=err)
            return
        if err is not None:
            d.errback(GrapeReplyError(text_of(err), None))
        else:
            d.callback(result)

    def wrong_api(self, status: int) -> None:
        if not self.closed:
            self._end(
                GrapeWrongAPI(
                    f"{GrapeWrongAPI.wire}: {self.url} is the grape's HTTP API (it answered the"
                    f" WebSocket handshake with HTTP {status}); use {other_api_url(self.url)}"
                )
            )

    def closing(self, why: str) -> None:
        if self.closed:
            return
        if self.is_open:
            self._end(TransportClosed(f"{TransportClosed.wire}: WebSocket closed ({why})"))
        else:
            self._end(
                GrapeUnreachable(
                    f"{GrapeUnreachable.wire}: {self.url}: WebSocket closed before the"
                    f" handshake completed ({why})"
                )
            )

    def lost(self, reason: Failure) -> None:
        self.closing(reason.getErrorMessage() or type(reason.value).__name__)
        self._finished()

    def _end(self, error: Exception) -> None:
        """Fail every request on this socket; no new request will use it."""
        self.closed = True
        self.error = error
        self.is_open = False
        self.client._finished(self)
        pending, self.pending = self.pending, {}
        self.queue = []
        for d in pending.values():
            d.errback(error)

    def _finished(self) -> None:
        if self._close_timer is not None and self._close_timer.active():
            self._close_timer.cancel()
        self._close_timer = None
        if not self.done.called:
            self.done.callback(None)

    def close(self) -> Deferred[None]:
        """Close the socket (handshake, then a drop after a second); fires once it is gone."""
        self.abandoned = True
        if not self.closed:
            self._end(TransportClosed())
        follower: Deferred[None] = Deferred()
        self.done.addBoth(lambda _: follower.callback(None))
        protocol = self.protocol
        if protocol is not None and not self.done.called:
            if protocol.state == WebSocketProtocol.STATE_OPEN:
                protocol.sendClose(code=1000)
                self._close_timer = self.client.reactor.callLater(
                    CLOSE_TIMEOUT, protocol.dropConnection, True
                )
            else:
                protocol.dropConnection(abort=True)
        return follower
