"""Tests for the grape's WebSocket API (grenache.grape.api_ws).

The sockets live in memory: ``autobahn.twisted.testing.create_memory_agent`` connects a real
autobahn client to a server protocol built by the factory under test, over ``iosim`` transports.
Most tests pump those transports by hand (``SyncPumper``) so every step is deterministic and
results are checked with ``successResultOf``; one runs over loopback TCP on a port chosen by the
OS, waiting on events (never on time).
"""

from __future__ import annotations

from typing import Any, cast

from autobahn.twisted.testing import (
    MemoryReactorClockResolver,
    create_memory_agent,
)
from autobahn.twisted.websocket import WebSocketClientProtocol, create_client_agent
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from grenache import codec, endpoints
from grenache.errors import (
    GrapeAnnounceInvalid,
    GrapeHashFormat,
    GrapeLookupInvalid,
    GrapeRequestNotFound,
    KRPCError,
    NoNodesToQuery,
)
from grenache.grape.api_ws import (
    GrapeWebSocketFactory,
    GrapeWebSocketProtocol,
    grape_ws_factory,
    hard_message_limit,
)
from tests.support import HeldDispatch, SyncPumper

PAYLOAD_INVALID = b'[null,"ERR_GRAPE_PAYLOAD_INVALID",null]'
PAYLOAD_SIZE = b'[null,"ERR_GRAPE_PAYLOAD_SIZE",null]'


