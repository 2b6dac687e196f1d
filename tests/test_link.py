"""Tests for grenache.link, in memory.

HTTP mode runs the link's real HTTP client against a fake grape ``Resource`` through
``treq.testing.RequestTraversalAgent`` (real HTTP requests and responses, no sockets); time is
a ``Clock``.
WebSocket mode runs a real autobahn client against the grape's WebSocket API
(:func:`grenache.grape.api_ws.grape_ws_factory`) around a fake dispatcher, connected by
``autobahn.twisted.testing``'s memory agent over ``iosim`` transports that the tests pump.
"""

from __future__ import annotations

import itertools
import random
import re
import uuid
from collections.abc import Callable
from typing import Any, cast

import attrs
from autobahn.twisted.testing import MemoryReactorClockResolver, create_memory_agent
from treq.testing import RequestTraversalAgent
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.error import ConnectionLost, ConnectionRefusedError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web.client import ResponseNeverReceived
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from grenache import codec, errors
from grenache.dht import bep44
from grenache.grape.api_ws import GrapeWebSocketFactory, grape_ws_factory
from grenache.link import (
    DEFAULT_ANNOUNCE_INTERVAL,
    HTTPGrapeClient,
    Item,
    Link,
    WSGrapeClient,
)
from grenache.link import announce as announce_module
from tests.support import HeldDispatch, SyncPumper

GRAPE = "http://127.0.0.1:30001"
HELLO_KEY = "6d33adc2b6b2c14c3036feefb7fedbca1a880527"
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")

# A get answered by a remote node for the salted BEP 44 vector (docs/protocol.rst, *BEP 44 items*).
VECTOR_GET = (
    b'{"id":"0036275525529a8122ca4a3fc6cf32f8c5d9dfa0",'
    b'"k":"77ff84905a91936367c01360803104f92432fcd904a43511876df5cdf3e7e548","seq":1,'
    b'"sig":"6834284b6b24c3204eb2fea824d82f88883a3d95e8b4a21b8c0ded553d17d17d'
    b'df9a8a7104b1258f30bed3787e6cb896fca78c58f8e03b5f18f14951a87d9a08",'
    b'"token":"6c7f8766f85e488001fbf27a5dcca6091b29e88b","v":"Hello World!","salt":"foobar"}'
)

# RFC 8032 section 7.1, TEST 1 seed.
SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bade210ae7f60")


# --- a fake grape HTTP API ------------------------------------------------------------------


@attrs.define
class Seen:
    """One request the fake grape received; ``reply`` answers a held one."""

    type: str
    method: bytes
    headers: dict[bytes, list[bytes]]
    body: bytes
    request: Request
    stub: RequestTraversalAgent | None = None

    @property
    def rid(self) -> str:
        rid = codec.json_loads(self.body)["rid"]
        assert isinstance(rid, str)
        return rid

    @property
    def data(self) -> Any:
        return codec.json_loads(self.body)["data"]

    def reply(self, status: int, body: bytes) -> None:
        self.request.setResponseCode(status)
        self.request.setHeader(b"content-length", str(len(body)).encode())
        self.request.write(body)
        self.request.finish()
        assert self.stub is not None
        self.stub.flush()


Reply = tuple[int, bytes] | None
"""``(status, body)`` to answer at once, or ``None`` to hold the request for ``Seen.reply``."""


class FakeGrape(Resource):
    """A grape HTTP API whose answers come from ``handler(seen)``."""

    isLeaf = True

    def __init__(self, handler: Callable[[Seen], Reply]) -> None:
        super().__init__()
        self.handler = handler
        self.seen: list[Seen] = []
        self.stub: RequestTraversalAgent | None = None

    def render(self, request: Request) -> bytes | int:
        assert request.content is not None and request.method is not None
        seen = Seen(
            type=request.path.decode()[1:],
            method=request.method,
            headers={k: list(v) for k, v in request.requestHeaders.getAllRawHeaders()},
            body=request.content.read(),
            request=request,
            stub=self.stub,
        )
        self.seen.append(seen)
        outcome = self.handler(seen)
        if outcome is None:
            return NOT_DONE_YET
        status, body = outcome
        request.setResponseCode(status)
        return body


def answer(body: bytes, status: int = 200) -> Callable[[Seen], Reply]:
    return lambda seen: (status, body)


def hold(seen: Seen) -> Reply:
    return None


def due(call: Any) -> float:
    """When a DelayedCall is due (typed loosely: IDelayedCall is a zope interface)."""
    return float(call.getTime())


class FlakyHTTP:
    """An agent whose first ``failures`` requests fail as ``error`` says."""

    def __init__(self, agent: Any, failures: int, error: Callable[[], Exception]) -> None:
        self.agent: Any = agent
        self.failures = failures
        self.error = error
        self.calls = 0

    def request(self, method: bytes, uri: bytes, headers: Any, body: Any) -> Deferred[Any]:
        self.calls += 1
        if self.calls <= self.failures:
            return fail(self.error())
        return cast(Deferred[Any], self.agent.request(method, uri, headers, body))


class HTTPCase(unittest.TestCase):
    """A link on a Clock talking to a FakeGrape."""

    def make(self, handler: Callable[[Seen], Reply], **kwargs: Any) -> Link:
        self.clock = Clock()
        self.grape = FakeGrape(handler)
        self.stub = RequestTraversalAgent(self.grape)
        self.grape.stub = self.stub
        http = kwargs.pop("http_agent", self.stub)
        self.link = Link(GRAPE, reactor=self.clock, http_agent=http, **kwargs)
        self.link.start()
        return self.link

    def assertNoTimers(self) -> None:
        self.assertEqual(self.clock.getDelayedCalls(), [])


# --- HTTP requests and results ----------------------------------------------------------------


