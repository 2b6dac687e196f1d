"""In-memory pub/sub transports: :class:`MemoryPubTransport` and :class:`MemorySubTransport`.

They implement :class:`~grenache.peer.PubTransport` and :class:`~grenache.peer.SubTransport`
on a :class:`~grenache.testing.MemoryNetwork`. A message reaches each subscriber as a WebSocket
frame would carry it (docs/protocol.rst, *Pub/sub over WebSocket*): a ``str`` as text (UTF-8,
a lone surrogate as U+FFFD), ``bytes`` as they are. Messages are delivered at once, in order.

A publisher that stops (or whose connections are dropped with
:meth:`MemoryNetwork.drop_connections <grenache.testing.MemoryNetwork.drop_connections>`)
closes its subscribers' connections: a :class:`~grenache.peer.PeerSub` sees the close and
resubscribes on its backoff timer, on the network's clock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from grenache.endpoints import ListenSpec
from grenache.errors import DestinationUnreachable, TransportClosed
from grenache.peer.protocols import SubConnection
from grenache.testing.rpc import listen_port
from grenache.transports.ws.common import text_bytes

if TYPE_CHECKING:
    from grenache.testing.network import MemoryNetwork

__all__ = ["MemoryPubTransport", "MemorySubConnection", "MemorySubTransport"]

log = Logger()

#: Seconds a subscription to a blackholed publisher waits before failing (as a WebSocket
#: connection attempt times out).
DEFAULT_CONNECT_TIMEOUT = 10.0


class MemorySubConnection:
    """One subscriber's connection to a :class:`MemoryPubTransport`
    (:class:`~grenache.peer.SubConnection`)."""

    def __init__(
        self,
        subscriber: MemorySubTransport,
        publisher: MemoryPubTransport,
        dest: str,
        on_message: Callable[[str | bytes], None],
        on_close: Callable[[], None],
    ) -> None:
        self.subscriber = subscriber
        self.publisher = publisher
        self.dest = dest
        self.on_message = on_message
        self.on_close = on_close
        self.open = True

    def close(self) -> None:
        """Close the connection; ``on_close`` is called (once)."""
        if not self.open:
            return
        self.open = False
        self.publisher._connections.discard(self)
        self.subscriber._connections.discard(self)
        try:
            self.on_close()
        except Exception:
            log.failure("on_close of a subscription to {dest} failed", dest=self.dest)


class MemoryPubTransport:
    """The publishing side of pub/sub on a :class:`~grenache.testing.MemoryNetwork`
    (:class:`~grenache.peer.PubTransport`). ``published`` records every message."""

    def __init__(self, network: MemoryNetwork) -> None:
        self.network = network
        self.reactor = network.clock
        self.port: int | None = None
        self.published: list[str | bytes] = []
        self._connections: set[MemorySubConnection] = set()

    @property
    def address(self) -> str:
        """``host:port`` subscribers reach this publisher at (RuntimeError before
        :meth:`listen`)."""
        if self.port is None:
            raise RuntimeError("MemoryPubTransport is not listening")
        return self.network.address(self.port)

    @property
    def subscribers(self) -> int:
        """How many subscribers are connected."""
        return len(self._connections)

    def listen(self, where: ListenSpec) -> Deferred[int]:
        """Listen on port ``where`` of the network (0: a free one)."""
        if self.port is not None:
            return fail(RuntimeError("MemoryPubTransport is already listening"))
        try:
            self.port = self.network.bind(listen_port(where), self)
        except (ValueError, CannotListenError):
            return fail()
        return succeed(self.port)

    def publish(self, message: str | bytes) -> int:
        """Send ``message`` to every subscriber; return how many it was sent to."""
        if isinstance(message, str):
            delivered: str | bytes = text_bytes(message).decode("utf-8")
        elif isinstance(message, (bytes, bytearray, memoryview)):
            delivered = bytes(message)
        else:
            raise TypeError(f"a message is str or bytes, not {type(message).__name__}")
        self.published.append(message)
        connections = list(self._connections)
        for connection in connections:
            if connection.open:
                try:
                    connection.on_message(delivered)
                except Exception:
                    log.failure("a subscriber of {dest} failed", dest=connection.dest)
        return len(connections)

    def drop_connections(self) -> None:
        """Close every subscriber's connection (each sees the close)."""
        for connection in list(self._connections):
            connection.close()

    def stop(self) -> Deferred[None]:
        """Stop listening and disconnect subscribers."""
        if self.port is not None:
            self.network.unbind(self.port, self)
            self.port = None
        self.drop_connections()
        return succeed(None)


class MemorySubTransport:
    """The subscribing side of pub/sub on a :class:`~grenache.testing.MemoryNetwork`
    (:class:`~grenache.peer.SubTransport`).

    Connecting to an address where no publisher listens, or one refused with
    :meth:`MemoryNetwork.refuse <grenache.testing.MemoryNetwork.refuse>` or answering errors,
    fails with :class:`~grenache.errors.DestinationUnreachable`; to a blackholed one, after
    ``connect_timeout`` seconds of the clock.
    """

    def __init__(
        self, network: MemoryNetwork, *, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    ) -> None:
        self.network = network
        self.reactor = network.clock
        self.connect_timeout = connect_timeout
        self.attempts: list[str] = []
        self._connections: set[MemorySubConnection] = set()
        self._stopped = False

    @property
    def connections(self) -> list[MemorySubConnection]:
        """The open connections."""
        return list(self._connections)

    def connect(
        self,
        dest: str,
        on_message: Callable[[str | bytes], None],
        on_close: Callable[[], None],
        *,
        topic: str | None = None,
    ) -> Deferred[SubConnection]:
        """Connect to the publisher at ``dest``; fires with the
        :class:`MemorySubConnection`. ``topic`` is ignored: every subscriber gets all the
        publisher sends, as over WebSocket."""
        self.attempts.append(dest)
        if self._stopped:
            return fail(TransportClosed())
        fault = self.network.fault(dest)
        publisher = self.network.listener(dest)
        if fault is not None and fault.kind == "blackhole":
            return self._never_connects(dest)
        if fault is not None or not isinstance(publisher, MemoryPubTransport):
            return fail(self.network.refused(dest))
        connection = MemorySubConnection(self, publisher, dest, on_message, on_close)
        publisher._connections.add(connection)
        self._connections.add(connection)
        return succeed(connection)

    def _never_connects(self, dest: str) -> Deferred[SubConnection]:
        """A connection attempt that times out after ``connect_timeout`` seconds."""
        timer: Any = None

        def cancel(_: Deferred[SubConnection]) -> None:
            if timer.active():
                timer.cancel()

        d: Deferred[SubConnection] = Deferred(cancel)
        error = DestinationUnreachable(f"{DestinationUnreachable.wire}: {dest}: connect timeout")
        timer = self.reactor.callLater(self.connect_timeout, d.errback, error)
        return d

    def stop(self) -> Deferred[None]:
        """Close every connection."""
        self._stopped = True
        for connection in list(self._connections):
            connection.close()
        return succeed(None)
