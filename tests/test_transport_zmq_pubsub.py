"""Pub/sub over ZeroMQ with real sockets on loopback: ZmqPubTransport, ZmqSubTransport, and
PeerPub/PeerSub through a grape.

ZeroMQ's slow joiner: a subscriber gets only what is published after its subscription reached
the publisher, so the tests wait for that (``ZmqPubTransport.when_subscribed``, or a raw XPUB
seeing the subscription) before publishing; nothing waits for time.
"""

from __future__ import annotations

from typing import Any

import msgpack
import zmq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.portforward import ProxyFactory, ProxyServer
from twisted.trial.unittest import TestCase

from grenache import errors
from grenache.grape.service import Grape, GrapeConfig
from grenache.link import Link
from grenache.peer import PeerPub, PeerSub
from grenache.transports.zmq.curve import (
    CurveClient,
    CurveRefused,
    CurveServer,
    generate_keypair,
)
from grenache.transports.zmq.frames import SocketOptions, ZmqSocket, get_codec, new_factory
from grenache.transports.zmq.pub import ZmqPubTransport, encode_message
from grenache.transports.zmq.sub import ZmqSubTransport, decode_message


def once(d: Deferred[None]) -> None:
    """Fire ``d`` unless it fired already."""
    if not d.called:
        d.callback(None)