class HTTPWireTests(HTTPCase):
    def test_lookup_request_and_result(self) -> None:
        """POST /lookup, content-type application/json, body {"rid":<uuid4>,"data":name}."""
        link = self.make(answer(b'["127.0.0.1:1337","10.0.0.2:40001"]'))
        result = self.successResultOf(link.lookup("rpc_test"))
        self.assertEqual(result, ["127.0.0.1:1337", "10.0.0.2:40001"])
        [seen] = self.grape.seen
        self.assertEqual((seen.method, seen.type), (b"POST", "lookup"))
        self.assertEqual(seen.headers[b"Content-Type"], [b"application/json"])
        self.assertRegex(seen.rid, UUID4)
        self.assertEqual(seen.body, b'{"rid":"' + seen.rid.encode() + b'","data":"rpc_test"}')
        self.assertNoTimers()

    def test_rids_are_fresh(self) -> None:
        link = self.make(answer(b"1"))
        self.successResultOf(link.announce("a", 1))
        self.successResultOf(link.announce("a", 2))
        self.assertNotEqual(self.grape.seen[0].rid, self.grape.seen[1].rid)

    def test_announce(self) -> None:
        link = self.make(answer(b"3"))
        self.assertEqual(self.successResultOf(link.announce("rpc_test", 11337)), 3)
        [seen] = self.grape.seen
        self.assertEqual(seen.type, "announce")
        self.assertEqual(
            seen.body, b'{"rid":"' + seen.rid.encode() + b'","data":["rpc_test",11337]}'
        )

    def test_announce_observers_see_each_outcome(self) -> None:
        link = self.make(answer(b'"No nodes to query"'))
        seen: list[tuple[Any, str]] = []
        link.announce_observers.append(lambda out, name: seen.append((out, name)) or out)
        d = link.announce("rpc_test", 11337, retry=1)
        self.failureResultOf(d, errors.GrapeReplyError)
        [(outcome, name)] = seen
        self.assertEqual(name, "rpc_test")
        self.assertTrue(outcome.check(errors.GrapeReplyError))

    def test_unicode_name(self) -> None:
        """Names go out as raw UTF-8, as JSON.stringify writes them."""
        link = self.make(answer(b'["127.0.0.1:1"]'))
        self.successResultOf(link.lookup("sérvice:ü"))
        self.assertIn('"data":"sérvice:ü"}'.encode(), self.grape.seen[0].body)

    def test_put_immutable_exact_bytes(self) -> None:
        link = self.make(answer(b'"' + HELLO_KEY.encode() + b'"'))
        self.assertEqual(self.successResultOf(link.put("hello world")), HELLO_KEY)
        [seen] = self.grape.seen
        self.assertEqual(seen.type, "put")
        self.assertEqual(
            seen.body, b'{"rid":"' + seen.rid.encode() + b'","data":{"v":"hello world"}}'
        )

    def test_put_mutable_signed(self) -> None:
        link = self.make(lambda seen: (200, b'"' + _mutable_hash(seen).encode() + b'"'))
        key = self.successResultOf(link.put("Hello World!", private_key=SEED, seq=1))
        [seen] = self.grape.seen
        data = seen.data
        self.assertEqual(list(data), ["v", "seq", "k", "sig"])
        public = bep44.public_key_of(SEED)
        self.assertEqual(data["k"], public.hex())
        self.assertEqual((data["v"], data["seq"]), ("Hello World!", 1))
        message = b"3:seqi1e1:v12:Hello World!"
        self.assertEqual(bep44.signature_buffer(b"Hello World!", 1), message)
        self.assertTrue(bep44.verify(bytes.fromhex(data["sig"]), message, public))
        self.assertEqual(key, bep44.mutable_key(public).hex())

    def test_put_mutable_salt_and_cas(self) -> None:
        link = self.make(lambda seen: (200, b'"' + _mutable_hash(seen).encode() + b'"'))
        value = "välue"
        key = self.successResultOf(link.put(value, private_key=SEED, seq=7, salt="foobar", cas=6))
        data = self.grape.seen[0].data
        self.assertEqual(list(data), ["v", "seq", "k", "salt", "sig", "cas"])
        self.assertEqual((data["salt"], data["seq"], data["cas"]), ("foobar", 7, 6))
        public = bep44.public_key_of(SEED)
        message = b"4:salt6:foobar3:seqi7e1:v6:" + value.encode()
        self.assertEqual(bep44.signature_buffer(value.encode(), 7, b"foobar"), message)
        self.assertTrue(bep44.verify(bytes.fromhex(data["sig"]), message, public))
        self.assertFalse(
            bep44.verify(bytes.fromhex(data["sig"]), bep44.signature_buffer(b"x", 7), public)
        )
        self.assertEqual(key, bep44.mutable_key(public, b"foobar").hex())

    def test_put_argument_errors(self) -> None:
        link = self.make(answer(b"1"))
        self.assertRaises(ValueError, link.put, "x", seq=1)
        self.assertRaises(ValueError, link.put, "x", salt="s")
        self.assertRaises(ValueError, link.put, "x", cas=1)
        self.assertRaises(ValueError, link.put, "x", private_key=SEED)
        self.assertRaises(ValueError, link.put, "x", private_key=b"short", seq=1)
        self.assertRaises(TypeError, link.put, b"bytes")
        self.assertEqual(self.grape.seen, [])

    def test_get_immutable_local(self) -> None:
        body = b'{"id":"' + b"83" * 20 + b'","token":null,"v":"hello world"}'
        link = self.make(answer(body))
        item = self.successResultOf(link.get(HELLO_KEY))
        self.assertEqual(item, Item(v="hello world", id="83" * 20, token=None))
        self.assertFalse(item is not None and item.mutable)
        [seen] = self.grape.seen
        self.assertEqual(
            seen.body, b'{"rid":"' + seen.rid.encode() + b'","data":"' + HELLO_KEY.encode() + b'"}'
        )

    def test_get_mutable_salted(self) -> None:
        link = self.make(answer(VECTOR_GET))
        item = self.successResultOf(
            link.get("411eba73b6f087ca51a3795d9c8c938d365e32c1", salt="foobar")
        )
        assert item is not None
        self.assertEqual(
            self.grape.seen[0].data,
            {"hash": "411eba73b6f087ca51a3795d9c8c938d365e32c1", "salt": "foobar"},
        )
        self.assertTrue(item.mutable)
        self.assertEqual(item.v, "Hello World!")
        self.assertEqual(item.seq, 1)
        self.assertEqual(item.salt, "foobar")
        self.assertEqual(item.token, "6c7f8766f85e488001fbf27a5dcca6091b29e88b")
        self.assertEqual(item.k, "77ff84905a91936367c01360803104f92432fcd904a43511876df5cdf3e7e548")
        assert item.sig is not None and item.k is not None and item.seq is not None
        self.assertTrue(
            bep44.verify(
                bytes.fromhex(item.sig),
                bep44.signature_buffer(item.v.encode(), item.seq, b"foobar"),
                bytes.fromhex(item.k),
            )
        )

    def test_get_not_found_is_none(self) -> None:
        """An empty body (Content-Length: 0) is "not found"."""
        link = self.make(answer(b""))
        self.assertIsNone(self.successResultOf(link.get(HELLO_KEY)))

    def test_get_malformed_result(self) -> None:
        link = self.make(answer(b'{"id":5,"v":"x","token":null}'))
        error = self.failureResultOf(link.get(HELLO_KEY), errors.GrapeReplyError).value
        self.assertEqual(error.status, 200)


# --- errors -----------------------------------------------------------------------------------


