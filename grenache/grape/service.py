"""A grape: a DHT node with its HTTP API and, optionally, its WebSocket API.

:class:`Grape` is a Twisted :class:`~twisted.application.service.MultiService`, built the way
``twisted.names`` builds its server: one child service per listening socket and one for the
maintenance timer. ``twistd grape`` runs one (see :mod:`grenache.grape.tap`) and programs and
tests run as many as they like, on ports the OS picks::

    grape = Grape(GrapeConfig(dht_port=0, api_port=0), reactor)
    await grape.start()          # listening, bootstrapped
    print(grape.dht_port, grape.api_port)
    await grape.stop()

The children, by name:

``dht``
    the DHT's UDP port (:class:`twisted.application.internet.UDPServer`), on every IPv4
    address as Node's;
``http-api``
    the HTTP API (:class:`~twisted.application.internet.StreamServerEndpointService`);
``ws-api``
    the WebSocket API, only when ``ws_port`` is given;
``maintenance``
    a :class:`~twisted.application.internet.TimerService` that warns and bootstraps again while
    the grape has no DHT neighbour although bootstrap nodes were given.

The API ports are :data:`~grenache.endpoints.ListenSpec`: a port number (bound to ``host``), an
endpoint description (``"tcp6:30001"``, ``"ssl:30001:privateKey=key.pem:certKey=cert.pem"``) or
an endpoint. A port number or a description is bound synchronously by
``privilegedStartService`` (through :func:`twisted.application.strports.service`, as ``twistd``
binds its own ports), so a taken port raises :class:`ListenError` at once; an endpoint object
may bind later, and then :meth:`Grape.start` fails with :class:`ListenError`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import attrs
from twisted.application import strports
from twisted.application.internet import StreamServerEndpointService, TimerService, UDPServer
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.endpoints import quoteStringArgument
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from grenache.dht.krpc import Address
from grenache.dht.limits import DEFAULT_MAX_SOURCES, DEFAULT_QUERY_BURST, DEFAULT_QUERY_RATE
from grenache.dht.node import DHTConfig, DHTNode, Resolve, Verify
from grenache.dht.routing import MAX_CONTACTS_PER_IP
from grenache.endpoints import (
    ListenSpec,
    bound_port,
    describe_listen_spec,
    join_host_port,
    server_endpoint,
    split_host_port,
)
from grenache.grape.api_http import GrapeHTTPAPI, grape_http_factory
from grenache.grape.operations import make_dispatch

if TYPE_CHECKING:
    from grenache.metrics import Metrics

__all__ = ["Grape", "GrapeConfig", "ListenError", "TwistdGrape", "add_metrics", "parse_bootstrap"]

log = Logger()


class ListenError(Exception):
    """A grape port could not be bound; the message names the port and the reason."""


@attrs.frozen
class GrapeConfig:
    """Everything a grape is configured with. Times in seconds, sizes in bytes.

    Defaults are the documented grenache-grape ones. ``api_port`` and ``ws_port`` are
    :data:`~grenache.endpoints.ListenSpec` (a port number, an endpoint description or an
    endpoint); a port of 0 asks the OS for a free one; ``ws_port`` None runs no WebSocket API.
    ``host`` is the address the numeric API ports bind to and the address the grape stores for
    its own announces (an IPv6 one as ``[::1]:port``); the DHT socket binds all IPv4
    interfaces, as Node's does. ``bootstrap`` is ``(host, port)`` pairs, the host an IPv4
    address or a name (resolved at start and before every retry). ``bootstrap_retry`` is the
    period of the maintenance timer: while the grape has no neighbour although bootstrap nodes
    were given, it warns and bootstraps again.

    ``verify`` is Node's ``verify`` option: a function ``(signature, message, public_key) ->
    bool`` that checks mutable BEP 44 items instead of the built-in ed25519 check (a hardware
    or remote verifier, another algorithm); ``verify_mutable`` False refuses mutable items as
    a stock Node grape does, and cannot be combined with ``verify``. ``query_rate`` (queries
    per second, 0: no limit) and ``query_burst`` limit each public source IP of DHT queries,
    ``max_sources`` is how many source IPs are tracked and ``max_contacts_per_ip`` how many
    routing-table contacts one public IP may hold (docs/protocol.rst, *DHT messages*).
    """

    dht_port: int = 20001
    api_port: ListenSpec = 30001
    ws_port: ListenSpec | None = None
    host: str | None = None
    bootstrap: tuple[Address, ...] = attrs.field(default=(), converter=tuple)
    peer_max_age: float = 120.0
    node_liveness: float = 300.0
    max_tables: int = 5000
    max_values: int = 5000
    max_payload_size: int | None = 8192
    verify_mutable: bool = True
    bootstrap_retry: float = 30.0
    verify: Verify | None = None
    query_rate: float = DEFAULT_QUERY_RATE
    query_burst: int = DEFAULT_QUERY_BURST
    max_sources: int = DEFAULT_MAX_SOURCES
    max_contacts_per_ip: int = MAX_CONTACTS_PER_IP

    def dht_config(self) -> DHTConfig:
        """The DHT node's share of this configuration (ValueError for contradictory values)."""
        return DHTConfig(
            bootstrap=self.bootstrap,
            host=self.host,
            peer_max_age=self.peer_max_age,
            node_liveness=self.node_liveness,
            max_tables=self.max_tables,
            max_values=self.max_values,
            verify_mutable=self.verify_mutable,
            verify=self.verify,
            query_rate=self.query_rate,
            query_burst=self.query_burst,
            max_sources=self.max_sources,
            max_contacts_per_ip=self.max_contacts_per_ip,
        )


