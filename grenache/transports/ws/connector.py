"""The dialing side shared by the RPC client and the subscriber: opening sockets to ``dest``.

A destination is ``host:port`` text (a host name, an IPv4 address, or an IPv6 address in
brackets: ``[::1]:1337``); the socket is opened to ``ws://<dest>/ws`` (``wss://`` with TLS)
through :func:`grenache.endpoints.client_endpoint`, so names are resolved by the reactor and
IPv6 works. A destination that answers the upgrade as a plain HTTP service (a grenache HTTP RPC
server, say) fails with :class:`~grenache.errors.WrongProtocol`, whose message says it "is an
HTTP service, not WebSocket".

Per socket, a client transport builds a factory of its ``factory_class`` (a
:class:`ClientFactory`) for the URL, and that factory's ``protocol`` (an
:class:`OutgoingProtocol`, given the socket's :class:`OutgoingSocket`) speaks on the socket.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any, Generic, Protocol, TypeVar, cast

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.defer import Deferred, fail
from twisted.python.failure import Failure

from grenache import endpoints
from grenache.speedups.autobahn_ws import FastPath, bind_timers
from grenache.timers import DeadlineTimer
from grenache.tls import ClientTLS
from grenache.transports.ws.common import configure, gather, start_closing, wrong_protocol

__all__ = [
    "Agent",
    "ClientFactory",
    "Connector",
    "DialingTransport",
    "OutgoingProtocol",
    "OutgoingSocket",
]

#: Statuses with which a WebSocket server refuses a client (``verify_client``, Node's
#: ``verifyClient``): a refusal, not a sign of the wrong kind of service.
_REFUSALS = frozenset({401, 403})


class Agent(Protocol):
    """What the client transports need to open a socket (autobahn's IWebSocketClientAgent)."""

    def open(
        self, transport_config: str, options: dict[str, Any], protocol_class: Any = None
    ) -> Deferred[Any]:
        """Open a socket to the URL ``transport_config``, run by a ``protocol_class()``
        (autobahn's ``IWebSocketClientAgent.open``; ``options`` are autobahn's). Fails when no
        connection could be made; the protocol's own callbacks follow the WebSocket handshake.
        """
        ...


class ClientFactory(WebSocketClientFactory):
    """The factory of one outgoing socket, its timers on ``reactor``.

    Built by :class:`Connector` for each socket with the socket's URL; subclass it (and name
    the subclass in the transport's ``factory_class``) to set autobahn options or headers.
    ``protocol`` is the class the transport instantiates for the socket.
    """

    def __init__(self, url: str, *, reactor: Any) -> None:
        super().__init__(url=url, reactor=reactor)
        bind_timers(self, reactor)


class Connector:
    """Opens client sockets like autobahn's agent, through Grenache's client endpoints.

    ``open`` fires when the TCP (and TLS) connection is made, or fails when it cannot be;
    the WebSocket handshake is then followed through the protocol's own callbacks.
    """

    def __init__(
        self, reactor: Any, tls: Any, connect_timeout: float, factory_class: type[ClientFactory]
    ) -> None:
        self._reactor = reactor
        self._tls = tls
        self._connect_timeout = connect_timeout
        self._factory_class = factory_class

    def open(
        self, transport_config: str, options: dict[str, Any], protocol_class: Any = None
    ) -> Deferred[Any]:
        """Connect a :class:`ClientFactory` (the connector's ``factory_class``, built for the URL
        ``transport_config``, running ``protocol_class``) through
        :func:`grenache.endpoints.client_endpoint`, over TLS for ``wss://`` (a ValueError without
        TLS options). Fires once the TCP (and TLS) connection is made; ``options`` is not used.
        """
        factory = self._factory_class(transport_config, reactor=self._reactor)
        factory.protocol = protocol_class
        factory.noisy = False
        host, port = factory.host, factory.port
        if ":" in host:
            # autobahn writes the Host header as host:port; an IPv6 address needs its brackets.
            factory.host = f"[{host}]"
        tls = None
        if factory.isSecure:
            tls = self._tls
            if tls is None:
                return fail(ValueError("wss:// needs tls options"))
            if isinstance(tls, ClientTLS):
                tls = tls.creator_for(host)
        endpoint = endpoints.client_endpoint(
            self._reactor, host, port, tls=tls, timeout=self._connect_timeout
        )
        return cast("Deferred[Any]", cast(Any, endpoint).connect(factory))


class OutgoingProtocol(FastPath, WebSocketClientProtocol):  # type: ignore[misc]
    """The socket of an :class:`OutgoingSocket`, reporting to it as it opens and ends.

    Override points (call the base method): ``onOpen`` (the socket is open), ``onClose`` and
    ``connectionLost`` (it ended), ``onMessage`` (a message arrived).
    """

    def __init__(self, outgoing: OutgoingSocket[Any, Any]) -> None:
        super().__init__()
        self._outgoing = outgoing
        configure(self, outgoing.owner.max_message_size)
        self.gone: Deferred[None] = Deferred()
        self.close_reason: str | None = None
        outgoing.attach(self)

    def connectionMade(self) -> None:
        """Connected; a socket given up meanwhile (stop, timeout, close) is dropped at once."""
        super().connectionMade()
        if self._outgoing.is_closed:
            # Connected after whoever wanted it gave up (stop, timeout, close).
            self.dropConnection(abort=True)

    def onOpen(self) -> None:
        """The handshake is done: tell the socket's :class:`OutgoingSocket`
        (:meth:`OutgoingSocket.opened`).
        """
        self._outgoing.opened()

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        """Keep the close reason; the end of an open socket is reported to its
        :class:`OutgoingSocket` at once (:meth:`OutgoingSocket.lost`).
        """
        self.close_reason = reason
        if self._outgoing.is_open:
            self._outgoing.lost(f"code {code} {reason or ''}".strip())

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        """Report the end to the :class:`OutgoingSocket` (as :class:`~grenache.errors.WrongProtocol`
        when a plain HTTP service answered the upgrade) and fire ``gone``.
        """
        super().connectionLost(reason)
        refusal = self.wrong_protocol()
        self._outgoing.lost(refusal or reason, self.close_reason)
        if not self.gone.called:
            self.gone.callback(None)

    def wrong_protocol(self) -> Exception | None:
        """The error to report when the upgrade was answered as a plain HTTP service does.

        A reply to the upgrade request other than 101, and other than the statuses a WebSocket
        server refuses clients with (401, 403), means the port speaks HTTP only.
        """
        if self._outgoing.is_open:
            return None
        status_line = getattr(self, "http_status_line", None)
        if not isinstance(status_line, str):
            return None
        parts = status_line.split()
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            return None
        status = int(parts[1])
        if status == 101 or status in _REFUSALS:
            return None
        return wrong_protocol(self._outgoing.dest, status_line)


_DialerT = TypeVar("_DialerT", bound="DialingTransport")
_ProtocolT = TypeVar("_ProtocolT", bound=OutgoingProtocol)


class OutgoingSocket(Generic[_DialerT, _ProtocolT]):
    """A socket this side opens to ``ws://<dest>/ws``: an RPC connection or a subscription.

    A subclass says what to do once the socket is open (:meth:`_on_open`) and when it ends
    (:meth:`lost`); the protocol is the owner's ``factory_class.protocol``.
    """

    def __init__(self, owner: _DialerT, dest: str) -> None:
        self.owner = owner
        self.dest = dest
        self.protocol: _ProtocolT | None = None
        self.is_open = False
        self.is_closed = False
        self._attempt: Deferred[Any] | None = None

    def _on_open(self) -> None:
        raise NotImplementedError

    def lost(self, reason: Any, detail: str | None = None) -> None:
        """The socket ended, or could not be opened; a subclass fails or ends what depends on it
        (once: later calls change nothing).

        ``reason`` is a :class:`~twisted.python.failure.Failure`, an exception or a text (the close
        code), ``detail`` the close reason autobahn reported, if any. Before the socket opened,
        :func:`~grenache.transports.ws.common.unreachable` turns them into the error to report.
        """
        raise NotImplementedError

    def url(self) -> str:
        """``ws://<dest>/ws`` (``wss://`` with TLS); ValueError for a malformed ``dest``."""
        host, port = endpoints.split_host_port(self.dest)
        scheme = "wss" if self.owner.tls is not None else "ws"
        return f"{scheme}://{endpoints.join_host_port(host, port)}/ws"

    def start(self) -> None:
        """Start opening the socket; a socket that cannot be opened is :meth:`lost`."""
        try:
            protocol_class: Any = self.owner.factory_class.protocol
            new_protocol = functools.partial(protocol_class, self)
            d = self.owner._agent.open(self.url(), {}, protocol_class=new_protocol)
        except Exception as e:
            self.lost(e)
            return
        self._attempt = d
        d.addErrback(self._attempt_failed)

    def _attempt_failed(self, failure: Failure) -> None:
        self._attempt = None
        self.lost(failure)

    def attach(self, protocol: _ProtocolT) -> None:
        """Called by the protocol as it is built: keep it, and count it among the owner's sockets
        until it is ``gone`` (a stop waits for them).
        """
        self.protocol = protocol
        self.owner._protocols.add(protocol)
        protocol.gone.addBoth(lambda _: self.owner._protocols.discard(protocol))

    def opened(self) -> None:
        """The handshake is done: use the socket, or close it if it was given up meanwhile."""
        if self.is_closed:
            assert self.protocol is not None
            self.protocol.sendClose()
            return
        self.is_open = True
        self._attempt = None
        self._on_open()

    def _shut(self) -> None:
        """Cancel the connection attempt, or start closing the socket."""
        protocol = self.protocol
        if protocol is None:
            if self._attempt is not None:
                self._attempt.cancel()
        else:
            start_closing(protocol)


class DialingTransport:
    """What the RPC client and the subscriber share: the socket opener, the sockets still
    open (to wait for on stop) and the one timer, set by ``_sweep``.

    ``factory_class`` (a class attribute, or the ``factory_class=`` keyword) is the
    :class:`ClientFactory` built for each socket; its ``protocol`` runs the socket.
    """

    factory_class: type[ClientFactory]

    def __init__(
        self,
        reactor: Any,
        tls: Any,
        connect_timeout: float,
        max_message_size: int,
        agent: Agent | None,
        factory_class: type[ClientFactory] | None,
    ) -> None:
        self._reactor = reactor
        self._clock: Any = reactor
        self.tls = tls
        self.max_message_size = max_message_size
        if factory_class is not None:
            self.factory_class = factory_class
        self._agent: Agent = (
            agent
            if agent is not None
            else Connector(reactor, tls, connect_timeout, self.factory_class)
        )
        self._protocols: set[OutgoingProtocol] = set()
        self._sweeper = DeadlineTimer(self._clock, self._sweep)
        self._stopped = False

    def _sweep(self, now: float) -> float | None:
        raise NotImplementedError

    def _close_every(self, sockets: Iterable[Any]) -> Deferred[None]:
        """Refuse new work, close each of ``sockets``; fires once every socket is gone."""
        self._stopped = True
        self._sweeper.cancel()
        for socket in list(sockets):
            socket.close()
        return gather([p.gone for p in list(self._protocols)])