class ErrorTests(HTTPCase):
    def test_lookup_empty(self) -> None:
        link = self.make(answer(b"[]"))
        error = self.failureResultOf(link.lookup("nobody"), errors.LookupEmpty).value
        self.assertEqual(error.message, "ERR_GRAPE_LOOKUP_EMPTY")
        self.assertIsInstance(error, errors.LinkError)
        self.assertEqual(len(self.grape.seen), 1, "an answer is not retried")

    def assertReply(self, d: Deferred[Any], message: str, status: int | None) -> None:
        error = self.failureResultOf(d, errors.GrapeReplyError).value
        self.assertEqual((error.message, error.wire, error.status), (message, message, status))
        self.assertIsInstance(error, errors.LinkError)

    def test_error_strings_in_2xx(self) -> None:
        """A JSON string where the operation expects another type is the grape's error."""
        cases: list[tuple[Callable[[Link], Deferred[Any]], bytes, str]] = [
            (lambda link: link.lookup("x"), b'"ERR_GRAPE_LOOKUP"', "ERR_GRAPE_LOOKUP"),
            (lambda link: link.announce("x", 1), b'"No nodes to query"', "No nodes to query"),
            (
                lambda link: link.announce("x", 1),
                b'"ERR_GRAPE_SERVICE_PORT"',
                "ERR_GRAPE_SERVICE_PORT",
            ),
            (lambda link: link.put("x"), b'"All queries failed"', "All queries failed"),
            (lambda link: link.put("x"), b'"opts.v not given"', "opts.v not given"),
            (lambda link: link.get(HELLO_KEY), b'"ERR_GRAPE_HASH_FORMAT"', "ERR_GRAPE_HASH_FORMAT"),
            (lambda link: link.lookup("x"), b'{"a":1}', '{"a":1}'),
            (lambda link: link.announce("x", 1), b"true", "true"),
            (lambda link: link.put("x"), b"not json", "not json"),
        ]
        for call, body, message in cases:
            link = self.make(answer(body))
            self.assertReply(call(link), message, 200)
            self.assertEqual(len(self.grape.seen), 1, "a grape answer is never retried")

    def test_non_2xx(self) -> None:
        """The body is the message: JSON-decoded if it is a JSON string, else raw text."""
        cases = [
            (
                302,
                b'"302 sequence number less than current"',
                "302 sequence number less than current",
            ),
            (
                301,
                b'"301 CAS mismatch, re-read and try again"',
                "301 CAS mismatch, re-read and try again",
            ),
            (500, b"ERR_GRAPE_PAYLOAD_INVALID", "ERR_GRAPE_PAYLOAD_INVALID"),
            (413, b"ERR_GRAPE_PAYLOAD_SIZE", "ERR_GRAPE_PAYLOAD_SIZE"),
            (
                500,
                b"Cannot read properties of null (reading 'data')",
                "Cannot read properties of null (reading 'data')",
            ),
            (500, b"[1]", "[1]"),
        ]
        for status, body, message in cases:
            link = self.make(answer(body, status))
            self.assertReply(link.put("x", private_key=SEED, seq=1), message, status)
            self.assertReply(link.lookup("x"), message, status)
            self.assertEqual(len(self.grape.seen), 2, "a grape answer is never retried")

    def test_grape_unreachable(self) -> None:
        def refused() -> Exception:
            return ConnectionRefusedError("111: Connection refused")

        flaky = FlakyHTTP(RequestTraversalAgent(FakeGrape(answer(b"1"))), 99, refused)
        link = self.make(answer(b"1"), http_agent=flaky)
        error = self.failureResultOf(link.lookup("x"), errors.GrapeUnreachable).value
        self.assertEqual(flaky.calls, 3)
        self.assertTrue(
            error.message.startswith("ERR_GRAPE_UNREACHABLE: POST " + GRAPE + "/lookup")
        )
        self.assertIn("Connection refused", error.message)
        self.assertEqual(error.wire, "ERR_GRAPE_UNREACHABLE")
        self.assertNoTimers()

    def test_connection_reset(self) -> None:
        def reset() -> Exception:
            return ResponseNeverReceived([Failure(ConnectionLost("Connection reset by peer"))])

        flaky = FlakyHTTP(RequestTraversalAgent(FakeGrape(answer(b"1"))), 99, reset)
        link = self.make(answer(b"1"), http_agent=flaky)
        error = self.failureResultOf(link.put("x"), errors.GrapeUnreachable).value
        self.assertIn("Connection reset by peer", error.message)
        self.assertEqual(flaky.calls, 1, "put is sent once, as in Node")

    def test_timeout(self) -> None:
        link = self.make(hold)
        d = link.put("x")
        self.clock.advance(2.49)
        self.assertNoResult(d)
        self.clock.advance(0.01)
        error = self.failureResultOf(d, errors.RequestTimeout).value
        self.assertEqual(error.message, "ERR_TIMEOUT")
        self.assertNoTimers()

    def test_timeout_configurable_and_retried(self) -> None:
        """A timeout is a transport failure: retried at once, each attempt with its timer."""
        link = self.make(hold, request_timeout=1.0)
        d = link.lookup("x")
        for attempt in range(1, 4):
            self.assertEqual(len(self.grape.seen), attempt)
            self.assertEqual(len(self.clock.getDelayedCalls()), 1)
            self.assertNoResult(d)
            self.clock.advance(1.0)
        self.failureResultOf(d, errors.RequestTimeout)
        self.assertNoTimers()

    def test_late_reply_after_timeout_ignored(self) -> None:
        link = self.make(hold)
        d = link.announce("x", 1, retry=1)
        self.clock.advance(2.5)
        self.failureResultOf(d, errors.RequestTimeout)
        self.assertNoTimers()
        # The grape answering afterwards changes nothing, and the next request is new.
        self.grape.seen[0].reply(200, b"1")
        self.grape.handler = answer(b"2")
        self.assertEqual(self.successResultOf(link.announce("x", 1)), 2)
        self.assertEqual(len(self.grape.seen), 2)


def _mutable_hash(seen: Seen) -> str:
    data = seen.data
    salt = data.get("salt")
    return bep44.mutable_key(bytes.fromhex(data["k"]), salt.encode() if salt else None).hex()


# --- retries, coalescing, cache ------------------------------------------------------------