def parse_bootstrap(text: str | Sequence[str]) -> tuple[Address, ...]:
    """``"host:port,[v6]:port"`` (Node's ``--bn``) as ``(host, port)`` pairs; empty items are
    dropped. Hosts may be names (resolved when the grape starts). Raises :class:`ValueError`
    naming the bad item."""
    items = text.split(",") if isinstance(text, str) else list(text)
    addresses = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        try:
            addresses.append(split_host_port(item))
        except ValueError:
            raise ValueError(
                f"bootstrap node {item!r} is not host:port (or [ipv6]:port) with a port 1-65535"
            ) from None
    return tuple(addresses)


def listen_description(where: int | str, interface: str = "") -> str:
    """The endpoint description for a :data:`ListenSpec` given as a number or a description:
    a port number becomes ``tcp:PORT`` on ``interface`` (``tcp6`` for an IPv6 one)."""
    if isinstance(where, str) and not where.strip().isdigit():
        return where
    port = int(where)
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is not between 0 and 65535")
    interface = interface.strip("[]")
    kind = "tcp6" if ":" in interface else "tcp"
    if not interface:
        return f"{kind}:{port}"
    return f"{kind}:{port}:interface={quoteStringArgument(interface)}"


@implementer(IStreamServerEndpoint)
class _PortKeeper:
    """Wraps a service's endpoint to keep the listening port it gives (or why it failed)."""

    def __init__(self, endpoint: Any) -> None:
        self.endpoint = endpoint
        self.port: IListeningPort | None = None
        self.failure: Failure | None = None
        self._waiters: list[Deferred[IListeningPort]] = []

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        self.port, self.failure = None, None
        d: Deferred[IListeningPort] = self.endpoint.listen(factory)
        return d.addCallbacks(self._listening, self._failed)

    def _listening(self, port: IListeningPort) -> IListeningPort:
        self.port = port
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(port)
        return port

    def _failed(self, failure: Failure) -> Failure:
        self.failure = failure
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.errback(failure)
        return failure

    def when_listening(self) -> Deferred[IListeningPort]:
        if self.port is not None:
            return succeed(self.port)
        if self.failure is not None:
            return fail(self.failure)
        waiter: Deferred[IListeningPort] = Deferred()
        self._waiters.append(waiter)
        return waiter


