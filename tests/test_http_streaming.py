"""Streaming over HTTP (docs/protocol.rst, *HTTP streaming*): the lean server's stream path,
the RPC transport's stream handler, the stream client, and round trips between them.

Everything runs in memory: server and client protocols on StringTransports with a Clock or a
MemoryReactorClock (framing, flow control, timeouts, errors), round trips (also over TLS)
through iosim, and the 100 MB upload under tracemalloc.
"""

from __future__ import annotations

import hashlib
import json
import random
import tracemalloc
from typing import Any

from twisted.internet import protocol
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from grenache import errors
from grenache.http.messages import HTTPRequest, HTTPResponse
from grenache.http.server import HTTPServerFactory
from grenache.http.server_protocol import _OutputFlow
from grenache.http.server_stream import HTTPStreamRequest, HTTPStreamResponse
from grenache.http.streams import read_body
from grenache.peer import PeerRPCClient, PeerRPCServer, Request
from grenache.tls import ClientTLS, ServerTLS
from grenache.transports.http import (
    ClientStream,
    HTTPClientTransport,
    HTTPServerTransport,
    StreamMeta,
    StreamReply,
    StreamRequest,
    StreamResponse,
    header_json,
    stream_head,
    stream_meta,
)
from tests.support import make_pki, tls_on_a_clock

MIB = 1024 * 1024


# --- helpers ---------------------------------------------------------------------------------


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def stream_post(headers: bytes = b"", path: bytes = b"/") -> bytes:
    """The head of a chunked POST (a stream), without its body."""
    return b"POST %s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n%s\r\n" % (
        path,
        headers,
    )


LAST = b"0\r\n\r\n"


def chunked_response(body: bytes, connection: bytes = b"keep-alive", status: bytes = b"200 OK"):  # type: ignore[no-untyped-def]
    out = b"HTTP/1.1 %s\r\nTransfer-Encoding: chunked\r\nConnection: %s\r\n\r\n" % (
        status,
        connection,
    )
    return out + (chunk(body) if body else b"") + LAST


class Collector(protocol.Protocol):
    """A body protocol that records what it gets; can pause itself after each piece."""

    def __init__(self, pause_each: bool = False) -> None:
        self.data: list[bytes] = []
        self.reason: Failure | None = None
        self.pause_each = pause_each
        self.size = 0

    def dataReceived(self, data: bytes) -> None:
        self.data.append(data)
        self.size += len(data)
        if self.pause_each:
            producer: Any = self.transport
            producer.pauseProducing()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.reason = reason

    @property
    def body(self) -> bytes:
        return b"".join(self.data)


class Echo(protocol.Protocol):
    """Writes each piece of the request body back, following the response's backpressure."""

    def __init__(self, response: HTTPStreamResponse) -> None:
        self.response = response
        self.reason: Failure | None = None

    def connectionMade(self) -> None:
        self.response.registerProducer(self.transport, True)

    def dataReceived(self, data: bytes) -> None:
        self.response.write(data)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.reason = reason
        if reason.check(ConnectionDone):
            self.response.unregisterProducer()
            self.response.finish()


class Handlers:
    """Stream handlers that record their requests and responses."""

    def __init__(self) -> None:
        self.requests: list[HTTPStreamRequest] = []
        self.responses: list[HTTPStreamResponse] = []

    def record(self, request: HTTPStreamRequest, response: HTTPStreamResponse) -> None:
        self.requests.append(request)
        self.responses.append(response)

    def echo(self, request: HTTPStreamRequest, response: HTTPStreamResponse) -> None:
        self.record(request, response)
        request.deliverBody(Echo(response))

    def hold(self, request: HTTPStreamRequest, response: HTTPStreamResponse) -> None:
        """Only records: the body is not asked for until the test says so."""
        self.record(request, response)


def buffered(request: HTTPRequest) -> HTTPResponse:
    return HTTPResponse(200, b"buffered:" + request.body)


class Server:
    """An HTTPServerFactory whose router streams chunked requests; StringTransport wires."""

    def __init__(self, handler: Any, route_all: bool = False, **kwargs: Any) -> None:
        self.clock = Clock()
        clock: Any = self.clock

        def route(request: HTTPStreamRequest) -> Any:
            if route_all or request.header(b"transfer-encoding") == b"chunked":
                return handler
            return None

        self.factory = HTTPServerFactory(buffered, clock, stream_router=route, **kwargs)

    def connect(self, transport: StringTransport | None = None) -> tuple[Any, StringTransport]:
        proto = self.factory.buildProtocol(None)
        wire = transport or StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.7", 4242))
        proto.makeConnection(wire)
        return proto, wire


