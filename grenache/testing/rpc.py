"""In-memory RPC transports: :class:`MemoryServerTransport` and :class:`MemoryClientTransport`.

They implement :class:`~grenache.peer.ServerTransport` and :class:`~grenache.peer.ClientTransport`
on a :class:`~grenache.testing.MemoryNetwork`: no socket, no real time. What crosses the
network is what crosses a WebSocket (docs/protocol.rst, *RPC over WebSocket*): the request
``[rid, key, payload]`` and the reply ``[rid, err, result]`` as JSON text written by
:func:`grenache.codec.json_dumps` and read by :func:`grenache.codec.json_loads`, so a payload or
a result that cannot travel fails here as it fails on the wire, and errors map as they do
there: a handler's exception becomes :class:`~grenache.errors.RemoteError` with its message, a
:class:`~grenache.peer.Reply` a RemoteError whose ``result`` is the reply's result.

Requests are delivered at once (the handler runs inside ``request``); a reply comes as soon as
the handler's outcome is known. Each request has a timer on the network's clock: with no
reply within the request's timeout it fails with :class:`~grenache.errors.RequestTimeout`.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from twisted.internet.base import DelayedCall
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python.failure import Failure

from grenache import codec
from grenache.endpoints import ListenSpec
from grenache.errors import (
    RemoteError,
    RequestTimeout,
    RequestTooLarge,
    TransportClosed,
)
from grenache.peer.request import OutgoingRequest, Reply, Request, error_message
from grenache.transports.ws.common import DEFAULT_MAX_MESSAGE_SIZE, encode_request, js_truthy

if TYPE_CHECKING:
    from collections.abc import Callable

    from grenache.testing.network import MemoryNetwork

__all__ = ["MemoryClientTransport", "MemoryServerTransport"]

log = Logger()

_NO_META: MappingProxyType[str, Any] = MappingProxyType({})


def listen_port(where: ListenSpec) -> int:
    """The port of a :data:`~grenache.endpoints.ListenSpec` the memory network can bind: a
    number, its text, or ``tcp:N`` (0 for any free port). ValueError for anything else."""
    port: int | None = None
    if isinstance(where, int) and not isinstance(where, bool):
        port = where
    elif isinstance(where, str):
        text = where.strip()
        if text.lower().startswith("tcp:"):
            text = text[4:].split(":")[0]
        if text.isdigit():
            port = int(text)
    if port is None:
        raise ValueError(
            f"the in-memory network listens on a port number (or 'tcp:N'), not {where!r}"
        )
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is not between 0 and 65535")
    return port


class Exchange:
    """One request in flight from a :class:`MemoryClientTransport` to a destination: the
    caller's Deferred, the timeout timer, and the server it reached (if any)."""

    def __init__(self, client: MemoryClientTransport, dest: str, request: OutgoingRequest):
        self.client = client
        self.dest = dest
        self.request = request
        self.server: MemoryServerTransport | None = None
        self.deferred: Deferred[Any] = Deferred(self._cancelled)
        self.timer: DelayedCall | None = client.reactor.callLater(request.timeout, self._expire)
        self.finished = False
        client._exchanges.add(self)

    def answer(self, frame: bytes) -> None:
        """The reply's bytes arrived: fire the caller's Deferred as a WebSocket client does."""
        if self.finished:
            return
        self._finish()
        message = codec.json_loads(frame)
        err = message[1]
        result = message[2] if len(message) > 2 else None
        if js_truthy(err):
            text = err if isinstance(err, str) else codec.json_dumps(err).decode("utf-8")
            self.deferred.errback(RemoteError(text, result))
        else:
            self.deferred.callback(result)

    def fail(self, error: Exception) -> None:
        """End the exchange with ``error`` (connection closed, stopped)."""
        if not self.finished:
            self._finish()
            self.deferred.errback(error)

    def _expire(self) -> None:
        self.timer = None
        self.fail(RequestTimeout())

    def _cancelled(self, _: Deferred[Any]) -> None:
        self._finish()

    def _finish(self) -> None:
        self.finished = True
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        self.client._exchanges.discard(self)
        if self.server is not None:
            self.server._exchanges.discard(self)
        held = self.client.network._blackholed.get(self.dest)
        if held is not None:
            held.discard(self)