def _address_text(port: Any, kind: str) -> str:
    """What ``port`` is bound to: ``tcp 127.0.0.1:30001``, ``tls [::1]:30001``..."""
    address = port.getHost()
    host, number = getattr(address, "host", None), getattr(address, "port", None)
    if host is not None and number is not None:
        return f"{kind} {join_host_port(host, number) if host else f'*:{number}'}"
    return f"{kind} {getattr(address, 'name', address)!s}"


def _kind(where: ListenSpec, port: Any) -> str:
    if isinstance(where, str) and where.strip().lower().startswith("ssl:"):
        return "tls"
    return str(getattr(port.getHost(), "type", "tcp")).lower()


class Grape(MultiService):
    """A grape on ``reactor`` (see the module docstring for its children).

    :meth:`start` / :meth:`stop` return Deferreds for programs; as a service,
    ``privilegedStartService`` binds the ports given as numbers or descriptions synchronously and
    raises :class:`ListenError` (all or none bound) if one cannot be. ``resolve`` turns bootstrap
    host names into IPv4 addresses (the reactor's ``resolve`` by default).

    Programs watch the grape with :meth:`add_listener` (the events of Node's grape: ``ready``,
    ``listening``, ``announce``, ``peer``, ``node``, ``warning``, and ``unannounce``; see
    :mod:`grenache.dht.events` for when each fires and its arguments). Add listeners before
    :meth:`start` to hear ``listening`` and ``ready``.
    """

    name = "grape"

    def __init__(
        self,
        config: GrapeConfig,
        reactor: Any,
        node_id: bytes | None = None,
        resolve: Resolve | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.node = DHTNode(config.dht_config(), reactor, node_id=node_id, resolve=resolve)
        dispatch = make_dispatch(self.node)
        self._privileged = False
        self._keepers: dict[str, tuple[str, ListenSpec, _PortKeeper]] = {}

        udp = UDPServer(config.dht_port, self.node.krpc, maxPacketSize=65535, reactor=reactor)
        udp.setName("dht")
        udp.setServiceParent(self)

        self.http_factory = grape_http_factory(
            dispatch, reactor, max_body_size=config.max_payload_size
        )
        self._add_listener("http-api", "HTTP API", config.api_port, self.http_factory)
        self.ws_factory: Any = None
        if config.ws_port is not None:
            # Imported here: autobahn is a large import a grape without a WebSocket API skips.
            from grenache.grape.api_ws import grape_ws_factory

            self.ws_factory = grape_ws_factory(
                dispatch, max_message_size=config.max_payload_size or 1 << 20, reactor=reactor
            )
            self._add_listener("ws-api", "WebSocket API", config.ws_port, self.ws_factory)

        maintenance = TimerService(config.bootstrap_retry, self._maintain)
        maintenance.clock = reactor
        maintenance.setName("maintenance")
        maintenance.setServiceParent(self)

    def add_listener(self, event: str, fn: Callable[..., Any]) -> None:
        """Call ``fn`` on ``event`` (ValueError for an unknown event name). Listeners run
        synchronously; one that raises is logged and the grape carries on."""
        self.node.events.add_listener(event, fn)

    def remove_listener(self, event: str, fn: Callable[..., Any]) -> None:
        """Stop calling ``fn`` on ``event``."""
        self.node.events.remove_listener(event, fn)

    def _add_listener(self, name: str, what: str, where: ListenSpec, factory: Any) -> None:
        service: StreamServerEndpointService
        if isinstance(where, (int, str)) and not isinstance(where, bool):
            description = listen_description(where, self.config.host or "")
            server_endpoint(self.reactor, description)  # a bad description: ValueError, now
            # strports binds at privilegedStartService and raises there, as twistd's own ports.
            service = strports.service(description, factory, reactor=self.reactor)
        else:
            service = StreamServerEndpointService(server_endpoint(self.reactor, where), factory)
        keeper = _PortKeeper(service.endpoint)
        service.endpoint = keeper
        service.setName(name)
        service.setServiceParent(self)
        self._keepers[name] = (what, where, keeper)

    # --- ports ------------------------------------------------------------------------------

    def _port(self, name: str) -> Any:
        entry = self._keepers.get(name)
        port = entry[2].port if entry is not None else None
        if port is None or not self.running:
            raise RuntimeError(f"the grape's {name} is not listening")
        return port

    @property
    def dht_port(self) -> int:
        """The DHT's UDP port."""
        return self.node.port

    @property
    def api_port(self) -> int:
        """The HTTP API's TCP port (0 for a UNIX socket)."""
        return bound_port(self._port("http-api"))

    @property
    def ws_port(self) -> int | None:
        """The WebSocket API's TCP port; None when the grape runs none."""
        return None if "ws-api" not in self._keepers else bound_port(self._port("ws-api"))

    def _url(self, name: str, scheme: str) -> str:
        port = self._port(name)
        address = port.getHost()
        host = getattr(address, "host", "")
        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        tls = _kind(self._keepers[name][1], port) == "tls"
        return f"{scheme}{'s' if tls else ''}://{join_host_port(host, bound_port(port))}"

    @property
    def api_url(self) -> str:
        """The HTTP API's base URL, for links on this machine (``https`` for an ``ssl:`` port)."""
        return self._url("http-api", "http")

    @property
    def ws_url(self) -> str | None:
        """The WebSocket API's URL for links on this machine; None when it runs none."""
        return None if "ws-api" not in self._keepers else self._url("ws-api", "ws")

    # --- service ----------------------------------------------------------------------------

    def privilegedStartService(self) -> None:
        """Bind every port given as a number or a description now; on failure close the ones
        already bound and raise :class:`ListenError`."""
        if self._privileged:
            return
        started: list[Any] = []
        for child in self:
            try:
                child.privilegedStartService()
            except CannotListenError as error:
                for other in started:
                    other.stopService()
                raise ListenError(self._listen_error(child.name, error)) from None
            started.append(child)
        self._privileged = True

    def _listen_error(self, name: str | None, error: CannotListenError) -> str:
        if name in self._keepers:
            what, where, _ = self._keepers[name]
            label = f"{what} {describe_listen_spec(where)}"
        else:
            label = f"DHT (UDP) port {self.config.dht_port}"
        reason = getattr(error.socketError, "strerror", None) or str(error.socketError)
        return f"cannot listen on {label}: {reason}"

    def startService(self) -> None:
        """Bind the ports (unless ``privilegedStartService`` already did), start the children
        and the DHT node (its bootstrap walk), and log the addresses once every port listens.
        :class:`ListenError` if a port cannot be bound."""
        self.privilegedStartService()
        super().startService()
        self.node.start()
        listening = [keeper.when_listening() for _, _, keeper in self._keepers.values()]
        DeferredList(listening, fireOnOneErrback=True, consumeErrors=True).addCallbacks(
            self._log_listening, lambda _: None
        )

    def _log_listening(self, _: object) -> None:
        udp = self.node.krpc.transport
        parts = [] if udp is None else [f"DHT {_address_text(udp, 'udp')}"]  # type: ignore[arg-type]
        for what, where, keeper in self._keepers.values():
            if keeper.port is not None:
                parts.append(f"{what} {_address_text(keeper.port, _kind(where, keeper.port))}")
        log.info(
            "grape {node_id} listening: {listeners}",
            node_id=self.node.node_id.hex(),
            listeners=", ".join(parts),
        )

    def stopService(self) -> Deferred[Any]:  # type: ignore[override]
        """Stop the DHT node and the timers, close the ports, and end the API connections still
        open (closing a port leaves accepted connections serving); fires once every child
        service has stopped."""
        self._privileged = False
        self.node.stop()
        stopping: Deferred[Any] = super().stopService()  # type: ignore[assignment]
        for factory in (self.http_factory, self.ws_factory):
            if factory is not None:
                factory.closeConnections()
        return stopping

    def _maintain(self) -> None:
        """The maintenance timer's body: it logs what goes wrong and never stops the timer."""
        try:
            self.node.check_alone()
        except Exception:
            log.failure("grape maintenance failed")

    # --- for programs -----------------------------------------------------------------------

    def start(self) -> Deferred[None]:
        """Bind, start, and fire once every port listens and the first bootstrap walk ended.

        Fails with :class:`ListenError` if a port cannot be bound (nothing is left running).
        """
        try:
            self.startService()
        except ListenError:
            return fail()
        listening = [
            keeper.when_listening().addErrback(self._late_listen_error, name)
            for name, (_, _, keeper) in self._keepers.items()
        ]
        ready = DeferredList(listening, fireOnOneErrback=True, consumeErrors=True)

        def failed(failure: Failure) -> Deferred[None]:
            error = failure.value.subFailure  # type: ignore[union-attr]
            return self.stopService().addBoth(lambda _: error)

        return ready.addCallbacks(lambda _: self.node.ready, failed)

    def _late_listen_error(self, failure: Failure, name: str) -> Failure:
        if failure.check(CannotListenError):
            return Failure(ListenError(self._listen_error(name, failure.value)))  # type: ignore[arg-type]
        return failure

    def stop(self) -> Deferred[Any]:
        """Stop the timers and close every port and connection."""
        return self.stopService()


class TwistdGrape(Grape):
    """The grape ``twistd`` runs. A port that cannot be bound ends ``twistd -n`` with a one-line
    error and exit status 1 instead of a traceback. A daemonizing ``twistd`` needs an
    ``Exception`` to report a failed start through its status pipe (it waits forever
    otherwise), so there :class:`ListenError` goes through and ``twistd`` prints
    ``An error has occurred: ...`` and exits 1."""

    def __init__(self, *args: Any, exit_on_listen_error: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.exit_on_listen_error = exit_on_listen_error

    def privilegedStartService(self) -> None:
        """Bind the ports as :class:`~grenache.grape.service.Grape` does; a port that cannot be
        bound is a one-line ``SystemExit`` when ``exit_on_listen_error`` (``twistd -n``)."""
        try:
            super().privilegedStartService()
        except ListenError as error:
            if self.exit_on_listen_error:
                raise SystemExit(f"twistd grape: {error}") from None
            raise

    def startService(self) -> None:
        """Start the grape; a ``--metrics`` port that cannot listen is logged as critical and
        stops the reactor (a grape whose health cannot be probed would be reported dead)."""
        super().startService()
        if "metrics" not in self.namedServices:
            return
        from grenache.metrics import MetricsService

        metrics = self.getServiceNamed("metrics")
        if isinstance(metrics, MetricsService):
            metrics.when_listening().addErrback(self._metrics_failed)

    def _metrics_failed(self, failure: Failure) -> None:
        # Asked for and unavailable: an operator's probe would report the grape dead anyway.
        log.critical("twistd grape: --metrics: {error}", error=failure.getErrorMessage())
        if self.reactor.running:
            self.reactor.stop()


def add_metrics(grape: Grape, where: ListenSpec, metrics: Metrics | None = None) -> Metrics:
    """Serve ``metrics`` (a new :class:`~grenache.metrics.Metrics` by default) for ``grape``
    on ``where``: a :class:`~grenache.metrics.MetricsService` child named ``metrics``."""
    from grenache.metrics import Metrics, MetricsService

    own: Metrics | None = getattr(grape, "metrics", None)  # a grape built with metrics=
    if metrics is None:
        metrics = own if own is not None else Metrics()
    if own is not metrics:
        metrics.watch_grape(grape)
        _meter_api(grape, metrics)
    MetricsService(metrics, grape.reactor, where).setServiceParent(grape)
    return metrics


def _meter_api(grape: Grape, metrics: Metrics) -> None:
    """Send both APIs' operations through ``metrics.wrap_dispatch`` (through the factories'
    public ``handler`` and ``dispatch`` attributes, before anything is served)."""
    dispatch = metrics.wrap_dispatch(make_dispatch(grape.node))
    grape.http_factory.handler = GrapeHTTPAPI(dispatch)
    if grape.ws_factory is not None:
        grape.ws_factory.dispatch = dispatch
