"""The subscriber peer: follows publishers by name, and resubscribes with backoff when its
publisher goes away (Node's ``PeerSub`` does not)."""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from grenache import errors
from grenache.peer.protocols import LinkProtocol, SubConnection, SubTransport
from grenache.peer.request import error_message

if TYPE_CHECKING:
    from grenache.metrics import Metrics

__all__ = ["PeerSub", "SubscriptionStats"]

log = Logger()

_EVENTS = ("message", "connected", "disconnected", "error")


class SubscriptionStats:
    """What happened under one subscribed name since the :class:`PeerSub` was made (kept
    across unsubscribing and subscribing again): messages received, connections made."""

    __slots__ = ("connects", "messages")

    def __init__(self) -> None:
        self.messages = 0
        self.connects = 0


class _Subscription:
    """One name a :class:`PeerSub` follows: its current connection and reconnect state."""

    def __init__(self, peer: PeerSub, name: str) -> None:
        self.peer = peer
        self.name = name
        self.stats = peer.stats.get(name) or peer.stats.setdefault(name, SubscriptionStats())
        self.connection: SubConnection | None = None
        self.dest: str | None = None
        self.delay = peer.backoff_initial
        self.timer: Any = None
        self.closed = False

    async def connect_once(self, avoid: str | None) -> None:
        """Look the name up and connect to a publisher, trying each until one accepts."""
        peer = self.peer
        dests: list[str] = await peer.link.lookup(self.name)
        if not dests:
            raise errors.LookupEmpty()
        # Other publishers first (in random order), the one just lost last.
        candidates = [d for d in dests if d != avoid]
        peer._rng.shuffle(candidates)
        if avoid is not None and avoid in dests:
            candidates.append(avoid)
        last: BaseException | None = None
        for dest in candidates:
            if self.closed:
                raise CancelledError()
            try:
                conn = await peer.transport.connect(
                    dest,
                    self._on_message,
                    functools.partial(self._on_close, dest),
                    topic=self.name,
                )
            except CancelledError:
                raise
            except Exception as e:
                last = e
                continue
            if self.closed:
                conn.close()
                raise CancelledError()
            self.connection = conn
            self.dest = dest
            self.delay = peer.backoff_initial
            self.stats.connects += 1
            peer._emit("connected", self.name, dest)
            return
        assert last is not None
        raise last

    def _on_message(self, message: str | bytes) -> None:
        self.stats.messages += 1
        self.peer._emit("message", message)

    def _on_close(self, dest: str) -> None:
        if self.dest != dest:
            return
        self.connection = None
        self.dest = None
        self.peer._emit("disconnected", self.name, dest)
        if not self.closed and self.peer.resubscribe:
            self._schedule(dest)

    def _schedule(self, avoid: str | None) -> None:
        delay = self.delay
        self.delay = min(self.delay * 2, self.peer.backoff_max)
        self.timer = self.peer._reactor.callLater(delay, self._retry, avoid)

    def _retry(self, avoid: str | None) -> None:
        self.timer = None
        if self.closed:
            return

        def failed(failure: Failure) -> None:
            if self.closed or failure.check(CancelledError):
                return
            log.debug(
                "Resubscribing to {name} failed ({error}); retrying",
                name=self.name,
                error=error_message(failure),
                event="resubscribe_failed",
            )
            self._schedule(avoid)
            self.peer._emit("error", self.name, failure.value)

        Deferred.fromCoroutine(self.connect_once(avoid)).addErrback(failed)

    def close(self) -> None:
        self.closed = True
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        conn, self.connection = self.connection, None
        if conn is not None:
            conn.close()


