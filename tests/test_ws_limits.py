"""The WebSocket servers' bounds (grenache.transports.ws.limits): a client cannot exhaust them.

Three servers share the bounds: the RPC server, the publisher and the grape's WebSocket API.

- Unit tests drive one server protocol over a ``StringTransport`` (which records what the
  producer API does) on a ``Clock``: reading stops when the transport pauses the socket's
  producer and resumes when it drains, the socket is dropped past ``max_pending_output`` bytes
  or ``pending_output_timeout`` seconds, drops are counted and logged at most once per
  interval, the opening handshake has a deadline on the given reactor and a head size limit.
- Loopback tests flood a real server (the real reactor; they wait only on Deferreds) from a
  raw client that never reads: pings, requests, and a subscriber that does not keep up. Each
  asserts the server's unsent bytes stayed within the bound (read from Twisted's TCP buffer
  after every write) and that the socket was dropped, on autobahn's public path and on the
  speedups' lean path.
- Malformed input: a few hundred bad messages on one socket are each answered, and a few
  hundred bad frames each on a fresh socket close it, with no traceback logged and the server
  still serving afterwards.
"""

from __future__ import annotations

import functools
import operator
import os
import random
import socket
from collections.abc import Callable, Coroutine
from typing import Any

from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet import reactor as global_reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial import unittest

from grenache import codec
from grenache.grape.api_ws import GrapeWebSocketFactory, GrapeWebSocketProtocol
from grenache.peer import Reply, Request
from grenache.speedups.autobahn_ws import AVAILABLE, PublicPath, xor_mask
from grenache.transports.ws import (
    PubFactory,
    PubProtocol,
    RPCServerFactory,
    RPCServerProtocol,
    WSPubTransport,
    WSServerTransport,
)
from grenache.transports.ws.limits import (
    DEFAULT_MAX_PENDING_OUTPUT,
    DEFAULT_PENDING_OUTPUT_TIMEOUT,
    MAX_HANDSHAKE_SIZE,
    Limits,
)

reactor: Any = global_reactor

