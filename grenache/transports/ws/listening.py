"""The listening side shared by the RPC server and the publisher: factory base and endpoints.

A :class:`ServerFactory` is what a listening port hands connections to; a transport has one, and
its ``protocol`` class attribute is the per-socket protocol (autobahn's convention: built with no
arguments, then given ``factory``). The protocol reaches its transport as ``self.factory.owner``.
:class:`ListeningTransport` listens with that factory on anything
:func:`grenache.endpoints.listen` accepts (a port number, an endpoint description, an
``IStreamServerEndpoint``), over TLS when the transport has ``tls``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory
from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from grenache import endpoints
from grenache.endpoints import ListenSpec
from grenache.speedups.autobahn_ws import bind_timers
from grenache.transports.ws.common import gather, start_closing

__all__ = ["ListeningTransport", "ServerFactory"]

log = Logger()


class ServerFactory(WebSocketServerFactory):
    """The factory of a listening WebSocket transport (no status page, timers on ``reactor``).

    ``owner`` is the transport (:class:`~grenache.transports.ws.WSServerTransport` or
    :class:`~grenache.transports.ws.WSPubTransport`); subclasses set ``protocol``.
    """

    def __init__(self, owner: Any, *, reactor: Any) -> None:
        super().__init__(reactor=reactor)
        self.owner = owner
        self.setProtocolOptions(webStatus=False)
        bind_timers(self, reactor)


class ListeningTransport:
    """Listening and stopping, shared by the RPC server and the publisher.

    A subclass sets ``_reactor``, ``tls`` (a context factory or ``None``), ``interface``,
    ``factory`` and ``_port = None``.
    """

    _reactor: Any
    tls: Any
    interface: str
    factory: WebSocketServerFactory
    _port: Any

    def _listen(self, where: ListenSpec, description: str) -> Deferred[int]:
        """Listen on ``where`` (over TLS when ``tls`` is set); fire with the bound port."""
        if self._port is not None:
            return fail(RuntimeError(f"{type(self).__name__} is already listening"))
        factory: Any = self.factory
        if self.tls is not None:
            if isinstance(where, str) and where.strip().lower().startswith("ssl:"):
                return fail(
                    ValueError(
                        f"{where!r} brings its own TLS; pass a tcp endpoint with tls=, "
                        "or the ssl: description without tls="
                    )
                )
            factory = TLSMemoryBIOFactory(self.tls, False, factory)
        self._port = _PENDING

        def listening(listening_port: Any) -> int:
            if self._port is not _PENDING:
                listening_port.stopListening()
                raise RuntimeError(f"{description} was stopped before it listened")
            self._port = listening_port
            bound = endpoints.bound_port(listening_port)
            log.info(
                "{description} listening on {where} (port {port})",
                description=description,
                where=endpoints.describe_listen_spec(where),
                port=bound,
            )
            return bound

        def failed(failure: Any) -> Any:
            if self._port is _PENDING:
                self._port = None
            return failure

        d = endpoints.listen(self._reactor, where, factory, interface=self.interface)
        return d.addErrback(failed).addCallback(listening)

    def _stop_listening(self, sockets: Iterable[Any]) -> Deferred[None]:
        """Stop listening and close each of ``sockets``; fires once all are gone."""
        port, self._port = self._port, None
        waits: list[Deferred[Any]] = []
        if port is not None and port is not _PENDING:
            waits.append(maybeDeferred(port.stopListening))
        for protocol in list(sockets):
            waits.append(protocol.gone)
            start_closing(protocol, 1000)
        return gather(waits)


_PENDING = object()
"""``_port`` while the endpoint is still opening its port."""


def socket_gone(protocol: Any, reason: Any) -> None:
    """A server socket ended: fire its ``gone`` once and tell its ``socket_closed`` hook.

    A failing hook is logged; the socket is gone either way.
    """
    if protocol.gone.called:
        return
    protocol.gone.callback(None)
    try:
        protocol.socket_closed(reason)
    except Exception:
        log.failure("socket_closed failed")
