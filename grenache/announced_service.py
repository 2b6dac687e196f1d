"""What ``twistd grenache-service`` and ``twistd grenache-proxy`` share: a server announced
through a grape, run as a Twisted Service.

:class:`AnnouncedService` is the life of such a service: its link, binding its port (and the
``/metrics`` one), announcing its keys with each first outcome logged, a fatal error stopping
the reactor, and shutdown. :class:`~grenache.service_tap.GrenacheService` (a handler served
under names) and :class:`~grenache.proxy.service.ProxyService` (a transport proxy) say only
what they serve and announce, and their own log lines.

:class:`AnnouncedServiceOptions` holds the command-line options both commands (and
``grenache serve``, ``grenache proxy``) take the same way: where to listen (``--port``,
``--bind`` or ``--listen``), ``--announce-interval``, ``--metrics`` and ``--name``;
:func:`twistd_service` is what their ``makeService`` does with the service built.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar, cast

from twisted.application.service import IService, Service
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, fail
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from grenache.endpoints import ListenSpec, check_description, describe_listen_spec
from grenache.link import DEFAULT_ANNOUNCE_INTERVAL, Link
from grenache.metrics import Metrics, MetricsService, listen_spec
from grenache.peer.request import error_message
from grenache.transports import UnknownTransport, get_transport

__all__ = [
    "AnnouncedConfig",
    "AnnouncedService",
    "AnnouncedServiceOptions",
    "ListenError",
    "ServingPeer",
    "check_listen",
    "listen_failed",
    "port_number",
    "positive_number",
    "twistd_service",
]


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


def check_listen(description: str) -> str:
    """``description`` if it is an endpoint description a server can listen on (``tcp:0``,
    ``tcp6:8080:interface=\\:\\:1``, ``unix:/run/svc.sock``, ``ssl:...``); a usage error
    quoting it otherwise. Nothing is bound."""
    try:
        check_description(description)
    except (TypeError, ValueError) as error:
        raise usage.UsageError(f"--listen: {error}") from None
    except OSError as error:  # an ssl: description's key or certificate file
        raise usage.UsageError(
            f"--listen {description!r}: cannot read {error.filename}: {error.strerror}"
        ) from None
    except Exception as error:  # e.g. a malformed PEM file in an ssl: description
        raise usage.UsageError(f"--listen {description!r}: {error}") from None
    return description


def port_number(value: str) -> int:
    """An option's TCP port (0-65535, 0: any free port); ValueError otherwise."""
    port = int(value)
    if not 0 <= port <= 65535:
        raise ValueError(f"{value} is not a port number (0-65535)")
    return port


def positive_number(value: str) -> float:
    """An option's positive, finite number (seconds); ValueError otherwise."""
    number = float(value)
    if not 0 < number < float("inf"):
        raise ValueError(f"{value} must be a positive number")
    return number


