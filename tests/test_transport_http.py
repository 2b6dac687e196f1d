"""Tests for grenache.transports.http: RPC over HTTP, byte for byte with Node
(docs/protocol.rst, *RPC over HTTP*).

Everything runs in memory: the server protocol on a StringTransport, the client's connections
built from the factories it hands a MemoryReactorClock, and round trips (also over TLS) through
iosim on that same reactor.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks, succeed
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase, TestCase

from grenache import errors
from grenache.peer import OutgoingRequest, PeerRPCClient, PeerRPCServer, Request
from grenache.tls import ClientTLS, ServerTLS
from grenache.transports.http import (
    HTTPClientTransport,
    HTTPServerTransport,
    gunzip,
    gzip,
    parse_reply,
)
from tests.support import make_pki, tls_on_a_clock

RID = "854ae9a2-5d09-4a13-8a17-f936df1ab27b"
ERR_RID = "c074a73f-e5a8-48f4-8a52-1fff1a626621"

# Node client -> Node server, as captured (verbatim but for the Host port).
NODE_REQUEST = (
    b"POST / HTTP/1.1\r\n"
    b"grc-compress: none\r\n"
    b"Content-Type: text/plain;charset=UTF-8\r\n"
    b"Accept: */*\r\n"
    b"Content-Length: 69\r\n"
    b"User-Agent: node-fetch/1.0 (+https://github.com/bitinn/node-fetch)\r\n"
    b"Accept-Encoding: gzip,deflate\r\n"
    b"Host: 127.0.0.1:11337\r\n"
    b"Connection: keep-alive\r\n"
    b"\r\n"
    b'["854ae9a2-5d09-4a13-8a17-f936df1ab27b","rpc_test",{"hello":"world"}]'
)
NODE_REPLY_BODY = (
    b'["854ae9a2-5d09-4a13-8a17-f936df1ab27b",null,{"echo":{"hello":"world"},"key":"rpc_test"}]'
)
NODE_REPLY = (
    b"HTTP/1.1 200 OK\r\n"
    b"Date: Thu, 01 May 2025 10:00:00 GMT\r\n"
    b"Connection: keep-alive\r\n"
    b"Keep-Alive: timeout=5\r\n"
    b"Transfer-Encoding: chunked\r\n"
    b"\r\n"
    b"59\r\n" + NODE_REPLY_BODY + b"\r\n0\r\n\r\n"
)
NODE_ERROR_REPLY = (
    b"HTTP/1.1 200 OK\r\n"
    b"Connection: keep-alive\r\n"
    b"Transfer-Encoding: chunked\r\n"
    b"\r\n"
    b"44\r\n"
    b'["c074a73f-e5a8-48f4-8a52-1fff1a626621","something went wrong",null]'
    b"\r\n0\r\n\r\n"
)


def ok_response(body: bytes, connection: bytes = b"keep-alive", status: bytes = b"200 OK") -> bytes:
    """The exact bytes this project's server writes for an RPC reply."""
    return b"HTTP/1.1 %s\r\nContent-Length: %d\r\nConnection: %s\r\n\r\n%s" % (
        status,
        len(body),
        connection,
        body,
    )


def post(body: bytes, headers: bytes = b"grc-compress: none\r\n") -> bytes:
    return b"POST / HTTP/1.1\r\nHost: x\r\n%sContent-Length: %d\r\n\r\n%s" % (
        headers,
        len(body),
        body,
    )


def chunked_post(chunks: list[bytes], headers: bytes = b"") -> bytes:
    out = b"POST /any/path HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n%s\r\n" % headers
    for chunk in chunks:
        out += b"%x\r\n%s\r\n" % (len(chunk), chunk)
    return out + b"0\r\n\r\n"


def node_handler(request: Request) -> Any:
    """The handler of Node's examples: echo the payload and the key."""
    return {"echo": request.payload, "key": request.key}


