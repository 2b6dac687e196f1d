"""What a peer needs from the objects it is given: the link and the transports.

Each is a :class:`typing.Protocol`, so any object with these methods will do (the
:class:`grenache.link.Link`, a test double, a wrapper that counts lookups). The transports in
:mod:`grenache.transports` implement the transport protocols; this package imports none of
them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from twisted.internet.defer import Deferred

from grenache.endpoints import ListenSpec
from grenache.peer.request import OutgoingRequest, Request

__all__ = [
    "ClientTransport",
    "LinkProtocol",
    "PubTransport",
    "ServerTransport",
    "StreamClientTransport",
    "SubConnection",
    "SubTransport",
]


class LinkProtocol(Protocol):
    """The three link methods peers call (:class:`grenache.link.Link` has them)."""

    def lookup(self, name: str) -> Deferred[list[str]]:
        """The ``host:port`` destinations announced under ``name``.

        Fails with :class:`~grenache.errors.LookupEmpty` when there is none.
        """
        ...

    def start_announcing(self, name: str, port: int) -> Deferred[int]:
        """Announce ``name`` at ``port`` now and again until :meth:`stop_announcing`; fires
        with the first announce's result."""
        ...

    def stop_announcing(self, name: str, port: int) -> Deferred[None] | None:
        """Stop announcing ``name`` at ``port`` and, where the grape can, unannounce it.

        May return a Deferred that fires when the unannounce ended; it never fails.
        """
        ...


class ServerTransport(Protocol):
    """The server side of an RPC transport."""

    def listen(self, where: ListenSpec, serve: Callable[[Request], Deferred[Any]]) -> Deferred[int]:
        """Listen on ``where`` (a port number, 0 for any; an endpoint description; or a server
        endpoint, see :mod:`grenache.endpoints`) and fire with the bound TCP port (0 when the
        endpoint has none, e.g. a UNIX socket).

        For each request, call ``serve``: it fires with the result to send, or fails with the
        error whose :func:`~grenache.peer.error_message` is to be sent.
        """
        ...

    def stop(self) -> Deferred[None]:
        """Stop listening and close open connections."""
        ...


class ClientTransport(Protocol):
    """The client side of an RPC transport.

    Optional attributes, read by :class:`~grenache.peer.PeerRPCClient` when present:
    ``pool_size_per_dest`` (int, writable), the most connections kept per destination, which
    the client's ``max_active_dest_transports`` sets; ``idle_timeout`` (seconds), after
    which an idle connection is closed, the time a destination counts as active for
    ``max_active_key_dests``; and ``watch_unreachable(observer)``, a method that has
    ``observer(dest)`` called whenever requests to ``dest`` are about to fail with
    :class:`~grenache.errors.DestinationUnreachable` (the ZeroMQ transport has it): the client
    then sets such destinations aside through it and adds no errback of its own to requests
    it could not retry anyway (one destination, one attempt), a tenth of its time per
    request.
    """

    def request(self, dest: str, request: OutgoingRequest) -> Deferred[Any]:
        """Send ``request`` to ``dest`` (``"host:port"``, an IPv6 literal in brackets) and fire
        with the reply's result.

        Fails with :class:`~grenache.errors.RemoteError` (the reply's error string; its
        ``result`` is the reply's result when the reply carried both),
        :class:`~grenache.errors.RequestTimeout`, :class:`~grenache.errors.TransportClosed`,
        :class:`~grenache.errors.DestinationUnreachable` (no connection could be made: the
        request certainly never reached a handler) or :class:`~grenache.errors.RequestTooLarge`.
        """
        ...

    def stop(self) -> Deferred[None]:
        """Close connections; pending requests fail with TransportClosed."""
        ...


class StreamClientTransport(ClientTransport, Protocol):
    """A client transport that also opens streams (HTTP only: docs/protocol.rst,
    *HTTP streaming*)."""

    def stream(
        self, dest: str, key: str, *, headers: Mapping[str, Any] | None, timeout: float
    ) -> Deferred[Any]:
        """Open a stream for ``key`` to ``dest``; fires with the transport's stream object.

        Fails with :class:`~grenache.errors.DestinationUnreachable` when no connection could
        be made (nothing was sent).
        """
        ...


class PubTransport(Protocol):
    """The publishing side of a pub/sub transport.

    One optional method, called by :class:`~grenache.peer.PeerPub` when present:
    ``add_topic(name)``, for each name the peer announces, by a transport whose messages
    travel under a name (ZeroMQ's topics). A transport without it sends every message to
    every subscriber, whatever name they looked up.
    """

    def listen(self, where: ListenSpec) -> Deferred[int]:
        """Listen on ``where`` (as :meth:`ServerTransport.listen`) and fire with the bound
        TCP port."""
        ...

    def publish(self, message: str | bytes) -> int:
        """Send ``message`` to every subscriber; return how many it was sent to."""
        ...

    def stop(self) -> Deferred[None]:
        """Stop listening and disconnect subscribers."""
        ...


class SubConnection(Protocol):
    """One subscription connection made by a :class:`SubTransport`."""

    def close(self) -> None:
        """Close the connection (``on_close`` is then called)."""
        ...


class SubTransport(Protocol):
    """The subscribing side of a pub/sub transport."""

    def connect(
        self,
        dest: str,
        on_message: Callable[[str | bytes], None],
        on_close: Callable[[], None],
        *,
        topic: str | None = None,
    ) -> Deferred[SubConnection]:
        """Connect to the publisher at ``dest``; fires once connected.

        ``topic`` is the name subscribed to (:class:`~grenache.peer.PeerSub` passes it): a
        transport whose publishers send several names on one connection (ZeroMQ) delivers
        only that name's messages; the others ignore it.

        ``on_message`` is called for each message and ``on_close`` once when an established
        connection ends (for any reason). A failed connection attempt fails the Deferred
        (with :class:`~grenache.errors.DestinationUnreachable` when refused) and never calls
        ``on_close``.
        """
        ...

    def stop(self) -> Deferred[None]:
        """Close every connection."""
        ...
