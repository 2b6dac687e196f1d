"""Limits of the HTTP servers against one hostile client (grenache.http.server, the RPC
transport and the grape API): bounded output for a client that sends and never reads, header
and body deadlines, unparseable bodies, many malformed inputs.

Deadlines run on a Clock over StringTransport; the send-without-reading client runs over a
real loopback socket (both output paths: batched straight to the socket, and the public
``transport.write``), waiting on Deferreds only.
"""

from __future__ import annotations

import gzip
import json
import random
from typing import Any

from twisted.internet import defer, protocol
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionAborted
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from grenache import errors
from grenache.grape.api_http import grape_http_factory
from grenache.http.messages import HTTPRequest, HTTPResponse
from grenache.http.server import HTTPServerFactory, HTTPServerProtocol
from grenache.peer import Reply, Request
from grenache.speedups import twisted_tcp
from grenache.transports.http import HTTPServerTransport
from grenache.transports.http.framing import GZIP_META, PLAIN_META

GET = b"GET / HTTP/1.1\r\n\r\n"
TIMEOUT_408 = (
    b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 15\r\nConnection: close\r\n\r\n"
    b"Request Timeout"
)


def ok(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: keep-alive\r\n\r\n%s" % (
        len(body),
        body,
    )


def post(body: bytes, extra: bytes = b"") -> bytes:
    return b"POST / HTTP/1.1\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


class Server:
    """An HTTPServerFactory on a Clock with StringTransport connections."""

    def __init__(self, handler: Any = None, **kwargs: Any) -> None:
        self.clock = Clock()
        self.calls = 0

        def count(request: HTTPRequest) -> Any:
            self.calls += 1
            return handler(request) if handler is not None else HTTPResponse(200, b"x")

        clock: Any = self.clock
        self.factory = HTTPServerFactory(count, clock, **kwargs)

    def connect(self) -> tuple[HTTPServerProtocol, StringTransport]:
        proto = self.factory.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.9", 999))
        proto.makeConnection(transport)
        return proto, transport


def flow(transport: StringTransport) -> Any:
    """The producer the server registered on ``transport`` (its output flow)."""
    return transport.producer


# --- deadlines on a Clock ----------------------------------------------------------------


class HeaderDeadlineTests(SynchronousTestCase):
    def test_one_header_byte_a_second(self) -> None:
        """A client sending one header byte a second gets 408 once header_timeout has passed
        since the first byte, and the connection closes; activity does not extend it."""
        s = Server(header_timeout=20.0)
        proto, transport = s.connect()
        head = b"POST / HTTP/1.1\r\nX-Slow: " + b"a" * 100
        sent = 0
        while not transport.disconnecting and sent < len(head):
            proto.dataReceived(head[sent : sent + 1])
            sent += 1
            s.clock.advance(1.0)
        self.assertTrue(transport.disconnecting)
        # Dropped between 20 s and 20 s plus one sweep period (5 s here).
        self.assertTrue(20 <= sent <= 26, sent)
        self.assertEqual(transport.value(), TIMEOUT_408)
        self.assertEqual(s.calls, 0)

    def test_deadline_from_first_byte_of_each_request(self) -> None:
        """Keep-alive clients that send whole requests are never timed out, however long the
        connection lives; the deadline restarts with each request's first byte."""
        s = Server(header_timeout=5.0, idle_timeout=60.0)
        proto, transport = s.connect()
        for _ in range(50):
            proto.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n")
            s.clock.advance(3.0)  # the head takes 3 s: within 5
            proto.dataReceived(b"\r\n")
            s.clock.advance(4.0)  # idle between requests: not a header section
        self.assertFalse(transport.disconnecting)
        self.assertEqual(transport.value(), ok(b"x") * 50)

    def test_custom_response_and_disabled(self) -> None:
        s = Server(header_timeout=2.0, timed_out=HTTPResponse(408, b"slow"))
        proto, transport = s.connect()
        proto.dataReceived(b"GET /")
        s.clock.pump([0.5] * 6)
        self.assertTrue(transport.value().endswith(b"\r\n\r\nslow"))
        s = Server(header_timeout=None, idle_timeout=None)
        proto, transport = s.connect()
        proto.dataReceived(b"GET /")
        s.clock.pump([10.0] * 100)
        self.assertFalse(transport.disconnecting)