class RetryTests(HTTPCase):
    def test_retry_then_success(self) -> None:
        flaky = FlakyHTTP(
            RequestTraversalAgent(FakeGrape(answer(b"1"))), 2, lambda: ConnectionRefusedError()
        )
        link = self.make(answer(b'["127.0.0.1:1"]'), http_agent=flaky)
        flaky.agent = self.stub  # the attempts that get through reach this test's grape
        self.assertEqual(self.successResultOf(link.lookup("x")), ["127.0.0.1:1"])
        self.assertEqual(flaky.calls, 3)
        self.assertEqual(len(self.grape.seen), 1)

    def test_retry_count(self) -> None:
        flaky = FlakyHTTP(
            RequestTraversalAgent(FakeGrape(answer(b"1"))), 99, lambda: ConnectionRefusedError()
        )
        link = self.make(answer(b"1"), http_agent=flaky)
        self.failureResultOf(link.lookup("x", retry=5), errors.GrapeUnreachable)
        self.assertEqual(flaky.calls, 5)
        flaky.calls = 0
        self.failureResultOf(link.announce("x", 1), errors.GrapeUnreachable)
        self.assertEqual(flaky.calls, 3)
        flaky.calls = 0
        self.failureResultOf(link.get(HELLO_KEY), errors.GrapeUnreachable)
        self.assertEqual(flaky.calls, 1)
        flaky.calls = 0
        self.failureResultOf(link.get(HELLO_KEY, retry=2), errors.GrapeUnreachable)
        self.assertEqual(flaky.calls, 2)


class CoalescingTests(HTTPCase):
    def test_identical_lookups_share_one_request(self) -> None:
        link = self.make(hold)
        d1 = link.lookup("svc")
        d2 = link.lookup("svc")
        d3 = link.lookup("other")
        self.assertEqual([s.data for s in self.grape.seen], ["svc", "other"])
        self.assertEqual(len(self.clock.getDelayedCalls()), 2, "one timer per grape request")
        self.grape.seen[0].reply(200, b'["127.0.0.1:1"]')
        r1, r2 = self.successResultOf(d1), self.successResultOf(d2)
        self.assertEqual(r1, ["127.0.0.1:1"])
        self.assertEqual(r1, r2)
        self.assertIsNot(r1, r2, "each caller gets its own list")
        self.assertNoResult(d3)
        self.grape.seen[1].reply(200, b"[]")
        self.failureResultOf(d3, errors.LookupEmpty)
        self.assertNoTimers()

    def test_shared_errors(self) -> None:
        link = self.make(hold)
        d1 = link.announce("svc", 1)
        d2 = link.announce("svc", 1)
        d3 = link.announce("svc", 2)
        self.assertEqual(len(self.grape.seen), 2)
        self.grape.seen[0].reply(200, b'"No nodes to query"')
        self.failureResultOf(d1, errors.GrapeReplyError)
        self.failureResultOf(d2, errors.GrapeReplyError)
        self.grape.seen[1].reply(200, b"1")
        self.assertEqual(self.successResultOf(d3), 1)

    def test_cancel_one_waiter(self) -> None:
        """A caller that cancels leaves; the last one to leave cancels the grape request."""
        link = self.make(hold)
        d1 = link.lookup("svc")
        d2 = link.lookup("svc")
        d1.cancel()
        self.failureResultOf(d1, CancelledError)
        self.grape.seen[0].reply(200, b'["127.0.0.1:1"]')
        self.assertEqual(self.successResultOf(d2), ["127.0.0.1:1"])
        d3 = link.lookup("other")
        d3.cancel()
        self.failureResultOf(d3, CancelledError)
        self.assertNoTimers()

    def test_after_reply_a_new_request(self) -> None:
        link = self.make(answer(b"1"))
        self.successResultOf(link.announce("svc", 1))
        self.successResultOf(link.announce("svc", 1))
        self.assertEqual(len(self.grape.seen), 2)


class CacheTests(HTTPCase):
    def test_hit_within_ttl_miss_after(self) -> None:
        link = self.make(answer(b'["127.0.0.1:1"]'))
        self.assertEqual(self.successResultOf(link.lookup("svc")), ["127.0.0.1:1"])
        self.clock.advance(9.9)
        result = self.successResultOf(link.lookup("svc"))
        self.assertEqual(result, ["127.0.0.1:1"])
        self.assertEqual(len(self.grape.seen), 1)
        result.append("mutated by the caller")
        self.assertEqual(self.successResultOf(link.lookup("svc")), ["127.0.0.1:1"])
        self.clock.advance(0.1)
        self.successResultOf(link.lookup("svc"))
        self.assertEqual(len(self.grape.seen), 2, "10 s after insertion, reads do not refresh")

    def test_hit_is_checked_like_a_reply(self) -> None:
        """A cached entry goes through the same result check as a fresh reply."""
        link = self.make(answer(b'["127.0.0.1:1"]'))
        link._cache.put(b'lookup:"svc"', [1])  # type: ignore[list-item]
        self.failureResultOf(link.lookup("svc"), errors.GrapeReplyError)
        self.assertEqual(len(self.grape.seen), 0)

    def test_empty_not_cached(self) -> None:
        replies = [b"[]", b'["127.0.0.1:1"]']
        link = self.make(lambda seen: (200, replies[len(self.grape.seen) - 1]))
        self.failureResultOf(link.lookup("svc"), errors.LookupEmpty)
        self.assertEqual(self.successResultOf(link.lookup("svc")), ["127.0.0.1:1"])
        self.assertEqual(len(self.grape.seen), 2)

    def test_errors_not_cached(self) -> None:
        replies = [b'"ERR_GRAPE_LOOKUP"', b'["127.0.0.1:1"]']
        link = self.make(lambda seen: (200, replies[len(self.grape.seen) - 1]))
        self.failureResultOf(link.lookup("svc"), errors.GrapeReplyError)
        self.successResultOf(link.lookup("svc"))

    def test_cache_false_skips_the_read(self) -> None:
        link = self.make(answer(b'["127.0.0.1:1"]'))
        self.successResultOf(link.lookup("svc"))
        self.successResultOf(link.lookup("svc", cache=False))
        self.assertEqual(len(self.grape.seen), 2)

    def test_bounded_lru(self) -> None:
        link = self.make(
            lambda seen: (200, codec.json_dumps([f"127.0.0.1:{len(seen.data)}"])),
            lookup_cache_size=2,
        )
        for name in ("a", "bb", "a", "ccc"):  # "a" is used again, so "bb" is the LRU one
            self.successResultOf(link.lookup(name))
        self.assertEqual(len(self.grape.seen), 3)
        self.successResultOf(link.lookup("a"))
        self.successResultOf(link.lookup("ccc"))
        self.assertEqual(len(self.grape.seen), 3)
        self.successResultOf(link.lookup("bb"))
        self.assertEqual(len(self.grape.seen), 4)

    def test_only_lookups_cached(self) -> None:
        link = self.make(answer(b"1"))
        self.successResultOf(link.announce("svc", 1))
        self.successResultOf(link.announce("svc", 1))
        self.assertEqual(len(self.grape.seen), 2)

    def test_cache_disabled(self) -> None:
        link = self.make(answer(b'["127.0.0.1:1"]'), lookup_cache_ttl=0)
        self.successResultOf(link.lookup("svc"))
        self.successResultOf(link.lookup("svc"))
        self.assertEqual(len(self.grape.seen), 2)


