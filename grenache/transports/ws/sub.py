"""The subscribing side of pub/sub over WebSocket: :class:`WSSubTransport` and its protocol.

Connects to ``ws://<dest>/ws`` (``wss://`` with TLS) and hands each message to ``on_message``:
``str`` for a text frame, ``bytes`` for a binary one (docs/protocol.rst, *Pub/sub over
WebSocket*). A heartbeat (a WebSocket ping after a silence) notices a publisher that vanished.

Override points: ``WSSubTransport.factory_class`` (or ``factory_class=``) is the
:class:`SubFactory` built for each socket, and its ``protocol`` the :class:`SubProtocol`; a
subclass may override :meth:`~SubProtocol.message_received` ``(message)``, which hands each
message to the subscription, and ``onOpen``/``onClose``/``connectionLost`` (calling the base).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.logger import Logger

from grenache.errors import TransportClosed
from grenache.peer import SubConnection
from grenache.transports.ws.common import DEFAULT_MAX_MESSAGE_SIZE, unreachable
from grenache.transports.ws.connector import (
    Agent,
    ClientFactory,
    DialingTransport,
    OutgoingProtocol,
    OutgoingSocket,
)

__all__ = ["SubFactory", "SubProtocol", "WSSubTransport"]

log = Logger()


class SubProtocol(OutgoingProtocol):
    """A subscriber socket (of one :class:`Subscription`)."""

    def __init__(self, subscription: Subscription) -> None:
        super().__init__(subscription)
        self.subscription = subscription
        self.last_seen = 0.0
        self.ping_sent: float | None = None

    def message_received(self, message: str | bytes) -> None:
        """One published message (``str`` from a text frame, ``bytes`` from a binary one)."""
        self.subscription.received(message)

    def onOpen(self) -> None:
        """The socket is open: the heartbeat's silence counts from now."""
        self.last_seen = self.subscription.owner._clock.seconds()
        super().onOpen()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """A published message (text frames decoded from UTF-8): to :meth:`message_received`; it
        also shows the publisher is alive.
        """
        self.last_seen = self.subscription.owner._clock.seconds()
        self.message_received(payload if isBinary else payload.decode("utf-8"))

    def onPong(self, payload: bytes) -> None:
        """The answer to a heartbeat ping: the publisher is alive."""
        self.last_seen = self.subscription.owner._clock.seconds()


class SubFactory(ClientFactory):
    """The factory of each :class:`WSSubTransport` socket; ``protocol`` runs the socket."""

    protocol = SubProtocol  # type: ignore[assignment]


class Subscription(OutgoingSocket["WSSubTransport", SubProtocol]):
    """One subscriber socket (:class:`~grenache.peer.SubConnection`)."""

    def __init__(
        self,
        owner: WSSubTransport,
        dest: str,
        on_message: Callable[[str | bytes], None],
        on_close: Callable[[], None],
    ) -> None:
        super().__init__(owner, dest)
        self._on_message = on_message
        self._on_close = on_close
        self.ready: Deferred[SubConnection] = Deferred(lambda _: self.close())

    def _on_open(self) -> None:
        self.owner._subscriptions.add(self)
        interval = self.owner.heartbeat_interval
        if interval is not None:
            self.owner._sweeper.due(self.owner._clock.seconds() + interval)
        self.ready.callback(self)

    def received(self, message: str | bytes) -> None:
        """Hand ``message`` to ``on_message`` (a callback that raises is logged; the subscription
        goes on); nothing once the subscription is closed.
        """
        if self.is_closed:
            return
        try:
            self._on_message(message)
        except Exception:
            log.failure("subscriber on_message failed for a message from {dest}", dest=self.dest)

    def lost(self, reason: Any, detail: str | None = None) -> None:
        """The socket ended (or never opened: the ``ready`` Deferred fails)."""
        if self.is_closed:
            return
        was_open = self.is_open
        self.is_closed = True
        self.is_open = False
        self.owner._subscriptions.discard(self)
        if not was_open:
            if not self.ready.called:
                error = reason if isinstance(reason, CancelledError) else None
                self.ready.errback(error or unreachable(self.dest, reason, detail))
            return
        try:
            self._on_close()
        except Exception:
            log.failure("subscriber on_close failed for {dest}", dest=self.dest)

    def close(self) -> None:
        """Close the socket; ``on_close`` is called if it was open."""
        was_open = self.is_open
        self._shut()
        # on_close now, not after the closing handshake: the caller asked for it to end.
        self.lost("closed" if was_open else CancelledError())