HANDSHAKE = (
    b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: iD7NWU8onF8772KbeffXvQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
KEY = b"\x11\x22\x33\x44"


def frame(payload: bytes, opcode: int = 1, fin: bool = True) -> bytes:
    """A masked client frame."""
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    return head + KEY + xor_mask(payload, KEY)


def ping(size: int = 125) -> bytes:
    return frame(b"p" * size, opcode=9)


def request(i: int, key: str = "svc") -> bytes:
    return frame(codec.json_dumps([f"r{i}", key, i]))


def dispatch(operation: str, data: Any) -> Any:
    return [f"127.0.0.1:{p}" for p in range(10000, 10010)]


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of each unmasked server frame in ``data``."""
    out = []
    while data:
        n = data[1] & 0x7F
        start = 2
        if n == 126:
            n, start = int.from_bytes(data[2:4], "big"), 4
        elif n == 127:
            n, start = int.from_bytes(data[2:10], "big"), 10
        out.append((data[0] & 0x0F, data[start : start + n]))
        data = data[start + n :]
    return out


class LogCapture:
    """Every log event while installed (warnings and failures are what the tests check)."""

    def __init__(self, test: unittest.TestCase) -> None:
        self.events: list[dict[str, Any]] = []
        observer: Any = self.events.append
        globalLogPublisher.addObserver(observer)
        test.addCleanup(globalLogPublisher.removeObserver, observer)

    def failures(self) -> list[dict[str, Any]]:
        return [e for e in self.events if "log_failure" in e]

    def with_text(self, text: str) -> list[dict[str, Any]]:
        return [e for e in self.events if text in str(e.get("log_format", ""))]


# --- the three servers, each with a way to open one socket on a StringTransport -------------


class Server:
    """One of the three servers, built on ``clock`` with the given bounds."""

    name = ""

    def __init__(self, clock: Any, **limits: Any) -> None:
        raise NotImplementedError

    limits: Limits
    factory: Any

    def open(self) -> tuple[Any, Any]:
        """A server protocol past its opening handshake, on a StringTransport."""
        protocol = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5))
        wire: Any = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        protocol.makeConnection(wire)
        protocol.dataReceived(HANDSHAKE)
        assert protocol.state == WebSocketProtocol.STATE_OPEN, wire.value()
        wire.clear()
        return protocol, wire

    def output(self, protocol: Any, size: int) -> None:
        """Make the server send ``size`` bytes or so to ``protocol``'s client."""
        raise NotImplementedError


class RPCServer(Server):
    name = "rpc"

    def __init__(self, clock: Any, **limits: Any) -> None:
        self.transport = WSServerTransport(clock, **limits)
        self.transport.listen(0, lambda request: succeed(request.payload))
        self.factory = self.transport.factory
        self.limits = self.transport.limits

    def output(self, protocol: Any, size: int) -> None:
        protocol.dataReceived(frame(codec.json_dumps(["r", "k", "x" * size])))


class Publisher(Server):
    name = "pub"

    def __init__(self, clock: Any, **limits: Any) -> None:
        self.transport = WSPubTransport(clock, **limits)
        self.transport.listen(0)
        self.factory = self.transport.factory
        self.limits = self.transport.limits

    def output(self, protocol: Any, size: int) -> None:
        self.transport.publish("x" * size)


class GrapeAPI(Server):
    name = "grape"

    def __init__(self, clock: Any, **limits: Any) -> None:
        self.factory = GrapeWebSocketFactory(
            lambda op, data: "x" * data, reactor=clock, max_message_size=64, **limits
        )
        self.limits = self.factory.limits

    def output(self, protocol: Any, size: int) -> None:
        protocol.dataReceived(frame(codec.json_dumps(["r", "lookup", size])))


class OutputBoundMixin:
    """The output bound on a StringTransport, for the server ``make`` builds."""

    server_class: type[Server]

    def make(self, **limits: Any) -> tuple[Server, Clock]:
        clock = MemoryReactorClock()
        return self.server_class(clock, **limits), clock

    def test_producer_registered_and_reading_follows_it(self) -> None:
        server, clock = self.make()
        protocol, wire = server.open()
        test: Any = self
        test.assertTrue(wire.streaming)
        test.assertEqual(wire.producerState, "producing")
        wire.producer.pauseProducing()
        test.assertTrue(protocol.output_blocked)
        test.assertEqual(wire.producerState, "paused")
        deadline = protocol._output_deadline
        wire.producer.pauseProducing()  # Twisted calls it again on each write while full
        test.assertIs(protocol._output_deadline, deadline, "one timer while blocked")
        wire.producer.resumeProducing()
        test.assertFalse(protocol.output_blocked)
        test.assertEqual(wire.producerState, "producing")
        clock.advance(DEFAULT_PENDING_OUTPUT_TIMEOUT * 2)
        test.assertFalse(wire.disconnected)
        test.assertEqual(server.limits.dropped, 0)

    def test_dropped_when_output_not_read_past_the_deadline(self) -> None:
        logs = LogCapture(self)  # type: ignore[arg-type]
        server, clock = self.make(pending_output_timeout=5.0)
        _protocol, wire = server.open()
        test: Any = self
        wire.producer.pauseProducing()
        clock.advance(4.9)
        test.assertFalse(wire.disconnected)
        clock.advance(0.1)
        test.assertTrue(wire.disconnected, "aborted")
        test.assertEqual(server.limits.dropped, 1)
        [line] = logs.with_text("dropped {peer}")
        test.assertEqual(line["reason"], "output not read for 5 s")
        test.assertEqual(logs.failures(), [])

    def test_dropped_past_max_pending_output(self) -> None:
        server, _clock = self.make(max_pending_output=9_500)
        protocol, wire = server.open()
        test: Any = self
        server.output(protocol, 1000)
        test.assertFalse(wire.disconnected, "not counted while the transport takes it")
        wire.producer.pauseProducing()
        for _ in range(9):
            server.output(protocol, 1000)
        test.assertFalse(wire.disconnected)
        server.output(protocol, 1000)
        test.assertTrue(wire.disconnected)
        test.assertEqual(server.limits.dropped, 1)

    def test_count_starts_again_after_draining(self) -> None:
        server, _clock = self.make(max_pending_output=10_000)
        protocol, wire = server.open()
        test: Any = self
        for _ in range(5):
            wire.producer.pauseProducing()
            for _ in range(9):
                server.output(protocol, 1000)
            wire.producer.resumeProducing()
        test.assertFalse(wire.disconnected)

    def test_drops_are_logged_once_per_interval_and_counted(self) -> None:
        logs = LogCapture(self)  # type: ignore[arg-type]
        server, clock = self.make(pending_output_timeout=1.0)
        test: Any = self
        for _ in range(5):
            _protocol, wire = server.open()
            wire.producer.pauseProducing()
            clock.advance(1.0)
            test.assertTrue(wire.disconnected)
        test.assertEqual(server.limits.dropped, 5)
        test.assertEqual(len(logs.with_text("dropped {peer}")), 1)
        clock.advance(60.0)
        _protocol, wire = server.open()
        wire.producer.pauseProducing()
        clock.advance(1.0)
        _first, second = logs.with_text("dropped {peer}")
        test.assertEqual((second["unreported"], second["total"]), (4, 6))

    def test_opening_handshake_deadline_on_the_given_reactor(self) -> None:
        server, clock = self.make()
        protocol = server.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5))
        wire = StringTransport()
        protocol.makeConnection(wire)
        protocol.dataReceived(HANDSHAKE[:20])
        test: Any = self
        test.assertEqual(protocol.openHandshakeTimeout, 10.0)
        clock.advance(9.5)
        test.assertFalse(wire.disconnecting)
        clock.advance(1.0)
        test.assertTrue(wire.disconnecting)

    def test_handshake_head_size_limit(self) -> None:
        server, _clock = self.make()
        protocol = server.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5))
        wire = StringTransport()
        protocol.makeConnection(wire)
        protocol.dataReceived(b"GET /ws HTTP/1.1\r\n")
        for _ in range(MAX_HANDSHAKE_SIZE // 1000 + 1):
            protocol.dataReceived(b"X-Pad: " + b"a" * 991 + b"\r\n")
        test: Any = self
        test.assertTrue(wire.value().startswith(b"HTTP/1.1 431"), wire.value()[:40])
        test.assertTrue(wire.disconnecting)


class RPCOutputBoundTests(OutputBoundMixin, unittest.TestCase):
    server_class = RPCServer

    def test_in_flight_and_output_holds_combine(self) -> None:
        clock = MemoryReactorClock()
        waiting: list[Deferred[Any]] = []

        def serve(request: Request) -> Deferred[Any]:
            waiting.append(Deferred())
            return waiting[-1]

        transport = WSServerTransport(clock, max_in_flight=1)
        transport.listen(0, serve)
        server = RPCServer.__new__(RPCServer)
        server.factory = transport.factory
        protocol, wire = server.open()
        protocol.dataReceived(request(1))
        self.assertEqual(wire.producerState, "paused")
        wire.producer.pauseProducing()
        waiting[0].callback(1)
        self.assertEqual(wire.producerState, "paused", "output still held")
        wire.producer.resumeProducing()
        self.assertEqual(wire.producerState, "producing")

    def test_defaults(self) -> None:
        transport = WSServerTransport(Clock())
        self.assertEqual(transport.limits.max_pending_output, DEFAULT_MAX_PENDING_OUTPUT)
        self.assertEqual(transport.limits.max_pending_output, 1 << 20)
        self.assertEqual(transport.limits.pending_output_timeout, 30.0)
        self.assertEqual(WSPubTransport(Clock()).limits.max_pending_output, 4 << 20)
        self.assertEqual(GrapeWebSocketFactory(dispatch).limits.max_pending_output, 1 << 20)
        self.assertRaises(ValueError, WSServerTransport, Clock(), max_pending_output=0)
        self.assertRaises(ValueError, WSPubTransport, Clock(), pending_output_timeout=0)


class PublisherOutputBoundTests(OutputBoundMixin, unittest.TestCase):
    server_class = Publisher

    def test_slow_subscriber_dropped_others_served(self) -> None:
        server, _clock = self.make(max_pending_output=50_000)
        _slow, slow_wire = server.open()
        _fast, fast_wire = server.open()
        pub: Any = server
        slow_wire.producer.pauseProducing()
        self.assertEqual(pub.transport.blocked, 1)
        for _ in range(100):
            pub.transport.publish("m" * 1000)
            fast_wire.clear()
        self.assertTrue(slow_wire.disconnected)
        self.assertFalse(fast_wire.disconnected)
        self.assertEqual(pub.transport.subscribers, 1)
        self.assertEqual(pub.transport.blocked, 0)
        self.assertEqual(pub.transport.publish("after"), 1)
        self.assertEqual(server_frames(fast_wire.value()), [(1, b"after")])


class GrapeOutputBoundTests(OutputBoundMixin, unittest.TestCase):
    server_class = GrapeAPI


# --- RPC: Node parity (meta, Reply, on_request_error) -----------------------------------------


class NodeParityTests(unittest.TestCase):
    def open(self, serve: Any, **kwargs: Any) -> tuple[Any, StringTransport, Any]:
        transport = WSServerTransport(MemoryReactorClock(), **kwargs)
        transport.listen(0, serve)
        server = RPCServer.__new__(RPCServer)
        server.factory = transport.factory
        protocol, wire = server.open()
        return protocol, wire, transport

    def test_meta_is_empty_as_node_gives_ws_handlers_none(self) -> None:
        seen: list[Request] = []

        def serve(request: Request) -> Deferred[int]:
            seen.append(request)
            return succeed(1)

        protocol, _wire, _ = self.open(serve)
        protocol.dataReceived(request(1))
        protocol.dataReceived(request(2))
        self.assertEqual(dict(seen[0].meta), {})
        self.assertRaises(TypeError, operator.setitem, seen[0].meta, "x", 1)
        self.assertIs(seen[0].meta, seen[1].meta, "shared: nothing allocated per request")

    def test_reply_sends_error_and_result_together(self) -> None:
        replies = {
            1: Reply("ERR_PARTIAL", {"done": 3}),
            2: Reply(None, [1, 2]),
            3: Reply("only error"),
            4: Reply(ValueError("as exception"), 5),  # type: ignore[arg-type]
        }
        protocol, wire, _ = self.open(lambda r: succeed(replies[r.payload]))
        for i in replies:
            protocol.dataReceived(request(i))
        self.assertEqual(
            [p for _, p in server_frames(wire.value())],
            [
                b'["r1","ERR_PARTIAL",{"done":3}]',
                b'["r2",null,[1,2]]',
                b'["r3","only error",null]',
                b'["r4","as exception",5]',
            ],
        )

    def test_on_request_error_told_and_answer_unchanged(self) -> None:
        told: list[bytes] = []
        protocol, wire, _ = self.open(lambda r: succeed(1), on_request_error=told.append)
        protocol.dataReceived(frame(b"not json"))
        protocol.dataReceived(frame(b'["r"]'))
        protocol.dataReceived(request(1))
        self.assertEqual(told, [b"not json", b'["r"]'])
        self.assertEqual(
            [p for _, p in server_frames(wire.value())],
            [
                b'[null,"ERR_REQUEST_PARSE",null]',
                b'["r","ERR_REQUEST_PARSE",null]',
                b'["r1",null,1]',
            ],
        )

    def test_failing_hook_logged_once_and_server_keeps_answering(self) -> None:
        def hook(message: bytes) -> None:
            raise RuntimeError("hook broke")

        protocol, wire, transport = self.open(lambda r: succeed(1), on_request_error=hook)
        for _ in range(50):
            protocol.dataReceived(frame(b"{"))
        self.assertEqual(len(server_frames(wire.value())), 50)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(transport._hook_failures, 50)


# --- malformed input, counted -----------------------------------------------------------------


def bad_messages() -> list[bytes]:
    """A few hundred messages that are not requests."""
    rng = random.Random(9)
    out = [
        b"",
        b"null",
        b"{}",
        b"[]",
        b'"x"',
        b"[1]",
        b"[1,2,3]",
        b"NaN",
        b"\xff\xfe",
        b"\xed\xa0\x80",
        b"[" * 100_000,
        b'{"a":' * 5000,
        b"1" * 5000,
        b'["r",{"a":1},2]',
        b'["\\ud800"',
        b"[1e999999,",
    ]
    out += [os.urandom(rng.randrange(1, 200)) for _ in range(250)]
    valid = codec.json_dumps(["rid", "svc", {"a": [1, 2]}])
    out += [valid[:cut] for cut in range(1, len(valid))]
    return out


def bad_frames() -> list[bytes]:
    """A few hundred frames that break RFC 6455 (each closes its socket)."""
    rng = random.Random(11)
    out = [
        b"\x81\x05hello",  # unmasked client frame
        bytes([0x83, 0x80]) + KEY,  # reserved opcode
        bytes([0x8B, 0x80]) + KEY,  # reserved control opcode
        bytes([0xC1, 0x80]) + KEY,  # RSV1 without an extension
        bytes([0x09, 0x80]) + KEY,  # fragmented ping
        bytes([0x89, 0xFE, 0x00, 0x80]) + KEY + b"x" * 128,  # ping over 125 bytes
        frame(b"\x03\xe7", opcode=8),  # close code 999
        frame(b"\x03\xe8\xff", opcode=8),  # close reason not UTF-8
        frame(b"x", opcode=0),  # continuation without a start
        frame(b"ab", opcode=1, fin=False) + frame(b"cd", opcode=1),  # new message mid-message
        bytes([0x81, 0xFF]) + (1 << 63).to_bytes(8, "big") + KEY,  # 64-bit length, top bit
    ]
    while len(out) < 300:
        bits, opcode = rng.choice([0x80, 0xC0, 0xA0, 0x90, 0x00]), rng.randrange(3, 16)
        if bits == 0x80 and opcode in (9, 10):
            continue  # a valid ping or pong
        out.append(bytes([bits | opcode, 0x80 | 20]) + KEY + os.urandom(20))
    return out


class MalformedTests(unittest.TestCase):
    def test_rpc_server_answers_every_bad_message_and_keeps_serving(self) -> None:
        logs = LogCapture(self)
        server = RPCServer(MemoryReactorClock())
        protocol, wire = server.open()
        messages = bad_messages()
        self.assertGreater(len(messages), 250)
        for message in messages:
            protocol.dataReceived(frame(message, opcode=2))
        protocol.dataReceived(request(7))
        replies = [codec.json_loads(p) for _, p in server_frames(wire.value())]
        self.assertEqual(len(replies), len(messages) + 1)
        self.assertTrue(all(r[1] == "ERR_REQUEST_PARSE" for r in replies[:-1]))
        self.assertEqual(replies[-1], ["r7", None, 7])
        self.assertEqual(logs.failures(), [])

    def test_grape_api_answers_every_bad_message_and_keeps_serving(self) -> None:
        logs = LogCapture(self)
        clock: Any = MemoryReactorClock()
        factory = GrapeWebSocketFactory(dispatch, reactor=clock)
        server = GrapeAPI.__new__(GrapeAPI)
        server.factory = factory
        protocol, wire = server.open()
        messages = [m for m in bad_messages() if len(m) < 60_000]
        for message in messages:
            protocol.dataReceived(frame(message))
        protocol.dataReceived(frame(b'["r","lookup","svc"]'))
        replies = [codec.json_loads(p) for _, p in server_frames(wire.value())]
        self.assertEqual(len(replies), len(messages) + 1)
        self.assertTrue(all(r[1].startswith("ERR_GRAPE_PAYLOAD") for r in replies[:-1]))
        self.assertEqual(replies[-1], ["r", None, dispatch("lookup", "svc")])
        self.assertEqual(logs.failures(), [])

    def test_bad_frames_close_their_socket_without_traceback(self) -> None:
        logs = LogCapture(self)
        for server in (
            RPCServer(MemoryReactorClock()),
            Publisher(MemoryReactorClock()),
            GrapeAPI(MemoryReactorClock()),
        ):
            frames = bad_frames()
            closed = 0
            for data in frames:
                protocol, wire = server.open()
                protocol.dataReceived(data)
                if wire.disconnecting or protocol.state != WebSocketProtocol.STATE_OPEN:
                    closed += 1
                protocol.connectionLost(Failure(ConnectionDone()))
            self.assertEqual(closed, len(frames), server.name)
            protocol, wire = server.open()
            server.output(protocol, 10)
            self.assertEqual(len(server_frames(wire.value())), 1, "still serving")
        self.assertEqual(logs.failures(), [])


# --- loopback floods (real sockets; the tests wait on Deferreds only) ------------------------


def pending(transport: Any) -> int:
    """Bytes Twisted's TCP transport holds unsent (its private buffer fields)."""
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


class Watched:
    """Mixin for the servers' protocols under test: small kernel send buffer, the largest
    unsent output seen after every write, and ``lost`` fired when the socket is gone."""

    watch: dict[str, Any]
    transport: Any

    def connectionMade(self) -> None:
        self.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        write = self.transport.write

        def watched(data: bytes) -> None:
            write(data)
            self.watch["max_pending"] = max(self.watch["max_pending"], pending(self.transport))

        self.transport.write = watched
        self.watch["sockets"].append(self)
        super().connectionMade()  # type: ignore[misc]

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.watch["received"] += 1
        super().onMessage(payload, isBinary)  # type: ignore[misc]

    def onPing(self, payload: bytes) -> None:
        self.watch["received"] += 1
        super().onPing(payload)  # type: ignore[misc]

    def connectionLost(self, reason: Any = None) -> None:
        super().connectionLost(reason)  # type: ignore[misc]
        lost = self.watch["lost"]
        if not lost.called:
            lost.callback(None)


def new_watch() -> dict[str, Any]:
    return {"max_pending": 0, "sockets": [], "received": 0, "lost": Deferred()}


class Flooder(Protocol):
    """A raw WebSocket client: opens, then writes ``flood`` and never reads again."""

    transport: Any

    def __init__(self, flood: bytes, read_messages: int = 0) -> None:
        self.flood = flood
        self.opened: Deferred[None] = Deferred()
        self.gone: Deferred[None] = Deferred()
        self.read_messages = read_messages
        self.buffer = b""
        self.messages = 0
        self.waiters: list[tuple[int, Deferred[None]]] = []

    def connectionMade(self) -> None:
        self.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.transport.write(HANDSHAKE)

    def dataReceived(self, data: bytes) -> None:
        if not self.opened.called:
            head, _, rest = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101"), head
            if not self.read_messages:
                self.transport.pauseProducing()
            if self.flood:
                self.transport.write(self.flood)
            self.opened.callback(None)
            data = rest
        self.buffer += data
        while len(self.buffer) >= 2:
            n = self.buffer[1] & 0x7F
            start = 2 + (2 if n == 126 else 8 if n == 127 else 0)
            if n >= 126:
                if len(self.buffer) < start:
                    break
                n = int.from_bytes(self.buffer[2:start], "big")
            if len(self.buffer) < start + n:
                break
            self.buffer = self.buffer[start + n :]
            self.messages += 1
        for count, d in list(self.waiters):
            if self.messages >= count:
                self.waiters.remove((count, d))
                d.callback(None)

    def received(self, count: int) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.waiters.append((count, d))
        self.dataReceived(b"")
        return d

    def connectionLost(self, reason: Any = None) -> None:
        self.gone.callback(None)


def deferred_test(
    method: Callable[..., Coroutine[Any, Any, None]],
) -> Callable[..., Deferred[None]]:
    @functools.wraps(method)
    def run(self: Any) -> Deferred[None]:
        return ensureDeferred(method(self))

    return run


async def lost(watch: dict[str, Any], *clients: Flooder) -> None:
    """Wait until the server dropped a socket, then until ``clients`` see their sockets end
    (a client that does not read notices only once it reads again)."""
    await watch["lost"]
    for client in clients:
        client.transport.resumeProducing()
        await client.gone


def connect(port: int, client: Flooder) -> Deferred[Any]:
    factory = ClientFactory()
    factory.protocol = lambda: client  # type: ignore[assignment]
    connector = reactor.connectTCP("127.0.0.1", port, factory)
    client.opened.addErrback(lambda f: connector.disconnect() or f)
    return client.opened


class LoopbackFloodMixin:
    """Floods on a real loopback socket; ``paths`` puts the speedups path the servers use
    first among their protocols' bases (none: the default, :data:`FastPath`)."""

    paths: tuple[type, ...]
    timeout = 60

    def rpc_server(self, **limits: Any) -> Deferred[tuple[int, WSServerTransport, dict[str, Any]]]:
        watch = new_watch()
        protocol = type("P", (Watched, *self.paths, RPCServerProtocol), {"watch": watch})
        factory_class = type("F", (RPCServerFactory,), {"protocol": protocol})
        transport = WSServerTransport(
            reactor, interface="127.0.0.1", factory_class=factory_class, **limits
        )
        self.addCleanup(transport.stop)  # type: ignore[attr-defined]
        d = transport.listen(0, lambda r: succeed("y" * 200))
        return d.addCallback(lambda port: (port, transport, watch))

    async def flood_rpc(self, flood: bytes, count: int) -> None:
        max_pending_output = 256 * 1024
        port, transport, watch = await self.rpc_server(
            max_pending_output=max_pending_output, pending_output_timeout=0.5
        )
        client = Flooder(flood)
        await connect(port, client)
        await lost(watch, client)
        test: Any = self
        test.assertEqual(transport.limits.dropped, 1)
        test.assertEqual(transport.sockets, 0)
        test.assertLess(watch["received"], count // 4, "stopped reading")
        bound = 65536 + max_pending_output + 65536
        test.assertLessEqual(watch["max_pending"], bound)
        test.assertGreater(watch["max_pending"], 65536, "the flood did fill the buffer")

    @deferred_test
    async def test_rpc_requests_not_read(self) -> None:
        count = 40_000
        await self.flood_rpc(b"".join(request(i) for i in range(count)), count)

    @deferred_test
    async def test_rpc_pings_not_read(self) -> None:
        count = 60_000
        await self.flood_rpc(ping() * count, count)

    @deferred_test
    async def test_slow_subscriber_dropped_fast_one_served(self) -> None:
        watch = new_watch()
        protocol = type("S", (Watched, *self.paths, PubProtocol), {"watch": watch})
        factory_class = type("F", (PubFactory,), {"protocol": protocol})
        max_pending_output = 256 * 1024
        pub = WSPubTransport(
            reactor,
            interface="127.0.0.1",
            factory_class=factory_class,
            max_pending_output=max_pending_output,
        )
        self.addCleanup(pub.stop)  # type: ignore[attr-defined]
        port = await pub.listen(0)
        slow, fast = Flooder(b""), Flooder(b"", read_messages=1)
        await connect(port, slow)
        await connect(port, fast)
        test: Any = self
        test.assertEqual(pub.subscribers, 2)
        message = "m" * 4096
        sent = 0
        rounds = 0
        while not watch["lost"].called:
            rounds += 1
            test.assertLess(rounds, 100, "the slow subscriber was never dropped")
            for _ in range(16):
                pub.publish(message)
                sent += 1
            await fast.received(sent)
        await lost(watch, slow)
        test.assertEqual(pub.limits.dropped, 1)
        test.assertEqual(pub.subscribers, 1)
        test.assertFalse(fast.gone.called)
        test.assertLessEqual(watch["max_pending"], 65536 + max_pending_output + 2 * 4096)
        test.assertGreater(sent * 4096, max_pending_output, "published past the bound")

    @deferred_test
    async def test_slow_subscriber_dropped_after_the_deadline(self) -> None:
        watch = new_watch()
        protocol = type("S", (Watched, *self.paths, PubProtocol), {"watch": watch})
        factory_class = type("F", (PubFactory,), {"protocol": protocol})
        pub = WSPubTransport(
            reactor, interface="127.0.0.1", factory_class=factory_class, pending_output_timeout=0.3
        )
        self.addCleanup(pub.stop)  # type: ignore[attr-defined]
        port = await pub.listen(0)
        slow = Flooder(b"")
        await connect(port, slow)
        while not watch["sockets"][0].output_blocked:
            pub.publish("m" * 4096)
        await lost(watch, slow)
        test: Any = self
        test.assertEqual(pub.limits.dropped, 1)
        test.assertEqual(pub.subscribers, 0)


class FastPathFloodTests(LoopbackFloodMixin, unittest.TestCase):
    """The path the protocols use: the lean one wherever autobahn has its internals."""

    paths = ()

    def test_fast_path_is_the_lean_one(self) -> None:
        self.assertTrue(AVAILABLE, "these floods should run on the lean path here")


class PublicPathFloodTests(LoopbackFloodMixin, unittest.TestCase):
    paths = (PublicPath,)


class GrapeAPIFloodTests(unittest.TestCase):
    timeout = 60

    @deferred_test
    async def test_grape_api_flood_not_read(self) -> None:
        watch = new_watch()
        protocol = type("G", (Watched, GrapeWebSocketProtocol), {"watch": watch})
        factory = GrapeWebSocketFactory(
            dispatch, reactor=reactor, max_pending_output=128 * 1024, pending_output_timeout=0.5
        )
        factory.protocol = protocol  # type: ignore[assignment]
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)  # type: ignore[attr-defined]
        count = 30_000
        messages = [frame(b'["r%d","lookup","svc"]' % i) for i in range(count // 2)]
        client = Flooder(b"".join(m + ping() for m in messages))
        await connect(port.getHost().port, client)
        await lost(watch, client)
        test: Any = self
        test.assertEqual(factory.limits.dropped, 1)
        test.assertEqual(factory.connections, set())
        test.assertLess(watch["received"], count // 4)
        test.assertLessEqual(watch["max_pending"], 65536 + 128 * 1024 + 65536)
        test.assertGreater(watch["max_pending"], 65536)