class PeerSub:
    """Subscribes to publishers by name and resubscribes when a publisher goes away.

    Events (see :meth:`add_listener`): ``"message"`` ``(message)`` for each message,
    ``"connected"`` ``(name, dest)``, ``"disconnected"`` ``(name, dest)`` and ``"error"``
    ``(name, error)`` when subscribing fails (the lookup, or every publisher refused): the
    first :meth:`sub` (whose Deferred fails too) and each failed resubscribe attempt, as
    Node's ``PeerSub`` emits ``error`` (there only for lookup errors). The attributes
    ``on_message``, ``on_connected``, ``on_disconnected`` and ``on_error`` may also be set to
    a callable.
    With ``resubscribe`` (the default) a lost connection is replaced after a backoff that
    doubles from ``backoff_initial`` up to ``backoff_max`` seconds, preferring another
    publisher when the name has several. Disconnects are events, never logged tracebacks.
    ``reactor`` (required; the link's own, ``link.reactor``, will do) schedules the
    resubscribe timers.

    :attr:`stats` keeps a :class:`SubscriptionStats` per name; ``metrics`` (a
    :class:`~grenache.metrics.Metrics`) reads them, and which names are connected, when
    scraped.
    """

    def __init__(
        self,
        link: LinkProtocol,
        transport: SubTransport,
        *,
        reactor: IReactorTime,
        resubscribe: bool = True,
        backoff_initial: float = 0.1,
        backoff_max: float = 2.0,
        rng: random.Random | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.link = link
        self.transport = transport
        self.resubscribe = resubscribe
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._reactor: Any = reactor
        self._rng = rng if rng is not None else random.Random()
        self._subscriptions: dict[str, _Subscription] = {}
        self._listeners: dict[str, list[Callable[..., Any]]] = {e: [] for e in _EVENTS}
        self.on_message: Callable[[str | bytes], Any] | None = None
        self.on_connected: Callable[[str, str], Any] | None = None
        self.on_disconnected: Callable[[str, str], Any] | None = None
        self.on_error: Callable[[str, Exception], Any] | None = None
        self._stopped = False
        #: Messages and connections by subscribed name (see :class:`SubscriptionStats`).
        self.stats: dict[str, SubscriptionStats] = {}
        if metrics is not None:
            metrics.watch_sub(self)

    def add_listener(self, event: str, fn: Callable[..., Any]) -> None:
        """Call ``fn`` on ``event`` (``"message"``, ``"connected"``, ``"disconnected"`` or
        ``"error"``)."""
        if event not in self._listeners:
            raise ValueError(f"unknown event {event!r}; expected one of {_EVENTS}")
        self._listeners[event].append(fn)

    def remove_listener(self, event: str, fn: Callable[..., Any]) -> None:
        """Stop calling ``fn`` on ``event``."""
        self._listeners[event].remove(fn)

    def _emit(self, event: str, *args: Any) -> None:
        fns = list(self._listeners[event])
        attr = getattr(self, "on_" + event)
        if attr is not None:
            fns.append(attr)
        for fn in fns:
            try:
                fn(*args)
            except Exception:
                log.failure("PeerSub {event} listener failed", event=event)

    @property
    def subscriptions(self) -> dict[str, str | None]:
        """Each subscribed name and the publisher it is connected to (``None`` while not)."""
        return {name: s.dest for name, s in self._subscriptions.items()}

    def sub(self, name: str) -> Deferred[None]:
        """Subscribe to ``name``; fires once connected to one of its publishers.

        The first connection is tried on each looked-up publisher in random order; if none
        accepts (or the lookup fails) the ``"error"`` event is emitted, the Deferred fails and
        nothing is retried. After a successful connection, losses are handled by
        resubscribing.
        """
        if self._stopped:
            return fail(errors.TransportClosed("ERR_TRANSPORT_CLOSE: subscriber stopped"))
        if name in self._subscriptions:
            return succeed(None)
        subscription = _Subscription(self, name)
        self._subscriptions[name] = subscription

        def failed(failure: Failure) -> Failure:
            if self._subscriptions.get(name) is subscription:
                del self._subscriptions[name]
            cancelled = subscription.closed or failure.check(CancelledError)
            subscription.close()
            if not cancelled:
                self._emit("error", name, failure.value)
            return failure

        d = Deferred.fromCoroutine(subscription.connect_once(None))
        d.addErrback(failed)
        return d

    def unsub(self, name: str) -> None:
        """Stop following ``name`` and close its connection."""
        subscription = self._subscriptions.pop(name, None)
        if subscription is not None:
            subscription.close()

    def stop(self) -> Deferred[None]:
        """Close every subscription and stop the transport."""
        self._stopped = True
        for name in list(self._subscriptions):
            self.unsub(name)
        return self.transport.stop()