class BodyRateTests(SynchronousTestCase):
    def test_slow_body_dropped_after_grace(self) -> None:
        """100 bytes a second against a 1 KiB/s minimum: 408 once the grace period is over."""
        s = Server(min_body_rate=1024, body_grace=10.0, idle_timeout=None, max_body_size=None)
        proto, transport = s.connect()
        proto.dataReceived(b"POST / HTTP/1.1\r\nContent-Length: 100000\r\n\r\n")
        seconds = 0
        while not transport.disconnecting and seconds < 60:
            proto.dataReceived(b"b" * 100)
            s.clock.advance(1.0)
            seconds += 1
        self.assertTrue(transport.disconnecting)
        self.assertTrue(10 <= seconds <= 13, seconds)
        self.assertEqual(transport.value(), TIMEOUT_408)
        self.assertEqual(s.calls, 0)

    def test_steady_body_accepted(self) -> None:
        """2 KiB a second for 40 s is slow but above the minimum: served."""
        s = Server(min_body_rate=1024, body_grace=10.0, max_body_size=None, idle_timeout=None)
        proto, transport = s.connect()
        proto.dataReceived(b"POST / HTTP/1.1\r\nContent-Length: 81920\r\n\r\n")
        for _ in range(40):
            proto.dataReceived(b"b" * 2048)
            s.clock.advance(1.0)
        self.assertEqual(transport.value(), ok(b"x"))
        self.assertEqual(s.calls, 1)

    def test_server_pause_not_counted(self) -> None:
        """While the server itself does not read (its send buffer is full), the body clock
        stops: the client is not blamed for the server's backpressure."""
        s = Server(min_body_rate=1024, body_grace=2.0, idle_timeout=None, output_timeout=None)
        proto, transport = s.connect()
        proto.dataReceived(b"POST / HTTP/1.1\r\nContent-Length: 4096\r\n\r\n")
        flow(transport).pauseProducing()  # the send buffer is full
        self.assertEqual(transport.producerState, "paused")
        s.clock.pump([1.0] * 30)
        self.assertFalse(transport.disconnecting)
        flow(transport).resumeProducing()
        self.assertEqual(transport.producerState, "producing")
        proto.dataReceived(b"b" * 4096)
        self.assertEqual(transport.value(), ok(b"x"))

    def test_expect_continue_waits_for_the_interim(self) -> None:
        """A client waiting for 100 Continue (behind a slow earlier request) is not timed out;
        its body clock starts when the interim goes out."""
        first: Deferred[HTTPResponse] = Deferred()
        answers = iter([first])
        s = Server(
            lambda r: next(answers, HTTPResponse(200, b"y")),
            min_body_rate=1024,
            body_grace=2.0,
            idle_timeout=None,
        )
        proto, transport = s.connect()
        proto.dataReceived(GET)
        proto.dataReceived(
            b"POST / HTTP/1.1\r\nContent-Length: 3000\r\nExpect: 100-continue\r\n\r\n"
        )
        s.clock.pump([1.0] * 20)
        self.assertFalse(transport.disconnecting)
        first.callback(HTTPResponse(200, b"x"))
        self.assertEqual(transport.value(), ok(b"x") + b"HTTP/1.1 100 Continue\r\n\r\n")
        proto.dataReceived(b"b" * 3000)
        self.assertTrue(transport.value().endswith(ok(b"y")))