class RecordingClient(WebSocketClientProtocol):
    """A WebSocket client that keeps every message and the close it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.received: list[tuple[bytes, bool]] = []
        self.close_code: int | None = None

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.received.append((payload, isBinary))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.close_code = code

    @property
    def texts(self) -> list[bytes]:
        """The payloads received, asserting each came as a text frame."""
        assert all(not binary for _, binary in self.received), self.received
        return [payload for payload, _ in self.received]


class MemorySocketMixin:
    """Connects in-memory clients to a grape WS factory around a ``HeldDispatch``."""

    def make_factory(self, **kwargs: Any) -> GrapeWebSocketFactory:
        self.reactor = MemoryReactorClockResolver()
        self.dispatch = HeldDispatch()
        factory = grape_ws_factory(
            self.dispatch, reactor=cast(IReactorTime, self.reactor), **kwargs
        )
        assert isinstance(factory, GrapeWebSocketFactory)
        self.factory = factory
        self.servers: list[GrapeWebSocketProtocol] = []
        return factory

    def build_server(self) -> GrapeWebSocketProtocol:
        server = self.factory.buildProtocol(None)
        assert isinstance(server, GrapeWebSocketProtocol)
        self.servers.append(server)
        return server


class ReplyTests(MemorySocketMixin, unittest.TestCase):
    """Requests, replies and bad frames on one in-memory socket, pumped synchronously."""

    def setUp(self) -> None:
        self.make_factory()
        self.client = self.connect()

    def connect(self) -> RecordingClient:
        self.pumper = SyncPumper(rounds=1)
        agent = create_memory_agent(self.reactor, self.pumper, self.build_server)
        d = agent.open("ws://127.0.0.1:30002/", {}, protocol_class=RecordingClient)
        self.pumper.flush()
        client = self.successResultOf(d)
        assert isinstance(client, RecordingClient)
        return client

    def send(self, payload: bytes, binary: bool = False) -> None:
        self.client.sendMessage(payload, isBinary=binary)
        self.pumper.flush()

    def request(self, rid: Any, operation: str, data: Any) -> Deferred[Any]:
        """Send one request; return the Deferred the dispatcher got for it."""
        before = len(self.dispatch.calls)
        self.send(codec.json_dumps([rid, operation, data]))
        self.assertEqual(len(self.dispatch.calls), before + 1)
        op, got, d = self.dispatch.calls[-1]
        self.assertEqual((op, got), (operation, data))
        return d

    def complete(self, d: Deferred[Any], outcome: Any) -> None:
        if isinstance(outcome, BaseException):
            d.errback(outcome)
        else:
            d.callback(outcome)
        self.pumper.flush()

    def assertReplies(self, *frames: bytes) -> None:
        self.assertEqual(self.client.texts, list(frames))

    # --- success ---------------------------------------------------------------------------

    def test_announce(self) -> None:
        d = self.request("a1", "announce", ["rpc_test", 1337])
        self.assertReplies()
        self.complete(d, 1)
        self.assertReplies(b'["a1",null,1]')

    def test_lookup(self) -> None:
        d = self.request("l1", "lookup", "rpc_test")
        self.complete(d, ["127.0.0.1:1337", "10.0.0.2:40001"])
        self.assertReplies(b'["l1",null,["127.0.0.1:1337","10.0.0.2:40001"]]')

    def test_lookup_unicode(self) -> None:
        """Non-ASCII names arrive as text and go back raw UTF-8, as JSON.stringify writes."""
        d = self.request("l2", "lookup", "sérvice:ü")
        self.complete(d, [])
        self.assertReplies(b'["l2",null,[]]')
        d = self.request("l3", "get", "x")
        self.complete(d, {"v": "ü"})
        self.assertEqual(self.client.texts[-1], '["l3",null,{"v":"ü"}]'.encode())

    def test_put(self) -> None:
        d = self.request("p1", "put", {"v": "hello world"})
        self.complete(d, "6d33adc2b6b2c14c3036feefb7fedbca1a880527")
        self.assertReplies(b'["p1",null,"6d33adc2b6b2c14c3036feefb7fedbca1a880527"]')

    def test_get(self) -> None:
        """The result object goes out in its own key order, compact."""
        d = self.request("g1", "get", "6d33adc2b6b2c14c3036feefb7fedbca1a880527")
        self.complete(d, {"id": "ab" * 20, "token": None, "v": "hello world"})
        self.assertReplies(
            b'["g1",null,{"id":"' + b"ab" * 20 + b'","token":null,"v":"hello world"}]'
        )

    def test_get_not_found(self) -> None:
        """A ``None`` result (get found nothing) is a null result, not an error."""
        d = self.request("g2", "get", {"hash": "00" * 20, "salt": "s"})
        self.complete(d, None)
        self.assertReplies(b'["g2",null,null]')

    def test_rid_echoed_verbatim(self) -> None:
        """The rid is any JSON value and comes back as sent."""
        d = self.request(7, "lookup", "x")
        self.complete(d, [])
        d = self.request({"n": [1]}, "lookup", "x")
        self.complete(d, [])
        self.assertReplies(b"[7,null,[]]", b'[{"n":[1]},null,[]]')

    # --- errors ----------------------------------------------------------------------------

    def test_announce_errors(self) -> None:
        d = self.request("a2", "announce", "rpc_test")
        self.complete(d, GrapeAnnounceInvalid())
        d = self.request("a3", "announce", ["rpc_test", 1337])
        self.complete(d, NoNodesToQuery())
        self.assertReplies(b'["a2","ERR_GRAPE_ANNOUNCE",null]', b'["a3","No nodes to query",null]')

    def test_lookup_error(self) -> None:
        d = self.request("l4", "lookup", "")
        self.complete(d, GrapeLookupInvalid())
        self.assertReplies(b'["l4","ERR_GRAPE_LOOKUP",null]')

    def test_put_krpc_error(self) -> None:
        """A KRPC error goes out as Node's joined "<code> <text>" message."""
        d = self.request("p2", "put", {"v": "x", "k": "00" * 32, "seq": 1, "sig": "00"})
        self.complete(d, KRPCError(302, "sequence number less than current"))
        self.assertReplies(b'["p2","302 sequence number less than current",null]')

    def test_get_error(self) -> None:
        d = self.request("g3", "get", "zz")
        self.complete(d, GrapeHashFormat())
        self.assertReplies(b'["g3","ERR_GRAPE_HASH_FORMAT",null]')

    def test_unknown_operation(self) -> None:
        """Unknown types reach the dispatcher too, which answers ERR_REQ_NOTFOUND."""
        d = self.request("u1", "LOOKUP", "x")
        self.complete(d, GrapeRequestNotFound())
        self.assertReplies(b'["u1","ERR_REQ_NOTFOUND",null]')

    def test_unexpected_exception(self) -> None:
        """Anything that is not a GrenacheError is ERR_GRAPE_GENERIC, logged with traceback."""
        d = self.request("x1", "lookup", "x")
        self.complete(d, RuntimeError("boom"))
        self.assertReplies(b'["x1","ERR_GRAPE_GENERIC",null]')
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_dispatch_raises_synchronously(self) -> None:
        def raising(operation: str, data: Any) -> Deferred[Any]:
            raise GrapeLookupInvalid()

        self.factory.dispatch = raising
        self.send(b'["s1","lookup",5]')
        self.assertReplies(b'["s1","ERR_GRAPE_LOOKUP",null]')

    def test_unencodable_result(self) -> None:
        """A result JSON cannot carry is a server bug: ERR_GRAPE_GENERIC, logged."""
        d = self.request("e1", "get", "x")
        self.complete(d, {"v": b"bytes"})
        self.assertReplies(b'["e1","ERR_GRAPE_GENERIC",null]')
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)

    def test_unencodable_rid(self) -> None:
        """Whatever the rid holds, exactly one well-formed reply frame goes out."""
        self.send(b'["\\ud800","lookup","x"]')
        self.assertEqual(self.dispatch.calls[0][:2], ("lookup", "x"))
        self.complete(self.dispatch.calls[0][2], [])
        self.flushLoggedErrors()
        self.assertEqual(len(self.client.texts), 1)
        reply = codec.json_loads(self.client.texts[0])
        self.assertIsInstance(reply, list)
        self.assertEqual(len(reply), 3)

    # --- concurrency -----------------------------------------------------------------------

    def test_out_of_order_completion(self) -> None:
        """Replies leave as operations finish, not in request order."""
        first = self.request("r1", "lookup", "slow")
        second = self.request("r2", "put", {"v": "fast"})
        self.complete(second, "aa" * 20)
        self.assertReplies(b'["r2",null,"' + b"aa" * 20 + b'"]')
        self.complete(first, ["127.0.0.1:1"])
        self.assertReplies(b'["r2",null,"' + b"aa" * 20 + b'"]', b'["r1",null,["127.0.0.1:1"]]')

    def test_busy(self) -> None:
        """Beyond max_in_flight unanswered requests a socket is told ERR_GRAPE_BUSY at once."""
        self.make_factory(max_in_flight=2)
        self.client = self.connect()
        first = self.request("b1", "lookup", "x")
        self.request("b2", "lookup", "x")
        self.send(b'["b3","lookup","x"]')
        self.assertEqual(len(self.dispatch.calls), 2)
        self.assertReplies(b'["b3","ERR_GRAPE_BUSY",null]')
        self.complete(first, [])
        self.request("b4", "lookup", "x")
        self.assertEqual(self.client.texts[-1], b'["b1",null,[]]')

    def test_busy_is_per_socket(self) -> None:
        self.make_factory(max_in_flight=1)
        self.client = self.connect()
        self.request("c1", "lookup", "x")
        other = self.client
        self.client = self.connect()
        self.request("c2", "lookup", "x")
        self.assertEqual(other.texts, [])
        self.assertReplies()

    # --- bad frames ------------------------------------------------------------------------

    def assertStillServing(self) -> None:
        """A good request after the bad frames on the same socket is still answered."""
        before = list(self.client.texts)
        d = self.request("ok", "lookup", "rpc_test")
        self.complete(d, ["127.0.0.1:1337"])
        self.assertEqual(self.client.texts, [*before, b'["ok",null,["127.0.0.1:1337"]]'])
        self.assertEqual(self.servers[-1].state, WebSocketProtocol.STATE_OPEN)

    def test_not_json(self) -> None:
        for frame in (b"not json", b"", b'["a","lookup"', b"NaN", b"[1,2,3] x"):
            self.send(frame)
        self.assertReplies(*[PAYLOAD_INVALID] * 5)
        self.assertEqual(self.dispatch.calls, [])
        self.assertStillServing()

    def test_invalid_utf8(self) -> None:
        """Invalid UTF-8 is answered, not a 1007 close, in text and binary frames."""
        self.send(b'["r","lookup","\xff"]')
        self.send(b'["r","lookup","\xc3"]', binary=True)
        self.assertReplies(PAYLOAD_INVALID, PAYLOAD_INVALID)
        self.assertStillServing()

    def test_wrong_shape(self) -> None:
        frames = [
            (b'{"rid":"r","type":"lookup"}', b"null"),
            (b'"lookup"', b"null"),
            (b"[]", b"null"),
            (b'["r1","lookup"]', b'"r1"'),
            (b'["r2","lookup","x","extra"]', b'"r2"'),
            (b'["r3",5,"x"]', b'"r3"'),
            (b'[null,null,"x"]', b"null"),
            (b"[[1],false,null]", b"[1]"),
        ]
        for frame, _ in frames:
            self.send(frame)
        self.assertReplies(
            *[b"[" + rid + b',"ERR_GRAPE_PAYLOAD_INVALID",null]' for _, rid in frames]
        )
        self.assertEqual(self.dispatch.calls, [])
        self.assertStillServing()

    def test_deeply_nested(self) -> None:
        """JSON nested too deep for the parser is a bad payload, not a server error."""
        self.send(b"[" * 8000)
        self.assertReplies(PAYLOAD_INVALID)
        self.assertStillServing()

    def test_size_limit(self) -> None:
        """max_message_size bytes are accepted, one more is refused, the socket stays open."""
        head = b'["s","lookup","'
        filler = 8192 - len(head) - 2
        self.send(head + b"x" * filler + b'"]')
        self.assertEqual(len(self.dispatch.calls), 1)
        self.send(head + b"x" * (filler + 1) + b'"]')
        self.assertReplies(PAYLOAD_SIZE)
        self.send(b"y" * 30000, binary=True)
        self.assertReplies(PAYLOAD_SIZE, PAYLOAD_SIZE)
        self.assertEqual(len(self.dispatch.calls), 1)
        self.assertStillServing()

    def test_custom_size_limit(self) -> None:
        self.make_factory(max_message_size=20)
        self.client = self.connect()
        self.send(b'["r","lookup","12345"]')
        self.assertReplies(PAYLOAD_SIZE)
        self.send(b'["r","lookup","1"]')
        self.assertEqual(self.dispatch.calls[-1][:2], ("lookup", "1"))

    def test_huge_message_closes(self) -> None:
        """Past the hard limit autobahn fails the connection with 1009 (message too big)."""
        self.send(b"z" * (hard_message_limit(8192) + 1))
        self.assertEqual(self.client.close_code, 1009)
        self.assertEqual(self.servers[-1].state, WebSocketProtocol.STATE_CLOSED)
        self.assertReplies()

    def test_binary_request(self) -> None:
        """A binary frame holding UTF-8 JSON is a request; the reply is a text frame."""
        self.send('["bin","lookup","sérvice"]'.encode(), binary=True)
        self.assertEqual(self.dispatch.calls[0][:2], ("lookup", "sérvice"))
        self.complete(self.dispatch.calls[0][2], [])
        self.assertEqual(self.client.received, [(b'["bin",null,[]]', False)])

    # --- closed sockets --------------------------------------------------------------------

    def test_reply_after_disconnect_discarded(self) -> None:
        """A reply for a socket that has gone is dropped without error."""
        d = self.request("gone", "lookup", "x")
        cast(Any, self.client.transport).loseConnection()  # the TCP connection just goes
        self.pumper.flush()
        self.assertEqual(self.servers[-1].state, WebSocketProtocol.STATE_CLOSED)
        d.callback(["127.0.0.1:1"])
        self.pumper.flush()
        self.assertReplies()
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_error_after_close_handshake_discarded(self) -> None:
        d = self.request("gone", "lookup", "x")
        self.client.sendClose(1000)
        self.pumper.flush()
        self.assertEqual(self.servers[-1].state, WebSocketProtocol.STATE_CLOSED)
        d.errback(RuntimeError("late"))
        self.assertReplies()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class _Wire(StringTransport):
    """A StringTransport that lets autobahn unregister a producer it never registered."""

    def unregisterProducer(self) -> None:
        self.producer = None