# --- announcing loops and stop ----------------------------------------------------------------


class AnnounceLoopTests(HTTPCase):
    def test_schedule_and_jitter_bounds(self) -> None:
        """First announce at once, then gaps of [0.5, 1.5) * interval from the seeded rng,
        with one timer per loop at any time."""
        link = self.make(answer(b"1"), rng=random.Random(1234))
        expected = random.Random(1234)
        d = link.start_announcing("svc", 1337)
        self.assertEqual(self.successResultOf(d), 1)
        self.assertEqual(len(self.grape.seen), 1)
        times = [self.clock.seconds()]
        for _ in range(200):
            [call] = self.clock.getDelayedCalls()
            gap = due(call) - self.clock.seconds()
            self.assertAlmostEqual(gap, DEFAULT_ANNOUNCE_INTERVAL * (0.5 + expected.random()))
            self.assertGreaterEqual(gap, 20.0)
            self.assertLess(gap, 60.0)
            self.clock.advance(gap)
            times.append(self.clock.seconds())
        self.assertEqual(len(self.grape.seen), 201)
        self.assertTrue(all(s.data == ["svc", 1337] for s in self.grape.seen))
        gaps = [b - a for a, b in itertools.pairwise(times)]
        self.assertLess(max(gaps), 60.0, "below the 80 s minimum peer lifetime")
        self.assertGreaterEqual(min(gaps), 20.0)

    def test_custom_interval(self) -> None:
        link = self.make(answer(b"1"), rng=random.Random(5), announce_interval=10.0)
        self.successResultOf(link.start_announcing("a", 1))
        self.successResultOf(link.start_announcing("b", 2, interval=1000.0))
        gaps = sorted(due(c) for c in self.clock.getDelayedCalls())
        self.assertTrue(5.0 <= gaps[0] < 15.0)
        self.assertTrue(500.0 <= gaps[1] < 1500.0)

    def test_failed_reannounce_keeps_the_loop(self) -> None:
        replies = [(200, b"1"), (500, b"boom"), (200, b'"No nodes to query"'), (200, b"2")]
        link = self.make(
            lambda seen: replies[min(len(self.grape.seen), 4) - 1], rng=random.Random(3)
        )
        self.successResultOf(link.start_announcing("svc", 1))
        for _ in range(3):
            [call] = self.clock.getDelayedCalls()
            self.clock.advance(due(call) - self.clock.seconds())
        self.assertEqual(len(self.grape.seen), 4)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_failures_and_recovery_are_logged(self) -> None:
        """A warning at the first failure of a run, debug for the next ones, one line when
        announcing works again; then a new run of failures warns again."""
        events: list[dict[str, Any]] = []
        self.patch(
            announce_module, "log", Logger(namespace="test", observer=cast(Any, events.append))
        )
        outcomes = iter([b"1", b"boom", b"boom", b"boom", b"3", b"4", b"boom", b"5"])

        def reply(seen: Seen) -> Reply:
            body = next(outcomes)
            return (500 if body == b"boom" else 200, body)

        link = self.make(reply, rng=random.Random(3))
        self.successResultOf(link.start_announcing("svc", 1337))
        for _ in range(7):
            [call] = self.clock.getDelayedCalls()
            self.clock.advance(due(call) - self.clock.seconds())
        self.assertEqual(
            [(e["log_level"].name, formatEvent(e)) for e in events],
            [
                ("warn", "announce of svc:1337 failed (boom); trying again in the next tick"),
                ("debug", "announce of svc:1337 failed (boom); trying again in the next tick"),
                ("debug", "announce of svc:1337 failed (boom); trying again in the next tick"),
                ("info", "announce of svc:1337 recovered after 3 failures"),
                ("warn", "announce of svc:1337 failed (boom); trying again in the next tick"),
                ("info", "announce of svc:1337 recovered after 1 failures"),
            ],
        )

    def test_first_announce_error(self) -> None:
        link = self.make(answer(b'"No nodes to query"'))
        d = link.start_announcing("svc", 1)
        self.assertEqual(
            self.failureResultOf(d, errors.GrapeReplyError).value.message, "No nodes to query"
        )
        self.assertEqual(link.announcing(), [("svc", 1)], "the loop keeps going")
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_already_announcing(self) -> None:
        link = self.make(answer(b"1"))
        self.successResultOf(link.start_announcing("svc", 1))
        self.assertEqual(self.successResultOf(link.start_announcing("svc", 1)), 1)
        self.assertEqual(len(self.grape.seen), 1)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_stop_announcing(self) -> None:
        link = self.make(answer(b"1"))
        self.successResultOf(link.start_announcing("svc", 1))
        self.successResultOf(link.start_announcing("svc", 2))
        self.assertEqual(len(self.clock.getDelayedCalls()), 2)
        self.successResultOf(link.stop_announcing("svc", 1))
        self.assertEqual(link.announcing(), [("svc", 2)])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.successResultOf(link.stop_announcing("svc", 2))
        self.successResultOf(link.stop_announcing("svc", 3))  # not announcing: nothing sent
        self.assertNoTimers()
        self.clock.advance(1000)
        # Two announces, then an unannounce for each stopped loop.
        self.assertEqual(
            [(seen.type, seen.data) for seen in self.grape.seen],
            [
                ("announce", ["svc", 1]),
                ("announce", ["svc", 2]),
                ("unannounce", ["svc", 1]),
                ("unannounce", ["svc", 2]),
            ],
        )

    def test_stop_announcing_while_announcing(self) -> None:
        link = self.make(hold)
        d = link.start_announcing("svc", 1)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)  # the request timeout
        leaving = link.stop_announcing("svc", 1)
        self.failureResultOf(d, errors.LinkStopped)
        self.grape.seen[-1].reply(200, b"1")  # the unannounce
        self.successResultOf(leaving)
        self.assertNoTimers()

    def test_stop_stops_every_loop(self) -> None:
        link = self.make(answer(b"1"))
        for port in range(5):
            link.start_announcing("svc", port)
        self.assertEqual(len(self.clock.getDelayedCalls()), 5)
        self.successResultOf(link.stop())
        self.assertNoTimers()
        self.assertEqual(link.announcing(), [])
        self.clock.advance(1000)
        self.assertEqual(len(self.grape.seen), 5)


