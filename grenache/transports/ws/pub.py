"""The publishing side of pub/sub over WebSocket: :class:`WSPubTransport` and its protocol.

Every connected subscriber receives each published message verbatim: a ``str`` as a text
frame, ``bytes`` as a binary frame, with no envelope (docs/protocol.rst, *Pub/sub over
WebSocket*). The frame is built once per message and written to every socket.

Override points of :class:`PubProtocol` (subclass it, subclass :class:`PubFactory` with
``protocol = YourProtocol``, pass ``factory_class=YourFactory`` to the transport):
:meth:`~PubProtocol.accept_client` ``(request) -> bool`` (false refuses the subscriber with HTTP
403), :meth:`~PubProtocol.socket_opened`, :meth:`~PubProtocol.socket_closed` and
:meth:`~PubProtocol.message_received` (what a subscriber sends; ignored by default, as Node).

A subscriber that does not read what it is sent is not queued for without bound: once its
transport's buffer is full, what it is still sent is counted, and it is dropped past
``max_pending_output`` bytes (4 MiB) or when its output has not drained for
``pending_output_timeout`` seconds (30; :mod:`grenache.transports.ws.limits`). Node's
publisher queues for it forever. A burst published within one turn of the reactor is held
all at once, so a publisher of bursts over 4 MiB raises ``max_pending_output`` (or paces
itself on :attr:`WSPubTransport.blocked`). Drops are counted in
``WSPubTransport.limits.dropped`` and logged at most once a minute.
"""

from __future__ import annotations

from typing import Any

from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from grenache.endpoints import ListenSpec
from grenache.speedups.autobahn_ws import FastPath
from grenache.tls import ServerTLS
from grenache.transports.ws.common import (
    SUBSCRIBER_MESSAGE_LIMIT,
    UpgradeRequired,
    configure,
    text_bytes,
)
from grenache.transports.ws.limits import (
    DEFAULT_PENDING_OUTPUT_TIMEOUT,
    DEFAULT_PUBLISHER_MAX_PENDING_OUTPUT,
    Limits,
    SocketLimits,
)
from grenache.transports.ws.listening import ListeningTransport, ServerFactory, socket_gone

__all__ = ["PubFactory", "PubProtocol", "WSPubTransport"]

log = Logger()


class PubProtocol(  # type: ignore[misc]
    UpgradeRequired, SocketLimits, FastPath, WebSocketServerProtocol
):
    """One subscriber's socket on a :class:`WSPubTransport` (``self.factory.owner``)."""

    def __init__(self) -> None:
        super().__init__()
        self.gone: Deferred[None] = Deferred()

    # --- override points ---------------------------------------------------------------------

    def accept_client(self, request: ConnectionRequest) -> bool:
        """Whether this subscriber may open its socket (false: HTTP 403). Accepts everyone."""
        return True

    def socket_opened(self) -> None:
        """The subscriber's WebSocket is open: it gets every message from now on."""

    def socket_closed(self, reason: Failure) -> None:
        """The subscriber's socket is gone."""

    def message_received(self, payload: bytes, is_binary: bool) -> None:
        """A message from the subscriber: subscribers have nothing to say; ignored, as Node."""

    # --- autobahn callbacks ------------------------------------------------------------------

    def connectionMade(self) -> None:
        """Bound what the subscriber may send (it has nothing to say), count the socket among the
        transport's and bound its output.
        """
        owner: WSPubTransport = self.factory.owner
        self._owner = owner
        configure(self, SUBSCRIBER_MESSAGE_LIMIT)
        super().connectionMade()
        owner._all.add(self)
        self.limit_output(owner.limits)

    def onConnect(self, request: ConnectionRequest) -> None:
        """:meth:`accept_client` may refuse the subscriber (HTTP 403)."""
        if not self.accept_client(request):
            raise ConnectionDeny(403, "Forbidden")

    def onOpen(self) -> None:
        """The socket is open: it gets every message published from now on; :meth:`socket_opened` is
        called.
        """
        self._owner._subscribers.add(self)
        self.socket_opened()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """A message from the subscriber: to :meth:`message_received`."""
        self.message_received(payload, isBinary)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        """The socket is closing: it gets no more messages."""
        self._owner._subscribers.discard(self)

    def drop_slow_client(self, reason: str) -> None:
        """Drop a subscriber that does not keep up; it gets no more messages."""
        self._owner._subscribers.discard(self)
        super().drop_slow_client(reason)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        """Forget the socket and its output deadline; fire ``gone``, call :meth:`socket_closed`."""
        self._cancel_output_deadline()
        super().connectionLost(reason)
        self._owner._subscribers.discard(self)
        self._owner._all.discard(self)
        socket_gone(self, reason)


