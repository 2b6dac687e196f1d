"""Tests for grenache.peer: transport-neutral RPC client/server and pub/sub.

The peers run on grenache.testing's in-memory network (a real link to a lone grape, in-memory
transports, time on a Clock). Two tests keep a recording server transport of their own: they
check what the server hands its transport (the listen spec as given, the reply Deferred it
cancels), which no transport exposes.
"""

from __future__ import annotations

import random
import uuid
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import formatEvent
from twisted.trial.unittest import SynchronousTestCase

from grenache import errors
from grenache.peer import (
    PeerPub,
    PeerRPCClient,
    PeerRPCServer,
    PeerSub,
    Request,
    call_handler,
    error_message,
    new_rid,
)
from grenache.peer import request as request_module
from grenache.peer import server as server_module
from grenache.peer.request import OutgoingRequest, _RandomBytes
from grenache.testing import MemoryNetwork
from tests.support import recording_log


class InMemory(SynchronousTestCase):
    """A test on an in-memory network: ``self.clock``, ``self.network``, ``self.link``."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.network = MemoryNetwork(self.clock)
        self.link = self.network.link()

    def serve(self, handler: Any, name: str | None = "svc", **options: Any) -> PeerRPCServer:
        """A server listening on the next free port, announced under ``name``."""
        server = PeerRPCServer(self.link, self.network.server_transport(), handler, **options)
        self.successResultOf(server.listen())
        if name is not None:
            self.successResultOf(server.announce(name))
        return server

    def call(self, server: PeerRPCServer, payload: Any, key: str = "svc") -> Deferred[Any]:
        """Send one request straight to ``server`` (no lookup)."""
        transport = self.network.client_transport()
        request = OutgoingRequest(new_rid(), key, payload, 10.0)
        return transport.request(self.network.address(server.port), request)


class ErrorMessageTests(SynchronousTestCase):
    def test_messages(self) -> None:
        self.assertEqual(error_message(ValueError("bad input")), "bad input")
        self.assertEqual(error_message(errors.RequestTimeout()), "ERR_TIMEOUT")
        self.assertEqual(error_message(errors.RemoteError("remote said")), "remote said")
        # An empty message would read as success on a Node client.
        self.assertEqual(error_message(KeyError.__new__(KeyError)), "KeyError")
        self.assertEqual(error_message(RuntimeError("")), "RuntimeError")
        try:
            raise ValueError("from failure")
        except ValueError:
            from twisted.python.failure import Failure

            self.assertEqual(error_message(Failure()), "from failure")


class NewRidTests(SynchronousTestCase):
    def test_uuid4_strings(self) -> None:
        """Lowercase, dashed, version 4, RFC 4122 variant, all different."""
        rids = {new_rid() for _ in range(2000)}
        self.assertEqual(len(rids), 2000)
        for rid in list(rids)[:200]:
            parsed = uuid.UUID(rid)
            self.assertEqual(str(parsed), rid)
            self.assertEqual(parsed.version, 4)
            self.assertEqual(parsed.variant, uuid.RFC_4122)

    def test_fresh_head_after_fork_and_when_the_counter_runs_out(self) -> None:
        """A forked child draws its own head (what the fork hook calls), so parent and child
        never share ids; the last group counts up, and when it runs out a new head and a new
        random start are drawn."""
        before = new_rid()
        request_module._reset_rids()
        after = new_rid()
        self.assertNotEqual(before[:24], after[:24])
        self.assertEqual(int(new_rid()[24:], 16), int(after[24:], 16) + 1)
        draws = iter([b"\x11" * 10, b"\x00" * 6, b"\x22" * 10, b"\x00" * 6])
        self.patch(request_module.os, "urandom", lambda n: next(draws)[:n])
        self.patch(request_module, "_RID_END", (1 << 48) + 2)
        stream = request_module._rid_stream()
        rids = [*next(stream), *next(stream)][:3]
        self.assertEqual(
            rids,
            [
                "11111111-1111-4111-9111-000000000000",
                "11111111-1111-4111-9111-000000000001",
                "22222222-2222-4222-a222-000000000000",
            ],
        )
        for rid in rids:
            parsed = uuid.UUID(rid)
            self.assertEqual((str(parsed), parsed.version, parsed.variant), (rid, 4, uuid.RFC_4122))

    def test_random_bytes_refill(self) -> None:
        """The urandom buffer hands out each byte once, across refills and after a reset."""
        pool = _RandomBytes()
        chunks = [pool.take(n) for n in (16, 4, 4000, 100, 16)]
        self.assertEqual([len(c) for c in chunks], [16, 4, 4000, 100, 16])
        self.assertEqual(len(set(chunks)), 5)
        first = pool.take(16)
        pool.reset()
        self.assertNotEqual(pool.take(16), first)


class CallHandlerTests(SynchronousTestCase):
    request = Request("rid", "key", {"a": 1})

    def test_value(self) -> None:
        self.assertEqual(
            self.successResultOf(call_handler(lambda r: r.payload, self.request)), {"a": 1}
        )

    def test_deferred(self) -> None:
        d: Deferred[Any] = Deferred()
        result = call_handler(lambda r: d, self.request)
        self.assertNoResult(result)
        d.callback("later")
        self.assertEqual(self.successResultOf(result), "later")

    def test_coroutine(self) -> None:
        gate: Deferred[str] = Deferred()

        async def handler(r: Request) -> str:
            return (await gate) + r.key

        result = call_handler(handler, self.request)
        self.assertNoResult(result)
        gate.callback("async:")
        self.assertEqual(self.successResultOf(result), "async:key")

    def test_raises(self) -> None:
        def handler(r: Request) -> Any:
            raise ValueError("nope")

        self.failureResultOf(call_handler(handler, self.request), ValueError)

    def test_async_raises(self) -> None:
        async def handler(r: Request) -> Any:
            raise errors.RemoteError("async nope")

        f = self.failureResultOf(call_handler(handler, self.request), errors.RemoteError)
        self.assertEqual(error_message(f), "async nope")


def texts(events: list[dict[str, Any]]) -> list[str]:
    return [formatEvent(e) for e in events]


class RecordingServerTransport:
    """Keeps what PeerRPCServer gives its transport: the listen spec and ``serve``."""

    def __init__(self) -> None:
        self.serve: Any = None
        self.where: Any = None

    def listen(self, where: Any, serve: Any) -> Deferred[int]:
        self.serve = serve
        self.where = where
        return succeed(0 if isinstance(where, str) and where.startswith("unix:") else 40123)

    def stop(self) -> Deferred[None]:
        return succeed(None)


class PeerRPCServerTests(InMemory):
    def test_listen_serve_announce_stop(self) -> None:
        server = PeerRPCServer(
            self.link, self.network.server_transport(), lambda r: {"echo": r.payload, "key": r.key}
        )
        self.assertRaises(RuntimeError, lambda: server.port)
        self.assertEqual(self.successResultOf(server.listen()), 40001)
        self.assertEqual(server.port, 40001)
        self.assertEqual(self.successResultOf(self.call(server, 5)), {"echo": 5, "key": "svc"})
        self.assertEqual(self.successResultOf(server.announce("svc")), 1)
        self.assertEqual(self.link.announcing(), [("svc", 40001)])
        self.assertEqual(self.successResultOf(self.link.lookup("svc")), ["127.0.0.1:40001"])
        self.successResultOf(server.stop())
        self.assertEqual(self.link.announcing(), [])
        self.failureResultOf(self.call(server, 5), errors.DestinationUnreachable)
        self.successResultOf(server.stop())  # idempotent

    def test_listen_spec_reaches_the_transport(self) -> None:
        """An endpoint description goes to the transport as it is; an endpoint with no TCP
        port (a UNIX socket) cannot be announced."""
        transport = RecordingServerTransport()
        server = PeerRPCServer(self.link, transport, lambda r: None)
        self.successResultOf(server.listen("tcp6:0:interface=\\:\\:1"))
        self.assertEqual(transport.where, "tcp6:0:interface=\\:\\:1")
        unix = PeerRPCServer(self.link, RecordingServerTransport(), lambda r: None)
        self.assertEqual(self.successResultOf(unix.listen("unix:/tmp/x.sock")), 0)
        f = self.failureResultOf(unix.announce("svc"), RuntimeError)
        self.assertIn("no TCP port", str(f.value))
        self.assertEqual(self.link.announcing(), [])

    def test_handler_failure_reaches_the_caller(self) -> None:
        events = recording_log(self, server_module)

        def handler(r: Request) -> Any:
            raise ValueError("handler broke")

        server = PeerRPCServer(None, self.network.server_transport(), handler)
        self.assertEqual(self.successResultOf(server.listen(1234)), 1234)
        f = self.failureResultOf(self.call(server, None, key="k"), errors.RemoteError)
        self.assertEqual(f.value.message, "handler broke")
        self.failureResultOf(server.announce("x"), RuntimeError)  # no link
        # ... and is logged with its traceback.
        [event] = events
        self.assertEqual(str(event["log_failure"].value), "handler broke")
        self.assertIn("handler for 'k' failed", formatEvent(event))

    def test_subclass_overrides_handle(self) -> None:
        """A subclass answers with handle() (value, Deferred or coroutine); no handler needed."""
        gate: Deferred[str] = Deferred()
        gate2: Deferred[str] = Deferred()

        class Greeter(PeerRPCServer):
            def handle(self, request: Request) -> Any:
                if request.key == "sync":
                    return f"hello {request.payload}"
                if request.key == "deferred":
                    return gate
                return self.later(request)

            async def later(self, request: Request) -> str:
                return f"{await gate2} {request.payload}"

        server = Greeter(None, self.network.server_transport())
        self.assertIsNone(server.handler)
        self.successResultOf(server.listen())
        self.assertEqual(self.successResultOf(self.call(server, "you", "sync")), "hello you")
        deferred = self.call(server, None, "deferred")
        coroutine = self.call(server, "there", "async")
        self.assertNoResult(deferred)
        gate.callback("hi")
        gate2.callback("hi")
        self.assertEqual(self.successResultOf(deferred), "hi")
        self.assertEqual(self.successResultOf(coroutine), "hi there")

    def test_subclass_handle_wins_over_handler(self) -> None:
        class Doubler(PeerRPCServer):
            def handle(self, request: Request) -> Any:
                return request.payload * 2

        server = Doubler(None, self.network.server_transport(), lambda r: "ignored")
        self.successResultOf(server.listen())
        self.assertEqual(self.successResultOf(self.call(server, 21)), 42)

    def test_no_handler_no_override(self) -> None:
        with self.assertRaises(TypeError) as caught:
            PeerRPCServer(None, self.network.server_transport())
        self.assertIn("override handle()", str(caught.exception))

    def test_failure_log_is_rate_limited(self) -> None:
        """At most log_limit tracebacks per key and window; the rest are counted and reported
        in one line when the window is over (at the next failure) or at stop."""
        events = recording_log(self, server_module)

        def handler(r: Request) -> Any:
            raise RuntimeError(f"broke {r.payload}")

        server = PeerRPCServer(
            None,
            self.network.server_transport(),
            handler,
            reactor=self.clock,
            log_limit=2,
            log_window=10,
        )
        self.successResultOf(server.listen())

        def fail_times(key: str, n: int) -> None:
            for i in range(n):
                self.failureResultOf(self.call(server, i, key), errors.RemoteError)

        fail_times("a", 5)
        fail_times("b", 1)
        self.assertEqual(len(events), 3)
        self.assertTrue(all("log_failure" in e for e in events))
        self.assertEqual(
            [e["log_failure"].getErrorMessage() for e in events], ["broke 0", "broke 1", "broke 0"]
        )
        self.clock.advance(9.9)
        fail_times("a", 1)
        self.assertEqual(len(events), 3, "still the same window")
        self.clock.advance(0.1)
        fail_times("a", 1)
        self.assertEqual(
            texts(events[3:]),
            ["'a': suppressed 4 more failure tracebacks in 10 s", "handler for 'a' failed"],
        )
        fail_times("a", 2)
        self.assertEqual(len(events), 6)
        self.successResultOf(server.stop())
        self.assertEqual(texts(events[6:]), ["'a': suppressed 1 more failure tracebacks in 10 s"])

    def test_cancelled_and_successful_requests_are_not_logged(self) -> None:
        """A reply the transport cancels (its connection closed) is not a handler failure."""
        events = recording_log(self, server_module)
        held: Deferred[Any] = Deferred()
        transport = RecordingServerTransport()
        server = PeerRPCServer(None, transport, lambda r: held if r.key == "held" else 1)
        self.successResultOf(server.listen())
        self.successResultOf(transport.serve(Request("r", "ok", None)))
        d = transport.serve(Request("r", "held", None))
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(events, [])


class PeerRPCClientTests(InMemory):
    """Three servers under "svc", each answering ``[its address, payload]``."""

    def setUp(self) -> None:
        super().setUp()
        self.servers = [self.serve(self.echo) for _ in range(3)]
        self.dests = [s.transport.address for s in self.servers]  # type: ignore[attr-defined]
        self.transport = self.network.client_transport()
        self.replies: dict[str, Any] = {}  # dest -> a reply (value or Deferred) to give once

    def echo(self, request: Request) -> Any:
        dest = self.network.address(self.port_of_request(request))
        if dest in self.replies:
            return self.replies.pop(dest)
        return [dest, request.payload]

    def port_of_request(self, request: Request) -> int:
        for server in self.servers:
            if request in server.transport.requests:  # type: ignore[attr-defined]
                return server.port
        raise AssertionError("request reached no server")

    def sent_to(self) -> list[str]:
        return [dest for dest, _ in self.transport.sent]

    def client(self, **kwargs: Any) -> PeerRPCClient:
        kwargs.setdefault("rng", random.Random(1))
        return PeerRPCClient(self.link, self.transport, reactor=self.clock, **kwargs)

    def test_request(self) -> None:
        """A request goes to a looked-up dest with a fresh uuid4 rid and the default timeout."""
        client = self.client()
        dest, payload = self.successResultOf(client.request("svc", {"x": 1}))
        self.assertIn(dest, self.dests)
        self.assertEqual(payload, {"x": 1})
        ((sent_dest, sent),) = self.transport.sent
        self.assertEqual(sent_dest, dest)
        self.assertEqual(sent.key, "svc")
        self.assertEqual(sent.timeout, 10.0)
        self.assertFalse(sent.compress)
        self.assertEqual(uuid.UUID(sent.rid).version, 4)
        self.assertEqual(str(uuid.UUID(sent.rid)), sent.rid)

    def test_options_passed(self) -> None:
        client = self.client(timeout=3.0)
        self.successResultOf(client.request("svc", 1, compress=True))
        self.successResultOf(client.request("svc", 1, timeout=0.5))
        self.assertEqual(
            [(r.timeout, r.compress) for _, r in self.transport.sent], [(3.0, True), (0.5, False)]
        )
        self.assertNotEqual(self.transport.sent[0][1].rid, self.transport.sent[1][1].rid)
        self.failureResultOf(client.request("svc", 1, timeout=0), ValueError)
        self.assertRaises(
            ValueError, PeerRPCClient, self.link, self.transport, timeout=0, reactor=self.clock
        )

    def test_random_choice(self) -> None:
        """Every destination gets chosen, at random."""
        client = self.client()
        for _ in range(60):
            self.successResultOf(client.request("svc", None))
        counts = {d: self.sent_to().count(d) for d in self.dests}
        self.assertTrue(all(n >= 8 for n in counts.values()), counts)

    def test_lookup_failure(self) -> None:
        self.failureResultOf(self.client().request("nothing", 1), errors.LookupEmpty)
        self.assertEqual(self.transport.sent, [])

    def test_lookup_answered_later_or_at_once(self) -> None:
        """An answered lookup goes on at once, a pending one when it fires; same outcomes."""
        client = self.client()
        later: Deferred[list[str]] = Deferred()
        self.link.lookup = lambda name: later  # type: ignore[assignment,method-assign]
        d = client.request("svc", 1)
        self.assertEqual(self.transport.sent, [])
        later.callback(self.dests[:1])
        self.assertEqual(self.successResultOf(d), [self.dests[0], 1])
        for answer, error in (([], errors.LookupEmpty), (None, errors.LookupEmpty)):
            self.link.lookup = lambda name, a=answer: succeed(a)  # type: ignore[misc]
            self.failureResultOf(client.request("svc", 1), error)
        self.link.lookup = lambda name: fail(errors.GrapeReplyError("x"))  # type: ignore[misc]
        self.failureResultOf(client.request("svc", 1), errors.GrapeReplyError)
        self.assertEqual(len(self.transport.sent), 1)

    def test_unreachable_set_aside(self) -> None:
        """A refusing dest is left out for the backoff and the call goes elsewhere at once."""
        a, b, _ = self.dests
        self.network.refuse(a)
        client = self.client(unreachable_backoff=10.0)
        # Force the first choice to be a, then b.
        client._rng = random.Random()
        client._rng.choice = lambda seq: a if a in seq else b if b in seq else seq[0]  # type: ignore[method-assign]
        dest, _ = self.successResultOf(client.request("svc", "p", retry=1))
        self.assertEqual(dest, b)
        self.assertEqual(self.sent_to(), [a, b])
        self.assertTrue(client.is_set_aside(a))
        # While set aside, a is not chosen.
        self.transport.sent.clear()
        for _ in range(5):
            self.successResultOf(client.request("svc", "p"))
        self.assertNotIn(a, self.sent_to())
        # After the backoff it is eligible again.
        self.clock.advance(10.0)
        self.assertFalse(client.is_set_aside(a))
        self.transport.sent.clear()
        self.successResultOf(client.request("svc", "p"))
        self.assertEqual(self.sent_to(), [a, b])

    def test_all_unreachable(self) -> None:
        for dest in self.dests:
            self.network.refuse(dest)
        client = self.client()
        self.failureResultOf(client.request("svc", 1, retry=5), errors.DestinationUnreachable)
        self.assertEqual(sorted(self.sent_to()), self.dests)
        # All set aside: the next call still tries (everyone is eligible when all are aside).
        self.transport.sent.clear()
        self.failureResultOf(client.request("svc", 1), errors.DestinationUnreachable)
        self.assertEqual(len(self.transport.sent), 3)

    def test_retry(self) -> None:
        """Remote errors use up attempts; each attempt has a new rid."""
        for dest in self.dests:
            self.network.answer_error(dest, "ERR_BUSY")
        client = self.client()
        f = self.failureResultOf(client.request("svc", 1), errors.RemoteError)
        self.assertEqual(f.value.message, "ERR_BUSY")
        self.assertEqual(len(self.transport.sent), 1)
        self.transport.sent.clear()
        self.failureResultOf(client.request("svc", 1, retry=3), errors.RemoteError)
        self.assertEqual(len(self.transport.sent), 3)
        self.assertEqual(len({r.rid for _, r in self.transport.sent}), 3)

    def test_retry_then_success(self) -> None:
        """A timed-out attempt uses one up; the next attempt answers."""
        flaky = self.serve(lambda r: "ok", name="flaky")
        self.network.blackhole(flaky.port)
        d = self.client().request("flaky", 1, retry=2, timeout=1)
        self.network.restore(flaky.port)
        self.clock.advance(1)
        self.assertEqual(self.successResultOf(d), "ok")
        self.assertEqual(len(self.transport.sent), 2)

    def test_pending_until_reply(self) -> None:
        held: Deferred[str] = Deferred()
        self.serve(lambda r: held, name="slow")
        d = self.client().request("slow", 1)
        self.assertNoResult(d)
        held.callback("done")
        self.assertEqual(self.successResultOf(d), "done")

    def test_map_order(self) -> None:
        """Results come in destination order, whatever order the replies arrive in."""
        held: dict[str, Deferred[str]] = {dest: Deferred() for dest in self.dests}
        self.replies.update(held)
        d = self.client().map("svc", "p")
        self.assertEqual(sorted(self.sent_to()), self.dests)
        order = self.successResultOf(self.link.lookup("svc"))
        held[order[2]].callback("Z")
        held[order[0]].callback("X")
        self.assertNoResult(d)
        held[order[1]].callback("Y")
        self.assertEqual(self.successResultOf(d), ["X", "Y", "Z"])

    def test_map_first_error(self) -> None:
        held: dict[str, Deferred[str]] = {dest: Deferred() for dest in self.dests}
        self.replies.update(held)
        d = self.client().map("svc", "p")
        x, y, z = self.dests
        held[x].callback("X")
        held[y].errback(errors.RemoteError("ERR_Y"))
        f = self.failureResultOf(d, errors.RemoteError)
        self.assertEqual(f.value.message, "ERR_Y")
        held[z].errback(errors.RemoteError("ERR_Z"))  # consumed: no unhandled error
        self.flushLoggedErrors(errors.RemoteError)  # the servers log their handlers' failures

    def test_map_limit(self) -> None:
        client = self.client()
        result = self.successResultOf(client.map("svc", "p", limit=2))
        self.assertEqual(len(result), 2)
        self.assertEqual(len({dest for dest, _ in result}), 2)
        self.assertEqual(len(self.successResultOf(client.map("svc", "p", limit=10))), 3)

    def test_map_skips_set_aside(self) -> None:
        a = self.dests[0]
        self.network.refuse(a)
        client = self.client()
        self.failureResultOf(client.map("svc", "p"), errors.DestinationUnreachable)
        self.assertTrue(client.is_set_aside(a))
        result = self.successResultOf(client.map("svc", "p"))
        self.assertEqual(sorted(d for d, _ in result), self.dests[1:])

    def test_stop(self) -> None:
        client = self.client()
        self.successResultOf(client.stop())
        self.failureResultOf(client.request("svc", 1), errors.TransportClosed)
        self.failureResultOf(client.map("svc", 1), errors.TransportClosed)
        self.assertEqual(self.transport.sent, [])


class PeerPubTests(InMemory):
    def test_pub(self) -> None:
        transport = self.network.pub_transport()
        pub = PeerPub(self.link, transport)
        port = self.successResultOf(pub.listen())
        self.successResultOf(pub.announce("feed"))
        self.assertEqual(self.link.announcing(), [("feed", port)])
        subscribers = self.network.sub_transport()
        received: list[Any] = []
        for _ in range(2):
            self.successResultOf(subscribers.connect(transport.address, received.append, print))
        self.assertEqual(pub.pub("hello"), 2)
        self.assertEqual(pub.pub(b"\x00bin"), 2)
        self.assertEqual(transport.published, ["hello", b"\x00bin"])
        self.assertEqual(received, ["hello", "hello", b"\x00bin", b"\x00bin"])
        self.successResultOf(pub.stop())
        self.assertEqual(self.link.announcing(), [])
        self.assertEqual(subscribers.connections, [])


class PeerSubTests(InMemory):
    """Two publishers under "feed"."""

    def setUp(self) -> None:
        super().setUp()
        self.pubs = []
        for _ in range(2):
            pub = PeerPub(self.link, self.network.pub_transport())
            self.successResultOf(pub.listen())
            self.successResultOf(pub.announce("feed"))
            self.pubs.append(pub)
        self.dests = [p.transport.address for p in self.pubs]  # type: ignore[attr-defined]
        self.transport = self.network.sub_transport()
        self.events: list[tuple[Any, ...]] = []

    def peer(self, **kwargs: Any) -> PeerSub:
        sub = PeerSub(self.link, self.transport, reactor=self.clock, rng=random.Random(3), **kwargs)
        sub.add_listener("message", lambda m: self.events.append(("message", m)))
        sub.add_listener("connected", lambda n, d: self.events.append(("connected", n, d)))
        sub.add_listener("disconnected", lambda n, d: self.events.append(("disconnected", n, d)))
        return sub

    def publish(self, message: str | bytes) -> None:
        for pub in self.pubs:
            pub.pub(message)

    def test_sub_and_messages(self) -> None:
        sub = self.peer()
        received: list[Any] = []
        sub.on_message = received.append
        self.successResultOf(sub.sub("feed"))
        (conn,) = self.transport.connections
        self.assertEqual(self.events, [("connected", "feed", conn.dest)])
        self.assertEqual(sub.subscriptions, {"feed": conn.dest})
        self.publish("one")
        self.publish(b"two")
        self.assertEqual(received, ["one", b"two"])
        self.assertEqual(self.events[1:], [("message", "one"), ("message", b"two")])
        self.successResultOf(sub.sub("feed"))  # already subscribed
        self.assertEqual(len(self.transport.attempts), 1)

    def test_resubscribe_elsewhere(self) -> None:
        """A lost publisher is replaced after the backoff, preferring another publisher."""
        sub = self.peer(backoff_initial=0.5)
        self.successResultOf(sub.sub("feed"))
        (first,) = self.transport.connections
        self.network.drop_connections(first.dest)
        self.assertEqual(self.events[-1], ("disconnected", "feed", first.dest))
        self.clock.advance(0.4)
        self.assertEqual(self.transport.connections, [])
        self.clock.advance(0.1)
        (second,) = self.transport.connections
        self.assertNotEqual(second.dest, first.dest)
        self.assertEqual(self.events[-1], ("connected", "feed", second.dest))

    def test_backoff_grows_and_resets(self) -> None:
        sub = self.peer(backoff_initial=0.1, backoff_max=0.4)
        self.successResultOf(sub.sub("feed"))
        (first,) = self.transport.connections
        for dest in self.dests:
            self.network.refuse(dest)
        first.close()
        attempts = []
        for step in [0.1, 0.2, 0.4, 0.4]:
            before = len(self.transport.attempts)
            self.clock.advance(step - 0.001)
            self.assertEqual(len(self.transport.attempts), before)
            self.clock.advance(0.001)
            attempts.append(len(self.transport.attempts) - before)
        self.assertEqual(attempts, [2, 2, 2, 2])  # both publishers each time
        for dest in self.dests:
            self.network.restore(dest)
        self.clock.advance(0.4)
        self.assertIsNotNone(sub.subscriptions["feed"])
        # Reset: the next loss waits the initial backoff again.
        self.transport.connections[-1].close()
        before = len(self.transport.attempts)
        self.clock.advance(0.1)
        self.assertEqual(len(self.transport.attempts), before + 1)

    def test_no_resubscribe(self) -> None:
        sub = self.peer(resubscribe=False)
        self.successResultOf(sub.sub("feed"))
        self.transport.connections[0].close()
        self.clock.advance(100)
        self.assertEqual(len(self.transport.attempts), 1)
        self.assertEqual(sub.subscriptions, {"feed": None})

    def test_first_sub_fails(self) -> None:
        for dest in self.dests:
            self.network.refuse(dest)
        sub = self.peer()
        self.failureResultOf(sub.sub("feed"), errors.DestinationUnreachable)
        self.assertEqual(sorted(self.transport.attempts), self.dests)
        self.assertEqual(sub.subscriptions, {})
        self.failureResultOf(sub.sub("nothing"), errors.LookupEmpty)

    def test_stop(self) -> None:
        sub = self.peer()
        self.successResultOf(sub.sub("feed"))
        self.transport.connections[0].close()  # a reconnect is now scheduled
        attempts = len(self.transport.attempts)
        self.successResultOf(sub.stop())
        self.clock.advance(10)
        self.assertEqual(len(self.transport.attempts), attempts, "no resubscribe after stop")
        self.failureResultOf(sub.sub("feed"), errors.TransportClosed)

    def test_stop_closes_without_resubscribing(self) -> None:
        sub = self.peer()
        self.successResultOf(sub.sub("feed"))
        self.successResultOf(sub.stop())
        self.assertEqual(self.transport.connections, [])
        self.assertEqual([p.transport.subscribers for p in self.pubs], [0, 0])  # type: ignore[attr-defined]
        self.clock.advance(10)
        self.assertEqual(len(self.transport.attempts), 1)

    def test_listener_errors_logged(self) -> None:
        sub = self.peer()

        def broken(message: Any) -> None:
            raise RuntimeError("listener bug")

        sub.add_listener("message", broken)
        self.successResultOf(sub.sub("feed"))
        self.publish("m")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertIn(("message", "m"), self.events)
        sub.remove_listener("message", broken)
        self.assertRaises(ValueError, sub.add_listener, "nope", broken)
