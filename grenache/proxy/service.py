"""A proxy as a Twisted Service: what ``grenache proxy`` and ``twistd grenache-proxy`` run."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, fail
from twisted.logger import Logger
from twisted.python.failure import Failure

from grenache.endpoints import ListenSpec
from grenache.link import DEFAULT_ANNOUNCE_INTERVAL, DEFAULT_GRAPE, Link
from grenache.metrics import ALONE, HEALTHY, STOPPING, Metrics, MetricsService
from grenache.peer import ClientTransport, LinkProtocol, PubTransport, ServerTransport, SubTransport
from grenache.peer.request import error_message
from grenache.peer.server import DEFAULT_HANDLER_TIMEOUT
from grenache.proxy.keys import CONTROL_KEY, Route, proxied_key
from grenache.proxy.relay import PubSubRelay
from grenache.proxy.rpc import DEFAULT_MAX_KEYS, ForwardingClients, RPCProxy
from grenache.service_tap import ListenError, listen_failed
from grenache.transports import UnknownTransport, get_transport, transport_names

__all__ = ["CONTROL", "PUBSUB", "STATIC", "ProxyConfig", "ProxyError", "ProxyService"]

log = Logger()

STATIC = "static"
"""Mode: forward the given names' requests from one transport to another."""
CONTROL = "control"
"""Mode: grenache-nodejs-proxy's, keys started and stopped by requests to ``rpc_proxy``."""
PUBSUB = "pubsub"
"""Mode: subscribe to a name on one transport and publish its messages on another."""


class ProxyError(ValueError):
    """A proxy configuration that cannot work; the message says why, in command-line terms."""


@attrs.frozen
class ProxyConfig:
    """What a :class:`ProxyService` runs.

    ``from_transport`` is the transport the proxy serves on (its callers or subscribers use
    it), ``to_transport`` the one it reaches the origin service over (its servers or
    publishers speak it). With no ``names``, the proxy is in control mode (grenache-nodejs-
    proxy's protocol under ``key``, default ``rpc_proxy``; each proxied key names its own
    transport, so there is no ``to_transport``). With ``names``, each is served as ``key``
    (only with one name) or ``FROM:NAME`` and forwarded to ``NAME`` over ``to_transport``;
    with ``pubsub``, the one name's messages are relayed instead of its requests.

    ``port`` (bound to ``interface``) or ``listen`` (an endpoint description or endpoint) is
    where it serves; ``tls`` is the serving side's security (as a service's: TLS settings, or
    CURVE for zmq), ``to_security`` the forwarding side's, by target transport (what each
    client transport gets as ``tls``; a transport not in it gets ``None``). ``timeout``
    (seconds per attempt) and ``retry`` (attempts) apply to each forwarded request (the
    server's handler deadline is 60 s, or ``timeout * retry + 1`` when that is longer);
    ``max_keys`` bounds the keys served; ``metrics`` is where ``/metrics`` and ``/health``
    are served (``None``: nowhere).
    """

    from_transport: str
    names: tuple[str, ...] = ()
    to_transport: str | None = None
    key: str | None = None
    pubsub: bool = False
    port: int = 0
    listen: ListenSpec | None = None
    interface: str | None = None
    grape: str = DEFAULT_GRAPE
    announce_interval: float = DEFAULT_ANNOUNCE_INTERVAL
    tls: Any = None
    to_security: Mapping[str, Any] = attrs.field(factory=dict)
    timeout: float = 10.0
    retry: int = 1
    max_keys: int = DEFAULT_MAX_KEYS
    metrics: ListenSpec | None = None

    @property
    def mode(self) -> str:
        """:data:`CONTROL`, :data:`STATIC` or :data:`PUBSUB`."""
        if not self.names:
            return CONTROL
        return PUBSUB if self.pubsub else STATIC

    @property
    def where(self) -> ListenSpec:
        """What the proxy listens on: ``listen`` if given, else ``port``."""
        return self.listen if self.listen is not None else self.port

    def static_keys(self) -> dict[str, Route]:
        """The keys served from the start (static and pub/sub modes) and their routes."""
        if self.mode == CONTROL:
            return {}
        assert self.to_transport is not None
        if self.key is not None:
            return {self.key: Route(self.to_transport, self.names[0])}
        return {
            proxied_key(self.from_transport, name): Route(self.to_transport, name)
            for name in self.names
        }

    def check(self) -> None:
        """Raise :class:`ProxyError` for a configuration that cannot work."""
        pubsub = self.pubsub
        if pubsub and not self.names:
            raise ProxyError("--pubsub relays one NAME: give it")
        try:
            get_transport(self.from_transport, pubsub=pubsub)
            if self.to_transport is not None:
                get_transport(self.to_transport, pubsub=pubsub)
        except UnknownTransport as error:
            raise ProxyError(str(error)) from None
        if any(not name for name in self.names):
            raise ProxyError("a service name must not be empty")
        if self.key is not None and not self.key:
            raise ProxyError("--as: the key must not be empty")
        if self.mode == CONTROL:
            if self.to_transport is not None:
                raise ProxyError(
                    "--to is for proxying NAMEs; without one, each proxied key names its "
                    "transport (ws:NAME, http:NAME)"
                )
            return
        if self.to_transport is None:
            raise ProxyError("give --to TRANSPORT: the transport the proxied service speaks")
        if self.key is not None and len(self.names) > 1:
            raise ProxyError("--as names the key of one NAME; give one NAME with it")
        if pubsub and len(self.names) != 1:
            raise ProxyError("--pubsub relays one NAME per proxy")
        if len(self.names) > self.max_keys:
            raise ProxyError(f"{len(self.names)} names, more than --max-keys {self.max_keys}")
        if not (isinstance(self.retry, int) and self.retry >= 1):
            raise ProxyError("--retry must be at least 1")
        if not self.timeout > 0:
            raise ProxyError("--timeout must be a positive number of seconds")


