"""Tests for the WebSocket transports (grenache.transports.ws).

Sockets live in memory: ``autobahn.twisted.testing.create_memory_agent`` connects autobahn
clients (the transports' own protocols, or a recording one) to server protocols built by the
transport under test, over ``iosim``, pumped by hand so every step is deterministic on a
``MemoryReactorClock``. The byte-level tests feed the exact bytes of docs/protocol.rst, *RPC over
WebSocket*, through a ``StringTransport``. TLS needs a real handshake, so those tests run over
loopback on ports the OS picks, with the certificates of :func:`tests.support.make_pki`.
Endpoints, destinations, the wrong kind of port and the override points are tested in
tests/test_ws_endpoints.py; the speedups' fallback in tests/test_speedups_autobahn_ws.py.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
from typing import Any

from autobahn.twisted.testing import MemoryReactorClockResolver, create_memory_agent
from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerProtocol,
)
from autobahn.websocket.protocol import WebSocketProtocol
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor as global_reactor
from twisted.internet import ssl
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest

from grenache import codec
from grenache.errors import (
    DestinationUnreachable,
    RemoteError,
    RequestTimeout,
    RequestTooLarge,
    TLSHandshakeError,
    TransportClosed,
)
from grenache.peer import OutgoingRequest, Request
from grenache.speedups.autobahn_ws import LeanPath, xor_mask
from grenache.tls import ClientTLS, ServerTLS
from grenache.transports.ws import (
    WSClientTransport,
    WSPubTransport,
    WSServerTransport,
    WSSubTransport,
    fingerprint_whitelist,
)
from tests.support import Identity, SyncPumper, make_pki

DEST = "127.0.0.1:1337"
PARSE_ERROR = b'[null,"ERR_REQUEST_PARSE",null]'
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


# --- helpers ---------------------------------------------------------------------------------


class FakeServe:
    """A ``serve`` callable that records requests and hands back Deferreds the test fires."""

    def __init__(self) -> None:
        self.calls: list[tuple[Request, Deferred[Any]]] = []

    def __call__(self, request: Request) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.calls.append((request, d))
        return d

    @property
    def requests(self) -> list[Request]:
        return [r for r, _ in self.calls]


class RecordingClient(WebSocketClientProtocol):
    """A plain autobahn client keeping every message and the close it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.received: list[tuple[bytes, bool]] = []
        self.closed: tuple[bool, int | None] | None = None

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.received.append((payload, isBinary))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.closed = (wasClean, code)


def req(rid: str, payload: Any, key: str = "rpc_ws", timeout: float = 10.0) -> OutgoingRequest:
    return OutgoingRequest(rid, key, payload, timeout)


def mask(payload: bytes, key: bytes) -> bytes:
    return bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def client_frame(payload: bytes, opcode: int = 1, key: bytes = b"\x12\x34\x56\x78") -> bytes:
    """A masked client frame (payloads under 126 bytes)."""
    assert len(payload) < 126
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + key + mask(payload, key)


def server_frame(payload: bytes, opcode: int = 1) -> bytes:
    """An unmasked server frame (payloads under 126 bytes)."""
    assert len(payload) < 126
    return bytes([0x80 | opcode, len(payload)]) + payload


def client_frames(data: bytes) -> list[bytes]:
    """Unmask a run of small client frames into their payloads."""
    out = []
    while data:
        length = data[1] & 0x7F
        assert length < 126 and data[1] & 0x80
        out.append(mask(data[6 : 6 + length], data[2:6]))
        data = data[6 + length :]
    return out


def accept_for(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + WS_GUID).digest())


class MemoryNet:
    """A MemoryReactorClock and an in-memory 'network' of server factories."""

    def __init__(self) -> None:
        self.reactor = MemoryReactorClockResolver()
        self.pumper = SyncPumper()

    def agent(self, factory: Any) -> Any:
        """An agent whose every connection reaches a protocol built by ``factory``."""
        return create_memory_agent(self.reactor, self.pumper, lambda: factory.buildProtocol(None))

    def flush(self) -> None:
        self.pumper.flush()

    def advance(self, seconds: float) -> None:
        self.reactor.advance(seconds)
        self.flush()


# --- RPC: bytes on the wire (docs/protocol.rst, *RPC over WebSocket*) ------------------------

NODE_HANDSHAKE = (
    b"GET /ws HTTP/1.1\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Key: iD7NWU8onF8772KbeffXvQ==\r\n"
    b"Connection: Upgrade\r\n"
    b"Upgrade: websocket\r\n"
    b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    b"Host: 127.0.0.1:11338\r\n"
    b"\r\n"
)
RID = "c69efa1c-fd7f-4a05-b203-ee2b82dcd773"
REQUEST_JSON = b'["c69efa1c-fd7f-4a05-b203-ee2b82dcd773","rpc_ws","hello"]'
REPLY_JSON = b'["c69efa1c-fd7f-4a05-b203-ee2b82dcd773",null,"world"]'