class GzipTests(SynchronousTestCase):
    def test_node_header(self) -> None:
        """zlib's gzip header, as Node's zlib.gzip writes it (mtime 0, OS unix)."""
        data = gzip(b'["r","rpc_test","zip"]')
        self.assertEqual(data[:10], b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03")
        self.assertEqual(gunzip(data), b'["r","rpc_test","zip"]')

    def test_members_and_errors(self) -> None:
        self.assertEqual(gunzip(gzip(b"ab") + gzip(b"cd")), b"abcd")
        self.assertRaises(ValueError, gunzip, b"")
        self.assertRaises((ValueError, zlib.error), gunzip, b"not gzip")
        self.assertRaises(ValueError, gunzip, gzip(b"x" * 100)[:-5])

    def test_limit(self) -> None:
        bomb = gzip(b"\x00" * 1_000_000)
        self.assertLess(len(bomb), 2000)
        self.assertEqual(len(gunzip(bomb, 1_000_000)), 1_000_000)
        from grenache.transports.http import BodyTooLarge

        self.assertRaises(BodyTooLarge, gunzip, bomb, 999_999)
        self.assertRaises(BodyTooLarge, gunzip, gzip(b"ab") + gzip(b"cd"), 3)


class ServerHarness:
    """An HTTPServerTransport on a MemoryReactorClock, connections on StringTransports."""

    def __init__(self, handler: Any = node_handler, **kwargs: Any) -> None:
        self.reactor = MemoryReactorClock()
        self.transport = HTTPServerTransport(self.reactor, **kwargs)
        self.requests: list[Request] = []
        self.server = PeerRPCServer(None, self.transport, self._record(handler))
        self.port = self.server.listen(11337).result

    def _record(self, handler: Any) -> Any:
        def record(request: Request) -> Any:
            self.requests.append(request)
            return handler(request)

        return record

    def connect(self) -> StringTransport:
        proto = self.transport.factory.buildProtocol(None)
        wire = StringTransport()
        proto.makeConnection(wire)
        self.proto = proto
        return wire

    def exchange(self, data: bytes) -> bytes:
        wire = self.connect()
        self.proto.dataReceived(data)
        return wire.value()


class ServerTests(SynchronousTestCase):
    def test_node_request(self) -> None:
        """Node's request gets Node's reply body, byte for byte, status 200, no Content-Type."""
        h = ServerHarness()
        self.assertEqual(h.exchange(NODE_REQUEST), ok_response(NODE_REPLY_BODY))
        self.assertEqual(h.requests, [Request(RID, "rpc_test", {"hello": "world"})])
        self.assertEqual(h.port, 11337)

    def test_error_reply(self) -> None:
        def handler(request: Request) -> Any:
            raise Exception("something went wrong")

        h = ServerHarness(handler)
        body = b'["%s","rpc_test",{}]' % ERR_RID.encode()
        expected = b'["c074a73f-e5a8-48f4-8a52-1fff1a626621","something went wrong",null]'
        self.assertEqual(h.exchange(post(body)), ok_response(expected))
        self.assertEqual(len(self.flushLoggedErrors(Exception)), 1)  # the service logs it

    def test_handler_forms(self) -> None:
        """A value, a Deferred, a coroutine, a GrenacheError, an empty-message error."""
        gate: Deferred[str] = Deferred()

        async def coro(request: Request) -> str:
            return await gate

        cases: list[tuple[Any, bytes]] = [
            (lambda r: None, b'["r",null,null]'),
            (lambda r: succeed([1, "two"]), b'["r",null,[1,"two"]]'),
            (lambda r: _raise(errors.RemoteError("ERR_APP")), b'["r","ERR_APP",null]'),
            (lambda r: _raise(errors.RequestTimeout()), b'["r","ERR_TIMEOUT",null]'),
            (lambda r: _raise(KeyError.__new__(KeyError)), b'["r","KeyError",null]'),
            (lambda r: {"bad": object()}, None),
        ]
        for handler, expected in cases:
            h = ServerHarness(handler)
            out = h.exchange(post(b'["r","k",1]'))
            if expected is None:
                reply = json.loads(out.split(b"\r\n\r\n", 1)[1])
                self.assertEqual(reply[0], "r")
                self.assertIn("not JSON serializable", reply[1])
            else:
                self.assertEqual(out, ok_response(expected))
        h = ServerHarness(coro)
        wire = h.connect()
        h.proto.dataReceived(post(b'["r","k",1]'))
        self.assertEqual(wire.value(), b"")
        gate.callback("late")
        self.assertEqual(wire.value(), ok_response(b'["r",null,"late"]'))
        self.flushLoggedErrors()  # the service logs the failing handlers

    def test_gzip(self) -> None:
        """grc-compress gzip: body gunzipped, reply gzipped, no Content-Encoding."""
        h = ServerHarness()
        body = gzip(b'["%s","rpc_test","zip"]' % RID.encode())
        out = h.exchange(post(body, b"grc-compress: gzip\r\n"))
        head, reply = out.split(b"\r\n\r\n", 1)
        self.assertNotIn(b"content-encoding", head.lower())
        self.assertNotIn(b"content-type", head.lower())
        self.assertEqual(reply[:4], b"\x1f\x8b\x08\x00")
        self.assertEqual(
            gunzip(reply), b'["%s",null,{"echo":"zip","key":"rpc_test"}]' % RID.encode()
        )
        self.assertEqual(out, ok_response(reply))

    def test_gzip_header_with_plain_body(self) -> None:
        """As Node: when gunzip fails the raw body is used (and the reply is still gzipped)."""
        h = ServerHarness()
        out = h.exchange(post(b'["r","k",1]', b"grc-compress: gzip, deflate\r\n"))
        self.assertEqual(gunzip(out.split(b"\r\n\r\n", 1)[1]), b'["r",null,{"echo":1,"key":"k"}]')

    def test_gr_header(self) -> None:
        """_gr [rid, key] overrides the body's where truthy."""
        h = ServerHarness()
        out = h.exchange(post(b'["body-rid","body-key",1]', b'_gr: ["hdr-rid","hdr-key"]\r\n'))
        self.assertEqual(out, ok_response(b'["hdr-rid",null,{"echo":1,"key":"hdr-key"}]'))
        out = h.exchange(post(b'["body-rid","body-key",1]', b'_gr: [null,"hdr-key"]\r\n'))
        self.assertEqual(out, ok_response(b'["body-rid",null,{"echo":1,"key":"hdr-key"}]'))
        out = h.exchange(post(b'["body-rid","body-key",1]', b"_gr: 5\r\n"))
        self.assertEqual(out, ok_response(b'["body-rid",null,{"echo":1,"key":"body-key"}]'))

    def test_bad_gr_header(self) -> None:
        """Node's literal, with spaces, status 500; the handler is not called."""
        h = ServerHarness()
        out = h.exchange(post(b'["r","k",1]', b"_gr: [not json\r\n"))
        self.assertEqual(
            out,
            ok_response(
                b'[null, "ERR_HEADER_PARSE_GR", null]', status=b"500 Internal Server Error"
            ),
        )
        self.assertEqual(h.requests, [])

    def test_unparseable(self) -> None:
        """Deliberate difference from Node: 400 [null,"ERR_REQUEST_PARSE",null], not silence."""
        expected = ok_response(b'[null,"ERR_REQUEST_PARSE",null]', status=b"400 Bad Request")
        for body, headers in [
            (b"not json", b""),
            (b"", b""),
            (b'{"rid":"r"}', b""),
            (b'"string"', b""),
            (b"null", b""),
            (b"\xff\xfe", b""),
            (b"garbage", b"grc-compress: gzip\r\n"),
            (gzip(b"{not json"), b"grc-compress: gzip\r\n"),
        ]:
            h = ServerHarness()
            self.assertEqual(h.exchange(post(body, headers)), expected, body)
            self.assertEqual(h.requests, [])

    def test_short_arrays(self) -> None:
        h = ServerHarness()
        self.assertEqual(
            h.exchange(post(b"[]")), ok_response(b'[null,null,{"echo":null,"key":null}]')
        )
        self.assertEqual(
            h.exchange(post(b'["r"]')), ok_response(b'["r",null,{"echo":null,"key":null}]')
        )

    def test_rid_echoed_unchanged(self) -> None:
        h = ServerHarness(lambda r: "ok")
        self.assertEqual(h.exchange(post(b'[42,"k",1]')), ok_response(b'[42,null,"ok"]'))
        self.assertEqual(
            h.exchange(post(b'[{"a":[1]},"k",1]')), ok_response(b'[{"a":[1]},null,"ok"]')
        )

    def test_unicode(self) -> None:
        """Raw UTF-8 both ways; Content-Length counts bytes; lone surrogates as Node."""
        h = ServerHarness(lambda r: r.payload)
        body = '["r","k",{"text":"héllo wörld ✓ 🚀 日本"}]'.encode()
        out = h.exchange(post(body))
        self.assertEqual(out, ok_response('["r",null,{"text":"héllo wörld ✓ 🚀 日本"}]'.encode()))
        self.assertEqual(h.requests[0].payload, {"text": "héllo wörld ✓ 🚀 日本"})
        out = h.exchange(post(b'["r","k","\\ud800"]'))
        self.assertEqual(out, ok_response(b'["r",null,"\\ud800"]'))

    def test_large_payload(self) -> None:
        h = ServerHarness(lambda r: r.payload)
        payload = "x" * (1024 * 1024)
        body = json.dumps(["r", "k", payload]).encode()
        self.assertEqual(h.exchange(post(body)), ok_response(b'["r",null,"%s"]' % payload.encode()))

    def test_chunked_body(self) -> None:
        """A chunked request body (what Node's stream client sends) is served buffered."""
        h = ServerHarness()
        out = h.exchange(chunked_post([b'["r","k"', b',{"a":', b"1}]"]))
        self.assertEqual(out, ok_response(b'["r",null,{"echo":{"a":1},"key":"k"}]'))
        gz = gzip(b'["r","k",2]')
        out = h.exchange(chunked_post([gz[:5], gz[5:]], b"grc-compress: gzip\r\n"))
        self.assertEqual(gunzip(out.split(b"\r\n\r\n", 1)[1]), b'["r",null,{"echo":2,"key":"k"}]')

    def test_too_large(self) -> None:
        """413 [null,"ERR_REQUEST_TOO_LARGE",null] and close: by length, chunks, or gunzip."""
        expected = ok_response(
            b'[null,"ERR_REQUEST_TOO_LARGE",null]', b"close", b"413 Payload Too Large"
        )
        big = b'["r","k","' + b"x" * 2000 + b'"]'
        h = ServerHarness(max_body_size=1000)
        wire = h.connect()
        h.proto.dataReceived(post(big)[:200])  # the headers announce too much: answered at once
        self.assertEqual(wire.value(), expected)
        self.assertTrue(wire.disconnecting)
        h = ServerHarness(max_body_size=1000)
        self.assertEqual(h.exchange(chunked_post([big[:600], big[600:]])), expected)
        h = ServerHarness(max_body_size=1000)
        out = h.exchange(post(gzip(big), b"grc-compress: gzip\r\n"))
        self.assertEqual(
            out,
            ok_response(b'[null,"ERR_REQUEST_TOO_LARGE",null]', status=b"413 Payload Too Large"),
        )
        self.assertEqual(h.requests, [])

    def test_keep_alive(self) -> None:
        h = ServerHarness(lambda r: r.payload)
        wire = h.connect()
        h.proto.dataReceived(post(b'["a","k",1]') + post(b'["b","k",2]'))
        self.assertEqual(wire.value(), ok_response(b'["a",null,1]') + ok_response(b'["b",null,2]'))
        self.assertFalse(wire.disconnecting)

    def test_any_method_and_path(self) -> None:
        h = ServerHarness(lambda r: "ok")
        req = b'PUT /some/where?x=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n["r","k",1]'
        self.assertEqual(h.exchange(req), ok_response(b'["r",null,"ok"]'))

    def test_stop(self) -> None:
        h = ServerHarness()
        (port,) = [p for p in h.reactor.tcpServers]
        self.assertEqual(port[0], 11337)
        wire = h.connect()
        d = h.server.stop()
        self.assertTrue(wire.disconnecting)
        self.assertNoResult(d)
        h.proto.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(d)


def _raise(exc: BaseException) -> Any:
    raise exc


# --- client --------------------------------------------------------------------------------


class ClientHarness:
    """An HTTPClientTransport on a MemoryReactorClock; connections made by hand."""

    def __init__(self, **kwargs: Any) -> None:
        self.reactor = MemoryReactorClock()
        self.transport = HTTPClientTransport(self.reactor, **kwargs)

    def request(
        self,
        payload: Any = None,
        *,
        rid: str = RID,
        key: str = "rpc_test",
        dest: str = "127.0.0.1:11337",
        timeout: float = 10.0,
        compress: bool = False,
    ) -> Deferred[Any]:
        return self.transport.request(dest, OutgoingRequest(rid, key, payload, timeout, compress))

    def accept(self, index: int = -1) -> tuple[Any, StringTransport]:
        """Complete a pending connection attempt; returns (protocol, its wire)."""
        factory = self.reactor.tcpClients[index][2]
        proto = factory.buildProtocol(None)
        wire = StringTransport()
        proto.makeConnection(wire)
        return proto, wire

    def refuse(self, index: int = -1) -> None:
        factory = self.reactor.tcpClients[index][2]
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))


