"""grenache.speedups.autobahn_ws: the probe, and the public fallback doing what the lean path does.

The lean path's frame parsing is compared with autobahn's own on random input in
tests/test_transport_ws.py (``FastReceiveTests``); here the transports run whole exchanges with
protocols forced onto :class:`~grenache.speedups.autobahn_ws.PublicPath` and with the lean path,
and must deliver the same messages and write the same bytes.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from autobahn.twisted.testing import MemoryReactorClockResolver
from autobahn.twisted.websocket import WebSocketServerFactory
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from grenache.peer import OutgoingRequest
from grenache.speedups import autobahn_ws
from grenache.speedups.autobahn_ws import LeanPath, PublicPath
from grenache.transports.ws import (
    PubFactory,
    PubProtocol,
    RPCClientFactory,
    RPCClientProtocol,
    RPCServerFactory,
    RPCServerProtocol,
    SubFactory,
    SubProtocol,
    WSClientTransport,
    WSPubTransport,
    WSServerTransport,
    WSSubTransport,
)
from tests.test_transport_ws import (
    NODE_HANDSHAKE,
    REPLY_JSON,
    REQUEST_JSON,
    FakeServe,
    MemoryNet,
    client_frame,
)


class PublicServer(PublicPath, RPCServerProtocol):
    pass


class PublicServerFactory(RPCServerFactory):
    protocol = PublicServer


class PublicClient(PublicPath, RPCClientProtocol):
    pass


class PublicClientFactory(RPCClientFactory):
    protocol = PublicClient  # type: ignore[assignment]


class PublicPub(PublicPath, PubProtocol):
    pass


class PublicPubFactory(PubFactory):
    protocol = PublicPub


class PublicSub(PublicPath, SubProtocol):
    pass


class PublicSubFactory(SubFactory):
    protocol = PublicSub  # type: ignore[assignment]


class ProbeTests(unittest.TestCase):
    def test_available_with_the_installed_autobahn(self) -> None:
        """The autobahn this project pins has what the lean path reads."""
        self.assertTrue(autobahn_ws.AVAILABLE)
        self.assertIs(autobahn_ws.FastPath, LeanPath)
        self.assertTrue(autobahn_ws.TIMERS_AVAILABLE)

    def test_missing_internal_means_fallback(self) -> None:
        """Without the private ``_dataReceived``, the probe says no (the public path is used)."""
        self.patch(WebSocketProtocol, "_dataReceived", None)
        self.assertFalse(autobahn_ws.probe())

    def test_changed_frame_state_means_fallback(self) -> None:
        """A frame-state attribute autobahn no longer sets makes the probe say no."""
        self.patch(autobahn_ws, "_ATTRIBUTES", (*autobahn_ws._ATTRIBUTES, "no_such_state"))
        self.assertFalse(autobahn_ws.probe())

    def test_bind_timers_without_internals_leaves_the_factory(self) -> None:
        self.patch(autobahn_ws, "TIMERS_AVAILABLE", False)
        factory = WebSocketServerFactory(reactor=Clock())
        before = factory._batched_timer
        autobahn_ws.bind_timers(factory, Clock())
        self.assertIs(factory._batched_timer, before)

    def test_bind_timers_uses_the_reactor(self) -> None:
        clock = Clock()
        factory = WebSocketServerFactory(reactor=clock)
        autobahn_ws.bind_timers(factory, clock)
        fired: list[int] = []
        factory._batched_timer.call_later(1.0, fired.append, 1)
        clock.advance(1.5)
        self.assertEqual(fired, [1])


class SameBytesTests(unittest.TestCase):
    """The server's bytes for Node's request are the same on both paths."""

    def exchange(self, factory_class: Any) -> tuple[bytes, list[Any]]:
        server = WSServerTransport(MemoryReactorClockResolver(), factory_class=factory_class)
        serve = FakeServe()
        self.successResultOf(server.listen(0, serve))
        protocol = server.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5))
        wire = StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 11338),
            peerAddress=IPv4Address("TCP", "127.0.0.1", 40000),
        )
        protocol.makeConnection(wire)
        protocol.dataReceived(NODE_HANDSHAKE)
        handshake = wire.value()
        wire.clear()
        frames = client_frame(REQUEST_JSON) + client_frame(b"not json") + client_frame(b'["r"]')
        protocol.dataReceived(frames[:7])
        protocol.dataReceived(frames[7:])
        serve.calls[0][1].callback("world")
        return handshake + b"|" + wire.value(), serve.requests

    def test_server(self) -> None:
        self.assertIs(PublicServer.dataReceived, PublicPath.dataReceived)
        self.assertIs(RPCServerProtocol.dataReceived, LeanPath.dataReceived)
        public = self.exchange(PublicServerFactory)
        lean = self.exchange(RPCServerFactory)
        self.assertEqual(public, lean)
        self.assertTrue(public[0].endswith(b"\x81\x35" + REPLY_JSON))


class FallbackRoundTripTests(unittest.TestCase):
    """Every pairing of public and lean protocols gives the same results over memory sockets."""

    def rpc(self, server_factory: Any, client_factory: Any) -> list[Any]:
        net = MemoryNet()
        server = WSServerTransport(net.reactor, factory_class=server_factory)
        self.successResultOf(server.listen(0, lambda r: [r.key, r.payload]))
        client = WSClientTransport(
            net.reactor, agent=net.agent(server.factory), factory_class=client_factory
        )
        big = "x" * 70000
        ds = [
            client.request("127.0.0.1:1", OutgoingRequest(f"r{i}", "k", p, 10.0))
            for i, p in enumerate([1, "é", big, {"a": [None]}])
        ]
        net.flush()
        return [self.successResultOf(d) for d in ds]

    def test_rpc(self) -> None:
        expected = self.rpc(RPCServerFactory, RPCClientFactory)
        self.assertEqual(expected[2], ["k", "x" * 70000])
        for server, client in [
            (PublicServerFactory, PublicClientFactory),
            (PublicServerFactory, RPCClientFactory),
            (RPCServerFactory, PublicClientFactory),
        ]:
            with self.subTest(server=server.__name__, client=client.__name__):
                self.assertEqual(self.rpc(server, client), expected)

    def pubsub(self, pub_factory: Any, sub_factory: Any) -> list[str | bytes]:
        net = MemoryNet()
        pub = WSPubTransport(net.reactor, factory_class=pub_factory)
        self.successResultOf(pub.listen(0))
        sub = WSSubTransport(net.reactor, agent=net.agent(pub.factory), factory_class=sub_factory)
        got: list[str | bytes] = []
        connected = sub.connect("127.0.0.1:1", got.append, lambda: None)
        net.flush()
        self.successResultOf(connected)
        for message in ("t", b"\x00\xff", "ü" * 40000):
            pub.publish(message)
        net.flush()
        return got

    def test_pubsub(self) -> None:
        expected = self.pubsub(PubFactory, SubFactory)
        self.assertEqual(expected, ["t", b"\x00\xff", "ü" * 40000])
        self.assertEqual(self.pubsub(PublicPubFactory, PublicSubFactory), expected)


class _CountingTransport(StringTransport):
    """A StringTransport that keeps each ``write`` apart."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        super().write(data)


