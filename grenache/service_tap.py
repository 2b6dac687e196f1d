"""``twistd grenache-service``: run a request handler as an announced Grenache service.

::

    twistd -n grenache-service --name fibonacci_worker --transport http --port 1337 \\
        --handler examples.fibonacci_service:fibonacci --grape http://127.0.0.1:30001

listens on the port (or on ``--listen``, an endpoint description such as ``tcp6:0`` or
``tcp:0:interface=127.0.0.1``) with the chosen RPC transport, announces each name through the
grape (again and again, until shutdown), and answers each request with the handler's result.
``grenache serve NAME ...`` runs the same :class:`GrenacheService` with the same options.
``--tls-key``/``--tls-cert`` serve over TLS, and ``--tls-ca`` / ``--tls-client-fingerprints``
restrict the clients (see :mod:`grenache.tls_options` and docs/tls.rst). ``twistd -r asyncio
grenache-service ...`` runs it on the asyncio reactor, for handlers written with asyncio.
``--metrics PORT`` (or an endpoint description) serves ``/metrics`` (Prometheus) and
``/health`` (docs/metrics.rst).

A handler is named ``pkg.module:function`` (see :mod:`grenache.handlers`) and is called with
one :class:`grenache.peer.Request` (``rid``, ``key``, ``payload``, ``peer_certificate``); it
returns the reply's value, a Deferred or a coroutine, and an exception it raises becomes the
reply's error string.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from grenache.announced_service import (
    AnnouncedService,
    AnnouncedServiceOptions,
    twistd_service,
)

# Their home is grenache.announced_service; importable from here as they always were.
from grenache.curve_options import CurveServerOptions
from grenache.endpoints import ListenSpec
from grenache.handlers import HandlerError, load_handler
from grenache.link import DEFAULT_ANNOUNCE_INTERVAL, DEFAULT_GRAPE
from grenache.metrics import ALONE, HEALTHY, STOPPING
from grenache.peer import Handler, PeerRPCServer, error_message
from grenache.peer.server import DEFAULT_HANDLER_TIMEOUT
from grenache.speedups import reactor_poll
from grenache.tls_options import ServerTLSOptions
from grenache.transports import UnknownTransport, get_transport, transport_names

__all__ = [
    "GrenacheService",
    "Options",
    "ServiceConfig",
    "describe_failure",
    "makeService",
]

log = Logger()


def _handler_timeout(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not 0 <= number < float("inf"):
        raise ValueError(f"--handler-timeout {value}: give seconds (0: no deadline)")
    return number or None


class Options(ServerTLSOptions, CurveServerOptions, AnnouncedServiceOptions):
    """Options of ``twistd grenache-service`` (and of ``grenache serve``)."""

    synopsis = "--name NAME --handler pkg.module:function [options]"
    longdesc = (
        "Run a Grenache RPC service: listen on --port (or --listen) with --transport, "
        "optionally over TLS (--tls-key, --tls-cert; CURVE for --transport zmq: --curve-key, "
        "--curve-clients), announce each --name "
        "through the grape at --grape until shutdown, and answer each request with the "
        "--handler function. The handler gets one request object (rid, key, payload, "
        "peer_certificate) and returns a value, a Deferred or a coroutine; an exception it "
        "raises becomes the reply's error string. Modules are imported from the current "
        "directory first."
    )
    examples = (
        "Examples:\n"
        "  twistd -n grenache-service --name fibonacci_worker --port 1337 \\\n"
        "      --handler examples.fibonacci_service:fibonacci\n"
        "  twistd -n grenache-service --name rpc_ws --transport ws --port 1338 \\\n"
        "      --handler mypkg.handlers:answer --grape http://127.0.0.1:40001\n"
        "  twistd -n grenache-service --name secure --listen tcp6:8443 \\\n"
        "      --tls-key server.key --tls-cert server.crt --tls-client-fingerprints AA:BB:... \\\n"
        "      --handler mypkg.handlers:answer\n"
        "  twistd -n grenache-service --name rpc_zmq --transport zmq --port 1339 \\\n"
        "      --curve-key server.curve.json --curve-clients clients.txt \\\n"
        "      --handler mypkg.handlers:answer\n"
        "  twistd -n -r asyncio grenache-service --name aio --handler mypkg.handlers:async_answer\n"
        "  twistd -n grenache-service --name fibonacci_worker --metrics 9100 \\\n"
        "      --handler examples.fibonacci_service:fibonacci\n"
    )

    optParameters: list[list[Any]] = [
        ["transport", "t", "http", f"RPC transport: {' or '.join(transport_names())}."],
        [
            "listen",
            "l",
            None,
            "Endpoint description to listen on instead of --port, e.g. tcp6:0 or "
            "tcp:0:interface=127.0.0.1.",
        ],
        ["handler", None, None, "The request handler, as pkg.module:function."],
        ["grape", "g", DEFAULT_GRAPE, "URL of the grape's API to announce through."],
        [
            "handler-timeout",
            None,
            DEFAULT_HANDLER_TIMEOUT,
            "Seconds a handler has to answer before the request is answered with "
            "ERR_HANDLER_TIMEOUT and the handler cancelled; 0 = no deadline.",
            _handler_timeout,
        ],
    ]

    compData = usage.Completions(
        optActions={
            "transport": usage.CompleteList(transport_names()),
            "grape": usage.CompleteList([DEFAULT_GRAPE], descr="grape URL"),
            "bind": usage.CompleteHostnames(),
            "name": usage.Completer(descr="service name", repeat=True),
            "handler": usage.Completer(descr="request handler"),
        }
    )

    def opt_name(self, name: str) -> None:
        """Service name to announce (may be given more than once)."""
        self["names"].append(name)

    def postOptions(self) -> None:
        """Check the whole command line now (names, handler, transport, where to listen, the
        security flags), so that a mistake is a usage error before anything listens."""
        if not self["names"]:
            raise usage.UsageError("give the service a name with --name NAME")
        if any(not name for name in self["names"]):
            raise usage.UsageError("a service name must not be empty")
        if not self["handler"]:
            raise usage.UsageError("give the request handler with --handler pkg.module:function")
        self.check_transport(self["transport"])
        self.check_where()
        self.read_security(self["transport"])

    def config(self) -> ServiceConfig:
        """The service this command line describes."""
        return ServiceConfig(
            names=tuple(self["names"]),
            handler=self["handler"],
            transport=self["transport"],
            port=self["port"] or 0,
            grape=self["grape"],
            interface=self["bind"],
            announce_interval=self["announce-interval"],
            listen=self["listen"],
            tls=self["tls"],
            handler_timeout=self["handler-timeout"],
            metrics=self["metrics"],
        )


class ServiceConfig:
    """What a :class:`GrenacheService` runs: names, handler spec, transport, where to listen
    (``port`` bound to ``interface``, or ``listen``: an endpoint description or endpoint),
    ``tls`` (a :class:`~grenache.tls.ServerTLS` or context factory; ``None``: plain TCP),
    grape, ``handler_timeout`` (seconds a handler has to answer; ``None``: no deadline),
    ``metrics`` (where to serve ``/metrics`` and ``/health``; ``None``: nowhere)."""

    def __init__(
        self,
        names: tuple[str, ...],
        handler: str | Handler,
        transport: str = "http",
        port: int = 0,
        grape: str = DEFAULT_GRAPE,
        interface: str | None = None,
        announce_interval: float = DEFAULT_ANNOUNCE_INTERVAL,
        listen: ListenSpec | None = None,
        tls: Any = None,
        handler_timeout: float | None = DEFAULT_HANDLER_TIMEOUT,
        metrics: ListenSpec | None = None,
    ) -> None:
        self.names = names
        self.handler = handler
        self.transport = transport
        self.port = port
        self.grape = grape
        self.interface = interface
        self.announce_interval = announce_interval
        self.listen = listen
        self.tls = tls
        self.handler_timeout = handler_timeout
        self.metrics = metrics

    @property
    def where(self) -> ListenSpec:
        """What the server listens on: ``listen`` if given, else ``port``."""
        return self.listen if self.listen is not None else self.port


class GrenacheService(AnnouncedService[ServiceConfig]):
    """A handler served on a transport and announced through a grape, as a Twisted Service.

    :meth:`listen` binds the port (fires with it, or fails with
    :class:`~grenache.announced_service.ListenError`); :meth:`announce` starts the announcing
    loops and fires with each name's first result (a node count, or the error's text).
    ``startService`` does both, and ``stopService`` stops announcing, closes the port and the
    service's connections, and stops the link.

    With ``config.metrics``, :attr:`metrics` is the service's own
    :class:`~grenache.metrics.Metrics`, served by :meth:`listen` on that endpoint as well:
    ``/health`` answers "healthy", "alone" while the last announce of a name failed, and
    "stopping" once ``stopService`` began.

    Raises :class:`~grenache.handlers.HandlerError` when the handler cannot be loaded, and
    :class:`~grenache.transports.UnknownTransport` for a transport that does not exist.
    """

    name = "grenache-service"
    key_field = "name"

    def __init__(self, config: ServiceConfig, reactor: Any) -> None:
        handler = config.handler
        self.handler: Handler = load_handler(handler) if isinstance(handler, str) else handler
        entry = get_transport(config.transport)
        super().__init__(config, reactor, log, health_name="service")
        self.transport = entry.server_transport(
            reactor, tls=config.tls, interface=config.interface or ""
        )
        self.server = PeerRPCServer(
            self.link,
            self.transport,
            self.handler,
            reactor=reactor,
            handler_timeout=config.handler_timeout,
            metrics=self.metrics,
        )

    def _peer(self) -> PeerRPCServer:
        return self.server

    def _health(self) -> tuple[str, dict[str, Any]]:
        details: dict[str, Any] = {"names": list(self.config.names), "port": self.port}
        if self.metrics is not None and self.metrics.stopping:
            return STOPPING, details
        failing = self._announce_failures(list(self.config.names))
        if failing:
            return ALONE, {**details, "announce_failed": failing}
        return HEALTHY, details

    def _first_announces(self) -> list[tuple[str, Deferred[int]]]:
        return [(name, self.server.announce(name)) for name in self.config.names]

    def _log_listening(self, port: int) -> None:
        log.info(
            "Serving {names} with {handler} over {transport} on port {port}",
            names=", ".join(repr(n) for n in self.config.names),
            handler=_handler_name(self.config.handler),
            transport=self.config.transport + _security(self.config),
            port=port,
            event="listening",
        )

    def _log_announced(self, key: str, count: int) -> None:
        log.info(
            "Announced {name!r} on port {port} through {grape} (stored by {count} DHT {nodes})",
            name=key,
            port=self.port,
            grape=self.config.grape,
            count=count,
            nodes="node" if count == 1 else "nodes",
            event="announce",
        )

    def _log_stopped(self) -> None:
        log.info(
            "Stopped announcing {names} and closed port {port}",
            names=", ".join(repr(n) for n in self.config.names),
            port=self.port,
            event="stopped",
        )


def _handler_name(handler: str | Handler) -> str:
    if isinstance(handler, str):
        return handler
    module = getattr(handler, "__module__", "?")
    return f"{module}:{getattr(handler, '__qualname__', repr(handler))}"


def describe_failure(failure: Failure | BaseException) -> str:
    """A one-line text for an error (the message of Grenache errors)."""
    return error_message(failure)


def makeService(options: Options) -> IService:
    """Load the handler and bind the port now, so a bad handler or a taken port is a one-line
    error before twistd daemonizes."""
    from twisted.internet import reactor

    reactor_poll.install_under_twistd(options, reactor)
    return twistd_service(
        "grenache-service",
        lambda: GrenacheService(options.config(), reactor),
        (HandlerError, UnknownTransport),
    )


def _security(config: ServiceConfig) -> str:
    """How the service is secured, for its startup log line."""
    if config.tls is None:
        return ""
    return " with CURVE" if config.transport == "zmq" else " with TLS"