class ClientTests(SynchronousTestCase):
    def test_request_bytes(self) -> None:
        """What goes on the wire: Node's request line, grc-compress, Content-Type, length."""
        h = ClientHarness()
        d = h.request({"hello": "world"})
        ((host, port, _, _, _),) = h.reactor.tcpClients
        self.assertEqual((host, port), ("127.0.0.1", 11337))
        proto, wire = h.accept()
        self.assertEqual(
            wire.value(),
            b"POST / HTTP/1.1\r\n"
            b"Host: 127.0.0.1:11337\r\n"
            b"grc-compress: none\r\n"
            b"Content-Type: text/plain;charset=UTF-8\r\n"
            b"Content-Length: 69\r\n"
            b"\r\n"
            b'["854ae9a2-5d09-4a13-8a17-f936df1ab27b","rpc_test",{"hello":"world"}]',
        )
        self.assertNoResult(d)
        proto.dataReceived(NODE_REPLY)
        self.assertEqual(self.successResultOf(d), {"echo": {"hello": "world"}, "key": "rpc_test"})

    def test_node_error_reply(self) -> None:
        h = ClientHarness()
        d = h.request({}, rid=ERR_RID)
        proto, _ = h.accept()
        proto.dataReceived(NODE_ERROR_REPLY)
        f = self.failureResultOf(d, errors.RemoteError)
        self.assertEqual(f.value.message, "something went wrong")

    def test_compress(self) -> None:
        """Gzipped request without Content-Type; gzipped reply inflated."""
        h = ClientHarness()
        d = h.request("zip", compress=True)
        proto, wire = h.accept()
        head, body = wire.value().split(b"\r\n\r\n", 1)
        self.assertEqual(
            head,
            b"POST / HTTP/1.1\r\nHost: 127.0.0.1:11337\r\ngrc-compress: gzip\r\n"
            b"Content-Length: %d" % len(body),
        )
        self.assertEqual(gunzip(body), b'["%s","rpc_test","zip"]' % RID.encode())
        reply = gzip(b'["%s",null,{"echo":"zip","key":"rpc_test"}]' % RID.encode())
        proto.dataReceived(ok_response(reply))
        self.assertEqual(self.successResultOf(d), {"echo": "zip", "key": "rpc_test"})
        # A reply that is not gzip.
        d = h.request("zip", compress=True)
        proto.dataReceived(ok_response(b'["%s",null,1]' % RID.encode()))
        f = self.failureResultOf(d, errors.RemoteError)
        self.assertEqual(f.value.message, "ERR_REPLY_ENCODING_COMPRESSION")

    def reply_outcome(self, response: bytes, **kwargs: Any) -> Any:
        h = ClientHarness()
        d = h.request(1, **kwargs)
        proto, _ = h.accept()
        proto.dataReceived(response)
        return d

    def test_error_mapping(self) -> None:
        cases: list[tuple[bytes, type[Exception], str]] = [
            (
                ok_response(b"boom", status=b"500 Internal Server Error"),
                errors.RemoteError,
                "ERR_REQUEST_GENERIC: boom",
            ),
            (
                ok_response(
                    b'[null, "ERR_HEADER_PARSE_GR", null]', status=b"500 Internal Server Error"
                ),
                errors.RemoteError,
                'ERR_REQUEST_GENERIC: [null, "ERR_HEADER_PARSE_GR", null]',
            ),
            (
                ok_response(b'[null,"ERR_REQUEST_PARSE",null]', status=b"400 Bad Request"),
                errors.RequestParseError,
                "ERR_REQUEST_PARSE",
            ),
            (
                ok_response(
                    b'[null,"ERR_REQUEST_TOO_LARGE",null]', status=b"413 Payload Too Large"
                ),
                errors.RequestTooLarge,
                "ERR_REQUEST_TOO_LARGE",
            ),
            (ok_response(b""), errors.RemoteError, "ERR_REPLY_EMPTY"),
            (ok_response(b"not json"), errors.RemoteError, "ERR_REPLY_EMPTY"),
            (ok_response(b"null"), errors.RemoteError, "ERR_REPLY_EMPTY"),
            (ok_response(b"0"), errors.RemoteError, "ERR_REPLY_EMPTY"),
            (ok_response(b'{"a":1}'), errors.RemoteError, "ERR_REPLY_EMPTY"),
            (ok_response(b'["other-rid",null,1]'), errors.RemoteError, "ERR_REPLY_RID_MISMATCH"),
            (
                ok_response(b'["%s",{"code":1},null]' % RID.encode()),
                errors.RemoteError,
                '{"code":1}',
            ),
            (ok_response(b'["%s",5,null]' % RID.encode()), errors.RemoteError, "5"),
            (b"HTTP/1.1 200 OK\r\nbroken header\r\n\r\n", errors.RemoteError, None),
        ]
        for response, kind, message in cases:
            f = self.failureResultOf(self.reply_outcome(response), kind)
            if message is not None:
                self.assertEqual(f.value.message, message)

    def test_falsy_error_is_success(self) -> None:
        """As Node: an empty or false error string means success."""
        for err in [b'""', b"false", b"0", b"null"]:
            d = self.reply_outcome(ok_response(b'["%s",%s,"fine"]' % (RID.encode(), err)))
            self.assertEqual(self.successResultOf(d), "fine")

    def test_reply_until_eof(self) -> None:
        h = ClientHarness()
        d = h.request(1)
        proto, _ = h.accept()
        proto.dataReceived(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b'["%s",null,' % RID.encode()
        )
        proto.dataReceived(b'"eof"]')
        self.assertNoResult(d)
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.successResultOf(d), "eof")

    def test_reply_too_large(self) -> None:
        h = ClientHarness(max_reply_size=100)
        d = h.request(1)
        proto, wire = h.accept()
        proto.dataReceived(ok_response(b'["%s",null,"%s"]' % (RID.encode(), b"x" * 200)))
        self.failureResultOf(d, errors.RequestTooLarge)
        self.assertTrue(wire.disconnecting)
        d = h.request(1, compress=True)
        proto, wire = h.accept()
        proto.dataReceived(ok_response(gzip(b'["%s",null,"%s"]' % (RID.encode(), b"x" * 2000))))
        self.failureResultOf(d, errors.RequestTooLarge)

    def test_refused(self) -> None:
        h = ClientHarness()
        d1 = h.request(1)
        d2 = h.request(2)
        h.refuse(0)
        self.assertNoResult(d1)  # another attempt for d2 is still under way
        h.refuse(1)
        f = self.failureResultOf(d1, errors.DestinationUnreachable)
        self.assertIn("ERR_REQUEST_GENERIC", f.value.message)
        self.failureResultOf(d2, errors.DestinationUnreachable)
        self.assertEqual(h.transport.pools, {})

    def test_invalid_dest(self) -> None:
        h = ClientHarness()
        for dest in ["nope", "1.2.3.4:0", "1.2.3.4:x", ":80"]:
            self.failureResultOf(h.request(1, dest=dest), errors.DestinationUnreachable)

    def test_lost_mid_request(self) -> None:
        """The server dies after receiving the request: TransportClosed at once."""
        h = ClientHarness()
        d = h.request(1)
        proto, _ = h.accept()
        proto.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n[")
        proto.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(d, errors.TransportClosed)
        d = h.request(1)
        proto, _ = h.accept()
        proto.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(d, errors.TransportClosed)

    def test_timeout(self) -> None:
        h = ClientHarness()
        d = h.request(1, timeout=2.5)
        proto, wire = h.accept()
        h.reactor.advance(2.4)
        self.assertNoResult(d)
        h.reactor.advance(0.1)
        f = self.failureResultOf(d, errors.RequestTimeout)
        self.assertEqual(f.value.message, "ERR_TIMEOUT")
        self.assertTrue(wire.disconnecting)
        proto.connectionLost(Failure(ConnectionDone()))
        # Timed out while still connecting.
        d = h.request(1, timeout=1)
        h.reactor.advance(1)
        self.failureResultOf(d, errors.RequestTimeout)

    def test_cancel(self) -> None:
        h = ClientHarness()
        d = h.request(1)
        _, wire = h.accept()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertTrue(wire.disconnecting)
        self.assertEqual(h.reactor.getDelayedCalls(), [])

    def test_keep_alive_reuse(self) -> None:
        h = ClientHarness()
        d = h.request(1, rid="a")
        proto, wire = h.accept()
        proto.dataReceived(ok_response(b'["a",null,1]'))
        self.assertEqual(self.successResultOf(d), 1)
        wire.clear()
        d = h.request(2, rid="b")
        self.assertEqual(len(h.reactor.tcpClients), 1)  # no new connection
        self.assertIn(b'["b","rpc_test",2]', wire.value())
        proto.dataReceived(ok_response(b'["b",null,2]', connection=b"close"))
        self.assertEqual(self.successResultOf(d), 2)
        self.assertTrue(wire.disconnecting)  # the server said close
        proto.connectionLost(Failure(ConnectionDone()))
        h.request(3, rid="c")
        self.assertEqual(len(h.reactor.tcpClients), 2)

    def test_pool_limit(self) -> None:
        """Beyond pool_size_per_dest, requests wait for a free connection."""
        h = ClientHarness(pool_size_per_dest=2)
        ds = [h.request(i, rid=f"r{i}") for i in range(3)]
        self.assertEqual(len(h.reactor.tcpClients), 2)
        p1, w1 = h.accept(0)
        p2, w2 = h.accept(1)
        self.assertIn(b'"r0"', w1.value())
        self.assertIn(b'"r1"', w2.value())
        w2.clear()
        p2.dataReceived(ok_response(b'["r1",null,1]'))
        self.assertIn(b'"r2"', w2.value())
        p2.dataReceived(ok_response(b'["r2",null,2]'))
        p1.dataReceived(ok_response(b'["r0",null,0]'))
        self.assertEqual([self.successResultOf(d) for d in ds], [0, 1, 2])

    def test_idle_connections_closed(self) -> None:
        h = ClientHarness(idle_timeout=4.0)
        d = h.request(1, rid="a")
        proto, wire = h.accept()
        proto.dataReceived(ok_response(b'["a",null,1]'))
        self.successResultOf(d)
        h.reactor.advance(3.9)
        self.assertFalse(wire.disconnecting)
        h.reactor.advance(2.1)
        self.assertTrue(wire.disconnecting)
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(h.transport.pools, {})
        self.assertEqual(h.reactor.getDelayedCalls(), [])

    def test_stale_idle_not_reused(self) -> None:
        h = ClientHarness(idle_timeout=4.0)
        d = h.request(1, rid="a")
        proto, wire = h.accept()
        proto.dataReceived(ok_response(b'["a",null,1]'))
        self.successResultOf(d)
        h.transport._sweeper.stop()  # as if the sweep had not run yet
        h.reactor.advance(5)
        h.request(2, rid="b")
        self.assertTrue(wire.disconnecting)
        self.assertEqual(len(h.reactor.tcpClients), 2)

    def test_unsolicited_data(self) -> None:
        h = ClientHarness()
        d = h.request(1, rid="a")
        proto, wire = h.accept()
        proto.dataReceived(ok_response(b'["a",null,1]'))
        self.successResultOf(d)
        proto.dataReceived(b"HTTP/1.1 200 OK\r\n")
        self.assertTrue(wire.disconnecting)

    def test_stop(self) -> None:
        h = ClientHarness()
        pending = h.request(1, rid="a")
        idle_d = h.request(2, rid="b", dest="127.0.0.1:2")
        waiting = h.request(3, rid="c", dest="127.0.0.1:3")
        p1, w1 = h.accept(0)
        p2, w2 = h.accept(1)
        p2.dataReceived(ok_response(b'["b",null,2]'))
        self.successResultOf(idle_d)
        stopped = h.transport.stop()
        self.failureResultOf(pending, errors.TransportClosed)
        self.failureResultOf(waiting, errors.TransportClosed)
        self.assertTrue(w1.disconnecting)
        self.assertTrue(w2.disconnecting)
        self.assertNoResult(stopped)
        p1.connectionLost(Failure(ConnectionDone()))
        p2.connectionLost(Failure(ConnectionDone()))
        h.reactor.tcpClients[2][2].clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        self.successResultOf(stopped)
        self.failureResultOf(h.request(1), errors.TransportClosed)

    def test_parse_reply_direct(self) -> None:
        self.assertEqual(parse_reply(200, b'["r",null,[1]]', compress=False, rid="r"), [1])
        self.assertEqual(parse_reply(204, b'["r",null]', compress=False, rid="r"), None)


# --- round trips through iosim --------------------------------------------------------------


class RoundTrip:
    """A server and a client transport on one MemoryReactorClock, joined by iosim."""

    def __init__(
        self,
        handler: Any = node_handler,
        server_tls: ServerTLS | None = None,
        client_tls: ClientTLS | None = None,
        **server_kwargs: Any,
    ) -> None:
        self.reactor = MemoryReactorClock()
        self.requests: list[Request] = []

        def record(request: Request) -> Any:
            self.requests.append(request)
            return handler(request)

        self.server_transport = HTTPServerTransport(
            self.reactor, tls=server_tls, interface="127.0.0.1", **server_kwargs
        )
        self.server = PeerRPCServer(None, self.server_transport, record)
        self.server.listen(8080)
        self.client = HTTPClientTransport(self.reactor, tls=client_tls)
        self.completer = iosim.ConnectionCompleter(self.reactor)
        self.pumps: list[iosim.IOPump] = []

    def call(self, payload: Any, *, compress: bool = False, timeout: float = 10.0) -> Deferred[Any]:
        d = self.client.request(
            "127.0.0.1:8080", OutgoingRequest("rid-1", "svc", payload, timeout, compress)
        )
        self.run()
        return d

    def run(self) -> None:
        while True:
            pump = self.completer.succeedOnce()
            if pump is None:
                break
            self.pumps.append(pump)
        for _ in range(3):
            for pump in self.pumps:
                pump.flush()


class RoundTripTests(SynchronousTestCase):
    def test_plain_gzip_unicode_large(self) -> None:
        rt = RoundTrip(lambda r: r.payload)
        for payload in [
            {"hello": "world"},
            "héllo ✓ 🚀",
            ["x" * (1024 * 1024), {"n": 1.5, "l": [None, True]}],
        ]:
            for compress in (False, True):
                self.assertEqual(self.successResultOf(rt.call(payload, compress=compress)), payload)
        self.assertEqual(len(rt.pumps), 1)  # one keep-alive connection for all of them

    def test_errors(self) -> None:
        rt = RoundTrip(lambda r: _raise(ValueError("bad payload")))
        f = self.failureResultOf(rt.call(1), errors.RemoteError)
        self.assertEqual(f.value.message, "bad payload")
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)  # the service logs it
        rt = RoundTrip(lambda r: r.payload, max_body_size=1000)
        self.failureResultOf(rt.call("x" * 2000), errors.RequestTooLarge)
        self.failureResultOf(rt.call("x" * 20000, compress=True), errors.RequestTooLarge)

    def test_server_dies_mid_request(self) -> None:
        """TransportClosed as soon as the connection drops, not at the timeout."""
        rt = RoundTrip(lambda r: Deferred())
        d = rt.call(1, timeout=60)
        self.assertNoResult(d)
        self.assertEqual(len(rt.requests), 1)
        (pump,) = rt.pumps
        pump.serverIO.loseConnection()
        pump.flush()
        self.failureResultOf(d, errors.TransportClosed)
        self.assertEqual(rt.reactor.getDelayedCalls(), [])

    def test_timeout(self) -> None:
        rt = RoundTrip(lambda r: Deferred())
        d = rt.call(1, timeout=3)
        rt.reactor.advance(3)
        self.failureResultOf(d, errors.RequestTimeout)

    def test_peer_client_over_http(self) -> None:
        class Link:
            def lookup(self, name: str) -> Deferred[list[str]]:
                return succeed(["127.0.0.1:8080"])

        rt = RoundTrip()
        client = PeerRPCClient(Link(), rt.client, reactor=rt.reactor)
        d = client.request("svc", {"a": 1})
        rt.run()
        self.assertEqual(self.successResultOf(d), {"echo": {"a": 1}, "key": "svc"})
        d = client.map("svc", 2)
        rt.run()
        self.assertEqual(self.successResultOf(d), [{"echo": 2, "key": "svc"}])

    @tls_on_a_clock
    def test_tls_client_certificate(self) -> None:
        pki = make_pki()
        rt = RoundTrip(
            lambda r: [r.peer_certificate, len(r.peer_certificate_der or b"")],
            server_tls=ServerTLS(pki.server.key, pki.server.cert, pki.ca.cert, request_cert=True),
            client_tls=ClientTLS(pki.ca.cert, pki.client.cert, pki.client.key),
        )
        fp, size = self.successResultOf(rt.call(1))
        self.assertEqual(fp, pki.client.fingerprint)
        self.assertGreater(size, 100)
        self.assertEqual(rt.requests[0].peer_certificate, pki.client.fingerprint)

    @tls_on_a_clock
    def test_tls_without_client_certificate(self) -> None:
        pki = make_pki()
        rt = RoundTrip(
            lambda r: r.peer_certificate,
            server_tls=ServerTLS(pki.server.key, pki.server.cert, request_cert=True),
            client_tls=ClientTLS(pki.ca.cert),
        )
        self.assertIsNone(self.successResultOf(rt.call(1, compress=True)))

    def test_tls_untrusted_server(self) -> None:
        pki = make_pki()
        rt = RoundTrip(
            server_tls=ServerTLS(pki.server.key, pki.server.cert),
            client_tls=ClientTLS(pki.rogue_ca.cert),
        )
        f = self.failureResultOf(rt.call(1), errors.TLSHandshakeError)
        self.assertIsInstance(f.value, errors.DestinationUnreachable)
        self.assertEqual(rt.requests, [])

    def test_tls_client_rejected(self) -> None:
        pki = make_pki()
        rt = RoundTrip(
            server_tls=ServerTLS(
                pki.server.key,
                pki.server.cert,
                pki.ca.cert,
                request_cert=True,
                reject_unauthorized=True,
            ),
            client_tls=ClientTLS(pki.ca.cert, pki.rogue_client.cert, pki.rogue_client.key),
        )
        self.failureResultOf(rt.call(1), errors.DestinationUnreachable)
        self.assertEqual(rt.requests, [])

    @tls_on_a_clock
    def test_tls_stop_closes_connections(self) -> None:
        """Stopping a TLS server closes its keep-alive connections (not at the idle sweep)."""
        pki = make_pki()
        rt = RoundTrip(
            server_tls=ServerTLS(pki.server.key, pki.server.cert),
            client_tls=ClientTLS(pki.ca.cert),
        )
        self.successResultOf(rt.call(1))
        stopped = rt.server.stop()
        rt.run()
        self.successResultOf(stopped)
        self.assertEqual(rt.client.pools, {})

    def test_stop_aborts_after_grace(self) -> None:
        """A connection that does not close within stop_grace is aborted."""
        rt = RoundTrip()
        self.successResultOf(rt.call(1))
        (proto,) = rt.server_transport.factory.connections
        proto._lose_connection = lambda: None  # a close that never completes
        stopped = rt.server.stop()
        rt.run()
        self.assertNoResult(stopped)
        rt.reactor.advance(5)
        rt.run()
        self.successResultOf(stopped)


