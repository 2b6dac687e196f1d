"""The :class:`MemoryNetwork`: one in-memory Grenache network on a ``Clock``.

It owns an address space (``127.0.0.1:PORT``) where grapes' APIs, RPC servers and publishers
listen, the in-memory UDP network the grapes' DHT nodes talk over, and the faults injected into
addresses (:meth:`MemoryNetwork.refuse`, :meth:`MemoryNetwork.blackhole`,
:meth:`MemoryNetwork.answer_error`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import attrs
from twisted.internet.error import CannotListenError
from twisted.internet.task import Clock

from grenache.dht.node import DHTConfig
from grenache.endpoints import join_host_port, split_host_port
from grenache.errors import DestinationUnreachable, TransportClosed
from grenache.link import Link
from grenache.testing.grape import MemoryGrape, MemoryGrapeAgent
from grenache.testing.pubsub import MemoryPubTransport, MemorySubTransport
from grenache.testing.rpc import Exchange, MemoryClientTransport, MemoryServerTransport
from grenache.testing.udp import MemoryUDPNetwork

__all__ = ["Fault", "MemoryNetwork"]

Listener = MemoryGrape | MemoryServerTransport | MemoryPubTransport

Dest = str | int
"""An address of the network: ``"host:port"`` text, or a port number on the network's host."""

#: First ports handed out for port 0: grapes' APIs, then servers and publishers.
FIRST_API_PORT = 30001
FIRST_SERVICE_PORT = 40001


@attrs.frozen
class Fault:
    """What an address does instead of answering: ``kind`` is ``"refuse"``, ``"blackhole"``
    or ``"error"`` (answer every request with ``message`` and ``result``)."""

    kind: Literal["refuse", "blackhole", "error"]
    message: str = ""
    result: Any = None