class WSSubTransport(DialingTransport):
    """The subscribing side of WebSocket pub/sub (:class:`~grenache.peer.SubTransport`).

    Connects to ``ws://<dest>/ws`` (``wss://`` with ``tls``; ``dest`` is ``host:port``, a host
    name or ``[ipv6]:port`` too) and hands each message to ``on_message``. After
    ``heartbeat_interval`` seconds without traffic a ping is sent, and a socket that stays
    silent for another interval is closed (``None``: never). ``agent`` replaces the socket
    opener (tests); ``factory_class`` the class attribute of the same name.
    """

    factory_class: type[ClientFactory] = SubFactory

    def __init__(
        self,
        reactor: Any,
        *,
        tls: Any = None,
        heartbeat_interval: float | None = 30.0,
        connect_timeout: float = 10.0,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        agent: Agent | None = None,
        factory_class: type[ClientFactory] | None = None,
    ) -> None:
        if heartbeat_interval is not None and not heartbeat_interval > 0:
            raise ValueError("heartbeat_interval must be positive or None")
        super().__init__(reactor, tls, connect_timeout, max_message_size, agent, factory_class)
        self.heartbeat_interval = heartbeat_interval
        self._subscriptions: set[Subscription] = set()
        self._pending: set[Subscription] = set()

    def connect(
        self,
        dest: str,
        on_message: Callable[[str | bytes], None],
        on_close: Callable[[], None],
        *,
        topic: str | None = None,
    ) -> Deferred[SubConnection]:
        """Subscribe to the publisher at ``dest``; fires once the socket is open. ``topic``
        is ignored: a WebSocket publisher sends every subscriber all it publishes."""
        if self._stopped:
            return fail(TransportClosed())
        subscription = Subscription(self, dest, on_message, on_close)
        self._pending.add(subscription)
        subscription.ready.addBoth(self._settled, subscription)
        subscription.start()
        return subscription.ready

    def _settled(self, result: Any, subscription: Subscription) -> Any:
        self._pending.discard(subscription)
        return result

    @property
    def connections(self) -> int:
        """How many subscriber sockets are open."""
        return len(self._subscriptions)

    def _sweep(self, now: float) -> float | None:
        interval = self.heartbeat_interval
        if interval is None:
            return None
        nxt: float | None = None
        for subscription in list(self._subscriptions):
            protocol = subscription.protocol
            if protocol is None or protocol.state != WebSocketProtocol.STATE_OPEN:
                continue
            if now - protocol.last_seen < interval:
                due = protocol.last_seen + interval
            elif protocol.ping_sent is None or protocol.ping_sent <= protocol.last_seen:
                protocol.sendPing()
                protocol.ping_sent = now
                due = now + interval
            elif now - protocol.ping_sent >= interval:
                log.info(
                    "publisher {dest} silent for {seconds} s after a ping; closing",
                    dest=subscription.dest,
                    seconds=now - protocol.last_seen,
                )
                protocol.dropConnection(abort=True)
                subscription.lost("heartbeat timeout")
                continue
            else:
                due = protocol.ping_sent + interval
            if nxt is None or due < nxt:
                nxt = due
        return nxt

    def stop(self) -> Deferred[None]:
        """Close every subscriber socket (each ``on_close`` is called)."""
        return self._close_every(list(self._subscriptions) + list(self._pending))