class PlainHTTPTests(unittest.TestCase):
    """What the API answers a client that is not speaking WebSocket."""

    def test_plain_http_request_gets_426(self) -> None:
        """An ``http://`` grape URL pointed at this port: 426 Upgrade Required, no HTML page,
        and the connection is closed (an HTTP client can tell it reached the WebSocket API)."""
        factory = grape_ws_factory(HeldDispatch(), reactor=Clock())
        server = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5))
        wire = _Wire()
        server.makeConnection(wire)
        server.dataReceived(
            b"POST / HTTP/1.1\r\nHost: 127.0.0.1:30002\r\nContent-Type: application/json\r\n"
            b'Content-Length: 38\r\n\r\n{"rid":"r","data":"rpc_test"}'
        )
        head, _, body = wire.value().partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 426 "), head)
        self.assertEqual(body, b"")
        self.assertTrue(wire.disconnecting)


class ReactorTests(unittest.TestCase):
    """The factory's timers run on the reactor it was given, not on the global one."""

    def test_handshake_timeout_on_the_given_clock(self) -> None:
        clock = Clock()
        factory = grape_ws_factory(HeldDispatch(), reactor=clock)
        factory.setProtocolOptions(openHandshakeTimeout=5.0)
        server = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5))
        wire = _Wire()
        server.makeConnection(wire)
        self.assertTrue(clock.getDelayedCalls(), "the handshake timer is on the given clock")
        clock.advance(4.0)
        self.assertFalse(wire.disconnecting)
        clock.advance(1.5)
        self.assertTrue(wire.disconnecting, "a client that never sends its handshake is dropped")