class OutputBoundTests(SynchronousTestCase):
    """The send buffer as a StringTransport shows it: the test plays the transport's part,
    pausing and resuming the producer the protocol registered."""

    def test_nothing_written_or_handled_while_full(self) -> None:
        s = Server(output_timeout=None, idle_timeout=None, max_pipeline=8)
        proto, transport = s.connect()
        output = flow(transport)
        self.assertTrue(transport.streaming)
        proto.dataReceived(GET)
        self.assertEqual(transport.value(), ok(b"x"))
        output.pauseProducing()  # the client stopped reading
        self.assertEqual(transport.producerState, "paused")  # so the server stops reading
        proto.dataReceived(GET * 500)  # arrived in the same read anyway
        self.assertEqual(s.calls, 1)  # held as requests, not turned into responses
        self.assertEqual(transport.value(), ok(b"x"))
        output.resumeProducing()
        # At most max_pipeline + 1 answers at once; all 500 come, in order.
        self.assertEqual(s.calls, 501)
        self.assertEqual(transport.value(), ok(b"x") * 501)
        self.assertEqual(transport.producerState, "producing")

    def test_pending_answers_bounded_by_pipeline(self) -> None:
        """Handlers that answer later: no more than max_pipeline + 1 run at once, the rest of
        the read waits as requests."""
        waiting: list[Deferred[HTTPResponse]] = []

        def later(request: HTTPRequest) -> Deferred[HTTPResponse]:
            d: Deferred[HTTPResponse] = Deferred()
            waiting.append(d)
            return d

        s = Server(later, max_pipeline=4, idle_timeout=None)
        proto, transport = s.connect()
        proto.dataReceived(GET * 100)
        self.assertEqual(len(waiting), 5)
        done = 0
        while done < len(waiting):
            waiting[done].callback(HTTPResponse(200, b"x"))
            done += 1
            self.assertLessEqual(len(waiting) - done, 5)
        self.assertEqual(len(waiting), 100)
        self.assertEqual(transport.value(), ok(b"x") * 100)

    def test_dropped_after_output_timeout(self) -> None:
        s = Server(output_timeout=30.0, idle_timeout=None)
        proto, transport = s.connect()
        flow(transport).pauseProducing()
        proto.dataReceived(GET * 10)
        s.clock.pump([1.0] * 29)
        self.assertFalse(transport.disconnecting)
        s.clock.pump([1.0] * 9)
        self.assertTrue(transport.disconnected)  # aborted: it would not read a goodbye

    def test_progress_resets_the_deadline(self) -> None:
        s = Server(output_timeout=10.0, idle_timeout=None)
        _, transport = s.connect()
        for _ in range(5):
            flow(transport).pauseProducing()
            s.clock.pump([1.0] * 8)
            flow(transport).resumeProducing()  # drained: the client reads, slowly
        self.assertFalse(transport.disconnecting)

    def test_close_unregisters_the_flow(self) -> None:
        """A transport does not close while a producer is registered: the flow goes first."""
        s = Server()
        proto, transport = s.connect()
        proto.dataReceived(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
        self.assertTrue(transport.disconnecting)
        self.assertIsNone(transport.producer)


class RunningHandlersTests(SynchronousTestCase):
    def test_cancelled_when_connection_goes(self) -> None:
        cancelled: list[bool] = []

        def handler(request: HTTPRequest) -> Deferred[HTTPResponse]:
            return Deferred(lambda d: cancelled.append(True))

        s = Server(handler)
        proto, _ = s.connect()
        proto.dataReceived(GET * 3)
        proto.connectionLost(Failure(Exception("gone")))
        self.assertEqual(cancelled, [True] * 3)
        self.assertEqual(self.flushLoggedErrors(), [])


# --- a real socket: a client that sends and never reads ----------------------------------


class NoReader(protocol.Protocol):
    """Pipelines requests and never reads a byte of the answers."""

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.pauseProducing()


class Reader(protocol.Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.got: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if self.data.endswith(b"\r\n\r\nok") and not self.got.called:
            self.got.callback(self.data)


class SendWithoutReadingTests(TestCase):
    """Over loopback: the server's pending output stays within Twisted's 64 KiB mark plus
    the batch spill bound and one response, the server stops reading (handlers are called
    far fewer times than requests were sent), the client is dropped after output_timeout,
    and the server keeps serving others."""

    @defer.inlineCallbacks
    def no_reader(self, batched: bool) -> Any:
        from twisted.internet import reactor as global_reactor
        from twisted.internet.protocol import ClientCreator

        reactor: Any = global_reactor  # the real reactor, only here
        body = b"r" * 32768
        response = HTTPResponse(200, body)
        calls = [0]

        def handler(request: HTTPRequest) -> HTTPResponse:
            calls[0] += 1
            return HTTPResponse(200, b"ok") if request.path == "/ok" else response

        factory = HTTPServerFactory(handler, reactor, output_timeout=0.5)
        peak = [0]
        full: Deferred[float] = Deferred()
        closed: Deferred[BaseException] = Deferred()
        protos: list[HTTPServerProtocol] = []

        class Measured(HTTPServerProtocol):
            def socket_closed(self, reason: Failure) -> None:
                if not closed.called:
                    error: Any = reason.value
                    closed.callback(error)

            def connectionMade(self) -> None:
                protos.append(self)
                transport: Any = self.transport
                write = transport.write

                def measured(data: bytes) -> None:
                    write(data)
                    held = self._batched._held if self._batched is not None else 0
                    # Twisted's buffer, read here whichever path the server uses.
                    buffered = len(transport.dataBuffer) - transport.offset
                    pending = buffered + transport._tempDataLen + held
                    peak[0] = max(peak[0], pending)
                    if pending > transport.bufferSize and not full.called:
                        full.callback(reactor.seconds())

                transport.write = measured  # before the server binds transport.write
                super().connectionMade()

        factory.protocol = Measured
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        address = ("127.0.0.1", port.getHost().port)
        client = yield ClientCreator(reactor, NoReader).connectTCP(*address)
        sent = 3000
        client.transport.write(GET * sent)  # up to 96 MB of answers if all were made
        self.addCleanup(client.transport.abortConnection)  # it does not read: it never notices
        when_full = yield full
        self.assertEqual(protos[0]._batched is not None, batched)
        reason = yield closed
        self.assertIsInstance(reason, ConnectionAborted)
        dropped_after = reactor.seconds() - when_full
        self.assertGreaterEqual(dropped_after, 0.5 - 0.05)
        bound = 65536 + twisted_tcp.SPILL + len(body) + 100
        self.assertLessEqual(peak[0], bound)
        self.assertLess(calls[0], sent // 4)  # it stopped reading
        # Still serving.
        other = yield ClientCreator(reactor, Reader).connectTCP(*address)
        other.transport.write(b"GET /ok HTTP/1.1\r\nConnection: close\r\n\r\n")
        data = yield other.got
        self.assertTrue(data.startswith(b"HTTP/1.1 200 OK"))

    def test_batched(self) -> Any:
        self.assertTrue(twisted_tcp.AVAILABLE)
        return self.no_reader(batched=True)

    def test_public_fallback(self) -> Any:
        self.patch(twisted_tcp, "AVAILABLE", False)
        return self.no_reader(batched=False)


# --- the RPC transport: unparseable bodies, meta, Reply, on_request_error ----------------


class RPC:
    """An HTTPServerTransport listening on a MemoryReactorClock, driven over StringTransport."""

    def __init__(self, handler: Any = None, **kwargs: Any) -> None:
        self.reactor = MemoryReactorClock()
        self.seen: list[Request] = []
        self.transport = HTTPServerTransport(self.reactor, **kwargs)

        def serve(request: Request) -> Deferred[Any]:
            self.seen.append(request)
            return succeed(handler(request) if handler is not None else request.payload)

        self.transport.listen(0, serve)

    def send(self, data: bytes) -> bytes:
        proto = self.transport.factory.buildProtocol(None)
        wire = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.9", 999))
        proto.makeConnection(wire)
        proto.dataReceived(data)
        return wire.value()


PARSE_400 = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 31\r\n"


class UnparseableBodyTests(SynchronousTestCase):
    def test_json_bomb(self) -> None:
        """100000 nested arrays: 400 ERR_REQUEST_PARSE, nothing logged, still serving."""
        rpc = RPC()
        out = rpc.send(post(b"[" * 100000) + post(b'["r","k",1]'))
        self.assertTrue(out.startswith(PARSE_400), out[:80])
        self.assertIn(b'\r\n\r\n[null,"ERR_REQUEST_PARSE",null]', out)
        self.assertTrue(out.endswith(b'["r",null,1]'))
        self.assertEqual(self.flushLoggedErrors(), [])
        closed = b"[" * 50000 + b"]" * 50000
        self.assertTrue(rpc.send(post(closed)).startswith(PARSE_400))
        gzipped = gzip.compress(b"[" * 100000)
        self.assertTrue(rpc.send(post(gzipped, b"grc-compress: gzip\r\n")).startswith(PARSE_400))
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_header_bombs(self) -> None:
        """Deep JSON in _gr is Node's ERR_HEADER_PARSE_GR; in _ar it is Node's empty args."""
        rpc = RPC(lambda r: r.meta["args"] == {})
        out = rpc.send(post(b'["r","k",1]', b"_gr: " + b"[" * 8000 + b"\r\n"))
        self.assertTrue(out.endswith(b'[null, "ERR_HEADER_PARSE_GR", null]'))
        out = rpc.send(post(b'["r","k",1]', b"_ar: " + b"[" * 8000 + b"\r\n"))
        self.assertTrue(out.endswith(b'["r",null,true]'))
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_grape_api_bomb(self) -> None:
        """The grape API answers its own error string for a bomb, no traceback."""
        clock: Any = Clock()
        factory = grape_http_factory(lambda op, data: "unreached", clock)
        proto = factory.buildProtocol(None)
        wire = StringTransport()
        proto.makeConnection(wire)
        proto.dataReceived(post(b"[" * 8000) + post(b'{"data":1}'))
        self.assertIn(b"\r\n\r\nERR_GRAPE_PAYLOAD_INVALID", wire.value())
        self.assertTrue(wire.value().endswith(b'"unreached"'))
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_grape_api_slow_header_and_limits(self) -> None:
        """The grape API has the same deadlines, configurable through its factory."""
        clock = Clock()
        any_clock: Any = clock
        factory = grape_http_factory(lambda op, data: 1, any_clock, header_timeout=4.0)
        self.assertEqual(factory.header_timeout, 4.0)
        proto = factory.buildProtocol(None)
        wire = StringTransport()
        proto.makeConnection(wire)
        proto.dataReceived(b"POST /lookup HTTP/1.1\r\n")
        clock.pump([1.0] * 6)
        self.assertEqual(wire.value(), TIMEOUT_408)
        self.assertTrue(wire.disconnecting)

    def test_malformed_inputs_counted(self) -> None:
        """A few hundred malformed requests, each answered with the expected status on its own
        connection and nothing logged; the server serves a good request afterwards."""
        rng = random.Random(9)
        bodies: list[tuple[bytes, bytes]] = []
        for depth in (1000, 5000, 20000, 100000):
            bodies.append((b"[" * depth, b""))
            bodies.append((b'{"a":' * depth, b""))
        for text in [b"", b"null", b"0", b'""', b"{}", b'{"a":1}', b"true", b"1e999999"]:
            bodies.append((text, b""))
        good = json.dumps(["rid", "key", {"x": [1, 2, 3]}]).encode()
        for cut in range(1, len(good)):
            bodies.append((good[:cut], b""))
        for _ in range(180):
            bodies.append((bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))), b""))
        for _ in range(30):
            junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
            bodies.append((junk, b"grc-compress: gzip\r\n"))
        bodies.append((b"\xff\xfe[1]", b""))
        bodies.append((b'["\xed\xa0\x80"]', b""))
        statuses: dict[bytes, int] = {}
        rpc = RPC()
        for body, extra in bodies:
            out = rpc.send(post(body, extra))
            status = out[9:12]
            statuses[status] = statuses.get(status, 0) + 1
            if status == b"200":
                self.assertEqual(json.loads(out.split(b"\r\n\r\n", 1)[1])[1], None)
            else:
                self.assertEqual(status, b"400", (body[:40], out[:120]))
        self.assertGreaterEqual(sum(statuses.values()), 250)
        self.assertGreaterEqual(statuses[b"400"], 240)
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertTrue(rpc.send(post(good)).endswith(b'["rid",null,{"x":[1,2,3]}]'))


