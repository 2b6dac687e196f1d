"""The client side of RPC over WebSocket: :class:`WSClientTransport` and its protocol.

One socket per destination, opened on the first request and shared by every request to it
(docs/protocol.rst, *RPC over WebSocket*); replies are matched to requests by ``rid``.

Override points: ``WSClientTransport.factory_class`` (or the ``factory_class=`` keyword) is the
:class:`RPCClientFactory` built for each socket (set autobahn options or headers there), and its
``protocol`` is the :class:`RPCClientProtocol` that runs the socket; a subclass may override
``onOpen``, ``onClose``, ``connectionLost`` (calling the base method) and
:meth:`~RPCClientProtocol.reply_received` ``(payload)``, which hands each reply to the
transport.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger

from grenache import codec
from grenache.errors import RemoteError, RequestTimeout, RequestTooLarge, TransportClosed
from grenache.peer import OutgoingRequest
from grenache.transports.ws.common import (
    DEFAULT_MAX_MESSAGE_SIZE,
    encode_request,
    js_truthy,
    unreachable,
)
from grenache.transports.ws.connector import (
    Agent,
    ClientFactory,
    DialingTransport,
    OutgoingProtocol,
    OutgoingSocket,
)

__all__ = ["RPCClientFactory", "RPCClientProtocol", "WSClientTransport"]

log = Logger()


class Pending:
    """One request waiting for its reply."""

    __slots__ = ("deadline", "deferred", "frame", "rid", "sent")

    def __init__(self, rid: str, frame: bytes, deadline: float, deferred: Deferred[Any]) -> None:
        self.rid = rid
        self.frame = frame
        self.deadline = deadline
        self.deferred = deferred
        self.sent = False


class RPCClientProtocol(OutgoingProtocol):
    """The socket of one :class:`ClientConnection` (all requests to one destination)."""

    def __init__(self, connection: ClientConnection) -> None:
        super().__init__(connection)
        self.connection = connection

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """Every message is a reply: hand it to :meth:`reply_received`."""
        self.reply_received(payload)

    def reply_received(self, payload: bytes) -> None:
        """One reply frame: settles the request whose ``rid`` it carries."""
        self.connection.received(payload)


class RPCClientFactory(ClientFactory):
    """The factory of each :class:`WSClientTransport` socket; ``protocol`` runs the socket."""

    protocol = RPCClientProtocol  # type: ignore[assignment]


class ClientConnection(OutgoingSocket["WSClientTransport", RPCClientProtocol]):
    """The socket to one destination and the requests sent or queued on it."""

    def __init__(self, owner: WSClientTransport, dest: str) -> None:
        super().__init__(owner, dest)
        self.pending: dict[str, Pending] = {}
        self.last_activity = owner._clock.seconds()

    def _on_open(self) -> None:
        self.last_activity = self.owner._clock.seconds()
        protocol = self.protocol
        assert protocol is not None
        for pending in list(self.pending.values()):
            if not pending.sent:
                pending.sent = True
                protocol.send_text(pending.frame)
        self.owner._sweeper.due(self.last_activity + self.owner.idle_timeout)

    def send(self, pending: Pending) -> None:
        """Track ``pending`` by its rid and write its frame now if the socket is open; otherwise it
        goes out, in order, when the socket opens.
        """
        self.pending[pending.rid] = pending
        self.last_activity = self.owner._clock.seconds()
        if self.is_open and self.protocol is not None:
            pending.sent = True
            self.protocol.send_text(pending.frame)

    def received(self, payload: bytes) -> None:
        """A reply frame: settle the request whose rid it carries (an error fails it with
        :class:`~grenache.errors.RemoteError`, which carries the result too). A frame that is not
        JSON, has no rid or names an unknown one is ignored (logged at debug level).
        """
        self.last_activity = self.owner._clock.seconds()
        try:
            message = codec.json_loads(payload)
        except (ValueError, RecursionError):
            log.debug("unparseable WebSocket reply from {dest} ignored", dest=self.dest)
            return
        if not isinstance(message, list) or not message or not isinstance(message[0], str):
            log.debug("WebSocket reply without a rid from {dest} ignored", dest=self.dest)
            return
        pending = self.pending.pop(message[0], None)
        if pending is None:
            log.debug("WebSocket reply for unknown rid {rid!r} ignored", rid=message[0])
            return
        n = len(message)
        err = message[1] if n > 1 else None
        result = message[2] if n > 2 else None
        if err is not None and js_truthy(err):
            text = err if isinstance(err, str) else codec.json_dumps(err).decode("utf-8")
            # Node's handler.reply(err, result) sends both; the result rides on the error.
            pending.deferred.errback(RemoteError(text, result))
        else:
            pending.deferred.callback(result)

    def forget(self, rid: str) -> None:
        """Drop request ``rid`` (cancelled): a reply that still comes for it is ignored."""
        self.pending.pop(rid, None)

    def lost(self, reason: Any, detail: str | None = None) -> None:
        """The socket ended: before opening (unreachable) or after (requests closed)."""
        if self.is_closed:
            return
        if not self.is_open:
            self._retire(unreachable(self.dest, reason, detail))
            return
        self._retire(TransportClosed())

    def close(self) -> None:
        """Close the socket (idle, stop); what is pending fails with TransportClosed."""
        self._retire(TransportClosed())
        self._shut()

    def _retire(self, error: Exception) -> None:
        if self.is_closed:
            return
        self.is_closed = True
        self.is_open = False
        if self.owner._connections.get(self.dest) is self:
            del self.owner._connections[self.dest]
        pending, self.pending = self.pending, {}
        for p in pending.values():
            p.deferred.errback(error)


class WSClientTransport(DialingTransport):
    """The client side of WebSocket RPC (:class:`~grenache.peer.ClientTransport`).

    One socket per destination (``host:port``, a host name or ``[ipv6]:port`` too), opened on
    the first request and shared by every request to that destination; closed after
    ``idle_timeout`` seconds with nothing in flight, and opened again on demand. ``tls`` makes
    it ``wss`` (client certificate and trust in the options). ``connect_timeout`` bounds the
    TCP connection; ``max_message_size`` the replies accepted (and the requests sent: a larger
    one fails with :class:`~grenache.errors.RequestTooLarge`). ``agent`` replaces the socket
    opener, e.g. with ``autobahn.twisted.testing.create_memory_agent`` in tests.
    ``factory_class`` replaces the class attribute of the same name.
    """

    factory_class: type[ClientFactory] = RPCClientFactory

    def __init__(
        self,
        reactor: Any,
        *,
        tls: Any = None,
        idle_timeout: float = 120.0,
        connect_timeout: float = 10.0,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        agent: Agent | None = None,
        factory_class: type[ClientFactory] | None = None,
    ) -> None:
        if max_message_size < 1 or not idle_timeout > 0 or not connect_timeout > 0:
            raise ValueError("limits and timeouts must be positive")
        super().__init__(reactor, tls, connect_timeout, max_message_size, agent, factory_class)
        self.idle_timeout = idle_timeout
        self._connections: dict[str, ClientConnection] = {}

    def request(self, dest: str, request: OutgoingRequest) -> Deferred[Any]:
        """Send ``request`` to ``dest`` and fire with the reply's result (see the protocol)."""
        if self._stopped:
            return fail(TransportClosed())
        try:
            frame = encode_request(request, self.max_message_size)
        except (TypeError, ValueError, RecursionError, RequestTooLarge):
            return fail()
        connection = self._connections.get(dest)
        if connection is None or connection.is_closed:
            connection = ClientConnection(self, dest)
            self._connections[dest] = connection
            fresh = True
        else:
            fresh = False
        if request.rid in connection.pending:
            return fail(ValueError(f"rid {request.rid!r} is already in flight to {dest}"))

        def cancel(_: Deferred[Any]) -> None:
            connection.forget(request.rid)

        d: Deferred[Any] = Deferred(cancel)
        deadline = self._clock.seconds() + request.timeout
        connection.send(Pending(request.rid, frame, deadline, d))
        if self._sweeper.at > deadline:
            self._sweeper.due(deadline)
        if fresh:
            connection.start()
        return d

    @property
    def connections(self) -> dict[str, bool]:
        """Each destination with a socket, and whether that socket is open yet."""
        return {dest: c.is_open for dest, c in self._connections.items()}

    def _sweep(self, now: float) -> float | None:
        nxt: float | None = None
        for connection in list(self._connections.values()):
            expired = [p for p in connection.pending.values() if p.deadline <= now]
            for p in expired:
                connection.pending.pop(p.rid, None)
                p.deferred.errback(RequestTimeout())
            for p in connection.pending.values():
                if nxt is None or p.deadline < nxt:
                    nxt = p.deadline
            if connection.pending or not connection.is_open:
                continue
            idle_at = connection.last_activity + self.idle_timeout
            if idle_at <= now:
                log.debug("closing idle WebSocket socket to {dest}", dest=connection.dest)
                connection.close()
            elif nxt is None or idle_at < nxt:
                nxt = idle_at
        return nxt

    def stop(self) -> Deferred[None]:
        """Close every socket; requests still pending fail with TransportClosed."""
        return self._close_every(self._connections.values())
