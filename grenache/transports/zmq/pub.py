"""The publishing side of pub/sub over ZeroMQ: :class:`ZmqPubTransport`.

One XPUB socket (a PUB socket that also reads its subscribers' subscriptions) bound on the
listening port. Each message goes out once per name the publisher is announced under, as
three frames ``[topic, codec, body]`` (docs/protocol.rst, *Pub/sub over ZeroMQ*): the topic
is the name in UTF-8, the codec frame ``msgpack`` or ``json``, the body the message encoded
with it (a ``str`` as a string; ``bytes`` as msgpack's binary type, which JSON has no way to
carry). A :class:`~grenache.peer.PeerPub` tells its transport each name it announces
(:meth:`ZmqPubTransport.add_topic`); without a name nothing is published.

Bounds: libzmq queues at most ``options.hwm`` messages for each subscriber and drops the
rest for a subscriber that does not read (ZeroMQ's PUB semantics: the publisher's memory
stays bounded, the slow subscriber loses messages, the others do not notice). libzmq does
not report those drops, so they cannot be counted. Sockets close with linger 0; ZMTP
heartbeats (``options.heartbeat_ivl``) drop a subscriber that vanished without closing its
TCP connection, freeing its queue.
"""

from __future__ import annotations

import re
from typing import Any

import zmq
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import CannotListenError

from grenache.endpoints import ListenSpec
from grenache.errors import TransportClosed
from grenache.transports.zmq.curve import CurveServer, ZapHandler
from grenache.transports.zmq.frames import (
    DEFAULT_CODEC,
    Codec,
    SocketOptions,
    ZmqSocket,
    bind_address,
    get_codec,
    new_factory,
)

__all__ = ["ZmqPubTransport", "encode_message"]

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def encode_message(codec: Codec, message: str | bytes) -> bytes:
    """The body frame of ``message`` in ``codec``; :class:`TypeError` for a message that is not
    ``str`` or ``bytes``, or ``bytes`` under JSON (JSON has no binary type)."""
    if isinstance(message, str):
        try:
            return codec.dumps(message)
        except UnicodeEncodeError:
            # A lone surrogate: sent as U+FFFD, as a WebSocket text frame carries it.
            return codec.dumps(_LONE_SURROGATE.sub("\ufffd", message))
    if isinstance(message, (bytes, bytearray, memoryview)):
        if codec.name == "json":
            raise TypeError("JSON carries no bytes: publish a str, or use the msgpack codec")
        return codec.dumps(bytes(message))
    raise TypeError(f"a message is str or bytes, not {type(message).__name__}")


