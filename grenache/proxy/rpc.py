"""The RPC proxy: a server that forwards each request it gets to a service on another
transport, and the clients it forwards with."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, fail, gatherResults, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from grenache import errors
from grenache.peer import (
    ClientTransport,
    LinkProtocol,
    PeerRPCClient,
    PeerRPCServer,
    Reply,
    Request,
    ServerTransport,
    error_message,
)
from grenache.peer.server import DEFAULT_HANDLER_TIMEOUT
from grenache.proxy.keys import BadControlPayload, Route, parse_control
from grenache.transports import UnknownTransport, get_transport, transport_names

if TYPE_CHECKING:
    from grenache.metrics import Metrics

__all__ = [
    "DEFAULT_MAX_KEYS",
    "ForwardingClients",
    "ProxyLimitReached",
    "RPCProxy",
    "not_proxied",
]

log = Logger()

DEFAULT_MAX_KEYS = 100
"""Keys one proxy forwards at most (static ones and those started by control requests). Each
is an announcing loop and a route; a control request past the limit is answered with an
error."""


class ProxyLimitReached(ValueError):
    """The proxy forwards :attr:`RPCProxy.max_keys` keys already."""


def not_proxied(key: str) -> str:
    """The error a proxy answers for a key it does not forward (grenache-nodejs-proxy's
    words): ``"KEY is not proxied"``."""
    return f"{key} is not proxied"


class ForwardingClients:
    """The RPC clients a proxy forwards with: one :class:`~grenache.peer.PeerRPCClient` per
    target transport, all on one ``link``, made when first needed.

    ``transports`` are the transport names requests may be forwarded over (default: every
    transport of the registry). Each client transport is made by ``make_transport(name)``;
    by default from the registry, with ``tls[name]`` as its ``tls`` (a
    :class:`~grenache.tls.ClientTLS` for http and ws; see each transport for its own).
    ``timeout`` (seconds) bounds each attempt; ``metrics`` counts the requests sent by
    destination.
    """

    def __init__(
        self,
        link: LinkProtocol,
        reactor: IReactorTime,
        *,
        transports: Sequence[str] | None = None,
        make_transport: Callable[[str], ClientTransport] | None = None,
        tls: dict[str, Any] | None = None,
        timeout: float = 10.0,
        metrics: Metrics | None = None,
    ) -> None:
        if not timeout > 0:
            raise ValueError("timeout must be a positive number of seconds")
        self.link = link
        self.reactor = reactor
        self.transports: tuple[str, ...] = tuple(
            transport_names() if transports is None else transports
        )
        self.tls = dict(tls or {})
        self._make_transport = make_transport or self._registry_transport
        self.timeout = timeout
        self.metrics = metrics
        self._clients: dict[str, PeerRPCClient] = {}
        self._stopped = False

    def _registry_transport(self, name: str) -> ClientTransport:
        entry = get_transport(name)
        transport: ClientTransport = entry.client_transport(self.reactor, tls=self.tls.get(name))
        return transport

    def client(self, transport: str) -> PeerRPCClient:
        """The client forwarding over ``transport`` (made now if it is the first request);
        :class:`~grenache.transports.UnknownTransport` for a name not in :attr:`transports`."""
        client = self._clients.get(transport)
        if client is None:
            if transport not in self.transports:
                available = ", ".join(self.transports)
                raise UnknownTransport(
                    f"cannot forward over {transport!r} (available: {available})"
                )
            if self._stopped:
                raise errors.TransportClosed("ERR_TRANSPORT_CLOSE: proxy stopped")
            client = PeerRPCClient(
                self.link,
                self._make_transport(transport),
                reactor=self.reactor,
                timeout=self.timeout,
                metrics=self.metrics,
            )
            self._clients[transport] = client
        return client

    def stop(self) -> Deferred[None]:
        """Stop every client (requests in flight fail with TransportClosed)."""
        self._stopped = True
        clients, self._clients = list(self._clients.values()), {}
        if not clients:
            return succeed(None)
        return gatherResults([c.stop() for c in clients], consumeErrors=True).addCallback(
            lambda _: None
        )


class RPCProxy:
    """Serves keys on one server transport and forwards each request to the service a key
    routes to (a :class:`~grenache.proxy.keys.Route`: a name and a transport), announcing the
    keys through ``link``.

    The request's payload is sent unchanged with a :class:`~grenache.peer.PeerRPCClient` of
    ``clients`` (its timeout, failover past refused destinations, ``retry`` attempts), and
    the outcome comes back unchanged: the result, or the origin's error string with the
    result it carried (a :class:`~grenache.errors.RemoteError` becomes the same
    ``[rid, error, result]`` reply), or the client's own error (``ERR_TIMEOUT``,
    ``ERR_GRAPE_LOOKUP_EMPTY``...). A key the proxy does not serve is answered with the
    error ``"KEY is not proxied"``.

    With ``control_key`` (grenache-nodejs-proxy's ``rpc_proxy``), requests to that key are
    commands: payload ``ws:NAME`` (any transport of ``clients``) starts serving the key
    ``ws:NAME``, forwarded to ``NAME`` over WebSocket, and announcing it at the proxy's port;
    the reply is ``"Started proxying ws:NAME"``. ``stop ws:NAME`` stops it (``"Stopped
    proxying ws:NAME"``). A payload of any other shape is answered with an error saying what
    is expected.

    At most ``max_keys`` keys are served at once (static and started ones alike). The
    server is a :class:`~grenache.peer.PeerRPCServer` (:attr:`server`): ``handler_timeout``,
    ``reactor`` and ``metrics`` are passed to it.
    """

    def __init__(
        self,
        link: LinkProtocol,
        transport: ServerTransport,
        clients: ForwardingClients,
        *,
        reactor: IReactorTime | None = None,
        control_key: str | None = None,
        max_keys: int = DEFAULT_MAX_KEYS,
        retry: int = 1,
        handler_timeout: float | None = DEFAULT_HANDLER_TIMEOUT,
        metrics: Metrics | None = None,
    ) -> None:
        if isinstance(max_keys, bool) or not isinstance(max_keys, int) or max_keys < 1:
            raise ValueError(f"max_keys must be an integer of at least 1, not {max_keys!r}")
        if isinstance(retry, bool) or not isinstance(retry, int) or retry < 1:
            raise ValueError(f"retry must be an integer of at least 1, not {retry!r}")
        self.link = link
        self.clients = clients
        self.control_key = control_key
        self.max_keys = max_keys
        self.retry = retry
        self.metrics = metrics
        self.server = PeerRPCServer(
            link,
            transport,
            self.handle,
            reactor=reactor,
            handler_timeout=handler_timeout,
            metrics=metrics,
        )
        self._routes: dict[str, Route] = {}
        self._announced: dict[str, int] = {}
        self._stopped = False
        if metrics is not None:
            metrics.count_announces(link)

    @property
    def routes(self) -> dict[str, Route]:
        """Each key served and where it is forwarded (a copy)."""
        return dict(self._routes)

    @property
    def port(self) -> int:
        """The port the server listens on (RuntimeError before :meth:`listen` completed)."""
        return self.server.port

    def listen(self, where: Any = 0) -> Deferred[int]:
        """Listen on ``where`` (a port, an endpoint description or a server endpoint, as
        :meth:`PeerRPCServer.listen <grenache.peer.PeerRPCServer.listen>`); fires with the
        bound port. With a ``control_key``, announce it with :meth:`announce_control`."""
        return self.server.listen(where)

    def announce_control(self) -> Deferred[int]:
        """Announce the control key at the port until :meth:`stop`; fires with the first
        announce's result."""
        if self.control_key is None:
            return fail(RuntimeError("this proxy has no control key"))
        return self.server.announce(self.control_key)

    def add(self, key: str, route: Route) -> Deferred[int]:
        """Serve ``key``, forwarding to ``route``, and announce it at the port (after
        :meth:`listen`) until :meth:`remove` or :meth:`stop`; fires with the first announce's
        result (it may fail; the announcing goes on). A key served already gets the new route.

        Raises :class:`ProxyLimitReached` past :attr:`max_keys`,
        :class:`~grenache.transports.UnknownTransport` for a transport the clients do not
        have, ValueError for an empty key or name.
        """
        if self._stopped:
            raise RuntimeError("the proxy is stopped")
        if not key or not route.name:
            raise ValueError("a proxied key and its service name must not be empty")
        if route.transport not in self.clients.transports:
            available = ", ".join(self.clients.transports)
            raise UnknownTransport(
                f"cannot forward over {route.transport!r} (available: {available})"
            )
        if key not in self._routes and len(self._routes) >= self.max_keys:
            raise ProxyLimitReached(
                f"cannot proxy {key}: {self.max_keys} keys are proxied already (the limit)"
            )
        self._routes[key] = route
        port = self.port
        self._announced[key] = port
        return self.link.start_announcing(key, port)

    def remove(self, key: str) -> Deferred[None]:
        """Stop serving ``key`` and stop announcing it (and unannounce it where the grape
        can); fires when that ended, and never fails. Nothing happens for a key not served."""
        self._routes.pop(key, None)
        port = self._announced.pop(key, None)
        if port is None:
            return succeed(None)
        return self._stop_announcing(key, port)

    def _stop_announcing(self, key: str, port: int) -> Deferred[None]:
        d: Deferred[Any] = maybeDeferred(self.link.stop_announcing, key, port)

        def failed(failure: Failure) -> None:
            log.failure("stop_announcing({key}, {port}) failed", failure, key=key, port=port)

        return d.addCallbacks(lambda _: None, failed)

    # --- serving -------------------------------------------------------------------------------

    def handle(self, request: Request) -> Any:
        """Answer one request: a command to the control key, a forwarded request, or the
        not-proxied error."""
        key = request.key
        if key == self.control_key:
            return self._control(request.payload)
        route = self._routes.get(key)
        if route is None:
            # The caller's mistake, not the proxy's: an error reply, with no traceback logged.
            return Reply(not_proxied(key))
        client = self.clients.client(route.transport)
        d = client.request(route.name, request.payload, retry=self.retry)
        return d.addErrback(_carry_remote_error)

    def _control(self, payload: Any) -> Any:
        try:
            command = parse_control(payload, self.clients.transports)
        except BadControlPayload as error:
            return Reply(f"{self.control_key}: {error}")
        key = command.key
        if not command.start:
            return self.remove(key).addCallback(lambda _: f"Stopped proxying {key}")
        try:
            first = self.add(key, command.route)
        except (ProxyLimitReached, ValueError, RuntimeError) as error:
            return Reply(f"{self.control_key}: {error}")

        def announced(outcome: Any) -> str:
            if isinstance(outcome, Failure):
                log.warn(
                    "Announcing {key!r} failed: {error}; will retry",
                    key=key,
                    error=error_message(outcome),
                    event="announce_failed",
                )
            return f"Started proxying {key}"

        return first.addBoth(announced)

    def stop(self) -> Deferred[None]:
        """Stop announcing every key, stop the server (handlers in flight are cancelled) and
        the clients."""
        if self._stopped:
            return succeed(None)
        self._stopped = True
        announced, self._announced = self._announced, {}
        self._routes.clear()
        leaving = [self._stop_announcing(key, port) for key, port in announced.items()]

        def then_server(_: Any) -> Deferred[Any]:
            return self.server.stop().addBoth(lambda _: self.clients.stop())

        return gatherResults(leaving).addCallback(then_server).addCallback(lambda _: None)


def _carry_remote_error(failure: Failure) -> Any:
    """The origin's error reply, as the origin sent it: its string and its result."""
    if failure.check(errors.RemoteError):
        error: Any = failure.value
        return Reply(error.message, error.result)
    return failure
