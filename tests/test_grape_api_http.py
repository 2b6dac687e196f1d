"""Tests for grenache.grape.api_http: grenache-grape 1.0.0's HTTP API mapping, byte for byte.

The dispatcher is a fake that records its calls and answers with prepared values, so every
row of the mapping (docs/protocol.rst, *Grape HTTP API*) is checked on exact status lines and
bodies.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import protocol
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from grenache import errors
from grenache.codec import json_dumps
from grenache.grape.api_http import grape_http_factory
from grenache.http.server import HTTPServerFactory, HTTPServerProtocol

UUID = "74c457fe-eb5e-4c61-908b-da19514551b0"


def response(status: bytes, body: bytes, connection: bytes = b"keep-alive") -> bytes:
    """The exact bytes of a grape API response: no Date, no Content-Type."""
    return b"HTTP/1.1 %s\r\nContent-Length: %d\r\nConnection: %s\r\n\r\n%s" % (
        status,
        len(body),
        connection,
        body,
    )


def request(path: bytes, body: bytes, method: bytes = b"POST") -> bytes:
    """A request as node-fetch (the Node link) sends it."""
    return (
        b"%s %s HTTP/1.1\r\ncontent-type: application/json\r\nAccept: */*\r\n"
        b"Content-Length: %d\r\nHost: 127.0.0.1:30001\r\nConnection: keep-alive\r\n\r\n%s"
        % (method, path, len(body), body)
    )


PAYLOAD_INVALID = response(b"500 Internal Server Error", b"ERR_GRAPE_PAYLOAD_INVALID")
NOT_OBJECT = response(
    b"500 Internal Server Error", b"ERR_GRAPE_PAYLOAD_INVALID: body must be a JSON object"
)
PAYLOAD_SIZE = response(b"413 Payload Too Large", b"ERR_GRAPE_PAYLOAD_SIZE", b"close")
GENERIC = response(b"500 Internal Server Error", b"ERR_GRAPE_GENERIC")


class FakeDispatch:
    """Records ``(operation, data)`` and answers from ``answers[operation]``.

    An answer is a value (sent with ``succeed``), an exception (sent with ``fail``), a
    Deferred (returned as is) or a callable (called with the data, may raise).
    """

    def __init__(self, **answers: Any) -> None:
        self.answers = answers
        self.calls: list[tuple[str, Any]] = []

    def __call__(self, operation: str, data: Any) -> Deferred[Any]:
        self.calls.append((operation, data))
        answer = self.answers.get(operation, errors.GrapeRequestNotFound())
        if callable(answer) and not isinstance(answer, (Deferred, Exception)):
            answer = answer(data)
        if isinstance(answer, Deferred):
            return answer
        if isinstance(answer, Exception):
            return fail(answer)
        return succeed(answer)


class Grape:
    """A grape API factory on a Clock, with StringTransport connections."""

    def __init__(self, dispatch: FakeDispatch, **kwargs: Any) -> None:
        self.dispatch = dispatch
        clock: Any = Clock()  # Any: mypy without the zope plugin cannot see IReactorTime
        self.factory: HTTPServerFactory = grape_http_factory(dispatch, clock, **kwargs)

    def connect(self) -> tuple[HTTPServerProtocol, StringTransport]:
        proto = self.factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport

    def exchange(self, data: bytes) -> bytes:
        """Send ``data`` on a fresh connection and return what the grape wrote."""
        proto, transport = self.connect()
        proto.dataReceived(data)
        return transport.value()


def envelope(data: Any = None, raw: bytes | None = None) -> bytes:
    """The body a Node link sends: ``{"rid": <uuid>, "data": data}``."""
    if raw is not None:
        return raw
    return json_dumps({"rid": UUID, "data": data})


class SuccessTests(TestCase):
    def test_announce(self) -> None:
        """docs/protocol.rst, *Grape HTTP API*: announce answers the number of nodes, as JSON."""
        dispatch = FakeDispatch(announce=1)
        grape = Grape(dispatch)
        body = b'{"rid":"74c457fe-eb5e-4c61-908b-da19514551b0","data":["rpc_test",11337]}'
        self.assertEqual(len(body), 72)
        self.assertEqual(grape.exchange(request(b"/announce", body)), response(b"200 OK", b"1"))
        self.assertEqual(dispatch.calls, [("announce", ["rpc_test", 11337])])

    def test_lookup(self) -> None:
        """docs/protocol.rst, *Grape HTTP API*."""
        dispatch = FakeDispatch(lookup=["127.0.0.1:11337"])
        grape = Grape(dispatch)
        out = grape.exchange(request(b"/lookup", envelope("rpc_test")))
        self.assertEqual(out, response(b"200 OK", b'["127.0.0.1:11337"]'))
        self.assertEqual(dispatch.calls, [("lookup", "rpc_test")])

    def test_repeated_lookups_answer_each_result(self) -> None:
        """Each lookup answers its own result, whatever the previous ones answered (the last
        answer's response is reused only for an equal list of strings)."""
        answers = iter(
            [
                ["127.0.0.1:1"],
                ["127.0.0.1:1"],
                ["127.0.0.1:2", "127.0.0.1:1"],
                [],
                [1],
                [True],
                ["127.0.0.1:1"],
            ]
        )
        grape = Grape(FakeDispatch(lookup=lambda data: next(answers)))
        bodies = [
            b'["127.0.0.1:1"]',
            b'["127.0.0.1:1"]',
            b'["127.0.0.1:2","127.0.0.1:1"]',
            b"[]",
            b"[1]",
            b"[true]",
            b'["127.0.0.1:1"]',
        ]
        for body in bodies:
            out = grape.exchange(request(b"/lookup", envelope("rpc_test")))
            self.assertEqual(out, response(b"200 OK", body))

    def test_put_and_get(self) -> None:
        """A JSON string key, then a compact object with raw UTF-8 (*Grape HTTP API*)."""
        key = "6d33adc2b6b2c14c3036feefb7fedbca1a880527"
        item = {"id": "83b7398666f57eb741a0cad519cd029dcf95477f", "token": None, "v": "héllo"}
        dispatch = FakeDispatch(put=key, get=item)
        grape = Grape(dispatch)
        proto, transport = grape.connect()
        proto.dataReceived(request(b"/put", envelope({"v": "hello world"})))
        proto.dataReceived(request(b"/get", envelope(key)))
        self.assertEqual(
            transport.value(),
            response(b"200 OK", b'"6d33adc2b6b2c14c3036feefb7fedbca1a880527"')
            + response(
                b"200 OK",
                b'{"id":"83b7398666f57eb741a0cad519cd029dcf95477f","token":null,"v":"h\xc3\xa9llo"}',
            ),
        )
        self.assertEqual(dispatch.calls, [("put", {"v": "hello world"}), ("get", key)])

    def test_none_is_empty_body(self) -> None:
        """A get that finds nothing: 200, Content-Length 0, empty body."""
        grape = Grape(FakeDispatch(get=None))
        out = grape.exchange(request(b"/get", envelope("00" * 20)))
        self.assertEqual(
            out, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n"
        )

    def test_data_absent_and_rid_ignored(self) -> None:
        """Without ``data`` the operation gets None; ``rid`` (any type) is not looked at."""
        dispatch = FakeDispatch(lookup=[])
        grape = Grape(dispatch)
        out = grape.exchange(request(b"/lookup", b'{"rid":5}'))
        self.assertEqual(out, response(b"200 OK", b"[]"))
        grape.exchange(request(b"/lookup", b"{}"))
        self.assertEqual(dispatch.calls, [("lookup", None), ("lookup", None)])

    def test_methods_ignored(self) -> None:
        """GET, PUT and DELETE with a body work like POST."""
        dispatch = FakeDispatch(lookup=["1.2.3.4:5"])
        grape = Grape(dispatch)
        for method in [b"GET", b"PUT", b"DELETE", b"PATCH"]:
            out = grape.exchange(request(b"/lookup", envelope("svc"), method))
            self.assertEqual(out, response(b"200 OK", b'["1.2.3.4:5"]'), method)
        self.assertEqual(len(dispatch.calls), 4)

    def test_asynchronous_answers_in_order(self) -> None:
        """Pipelined requests answered out of order by the dispatcher go out in order."""
        slow: Deferred[Any] = Deferred()
        dispatch = FakeDispatch(announce=slow, lookup=["a:1"])
        grape = Grape(dispatch)
        proto, transport = grape.connect()
        proto.dataReceived(
            request(b"/announce", envelope(["s", 1])) + request(b"/lookup", envelope("s"))
        )
        self.assertEqual(transport.value(), b"")
        slow.callback(3)
        self.assertEqual(
            transport.value(), response(b"200 OK", b"3") + response(b"200 OK", b'["a:1"]')
        )


class PathTests(TestCase):
    def test_unknown_paths_are_dispatched(self) -> None:
        """Every path goes to the dispatcher verbatim; it answers ERR_REQ_NOTFOUND (200)."""
        dispatch = FakeDispatch(lookup=["x:1"])
        grape = Grape(dispatch)
        for path in [b"/foo", b"/lookup?x=1", b"/LOOKUP", b"/", b"/lookup/", b"/%6Cookup"]:
            out = grape.exchange(request(path, envelope("svc")))
            self.assertEqual(out, response(b"200 OK", b'"ERR_REQ_NOTFOUND"'), path)
        self.assertEqual(
            [op for op, _ in dispatch.calls],
            ["foo", "lookup?x=1", "LOOKUP", "", "lookup/", "%6Cookup"],
        )


class PayloadTests(TestCase):
    def test_not_json(self) -> None:
        """Garbage, empty, invalid UTF-8, NaN, trailing junk: 500 ERR_GRAPE_PAYLOAD_INVALID."""
        dispatch = FakeDispatch(lookup=[])
        grape = Grape(dispatch)
        for body in [
            b"garbage",
            b"",
            b'{"data":"\xff"}',
            b'{"data":NaN}',
            b'{"data":1} x',
            b"{'data':1}",
            # unclosed and deep: json's recursion limit on Python <= 3.12, a decode error on
            # 3.13 (which decodes 4000 levels); within the 8 KiB body limit
            b"[" * 8000,
        ]:
            self.assertEqual(grape.exchange(request(b"/lookup", body)), PAYLOAD_INVALID, body[:40])
        self.assertEqual(dispatch.calls, [])

    def test_get_without_body(self) -> None:
        """A plain GET (no body) is not JSON either."""
        grape = Grape(FakeDispatch())
        self.assertEqual(grape.exchange(b"GET /lookup HTTP/1.1\r\n\r\n"), PAYLOAD_INVALID)

    def test_not_an_object(self) -> None:
        """JSON that is not an object: 500 with a plain explanation, nothing dispatched."""
        dispatch = FakeDispatch(lookup=[])
        grape = Grape(dispatch)
        for body in [b"null", b"5", b"[1]", b'"str"', b"true"]:
            self.assertEqual(grape.exchange(request(b"/lookup", body)), NOT_OBJECT, body)
        self.assertEqual(dispatch.calls, [])

    def test_body_limit(self) -> None:
        """With the default limit 8192 bytes are accepted and 8193 refused with 413."""
        dispatch = FakeDispatch(lookup=[])
        grape = Grape(dispatch)
        head = b'{"rid":"x","data":"'
        at_limit = head + b"a" * (8192 - len(head) - 2) + b'"}'
        self.assertEqual(len(at_limit), 8192)
        self.assertEqual(grape.exchange(request(b"/lookup", at_limit)), response(b"200 OK", b"[]"))
        over = head + b"a" * (8193 - len(head) - 2) + b'"}'
        proto, transport = grape.connect()
        proto.dataReceived(request(b"/lookup", over))
        self.assertEqual(transport.value(), PAYLOAD_SIZE)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(dispatch.calls), 1)
        # A new connection is served.
        self.assertEqual(
            grape.exchange(request(b"/lookup", envelope("s"))), response(b"200 OK", b"[]")
        )

    def test_chunked_body_over_limit(self) -> None:
        grape = Grape(FakeDispatch(), max_body_size=100)
        out = grape.exchange(
            b"POST /put HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            + (b"40\r\n" + b"x" * 64 + b"\r\n") * 3
        )
        self.assertEqual(out, PAYLOAD_SIZE)

    def test_custom_limit_and_unlimited(self) -> None:
        dispatch = FakeDispatch(put="k")
        small = Grape(dispatch, max_body_size=10)
        self.assertEqual(small.exchange(request(b"/put", envelope("v"))), PAYLOAD_SIZE)
        unlimited = Grape(dispatch, max_body_size=None)
        big = envelope("v" * 200_000)
        self.assertEqual(unlimited.exchange(request(b"/put", big)), response(b"200 OK", b'"k"'))
        self.assertEqual(dispatch.calls, [("put", "v" * 200_000)])