class ZmqPubTransport:
    """The publishing side of ZeroMQ pub/sub (:class:`~grenache.peer.PubTransport`).

    :meth:`listen` takes a port number (bound on ``interface``, every IPv4 address when
    empty) or ``"tcp:PORT[:interface=ADDR]"``. ``tls`` is a
    :class:`~grenache.transports.zmq.curve.CurveServer` (``None``: plaintext): subscribers
    must then know the publisher's public key, and with ``allowed_clients`` only those
    subscriber keys are admitted. ``codec`` (``"msgpack"``, the default, or ``"json"``)
    encodes the bodies; ``options`` bounds the socket
    (:class:`~grenache.transports.zmq.frames.SocketOptions`).

    :meth:`publish` sends a message under every name given to :meth:`add_topic` and returns
    how many subscriptions it reached: the publisher counts, per name, the subscriptions its
    subscribers sent (ZeroMQ reports each subscribe and unsubscribe, and the unsubscriptions
    of a subscriber that went away).
    """

    def __init__(
        self,
        reactor: Any,
        *,
        tls: CurveServer | None = None,
        interface: str = "",
        codec: str | Codec = DEFAULT_CODEC,
        options: SocketOptions | None = None,
    ) -> None:
        if tls is not None and not isinstance(tls, CurveServer):
            raise TypeError(f"the zmq transport's tls is a CurveServer, not {tls!r}")
        self._reactor = reactor
        self.tls = tls
        self.interface = interface
        self.codec = get_codec(codec)
        self.options = options or SocketOptions()
        self._topics: dict[str, bytes] = {}
        self._counts: dict[bytes, int] = {}
        self._waiters: list[tuple[bytes, int, Deferred[int]]] = []
        self._factory: Any = None
        self._socket: ZmqSocket | None = None
        self._zap: ZapHandler | None = None
        self.port: int | None = None

    @property
    def topics(self) -> list[str]:
        """The names messages are published under, in the order they were added."""
        return list(self._topics)

    def add_topic(self, name: str) -> None:
        """Publish every message under ``name`` too (a :class:`~grenache.peer.PeerPub` calls
        this for each name it announces)."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a topic is a non-empty service name, not {name!r}")
        self._topics.setdefault(name, name.encode("utf-8"))

    def remove_topic(self, name: str) -> None:
        """Stop publishing under ``name``."""
        self._topics.pop(name, None)

    def listen(self, where: ListenSpec) -> Deferred[int]:
        """Bind the publisher's socket on ``where`` and fire with the bound TCP port."""
        if self._socket is not None:
            return fail(RuntimeError("ZmqPubTransport is already listening"))
        try:
            address = bind_address(where, self.interface)
        except ValueError:
            return fail()
        factory = new_factory(self._reactor, self.options)
        tls = self.tls
        try:
            if tls is not None:
                self._zap = ZapHandler(factory, tls)
            socket = ZmqSocket(
                factory, zmq.XPUB, self.options, self._subscription, configure=self._configure
            )
            self._factory, self._socket = factory, socket
            self.port = socket.bind(address)
        except zmq.ZMQError as e:
            self._close()
            return fail(CannotListenError(address, where, e))
        return succeed(self.port)

    def _configure(self, socket: zmq.Socket[Any]) -> None:
        socket.setsockopt(zmq.XPUB_VERBOSER, 1)
        if self.tls is not None:
            self.tls.configure(socket)

    def _subscription(self, frames: list[bytes]) -> None:
        # XPUB hands up each (un)subscription as one frame: b"\x01" or b"\x00", then the topic.
        if len(frames) != 1 or not frames[0] or frames[0][0] > 1:
            return
        frame = frames[0]
        topic = frame[1:]
        if frame[0] == 1:
            self._counts[topic] = self._counts.get(topic, 0) + 1
        else:
            left = self._counts.get(topic, 0) - 1
            if left > 0:
                self._counts[topic] = left
            else:
                self._counts.pop(topic, None)
        if self._waiters:
            self._wake()

    def when_subscribed(self, name: str, count: int = 1) -> Deferred[int]:
        """Fire (with the count) once at least ``count`` subscriptions to ``name`` reached
        this publisher: from then on they get what is published (a subscriber gets nothing
        published before its subscription arrived). Fails with
        :class:`~grenache.errors.TransportClosed` if the transport stops first."""
        topic = name.encode("utf-8")
        d: Deferred[int] = Deferred(lambda d: self._forget(d))
        self._waiters.append((topic, count, d))
        self._wake()
        return d

    def _forget(self, d: Deferred[int]) -> None:
        self._waiters = [w for w in self._waiters if w[2] is not d]

    def _wake(self) -> None:
        counts = self._counts
        ready = [w for w in self._waiters if counts.get(w[0], 0) >= w[1]]
        if ready:
            self._waiters = [w for w in self._waiters if counts.get(w[0], 0) < w[1]]
            for topic, _, d in ready:
                d.callback(counts.get(topic, 0))

    @property
    def subscribers(self) -> int:
        """Subscriptions to the published names (a subscriber following two of them counts
        twice)."""
        counts = self._counts
        return sum(counts.get(topic, 0) for topic in self._topics.values())

    def subscriptions(self, name: str) -> int:
        """How many subscribers follow ``name`` (as their subscriptions tell)."""
        return self._counts.get(name.encode("utf-8"), 0)

    def publish(self, message: str | bytes) -> int:
        """Send ``message`` under every published name; return how many subscriptions it
        reached (0 before :meth:`listen` or without a name).

        Raises :class:`TypeError` for a message the codec cannot carry (see
        :func:`encode_message`).
        """
        body = encode_message(self.codec, message)
        socket = self._socket
        if socket is None or socket.closed:
            return 0
        frame = self.codec.frame
        counts = self._counts
        sent = 0
        for topic in self._topics.values():
            socket.send([topic, frame, body])
            sent += counts.get(topic, 0)
        return sent

    def _close(self) -> None:
        socket, self._socket = self._socket, None
        zap, self._zap = self._zap, None
        factory, self._factory = self._factory, None
        if socket is not None:
            socket.close()
        if zap is not None:
            zap.close()
        if factory is not None:
            factory.shutdown()
        self._counts.clear()
        waiters, self._waiters = self._waiters, []
        for _, _, d in waiters:
            d.errback(TransportClosed("ERR_TRANSPORT_CLOSE: publisher stopped"))

    def stop(self) -> Deferred[None]:
        """Close the socket (subscribers see their connection end) and its ZeroMQ context."""
        self._close()
        self.port = None
        return succeed(None)
