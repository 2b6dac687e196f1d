"""The subscribing side of pub/sub over ZeroMQ: :class:`ZmqSubTransport`.

One SUB socket per publisher address, shared by every name followed there; each name is a
ZeroMQ subscription to its topic. ZeroMQ matches subscriptions by prefix, so the subscriber
matches the topic frame exactly itself: a subscriber of ``a`` never sees ``ab``'s messages
(docs/protocol.rst, *Pub/sub over ZeroMQ*). A message that does not follow the frames (not
three frames, an unknown codec, a body that does not decode to a string or bytes) is
dropped, counted in :attr:`ZmqSubTransport.malformed` and logged at most once a minute.

ZeroMQ connects and reconnects in the background and does not say when a publisher goes
away, so each socket is watched by a monitor (:class:`~grenache.transports.zmq.frames.Monitor`):

- :meth:`ZmqSubTransport.connect` fires once the ZMTP (and CURVE) handshake succeeded; it
  fails with :class:`~grenache.errors.DestinationUnreachable` at the first failed
  connection attempt (nothing listens there), when the handshake fails
  (:class:`~grenache.transports.zmq.curve.CurveRefused` for a refused key or a wrong
  server key) or when nothing answered within ``connect_timeout`` seconds;
- an established connection that ends (the publisher closed or died; ZMTP heartbeats notice
  a publisher that vanished without closing its TCP connection) closes the socket instead of
  letting ZeroMQ reconnect to it, and calls each subscription's ``on_close``: a
  :class:`~grenache.peer.PeerSub` then looks the name up again and resubscribes, as it does
  over WebSocket.

A subscription is in place once the publisher has received it, a moment after the
handshake: messages published before that are not delivered (ZeroMQ's "slow joiner").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import zmq
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.logger import Logger

from grenache.errors import DestinationUnreachable, TransportClosed
from grenache.peer.protocols import SubConnection
from grenache.transports.zmq.curve import CurveClient, curve_error, is_handshake_failure
from grenache.transports.zmq.frames import (
    Codec,
    Monitor,
    RateLimitedLog,
    SocketOptions,
    ZmqSocket,
    codec_of_frame,
    connect_address,
    get_codec,
    new_factory,
)

__all__ = ["ZmqSubTransport", "ZmqSubscription", "decode_body", "decode_message"]

log = Logger()

#: Seconds a subscription waits for its publisher's handshake before failing.
DEFAULT_CONNECT_TIMEOUT = 10.0


def decode_message(frames: list[bytes], accept: Codec | None = None) -> tuple[bytes, str | bytes]:
    """``(topic, message)`` of a published message's frames; :class:`ValueError` saying why
    for frames that are not ``[topic, codec, body]`` with a known codec (``accept`` only, when
    given) and a body that decodes to a string or bytes."""
    if len(frames) != 3:
        raise ValueError(f"a published message has 3 frames, not {len(frames)}")
    return frames[0], decode_body(frames[1], frames[2], accept)


def decode_body(codec_frame: bytes, body: bytes, accept: Codec | None = None) -> str | bytes:
    """The message in ``body``, encoded with the codec ``codec_frame`` names (see
    :func:`decode_message`)."""
    codec = codec_of_frame(codec_frame)
    if codec is None or (accept is not None and codec is not accept):
        raise ValueError(f"unknown codec frame {codec_frame[:16]!r}")
    try:
        message = codec.loads(body)
    except (ValueError, RecursionError) as e:
        raise ValueError(f"undecodable {codec.name} body: {e}") from None
    if not isinstance(message, (str, bytes)):
        raise ValueError(f"a message is a string or bytes, not {type(message).__name__}")
    return message


class ZmqSubscription:
    """One followed name at one publisher (:class:`~grenache.peer.SubConnection`)."""

    def __init__(
        self,
        publisher: _Publisher,
        topic: str | None,
        on_message: Callable[[str | bytes], None],
        on_close: Callable[[], None],
    ) -> None:
        self.publisher = publisher
        self.dest = publisher.dest
        self.topic = topic
        self.key = None if topic is None else topic.encode("utf-8")
        self.on_message = on_message
        self.on_close = on_close
        self.is_open = False
        self.is_closed = False
        self.ready: Deferred[SubConnection] = Deferred(lambda _: self.close())

    def _opened(self) -> None:
        self.is_open = True
        self.ready.callback(self)

    def _failed(self, error: Exception) -> None:
        self.is_closed = True
        if not self.ready.called:
            self.ready.errback(error)

    def _lost(self) -> None:
        was_open = self.is_open
        self.is_closed = True
        self.is_open = False
        if was_open:
            try:
                self.on_close()
            except Exception:
                log.failure("subscriber on_close failed for {dest}", dest=self.dest)

    def close(self) -> None:
        """Unsubscribe (closing the socket when it was the publisher's last subscription);
        ``on_close`` is called if the subscription was established."""
        if self.is_closed:
            return
        self.publisher.remove(self)
        if self.is_open:
            self._lost()
        else:
            self._failed(CancelledError())


class _Publisher:
    """The socket to one publisher address and the subscriptions sharing it."""

    def __init__(self, owner: ZmqSubTransport, dest: str) -> None:
        self.owner = owner
        self.dest = dest
        self.state = "connecting"
        self.by_topic: dict[bytes | None, list[ZmqSubscription]] = {}
        tls = owner.tls
        self.socket = ZmqSocket(
            owner._factory,
            zmq.SUB,
            owner.options,
            self._received,
            configure=None if tls is None else tls.configure,
            copy_frames=False,  # zmq.Frame.more: cheaper than asking the socket for RCVMORE
        )
        self.monitor = Monitor(owner._factory, self.socket, self._event)
        self.timer: Any = owner._reactor.callLater(owner.connect_timeout, self._timed_out)
        self.error: DestinationUnreachable | None = None
        try:
            self.socket.connect(connect_address(dest))
        except (ValueError, zmq.ZMQError) as e:
            self.error = self._unreachable(str(e))
            self._close()

    # --- subscriptions ---------------------------------------------------------------------

    def add(self, subscription: ZmqSubscription) -> None:
        subscribed = self.by_topic.setdefault(subscription.key, [])
        if not subscribed:
            self.socket.socket.setsockopt(zmq.SUBSCRIBE, subscription.key or b"")
        subscribed.append(subscription)
        if self.state == "open":
            subscription._opened()

    def remove(self, subscription: ZmqSubscription) -> None:
        subscribed = self.by_topic.get(subscription.key)
        if subscribed is None or subscription not in subscribed:
            return
        subscribed.remove(subscription)
        if not subscribed:
            del self.by_topic[subscription.key]
            if self.state != "closed":
                self.socket.socket.setsockopt(zmq.UNSUBSCRIBE, subscription.key or b"")
        if not self.by_topic:
            self._close()

    def subscriptions(self) -> list[ZmqSubscription]:
        return [s for subscribed in self.by_topic.values() for s in subscribed]

    # --- socket -----------------------------------------------------------------------------

    def _received(self, frames: list[zmq.Frame]) -> None:
        owner = self.owner
        if len(frames) != 3:
            owner.malformed(f"a published message has 3 frames, not {len(frames)} ({self.dest})")
            return
        by_topic = self.by_topic
        exact = by_topic.get(frames[0].bytes)
        every = by_topic.get(None)
        if exact is None and every is None:
            return  # another name that starts with a followed one (ZeroMQ matches prefixes)
        try:
            message = decode_body(frames[1].bytes, frames[2].bytes, owner.accept)
        except ValueError as e:
            owner.malformed(f"{e} (from {self.dest})")
            return
        # A copy: a callback may close subscriptions (this one, or all of this socket's).
        for subscriptions in (exact, every):
            for subscription in tuple(subscriptions or ()):
                if subscription.is_closed:
                    continue
                try:
                    subscription.on_message(message)
                except Exception:
                    log.failure("subscriber on_message failed for {dest}", dest=self.dest)

    def _event(self, event: int, value: int) -> None:
        if self.state == "connecting":
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.state = "open"
                self.timer.cancel()
                for subscription in self.subscriptions():
                    subscription._opened()
            elif is_handshake_failure(event):
                self._fail(curve_error(self.dest, event, value))
            elif event == zmq.EVENT_CONNECT_RETRIED:
                self._fail(self._unreachable("connection refused"))
            elif event == zmq.EVENT_DISCONNECTED:
                self._fail(self._unreachable("connection closed during the handshake"))
        elif self.state == "open" and event == zmq.EVENT_DISCONNECTED:
            self._lost()

    def _unreachable(self, why: str) -> DestinationUnreachable:
        return DestinationUnreachable(f"{DestinationUnreachable.wire}: {self.dest}: {why}")

    def _timed_out(self) -> None:
        self._fail(self._unreachable(f"no handshake within {self.owner.connect_timeout} s"))

    def _fail(self, error: Exception) -> None:
        subscriptions = self.subscriptions()
        self._close()
        for subscription in subscriptions:
            subscription._failed(error)

    def _lost(self) -> None:
        subscriptions = self.subscriptions()
        self._close()
        for subscription in subscriptions:
            subscription._lost()

    def _close(self) -> None:
        if self.state == "closed":
            return
        self.state = "closed"
        if self.timer.active():
            self.timer.cancel()
        self.by_topic.clear()
        if self.owner._publishers.get(self.dest) is self:
            del self.owner._publishers[self.dest]
        self.monitor.close()
        self.socket.close()


class ZmqSubTransport:
    """The subscribing side of ZeroMQ pub/sub (:class:`~grenache.peer.SubTransport`).

    :meth:`connect` follows ``topic`` (the service name; ``None``: every message the
    publisher sends) at the publisher ``dest`` (``host:port``, ``[ipv6]:port`` or a host
    name). ``tls`` is a :class:`~grenache.transports.zmq.curve.CurveClient` holding the
    publisher's public key (``None``: plaintext). Bodies in either codec are decoded unless
    ``codec`` names the only one accepted. ``connect_timeout`` bounds the connection and
    handshake; ``options`` the socket
    (:class:`~grenache.transports.zmq.frames.SocketOptions`: its ``hwm`` bounds the messages
    queued for this subscriber, its heartbeats notice a vanished publisher).
    """

    def __init__(
        self,
        reactor: Any,
        *,
        tls: CurveClient | None = None,
        codec: str | Codec | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        options: SocketOptions | None = None,
    ) -> None:
        if tls is not None and not isinstance(tls, CurveClient):
            raise TypeError(f"the zmq transport's tls is a CurveClient, not {tls!r}")
        if not connect_timeout > 0:
            raise ValueError("connect_timeout must be positive")
        self._reactor = reactor
        self.tls = tls
        self.accept = None if codec is None else get_codec(codec)
        self.connect_timeout = connect_timeout
        self.options = options or SocketOptions()
        #: Messages dropped for not following the frames (see :func:`decode_message`).
        self.malformed = RateLimitedLog(reactor, "ZeroMQ subscriber")
        self._factory: Any = None
        self._publishers: dict[str, _Publisher] = {}
        self._stopped = False

    @property
    def connections(self) -> int:
        """How many publisher sockets are open (connected or connecting)."""
        return len(self._publishers)

    def connect(
        self,
        dest: str,
        on_message: Callable[[str | bytes], None],
        on_close: Callable[[], None],
        *,
        topic: str | None = None,
    ) -> Deferred[SubConnection]:
        """Follow ``topic`` at the publisher ``dest``; fires with the
        :class:`ZmqSubscription` once connected (at once when this transport is already
        connected there)."""
        if self._stopped:
            return fail(TransportClosed())
        if self._factory is None:
            self._factory = new_factory(self._reactor)
        publisher = self._publishers.get(dest)
        if publisher is None:
            try:
                publisher = _Publisher(self, dest)
            except zmq.ZMQError as e:  # no socket to be had (too many open files...)
                return fail(DestinationUnreachable(f"{DestinationUnreachable.wire}: {dest}: {e}"))
            if publisher.error is not None:
                return fail(publisher.error)
            self._publishers[dest] = publisher
        subscription = ZmqSubscription(publisher, topic, on_message, on_close)
        publisher.add(subscription)
        return subscription.ready

    def stop(self) -> Deferred[None]:
        """Close every socket: established subscriptions get ``on_close``, pending ones fail
        with :class:`~grenache.errors.TransportClosed`."""
        self._stopped = True
        for publisher in list(self._publishers.values()):
            subscriptions = publisher.subscriptions()
            publisher._close()
            for subscription in subscriptions:
                if subscription.is_open:
                    subscription._lost()
                else:
                    subscription._failed(TransportClosed())
        factory, self._factory = self._factory, None
        if factory is not None:
            factory.shutdown()
        return succeed(None)