class Sink(StringTransport):
    """A transport that counts what is written instead of keeping it (memory tests)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.tail = b""

    def write(self, data: bytes) -> None:
        self.count += len(data)
        self.tail = (self.tail + data)[-64:]

    def writeSequence(self, data: Any) -> None:
        for piece in data:
            self.write(piece)


class PullProducer:
    """A pull producer (like FileSender): one piece per resumeProducing."""

    def __init__(self, consumer: Any, pieces: list[bytes]) -> None:
        self.consumer = consumer
        self.pieces = list(pieces)
        self.stopped = False
        consumer.registerProducer(self, False)

    def resumeProducing(self) -> None:
        if self.pieces:
            self.consumer.write(self.pieces.pop(0))
        if not self.pieces:
            self.consumer.unregisterProducer()
            self.consumer.finish()

    def stopProducing(self) -> None:
        self.stopped = True


class PushProducer:
    def __init__(self) -> None:
        self.state = "producing"

    def pauseProducing(self) -> None:
        self.state = "paused"

    def resumeProducing(self) -> None:
        self.state = "producing"

    def stopProducing(self) -> None:
        self.state = "stopped"


# --- the lean server's stream path ----------------------------------------------------------


class ServerStreamTests(SynchronousTestCase):
    def test_echo(self) -> None:
        """Pieces go to the handler as they arrive and back out chunked, then keep-alive."""
        h = Handlers()
        s = Server(h.echo)
        proto, wire = s.connect()
        proto.dataReceived(stream_post(b"X-Extra: 1\r\n"))
        (request,) = h.requests
        self.assertEqual((request.method, request.path, request.version), ("POST", "/", "1.1"))
        self.assertEqual(request.header(b"x-extra"), b"1")
        self.assertEqual(request.peer, IPv4Address("TCP", "10.0.0.7", 4242))
        self.assertEqual(wire.value(), b"")
        proto.dataReceived(chunk(b"hello "))
        self.assertEqual(
            wire.value(),
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n"
            + chunk(b"hello "),
        )
        wire.clear()
        proto.dataReceived(chunk(b"world") + LAST)
        self.assertEqual(wire.value(), chunk(b"world") + LAST)
        self.assertTrue(h.responses[0].finished)
        self.assertEqual(h.requests[0].received, 11)
        # The connection keeps serving, buffered requests included.
        wire.clear()
        proto.dataReceived(b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nok")
        self.assertEqual(
            wire.value(),
            b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nConnection: keep-alive\r\n\r\nbuffered:ok",
        )
        # The response's producer went with it; the connection's output flow is back.
        self.assertIsInstance(wire.producer, _OutputFlow)

    def test_content_length_stream(self) -> None:
        """A router may stream any request, e.g. one with Content-Length."""
        h = Handlers()
        s = Server(h.echo, route_all=True)
        proto, wire = s.connect()
        proto.dataReceived(b"PUT /x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")
        self.assertEqual(
            wire.value(),
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n"
            + chunk(b"abc")
            + LAST,
        )

    def test_expect_continue(self) -> None:
        """``100 Continue`` goes out before anything the handler writes."""

        def eager(request: HTTPStreamRequest, response: HTTPStreamResponse) -> None:
            response.write(b"hi")
            request.deliverBody(Collector())

        s = Server(eager)
        proto, wire = s.connect()
        proto.dataReceived(stream_post(b"Expect: 100-continue\r\n"))
        self.assertEqual(
            wire.value(),
            b"HTTP/1.1 100 Continue\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n"
            + chunk(b"hi"),
        )

    def test_body_held_until_delivered(self) -> None:
        """Until deliverBody nothing is read; what arrived meanwhile comes first, in order."""
        h = Handlers()
        s = Server(h.hold)
        proto, wire = s.connect()
        proto.dataReceived(stream_post() + chunk(b"a") + chunk(b"b"))
        self.assertEqual(wire.producerState, "paused")
        proto.dataReceived(chunk(b"c"))  # already on its way when reading paused
        collector = Collector()
        h.requests[0].deliverBody(collector)
        self.assertEqual(collector.data, [b"a", b"b", b"c"])
        self.assertEqual(wire.producerState, "producing")
        self.assertIsNone(collector.reason)
        proto.dataReceived(LAST)
        assert collector.reason is not None
        self.assertTrue(collector.reason.check(ConnectionDone))
        self.assertTrue(h.requests[0].complete)
        self.assertRaises(RuntimeError, h.requests[0].deliverBody, Collector())

    def test_pause_and_resume(self) -> None:
        """A paused body protocol stops the socket; pieces already parsed wait for resume."""
        h = Handlers()
        s = Server(h.hold)
        proto, wire = s.connect()
        proto.dataReceived(stream_post())
        collector = Collector(pause_each=True)
        h.requests[0].deliverBody(collector)
        proto.dataReceived(chunk(b"1") + chunk(b"2") + chunk(b"3"))
        self.assertEqual(collector.data, [b"1"])
        self.assertEqual(wire.producerState, "paused")
        request = h.requests[0]
        for expected in ([b"1", b"2"], [b"1", b"2", b"3"]):
            request.resumeProducing()
            self.assertEqual(collector.data, expected)
            self.assertEqual(wire.producerState, "paused")  # paused again by each piece
        request.resumeProducing()
        self.assertEqual(wire.producerState, "producing")
        proto.dataReceived(chunk(b"4") + LAST)
        # The body is complete: its end comes even while paused; the socket is free again.
        self.assertEqual(collector.data, [b"1", b"2", b"3", b"4"])
        assert collector.reason is not None
        self.assertTrue(collector.reason.check(ConnectionDone))
        self.assertEqual(wire.producerState, "producing")

    def test_input_held_while_paused(self) -> None:
        """Bytes arriving while paused (and the next request) wait for the resume."""
        h = Handlers()
        s = Server(h.hold)
        proto, wire = s.connect()
        proto.dataReceived(stream_post())
        collector = Collector()
        h.requests[0].deliverBody(collector)
        h.requests[0].pauseProducing()
        proto.dataReceived(chunk(b"x") + LAST + b"GET /next HTTP/1.1\r\n\r\n")
        self.assertEqual(collector.data, [])
        h.requests[0].resumeProducing()
        self.assertEqual(collector.data, [b"x"])
        h.responses[0].finish()
        self.assertIn(b"buffered:", wire.value())

    def test_response_backpressure(self) -> None:
        """The connection's full buffer pauses the response's producer (here: the request)."""
        h = Handlers()
        s = Server(h.echo)
        proto, wire = s.connect()
        proto.dataReceived(stream_post())
        flow = wire.producer
        self.assertIsNotNone(flow)
        self.assertTrue(wire.streaming)
        flow.pauseProducing()  # the socket's send buffer is full
        self.assertTrue(h.responses[0].paused)
        self.assertEqual(wire.producerState, "paused")  # so the request body stops coming
        drained = h.responses[0].drained()
        self.assertNoResult(drained)
        flow.resumeProducing()
        self.assertEqual(wire.producerState, "producing")
        self.successResultOf(drained)
        self.successResultOf(h.responses[0].drained())

    def test_pull_producer(self) -> None:
        """A pull producer is asked for more each time the connection wants it."""
        h = Handlers()
        s = Server(h.hold)
        proto, wire = s.connect()
        proto.dataReceived(stream_post() + LAST)
        response = h.responses[0]
        PullProducer(response, [b"one", b"two"])
        self.assertFalse(wire.streaming)  # the connection pulls
        flow = wire.producer
        flow.resumeProducing()
        flow.resumeProducing()
        self.assertTrue(response.finished)
        self.assertTrue(wire.value().endswith(chunk(b"one") + chunk(b"two") + LAST))
        self.assertIsNot(wire.producer, flow)

    def test_pipeline_order(self) -> None:
        """A stream behind a pending response is held (its producer paused) until its turn."""
        first: Deferred[HTTPResponse] = Deferred()
        h = Handlers()
        s = Server(h.hold)
        s.factory.handler = lambda request: first
        proto, wire = s.connect()
        proto.dataReceived(b"GET /first HTTP/1.1\r\n\r\n" + stream_post() + chunk(b"z") + LAST)
        response = h.responses[0]
        producer = PushProducer()
        response.registerProducer(producer, True)
        self.assertEqual(producer.state, "paused")
        response.write(b"early")
        self.assertEqual(wire.value(), b"")
        first.callback(HTTPResponse(200, b"first"))
        self.assertEqual(producer.state, "producing")
        self.assertEqual(
            wire.value(),
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\nfirst"
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n"
            + chunk(b"early"),
        )

    def test_request_after_stream_waits(self) -> None:
        """A pipelined request after a stream is answered after the stream's response."""
        h = Handlers()
        s = Server(h.hold)
        proto, wire = s.connect()
        proto.dataReceived(stream_post() + LAST + b"POST / HTTP/1.1\r\nContent-Length: 1\r\n\r\n2")
        h.requests[0].deliverBody(Collector())
        self.assertEqual(wire.value(), b"")
        h.responses[0].write(b"s")
        h.responses[0].finish()
        self.assertTrue(
            wire.value().endswith(
                chunk(b"s") + LAST + b"HTTP/1.1 200 OK\r\n"
                b"Content-Length: 10\r\nConnection: keep-alive\r\n\r\nbuffered:2"
            )
        )

    def test_connection_close_and_http10(self) -> None:
        """``Connection: close`` closes after the response; HTTP/1.0 gets a raw body."""
        h = Handlers()
        s = Server(h.echo)
        proto, wire = s.connect()
        proto.dataReceived(stream_post(b"Connection: close\r\n") + chunk(b"a") + LAST)
        self.assertEqual(
            wire.value(),
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            + chunk(b"a")
            + LAST,
        )
        self.assertTrue(wire.disconnecting)
        s = Server(h.echo, route_all=True)
        proto, wire = s.connect()
        proto.dataReceived(b"POST / HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc")
        self.assertEqual(wire.value(), b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nabc")
        self.assertTrue(wire.disconnecting)

    def test_respond_start_head(self) -> None:
        """respond() sends a whole response; start() sets status and headers; HEAD: no body."""
        h = Handlers()
        s = Server(h.hold, route_all=True)
        proto, wire = s.connect()
        proto.dataReceived(stream_post())
        h.responses[0].respond(HTTPResponse(201, b"whole", ((b"X-A", b"1"),)))
        self.assertEqual(
            wire.value(),
            b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\nConnection: keep-alive\r\nX-A: 1\r\n\r\n"
            b"whole",
        )
        self.assertRaises(RuntimeError, h.responses[0].start)
        self.assertRaises(RuntimeError, h.responses[0].write, b"late")
        h.responses[0].finish()  # a second finish does nothing
        proto.dataReceived(chunk(b"ignored") + LAST)  # the unread body is discarded
        wire.clear()
        proto.dataReceived(stream_post())
        h.responses[1].start(404, ((b"X-B", b"2"),))
        h.responses[1].write(b"nope")
        h.responses[1].finish()
        self.assertEqual(
            wire.value(),
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n"
            b"X-B: 2\r\n\r\n" + chunk(b"nope") + LAST,
        )
        proto.dataReceived(LAST)
        wire.clear()
        proto.dataReceived(b"HEAD / HTTP/1.1\r\n\r\n")
        h.responses[2].write(b"dropped")
        h.responses[2].finish()
        self.assertEqual(
            wire.value(),
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n",
        )

    def test_early_response_discards_body(self) -> None:
        """A response finished before the body arrived: the rest is read and dropped, then
        the connection closes as asked."""
        h = Handlers()
        s = Server(h.hold)
        proto, wire = s.connect()
        proto.dataReceived(stream_post(b"Connection: close\r\n") + chunk(b"x" * 1000))
        self.assertEqual(wire.producerState, "paused")
        h.responses[0].respond(HTTPResponse(200, b"done"))
        self.assertEqual(wire.producerState, "producing")
        self.assertFalse(wire.disconnecting)  # the client is still sending
        proto.dataReceived(chunk(b"y" * 1000))
        proto.dataReceived(LAST)
        self.assertTrue(wire.disconnecting)
        self.assertEqual(h.requests[0].received, 2000)
        self.assertTrue(wire.value().endswith(b"done"))

    def test_handler_failures(self) -> None:
        """A handler failing before it wrote gets 500; after, the connection drops."""

        def boom(request: HTTPStreamRequest, response: HTTPStreamResponse) -> None:
            raise ValueError("boom")

        s = Server(boom)
        proto, wire = s.connect()
        proto.dataReceived(stream_post() + chunk(b"a") + LAST)
        self.assertEqual(
            wire.value(),
            b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 21\r\n"
            b"Connection: keep-alive\r\n\r\nInternal Server Error",
        )
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        later: Deferred[None] = Deferred()

        async def halfway(request: HTTPStreamRequest, response: HTTPStreamResponse) -> None:
            response.write(b"partial")
            await later

        s = Server(halfway)
        proto, wire = s.connect()
        proto.dataReceived(stream_post())
        self.assertFalse(wire.disconnecting)
        later.errback(ValueError("later"))
        self.assertTrue(wire.disconnected)  # aborted: the client sees a cut body
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_connection_lost(self) -> None:
        """The body protocol, the response's producer and drained() all learn of the loss."""
        h = Handlers()
        s = Server(h.hold)
        proto, wire = s.connect()
        proto.dataReceived(stream_post() + chunk(b"a"))
        collector = Collector()
        h.requests[0].deliverBody(collector)
        producer = PushProducer()
        response = h.responses[0]
        response.registerProducer(producer, True)
        wire.producer.pauseProducing()
        drained = response.drained()
        proto.connectionLost(Failure(ConnectionDone()))
        assert collector.reason is not None
        self.assertTrue(collector.reason.check(errors.TransportClosed))
        self.assertEqual(producer.state, "stopped")
        self.failureResultOf(drained, errors.TransportClosed)
        self.failureResultOf(response.drained(), errors.TransportClosed)
        response.write(b"dropped")  # no error: the bytes go nowhere, as on a transport
        response.finish()
        later = PushProducer()
        response2 = h.responses[0]
        self.assertRaises(RuntimeError, response2.registerProducer, later, True)

    def test_stop_producing_drops_connection(self) -> None:
        h = Handlers()
        s = Server(h.hold)
        proto, wire = s.connect()
        proto.dataReceived(stream_post() + chunk(b"a"))
        collector = Collector()
        h.requests[0].deliverBody(collector)
        h.requests[0].stopProducing()
        self.assertTrue(wire.disconnected)
        assert collector.reason is not None
        self.assertTrue(collector.reason.check(errors.TransportClosed))

    def test_malformed_chunks(self) -> None:
        h = Handlers()
        s = Server(h.hold)
        proto, wire = s.connect()
        proto.dataReceived(stream_post() + chunk(b"a"))
        collector = Collector()
        h.requests[0].deliverBody(collector)
        proto.dataReceived(b"zz\r\nnot a chunk\r\n")
        self.assertEqual(collector.data, [b"a"])
        assert collector.reason is not None
        self.assertTrue(collector.reason.check(errors.RequestParseError))
        # The handler may still answer; the 400 follows and the connection closes.
        h.responses[0].respond(HTTPResponse(200, b"ok"))
        self.assertIn(b"400 Bad Request", wire.value())
        self.assertTrue(wire.disconnecting)

    def test_stream_size_limits(self) -> None:
        """max_body_size does not apply to streams; max_stream_size does."""
        h = Handlers()
        s = Server(h.echo, max_body_size=4)
        proto, wire = s.connect()
        proto.dataReceived(stream_post() + chunk(b"x" * 100) + LAST)
        self.assertTrue(wire.value().endswith(chunk(b"x" * 100) + LAST))
        # Over max_stream_size before the response started: 413, closed.
        s = Server(h.hold, max_stream_size=10)
        proto, wire = s.connect()
        proto.dataReceived(stream_post())
        collector = Collector()
        h.requests[-1].deliverBody(collector)
        proto.dataReceived(chunk(b"x" * 6))
        proto.dataReceived(chunk(b"x" * 6))
        self.assertTrue(wire.value().startswith(b"HTTP/1.1 413 Payload Too Large\r\n"))
        self.assertTrue(wire.disconnecting)
        assert collector.reason is not None
        self.assertTrue(collector.reason.check(errors.RequestTooLarge))
        # After it started: the connection drops.
        s = Server(h.echo, max_stream_size=10)
        proto, wire = s.connect()
        proto.dataReceived(stream_post() + chunk(b"x" * 6) + chunk(b"x" * 6))
        self.assertTrue(wire.disconnected)
        # A Content-Length over the limit is refused on the head; the handler never runs.
        count = len(h.requests)
        s = Server(h.hold, route_all=True, max_stream_size=10)
        proto, wire = s.connect()
        proto.dataReceived(b"POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n")
        self.assertTrue(wire.value().startswith(b"HTTP/1.1 413 "))
        self.assertEqual(len(h.requests), count)

    def test_idle(self) -> None:
        """The sweep spares a stream while its handler has the turn, not while it waits for
        the client."""
        h = Handlers()
        # Waiting for the client's body: idle.
        s = Server(h.echo, idle_timeout=4.0)
        proto, wire = s.connect()
        proto.dataReceived(stream_post() + chunk(b"a"))
        s.clock.pump([1.0] * 5)
        self.assertTrue(wire.disconnecting)
        # The handler holds the body (no deliverBody yet): busy.
        s = Server(h.hold, idle_timeout=4.0)
        proto, wire = s.connect()
        proto.dataReceived(stream_post())
        s.clock.pump([1.0] * 20)
        self.assertFalse(wire.disconnecting)
        # The body is complete and the response not finished: busy.
        h.requests[-1].deliverBody(Collector())
        proto.dataReceived(LAST)
        s.clock.pump([1.0] * 20)
        self.assertFalse(wire.disconnecting)
        # The client does not read the response: idle.
        wire.producer.pauseProducing()
        s.clock.pump([1.0] * 5)
        self.assertTrue(wire.disconnecting)
        assert isinstance(wire, StringTransport)

    def test_memory_100_mb_upload(self) -> None:
        """A 100 MB upload echoed back through the stream path runs in bounded memory."""
        h = Handlers()
        s = Server(h.echo)
        sink = Sink()
        proto, _ = s.connect(sink)
        piece = chunk(b"z" * 65536)
        proto.dataReceived(stream_post())
        tracemalloc.start()
        try:
            for _ in range(100 * MIB // 65536):
                proto.dataReceived(piece)
            proto.dataReceived(LAST)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        self.assertEqual(h.requests[0].received, 100 * MIB)
        self.assertTrue(h.responses[0].finished)
        self.assertTrue(sink.tail.endswith(LAST))
        self.assertGreater(sink.count, 100 * MIB)
        self.assertLess(peak, 1 * MIB)


class BodyWriterTests(SynchronousTestCase):
    def test_writer_contract(self) -> None:
        h = Handlers()
        s = Server(h.hold)
        proto, wire = s.connect()
        proto.dataReceived(stream_post())
        response = h.responses[0]
        response.write(b"")  # the head only: an empty chunk would end the body
        self.assertEqual(
            wire.value(),
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n",
        )
        producer = PushProducer()
        response.registerProducer(producer, True)
        self.assertRaises(RuntimeError, response.registerProducer, PushProducer(), True)
        response.unregisterProducer()
        response.unregisterProducer()  # harmless
        response.writeSequence([b"a", b"b"])
        self.assertTrue(wire.value().endswith(chunk(b"ab")))
        self.assertEqual(response.written, 2)
        response.finish()
        self.assertTrue(response.finished)
        self.assertRaises(RuntimeError, response.write, b"x")
        self.assertRaises(RuntimeError, response.registerProducer, producer, True)
        self.successResultOf(response.drained())


# --- the RPC transport's stream handler -----------------------------------------------------


NODE_STREAM_HEAD = (
    b"POST / HTTP/1.1\r\n"
    b'_gr: ["0c0e24f3-4a51-4a59-a1d3-ee2a6e0ab1c6","rpc_stream"]\r\n'
    b"connection: close\r\n"
    b"transfer-encoding: chunked\r\n"
    b"_a: uploadNewPublicStream\r\n"
    b'_ar: {"foo":"bar"}\r\n'
    b"content-type: application/pdf\r\n"
    b"Host: 127.0.0.1:1337\r\n"
    b"\r\n"
)
"""Node's rpc_client_stream.js example request: the head as Node writes it."""


class RPCStreamServer:
    def __init__(self, stream_handler: Any, **kwargs: Any) -> None:
        self.reactor = MemoryReactorClock()
        self.requests: list[Request] = []

        def rpc(request: Request) -> Any:
            self.requests.append(request)
            return {"rpc": request.payload}

        self.transport = HTTPServerTransport(self.reactor, stream_handler=stream_handler, **kwargs)
        self.server = PeerRPCServer(None, self.transport, rpc)
        self.server.listen(1337)

    def connect(self) -> tuple[Any, StringTransport]:
        proto = self.transport.factory.buildProtocol(None)
        wire = StringTransport()
        proto.makeConnection(wire)
        return proto, wire


class RPCStreamServerTests(SynchronousTestCase):
    def test_node_stream_request(self) -> None:
        """Node's stream request: meta as Node's, the body raw, Node's convenience reply."""
        seen: list[tuple[StreamRequest, StreamResponse]] = []

        def handler(request: StreamRequest, response: StreamResponse) -> None:
            seen.append((request, response))
            request.deliverBody(Collector())

        s = RPCStreamServer(handler)
        proto, wire = s.connect()
        proto.dataReceived(NODE_STREAM_HEAD + chunk(b"hello") + LAST)
        ((request, response),) = seen
        self.assertEqual(
            request.meta,
            StreamMeta(
                info_headers=["0c0e24f3-4a51-4a59-a1d3-ee2a6e0ab1c6", "rpc_stream"],
                action="uploadNewPublicStream",
                args={"foo": "bar"},
                is_stream=True,
            ),
        )
        self.assertEqual(request.rid, "0c0e24f3-4a51-4a59-a1d3-ee2a6e0ab1c6")
        self.assertEqual(request.key, "rpc_stream")
        self.assertEqual(request.header(b"content-type"), b"application/pdf")
        response.reply(request.rid, None, "world")
        self.assertEqual(
            wire.value(),
            b"HTTP/1.1 200 OK\r\nContent-Length: 53\r\nConnection: close\r\n\r\n"
            b'["0c0e24f3-4a51-4a59-a1d3-ee2a6e0ab1c6",null,"world"]',
        )
        self.assertTrue(wire.disconnecting)
        self.assertEqual(s.requests, [])

    def test_reply_forms(self) -> None:
        cases: list[tuple[Any, Any, bytes]] = [
            (ValueError("bad"), None, b'["r","bad",null]'),
            (errors.RequestTimeout(), None, b'["r","ERR_TIMEOUT",null]'),
            ("as string", None, b'["r","as string",null]'),
            (None, {"n": [1, "é"]}, '["r",null,{"n":[1,"é"]}]'.encode()),
            (None, {"bad": object()}, b""),
        ]
        for err, result, expected in cases:
            responses: list[StreamResponse] = []
            s = RPCStreamServer(lambda request, response, r=responses: r.append(response))
            proto, wire = s.connect()
            proto.dataReceived(stream_post() + LAST)
            responses[0].reply("r", err, result)
            body = wire.value().split(b"\r\n\r\n", 1)[1]
            if expected:
                self.assertEqual(body, expected)
            else:
                self.assertIn(b"not JSON serializable", body)

    def test_routing(self) -> None:
        """Chunked requests stream; others are RPC, unless disable_buffered."""
        metas: list[StreamMeta] = []

        def handler(request: StreamRequest, response: StreamResponse) -> None:
            metas.append(request.meta)
            response.reply(request.rid, None, "streamed")

        s = RPCStreamServer(handler)
        proto, wire = s.connect()
        proto.dataReceived(b'POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n["r","k",1]')
        self.assertEqual(s.requests, [Request("r", "k", 1)])
        s = RPCStreamServer(handler, disable_buffered=True)
        proto, wire = s.connect()
        body = b'["r","k",1]'
        proto.dataReceived(
            b"POST / HTTP/1.1\r\ngrc-compress: gzip\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body)
        )
        self.assertEqual(s.requests, [])
        self.assertEqual(metas, [StreamMeta(compress=True)])  # a buffered client: not isStream
        self.assertTrue(wire.value().endswith(b'[null,null,"streamed"]'))

    def test_bad_gr_header(self) -> None:
        """Node's literal 500 before any handler runs; the body is read and dropped."""
        called: list[Any] = []
        s = RPCStreamServer(lambda request, response: called.append(request))
        proto, wire = s.connect()
        proto.dataReceived(stream_post(b"_gr: not json\r\n") + chunk(b"x" * 100))
        self.assertEqual(
            wire.value(),
            b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 35\r\n"
            b'Connection: keep-alive\r\n\r\n[null, "ERR_HEADER_PARSE_GR", null]',
        )
        proto.dataReceived(chunk(b"y") + LAST + stream_post(b'_gr: ["a","b"]\r\n') + LAST)
        self.assertEqual(len(called), 1)
        self.assertEqual(called[0].meta.info_headers, ["a", "b"])

    def test_handler_failure(self) -> None:
        """A failure before anything was sent: status 500 and [rid, message, null]."""

        async def handler(request: StreamRequest, response: StreamResponse) -> None:
            raise errors.RemoteError("ERR_NOPE")

        s = RPCStreamServer(handler)
        proto, wire = s.connect()
        proto.dataReceived(stream_post(b'_gr: ["rid-1","svc"]\r\n') + LAST)
        self.assertEqual(
            wire.value(),
            b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 25\r\n"
            b'Connection: keep-alive\r\n\r\n["rid-1","ERR_NOPE",null]',
        )

    def test_meta_parsing(self) -> None:
        self.assertEqual(stream_meta(()), StreamMeta())
        meta = stream_meta(
            (
                (b"_gr", '["r","caf\u00e9"]'.encode("latin-1")),  # Node sends latin-1 bytes
                (b"_a", b""),
                (b"_ar", b"not json"),
                (b"transfer-encoding", b"gzip"),
                (b"transfer-encoding", b"chunked"),
                (b"grc-compress", b"gzip"),
            ),
            ("AA:BB", b"der"),
        )
        self.assertEqual(meta.info_headers, ["r", "café"])
        self.assertIsNone(meta.action)
        self.assertEqual(meta.args, {})
        self.assertFalse(meta.is_stream)  # "gzip, chunked" is not Node's "chunked"
        self.assertTrue(meta.compress)
        self.assertEqual((meta.peer_certificate, meta.peer_certificate_der), ("AA:BB", b"der"))
        self.assertEqual(stream_meta(((b"_ar", b"null"),)).args, None)
        self.assertIsNone(StreamMeta(info_headers={"a": 1}).rid)
        self.assertRaises(ValueError, stream_meta, ((b"_gr", b"[1,"),))

    def test_latin1_gr_on_buffered_requests(self) -> None:
        """A Node client's _gr key with a latin-1 character (one byte) is read as Node does."""
        s = RPCStreamServer(None)
        proto, _wire = s.connect()
        body = b'["r","k",1]'
        proto.dataReceived(
            b'POST / HTTP/1.1\r\n_gr: ["r","caf\xe9"]\r\nContent-Length: %d\r\n\r\n%s'
            % (len(body), body)
        )
        self.assertEqual(s.requests, [Request("r", "café", 1)])


# --- the stream client -------------------------------------------------------------------------


class Client:
    """An HTTPClientTransport on a MemoryReactorClock; the stream's connection made by hand."""

    def __init__(self, **kwargs: Any) -> None:
        self.reactor = MemoryReactorClock()
        self.transport = HTTPClientTransport(self.reactor, **kwargs)

    def open(
        self, headers: Any = None, timeout: float = 10.0, dest: str = "127.0.0.1:1337"
    ) -> Deferred[ClientStream]:
        return self.transport.stream(dest, "svc", headers=headers, timeout=timeout, rid="rid-1")

    def accept(self, index: int = -1) -> tuple[Any, StringTransport]:
        factory = self.reactor.tcpClients[index][2]
        proto = factory.buildProtocol(None)
        wire = StringTransport()
        proto.makeConnection(wire)
        return proto, wire

    def connected(self, **kwargs: Any) -> tuple[ClientStream, Any, StringTransport]:
        d = self.open(**kwargs)
        proto, wire = self.accept()
        return self_result(d), proto, wire


def self_result(d: Deferred[Any]) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    (result,) = results
    if isinstance(result, Failure):
        result.raiseException()
    return result


HEAD = (
    b"POST / HTTP/1.1\r\n"
    b'_gr: ["rid-1","svc"]\r\n'
    b"connection: close\r\n"
    b"transfer-encoding: chunked\r\n"
    b"Host: 127.0.0.1:1337\r\n"
    b"\r\n"
)


class ClientStreamTests(SynchronousTestCase):
    def test_head_bytes(self) -> None:
        """Node's head: _gr, connection, transfer-encoding, the extra headers, then Host."""
        c = Client()
        stream, _proto, wire = c.connected(
            headers={"_a": "uploadNewPublicStream", "_ar": {"foo": "bar"}, "content-type": "x/y"}
        )
        ((host, port, _, timeout, _),) = c.reactor.tcpClients
        self.assertEqual((host, port, timeout), ("127.0.0.1", 1337, 10.0))
        self.assertEqual(
            wire.value(),
            NODE_STREAM_HEAD.replace(b"0c0e24f3-4a51-4a59-a1d3-ee2a6e0ab1c6", b"rid-1")
            .replace(b"rpc_stream", b"svc")
            .replace(b"application/pdf", b"x/y"),
        )
        self.assertEqual((stream.dest, stream.rid, stream.key), ("127.0.0.1:1337", "rid-1", "svc"))

    def test_head_rules(self) -> None:
        self.assertEqual(
            stream_head("h:1", "r", "k"),
            HEAD.replace(b"rid-1", b"r").replace(b"svc", b"k").replace(b"127.0.0.1:1337", b"h:1"),
        )
        # A name given again, in any case, replaces the line in place (Node's setHeader).
        head = stream_head("h:1", "r", "k", {"Connection": "keep-alive", "host": "other"})
        self.assertEqual(
            head,
            b'POST / HTTP/1.1\r\n_gr: ["r","k"]\r\nConnection: keep-alive\r\n'
            b"transfer-encoding: chunked\r\nhost: other\r\n\r\n",
        )
        self.assertIn(
            b"n: 5\r\nb: true\r\nl: [1,null]\r\n",
            stream_head("h:1", "r", "k", {"n": 5, "b": True, "l": [1, None]}),
        )
        for bad in (
            {"x": "a\r\nInjected: 1"},
            {"x": "\u2713"},
            {"bad name": "v"},
            {"Transfer-Encoding": "identity"},
            {"content-length": "5"},
        ):
            self.assertRaises(ValueError, stream_head, "h:1", "r", "k", bad)
        self.assertRaises(TypeError, stream_head, "h:1", "r", "k", {1: "v"})
        c = Client()
        self.failureResultOf(c.open(headers={"x": "a\nb"}), ValueError)
        self.assertEqual(c.reactor.tcpClients, [])

    def test_destinations(self) -> None:
        """An IPv6 literal connects over TCP6; a host name is resolved through the reactor."""
        c = Client()
        c.open(dest="[::1]:1337")
        ((host, port, _, _, _),) = c.reactor.tcpClients
        self.assertEqual((host, port), ("::1", 1337))
        _proto, wire = c.accept()
        self.assertIn(b"\r\nHost: [::1]:1337\r\n", wire.value())
        d = c.open(dest="localhost:1337")
        self.assertNoResult(d)  # HostnameEndpoint: resolving first
        d.cancel()
        self.failureResultOf(d, CancelledError)

    def test_header_json(self) -> None:
        """Node's JSON.stringify bytes for latin-1 text; escapes beyond (Node throws)."""
        self.assertEqual(header_json(["r", "caf\u00e9"]), b'["r","caf\xe9"]')
        self.assertEqual(header_json("\u2713\U0001f680"), b'"\\u2713\\ud83d\\ude80"')
        self.assertEqual(json.loads(header_json("\u2713\U0001f680")), "\u2713\U0001f680")

    def test_body_and_response(self) -> None:
        c = Client()
        stream, proto, wire = c.connected()
        wire.clear()
        stream.write(b"abc")
        stream.write(b"")
        stream.writeSequence([b"d", b"e"])
        stream.finish()
        stream.finish()
        self.assertEqual(wire.value(), chunk(b"abc") + chunk(b"de") + LAST)
        response = stream.response()
        self.assertNoResult(response)
        proto.dataReceived(b"HTTP/1.1 100 Continue\r\n\r\n")
        proto.dataReceived(
            b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nX-Y: z\r\n\r\n" + chunk(b"r1")
        )
        reply = self.successResultOf(response)
        self.assertIsInstance(reply, StreamReply)
        self.assertEqual(reply.status, 201)
        self.assertEqual(reply.header(b"x-y"), b"z")
        self.assertEqual(wire.producerState, "paused")  # nobody reads the body yet
        collector = Collector()
        reply.deliverBody(collector)
        self.assertEqual(collector.data, [b"r1"])
        self.assertEqual(wire.producerState, "producing")
        proto.dataReceived(chunk(b"r2") + LAST)
        self.assertEqual(collector.body, b"r1r2")
        assert collector.reason is not None
        self.assertTrue(collector.reason.check(ConnectionDone))
        self.assertTrue(wire.disconnecting)
        self.assertIs(self.successResultOf(stream.response()), reply)
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(c.reactor.getDelayedCalls(), [])
        self.assertEqual(c.transport._streams, set())

    def test_body_until_eof(self) -> None:
        """A response without framing ends with the connection, cleanly."""
        c = Client()
        stream, proto, _wire = c.connected()
        stream.finish()
        proto.dataReceived(b"HTTP/1.1 200 OK\r\n\r\nraw")
        reply = self.successResultOf(stream.response())
        body = read_body(reply)
        proto.dataReceived(b" bytes")
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.successResultOf(body), b"raw bytes")

    def test_read_body_limit(self) -> None:
        """read_body's limit fails with RequestTooLarge and drops the connection."""
        c = Client()
        stream, proto, wire = c.connected()
        proto.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 60)
        reply = self.successResultOf(stream.response())
        body = read_body(reply, limit=50)
        self.failureResultOf(body, errors.RequestTooLarge)
        self.assertTrue(wire.disconnected)
        proto.connectionLost(Failure(ConnectionDone()))

    def test_flow_control(self) -> None:
        """Push producers pause with the socket; pull producers are pulled; drained()."""
        c = Client()
        stream, _proto, wire = c.connected()
        flow = wire.producer
        self.assertTrue(wire.streaming)
        producer = PushProducer()
        stream.registerProducer(producer, True)
        flow.pauseProducing()
        self.assertEqual(producer.state, "paused")
        drained = stream.drained()
        self.assertNoResult(drained)
        flow.resumeProducing()
        self.assertEqual(producer.state, "producing")
        self.successResultOf(drained)
        stream.unregisterProducer()
        wire.clear()
        PullProducer(stream, [b"p1", b"p2"])
        self.assertFalse(wire.streaming)
        wire.producer.resumeProducing()
        wire.producer.resumeProducing()
        self.assertEqual(wire.value(), chunk(b"p1") + chunk(b"p2") + LAST)
        self.assertIsNone(wire.producer)

    def test_reader_pause(self) -> None:
        """A paused reader pauses the socket; a piece already read waits for the resume."""
        c = Client()
        stream, proto, wire = c.connected()
        proto.dataReceived(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        reply = self.successResultOf(stream.response())
        collector = Collector(pause_each=True)
        reply.deliverBody(collector)
        proto.dataReceived(chunk(b"a") + chunk(b"b"))
        self.assertEqual(collector.data, [b"a"])
        self.assertEqual(wire.producerState, "paused")
        reply.resumeProducing()
        self.assertEqual(collector.data, [b"a", b"b"])
        reply.resumeProducing()
        self.assertEqual(wire.producerState, "producing")
        proto.dataReceived(LAST)
        assert collector.reason is not None
        self.assertTrue(collector.reason.check(ConnectionDone))

    def test_idle_timeout(self) -> None:
        """Idle, not total: activity either way restarts it, and nothing else does."""
        c = Client()
        stream, proto, wire = c.connected(timeout=5.0)
        for _ in range(4):
            c.reactor.advance(4)
            stream.write(b"x")
        response = stream.response()
        c.reactor.advance(4)
        proto.dataReceived(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        reply = self.successResultOf(response)
        collector = Collector()
        reply.deliverBody(collector)
        c.reactor.advance(4.9)
        self.assertFalse(wire.disconnected)
        c.reactor.advance(0.2)
        self.assertTrue(wire.disconnected)  # aborted
        proto.connectionLost(Failure(ConnectionDone()))
        assert collector.reason is not None
        self.assertTrue(collector.reason.check(errors.RequestTimeout))
        self.failureResultOf(stream.drained(), errors.RequestTimeout)
        # A reply nobody reads (the socket is paused) still times out: every stream ends.
        c = Client()
        stream, proto, wire = c.connected(timeout=5.0)
        proto.dataReceived(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        reply = self.successResultOf(stream.response())
        self.assertEqual(wire.producerState, "paused")
        c.reactor.advance(5)
        self.assertTrue(wire.disconnected)
        proto.connectionLost(Failure(ConnectionDone()))
        collector = Collector()
        reply.deliverBody(collector)
        assert collector.reason is not None
        self.assertTrue(collector.reason.check(errors.RequestTimeout))
        # Before any response: response() fails.
        c = Client()
        stream, proto, wire = c.connected(timeout=5.0)
        response = stream.response()
        c.reactor.advance(5)
        self.failureResultOf(response, errors.RequestTimeout)
        self.failureResultOf(stream.response(), errors.RequestTimeout)
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(c.reactor.getDelayedCalls(), [])

    def test_connect_failures(self) -> None:
        c = Client()
        d = c.open()
        c.reactor.tcpClients[0][2].clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        self.failureResultOf(d, errors.DestinationUnreachable)
        self.failureResultOf(c.transport.stream("nonsense", "k"), errors.DestinationUnreachable)
        self.failureResultOf(c.transport.stream("h:1", "k", timeout=0), ValueError)
        d = c.open()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertTrue(c.reactor.connectors[-1].stoppedConnecting)

    def test_lost_and_invalid(self) -> None:
        c = Client()
        stream, proto, wire = c.connected()
        producer = PushProducer()
        stream.registerProducer(producer, True)
        response = stream.response()
        proto.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(response, errors.TransportClosed)
        self.assertEqual(producer.state, "stopped")
        stream, proto, wire = c.connected()
        proto.dataReceived(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        reply = self.successResultOf(stream.response())
        collector = Collector()
        reply.deliverBody(collector)
        proto.dataReceived(b"nonsense\r\n")
        self.assertTrue(wire.disconnected)
        proto.connectionLost(Failure(ConnectionDone()))
        assert collector.reason is not None
        self.assertTrue(collector.reason.check(errors.RemoteError))
        stream, proto, wire = c.connected()
        response = stream.response()
        proto.dataReceived(b"garbage\r\n\r\n")
        self.failureResultOf(response, errors.RemoteError)

    def test_response_before_body_finished(self) -> None:
        """The response is complete: the upload is abandoned and the connection closes."""
        c = Client()
        stream, proto, wire = c.connected()
        producer = PushProducer()
        stream.registerProducer(producer, True)
        proto.dataReceived(chunked_response(b"early", connection=b"close"))
        reply = self.successResultOf(stream.response())
        self.assertEqual(reply.status, 200)
        self.assertEqual(producer.state, "stopped")
        self.assertTrue(wire.disconnecting)
        self.failureResultOf(stream.drained(), errors.TransportClosed)
        self.assertEqual(self.successResultOf(read_body(reply)), b"early")

    def test_abort_cancel_and_stop(self) -> None:
        c = Client()
        stream, proto, wire = c.connected()
        response = stream.response()
        stream.abort()
        self.assertTrue(wire.disconnected)
        self.failureResultOf(response, errors.TransportClosed)
        proto.connectionLost(Failure(ConnectionDone()))
        stream, proto, wire = c.connected()
        response = stream.response()
        response.cancel()
        self.failureResultOf(response, CancelledError)
        self.assertTrue(wire.disconnected)
        proto.connectionLost(Failure(ConnectionDone()))
        # stop() ends open streams and pending attempts, and fires once they are closed.
        stream, proto, wire = c.connected()
        response = stream.response()
        pending = c.open()
        stopped = c.transport.stop()
        self.failureResultOf(response, errors.TransportClosed)
        self.failureResultOf(pending, errors.TransportClosed)
        self.assertNoResult(stopped)
        proto.connectionLost(Failure(ConnectionDone()))
        c.reactor.tcpClients[-1][2].clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        self.successResultOf(stopped)
        self.failureResultOf(c.open(), errors.TransportClosed)

    def test_memory_100_mb_upload(self) -> None:
        """100 MB written by a pull producer the connection drives: bounded memory."""
        c = Client()
        d = c.open()
        proto = c.reactor.tcpClients[0][2].buildProtocol(None)
        sink = Sink()
        proto.makeConnection(sink)
        stream = self_result(d)
        piece = b"z" * 65536
        remaining = [100 * MIB // len(piece)]

        class Pieces:
            def resumeProducing(self) -> None:
                remaining[0] -= 1
                stream.write(piece)
                if not remaining[0]:
                    stream.unregisterProducer()
                    stream.finish()

            def stopProducing(self) -> None:
                raise AssertionError("stopped")

        tracemalloc.start()
        try:
            stream.registerProducer(Pieces(), False)
            while remaining[0]:
                sink.producer.resumeProducing()  # the socket drained: the next piece
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        self.assertTrue(stream.finished)
        self.assertEqual(stream.written, 100 * MIB)
        self.assertGreater(sink.count, 100 * MIB)
        self.assertTrue(sink.tail.endswith(LAST))
        self.assertLess(peak, 1 * MIB)


# --- round trips --------------------------------------------------------------------------------


class RoundTrip:
    """A stream server and a client transport on one MemoryReactorClock, joined by iosim."""

    def __init__(
        self,
        stream_handler: Any,
        server_tls: ServerTLS | None = None,
        client_tls: ClientTLS | None = None,
        **server_kwargs: Any,
    ) -> None:
        self.reactor = MemoryReactorClock()
        self.server_transport = HTTPServerTransport(
            self.reactor,
            tls=server_tls,
            interface="127.0.0.1",
            stream_handler=stream_handler,
            **server_kwargs,
        )
        self.server = PeerRPCServer(None, self.server_transport, lambda r: r.payload)
        self.server.listen(8080)
        self.client = HTTPClientTransport(self.reactor, tls=client_tls)
        self.completer = iosim.ConnectionCompleter(self.reactor)
        self.pumps: list[iosim.IOPump] = []

    def run(self) -> None:
        while True:
            pump = self.completer.succeedOnce()
            if pump is None:
                break
            self.pumps.append(pump)
        for _ in range(3):
            for pump in self.pumps:
                pump.flush()

    def open(self, **kwargs: Any) -> Deferred[ClientStream]:
        d = self.client.stream("127.0.0.1:8080", "svc", **kwargs)
        self.run()
        return d


def echo_handler(request: StreamRequest, response: StreamResponse) -> None:
    request.deliverBody(Echo(response))


def pattern(size: int) -> bytes:
    """Deterministic bytes that are not all alike."""
    block = hashlib.sha256(b"grenache").digest() * 2048  # 64 KiB
    return (block * (size // len(block) + 1))[:size]


class RoundTripTests(SynchronousTestCase):
    def test_echo(self) -> None:
        rt = RoundTrip(echo_handler)
        stream = self.successResultOf(rt.open(headers={"_a": "echo"}))
        data = pattern(5 * MIB)
        for i in range(0, len(data), 100_000):
            stream.write(data[i : i + 100_000])
            rt.run()
        stream.finish()
        rt.run()
        reply = self.successResultOf(stream.response())
        body = read_body(reply)
        rt.run()
        self.assertEqual(
            hashlib.sha256(self.successResultOf(body)).hexdigest(),
            hashlib.sha256(data).hexdigest(),
        )
        self.assertEqual(rt.client._streams, set())
        self.assertEqual(rt.server_transport.factory.connections, set())

    def test_meta_and_reply(self) -> None:
        seen: list[StreamMeta] = []

        async def handler(request: StreamRequest, response: StreamResponse) -> None:
            seen.append(request.meta)
            body = await read_body(request)
            response.reply(request.rid, None, {"size": len(body), "args": request.meta.args})

        rt = RoundTrip(handler)
        stream = self.successResultOf(
            rt.open(headers={"_a": "upload", "_ar": {"name": "caf\u00e9 \u2713"}}, rid="r-9")
        )
        stream.write(b"x" * 1000)
        stream.finish()
        rt.run()
        reply = self.successResultOf(stream.response())
        body = read_body(reply)
        rt.run()
        self.assertEqual(
            json.loads(self.successResultOf(body)),
            ["r-9", None, {"size": 1000, "args": {"name": "caf\u00e9 \u2713"}}],
        )
        self.assertEqual(
            seen,
            [
                StreamMeta(
                    info_headers=["r-9", "svc"],
                    action="upload",
                    args={"name": "caf\u00e9 \u2713"},
                    is_stream=True,
                )
            ],
        )

    @tls_on_a_clock
    def test_tls(self) -> None:
        """Over TLS, with the client certificate in meta; an untrusted server is refused."""
        pki = make_pki()
        seen: list[StreamMeta] = []

        def handler(request: StreamRequest, response: StreamResponse) -> None:
            seen.append(request.meta)
            echo_handler(request, response)

        rt = RoundTrip(
            handler,
            server_tls=ServerTLS(pki.server.key, pki.server.cert, request_cert=True),
            client_tls=ClientTLS(pki.ca.cert, pki.client.cert, pki.client.key),
        )
        stream = self.successResultOf(rt.open())
        stream.write(b"secret")
        stream.finish()
        rt.run()
        reply = self.successResultOf(stream.response())
        body = read_body(reply)
        rt.run()
        self.assertEqual(self.successResultOf(body), b"secret")
        self.assertEqual(seen[0].peer_certificate, pki.client.fingerprint)
        rt = RoundTrip(
            handler,
            server_tls=ServerTLS(pki.server.key, pki.server.cert),
            client_tls=ClientTLS(pki.rogue_ca.cert),
        )
        self.failureResultOf(rt.open(), errors.TLSHandshakeError)

    def test_peer_client_stream(self) -> None:
        """PeerRPCClient.stream: lookup, a refused destination set aside, another tried."""
        dests = ["127.0.0.1:9999", "127.0.0.1:8080"]

        class Link:
            def lookup(self, name: str) -> Deferred[list[str]]:
                return succeed(list(dests))

        class First(random.Random):
            def choice(self, seq: Any) -> Any:
                return seq[0]

        def refuse_dead(rt: RoundTrip) -> int:
            refused = 0
            for entry in [c for c in rt.reactor.tcpClients if c[1] == 9999]:
                rt.reactor.tcpClients.remove(entry)
                entry[2].clientConnectionFailed(None, Failure(ConnectionRefusedError()))
                refused += 1
            return refused

        rt = RoundTrip(echo_handler)
        client = PeerRPCClient(Link(), rt.client, reactor=rt.reactor, rng=First())
        d = client.stream("svc", headers={"_a": "x"}, timeout=3.0)
        self.assertEqual(refuse_dead(rt), 1)  # tried first, refused, set aside
        rt.run()
        stream = self.successResultOf(d)
        self.assertEqual((stream.dest, stream.key, stream.timeout), ("127.0.0.1:8080", "svc", 3.0))
        self.assertTrue(client.is_set_aside("127.0.0.1:9999"))
        d = client.stream("svc")
        self.assertEqual(refuse_dead(rt), 0)  # left out while set aside
        rt.run()
        self.assertEqual(self.successResultOf(d).dest, "127.0.0.1:8080")
        # Every destination refuses: DestinationUnreachable.
        dests[:] = ["127.0.0.1:9999"]
        rt.reactor.advance(60)
        d = client.stream("svc")
        self.assertEqual(refuse_dead(rt), 1)
        self.failureResultOf(d, errors.DestinationUnreachable)

        class NoStreams:
            def request(self, dest: str, request: Any) -> Deferred[Any]:
                raise AssertionError

        plain = PeerRPCClient(Link(), NoStreams(), reactor=rt.reactor)  # type: ignore[arg-type]
        self.failureResultOf(plain.stream("svc"), NotImplementedError)
        self.failureResultOf(client.stream("svc", timeout=0), ValueError)
        client.stop()
        self.failureResultOf(client.stream("svc"), errors.TransportClosed)

    def test_memory_100_mb_round_trip(self) -> None:
        """100 MB from the stream client through the stream server, counted on arrival."""
        received = [0]

        class Count(protocol.Protocol):
            def __init__(self, response: StreamResponse) -> None:
                self.response = response

            def dataReceived(self, data: bytes) -> None:
                received[0] += len(data)

            def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
                self.response.reply(None, None, received[0])

        rt = RoundTrip(lambda request, response: request.deliverBody(Count(response)))
        stream = self.successResultOf(rt.open())
        (pump,) = rt.pumps
        piece = b"q" * 65536
        tracemalloc.start()
        try:
            for _ in range(100 * MIB // len(piece)):
                stream.write(piece)
                pump.pump()
            stream.finish()
            rt.run()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        reply = self.successResultOf(stream.response())
        body = read_body(reply)
        rt.run()
        self.assertEqual(json.loads(self.successResultOf(body)), [None, None, 100 * MIB])
        self.assertLess(peak, 2 * MIB)