class ServerBytesTests(unittest.TestCase):
    """The server fed the Node client's exact bytes answers with the Node server's bytes."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClockResolver()
        self.server = WSServerTransport(self.reactor)
        self.serve = FakeServe()
        self.assertEqual(self.successResultOf(self.server.listen(0, self.serve)), 0)
        self.protocol = self.server.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5))
        self.wire = StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 11338),
            peerAddress=IPv4Address("TCP", "127.0.0.1", 40000),
        )
        self.protocol.makeConnection(self.wire)
        self.protocol.dataReceived(NODE_HANDSHAKE)
        response = self.wire.value()
        self.wire.clear()
        head, _, rest = response.partition(b"\r\n\r\n")
        self.assertEqual(rest, b"")
        self.head = head.split(b"\r\n")

    def test_handshake(self) -> None:
        """101 with the documented accept key, and no extension accepted (as ws 7)."""
        self.assertEqual(self.head[0], b"HTTP/1.1 101 Switching Protocols")
        self.assertIn(b"Sec-WebSocket-Accept: fBRX6b1ml1Y9SSvxaHS6FREVmQc=", self.head)
        self.assertFalse([h for h in self.head if h.lower().startswith(b"sec-websocket-ext")])

    def test_request_and_reply_frames(self) -> None:
        frame = client_frame(REQUEST_JSON, key=b"\xa1\xb2\xc3\xd4")
        self.assertEqual(frame[:2], b"\x81\xb9")
        self.protocol.dataReceived(frame)
        [(request, d)] = self.serve.calls
        self.assertEqual(request, Request(RID, "rpc_ws", "hello", None, None))
        self.assertEqual(self.wire.value(), b"")
        d.callback("world")
        self.assertEqual(self.wire.value(), b"\x81\x35" + REPLY_JSON)

    def test_error_reply_frame(self) -> None:
        rid = "9ff0d8bb-f744-4cd3-83b0-2daccefdddf9"
        self.protocol.dataReceived(client_frame(codec.json_dumps([rid, "rpc_ws", "x"])))
        self.serve.calls[0][1].errback(RemoteError("ws went wrong"))
        expected = b'["9ff0d8bb-f744-4cd3-83b0-2daccefdddf9","ws went wrong",null]'
        self.assertEqual(self.wire.value(), server_frame(expected))

    def test_binary_request_frame_answered_as_text(self) -> None:
        """A binary frame holding the JSON is a request too (ws 7 hands the app a Buffer)."""
        self.protocol.dataReceived(client_frame(REQUEST_JSON, opcode=2))
        self.serve.calls[0][1].callback("world")
        self.assertEqual(self.wire.value(), b"\x81\x35" + REPLY_JSON)

    def test_unparseable_frame(self) -> None:
        """Node answers nothing; this server answers ERR_REQUEST_PARSE and keeps the socket."""
        self.protocol.dataReceived(client_frame(b"not json"))
        self.assertEqual(self.wire.value(), server_frame(PARSE_ERROR))
        self.assertEqual(self.protocol.state, WebSocketProtocol.STATE_OPEN)
        self.assertEqual(self.serve.calls, [])


class StringAgent:
    """An agent that connects each client protocol to a ``StringTransport`` the test reads."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.connections: list[tuple[Any, StringTransport]] = []
        self.urls: list[str] = []

    def open(self, url: str, options: dict[str, Any], protocol_class: Any = None) -> Deferred[Any]:
        self.urls.append(url)
        factory = WebSocketClientFactory(url=url, reactor=self.reactor)
        factory.protocol = protocol_class
        protocol: Any = factory.buildProtocol(None)
        wire = StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 40000),
            peerAddress=IPv4Address("TCP", "127.0.0.1", 11338),
        )
        protocol.makeConnection(wire)
        self.connections.append((protocol, wire))
        return Deferred()


class ClientBytesTests(unittest.TestCase):
    """The client writes what the Node client writes and reads what the Node server sends."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClockResolver()
        self.agent = StringAgent(self.reactor)
        self.client = WSClientTransport(self.reactor, agent=self.agent)

    def handshake(self) -> tuple[Any, StringTransport]:
        protocol, wire = self.agent.connections[-1]
        request = wire.value()
        wire.clear()
        lines = request.split(b"\r\n")
        self.assertEqual(lines[0], b"GET /ws HTTP/1.1")
        headers = dict(line.split(b": ", 1) for line in lines[1:] if b": " in line)
        self.assertEqual(headers[b"Host"], b"127.0.0.1:11338")
        key = headers[b"Sec-WebSocket-Key"]
        protocol.dataReceived(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_for(key) + b"\r\n\r\n"
        )
        return protocol, wire

    def test_request_frame_and_reply(self) -> None:
        d = self.client.request("127.0.0.1:11338", req(RID, "hello"))
        self.assertEqual(self.agent.urls, ["ws://127.0.0.1:11338/ws"])
        protocol, wire = self.handshake()
        frame = wire.value()
        wire.clear()
        self.assertEqual(frame[:2], b"\x81\xb9")
        self.assertEqual(mask(frame[6:], frame[2:6]), REQUEST_JSON)
        self.assertNoResult(d)
        protocol.dataReceived(b"\x81\x35" + REPLY_JSON)
        self.assertEqual(self.successResultOf(d), "world")

    def test_error_reply(self) -> None:
        d = self.client.request("127.0.0.1:11338", req("9ff0d8bb", "x"))
        protocol, _ = self.handshake()
        protocol.dataReceived(server_frame(b'["9ff0d8bb","ws went wrong",null]'))
        failure = self.failureResultOf(d, RemoteError)
        self.assertEqual(failure.value.message, "ws went wrong")
        self.assertIsNone(failure.value.result)

    def test_error_reply_with_result(self) -> None:
        """Node's handler.reply(err, result) sends both: the result rides on the error."""
        d = self.client.request("127.0.0.1:11338", req("9ff0d8bb", "x"))
        protocol, _ = self.handshake()
        protocol.dataReceived(server_frame(b'["9ff0d8bb","partial",{"done":3}]'))
        failure = self.failureResultOf(d, RemoteError)
        self.assertEqual((failure.value.message, failure.value.result), ("partial", {"done": 3}))

    def test_falsy_error_is_success(self) -> None:
        """Node tests ``err`` for truthiness: "" and 0 are success, [] is an error."""
        d1 = self.client.request("127.0.0.1:11338", req("a", 1))
        d2 = self.client.request("127.0.0.1:11338", req("b", 2))
        d3 = self.client.request("127.0.0.1:11338", req("c", 3))
        protocol, _ = self.handshake()
        protocol.dataReceived(server_frame(b'["a","",1]'))
        protocol.dataReceived(server_frame(b'["b",0,2]'))
        protocol.dataReceived(server_frame(b'["c",[],3]'))
        self.assertEqual(self.successResultOf(d1), 1)
        self.assertEqual(self.successResultOf(d2), 2)
        self.assertEqual(self.failureResultOf(d3, RemoteError).value.message, "[]")

    def test_missing_result_is_null(self) -> None:
        d = self.client.request("127.0.0.1:11338", req("a", 1))
        protocol, _ = self.handshake()
        protocol.dataReceived(server_frame(b'["a",null]'))
        self.assertIsNone(self.successResultOf(d))

    def test_stray_replies_ignored(self) -> None:
        """Unknown rids, bad JSON and rid-less frames are ignored; the socket stays."""
        d = self.client.request("127.0.0.1:11338", req("a", 1))
        protocol, _ = self.handshake()
        for junk in (b'["zzz",null,1]', b"nope", b"{}", b"[1,null,2]", b"[]"):
            protocol.dataReceived(server_frame(junk))
        self.assertNoResult(d)
        protocol.dataReceived(server_frame(b'["a",null,"ok"]'))
        self.assertEqual(self.successResultOf(d), "ok")

    def test_requests_queued_until_open(self) -> None:
        """Requests made while connecting go out, in order, once the socket opens."""
        d1 = self.client.request("127.0.0.1:11338", req("r1", 1))
        d2 = self.client.request("127.0.0.1:11338", req("r2", 2))
        self.assertEqual(len(self.agent.connections), 1)
        protocol, wire = self.handshake()
        self.assertEqual(client_frames(wire.value()), [b'["r1","rpc_ws",1]', b'["r2","rpc_ws",2]'])
        protocol.dataReceived(server_frame(b'["r2",null,"two"]'))
        protocol.dataReceived(server_frame(b'["r1",null,"one"]'))
        self.assertEqual(self.successResultOf(d1), "one")
        self.assertEqual(self.successResultOf(d2), "two")

    def test_stop_sends_empty_close(self) -> None:
        """The client closes as Node's does: ``88 80 <mask>``; pending requests fail."""
        d = self.client.request("127.0.0.1:11338", req("a", 1))
        protocol, wire = self.handshake()
        wire.clear()
        stopped = self.client.stop()
        self.failureResultOf(d, TransportClosed)
        frame = wire.value()
        self.assertEqual(frame[:2], b"\x88\x80")
        self.assertEqual(len(frame), 6)
        self.assertNoResult(stopped)
        protocol.dataReceived(b"\x88\x00")
        protocol.connectionLost(Failure(ConnectionRefusedError()))
        self.successResultOf(stopped)
        self.failureResultOf(self.client.request(DEST, req("b", 1)), TransportClosed)