class MetaTests(SynchronousTestCase):
    def test_plain_requests_share_a_meta(self) -> None:
        rpc = RPC()
        rpc.send(post(b'["r","k",1]'))
        rpc.send(post(gzip.compress(b'["r","k",1]'), b"grc-compress: gzip\r\n"))
        self.assertIs(rpc.seen[0].meta, PLAIN_META)
        self.assertIs(rpc.seen[1].meta, GZIP_META)
        self.assertEqual(
            dict(rpc.seen[0].meta),
            {"isStream": False, "compress": False, "action": None, "args": {}},
        )

    def test_node_keys(self) -> None:
        rpc = RPC()
        rpc.send(
            b'POST / HTTP/1.1\r\n_gr: ["hr","hk"]\r\n_a: upload\r\n'
            b'_ar: {"foo":"bar"}\r\ntransfer-encoding: chunked\r\n\r\n'
            b'b\r\n["r","k",1]\r\n0\r\n\r\n'
        )
        [request] = rpc.seen
        self.assertEqual((request.rid, request.key), ("hr", "hk"))
        self.assertEqual(
            request.meta,
            {
                "isStream": True,
                "compress": False,
                "action": "upload",
                "args": {"foo": "bar"},
                "infoHeaders": ["hr", "hk"],
            },
        )

    def test_bad_args_and_empty_action(self) -> None:
        rpc = RPC()
        rpc.send(post(b'["r","k",1]', b"_a: \r\n_ar: {nope\r\n"))
        self.assertEqual(rpc.seen[0].meta["action"], None)
        self.assertEqual(rpc.seen[0].meta["args"], {})
        self.assertNotIn("infoHeaders", rpc.seen[0].meta)