class DispatchOverrideTests(MemorySocketMixin, unittest.TestCase):
    """A protocol subclass can run operations itself (``dispatch_request``)."""

    def test_dispatch_request_override(self) -> None:
        class Upper(GrapeWebSocketProtocol):
            def dispatch_request(self, operation: str, data: Any) -> Any:
                if operation == "lookup":
                    return [data.upper()]
                return super().dispatch_request(operation, data)

        factory = self.make_factory()
        factory.protocol = Upper
        pumper = SyncPumper(rounds=1)
        agent = create_memory_agent(self.reactor, pumper, self.build_server)
        d = agent.open("ws://127.0.0.1:30002/", {}, protocol_class=RecordingClient)
        pumper.flush()
        client = self.successResultOf(d)
        client.sendMessage(b'["r1","lookup","abc"]')
        client.sendMessage(b'["r2","announce",["abc",1]]')
        pumper.flush()
        self.assertEqual(client.texts, [b'["r1",null,["ABC"]]'])
        self.assertEqual([c[:2] for c in self.dispatch.calls], [("announce", ["abc", 1])])


class FactoryTests(unittest.TestCase):
    """Construction and the limits handed to autobahn."""

    def test_limits(self) -> None:
        factory = grape_ws_factory(HeldDispatch(), max_message_size=8192)
        assert isinstance(factory, GrapeWebSocketFactory)
        self.assertEqual(factory.max_message_size, 8192)
        self.assertEqual(factory.max_in_flight, 256)
        self.assertEqual(factory.maxMessagePayloadSize, hard_message_limit(8192))
        self.assertEqual(factory.maxFramePayloadSize, hard_message_limit(8192))
        self.assertGreater(hard_message_limit(8192), 8192)
        self.assertEqual(hard_message_limit(1 << 20), 4 << 20)
        self.assertFalse(factory.utf8validateIncoming)

    def test_url(self) -> None:
        factory = grape_ws_factory(HeldDispatch(), url="ws://127.0.0.1:30002")
        self.assertEqual(factory.url, "ws://127.0.0.1:30002")

    def test_bad_limits(self) -> None:
        self.assertRaises(ValueError, grape_ws_factory, HeldDispatch(), max_message_size=0)
        self.assertRaises(ValueError, GrapeWebSocketFactory, HeldDispatch(), max_in_flight=0)