# --- RPC: client and server together, in memory ---------------------------------------------------


class RPCMemoryTests(unittest.TestCase):
    """The client transport against the server transport over in-memory sockets."""

    def setUp(self) -> None:
        self.net = MemoryNet()
        self.reactor = self.net.reactor
        self.server = WSServerTransport(self.reactor)
        self.serve = FakeServe()
        self.successResultOf(self.server.listen(0, self.serve))
        self.client = WSClientTransport(self.reactor, agent=self.net.agent(self.server.factory))

    def request(self, rid: str, payload: Any, timeout: float = 10.0) -> Deferred[Any]:
        d = self.client.request(DEST, req(rid, payload, timeout=timeout))
        self.net.flush()
        return d

    def test_round_trip(self) -> None:
        d = self.request("r1", {"q": [1, "ü"]})
        [(request, answer)] = self.serve.calls
        self.assertEqual(
            (request.rid, request.key, request.payload), ("r1", "rpc_ws", {"q": [1, "ü"]})
        )
        self.assertIsNone(request.peer_certificate)
        answer.callback({"ok": True})
        self.net.flush()
        self.assertEqual(self.successResultOf(d), {"ok": True})

    def test_frame_lengths(self) -> None:
        """7-bit, 16-bit and 64-bit payload lengths, masked and not, both ways."""
        for size in (0, 125, 126, 65535, 65536, 200_000):
            d = self.request(f"r{size}", "x" * size)
            request, answer = self.serve.calls[-1]
            self.assertEqual(request.payload, "x" * size)
            answer.callback("y" * size)
            self.net.flush()
            self.assertEqual(self.successResultOf(d), "y" * size)

    def test_many_concurrent_out_of_order(self) -> None:
        """200 requests share one socket; replies in reverse order reach the right callers."""
        ds = [self.client.request(DEST, req(f"r{i}", i)) for i in range(200)]
        self.net.flush()
        self.assertEqual(self.server.sockets, 1)
        self.assertEqual(self.client.connections, {DEST: True})
        self.assertEqual([r.payload for r in self.serve.requests], list(range(200)))
        for request, answer in reversed(self.serve.calls):
            answer.callback(request.payload * 10)
            self.net.flush()
        self.assertEqual([self.successResultOf(d) for d in ds], [i * 10 for i in range(200)])

    def test_error_reply(self) -> None:
        d = self.request("r1", 1)
        self.serve.calls[0][1].errback(RemoteError("ERR_SOMETHING"))
        self.net.flush()
        self.assertEqual(self.failureResultOf(d, RemoteError).value.message, "ERR_SOMETHING")

    def test_handler_exception_text(self) -> None:
        d = self.request("r1", 1)
        self.serve.calls[0][1].errback(ValueError("bad value"))
        self.net.flush()
        self.assertEqual(self.failureResultOf(d, RemoteError).value.message, "bad value")

    def test_unencodable_result(self) -> None:
        """A result JSON cannot hold becomes an error reply (and is logged), never silence."""
        d = self.request("r1", 1)
        self.serve.calls[0][1].callback({1, 2})
        self.net.flush()
        self.assertIn("not JSON serializable", self.failureResultOf(d, RemoteError).value.message)
        self.flushLoggedErrors(TypeError)

    def test_socket_closes_with_requests_in_flight(self) -> None:
        """Requests already sent fail at once with TransportClosed (Node waits for a timeout)."""
        d1 = self.request("r1", 1)
        d2 = self.request("r2", 2)
        [server_socket] = list(self.server._sockets)
        server_socket.dropConnection(abort=True)
        self.net.flush()
        for d in (d1, d2):
            failure = self.failureResultOf(d, TransportClosed)
            self.assertEqual(failure.value.message, "ERR_TRANSPORT_CLOSE")
        self.assertEqual(self.client.connections, {})
        # The next request opens a new socket.
        d3 = self.request("r3", 3)
        self.assertEqual(self.client.connections, {DEST: True})
        self.serve.calls[-1][1].callback("again")
        self.net.flush()
        self.assertEqual(self.successResultOf(d3), "again")

    def test_server_stop_closes_sockets(self) -> None:
        d = self.request("r1", 1)
        stopped = self.server.stop()
        self.net.flush()
        self.successResultOf(stopped)
        self.failureResultOf(d, TransportClosed)
        self.assertEqual(self.server.sockets, 0)
        # A reply that comes after its socket went is dropped quietly.
        self.serve.calls[0][1].callback("late")

    def test_timeout(self) -> None:
        d = self.request("r1", 1, timeout=2.5)
        self.net.advance(2.4)
        self.assertNoResult(d)
        self.net.advance(0.1)
        self.assertEqual(self.failureResultOf(d, RequestTimeout).value.message, "ERR_TIMEOUT")
        # The late reply is ignored; the socket keeps serving.
        self.serve.calls[0][1].callback("late")
        self.net.flush()
        d2 = self.request("r2", 2)
        self.serve.calls[1][1].callback("fine")
        self.net.flush()
        self.assertEqual(self.successResultOf(d2), "fine")

    def test_one_timer_for_all_requests(self) -> None:
        """Timeouts come from one sweep timer, however many requests are pending."""
        d0 = self.request("r0", 0)
        before = len(self.reactor.getDelayedCalls())
        ds = [self.client.request(DEST, req(f"r{i}", i, timeout=10.0 + i)) for i in range(1, 100)]
        self.net.flush()
        self.assertEqual(len(self.reactor.getDelayedCalls()), before)
        self.net.advance(10.0)
        self.failureResultOf(d0, RequestTimeout)
        self.net.advance(50.0)
        self.assertEqual(len([d for d in ds if not d.called]), 49)
        self.net.advance(60.0)
        for d in ds:
            self.failureResultOf(d, RequestTimeout)

    def test_cancel(self) -> None:
        d = self.request("r1", 1)
        d.cancel()
        self.serve.calls[0][1].callback("ignored")
        self.net.flush()
        self.failureResultOf(d).trap(Exception)

    def test_client_idle_close(self) -> None:
        d = self.request("r1", 1)
        self.serve.calls[0][1].callback("x")
        self.net.flush()
        self.successResultOf(d)
        self.net.advance(119.0)
        self.assertEqual(self.client.connections, {DEST: True})
        self.net.advance(1.0)
        self.net.advance(2.0)
        self.assertEqual(self.client.connections, {})
        self.assertEqual(self.server.sockets, 0)

    def test_busy_socket_not_idle(self) -> None:
        """A socket with a request in flight is not closed for idleness."""
        d = self.request("r1", 1, timeout=1000.0)
        self.net.advance(400.0)
        self.assertEqual(self.client.connections, {DEST: True})
        self.serve.calls[0][1].callback("slow")
        self.net.flush()
        self.assertEqual(self.successResultOf(d), "slow")

    def test_request_too_large(self) -> None:
        client = WSClientTransport(
            self.reactor, agent=self.net.agent(self.server.factory), max_message_size=100
        )
        self.failureResultOf(client.request(DEST, req("r", "x" * 100)), RequestTooLarge)

    def test_unencodable_payload(self) -> None:
        self.failureResultOf(self.client.request(DEST, req("r", {1, 2})), TypeError)

    def test_client_stop(self) -> None:
        d = self.request("r1", 1)
        stopped = self.client.stop()
        self.failureResultOf(d, TransportClosed)
        self.net.flush()
        self.successResultOf(stopped)
        self.assertEqual(self.server.sockets, 0)

    def test_verify_client_refuses(self) -> None:
        """A refused handshake (401) fails requests with DestinationUnreachable."""
        seen: list[str | None] = []

        def verify(fingerprint: str | None) -> bool:
            seen.append(fingerprint)
            return False

        server = WSServerTransport(self.reactor, verify_client=verify)
        self.successResultOf(server.listen(0, self.serve))
        client = WSClientTransport(self.reactor, agent=self.net.agent(server.factory))
        d = client.request(DEST, req("r", 1))
        self.net.flush()
        self.failureResultOf(d, DestinationUnreachable)
        self.assertEqual(seen, [None])
        self.assertEqual(self.serve.calls, [])