class ReplyTests(SynchronousTestCase):
    def test_error_and_result(self) -> None:
        rpc = RPC(lambda r: Reply("ERR_PARTIAL", {"done": 3}))
        out = rpc.send(post(b'["r","k",1]'))
        self.assertTrue(out.startswith(b"HTTP/1.1 200 OK"))
        self.assertTrue(out.endswith(b'["r","ERR_PARTIAL",{"done":3}]'))

    def test_empty_error_is_success_and_exception_is_its_message(self) -> None:
        rpc = RPC(lambda r: Reply("", 5) if r.payload == 1 else Reply(ValueError("bad"), 6))  # type: ignore[arg-type]
        self.assertTrue(rpc.send(post(b'["r","k",1]')).endswith(b'["r",null,5]'))
        self.assertTrue(rpc.send(post(b'["r","k",2]')).endswith(b'["r","bad",6]'))

    def test_gzip(self) -> None:
        rpc = RPC(lambda r: Reply("E", [1]))
        out = rpc.send(post(gzip.compress(b'["r","k",1]'), b"grc-compress: gzip\r\n"))
        self.assertEqual(gzip.decompress(out.split(b"\r\n\r\n", 1)[1]), b'["r","E",[1]]')

    def test_python_client_sees_both(self) -> None:
        from grenache.transports.http.framing import parse_reply

        with self.assertRaises(errors.RemoteError) as caught:
            parse_reply(200, b'["r","ERR_PARTIAL",{"done":3}]', compress=False, rid="r")
        self.assertEqual(caught.exception.message, "ERR_PARTIAL")
        self.assertEqual(caught.exception.result, {"done": 3})