class ProxyService(Service):
    """A proxy (:class:`~grenache.proxy.rpc.RPCProxy` or :class:`~grenache.proxy.relay.PubSubRelay`)
    with its link, as a Twisted Service.

    :meth:`listen` binds the port (fires with it, or fails with
    :class:`~grenache.service_tap.ListenError`); ``startService`` listens (unless done) and
    announces; :attr:`started` fires with ``{key: first announce result}`` (a node count or
    the error's text). ``stopService`` stops announcing, closes the port, the forwarding
    clients and the link.

    The transports come from the registry; a test passes its own: ``link``,
    ``server_transport``, ``make_client_transport(name)`` (RPC), ``pub_transport`` and
    ``sub_transport`` (pub/sub).
    """

    name = "grenache-proxy"

    def __init__(
        self,
        config: ProxyConfig,
        reactor: Any,
        *,
        link: LinkProtocol | None = None,
        server_transport: ServerTransport | None = None,
        make_client_transport: Callable[[str], ClientTransport] | None = None,
        pub_transport: PubTransport | None = None,
        sub_transport: SubTransport | None = None,
    ) -> None:
        config.check()
        self.config = config
        self.reactor = reactor
        own_link = link is None
        self.link: Any = (
            Link(config.grape, reactor=reactor, announce_interval=config.announce_interval)
            if link is None
            else link
        )
        self._own_link = own_link
        #: The proxy's metrics (``None`` unless ``config.metrics`` is given).
        self.metrics: Metrics | None = None
        self.metrics_service: MetricsService | None = None
        if config.metrics is not None:
            self.metrics = Metrics()
            self.metrics.add_health("proxy", self._health)
            self.metrics_service = MetricsService(self.metrics, reactor, config.metrics)
        interface = config.interface or ""
        self.rpc: RPCProxy | None = None
        self.relay: PubSubRelay | None = None
        if config.mode == PUBSUB:
            assert config.to_transport is not None
            if pub_transport is None:
                pub_transport = get_transport(config.from_transport, pubsub=True).pub_transport(
                    reactor, tls=config.tls, interface=interface
                )
            if sub_transport is None:
                sub_transport = get_transport(config.to_transport, pubsub=True).sub_transport(
                    reactor, tls=config.to_security.get(config.to_transport)
                )
            ((key, route),) = config.static_keys().items()
            self.relay = PubSubRelay(
                self.link,
                sub_transport,
                pub_transport,
                route.name,
                key,
                reactor=reactor,
                metrics=self.metrics,
            )
        else:
            if server_transport is None:
                server_transport = get_transport(config.from_transport).server_transport(
                    reactor, tls=config.tls, interface=interface
                )
            targets = (
                transport_names() if config.mode == CONTROL else [cast(str, config.to_transport)]
            )
            clients = ForwardingClients(
                self.link,
                reactor,
                transports=targets,
                make_transport=make_client_transport,
                tls={t: config.to_security.get(t) for t in targets},
                timeout=config.timeout,
                metrics=self.metrics,
            )
            self.rpc = RPCProxy(
                self.link,
                server_transport,
                clients,
                reactor=reactor,
                control_key=(config.key or CONTROL_KEY) if config.mode == CONTROL else None,
                max_keys=config.max_keys,
                retry=config.retry,
                # Never cut short a forward still within its own timeouts.
                handler_timeout=max(DEFAULT_HANDLER_TIMEOUT, config.timeout * config.retry + 1),
                metrics=self.metrics,
            )
        self.port: int | None = None
        self._listening = False
        #: Set by ``startService``: fires with :meth:`announce`'s results once announced.
        self.started: Deferred[dict[str, int | str]] | None = None

    @property
    def metrics_port(self) -> int | None:
        """The TCP port of ``/metrics`` and ``/health`` once listening (``None`` without)."""
        return None if self.metrics_service is None else self.metrics_service.port

    def keys(self) -> list[str]:
        """The keys served now (the control key first, in control mode)."""
        if self.relay is not None:
            return [self.relay.key]
        assert self.rpc is not None
        control = [self.rpc.control_key] if self.rpc.control_key is not None else []
        return control + list(self.rpc.routes)

    def _health(self) -> tuple[str, dict[str, Any]]:
        details: dict[str, Any] = {"mode": self.config.mode, "port": self.port}
        if self.metrics is not None and self.metrics.stopping:
            return STOPPING, details
        keys = self.keys()
        details["keys"] = len(keys)
        failed = self.metrics.announces.last_failed if self.metrics is not None else {}
        failing = {key: failed[key] for key in keys if key in failed}
        state = HEALTHY
        if failing:
            state, details["announce_failed"] = ALONE, failing
        if self.relay is not None:
            details["subscribed"] = self.relay.connected
            if not self.relay.connected:
                state = ALONE
        return state, details

    def listen(self) -> Deferred[int]:
        """Bind the proxy's port (and the metrics one, with ``config.metrics``); fires with the
        port or fails with :class:`~grenache.service_tap.ListenError`."""
        return self._listen().addCallback(self._listen_metrics)

    def _peer(self) -> RPCProxy | PubSubRelay:
        peer = self.rpc if self.rpc is not None else self.relay
        assert peer is not None
        return peer

    def _listen(self) -> Deferred[int]:
        if self._listening:
            return fail(RuntimeError("ProxyService.listen() was already called"))
        self._listening = True
        requested = self.config.where

        def bound(port: int) -> int:
            self.port = port
            config = self.config
            log.info(
                "Proxy ({mode}) serving over {transport} on port {port}",
                mode=config.mode,
                transport=config.from_transport + (" with TLS" if config.tls else ""),
                port=port,
                event="listening",
            )
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
        """Start serving and announcing the configured keys (after :meth:`listen`); fires
        with ``{key: first result}``, a node count or the error's text. The announcing goes
        on either way until ``stopService``."""
        return ensureDeferred(self._announce_all())

    async def _announce_all(self) -> dict[str, int | str]:
        keys: list[str] = []
        firsts: list[Deferred[int]] = []
        if self.relay is not None:
            keys.append(self.relay.key)
            firsts.append(self.relay.start())
        else:
            assert self.rpc is not None
            if self.rpc.control_key is not None:
                keys.append(self.rpc.control_key)
                firsts.append(self.rpc.announce_control())
            for key, route in self.config.static_keys().items():
                keys.append(key)
                firsts.append(self.rpc.add(key, route))
        results = await DeferredList(firsts, consumeErrors=True)
        outcome: dict[str, int | str] = {}
        for key, (ok, value) in zip(keys, results, strict=True):
            value = cast(Any, value)
            if ok:
                outcome[key] = value
                log.info(
                    "Announced {key!r} on port {port} through {grape}",
                    key=key,
                    port=self.port,
                    grape=self.config.grape,
                    event="announce",
                )
            else:
                outcome[key] = error_message(value)
                log.warn(
                    "Announcing {key!r} through {grape} failed: {error}; will retry",
                    key=key,
                    grape=self.config.grape,
                    error=outcome[key],
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
        log.critical("{error}", error=error_message(failure), event="fatal")
        if getattr(self.reactor, "running", False):
            self.reactor.stop()

    def stopService(self) -> Deferred[None]:  # type: ignore[override]
        """Stop announcing, close the port, the clients and the link."""
        super().stopService()
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        if self.metrics is not None:
            self.metrics.stopping = True
        try:
            await self._peer().stop()
        finally:
            if self._own_link:
                await self.link.stop()
            if self.metrics_service is not None and self.metrics_service.running:
                await self.metrics_service.stopService()
        log.info("Proxy stopped; port {port} closed", port=self.port, event="stopped")