class StopTests(HTTPCase):
    def test_stop_fails_requests_in_flight(self) -> None:
        link = self.make(hold)
        d1 = link.lookup("svc")
        d2 = link.lookup("svc")
        d3 = link.put("x")
        self.successResultOf(link.stop())
        for d in (d1, d2, d3):
            error = self.failureResultOf(d, errors.LinkStopped).value
            self.assertEqual(error.message, "ERR_LINK_STOPPED")
        self.assertNoTimers()

    def test_stop_drops_the_cache(self) -> None:
        link = self.make(answer(b'["127.0.0.1:1"]'))
        self.successResultOf(link.lookup("svc"))
        self.successResultOf(link.stop())
        link.start()
        self.successResultOf(link.lookup("svc"))
        self.assertEqual(len(self.grape.seen), 2)

    def test_default_client_and_pool(self) -> None:
        """Without http_agent the link owns a persistent pool; stop closes it."""
        link = Link(GRAPE, reactor=Clock())
        self.assertFalse(link.running)
        link.start()
        client = link._client
        assert isinstance(client, HTTPGrapeClient)
        pool = client.pool
        self.assertIsNotNone(pool)
        self.assertTrue(pool.persistent)
        self.successResultOf(link.stop())
        self.assertIsNone(client.pool)
        self.assertIsNone(link._client)

    def test_bad_urls(self) -> None:
        for url in ("127.0.0.1:30001", "ftp://x", ""):
            self.assertRaises(ValueError, Link, url, reactor=Clock())


# --- WebSocket mode ------------------------------------------------------------------------


class RefusingAgent:
    def __init__(self) -> None:
        self.opens = 0

    def open(self, url: str, options: dict[str, Any], protocol_class: Any = None) -> Deferred[Any]:
        self.opens += 1
        return fail(ConnectionRefusedError("111: Connection refused"))


class HangingAgent:
    """An agent whose connection attempts end only when the test says so."""

    def __init__(self) -> None:
        self.attempts: list[Deferred[Any]] = []

    def open(self, url: str, options: dict[str, Any], protocol_class: Any = None) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.attempts.append(d)
        return d