class PubFactory(ServerFactory):
    """Builds the :class:`PubProtocol` of each subscriber of a :class:`WSPubTransport`."""

    protocol = PubProtocol


class WSPubTransport(ListeningTransport):
    """The publishing side of WebSocket pub/sub (:class:`~grenache.peer.PubTransport`).

    :meth:`listen` takes a port number (bound to ``interface``), an endpoint description or an
    endpoint. ``tls`` makes it ``wss`` (Python subscribers only; Node's subscriber has no
    TLS). A subscriber that does not read is dropped once more than ``max_pending_output``
    bytes wait for it or its output has not drained for ``pending_output_timeout`` seconds.
    ``factory_class`` replaces the class attribute of the same name.
    """

    factory_class: type[PubFactory] = PubFactory

    def __init__(
        self,
        reactor: Any,
        *,
        tls: Any = None,
        interface: str = "",
        max_pending_output: int = DEFAULT_PUBLISHER_MAX_PENDING_OUTPUT,
        pending_output_timeout: float = DEFAULT_PENDING_OUTPUT_TIMEOUT,
        factory_class: type[PubFactory] | None = None,
    ) -> None:
        self._reactor = reactor
        self.limits = Limits(
            reactor,
            "WebSocket publisher",
            max_pending_output=max_pending_output,
            pending_output_timeout=pending_output_timeout,
        )
        self.tls = tls.context_factory() if isinstance(tls, ServerTLS) else tls
        self.interface = interface
        self._port: Any = None
        self._subscribers: set[PubProtocol] = set()
        self._all: set[PubProtocol] = set()
        if factory_class is not None:
            self.factory_class = factory_class
        self.factory: PubFactory = self.factory_class(self, reactor=reactor)

    def listen(self, where: ListenSpec) -> Deferred[int]:
        """Listen on ``where`` (a port, 0 for any; an endpoint description; an endpoint) for
        subscribers; fires with the bound port (0 for a UNIX socket)."""
        return self._listen(where, "WebSocket publisher")

    @property
    def subscribers(self) -> int:
        """How many subscribers are connected."""
        return len(self._subscribers)

    @property
    def blocked(self) -> int:
        """How many subscribers have more unsent output than their transport's buffer size
        (they are not reading, or not as fast as messages are published)."""
        return sum(1 for protocol in self._subscribers if protocol.output_blocked)

    def publish(self, message: str | bytes) -> int:
        """Send ``message`` to every subscriber; return how many it was sent to."""
        if not self._subscribers:
            return 0
        if isinstance(message, str):
            payload, binary = text_bytes(message), False
        else:
            payload, binary = bytes(message), True
        prepared = self.factory.prepareMessage(payload, isBinary=binary)
        size = len(payload)
        sent = 0
        for protocol in list(self._subscribers):
            if protocol.state == WebSocketProtocol.STATE_OPEN:
                blocked = protocol.output_blocked
                protocol.sendPreparedMessage(prepared)
                sent += 1
                if blocked:
                    protocol.count_output(size)
        return sent

    def stop(self) -> Deferred[None]:
        """Stop listening and close every subscriber's socket; fires once all are gone."""
        return self._stop_listening(self._all)