class RealTLSStopTests(TestCase):
    """stop() over real TLS sockets: the keep-alive connections close at once.

    The server's close pauses reading first; under TLS the close then waits for the client's
    close_notify, which the lean server now reads (grenache.http.server), so stop does not
    wait for stop_grace (set long here) or the idle sweep. Loopback, OS-chosen port.
    """

    timeout = 20

    @inlineCallbacks
    def test_tls_stop_over_loopback(self) -> Any:
        from twisted.internet import reactor as global_reactor

        reactor: Any = global_reactor
        pki = make_pki()
        server_transport = HTTPServerTransport(
            reactor,
            tls=ServerTLS(pki.server.key, pki.server.cert),
            interface="127.0.0.1",
            stop_grace=60.0,
            idle_timeout=60.0,
        )
        server = PeerRPCServer(None, server_transport, node_handler)
        port = yield server.listen(0)
        client = HTTPClientTransport(reactor, tls=ClientTLS(pki.ca.cert), idle_timeout=60.0)
        self.addCleanup(client.stop)
        result = yield client.request(
            f"127.0.0.1:{port}", OutgoingRequest("r", "svc", {"a": 1}, 10.0)
        )
        self.assertEqual(result, {"echo": {"a": 1}, "key": "svc"})
        self.assertEqual(len(server_transport.factory.connections), 1)
        started = reactor.seconds()
        yield server.stop()
        self.assertLess(reactor.seconds() - started, 5.0)
        self.assertEqual(server_transport.factory.connections, set())
