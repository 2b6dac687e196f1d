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

from typing import Any, cast

from twisted.application.service import IService, Service
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, fail
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from grenache.curve_options import CurveServerOptions
from grenache.endpoints import ListenSpec, describe_listen_spec, server_endpoint
from grenache.handlers import HandlerError, load_handler
from grenache.link import DEFAULT_ANNOUNCE_INTERVAL, DEFAULT_GRAPE, Link
from grenache.metrics import ALONE, HEALTHY, STOPPING, Metrics, MetricsService, listen_spec
from grenache.peer import Handler, PeerRPCServer, error_message
from grenache.peer.server import DEFAULT_HANDLER_TIMEOUT
from grenache.tls_options import ServerTLSOptions
from grenache.transports import UnknownTransport, get_transport, transport_names

__all__ = [
    "GrenacheService",
    "ListenError",
    "Options",
    "ServiceConfig",
    "check_listen",
    "describe_failure",
    "listen_failed",
    "makeService",
]

log = Logger()


class ListenError(Exception):
    """The service port could not be bound; the message names the port and the reason."""


def listen_failed(failure: Failure, requested: ListenSpec) -> Failure:
    """An errback for a service's listen on ``requested``: a taken port, a bad address or an
    unreadable key file becomes one :class:`ListenError` line naming where; anything else
    passes through."""
    where = describe_listen_spec(requested)
    if isinstance(requested, int):
        where = f"TCP {where}"
    if failure.check(CannotListenError):
        error: Any = failure.value
        reason = getattr(error.socketError, "strerror", None) or str(error.socketError)
        raise ListenError(f"cannot listen on {where}: {reason}")
    if failure.check(ValueError, TypeError, OSError):
        raise ListenError(f"cannot listen on {where}: {failure.value}")
    return failure


def _port(value: str) -> int:
    port = int(value)
    if not 0 <= port <= 65535:
        raise ValueError(f"{value} is not a port number (0-65535)")
    return port