class MaskTests(unittest.TestCase):
    @given(st.binary(max_size=300), st.binary(min_size=4, max_size=4))
    def test_xor_mask(self, data: bytes, key: bytes) -> None:
        """The big-integer XOR equals RFC 6455's byte-by-byte masking."""
        self.assertEqual(xor_mask(data, key), mask(data, key))


class RefusedTests(unittest.TestCase):
    """Connections that cannot be made fail requests; nothing raises."""

    def test_refused(self) -> None:
        reactor = MemoryReactorClockResolver()
        client = WSClientTransport(reactor)
        d1 = client.request(DEST, req("r1", 1))
        d2 = client.request(DEST, req("r2", 2))
        [(host, port, factory, _timeout, _bind)] = reactor.tcpClients
        self.assertEqual((host, port), ("127.0.0.1", 1337))
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))  # type: ignore[arg-type]
        for d in (d1, d2):
            failure = self.failureResultOf(d, DestinationUnreachable)
            self.assertTrue(failure.value.message.startswith("ERR_REQUEST_GENERIC: 127.0.0.1:1337"))
        self.assertEqual(client.connections, {})
        # A later request tries again.
        client.request(DEST, req("r3", 3))
        self.assertEqual(len(reactor.tcpClients), 2)

    def test_bad_dest(self) -> None:
        client = WSClientTransport(MemoryReactorClockResolver())
        self.failureResultOf(client.request("nonsense", req("r", 1)), DestinationUnreachable)

    def test_refused_loopback(self) -> Deferred[None]:
        """A real refused connection on loopback (a port just closed)."""
        reactor: Any = global_reactor
        port = reactor.listenTCP(0, _NoFactory(), interface="127.0.0.1")
        number = port.getHost().port
        client = WSClientTransport(global_reactor)

        async def run() -> None:
            await port.stopListening()
            try:
                await client.request(f"127.0.0.1:{number}", req("r", 1))
            except DestinationUnreachable as e:
                self.assertIn("refused", e.message)
            else:
                self.fail("no error")
            await client.stop()

        return ensureDeferred(run())