def _echoing_client(path: type) -> Any:
    """An open client protocol on ``path`` answering each text message with ``re:`` + it."""

    from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol

    class Client(path, WebSocketClientProtocol):  # type: ignore[misc,valid-type]
        def onMessage(self, payload: bytes, isBinary: bool) -> None:
            self.send_text(b"re:" + payload)

    factory = autobahn_ws._no_timers(
        WebSocketClientFactory(url="ws://127.0.0.1:1/ws", reactor=autobahn_ws._NoReactor())
    )
    client: Any = Client()
    client.factory = factory
    wire = _CountingTransport()
    client.makeConnection(wire)
    request = wire.value().decode("latin-1")
    key = next(
        line.split(":", 1)[1].strip()
        for line in request.split("\r\n")
        if line.lower().startswith("sec-websocket-key")
    )
    accept = base64.b64encode(
        hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
    ).decode()
    client.dataReceived(
        (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept}\r\n\r\n"
        ).encode()
    )
    assert client.state == WebSocketProtocol.STATE_OPEN
    wire.clear()
    wire.writes.clear()
    return client, wire


def _client_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, unmasked payload) of each masked client frame (payloads under 126 bytes)."""
    frames = []
    while data:
        length = data[1] & 0x7F
        key, body = data[2:6], data[6 : 6 + length]
        frames.append((data[0] & 0x0F, autobahn_ws.xor_mask(body, key)))
        data = data[6 + length :]
    return frames


class HeldWritesTests(unittest.TestCase):
    """A client socket writes the messages sent while it handles received data together."""

    # Three text messages with a ping between the second and the third, in one read.
    received = b"\x81\x01a" + b"\x81\x01b" + b"\x89\x00" + b"\x81\x01c"

    def test_held_then_written_in_order(self) -> None:
        client, wire = _echoing_client(LeanPath)
        client.dataReceived(self.received)
        # The pong writes the two answers held before it first; the third goes at the end.
        self.assertEqual(len(wire.writes), 3)
        self.assertEqual(_client_frames(wire.writes[0]), [(1, b"re:a"), (1, b"re:b")])
        self.assertEqual(_client_frames(wire.writes[1]), [(10, b"")])
        self.assertEqual(_client_frames(wire.writes[2]), [(1, b"re:c")])
        self.assertIsNone(client._held)
        client.send_text(b"later")  # outside dataReceived: written at once
        self.assertEqual(_client_frames(wire.writes[3]), [(1, b"later")])

    def test_written_hold_at_a_time(self) -> None:
        """Past HOLD messages, what is held is written before the read is fully handled."""
        self.patch(autobahn_ws, "HOLD", 2)
        client, wire = _echoing_client(LeanPath)
        client.dataReceived(b"\x81\x01a\x81\x01b\x81\x01c")
        self.assertEqual(
            [_client_frames(w) for w in wire.writes],
            [[(1, b"re:a"), (1, b"re:b")], [(1, b"re:c")]],
        )

    def test_same_messages_as_the_public_path(self) -> None:
        lean, lean_wire = _echoing_client(LeanPath)
        public, public_wire = _echoing_client(PublicPath)
        lean.dataReceived(self.received)
        public.dataReceived(self.received)
        self.assertEqual(_client_frames(lean_wire.value()), _client_frames(public_wire.value()))
        self.assertEqual(len(public_wire.writes), 4)