class WebSocketTests(unittest.TestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClockResolver()
        self.dispatch = HeldDispatch()
        factory = grape_ws_factory(self.dispatch, reactor=cast(IReactorTime, self.reactor))
        assert isinstance(factory, GrapeWebSocketFactory)
        self.factory = factory
        self.servers: list[Any] = []
        self.pumper = SyncPumper()
        agent = create_memory_agent(self.reactor, self.pumper, self.build_server)
        self.link = Link("ws://127.0.0.1:30002/", reactor=self.reactor, ws_agent=agent)

    def build_server(self) -> Any:
        server = self.factory.buildProtocol(None)
        self.servers.append(server)
        return server

    def flush(self) -> None:
        self.pumper.flush()

    def complete(self, index: int, outcome: Any) -> None:
        d = self.dispatch.calls[index][2]
        if isinstance(outcome, BaseException):
            d.errback(outcome)
        else:
            d.callback(outcome)
        self.flush()

    def test_operations(self) -> None:
        lookup = self.link.lookup("rpc_test")
        announce = self.link.announce("rpc_test", 1337)
        put = self.link.put("hello world")
        get = self.link.get(HELLO_KEY, salt="s")
        missing = self.link.get("00" * 20)
        self.flush()
        self.assertEqual(len(self.servers), 1, "one socket for everything")
        self.assertEqual(
            [(op, data) for op, data, _ in self.dispatch.calls],
            [
                ("lookup", "rpc_test"),
                ("announce", ["rpc_test", 1337]),
                ("put", {"v": "hello world"}),
                ("get", {"hash": HELLO_KEY, "salt": "s"}),
                ("get", "00" * 20),
            ],
        )
        # Replies in any order, matched by rid.
        self.complete(4, None)
        self.complete(3, {"id": "ab" * 20, "token": None, "v": "hello world"})
        self.complete(2, HELLO_KEY)
        self.complete(1, 2)
        self.complete(0, ["127.0.0.1:1337"])
        self.assertEqual(self.successResultOf(lookup), ["127.0.0.1:1337"])
        self.assertEqual(self.successResultOf(announce), 2)
        self.assertEqual(self.successResultOf(put), HELLO_KEY)
        self.assertEqual(self.successResultOf(get), Item(v="hello world", id="ab" * 20, token=None))
        self.assertIsNone(self.successResultOf(missing))
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.successResultOf(self.stop())

    def stop(self) -> Deferred[None]:
        d = self.link.stop()
        self.flush()
        return d

    def test_errors(self) -> None:
        d1 = self.link.announce("x", 1)
        d2 = self.link.lookup("y")
        d3 = self.link.put("z", private_key=SEED, seq=1)
        self.flush()
        self.complete(0, errors.NoNodesToQuery())
        self.complete(1, [])
        self.complete(2, errors.KRPCError(302, "sequence number less than current"))
        error = self.failureResultOf(d1, errors.GrapeReplyError).value
        self.assertEqual((error.message, error.status), ("No nodes to query", None))
        self.failureResultOf(d2, errors.LookupEmpty)
        error = self.failureResultOf(d3, errors.GrapeReplyError).value
        self.assertEqual(error.message, "302 sequence number less than current")
        d4 = self.link.announce("x", 2)
        self.flush()
        self.complete(3, "not a count")
        error = self.failureResultOf(d4, errors.GrapeReplyError).value
        self.assertEqual((error.message, error.status), ("not a count", None))
        self.successResultOf(self.stop())

    def test_coalescing_and_cache(self) -> None:
        d1 = self.link.lookup("svc")
        d2 = self.link.lookup("svc")
        self.flush()
        self.assertEqual(len(self.dispatch.calls), 1)
        self.complete(0, ["127.0.0.1:1"])
        self.assertEqual(self.successResultOf(d1), self.successResultOf(d2))
        self.successResultOf(self.link.lookup("svc"))
        self.assertEqual(len(self.dispatch.calls), 1)
        self.successResultOf(self.stop())

    def test_timeout_and_late_reply(self) -> None:
        d = self.link.put("x")
        self.flush()
        self.reactor.advance(2.5)
        self.failureResultOf(d, errors.RequestTimeout)
        self.complete(0, HELLO_KEY)  # dropped: the rid is no longer pending
        d = self.link.put("y")
        self.flush()
        self.complete(1, HELLO_KEY)
        self.assertEqual(self.successResultOf(d), HELLO_KEY)
        self.assertEqual(len(self.servers), 1)
        self.successResultOf(self.stop())

    def test_socket_close_fails_requests_and_reconnects(self) -> None:
        d1 = self.link.put("x")
        d2 = self.link.lookup("svc", retry=1)
        self.flush()
        self.servers[0].dropConnection(abort=True)
        self.flush()
        for d in (d1, d2):
            error = self.failureResultOf(d, errors.TransportClosed).value
            self.assertTrue(error.message.startswith("ERR_TRANSPORT_CLOSE"))
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        d3 = self.link.lookup("svc")
        self.flush()
        self.assertEqual(len(self.servers), 2, "a new socket for the next request")
        self.complete(2, ["127.0.0.1:1"])
        self.assertEqual(self.successResultOf(d3), ["127.0.0.1:1"])
        self.successResultOf(self.stop())

    def test_lookup_retried_on_a_new_socket(self) -> None:
        d = self.link.lookup("svc")
        self.flush()
        self.servers[0].dropConnection(abort=True)
        self.flush()
        self.assertNoResult(d)
        self.assertEqual(len(self.servers), 2)
        self.complete(1, ["127.0.0.1:1"])
        self.assertEqual(self.successResultOf(d), ["127.0.0.1:1"])
        self.successResultOf(self.stop())

    def test_unreachable(self) -> None:
        agent = RefusingAgent()
        link = Link("ws://127.0.0.1:1", reactor=self.reactor, ws_agent=agent)
        error = self.failureResultOf(link.lookup("svc"), errors.GrapeUnreachable).value
        self.assertIn("Connection refused", error.message)
        self.assertEqual(agent.opens, 3)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.successResultOf(link.stop())

    def test_stop_closes_the_socket(self) -> None:
        d = self.link.lookup("svc")
        self.flush()
        stopped = self.link.stop()
        self.failureResultOf(d, errors.LinkStopped)
        self.flush()
        self.successResultOf(stopped)
        server = self.servers[0]
        self.assertEqual(server.state, server.STATE_CLOSED)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_rid_is_uuid4(self) -> None:
        sent: list[bytes] = []
        server_factory = self.factory

        original = server_factory.protocol.onMessage

        def spy(proto: Any, payload: bytes, isBinary: bool) -> None:
            sent.append(payload)
            original(proto, payload, isBinary)

        self.patch(server_factory.protocol, "onMessage", spy)
        self.link.lookup("svc").addErrback(lambda _: None)
        self.flush()
        [frame] = sent
        rid = codec.json_loads(frame)[0]
        self.assertRegex(rid, UUID4)
        self.assertEqual(uuid.UUID(rid).version, 4)
        self.assertEqual(frame, codec.json_dumps([rid, "lookup", "svc"]))
        self.successResultOf(self.stop())

    def test_connection_attempt_that_never_opens(self) -> None:
        """Requests time out; after a request timeout the attempt is given up, the next
        request starts a new one and the queued requests move to it; stop waits for the
        given-up attempts to end."""
        agent = HangingAgent()
        link = Link("ws://127.0.0.1:1", reactor=self.reactor, ws_agent=agent)
        d = link.lookup("svc", retry=1)
        self.reactor.advance(1.0)
        d2 = link.put("x")
        self.assertEqual(len(agent.attempts), 1, "a young attempt is shared")
        self.reactor.advance(1.5)
        self.failureResultOf(d, errors.RequestTimeout)
        d3 = link.put("y")
        self.assertEqual(len(agent.attempts), 2)
        self.assertNoResult(d2)  # moved to the new attempt
        stopped = link.stop()
        self.failureResultOf(d2, errors.LinkStopped)
        self.failureResultOf(d3, errors.LinkStopped)
        self.assertNoResult(stopped)
        agent.attempts[0].errback(TimeoutError("TCP connect timed out"))
        self.assertNoResult(stopped)
        agent.attempts[1].errback(TimeoutError("TCP connect timed out"))
        self.successResultOf(stopped)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_queued_requests_move_to_the_new_attempt(self) -> None:
        hanging = HangingAgent()
        link = Link("ws://127.0.0.1:30002/", reactor=self.reactor, ws_agent=hanging)
        d1 = link.put("x", retry=1)
        self.reactor.advance(2.0)
        d2 = link.lookup("svc", retry=1)
        self.reactor.advance(0.5)
        self.failureResultOf(d1, errors.RequestTimeout)
        # The next request gives the old attempt up; this one connects for real.
        assert isinstance(link._client, WSGrapeClient)
        link._client.agent = create_memory_agent(self.reactor, self.pumper, self.build_server)
        d3 = link.announce("svc", 1)
        self.flush()
        self.assertEqual([op for op, _, _ in self.dispatch.calls], ["lookup", "announce"])
        self.complete(0, ["127.0.0.1:1"])
        self.complete(1, 1)
        self.assertEqual(self.successResultOf(d2), ["127.0.0.1:1"])
        self.assertEqual(self.successResultOf(d3), 1)
        hanging.attempts[0].errback(ConnectionRefusedError())
        stopped = link.stop()
        self.flush()
        self.successResultOf(stopped)


# --- Node's per-call options: timeout, retry; put signed elsewhere; get options ---------------


class PerCallOptionTests(HTTPCase):
    def test_timeout_per_call_and_per_attempt(self) -> None:
        """``timeout`` bounds each attempt of that call only (Node's ``opts.timeout``)."""
        link = self.make(hold, request_timeout=5.0)
        d = link.lookup("x", timeout=0.5, retry=2)
        [call] = self.clock.getDelayedCalls()
        self.assertEqual(due(call), 0.5)
        self.clock.advance(0.5)
        self.assertEqual(len(self.grape.seen), 2, "a timeout is retried")
        self.assertNoResult(d)
        self.clock.advance(0.5)
        self.failureResultOf(d, errors.RequestTimeout)
        self.assertNoTimers()
        for call_ in (
            lambda: link.announce("x", 1, timeout=1.0, retry=1),
            lambda: link.put("x", timeout=1.0),
            lambda: link.get(HELLO_KEY, timeout=1.0),
        ):
            pending: Deferred[Any] = call_()
            self.clock.advance(0.75)
            self.assertNoResult(pending)
            self.clock.advance(0.25)
            self.failureResultOf(pending, errors.RequestTimeout)
        self.assertNoTimers()

    def test_own_timeout_does_not_change_the_shared_request(self) -> None:
        """Calls coalesce only with calls of the same timeout; each gets its own deadline."""
        link = self.make(hold, request_timeout=5.0)
        default = link.lookup("svc")
        short = link.lookup("svc", timeout=1.0, retry=1)
        same_short = link.lookup("svc", timeout=1.0, retry=1)
        self.assertEqual(len(self.grape.seen), 2)
        self.clock.advance(1.0)
        self.failureResultOf(short, errors.RequestTimeout)
        self.failureResultOf(same_short, errors.RequestTimeout)
        self.assertNoResult(default)
        self.grape.seen[0].reply(200, b'["127.0.0.1:1"]')
        self.assertEqual(self.successResultOf(default), ["127.0.0.1:1"])
        # The answer is cached under the name, whatever timeout the call had.
        self.assertEqual(self.successResultOf(link.lookup("svc", timeout=9.0)), ["127.0.0.1:1"])
        self.assertEqual(len(self.grape.seen), 2, "a cache hit")

    def test_answer_to_a_call_with_its_own_timeout_is_cached(self) -> None:
        link = self.make(answer(b'["127.0.0.1:2"]'))
        self.successResultOf(link.lookup("svc", timeout=1.0))
        self.successResultOf(link.lookup("svc"))
        self.assertEqual(len(self.grape.seen), 1)

    def test_bad_timeouts(self) -> None:
        link = self.make(answer(b"1"))
        for bad in (0, -1, "1", True):
            self.assertRaises(ValueError, link.lookup, "x", timeout=bad)
            self.assertRaises(ValueError, link.announce, "x", 1, timeout=bad)
            self.assertRaises(ValueError, link.put, "x", timeout=bad)
            self.assertRaises(ValueError, link.get, HELLO_KEY, timeout=bad)
            self.assertRaises(ValueError, link.start_announcing, "x", 1, timeout=bad)
        self.assertEqual(self.grape.seen, [])

    def test_start_announcing_passes_retry_and_timeout(self) -> None:
        flaky = FlakyHTTP(
            RequestTraversalAgent(FakeGrape(answer(b"1"))), 99, lambda: ConnectionRefusedError()
        )
        link = self.make(answer(b"1"), http_agent=flaky, rng=random.Random(1))
        self.failureResultOf(link.start_announcing("svc", 1, retry=5), errors.GrapeUnreachable)
        self.assertEqual(flaky.calls, 5)
        link.stop_announcing("svc", 1)
        link = self.make(hold)
        d = link.start_announcing("svc", 2, timeout=0.25, retry=1)
        [call] = self.clock.getDelayedCalls()
        self.assertEqual(due(call), 0.25)
        self.clock.advance(0.25)
        self.failureResultOf(d, errors.RequestTimeout)
        link.stop_announcing("svc", 2)


class SignedElsewhereTests(HTTPCase):
    """``put`` with ``k``/``sig`` made elsewhere, sent as Node's link sends them."""

    def signed(self, value: str, seq: int, salt: bytes | None = None) -> tuple[str, str]:
        public = bep44.public_key_of(SEED)
        sig = bep44.sign(SEED, bep44.signature_buffer(value.encode(), seq, salt))
        return public.hex(), sig.hex()

    def test_same_request_as_signing_here(self) -> None:
        link = self.make(lambda seen: (200, b'"' + _mutable_hash(seen).encode() + b'"'))
        k, sig = self.signed("välue", 7, b"foobar")
        key = self.successResultOf(link.put("välue", k=k, sig=sig, seq=7, salt="foobar", cas=6))
        self.assertEqual(key, bep44.mutable_key(bytes.fromhex(k), b"foobar").hex())
        self.successResultOf(link.put("välue", private_key=SEED, seq=7, salt="foobar", cas=6))
        elsewhere, here = (s.data for s in self.grape.seen)
        self.assertEqual(list(elsewhere), ["v", "seq", "k", "salt", "sig", "cas"])
        self.assertEqual(elsewhere, here)

    def test_uppercase_hex_is_sent_lowercase(self) -> None:
        link = self.make(lambda seen: (200, b'"' + _mutable_hash(seen).encode() + b'"'))
        k, sig = self.signed("v", 1)
        self.successResultOf(link.put("v", k=k.upper(), sig=sig.upper(), seq=1))
        self.assertEqual(self.grape.seen[0].data, {"v": "v", "seq": 1, "k": k, "sig": sig})

    def test_refused_before_sending(self) -> None:
        link = self.make(answer(b"1"))
        k, sig = self.signed("v", 1, b"s")
        cases: list[dict[str, Any]] = [
            {"k": k, "sig": sig, "seq": 2, "salt": "s"},  # signed another seq
            {"k": k, "sig": sig, "seq": 1},  # signed with a salt
            {"k": k, "sig": sig, "seq": 1, "salt": "t"},
            {"k": k, "seq": 1, "salt": "s"},  # no sig
            {"sig": sig, "seq": 1, "salt": "s"},  # no k
            {"k": k[:-2], "sig": sig, "seq": 1, "salt": "s"},
            {"k": k, "sig": sig + "00", "seq": 1, "salt": "s"},
            {"k": "zz" * 32, "sig": sig, "seq": 1, "salt": "s"},
            {"k": bytes.fromhex(k), "sig": sig, "seq": 1, "salt": "s"},
            {"k": k, "sig": sig, "salt": "s"},  # no seq
            {"k": k, "sig": sig, "seq": 1, "salt": "s", "private_key": SEED},
        ]
        for kwargs in cases:
            with self.assertRaises(ValueError, msg=repr(kwargs)):
                link.put("v", **kwargs)
        with self.assertRaises(ValueError) as caught:
            link.put("v", k=k, sig=sig, seq=2, salt="s")
        self.assertIn("not k's signature", str(caught.exception))
        self.assertEqual(self.grape.seen, [])
        self.successResultOf(link.put("v", k=k, sig=sig, seq=1, salt="s").addErrback(lambda _: 0))
        self.assertEqual(len(self.grape.seen), 1)

    def test_item_from_get_can_be_put_again(self) -> None:
        """A get's Item carries what a put needs (k, sig, seq as hex and int)."""
        link = self.make(answer(VECTOR_GET))
        item = self.successResultOf(
            link.get("411eba73b6f087ca51a3795d9c8c938d365e32c1", salt="foobar")
        )
        assert item is not None and item.seq is not None
        self.grape.handler = lambda seen: (200, b'"' + _mutable_hash(seen).encode() + b'"')
        key = self.successResultOf(
            link.put(item.v, k=item.k, sig=item.sig, seq=item.seq, salt=item.salt)
        )
        self.assertEqual(key, "411eba73b6f087ca51a3795d9c8c938d365e32c1")


class GetOptionTests(HTTPCase):
    def test_cache_false_and_options(self) -> None:
        link = self.make(answer(b""))
        self.successResultOf(link.get(HELLO_KEY, cache=False))
        self.successResultOf(link.get(HELLO_KEY, salt="s", cache=False, options={"x": [1]}))
        self.successResultOf(link.get(HELLO_KEY, options={"y": True}))
        self.successResultOf(link.get(HELLO_KEY, options={}))
        self.assertEqual(
            [s.data for s in self.grape.seen],
            [
                {"hash": HELLO_KEY, "cache": False},
                {"hash": HELLO_KEY, "salt": "s", "cache": False, "x": [1]},
                {"hash": HELLO_KEY, "y": True},
                HELLO_KEY,
            ],
        )
        self.assertIn(
            b'"data":{"hash":"' + HELLO_KEY.encode() + b'","cache":false}', self.grape.seen[0].body
        )

    def test_keywords_not_in_options(self) -> None:
        link = self.make(answer(b""))
        for name in ("hash", "salt", "cache"):
            self.assertRaises(ValueError, link.get, HELLO_KEY, options={name: 1})
        self.assertEqual(self.grape.seen, [])