class _NoFactory:
    def doStart(self) -> None:
        pass

    def doStop(self) -> None:
        pass

    def buildProtocol(self, addr: Any) -> None:
        return None


class BadFrameTests(unittest.TestCase):
    """Bad frames get ERR_REQUEST_PARSE replies on a socket that stays open."""

    def setUp(self) -> None:
        self.net = MemoryNet()
        self.server = WSServerTransport(self.net.reactor)
        self.serve = FakeServe()
        self.successResultOf(self.server.listen(0, self.serve))
        d = self.net.agent(self.server.factory).open(
            "ws://127.0.0.1:1337/ws", {}, protocol_class=RecordingClient
        )
        self.net.flush()
        self.client = self.successResultOf(d)

    def send(self, payload: bytes, binary: bool = False) -> list[bytes]:
        before = len(self.client.received)
        self.client.sendMessage(payload, isBinary=binary)
        self.net.flush()
        new = self.client.received[before:]
        self.assertTrue(all(not b for _, b in new))
        return [p for p, _ in new]

    def test_bad_frames(self) -> None:
        cases = {
            b"not json": PARSE_ERROR,
            b"": PARSE_ERROR,
            b"null": PARSE_ERROR,
            b"{}": PARSE_ERROR,
            b'"abc"': PARSE_ERROR,
            b"[]": PARSE_ERROR,
            b'["r1"]': b'["r1","ERR_REQUEST_PARSE",null]',
            b'["r2",5,null]': b'["r2","ERR_REQUEST_PARSE",null]',
            b"\xff\xfe": PARSE_ERROR,
            b"NaN": PARSE_ERROR,
        }
        for frame, reply in cases.items():
            self.assertEqual(self.send(frame), [reply], frame)
        self.assertEqual(self.serve.calls, [])
        self.assertIsNone(self.client.closed)

    def test_missing_payload_is_null(self) -> None:
        self.send(b'["r","k"]')
        self.assertEqual(self.serve.requests, [Request("r", "k", None)])

    def test_rid_echoed_verbatim(self) -> None:
        self.send(b'[7,"k",1]')
        self.send(b'[{"a":[1]},"k",2]')
        self.serve.calls[1][1].callback("b")
        self.serve.calls[0][1].callback("a")
        self.net.flush()
        self.assertEqual(
            [p for p, _ in self.client.received], [b'[{"a":[1]},null,"b"]', b'[7,null,"a"]']
        )

    def test_binary_request(self) -> None:
        self.send(b'["r","k","p"]', binary=True)
        self.serve.calls[0][1].callback("ok")
        self.net.flush()
        self.assertEqual(self.client.received, [(b'["r",null,"ok"]', False)])

    def test_oversize_closes_1009(self) -> None:
        server = WSServerTransport(self.net.reactor, max_message_size=64)
        self.successResultOf(server.listen(0, self.serve))
        d = self.net.agent(server.factory).open(
            "ws://127.0.0.1:1337/ws", {}, protocol_class=RecordingClient
        )
        self.net.flush()
        client = self.successResultOf(d)
        client.sendMessage(b'["r","k","' + b"x" * 100 + b'"]')
        self.net.flush()
        self.assertEqual(client.closed, (True, 1009))

    def test_server_idle_close(self) -> None:
        self.net.advance(299.0)
        self.assertIsNone(self.client.closed)
        self.send(b'["r","k",1]')
        self.net.advance(299.0)
        self.assertIsNone(self.client.closed, "a request in flight keeps the socket")
        self.serve.calls[0][1].callback(1)
        self.net.flush()
        self.net.advance(299.0)
        self.assertIsNone(self.client.closed)
        self.net.advance(1.0)
        self.assertEqual(self.client.closed, (True, 1000))
        self.assertEqual(self.server.sockets, 0)

    def test_max_in_flight_pauses_reading(self) -> None:
        server = WSServerTransport(self.net.reactor, max_in_flight=2)
        self.successResultOf(server.listen(0, self.serve))
        d = self.net.agent(server.factory).open(
            "ws://127.0.0.1:1337/ws", {}, protocol_class=RecordingClient
        )
        self.net.flush()
        client = self.successResultOf(d)
        [protocol] = list(server._sockets)
        states: list[str] = []
        wire: Any = protocol.transport
        wire.pauseProducing = lambda: states.append("paused")
        wire.resumeProducing = lambda: states.append("producing")
        client.sendMessage(b'["a","k",1]')
        self.net.flush()
        self.assertEqual(states, [])
        client.sendMessage(b'["b","k",2]')
        self.net.flush()
        self.assertEqual(states, ["paused"])
        self.serve.calls[-1][1].callback(2)
        self.assertEqual(states, ["paused", "producing"])

    @given(st.binary(max_size=200))
    @settings(max_examples=60, deadline=None)
    def test_any_bytes_get_one_reply_or_a_request(self, frame: bytes) -> None:
        """Whatever a frame holds, the socket stays open and the frame is answered or served."""
        before_calls = len(self.serve.calls)
        replies = self.send(frame, binary=True)
        served = len(self.serve.calls) - before_calls
        self.assertEqual(len(replies) + served, 1)
        for reply in replies:
            self.assertEqual(codec.json_loads(reply)[1], "ERR_REQUEST_PARSE")
        self.assertIsNone(self.client.closed)


# --- the fast receive path against autobahn's own ------------------------------------------------