class RequestErrorHookTests(SynchronousTestCase):
    def test_observe(self) -> None:
        seen: list[tuple[errors.RequestParseError, HTTPRequest]] = []
        rpc = RPC(on_request_error=lambda error, request: seen.append((error, request)))
        out = rpc.send(post(b"[" * 100000) + post(b"{}"))
        self.assertEqual(out.count(PARSE_400), 2)
        (e1, r1), (e2, r2) = seen
        self.assertIsInstance(e1.__cause__, ValueError)
        self.assertIn("nested too deeply", str(e1.__cause__))
        self.assertEqual(r1.body, b"[" * 100000)
        self.assertIsNone(e2.__cause__)
        self.assertEqual(r2.body, b"{}")
        self.assertTrue(e1.message.startswith("ERR_REQUEST_PARSE"))
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_answer(self) -> None:
        rpc = RPC(on_request_error=lambda error, request: HTTPResponse(422, b"no"))
        self.assertTrue(rpc.send(post(b"nope")).startswith(b"HTTP/1.1 422 "))
        later: Deferred[Any] = Deferred()
        rpc = RPC(on_request_error=lambda error, request: later)
        proto = rpc.transport.factory.buildProtocol(None)
        wire = StringTransport()
        proto.makeConnection(wire)
        proto.dataReceived(post(b"nope"))
        self.assertEqual(wire.value(), b"")
        later.callback(None)
        self.assertTrue(wire.value().startswith(PARSE_400))

    def test_hook_failure_logged_default_sent(self) -> None:
        def broken(error: Exception, request: HTTPRequest) -> None:
            raise ZeroDivisionError()

        rpc = RPC(on_request_error=broken)
        self.assertTrue(rpc.send(post(b"nope")).startswith(PARSE_400))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        rpc = RPC(on_request_error=lambda e, r: "not a response")
        self.assertTrue(rpc.send(post(b"nope")).startswith(PARSE_400))
