"""A proxy as a Twisted Service: what ``grenache proxy`` and ``twistd grenache-proxy`` run."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from grenache.announced_service import AnnouncedService
from grenache.endpoints import ListenSpec
from grenache.link import DEFAULT_ANNOUNCE_INTERVAL, DEFAULT_GRAPE
from grenache.metrics import ALONE, HEALTHY, STOPPING
from grenache.peer import ClientTransport, LinkProtocol, PubTransport, ServerTransport, SubTransport
from grenache.peer.server import DEFAULT_HANDLER_TIMEOUT
from grenache.proxy.keys import CONTROL_KEY, Route, proxied_key
from grenache.proxy.relay import PubSubRelay
from grenache.proxy.rpc import DEFAULT_MAX_KEYS, ForwardingClients, RPCProxy
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


class ProxyService(AnnouncedService[ProxyConfig]):
    """A proxy (:class:`~grenache.proxy.rpc.RPCProxy` or :class:`~grenache.proxy.relay.PubSubRelay`)
    with its link, as a Twisted Service.

    :meth:`listen` binds the port (fires with it, or fails with
    :class:`~grenache.announced_service.ListenError`); ``startService`` listens (unless done) and
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
        super().__init__(config, reactor, log, health_name="proxy", link=link)
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
        failing = self._announce_failures(keys)
        state = HEALTHY
        if failing:
            state, details["announce_failed"] = ALONE, failing
        if self.relay is not None:
            details["subscribed"] = self.relay.connected
            if not self.relay.connected:
                state = ALONE
        return state, details

    def _peer(self) -> RPCProxy | PubSubRelay:
        peer = self.rpc if self.rpc is not None else self.relay
        assert peer is not None
        return peer

    def _first_announces(self) -> list[tuple[str, Deferred[int]]]:
        if self.relay is not None:
            return [(self.relay.key, self.relay.start())]
        assert self.rpc is not None
        firsts: list[tuple[str, Deferred[int]]] = []
        if self.rpc.control_key is not None:
            firsts.append((self.rpc.control_key, self.rpc.announce_control()))
        for key, route in self.config.static_keys().items():
            firsts.append((key, self.rpc.add(key, route)))
        return firsts

    def _log_listening(self, port: int) -> None:
        config = self.config
        log.info(
            "Proxy ({mode}) serving over {transport} on port {port}",
            mode=config.mode,
            transport=config.from_transport + (" with TLS" if config.tls else ""),
            port=port,
            event="listening",
        )

    def _log_announced(self, key: str, count: int) -> None:
        log.info(
            "Announced {key!r} on port {port} through {grape}",
            key=key,
            port=self.port,
            grape=self.config.grape,
            event="announce",
        )

    def _log_stopped(self) -> None:
        log.info("Proxy stopped; port {port} closed", port=self.port, event="stopped")