class Inbox:
    """What one subscription received, and Deferreds for "at least n messages"."""

    def __init__(self) -> None:
        self.messages: list[str | bytes] = []
        self.closed = 0
        self._waiting: list[tuple[int, Deferred[list[str | bytes]]]] = []
        self._close_waiters: list[Deferred[None]] = []

    def __call__(self, message: str | bytes) -> None:
        self.messages.append(message)
        ready = [w for w in self._waiting if len(self.messages) >= w[0]]
        self._waiting = [w for w in self._waiting if len(self.messages) < w[0]]
        for _, d in ready:
            d.callback(list(self.messages))

    def on_close(self) -> None:
        self.closed += 1
        waiters, self._close_waiters = self._close_waiters, []
        for d in waiters:
            d.callback(None)

    def wait(self, count: int = 1) -> Deferred[list[str | bytes]]:
        d: Deferred[list[str | bytes]] = Deferred()
        if len(self.messages) >= count:
            d.callback(list(self.messages))
        else:
            self._waiting.append((count, d))
        return d

    def wait_closed(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if self.closed:
            d.callback(None)
        else:
            self._close_waiters.append(d)
        return d


class Kit(TestCase):
    def publisher(self, *topics: str, **kwargs: Any) -> ZmqPubTransport:
        pub = ZmqPubTransport(reactor, interface="127.0.0.1", **kwargs)
        for topic in topics:
            pub.add_topic(topic)
        self.addCleanup(pub.stop)
        return pub

    def subscriber(self, **kwargs: Any) -> ZmqSubTransport:
        sub = ZmqSubTransport(reactor, **kwargs)
        self.addCleanup(sub.stop)
        return sub

    async def follow(
        self, sub: ZmqSubTransport, dest: str, topic: str | None, inbox: Inbox | None = None
    ) -> Inbox:
        inbox = inbox if inbox is not None else Inbox()
        await sub.connect(dest, inbox, inbox.on_close, topic=topic)
        return inbox


class PubSubTests(Kit):
    async def test_several_topics_and_subscribers(self) -> None:
        pub_a = self.publisher("a")
        pub_b = self.publisher("b")
        dest_a = f"127.0.0.1:{await pub_a.listen(0)}"
        dest_b = f"127.0.0.1:{await pub_b.listen(0)}"
        both, only_a, only_b = self.subscriber(), self.subscriber(), self.subscriber()
        inbox = Inbox()  # one inbox for both names of the first subscriber
        await self.follow(both, dest_a, "a", inbox)
        await self.follow(both, dest_b, "b", inbox)
        in_a = await self.follow(only_a, dest_a, "a")
        in_b = await self.follow(only_b, dest_b, "b")
        await pub_a.when_subscribed("a", 2)
        await pub_b.when_subscribed("b", 2)
        self.assertEqual((pub_a.subscribers, pub_b.subscribers), (2, 2))
        self.assertEqual(both.connections, 2)

        self.assertEqual(pub_a.publish("a1"), 2)
        self.assertEqual(pub_b.publish(b"b1"), 2)
        self.assertEqual(pub_a.publish("a2"), 2)
        self.assertEqual(await in_a.wait(2), ["a1", "a2"])
        self.assertEqual(await in_b.wait(1), [b"b1"])
        received = await inbox.wait(3)
        self.assertEqual(sorted(received, key=repr), sorted(["a1", "a2", b"b1"], key=repr))
        self.assertLess(received.index("a1"), received.index("a2"))

    async def test_topic_matches_exactly(self) -> None:
        pub = self.publisher("ab")
        dest = f"127.0.0.1:{await pub.listen(0)}"
        sub = self.subscriber()  # both names on one socket: ZeroMQ's prefix match sees both
        in_a = await self.follow(sub, dest, "a")
        in_ab = await self.follow(sub, dest, "ab")
        self.assertEqual(sub.connections, 1)
        await pub.when_subscribed("a")
        await pub.when_subscribed("ab")
        self.assertEqual(pub.publish("for ab"), 1)  # "a" is subscribed, not published yet
        pub.add_topic("a")
        self.assertEqual(pub.topics, ["ab", "a"])
        self.assertEqual(pub.publish("for both"), 2)
        self.assertEqual(await in_ab.wait(2), ["for ab", "for both"])
        # One connection delivers in order: "for ab" came first, and "a" did not take it.
        self.assertEqual(await in_a.wait(1), ["for both"])
        self.assertEqual(sub.malformed.count, 0)

    async def test_every_topic_without_a_name(self) -> None:
        pub = self.publisher("x", "y")
        dest = f"127.0.0.1:{await pub.listen(0)}"
        inbox = await self.follow(self.subscriber(), dest, None)
        await pub.when_subscribed("")
        pub.publish("m")
        self.assertEqual(await inbox.wait(2), ["m", "m"])  # once under each name

    async def test_str_and_bytes_msgpack(self) -> None:
        pub = self.publisher("codec")
        dest = f"127.0.0.1:{await pub.listen(0)}"
        inbox = await self.follow(self.subscriber(), dest, "codec")
        await pub.when_subscribed("codec")
        for message in ("héllo ✓", b"\x00\xff\xc1", "", b"", "lone \ud800"):
            pub.publish(message)
        self.assertEqual(await inbox.wait(5), ["héllo ✓", b"\x00\xff\xc1", "", b"", "lone \ufffd"])

    async def test_str_json(self) -> None:
        pub = self.publisher("codec", codec="json")
        dest = f"127.0.0.1:{await pub.listen(0)}"
        inbox = await self.follow(self.subscriber(), dest, "codec")
        await pub.when_subscribed("codec")
        pub.publish('{"not": "parsed"} ✓')
        pub.publish("")
        self.assertEqual(await inbox.wait(2), ['{"not": "parsed"} ✓', ""])

    def test_bytes_json_refused(self) -> None:
        pub = ZmqPubTransport(reactor, codec="json")
        with self.assertRaises(TypeError) as caught:
            pub.publish(b"raw")
        self.assertIn("JSON carries no bytes", str(caught.exception))
        with self.assertRaises(TypeError):
            pub.publish(3)  # type: ignore[arg-type]
        self.assertRaises(ValueError, ZmqPubTransport, reactor, codec="xml")

    async def test_subscriber_limited_to_one_codec(self) -> None:
        pub = self.publisher("c", codec="json")
        dest = f"127.0.0.1:{await pub.listen(0)}"
        sub = self.subscriber(codec="msgpack")
        inbox = await self.follow(sub, dest, "c")
        await pub.when_subscribed("c")
        pub.publish("dropped")
        pub.codec = get_codec("msgpack")
        pub.publish("kept")
        # One connection delivers in order: the JSON message arrived first, and was dropped.
        self.assertEqual(await inbox.wait(1), ["kept"])
        self.assertEqual(sub.malformed.count, 1)

    async def test_publish_counts(self) -> None:
        pub = ZmqPubTransport(reactor, interface="127.0.0.1")
        self.assertEqual(pub.publish("before listen"), 0)
        self.addCleanup(pub.stop)
        dest = f"127.0.0.1:{await pub.listen(0)}"
        self.assertEqual(pub.publish("no topic"), 0)
        pub.add_topic("n")
        self.assertEqual(pub.publish("nobody"), 0)
        sub = self.subscriber()
        first = await self.follow(sub, dest, "n")
        other = self.subscriber()
        await self.follow(other, dest, "n")
        self.assertEqual(await pub.when_subscribed("n", 2), 2)
        self.assertEqual(pub.subscriptions("n"), 2)
        await other.stop()  # its subscription goes away with its socket
        while pub.subscriptions("n") != 1:
            pub.publish("x")
            await first.wait(len(first.messages) + 1)
        self.assertEqual(pub.publish("one left"), 1)
        pub.remove_topic("n")
        self.assertEqual(pub.publish("no topic again"), 0)

    async def test_close_one_of_two_names_on_a_socket(self) -> None:
        pub = self.publisher("p", "q")
        dest = f"127.0.0.1:{await pub.listen(0)}"
        sub = self.subscriber()
        in_p, in_q = Inbox(), Inbox()
        conn_p = await sub.connect(dest, in_p, in_p.on_close, topic="p")
        await sub.connect(dest, in_q, in_q.on_close, topic="q")
        await pub.when_subscribed("p")
        await pub.when_subscribed("q")
        conn_p.close()
        self.assertEqual(in_p.closed, 1)
        conn_p.close()  # twice is harmless
        self.assertEqual(in_p.closed, 1)
        pub.publish("after")
        self.assertEqual(await in_q.wait(1), ["after"])
        self.assertEqual(in_p.messages, [])
        self.assertEqual(sub.connections, 1)
        await sub.stop()
        self.assertEqual((in_q.closed, sub.connections), (1, 0))
        await self.assertFailure(sub.connect(dest, in_q, in_q.on_close), errors.TransportClosed)

    async def test_callback_closing_subscriptions(self) -> None:
        pub = self.publisher("k")
        dest = f"127.0.0.1:{await pub.listen(0)}"
        sub = self.subscriber()
        first, second, third = Inbox(), Inbox(), Inbox()
        connections: list[Any] = []

        def close_own(message: str | bytes) -> None:
            connections[0].close()
            first(message)

        def close_third(message: str | bytes) -> None:
            connections[2].close()
            second(message)

        connections.append(await sub.connect(dest, close_own, first.on_close, topic="k"))
        connections.append(await sub.connect(dest, close_third, second.on_close, topic="k"))
        connections.append(await sub.connect(dest, third, third.on_close, topic="k"))
        await pub.when_subscribed("k")
        pub.publish("one")
        # The first closes itself and the second still gets the message; the second closes
        # the third before its turn, so the third does not.
        self.assertEqual(await second.wait(1), ["one"])
        self.assertEqual((first.messages, third.messages), (["one"], []))
        self.assertEqual((first.closed, second.closed, third.closed), (1, 0, 1))
        pub.publish("two")
        self.assertEqual(await second.wait(2), ["one", "two"])
        self.assertEqual(sub.connections, 1)


class ConnectionTests(Kit):
    def silent_listener(self) -> str:
        """A TCP listener that accepts connections and never speaks ZMTP."""
        tcp: Any = reactor
        port = tcp.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return f"127.0.0.1:{port.getHost().port}"

    async def test_refused_is_unreachable(self) -> None:
        pub = self.publisher("gone")
        port = await pub.listen(0)
        await pub.stop()  # nothing listens there now
        sub = self.subscriber()
        inbox = Inbox()
        failure = await self.assertFailure(
            sub.connect(f"127.0.0.1:{port}", inbox, inbox.on_close, topic="gone"),
            errors.DestinationUnreachable,
        )
        self.assertIn("connection refused", str(failure))
        self.assertEqual((inbox.closed, sub.connections), (0, 0))

    async def test_bad_address_is_unreachable(self) -> None:
        sub = self.subscriber()
        inbox = Inbox()
        await self.assertFailure(
            sub.connect("no port here", inbox, inbox.on_close, topic="t"),
            errors.DestinationUnreachable,
        )
        self.assertEqual(sub.connections, 0)

    async def test_silent_listener_times_out(self) -> None:
        # The handshake never ends.
        dest = self.silent_listener()
        sub = self.subscriber(connect_timeout=0.2)
        inbox = Inbox()
        failure = await self.assertFailure(
            sub.connect(dest, inbox, inbox.on_close, topic="t"),
            errors.DestinationUnreachable,
        )
        self.assertIn("no handshake within 0.2 s", str(failure))

    async def test_publisher_gone_closes_subscription(self) -> None:
        pub = self.publisher("t")
        dest = f"127.0.0.1:{await pub.listen(0)}"
        sub = self.subscriber()
        inbox = await self.follow(sub, dest, "t")
        await pub.when_subscribed("t")
        await pub.stop()
        await inbox.wait_closed()
        self.assertEqual((inbox.closed, sub.connections), (1, 0))

    async def test_silent_publisher_noticed_by_heartbeats(self) -> None:
        # The publisher's TCP connection stays open but nothing flows any more (its machine
        # vanished): only ZMTP heartbeats can tell, and the subscription is closed.
        pub = self.publisher("t")
        port = await pub.listen(0)
        relays: list[ProxyServer] = []

        class Relay(ProxyServer):
            def connectionMade(self) -> None:
                relays.append(self)
                super().connectionMade()

        factory = ProxyFactory("127.0.0.1", port)
        factory.protocol = Relay
        tcp: Any = reactor
        listening = tcp.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        options = SocketOptions(heartbeat_ivl=0.1, heartbeat_timeout=0.3)
        sub = self.subscriber(options=options)
        dest = f"127.0.0.1:{listening.getHost().port}"
        inbox = await self.follow(sub, dest, "t")
        await pub.when_subscribed("t")
        pub.publish("before")
        self.assertEqual(await inbox.wait(1), ["before"])
        for relay in relays:
            for end in (relay, relay.peer):
                transport: Any = end.transport if end is not None else None
                if transport is not None:
                    transport.pauseProducing()
        await inbox.wait_closed()
        self.assertEqual((inbox.closed, sub.connections), (1, 0))
        for relay in relays:
            closing: Any = relay.transport
            closing.abortConnection()

    async def test_cancel_pending_connect(self) -> None:
        dest = self.silent_listener()
        sub = self.subscriber()
        inbox = Inbox()
        d = sub.connect(dest, inbox, inbox.on_close, topic="t")
        self.assertEqual(sub.connections, 1)
        d.cancel()
        self.failureResultOf(d)
        self.assertEqual((sub.connections, inbox.closed), (0, 0))

    async def test_stop_fails_pending_connect(self) -> None:
        dest = self.silent_listener()
        sub = ZmqSubTransport(reactor)
        inbox = Inbox()
        d = sub.connect(dest, inbox, inbox.on_close, topic="t")
        await sub.stop()
        self.failureResultOf(d, errors.TransportClosed)

    async def test_listen_errors(self) -> None:
        pub = self.publisher()
        await self.assertFailure(pub.listen("unix:/tmp/x"), ValueError)
        port = await pub.listen("tcp:0:interface=127.0.0.1")
        await self.assertFailure(pub.listen(0), RuntimeError)
        other = self.publisher()
        await self.assertFailure(other.listen(port), CannotListenError)
        self.assertRaises(TypeError, ZmqPubTransport, reactor, tls=object())
        self.assertRaises(TypeError, ZmqSubTransport, reactor, tls=object())
        self.assertRaises(ValueError, ZmqSubTransport, reactor, connect_timeout=0)
        self.assertRaises(ValueError, pub.add_topic, "")

    async def test_stop_fails_subscription_waiters(self) -> None:
        pub = ZmqPubTransport(reactor, interface="127.0.0.1")
        await pub.listen(0)
        waiting = pub.when_subscribed("t")
        await pub.stop()
        self.failureResultOf(waiting, errors.TransportClosed)


class MalformedTests(Kit):
    async def test_malformed_dropped_subscriber_keeps_receiving(self) -> None:
        factory = new_factory(reactor)
        self.addCleanup(factory.shutdown)
        subscribed: Deferred[None] = Deferred()

        def on_subscription(frames: list[bytes]) -> None:
            if frames == [b"\x01t"] and not subscribed.called:
                subscribed.callback(None)

        raw = ZmqSocket(factory, zmq.XPUB, SocketOptions(), on_subscription)
        port = raw.bind("tcp://127.0.0.1:*")
        sub = self.subscriber()
        inbox = await self.follow(sub, f"127.0.0.1:{port}", "t")
        await subscribed
        pack = msgpack.packb
        for frames in (
            [b"t", b"msgpack"],  # two frames
            [b"t", b"msgpack", pack("x"), b"extra"],  # four frames
            [b"t", b"xml", pack("x")],  # unknown codec
            [b"t", b"msgpack", b"\xc1"],  # not msgpack
            [b"t", b"json", b"{"],  # not JSON
            [b"t", b"msgpack", pack({"a": 1})],  # not a string or bytes
            [b"t", b"json", b"[1]"],
            [b"t", b"msgpack", pack("first good")],
            [b"t", b"json", b'"second good"'],
        ):
            raw.send(frames)
        self.assertEqual(await inbox.wait(2), ["first good", "second good"])
        self.assertEqual(sub.malformed.count, 7)
        self.assertEqual(inbox.closed, 0)

    def test_decode_message(self) -> None:
        codec = get_codec("msgpack")
        body = encode_message(codec, "hi")
        self.assertEqual(decode_message([b"t", b"msgpack", body]), (b"t", "hi"))
        with self.assertRaises(ValueError) as caught:
            decode_message([b"t", b"msgpack", body], get_codec("json"))
        self.assertIn("unknown codec frame", str(caught.exception))
        self.assertRaises(ValueError, decode_message, [b"t", b"json"])


class CurveTests(Kit):
    async def test_accepted_and_refused_subscriber(self) -> None:
        server = generate_keypair()
        good, bad = generate_keypair(), generate_keypair()
        pub = self.publisher("secret", tls=CurveServer(server, allowed_clients=[good.public]))
        dest = f"127.0.0.1:{await pub.listen(0)}"
        accepted = self.subscriber(tls=CurveClient(server.public, good))
        inbox = await self.follow(accepted, dest, "secret")
        await pub.when_subscribed("secret")
        pub.publish("for good eyes")
        self.assertEqual(await inbox.wait(1), ["for good eyes"])

        refused = self.subscriber(tls=CurveClient(server.public, bad))
        other = Inbox()
        failure = await self.assertFailure(
            refused.connect(dest, other, other.on_close, topic="secret"), CurveRefused
        )
        self.assertIn("refused this client's CURVE key", str(failure))
        self.assertIsInstance(failure, errors.DestinationUnreachable)
        self.assertEqual(refused.connections, 0)

        plain = self.subscriber()
        await self.assertFailure(
            plain.connect(dest, other, other.on_close, topic="secret"),
            errors.DestinationUnreachable,
        )
        self.assertEqual(other.messages, [])
        self.assertEqual(pub.subscriptions("secret"), 1)


class PeerTests(TestCase):
    """PeerPub and PeerSub on the ZeroMQ transports, through a real grape."""

    async def link(self) -> Link:
        if not hasattr(self, "grape"):
            self.grape = Grape(GrapeConfig(dht_port=0, api_port=0), reactor)
            await self.grape.start()
            self.addCleanup(self.grape.stop)
        link = Link(self.grape.api_url, reactor=reactor, lookup_cache_ttl=0)
        self.addCleanup(link.stop)
        return link

    async def peer_pub(self, name: str, port: int = 0) -> PeerPub:
        pub = PeerPub(await self.link(), ZmqPubTransport(reactor, interface="127.0.0.1"))
        self.addCleanup(pub.stop)
        await pub.listen(port)
        await pub.announce(name)
        return pub

    async def test_peer_pub_sub_and_resubscribe(self) -> None:
        pub = await self.peer_pub("zmq_ticker")
        await pub.announce("zmq_ticker_eu")  # a second name, that nobody follows
        other = await self.peer_pub("zmq_other")
        topics = pub.transport.topics  # type: ignore[attr-defined]
        self.assertEqual(topics, ["zmq_ticker", "zmq_ticker_eu"])
        sub = PeerSub(await self.link(), ZmqSubTransport(reactor), reactor=reactor)
        self.addCleanup(sub.stop)
        inbox = Inbox()
        sub.on_message = inbox
        connected: list[tuple[str, str]] = []
        sub.add_listener("connected", lambda name, dest: connected.append((name, dest)))
        await sub.sub("zmq_ticker")
        await sub.sub("zmq_other")
        self.assertEqual(
            sub.subscriptions,
            {"zmq_ticker": f"127.0.0.1:{pub.port}", "zmq_other": f"127.0.0.1:{other.port}"},
        )
        await pub.transport.when_subscribed("zmq_ticker")  # type: ignore[attr-defined]
        await other.transport.when_subscribed("zmq_other")  # type: ignore[attr-defined]
        # Sent under both names; the subscriber follows one (PeerSub passes topic=): once.
        self.assertEqual(pub.pub("tick 1"), 1)
        pub.pub("tick 1b")
        self.assertEqual(await inbox.wait(2), ["tick 1", "tick 1b"])
        self.assertEqual(other.pub(b"other"), 1)
        self.assertEqual(await inbox.wait(3), ["tick 1", "tick 1b", b"other"])
        self.assertEqual((pub.published, pub.delivered), (2, 2))

        # The publisher restarts on its port: the subscriber sees the close, looks the name
        # up again and resubscribes.
        lost: Deferred[None] = Deferred()
        sub.add_listener("disconnected", lambda *_: once(lost))
        port = pub.port
        await pub.stop()
        await lost
        again: Deferred[None] = Deferred()
        sub.add_listener("connected", lambda *_: once(again))
        restarted = await self.peer_pub("zmq_ticker", port)
        await again
        await restarted.transport.when_subscribed("zmq_ticker")  # type: ignore[attr-defined]
        restarted.pub("tick 2")
        self.assertEqual(await inbox.wait(4), ["tick 1", "tick 1b", b"other", "tick 2"])
        self.assertEqual(sub.stats["zmq_ticker"].connects, 2)
        self.assertEqual(sub.stats["zmq_other"].connects, 1)