def any_frame(
    payload: bytes,
    opcode: int,
    fin: bool = True,
    rsv: int = 0,
    key: bytes | None = None,
    form: str = "min",
) -> bytes:
    """One frame with any header: ``form`` is the length encoding ("min", "16" or "64")."""
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    bit = 0x80 if key is not None else 0
    if form == "64" or (form == "min" and n > 0xFFFF):
        head += bytes([bit | 127]) + n.to_bytes(8, "big")
    elif form == "16" or (form == "min" and n > 125):
        head += bytes([bit | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([bit | n])
    if key is None:
        return head + payload
    return head + key + mask(payload, key)


class _FastClient(LeanPath, WebSocketClientProtocol):
    def __init__(self) -> None:
        super().__init__()
        self.received: list[tuple[bytes, bool]] = []
        self.closed: tuple[bool, int | None] | None = None

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.received.append((payload, isBinary))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.closed = (wasClean, code)


class _RecordingServer(WebSocketServerProtocol):
    def __init__(self) -> None:
        super().__init__()
        self.received: list[tuple[bytes, bool]] = []
        self.closed: tuple[bool, int | None] | None = None

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.received.append((payload, isBinary))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.closed = (wasClean, code)


class _FastServer(LeanPath, _RecordingServer):
    pass


_PAYLOADS = st.one_of(
    st.binary(max_size=40),
    st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.integers(120, 300).map(lambda n: b"y" * n),
)


@st.composite
def _frames(draw: Any, server: bool) -> bytes:
    """A run of frames from the other side: mostly well-formed, sometimes not."""
    key = b"\x01\x02\x03\x04" if server else None
    out = b""
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(
            st.sampled_from(["text", "text", "binary", "ping", "fragmented", "odd", "close"])
        )
        payload = draw(_PAYLOADS)
        if kind in ("text", "binary"):
            out += any_frame(payload, 1 if kind == "text" else 2, key=key)
        elif kind == "ping":
            out += any_frame(payload[:20], 9, key=key)
        elif kind == "fragmented":
            half = len(payload) // 2
            out += any_frame(payload[:half], draw(st.sampled_from([1, 2])), fin=False, key=key)
            if draw(st.booleans()):
                out += any_frame(b"p", 9, key=key)
            out += any_frame(payload[half:], 0, key=key)
        elif kind == "close":
            out += any_frame(b"\x03\xe8", 8, key=key)
        else:
            out += any_frame(
                payload,
                draw(st.sampled_from([0, 1, 2, 3])),
                fin=draw(st.booleans()),
                rsv=draw(st.sampled_from([0, 0, 1, 4])),
                key=draw(st.sampled_from([None, b"\x09\x08\x07\x06"])),
                form=draw(st.sampled_from(["min", "16", "64"])),
            )
    return out


class _Wire(StringTransport):
    def unregisterProducer(self) -> None:
        self.producer = None


def _open_client(protocol: Any, max_size: int) -> StringTransport:
    factory = WebSocketClientFactory(
        url="ws://127.0.0.1:11338/ws", reactor=MemoryReactorClockResolver()
    )
    # No timers: nothing left on the global reactor that txaio schedules on.
    factory.setProtocolOptions(
        openHandshakeTimeout=0, closeHandshakeTimeout=0, serverConnectionDropTimeout=0
    )
    protocol.factory = factory
    protocol.maxMessagePayloadSize = protocol.maxFramePayloadSize = max_size
    wire = _Wire()
    protocol.makeConnection(wire)
    lines = wire.value().split(b"\r\n")
    key = dict(line.split(b": ", 1) for line in lines[1:] if b": " in line)[b"Sec-WebSocket-Key"]
    wire.clear()
    protocol.dataReceived(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept_for(key) + b"\r\n\r\n"
    )
    return wire


def _open_server(protocol: Any, max_size: int) -> StringTransport:
    from autobahn.twisted.websocket import WebSocketServerFactory

    protocol.factory = WebSocketServerFactory(reactor=MemoryReactorClockResolver())
    protocol.factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)
    protocol.maxMessagePayloadSize = protocol.maxFramePayloadSize = max_size
    wire = _Wire()
    protocol.makeConnection(wire)
    protocol.dataReceived(NODE_HANDSHAKE)
    wire.clear()
    return wire


class FastReceiveTests(unittest.TestCase):
    """Whatever arrives, however it is cut into reads, the lean protocols see what autobahn's
    own see: the same messages, the same close, the same state."""

    def check(self, fast: Any, plain: Any, server: bool, data: bytes, cuts: list[int]) -> None:
        max_size = 200
        opener = _open_server if server else _open_client
        wires = [opener(fast, max_size), opener(plain, max_size)]
        for w in wires:
            w.clear()
        bounds = [0, *sorted({c % (len(data) + 1) for c in cuts}), len(data)]
        for a, b in itertools.pairwise(bounds):
            for protocol in (fast, plain):
                protocol.dataReceived(data[a:b])
        self.assertEqual(fast.received, plain.received)
        self.assertEqual(fast.state, plain.state)
        self.assertEqual(fast.closed, plain.closed)
        self.assertEqual(len(wires[0].value()), len(wires[1].value()))

    @given(st.data(), st.lists(st.integers(0, 2000), max_size=6))
    @settings(max_examples=300, deadline=None)
    def test_client_side(self, data: Any, cuts: list[int]) -> None:
        self.check(_FastClient(), RecordingClient(), False, data.draw(_frames(False)), cuts)

    @given(st.data(), st.lists(st.integers(0, 2000), max_size=6))
    @settings(max_examples=300, deadline=None)
    def test_server_side(self, data: Any, cuts: list[int]) -> None:
        self.check(_FastServer(), _RecordingServer(), True, data.draw(_frames(True)), cuts)

    def test_burst_of_replies_in_one_read(self) -> None:
        fast, plain = _FastClient(), RecordingClient()
        frames = b"".join(any_frame(b'["%d",null,1]' % i, 1) for i in range(50))
        frames += any_frame(b"x" * 150, 2) + any_frame(b"", 9) + any_frame(b"\xc3\xa9", 1)
        self.check(fast, plain, False, frames, [7, 500, 501])
        self.assertEqual(len(fast.received), 52)


# --- pub/sub ------------------------------------------------------------------------------------


class PubSubMemoryTests(unittest.TestCase):
    def setUp(self) -> None:
        self.net = MemoryNet()
        self.pub = WSPubTransport(self.net.reactor)
        self.successResultOf(self.pub.listen(0))
        self.sub = WSSubTransport(self.net.reactor, agent=self.net.agent(self.pub.factory))

    def subscribe(self) -> tuple[Any, list[str | bytes], list[int]]:
        messages: list[str | bytes] = []
        closes: list[int] = []
        d = self.sub.connect(DEST, messages.append, lambda: closes.append(1))
        self.net.flush()
        return self.successResultOf(d), messages, closes

    def test_fan_out_text_and_binary(self) -> None:
        subs = [self.subscribe() for _ in range(3)]
        self.assertEqual(self.pub.subscribers, 3)
        self.assertEqual(self.pub.publish("world"), 3)
        self.assertEqual(self.pub.publish('{"a":1}'), 3)
        self.assertEqual(self.pub.publish(b"bin\x00\xff"), 3)
        self.assertEqual(self.pub.publish("ü"), 3)
        self.net.flush()
        for _, messages, closes in subs:
            self.assertEqual(messages, ["world", '{"a":1}', b"bin\x00\xff", "ü"])
            self.assertEqual([type(m) for m in messages], [str, str, bytes, str])
            self.assertEqual(closes, [])

    def test_frames_are_verbatim(self) -> None:
        """No envelope: a text frame ``world``, a binary frame ``bin``."""
        d = self.net.agent(self.pub.factory).open(
            "ws://127.0.0.1:1337/ws", {}, protocol_class=RecordingClient
        )
        self.net.flush()
        raw = self.successResultOf(d)
        self.pub.publish("world")
        self.pub.publish(b"bin")
        self.net.flush()
        self.assertEqual(raw.received, [(b"world", False), (b"bin", True)])

    def test_publish_without_subscribers(self) -> None:
        self.assertEqual(self.pub.publish("nobody"), 0)

    def test_stop_closes_subscriber_sockets(self) -> None:
        subs = [self.subscribe() for _ in range(2)]
        stopped = self.pub.stop()
        self.net.flush()
        self.successResultOf(stopped)
        self.assertEqual(self.pub.subscribers, 0)
        for _, _, closes in subs:
            self.assertEqual(closes, [1])
        self.assertEqual(self.sub.connections, 0)

    def test_subscriber_close(self) -> None:
        connection, _messages, closes = self.subscribe()
        connection.close()
        self.assertEqual(closes, [1])
        self.net.flush()
        self.assertEqual(self.pub.subscribers, 0)
        self.assertEqual(self.pub.publish("gone"), 0)
        connection.close()
        self.assertEqual(closes, [1])

    def test_sub_stop(self) -> None:
        _, _, closes = self.subscribe()
        stopped = self.sub.stop()
        self.net.flush()
        self.successResultOf(stopped)
        self.assertEqual(closes, [1])
        self.failureResultOf(self.sub.connect(DEST, print, print), TransportClosed)

    def test_on_message_errors_are_logged_not_fatal(self) -> None:
        calls: list[str | bytes] = []

        def on_message(message: str | bytes) -> None:
            calls.append(message)
            raise RuntimeError("handler bug")

        d = self.sub.connect(DEST, on_message, lambda: None)
        self.net.flush()
        self.successResultOf(d)
        self.pub.publish("a")
        self.pub.publish("b")
        self.net.flush()
        self.assertEqual(calls, ["a", "b"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)

    def test_refused(self) -> None:
        reactor = MemoryReactorClockResolver()
        sub = WSSubTransport(reactor)
        closes: list[int] = []
        d = sub.connect(DEST, print, lambda: closes.append(1))
        connector_factory: Any = reactor.tcpClients[0][2]
        connector_factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        self.failureResultOf(d, DestinationUnreachable)
        self.assertEqual(closes, [])

    def test_heartbeat_keeps_a_live_publisher(self) -> None:
        _, _, closes = self.subscribe()
        for _ in range(10):
            self.net.advance(30.0)
        self.assertEqual(closes, [])
        self.assertEqual(self.sub.connections, 1)

    def test_heartbeat_drops_a_silent_publisher(self) -> None:
        """A publisher that stops answering pings is given up after two intervals."""
        sub = WSSubTransport(
            self.net.reactor, agent=self.net.agent(_SilentFactory()), heartbeat_interval=5.0
        )
        closes: list[int] = []
        d = sub.connect(DEST, print, lambda: closes.append(1))
        self.net.flush()
        self.successResultOf(d)
        self.net.advance(5.0)
        self.assertEqual(closes, [])
        self.net.advance(5.0)
        self.assertEqual(closes, [1])
        self.assertEqual(sub.connections, 0)


class _SilentServer(WebSocketServerProtocol):
    """A server that never answers pings (a half-dead publisher)."""

    def onPing(self, payload: bytes) -> None:
        pass


class _SilentFactory:
    def buildProtocol(self, addr: Any) -> _SilentServer:
        from autobahn.twisted.websocket import WebSocketServerFactory

        protocol = _SilentServer()
        protocol.factory = WebSocketServerFactory()
        return protocol


# --- TLS ----------------------------------------------------------------------------------------


def der(identity: Identity) -> bytes:
    return x509.load_pem_x509_certificate(identity.cert).public_bytes(serialization.Encoding.DER)


def raw_options(identity: Identity) -> ssl.CertificateOptions:
    """Plain Twisted CertificateOptions (no client verification configured)."""
    return ssl.PrivateCertificate.loadPEM(identity.cert + identity.key).options()


class FingerprintTests(unittest.TestCase):
    def test_whitelist(self) -> None:
        node = "E1:63:C1:46:B3:B6:46:3B:5E:92:98:34:40:A1:AB:FB:0E:92:D0:76"
        verify = fingerprint_whitelist([node])
        self.assertTrue(verify(node))
        self.assertTrue(verify(node.lower()))
        self.assertTrue(verify(node.replace(":", "").lower()))
        self.assertFalse(verify("00" + node[2:]))
        self.assertFalse(verify(None))
        self.assertFalse(fingerprint_whitelist([])(node))
        with self.assertRaises(ValueError):
            fingerprint_whitelist(["AB:CD"])
        with self.assertRaises(ValueError):
            fingerprint_whitelist([hashlib.sha256(b"x").hexdigest()])

    def test_whitelist_of_generated_certificate(self) -> None:
        identity = make_pki().client
        expected = ":".join(f"{b:02X}" for b in hashlib.sha1(der(identity)).digest())
        self.assertTrue(fingerprint_whitelist([expected])(identity.fingerprint))


class TLSLoopbackTests(unittest.TestCase):
    """wss over loopback: client certificates, the verify hook, the handler's fingerprint."""

    def setUp(self) -> None:
        pki = make_pki()
        self.ca = pki.ca
        self.server_id = pki.server
        self.client_id = pki.client
        self.stranger = pki.rogue_client
        self.other_ca = pki.rogue_ca
        self.client_fp = self.client_id.fingerprint
        self.seen: list[Request] = []
        self.server = self.make_server(ServerTLS(key=self.server_id.key, cert=self.server_id.cert))

    def make_server(self, tls: Any) -> WSServerTransport:
        server = WSServerTransport(
            global_reactor,
            tls=tls,
            verify_client=fingerprint_whitelist([self.client_fp]),
            interface="127.0.0.1",
        )
        self.addCleanup(server.stop)
        return server

    def handler(self, request: Request) -> Deferred[Any]:
        self.seen.append(request)
        if request.peer_certificate != self.client_fp:
            return fail(RemoteError("ERR_FORBIDDEN"))
        return succeed({"hello": request.payload})

    def client_tls(self, identity: Identity | None, ca: Identity | None = None) -> ClientTLS:
        return ClientTLS(
            ca=(ca or self.ca).cert,
            cert=identity.cert if identity else None,
            key=identity.key if identity else None,
        )

    async def call(self, client_tls: Any, server: WSServerTransport | None = None) -> Any:
        server = server or self.server
        port = await server.listen(0, self.handler)
        client = WSClientTransport(global_reactor, tls=client_tls)
        try:
            return await client.request(f"127.0.0.1:{port}", req("r1", "tls"))
        finally:
            await client.stop()

    def test_whitelisted_client(self) -> Deferred[None]:
        async def run() -> None:
            result = await self.call(self.client_tls(self.client_id))
            self.assertEqual(result, {"hello": "tls"})
            [request] = self.seen
            self.assertEqual(request.peer_certificate, self.client_fp)
            self.assertEqual(request.peer_certificate_der, der(self.client_id))

        return ensureDeferred(run())

    def test_raw_certificate_options(self) -> Deferred[None]:
        """Plain CertificateOptions work too; the server still asks for a certificate."""

        async def run() -> None:
            server = self.make_server(raw_options(self.server_id))
            result = await self.call(self.client_tls(self.client_id), server)
            self.assertEqual(result, {"hello": "tls"})

        return ensureDeferred(run())

    def test_stranger_refused(self) -> Deferred[None]:
        async def run() -> None:
            with self.assertRaises(DestinationUnreachable) as caught:
                await self.call(self.client_tls(self.stranger))
            self.assertIn("401", caught.exception.message)
            self.assertEqual(self.seen, [])

        return ensureDeferred(run())

    def test_no_client_certificate_refused(self) -> Deferred[None]:
        async def run() -> None:
            with self.assertRaises(DestinationUnreachable):
                await self.call(self.client_tls(None))
            self.assertEqual(self.seen, [])

        return ensureDeferred(run())

    def test_untrusted_server_refused(self) -> Deferred[None]:
        """The client verifies the server's chain against its CA: a TLS handshake error."""

        async def run() -> None:
            with self.assertRaises(TLSHandshakeError):
                await self.call(self.client_tls(self.client_id, self.other_ca))

        return ensureDeferred(run())

    def test_pubsub_tls(self) -> Deferred[None]:
        async def run() -> None:
            pub = WSPubTransport(
                global_reactor,
                tls=ServerTLS(key=self.server_id.key, cert=self.server_id.cert),
                interface="127.0.0.1",
            )
            port = await pub.listen(0)
            sub = WSSubTransport(global_reactor, tls=self.client_tls(self.client_id))
            got: Deferred[str | bytes] = Deferred()
            await sub.connect(f"127.0.0.1:{port}", got.callback, lambda: None)
            self.assertEqual(pub.publish("secret"), 1)
            self.assertEqual(await got, "secret")
            await sub.stop()
            await pub.stop()

        return ensureDeferred(run())


class LoopbackTests(unittest.TestCase):
    """Plain ws over real loopback sockets, end to end."""

    def test_rpc_and_pubsub(self) -> Deferred[None]:
        async def run() -> None:
            server = WSServerTransport(global_reactor, interface="127.0.0.1")
            port = await server.listen(0, lambda r: succeed([r.key, r.payload]))
            client = WSClientTransport(global_reactor)
            dest = f"127.0.0.1:{port}"
            results = [
                await d for d in [client.request(dest, req(f"r{i}", i, key="k")) for i in range(50)]
            ]
            self.assertEqual(results, [["k", i] for i in range(50)])
            await client.stop()
            await server.stop()

            pub = WSPubTransport(global_reactor, interface="127.0.0.1")
            pport = await pub.listen(0)
            sub = WSSubTransport(global_reactor)
            got: list[str | bytes] = []
            done: Deferred[None] = Deferred()
            closed: Deferred[None] = Deferred()

            def on_message(m: str | bytes) -> None:
                got.append(m)
                if len(got) == 2:
                    done.callback(None)

            await sub.connect(f"127.0.0.1:{pport}", on_message, lambda: closed.callback(None))
            pub.publish("t")
            pub.publish(b"b")
            await done
            self.assertEqual(got, ["t", b"b"])
            await pub.stop()
            await closed
            await sub.stop()

        return ensureDeferred(run())
