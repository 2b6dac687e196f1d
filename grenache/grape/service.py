"""A grape: a DHT node with its HTTP API and, optionally, its WebSocket API.

:class:`Grape` is a Twisted ``Service``: ``twistd grape`` runs one (see :mod:`grenache.grape.tap`)
and programs and tests run as many as they like, on ports the OS picks::

    grape = Grape(GrapeConfig(dht_port=0, api_port=0), reactor)
    await grape.start()          # listening, bootstrapped
    print(grape.dht_port, grape.api_port)
    await grape.stop()
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from grenache.dht.krpc import Address
from grenache.dht.node import DHTConfig, DHTNode
from grenache.grape.api_http import grape_http_factory
from grenache.grape.api_ws import grape_ws_factory
from grenache.grape.operations import make_dispatch

log = Logger()


class ListenError(Exception):
    """A grape port could not be bound; the message names the port and the reason."""


@attrs.frozen
class GrapeConfig:
    """Everything a grape is configured with. Times in seconds, sizes in bytes.

    Defaults are the documented grenache-grape ones (DESIGN.md, "Defaults"). A port of 0 asks
    the OS for a free one; ``ws_port`` None runs no WebSocket API. ``host`` is the address the
    APIs bind to and the address the grape stores for its own announces; the DHT socket binds
    all interfaces, as Node's does.
    """

    dht_port: int = 20001
    api_port: int = 30001
    ws_port: int | None = None
    host: str | None = None
    bootstrap: tuple[Address, ...] = attrs.field(default=(), converter=tuple)
    peer_max_age: float = 120.0
    node_liveness: float = 300.0
    max_tables: int = 5000
    max_values: int = 5000
    max_payload_size: int | None = 8192
    verify_mutable: bool = True

    def dht_config(self) -> DHTConfig:
        return DHTConfig(
            bootstrap=self.bootstrap,
            host=self.host,
            peer_max_age=self.peer_max_age,
            node_liveness=self.node_liveness,
            max_tables=self.max_tables,
            max_values=self.max_values,
            verify_mutable=self.verify_mutable,
        )


def parse_bootstrap(text: str | Sequence[str]) -> tuple[Address, ...]:
    """``"host:port,host:port"`` (Node's ``--bn``) as addresses; empty items are dropped."""
    items = text.split(",") if isinstance(text, str) else list(text)
    addresses = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"bootstrap node {item!r} is not host:port")
        addresses.append((host, int(port)))
    return tuple(addresses)


class Grape(Service):
    """A grape on ``reactor``. ``start()`` / ``stop()`` return Deferreds; as a Service,
    ``startService`` binds every port synchronously and raises :class:`ListenError` if one is
    taken."""

    name = "grape"

    def __init__(self, config: GrapeConfig, reactor: Any, node_id: bytes | None = None) -> None:
        self.config = config
        self.reactor = reactor
        self.node = DHTNode(config.dht_config(), reactor, node_id=node_id)
        self._ports: list[IListeningPort] = []
        self._udp: IListeningPort | None = None
        self._api: IListeningPort | None = None
        self._ws: IListeningPort | None = None
        self._http_factory: Any = None
        self._ws_factory: Any = None

    @property
    def dht_port(self) -> int:
        assert self._udp is not None, "the grape is not running"
        return int(self._udp.getHost().port)  # type: ignore[attr-defined,misc]

    @property
    def api_port(self) -> int:
        assert self._api is not None, "the grape is not running"
        return int(self._api.getHost().port)  # type: ignore[attr-defined,misc]

    @property
    def ws_port(self) -> int | None:
        return None if self._ws is None else int(self._ws.getHost().port)  # type: ignore[attr-defined,misc]

    @property
    def api_url(self) -> str:
        """The HTTP API's base URL, for links on this machine."""
        return f"http://{self.config.host or '127.0.0.1'}:{self.api_port}"

    def _listen(self, what: str, port: int, listen: Any) -> IListeningPort:
        try:
            listening: IListeningPort = listen()
        except CannotListenError as error:
            self._close_ports()
            reason = getattr(error.socketError, "strerror", None) or str(error.socketError)
            raise ListenError(f"cannot listen on {what} port {port}: {reason}") from None
        self._ports.append(listening)
        return listening

    def bind(self) -> None:
        """Bind the DHT socket and the API ports (all or none)."""
        config = self.config
        interface = config.host or ""
        self._udp = self._listen(
            "DHT (UDP)",
            config.dht_port,
            lambda: self.reactor.listenUDP(config.dht_port, self.node.krpc, maxPacketSize=65535),
        )
        dispatch = make_dispatch(self.node)
        self._http_factory = http = grape_http_factory(
            dispatch, self.reactor, max_body_size=config.max_payload_size
        )
        self._api = self._listen(
            "HTTP API (TCP)",
            config.api_port,
            lambda: self.reactor.listenTCP(config.api_port, http, interface=interface),
        )
        if config.ws_port is not None:
            ws_port = config.ws_port
            size = config.max_payload_size or 1 << 20
            self._ws_factory = ws = grape_ws_factory(dispatch, max_message_size=size)
            self._ws = self._listen(
                "WebSocket API (TCP)",
                ws_port,
                lambda: self.reactor.listenTCP(ws_port, ws, interface=interface),
            )

    def startService(self) -> None:
        if not self._ports:
            self.bind()
        super().startService()
        self.node.start()
        log.info(
            "grape {node_id} listening: DHT udp/{dht}, HTTP API tcp/{api}{ws}",
            node_id=self.node.node_id.hex(),
            dht=self.dht_port,
            api=self.api_port,
            ws=f", WebSocket API tcp/{self.ws_port}" if self._ws is not None else "",
        )

    def stopService(self) -> Deferred[Any]:  # type: ignore[override]
        super().stopService()
        self.node.stop()
        closing = self._close_ports()
        for factory in (self._http_factory, self._ws_factory):
            if factory is not None:
                factory.closeConnections()
        return closing

    def _close_ports(self) -> Deferred[Any]:
        ports, self._ports = self._ports, []
        self._udp = self._api = self._ws = None
        if not ports:
            return succeed(None)
        stopping = [maybeDeferred(p.stopListening) for p in ports]  # type: ignore[misc,call-overload]
        return DeferredList(stopping).addCallback(lambda _: None)

    def start(self) -> Deferred[None]:
        """Bind, start, and fire once the bootstrap walk has ended."""
        self.startService()
        return self.node.ready

    def stop(self) -> Deferred[Any]:
        """Stop timers and close every port."""
        return self.stopService()