class ErrorMappingTests(TestCase):
    def check(self, error: Exception, expected: bytes) -> None:
        grape = Grape(FakeDispatch(put=error))
        self.assertEqual(grape.exchange(request(b"/put", envelope({"v": "x"}))), expected)

    def test_krpc_3xx(self) -> None:
        """KRPC 301/302 become the HTTP status with the message as a JSON string."""
        self.check(
            errors.KRPCError(302, "sequence number less than current"),
            response(b"302 Found", b'"302 sequence number less than current"'),
        )
        self.check(
            errors.KRPCError(301, "CAS mismatch, re-read and try again"),
            response(b"301 Moved Permanently", b'"301 CAS mismatch, re-read and try again"'),
        )
        self.check(errors.KRPCError(399, "odd"), response(b"399 unknown", b'"399 odd"'))

    def test_krpc_other_codes(self) -> None:
        """Other KRPC codes are plain grape errors: 200 and a JSON string."""
        self.check(errors.KRPCError(205, "too big"), response(b"200 OK", b'"205 too big"'))
        self.check(errors.KRPCError(400, "no"), response(b"200 OK", b'"400 no"'))

    def test_data_invalid(self) -> None:
        """GrapeDataInvalid: 500 with the message as plain text."""
        self.check(
            errors.GrapeDataInvalid("opts.k must be 32 bytes"),
            response(b"500 Internal Server Error", b"opts.k must be 32 bytes"),
        )
        self.check(
            errors.GrapeDataInvalid("bad \ud800 é"),
            response(b"500 Internal Server Error", b"bad \xef\xbf\xbd \xc3\xa9"),
        )

    def test_grenache_errors(self) -> None:
        """Every other GrenacheError: 200 and its message as a JSON string."""
        for error, body in [
            (errors.GrapeRequestNotFound(), b'"ERR_REQ_NOTFOUND"'),
            (errors.GrapeLookupInvalid(), b'"ERR_GRAPE_LOOKUP"'),
            (errors.GrapeAnnounceInvalid(), b'"ERR_GRAPE_ANNOUNCE"'),
            (errors.GrapeServicePortInvalid(), b'"ERR_GRAPE_SERVICE_PORT"'),
            (errors.GrapeHashFormat(), b'"ERR_GRAPE_HASH_FORMAT"'),
            (errors.NoNodesToQuery(), b'"No nodes to query"'),
            (errors.AllQueriesFailed(), b'"All queries failed"'),
            (
                errors.InvalidPut("v must be less than 1000 bytes in put()"),
                b'"v must be less than 1000 bytes in put()"',
            ),
            (errors.KRPCTimeout(), b'"ETIMEDOUT"'),
            (errors.DHTError('quote " and é'), b'"quote \\" and \xc3\xa9"'),
        ]:
            self.check(error, response(b"200 OK", body))

    def test_bad_port_is_24_bytes(self) -> None:
        """The bad-port answer is 24 bytes including the quotes (*Grape HTTP API*)."""
        dispatch = FakeDispatch(announce=errors.GrapeServicePortInvalid())
        grape = Grape(dispatch)
        out = grape.exchange(request(b"/announce", b'{"rid":"x","data":["svc","1337"]}'))
        self.assertEqual(out, response(b"200 OK", b'"ERR_GRAPE_SERVICE_PORT"'))
        self.assertIn(b"Content-Length: 24\r\n", out)

    def test_other_exception(self) -> None:
        """Anything else is a bug: 500 ERR_GRAPE_GENERIC, logged."""
        self.check(RuntimeError("boom"), GENERIC)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_dispatch_raises_synchronously(self) -> None:
        def explode(data: Any) -> Any:
            raise errors.GrapeLookupInvalid()

        def crash(data: Any) -> Any:
            raise ZeroDivisionError()

        grape = Grape(FakeDispatch(lookup=explode, announce=crash))
        out = grape.exchange(request(b"/lookup", envelope(5)))
        self.assertEqual(out, response(b"200 OK", b'"ERR_GRAPE_LOOKUP"'))
        self.assertEqual(grape.exchange(request(b"/announce", envelope([]))), GENERIC)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_result_not_json(self) -> None:
        """A result JSON cannot encode is a bug too."""
        grape = Grape(FakeDispatch(get=object()))
        self.assertEqual(grape.exchange(request(b"/get", envelope("x"))), GENERIC)
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)