def _handler_timeout(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not 0 <= number < float("inf"):
        raise ValueError(f"--handler-timeout {value}: give seconds (0: no deadline)")
    return number or None


def _positive(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise ValueError(f"{value} must be a positive number")
    return number


class _Unstarted:
    """Stands in for the reactor while an endpoint description is only checked."""


def check_listen(description: str) -> str:
    """``description`` if it is an endpoint description a server can listen on (``tcp:0``,
    ``tcp6:8080:interface=\\:\\:1``, ``unix:/run/svc.sock``, ``ssl:...``); a usage error
    quoting it otherwise. Nothing is bound."""
    try:
        server_endpoint(_Unstarted(), description)
    except (TypeError, ValueError) as error:
        raise usage.UsageError(f"--listen: {error}") from None
    except OSError as error:  # an ssl: description's key or certificate file
        raise usage.UsageError(
            f"--listen {description!r}: cannot read {error.filename}: {error.strerror}"
        ) from None
    except Exception as error:  # e.g. a malformed PEM file in an ssl: description
        raise usage.UsageError(f"--listen {description!r}: {error}") from None
    return description


class Options(ServerTLSOptions, CurveServerOptions):
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
        ["port", "p", None, "TCP port to listen on; 0 = any free port (the default).", _port],
        [
            "listen",
            "l",
            None,
            "Endpoint description to listen on instead of --port, e.g. tcp6:0 or "
            "tcp:0:interface=127.0.0.1.",
        ],
        ["handler", None, None, "The request handler, as pkg.module:function."],
        ["grape", "g", DEFAULT_GRAPE, "URL of the grape's API to announce through."],
        ["bind", "b", None, "Address to listen on (default: every IPv4 interface)."],
        [
            "announce-interval",
            None,
            DEFAULT_ANNOUNCE_INTERVAL,
            "Seconds between announces (each gap jittered to 0.5-1.5 times this).",
            _positive,
        ],
        [
            "handler-timeout",
            None,
            DEFAULT_HANDLER_TIMEOUT,
            "Seconds a handler has to answer before the request is answered with "
            "ERR_HANDLER_TIMEOUT and the handler cancelled; 0 = no deadline.",
            _handler_timeout,
        ],
        [
            "metrics",
            None,
            None,
            "Serve /metrics (Prometheus) and /health on this TCP port or endpoint description "
            "(off unless given).",
            listen_spec,
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

    def __init__(self) -> None:
        super().__init__()
        self["names"] = []

    def opt_name(self, name: str) -> None:
        """Service name to announce (may be given more than once)."""
        self["names"].append(name)

    def getUsage(self, width: int | None = None) -> str:
        """The usage text followed by the examples."""
        return super().getUsage(width) + "\n" + self.examples

    def postOptions(self) -> None:
        """Check the whole command line now (names, handler, transport, where to listen, the
        security flags), so that a mistake is a usage error before anything listens."""
        if not self["names"]:
            raise usage.UsageError("give the service a name with --name NAME")
        if any(not name for name in self["names"]):
            raise usage.UsageError("a service name must not be empty")
        if not self["handler"]:
            raise usage.UsageError("give the request handler with --handler pkg.module:function")
        try:
            get_transport(self["transport"])
        except UnknownTransport as error:
            raise usage.UsageError(str(error)) from None
        if self["listen"] is not None:
            if self["port"] is not None:
                raise usage.UsageError("give --port or --listen, not both")
            if self["bind"] is not None:
                raise usage.UsageError(
                    "--bind applies to --port; put interface=ADDRESS in the --listen description"
                )
            if self["listen"].startswith("ssl:") and self["tls-key"] is not None:
                raise usage.UsageError(
                    "TLS twice: use either an ssl: --listen description or --tls-key/--tls-cert"
                )
            check_listen(self["listen"])
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


class GrenacheService(Service):
    """A handler served on a transport and announced through a grape, as a Twisted Service.

    :meth:`listen` binds the port (fires with it, or fails with :class:`ListenError`);
    :meth:`announce` starts the announcing loops and fires with each name's first result (a
    node count, or the error's text). ``startService`` does both, and ``stopService`` stops
    announcing, closes the port and the service's connections, and stops the link.

    With ``config.metrics``, :attr:`metrics` is the service's own
    :class:`~grenache.metrics.Metrics`, served by :meth:`listen` on that endpoint as well:
    ``/health`` answers "healthy", "alone" while the last announce of a name failed, and
    "stopping" once ``stopService`` began.

    Raises :class:`~grenache.handlers.HandlerError` when the handler cannot be loaded, and
    :class:`~grenache.transports.UnknownTransport` for a transport that does not exist.
    """

    name = "grenache-service"

    def __init__(self, config: ServiceConfig, reactor: Any) -> None:
        self.config = config
        self.reactor = reactor
        handler = config.handler
        self.handler: Handler = load_handler(handler) if isinstance(handler, str) else handler
        self.link = Link(config.grape, reactor=reactor, announce_interval=config.announce_interval)
        entry = get_transport(config.transport)
        self.transport = entry.server_transport(
            reactor, tls=config.tls, interface=config.interface or ""
        )
        #: The service's metrics (``None`` unless ``config.metrics`` is given).
        self.metrics: Metrics | None = None
        self.metrics_service: MetricsService | None = None
        if config.metrics is not None:
            self.metrics = Metrics()
            self.metrics.add_health("service", self._health)
            self.metrics_service = MetricsService(self.metrics, reactor, config.metrics)
        self.server = PeerRPCServer(
            self.link,
            self.transport,
            self.handler,
            reactor=reactor,
            handler_timeout=config.handler_timeout,
            metrics=self.metrics,
        )
        self._listening = False
        self.port: int | None = None
        #: Set by ``startService``: fires with :meth:`announce`'s results once announced.
        self.started: Deferred[dict[str, int | str] | None] | None = None

    @property
    def metrics_port(self) -> int | None:
        """The TCP port of ``/metrics`` and ``/health`` once listening (``None`` without)."""
        return None if self.metrics_service is None else self.metrics_service.port

    def _health(self) -> tuple[str, dict[str, Any]]:
        details: dict[str, Any] = {"names": list(self.config.names), "port": self.port}
        if self.metrics is not None and self.metrics.stopping:
            return STOPPING, details
        failed = self.metrics.announces.last_failed if self.metrics is not None else {}
        failing = {name: failed[name] for name in self.config.names if name in failed}
        if failing:
            return ALONE, {**details, "announce_failed": failing}
        return HEALTHY, details

    def listen(self) -> Deferred[int]:
        """Bind the service port (and the metrics one, with ``config.metrics``); fires with
        the service port bound or fails with ListenError."""
        return self._listen().addCallback(self._listen_metrics)

    def _listen_metrics(self, port: int) -> Any:
        service = self.metrics_service
        if service is None:
            return port

        def failed(failure: Failure) -> Deferred[int]:
            error = ListenError(f"metrics: {describe_failure(failure)}")
            return self.server.stop().addBoth(lambda _: Failure(error))

        service.startService()
        return service.when_listening().addCallbacks(lambda _: port, failed)

    def _listen(self) -> Deferred[int]:
        if self._listening:
            return fail(RuntimeError("GrenacheService.listen() was already called"))
        self._listening = True
        requested = self.config.where

        def bound(port: int) -> int:
            self.port = port
            log.info(
                "Serving {names} with {handler} over {transport} on port {port}",
                names=", ".join(repr(n) for n in self.config.names),
                handler=_handler_name(self.config.handler),
                transport=self.config.transport + _security(self.config),
                port=port,
                event="listening",
            )
            return port

        return self.server.listen(requested).addCallbacks(
            bound, listen_failed, errbackArgs=(requested,)
        )

    def announce(self) -> Deferred[dict[str, int | str]]:
        """Start announcing every name (after :meth:`listen`); fires with ``{name: first
        result}``, a result being the number of DHT nodes that stored the announce or the
        error's text. The loops go on either way until ``stopService``."""
        return ensureDeferred(self._announce_all())

    async def _announce_all(self) -> dict[str, int | str]:
        names = self.config.names
        results = await DeferredList(
            [self.server.announce(name) for name in names], consumeErrors=True
        )
        outcome: dict[str, int | str] = {}
        for name, (ok, value) in zip(names, results, strict=True):
            value = cast(Any, value)
            if ok:
                outcome[name] = value
                log.info(
                    "Announced {name!r} on port {port} through {grape} (stored by {count} DHT "
                    "{nodes})",
                    name=name,
                    port=self.port,
                    grape=self.config.grape,
                    count=value,
                    nodes="node" if value == 1 else "nodes",
                    event="announce",
                )
            else:
                outcome[name] = describe_failure(value)
                log.warn(
                    "Announcing {name!r} through {grape} failed: {error}; will retry",
                    name=name,
                    grape=self.config.grape,
                    error=outcome[name],
                    event="announce_failed",
                )
        return outcome

    async def _start(self) -> dict[str, int | str]:
        if self.port is None:
            await self.listen()
        return await self.announce()

    def startService(self) -> None:
        """Listen (unless :meth:`listen` already ran) and start announcing."""
        super().startService()
        self.started = ensureDeferred(self._start())
        self.started.addErrback(self._fatal)

    def _fatal(self, failure: Failure) -> None:
        log.critical("{error}", error=describe_failure(failure), event="fatal")
        if self.reactor.running:
            self.reactor.stop()

    def stopService(self) -> Deferred[None]:  # type: ignore[override]
        """Stop announcing, close the port and connections, stop the link."""
        super().stopService()
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        if self.metrics is not None:
            self.metrics.stopping = True  # /health answers "stopping" while this runs
        try:
            await self.server.stop()
        finally:
            await self.link.stop()
            if self.metrics_service is not None and self.metrics_service.running:
                await self.metrics_service.stopService()
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

    try:
        service = GrenacheService(options.config(), reactor)
    except (HandlerError, UnknownTransport) as error:
        raise SystemExit(f"twistd grenache-service: {error}") from None
    outcome: list[Any] = []
    service.listen().addBoth(outcome.append)
    if outcome and isinstance(outcome[0], Failure):
        failure = outcome[0]
        raise SystemExit(f"twistd grenache-service: {describe_failure(failure)}")
    return service  # type: ignore[return-value]


def _security(config: ServiceConfig) -> str:
    """How the service is secured, for its startup log line."""
    if config.tls is None:
        return ""
    return " with CURVE" if config.transport == "zmq" else " with TLS"