class AnnouncedServiceOptions(usage.Options):
    """The options an announced service's command takes the same way, whatever it serves:
    ``--port`` and ``--bind`` or ``--listen`` (each command words ``--listen`` and ``--grape``
    itself), ``--announce-interval``, ``--metrics``, and the ``--name`` list in
    ``self["names"]`` (each command has its own ``opt_name``, for its help text).

    A command sets ``examples`` (shown after the options); its ``postOptions`` calls
    :meth:`check_transport` and :meth:`check_where`."""

    examples = ""

    optParameters: list[list[Any]] = [
        [
            "port",
            "p",
            None,
            "TCP port to listen on; 0 = any free port (the default).",
            port_number,
        ],
        ["bind", "b", None, "Address to listen on (default: every IPv4 interface)."],
        [
            "announce-interval",
            None,
            DEFAULT_ANNOUNCE_INTERVAL,
            "Seconds between announces (each gap jittered to 0.5-1.5 times this).",
            positive_number,
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

    def __init__(self) -> None:
        super().__init__()
        self["names"] = []

    def getUsage(self, width: int | None = None) -> str:
        """The usage text followed by the examples."""
        return super().getUsage(width) + "\n" + self.examples

    def check_transport(self, name: str) -> None:
        """A usage error unless the RPC transport ``name`` exists."""
        try:
            get_transport(name)
        except UnknownTransport as error:
            raise usage.UsageError(str(error)) from None

    def check_where(self) -> None:
        """A usage error for a ``--listen`` that cannot be used: given with ``--port`` or
        ``--bind``, an ``ssl:`` description with ``--tls-key`` as well, or one no server can
        listen on (:func:`check_listen`)."""
        if self["listen"] is None:
            return
        if self["port"] is not None:
            raise usage.UsageError("give --port or --listen, not both")
        if self["bind"] is not None:
            raise usage.UsageError(
                "--bind applies to --port; put interface=ADDRESS in the --listen description"
            )
        if self["listen"].startswith("ssl:") and self.get("tls-key") is not None:
            raise usage.UsageError(
                "TLS twice: use either an ssl: --listen description or --tls-key/--tls-cert"
            )
        check_listen(self["listen"])


class AnnouncedConfig(Protocol):
    """What :class:`AnnouncedService` reads of its service's configuration."""

    @property
    def grape(self) -> str:
        """URL of the grape's API to announce through."""

    @property
    def announce_interval(self) -> float:
        """Seconds between announces."""

    @property
    def metrics(self) -> ListenSpec | None:
        """Where to serve ``/metrics`` and ``/health`` (``None``: nowhere)."""

    @property
    def where(self) -> ListenSpec:
        """What the server listens on."""


class ServingPeer(Protocol):
    """The server an :class:`AnnouncedService` runs (a peer RPC server, a proxy, a relay)."""

    def listen(self, where: ListenSpec) -> Deferred[int]:
        """Bind ``where``; fires with the port bound."""

    def stop(self) -> Deferred[Any]:
        """Stop announcing and serving."""


ConfigT = TypeVar("ConfigT", bound=AnnouncedConfig)


class AnnouncedService(Service, Generic[ConfigT]):
    """A server announced through a grape, as a Twisted Service.

    :meth:`listen` binds the port (fires with it, or fails with :class:`ListenError`);
    :meth:`announce` starts the announcing loops and fires with each key's first result (a
    node count, or the error's text), each logged. ``startService`` does both (a failure is
    logged as fatal and stops the reactor); ``stopService`` stops announcing, closes the port
    and connections, and stops the link (unless it was passed in).

    With ``config.metrics``, :attr:`metrics` is the service's own
    :class:`~grenache.metrics.Metrics` (its health component named ``health_name``), served
    by :meth:`listen` on that endpoint as well.

    A subclass builds its server and returns it from ``_peer()``, says what it announces in
    ``_first_announces()`` and how healthy it is in ``_health()``, and words its own log lines
    (``_log_listening``, ``_log_announced``, ``_log_stopped``), logged to the ``log`` it passes
    in (its module's, so that the lines keep their namespace).
    """

    #: The field naming the announced key in the announce log events.
    key_field = "key"

    def __init__(
        self,
        config: ConfigT,
        reactor: Any,
        log: Logger,
        health_name: str,
        link: Any = None,
    ) -> None:
        self.config = config
        self.reactor = reactor
        self._log = log
        self._own_link = link is None
        self.link: Any = (
            Link(config.grape, reactor=reactor, announce_interval=config.announce_interval)
            if link is None
            else link
        )
        #: The service's metrics (``None`` unless ``config.metrics`` is given).
        self.metrics: Metrics | None = None
        self.metrics_service: MetricsService | None = None
        if config.metrics is not None:
            self.metrics = Metrics()
            self.metrics.add_health(health_name, self._health)
            self.metrics_service = MetricsService(self.metrics, reactor, config.metrics)
        self._listening = False
        self.port: int | None = None
        #: Set by ``startService``: fires with :meth:`announce`'s results once announced
        #: (with ``None`` if listening failed: that is logged as fatal).
        self.started: Deferred[dict[str, int | str]] | None = None

    # What a subclass says.

    def _peer(self) -> ServingPeer:
        raise NotImplementedError

    def _health(self) -> tuple[str, dict[str, Any]]:
        raise NotImplementedError

    def _first_announces(self) -> list[tuple[str, Deferred[int]]]:
        """Start announcing; each key with the Deferred of its first announce."""
        raise NotImplementedError

    def _log_listening(self, port: int) -> None:
        raise NotImplementedError

    def _log_announced(self, key: str, count: int) -> None:
        raise NotImplementedError

    def _log_stopped(self) -> None:
        raise NotImplementedError

    # The life of the service.

    @property
    def metrics_port(self) -> int | None:
        """The TCP port of ``/metrics`` and ``/health`` once listening (``None`` without)."""
        return None if self.metrics_service is None else self.metrics_service.port

    def _announce_failures(self, keys: list[str]) -> dict[str, str]:
        """``{key: error}`` for those of ``keys`` whose last announce failed."""
        failed = self.metrics.announces.last_failed if self.metrics is not None else {}
        return {key: failed[key] for key in keys if key in failed}

    def listen(self) -> Deferred[int]:
        """Bind the service port (and the metrics one, with ``config.metrics``); fires with
        the service port bound or fails with :class:`ListenError`."""
        return self._listen().addCallback(self._listen_metrics)

    def _listen(self) -> Deferred[int]:
        if self._listening:
            return fail(RuntimeError(f"{type(self).__name__}.listen() was already called"))
        self._listening = True
        requested = self.config.where

        def bound(port: int) -> int:
            self.port = port
            self._log_listening(port)
            return port

        return (
            self._peer()
            .listen(requested)
            .addCallbacks(bound, listen_failed, errbackArgs=(requested,))
        )

    def _listen_metrics(self, port: int) -> Any:
        service = self.metrics_service
        if service is None:
            return port

        def failed(failure: Failure) -> Deferred[int]:
            error = ListenError(f"metrics: {error_message(failure)}")
            return self._peer().stop().addBoth(lambda _: Failure(error))

        service.startService()
        return service.when_listening().addCallbacks(lambda _: port, failed)

    def announce(self) -> Deferred[dict[str, int | str]]:
        """Start announcing (after :meth:`listen`); fires with ``{key: first result}``, a
        result being the number of DHT nodes that stored the announce or the error's text.
        The loops go on either way until ``stopService``."""
        return ensureDeferred(self._announce_all())

    async def _announce_all(self) -> dict[str, int | str]:
        announces = self._first_announces()
        results = await DeferredList([first for _, first in announces], consumeErrors=True)
        outcome: dict[str, int | str] = {}
        for (key, _), (ok, value) in zip(announces, results, strict=True):
            value = cast(Any, value)
            if ok:
                outcome[key] = value
                self._log_announced(key, value)
            else:
                outcome[key] = error_message(value)
                self._log.warn(
                    f"Announcing {{{self.key_field}!r}} through {{grape}} failed: {{error}}; "
                    "will retry",
                    grape=self.config.grape,
                    error=outcome[key],
                    event="announce_failed",
                    **{self.key_field: key},
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
        self._log.critical("{error}", error=error_message(failure), event="fatal")
        if getattr(self.reactor, "running", False):
            self.reactor.stop()

    def stopService(self) -> Deferred[None]:  # type: ignore[override]
        """Stop announcing, close the port and connections, stop the link."""
        super().stopService()
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        if self.metrics is not None:
            self.metrics.stopping = True  # /health answers "stopping" while this runs
        try:
            await self._peer().stop()
        finally:
            if self._own_link:
                await self.link.stop()
            if self.metrics_service is not None and self.metrics_service.running:
                await self.metrics_service.stopService()
        self._log_stopped()


def twistd_service(
    command: str,
    build: Callable[[], AnnouncedService[Any]],
    errors: tuple[type[Exception], ...],
) -> IService:
    """What ``twistd COMMAND``'s ``makeService`` returns: the service ``build`` makes, its
    port bound now, so that a configuration ``build`` refuses (raising one of ``errors``) or
    a taken port is a one-line error before twistd daemonizes."""
    try:
        service = build()
    except errors as error:
        raise SystemExit(f"twistd {command}: {error}") from None
    outcome: list[Any] = []
    service.listen().addBoth(outcome.append)
    if outcome and isinstance(outcome[0], Failure):
        raise SystemExit(f"twistd {command}: {error_message(outcome[0])}")
    return cast(IService, service)