class MemoryServerTransport:
    """The server side of RPC on a :class:`~grenache.testing.MemoryNetwork`
    (:class:`~grenache.peer.ServerTransport`).

    :meth:`listen` binds a port of the network (``0``: a free one from 40001 up). Each
    request's :attr:`~grenache.peer.Request.meta` is empty and its
    :attr:`~grenache.peer.Request.peer_certificate` is the client transport's
    ``peer_certificate``. ``reactor`` is the network's clock, which a
    :class:`~grenache.peer.PeerRPCServer` uses for its handler deadline.
    """

    def __init__(self, network: MemoryNetwork) -> None:
        self.network = network
        self.reactor = network.clock
        self.port: int | None = None
        self.requests: list[Request] = []
        self._serve: Callable[[Request], Deferred[Any]] | None = None
        self._exchanges: set[Exchange] = set()

    @property
    def address(self) -> str:
        """``host:port`` clients reach this server at (RuntimeError before :meth:`listen`)."""
        if self.port is None:
            raise RuntimeError("MemoryServerTransport is not listening")
        return self.network.address(self.port)

    def listen(self, where: ListenSpec, serve: Callable[[Request], Deferred[Any]]) -> Deferred[int]:
        """Listen on port ``where`` of the network and answer each request with ``serve``."""
        if self.port is not None:
            return fail(RuntimeError("MemoryServerTransport is already listening"))
        try:
            self.port = self.network.bind(listen_port(where), self)
        except (ValueError, CannotListenError):
            return fail()
        self._serve = serve
        return succeed(self.port)

    def receive(self, frame: bytes, exchange: Exchange) -> None:
        """One request's bytes arrived: serve it, send the reply's bytes back."""
        exchange.server = self
        self._exchanges.add(exchange)
        message = codec.json_loads(frame)
        rid, key = message[0], message[1]
        payload = message[2] if len(message) > 2 else None
        request = Request(rid, key, payload, exchange.client.peer_certificate, None, _NO_META)
        self.requests.append(request)
        assert self._serve is not None
        maybeDeferred(self._serve, request).addBoth(self._finished, exchange, rid)

    def _finished(self, outcome: Any, exchange: Exchange, rid: Any) -> None:
        if isinstance(outcome, Failure):
            self._reply(exchange, [rid, error_message(outcome), None])
        elif isinstance(outcome, Reply):
            error = outcome.error
            if isinstance(error, BaseException):
                error = error_message(error)
            self._reply(exchange, [rid, error, outcome.result])
        else:
            self._reply(exchange, [rid, None, outcome])

    def _reply(self, exchange: Exchange, reply: list[Any]) -> None:
        if exchange.finished or exchange not in self._exchanges:
            return  # the caller gave up, or the connection is gone: the reply is dropped
        try:
            frame = codec.json_dumps(reply)
        except (TypeError, ValueError, RecursionError) as e:
            log.failure("cannot encode the reply for rid {rid!r}", rid=reply[0])
            frame = codec.json_dumps([reply[0], error_message(e), None])
        exchange.answer(frame)

    def drop_connections(self) -> None:
        """Close every connection: requests in flight fail with TransportClosed at their
        clients, and their replies are dropped."""
        for exchange in list(self._exchanges):
            exchange.fail(TransportClosed())
        self._exchanges.clear()

    def stop(self) -> Deferred[None]:
        """Stop listening and close every connection (see :meth:`drop_connections`)."""
        if self.port is not None:
            self.network.unbind(self.port, self)
            self.port = None
        self.drop_connections()
        return succeed(None)


class MemoryClientTransport:
    """The client side of RPC on a :class:`~grenache.testing.MemoryNetwork`
    (:class:`~grenache.peer.ClientTransport`).

    ``sent`` records every request handed to the transport, ``(dest, request)``, whatever
    became of it: what a test reads to check retries and destination choice.
    ``peer_certificate`` is the fingerprint servers see as the requests'
    :attr:`~grenache.peer.Request.peer_certificate` (as a TLS client certificate would give).
    A request whose JSON is longer than ``max_message_size`` bytes fails with
    :class:`~grenache.errors.RequestTooLarge`; ``compress`` is accepted and changes nothing.
    """

    def __init__(
        self,
        network: MemoryNetwork,
        *,
        peer_certificate: str | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        self.network = network
        self.reactor = network.clock
        self.peer_certificate = peer_certificate
        self.max_message_size = max_message_size
        self.sent: list[tuple[str, OutgoingRequest]] = []
        self._exchanges: set[Exchange] = set()
        self._stopped = False

    def request(self, dest: str, request: OutgoingRequest) -> Deferred[Any]:
        """Send ``request`` to ``dest``; see :class:`~grenache.peer.ClientTransport` for the
        outcomes."""
        self.sent.append((dest, request))
        if self._stopped:
            return fail(TransportClosed())
        try:
            frame = encode_request(request, self.max_message_size)
        except (TypeError, ValueError, RecursionError, RequestTooLarge):
            return fail()
        fault = self.network.fault(dest)
        server = self.network.listener(dest)
        if (fault is not None and fault.kind == "refuse") or (
            fault is None and not isinstance(server, MemoryServerTransport)
        ):
            return fail(self.network.refused(dest))
        exchange = Exchange(self, self.network.normalize(dest), request)
        if fault is not None and fault.kind == "blackhole":
            self.network._blackholed.setdefault(exchange.dest, set()).add(exchange)
        elif fault is not None:
            exchange.answer(codec.json_dumps([request.rid, fault.message, fault.result]))
        else:
            assert isinstance(server, MemoryServerTransport)
            server.receive(frame, exchange)
        return exchange.deferred

    @property
    def pending(self) -> int:
        """How many requests wait for their reply."""
        return len(self._exchanges)

    def stop(self) -> Deferred[None]:
        """Refuse new requests; the pending ones fail with TransportClosed."""
        self._stopped = True
        for exchange in list(self._exchanges):
            exchange.fail(TransportClosed())
        return succeed(None)
