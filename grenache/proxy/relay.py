"""The pub/sub relay: subscribes to a name's publishers over one transport and publishes
every message again over another."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from grenache.endpoints import ListenSpec
from grenache.peer import LinkProtocol, PeerPub, PeerSub, PubTransport, SubTransport, error_message

if TYPE_CHECKING:
    from grenache.metrics import Metrics

__all__ = ["PubSubRelay"]

log = Logger()


class PubSubRelay:
    """Follows the publishers of ``name`` with a :class:`~grenache.peer.PeerSub` on
    ``sub_transport`` and publishes each message, unchanged, with a
    :class:`~grenache.peer.PeerPub` on ``pub_transport``, announced as ``key``.

    :meth:`start` announces ``key`` and subscribes. While ``name`` has no publisher (the
    lookup is empty, or every publisher refuses), the subscription is tried again after
    ``retry_initial`` seconds, doubling up to ``retry_max``; once connected, the subscriber
    follows the name to another publisher by itself when the connection is lost. Messages
    published while the relay has no publisher are not seen, as for any subscriber.
    ``reactor`` runs the retry timers; ``metrics`` counts both peers' messages.
    """

    def __init__(
        self,
        link: LinkProtocol,
        sub_transport: SubTransport,
        pub_transport: PubTransport,
        name: str,
        key: str,
        *,
        reactor: IReactorTime,
        retry_initial: float = 1.0,
        retry_max: float = 30.0,
        metrics: Metrics | None = None,
    ) -> None:
        if not name or not key:
            raise ValueError("a relay needs a name to subscribe to and a key to announce")
        if not 0 < retry_initial <= retry_max:
            raise ValueError("give 0 < retry_initial <= retry_max")
        self.name = name
        self.key = key
        self.reactor: Any = reactor
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.subscriber = PeerSub(link, sub_transport, reactor=reactor, metrics=metrics)
        self.publisher = PeerPub(link, pub_transport, metrics=metrics)
        self.subscriber.add_listener("message", self.publisher.pub)
        self._delay = retry_initial
        self._timer: Any = None
        self._stopped = False

    @property
    def port(self) -> int:
        """The publisher's port (RuntimeError before :meth:`listen` completed)."""
        return self.publisher.port

    @property
    def connected(self) -> bool:
        """Whether the subscriber is connected to a publisher of :attr:`name` now."""
        return self.subscriber.subscriptions.get(self.name) is not None

    def listen(self, where: ListenSpec = 0) -> Deferred[int]:
        """Start the publisher on ``where``; fires with its port."""
        return self.publisher.listen(where)

    def start(self) -> Deferred[int]:
        """Subscribe to :attr:`name` (retrying until a publisher accepts) and announce
        :attr:`key` (after :meth:`listen`); fires with the first announce's result."""
        self._subscribe()
        return self.publisher.announce(self.key)

    def _subscribe(self) -> None:
        self._timer = None
        if self._stopped:
            return
        self.subscriber.sub(self.name).addCallbacks(self._subscribed, self._not_subscribed)

    def _subscribed(self, _: Any) -> None:
        self._delay = self.retry_initial
        log.info(
            "Relaying {name!r} as {key!r} on port {port}",
            name=self.name,
            key=self.key,
            port=self.publisher.port,
            event="relaying",
        )

    def _not_subscribed(self, failure: Failure) -> None:
        if self._stopped or failure.check(CancelledError):
            return
        delay = self._delay
        self._delay = min(delay * 2, self.retry_max)
        log.info(
            "No publisher of {name!r} to relay yet ({error}); trying again in {delay:g} s",
            name=self.name,
            error=error_message(failure),
            delay=delay,
            event="relay_waiting",
        )
        self._timer = self.reactor.callLater(delay, self._subscribe)

    def stop(self) -> Deferred[None]:
        """Stop subscribing, stop announcing and stop the publisher."""
        if self._stopped:
            return succeed(None)
        self._stopped = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        return self.subscriber.stop().addBoth(lambda _: self.publisher.stop())