class MemoryNetwork:
    """An in-memory Grenache network whose time is ``clock``.

    Build the pieces from it::

        network = MemoryNetwork(clock)
        grape = network.grape()                  # a lone grape (network.grapes(3) for a DHT)
        link = network.link(grape)               # a real grenache.link.Link
        server = PeerRPCServer(link, network.server_transport(), handler)
        client = PeerRPCClient(link, network.client_transport(), reactor=clock)

    RPC requests, replies and published messages are delivered at once; datagrams between
    grapes on the clock's next turn (:meth:`settle` delivers them). Timeouts, retries,
    re-announces and expiry run on ``clock``: let time pass with :meth:`run` (or
    ``clock.advance``), in steps, as periodic timers need.

    Faults: :meth:`refuse`, :meth:`blackhole`, :meth:`answer_error` make an address refuse
    connections, never answer, or answer an error, until :meth:`restore`;
    :meth:`drop_connections` closes what is open there now. A grape goes down with
    :meth:`MemoryGrape.stop <grenache.testing.MemoryGrape.stop>`.
    """

    def __init__(self, clock: Clock, *, host: str = "127.0.0.1") -> None:
        self.clock = clock
        self.host = host
        #: the UDP network the grapes' DHT nodes share
        self.udp = MemoryUDPNetwork(clock)
        #: the ``IAgent`` that carries HTTP requests to the grapes (a Link's ``http_agent``)
        self.http_agent = MemoryGrapeAgent(self)
        self.grape_list: list[MemoryGrape] = []
        self._listeners: dict[int, Listener] = {}
        self._faults: dict[str, Fault] = {}
        self._blackholed: dict[str, set[Exchange]] = {}
        self._next = {"api": FIRST_API_PORT, "service": FIRST_SERVICE_PORT}

    # --- addresses ---------------------------------------------------------------------------

    def address(self, port: int) -> str:
        """``host:port`` of ``port`` on this network."""
        return join_host_port(self.host, port)

    def normalize(self, dest: Dest) -> str:
        """``dest`` as the ``host:port`` text the network keys on: a port number is on the
        network's host, and so is ``localhost``. ValueError unless it is ``host:port``."""
        if isinstance(dest, int) and not isinstance(dest, bool):
            return self.address(dest)
        host, port = split_host_port(str(dest))
        return join_host_port(self.host if host == "localhost" else host, port)

    def listener(self, dest: Dest) -> Listener | None:
        """What listens at ``dest`` (a grape, a server or a publisher transport), if anything."""
        try:
            host, port = split_host_port(self.normalize(dest))
        except ValueError:
            return None
        if host != self.host:
            return None
        return self._listeners.get(port)

    def bind(self, port: int, listener: Listener) -> int:
        """Reserve ``port`` (0: the next free one) for ``listener``; returns the port.
        CannotListenError when it is taken."""
        if port == 0:
            kind = "api" if isinstance(listener, MemoryGrape) else "service"
            port = self._next[kind]
            while port in self._listeners:
                port += 1
            self._next[kind] = port + 1
        elif port in self._listeners:
            raise CannotListenError(self.host, port, OSError("address already in use"))
        self._listeners[port] = listener
        return port

    def unbind(self, port: int, listener: Listener) -> None:
        """Free ``port`` if ``listener`` holds it."""
        if self._listeners.get(port) is listener:
            del self._listeners[port]

    def refused(self, dest: Dest) -> DestinationUnreachable:
        """The error a connection to ``dest`` that nobody accepts fails with."""
        try:
            text = self.normalize(dest)
        except ValueError:
            text = str(dest)
        return DestinationUnreachable(f"{DestinationUnreachable.wire}: {text}: connection refused")

    # --- grapes and links --------------------------------------------------------------------

    def grape(
        self,
        *,
        bootstrap: Sequence[MemoryGrape | tuple[str, int]] = (),
        api_port: int = 0,
        dht_port: int = 0,
        node_id: bytes | None = None,
        **dht_options: Any,
    ) -> MemoryGrape:
        """A running grape: a real DHT node and grape API. With no ``bootstrap`` it is a lone
        grape, which answers lookups from its own announces (what most tests need).

        ``bootstrap`` lists grapes (or DHT ``(host, port)`` addresses) to join. ``dht_options``
        are :class:`~grenache.dht.node.DHTConfig` fields: ``peer_max_age`` (seconds an
        announce lives, 120 by default), ``node_liveness``, ``max_values``...
        """
        nodes = tuple(b.dht_address if isinstance(b, MemoryGrape) else b for b in bootstrap)
        config = DHTConfig(bootstrap=nodes, **dht_options)
        port = dht_port or self.udp.free_port(self.host)
        grape = MemoryGrape(
            self, host=self.host, dht_port=port, api_port=0, config=config, node_id=node_id
        )
        grape.api_port = self.bind(api_port, grape)
        self.grape_list.append(grape)
        grape.start()
        self.settle()
        return grape

    def grapes(self, count: int, **dht_options: Any) -> list[MemoryGrape]:
        """``count`` grapes forming one DHT (each bootstraps from the ones made before it),
        the routing tables filled; ``dht_options`` as for :meth:`grape`."""
        made: list[MemoryGrape] = []
        for _ in range(count):
            made.append(self.grape(bootstrap=list(made), **dht_options))
        for grape in made:
            assert grape.node is not None
            grape.node.bootstrap()
        self.settle()
        return made

    def link(self, grape: MemoryGrape | None = None, **options: Any) -> Link:
        """A :class:`~grenache.link.Link` to ``grape`` (default: the network's first grape,
        made if there is none), on this network's clock. ``options`` are the Link's
        (``request_timeout``, ``lookup_cache_ttl``, ``announce_interval``...)."""
        if grape is None:
            grape = self.grape_list[0] if self.grape_list else self.grape()
        return Link(grape.url, reactor=self.clock, http_agent=self.http_agent, **options)

    # --- transports --------------------------------------------------------------------------

    def server_transport(self) -> MemoryServerTransport:
        """A new RPC server transport (give it to a :class:`~grenache.peer.PeerRPCServer`)."""
        return MemoryServerTransport(self)

    def client_transport(self, **options: Any) -> MemoryClientTransport:
        """A new RPC client transport (give it to a :class:`~grenache.peer.PeerRPCClient`);
        ``options`` as :class:`~grenache.testing.MemoryClientTransport` takes them."""
        return MemoryClientTransport(self, **options)

    def pub_transport(self) -> MemoryPubTransport:
        """A new publishing transport (give it to a :class:`~grenache.peer.PeerPub`)."""
        return MemoryPubTransport(self)

    def sub_transport(self, **options: Any) -> MemorySubTransport:
        """A new subscribing transport (give it to a :class:`~grenache.peer.PeerSub`)."""
        return MemorySubTransport(self, **options)

    # --- faults ------------------------------------------------------------------------------

    def fault(self, dest: Dest) -> Fault | None:
        """The fault injected at ``dest``, if any."""
        if not self._faults:
            return None
        try:
            return self._faults.get(self.normalize(dest))
        except ValueError:
            return None

    def refuse(self, dest: Dest) -> None:
        """Connections to ``dest`` are refused: requests fail with
        :class:`~grenache.errors.DestinationUnreachable` (a link to a grape there with
        :class:`~grenache.errors.GrapeUnreachable`), subscriptions too. What is already
        connected stays connected (see :meth:`drop_connections`)."""
        self._faults[self.normalize(dest)] = Fault("refuse")

    def blackhole(self, dest: Dest) -> None:
        """``dest`` never answers: requests wait for their timeout
        (:class:`~grenache.errors.RequestTimeout` when the clock passes it), subscriptions fail
        after the sub transport's ``connect_timeout``."""
        self._faults[self.normalize(dest)] = Fault("blackhole")

    def answer_error(self, dest: Dest, message: str, result: Any = None) -> None:
        """``dest`` answers every request with the error ``message`` (and ``result``, as
        Node's ``handler.reply(err, result)``): :class:`~grenache.errors.RemoteError` at the
        caller. A grape there answers HTTP 500 with the message (the link's
        :class:`~grenache.errors.GrapeReplyError`); a subscription fails."""
        self._faults[self.normalize(dest)] = Fault("error", message, result)

    def restore(self, dest: Dest) -> None:
        """Undo :meth:`refuse`, :meth:`blackhole` or :meth:`answer_error` at ``dest``
        (blackholed requests stay unanswered until their timeout)."""
        self._faults.pop(self.normalize(dest), None)

    def drop_connections(self, dest: Dest) -> None:
        """Close every connection to ``dest`` now, as a network failure or a restarting
        process would: RPC requests in flight fail with
        :class:`~grenache.errors.TransportClosed`, subscribers see the close (a
        :class:`~grenache.peer.PeerSub` resubscribes)."""
        key = self.normalize(dest)
        for exchange in self._blackholed.pop(key, set()):
            exchange.fail(TransportClosed())
        listener = self.listener(key)
        if isinstance(listener, (MemoryServerTransport, MemoryPubTransport)):
            listener.drop_connections()

    # --- time --------------------------------------------------------------------------------

    def settle(self) -> None:
        """Run everything due at the current clock time (datagrams between grapes and what
        they cause) until nothing is left."""
        self.udp.settle()

    def run(self, seconds: float, step: float = 0.5) -> None:
        """Let ``seconds`` of clock time pass in steps of ``step`` seconds, delivering
        datagrams after each: announcing loops, expiry and timeouts run as they would."""
        self.udp.run(seconds, step)