class ConnectionTests(TestCase):
    def test_keep_alive_across_good_and_bad_requests(self) -> None:
        """One connection serves requests before and after every kind of bad input."""
        dispatch = FakeDispatch(
            lookup=["1.1.1.1:1"],
            put=errors.GrapeDataInvalid("bad data"),
            get=RuntimeError("bug"),
            announce=errors.KRPCError(302, "sequence number less than current"),
        )
        grape = Grape(dispatch)
        proto, transport = grape.connect()
        good = response(b"200 OK", b'["1.1.1.1:1"]')
        exchanges = [
            (request(b"/lookup", envelope("a")), good),
            (request(b"/lookup", b"garbage"), PAYLOAD_INVALID),
            (request(b"/lookup", envelope("b")), good),
            (request(b"/lookup", b"null"), NOT_OBJECT),
            (request(b"/lookup", envelope("c")), good),
            (request(b"/put", envelope({})), response(b"500 Internal Server Error", b"bad data")),
            (request(b"/lookup", envelope("d")), good),
            (request(b"/get", envelope("x")), GENERIC),
            (request(b"/nope", envelope("x")), response(b"200 OK", b'"ERR_REQ_NOTFOUND"')),
            (
                request(b"/announce", envelope(["s", 1])),
                response(b"302 Found", b'"302 sequence number less than current"'),
            ),
            (request(b"/lookup", envelope("e")), good),
        ]
        for data, expected in exchanges:
            proto.dataReceived(data)
            self.assertEqual(transport.value(), expected, data)
            transport.clear()
        self.assertFalse(transport.disconnecting)
        self.flushLoggedErrors(RuntimeError)

    def test_pipelined_batch(self) -> None:
        """The same exchanges sent in one write come back in order."""
        dispatch = FakeDispatch(lookup=["1.1.1.1:1"])
        grape = Grape(dispatch)
        proto, transport = grape.connect()
        proto.dataReceived(
            request(b"/lookup", envelope("a"))
            + request(b"/lookup", b"")
            + request(b"/LOOKUP", envelope("a"))
            + request(b"/lookup", envelope("a"))
        )
        good = response(b"200 OK", b'["1.1.1.1:1"]')
        self.assertEqual(
            transport.value(),
            good + PAYLOAD_INVALID + response(b"200 OK", b'"ERR_REQ_NOTFOUND"') + good,
        )

    def test_malformed_http_then_new_connection(self) -> None:
        grape = Grape(FakeDispatch(lookup=[]))
        proto, transport = grape.connect()
        proto.dataReceived(b"\x16\x03\x01 not http\r\n\r\n")
        self.assertEqual(transport.value(), response(b"400 Bad Request", b"Bad Request", b"close"))
        proto.connectionLost(protocol.connectionDone)
        self.assertEqual(
            grape.exchange(request(b"/lookup", envelope("s"))), response(b"200 OK", b"[]")
        )

    def test_no_content_type(self) -> None:
        grape = Grape(FakeDispatch(lookup=[]))
        out = grape.exchange(request(b"/lookup", envelope("s")))
        self.assertNotIn(b"content-type", out.lower())
        self.assertNotIn(b"date:", out.lower())