def _global_reactor() -> Any:
    """Trial's running reactor, for the test that needs a real socket."""
    from twisted.internet import reactor

    return reactor


class LoopbackTests(unittest.TestCase):
    """One real TCP round trip on a loopback port chosen by the OS; every wait is on an event."""

    @inlineCallbacks
    def test_loopback(self) -> Any:
        reactor = _global_reactor()
        dispatch = HeldDispatch()
        factory = grape_ws_factory(dispatch, reactor=reactor)
        port = yield endpoints.listen(reactor, "tcp:0:interface=127.0.0.1", factory)
        self.addCleanup(port.stopListening)
        agent = create_client_agent(reactor)
        url = f"ws://127.0.0.1:{port.getHost().port}/"
        client = yield agent.open(url, {}, protocol_class=RecordingClient)
        received: Deferred[bytes] = Deferred()
        client.onMessage = lambda payload, isBinary: received.callback(payload)
        called = dispatch.next_call()
        client.sendMessage('["lb","lookup","sérvice"]'.encode())
        operation, data, reply = yield called
        self.assertEqual((operation, data), ("lookup", "sérvice"))
        reply.callback(["127.0.0.1:1337"])
        answer = yield received
        self.assertEqual(answer, b'["lb",null,["127.0.0.1:1337"]]')
        closed: Deferred[None] = Deferred()
        client.onClose = lambda wasClean, code, reason: closed.callback(None)
        client.sendClose(1000)
        yield closed
