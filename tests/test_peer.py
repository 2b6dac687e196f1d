"""Tests for grenache.peer: transport-neutral RPC client/server and pub/sub.

A fake link and fake transports stand in for the grape and the network; time is a Clock.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from grenache import errors
from grenache.peer import (
    OutgoingRequest,
    PeerPub,
    PeerRPCClient,
    PeerRPCServer,
    PeerSub,
    Request,
    call_handler,
    error_message,
    new_rid,
)
from grenache.peer import server as server_module
from grenache.peer.request import _RandomBytes


class FakeLink:
    """Answers lookups from a dict and records announcing."""

    def __init__(self, services: dict[str, list[str]] | None = None) -> None:
        self.services = services or {}
        self.announcing: list[tuple[str, int]] = []
        self.stopped: list[tuple[str, int]] = []
        self.lookups = 0

    def lookup(self, name: str) -> Deferred[list[str]]:
        self.lookups += 1
        dests = self.services.get(name)
        if not dests:
            return fail(errors.LookupEmpty())
        return succeed(list(dests))

    def start_announcing(self, name: str, port: int) -> Deferred[int]:
        self.announcing.append((name, port))
        return succeed(1)

    def stop_announcing(self, name: str, port: int) -> None:
        self.stopped.append((name, port))

    def stop(self) -> None:
        pass


Behaviour = Callable[[OutgoingRequest], "Deferred[Any]"]


class FakeClientTransport:
    """Per-destination behaviour: a callable returning a Deferred, or a Deferred to hold."""

    def __init__(self, behaviours: dict[str, Behaviour] | None = None) -> None:
        self.behaviours = behaviours or {}
        self.sent: list[tuple[str, OutgoingRequest]] = []
        self.held: list[tuple[str, OutgoingRequest, Deferred[Any]]] = []
        self.stopped = False

    def request(self, dest: str, request: OutgoingRequest) -> Deferred[Any]:
        self.sent.append((dest, request))
        behaviour = self.behaviours.get(dest)
        if behaviour is None:
            d: Deferred[Any] = Deferred()
            self.held.append((dest, request, d))
            return d
        return behaviour(request)

    def stop(self) -> Deferred[None]:
        self.stopped = True
        return succeed(None)


def answers(value: Any) -> Behaviour:
    return lambda request: succeed(value)


def echo(dest: str) -> Behaviour:
    return lambda request: succeed([dest, request.payload])


def refuses(request: OutgoingRequest) -> Deferred[Any]:
    return fail(errors.DestinationUnreachable("ERR_REQUEST_GENERIC: refused"))


def raises(message: str) -> Behaviour:
    return lambda request: fail(errors.RemoteError(message))


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


class FakeServerTransport:
    def __init__(self) -> None:
        self.serve: Any = None
        self.where: Any = None
        self.port = 0
        self.stopped = False

    def listen(self, where: Any, serve: Any) -> Deferred[int]:
        self.serve = serve
        self.where = where
        self.port = 0 if isinstance(where, str) and where.startswith("unix:") else 40123
        return succeed(self.port)

    def stop(self) -> Deferred[None]:
        self.stopped = True
        return succeed(None)


def recording_log(case: SynchronousTestCase) -> list[dict[str, Any]]:
    """The events the peer's server module logs from now on (patched for ``case``)."""
    events: list[dict[str, Any]] = []
    case.patch(server_module, "log", Logger(namespace="test", observer=events.append))
    return events


def texts(events: list[dict[str, Any]]) -> list[str]:
    return [formatEvent(e) for e in events]


class PeerRPCServerTests(SynchronousTestCase):
    def test_listen_serve_announce_stop(self) -> None:
        link = FakeLink()
        transport = FakeServerTransport()
        server = PeerRPCServer(link, transport, lambda r: {"echo": r.payload, "key": r.key})
        self.assertRaises(RuntimeError, lambda: server.port)
        self.assertEqual(self.successResultOf(server.listen()), 40123)
        self.assertEqual(transport.where, 0)
        self.assertEqual(server.port, 40123)
        result = transport.serve(Request("r", "svc", 5))
        self.assertEqual(self.successResultOf(result), {"echo": 5, "key": "svc"})
        self.assertEqual(self.successResultOf(server.announce("svc")), 1)
        self.assertEqual(link.announcing, [("svc", 40123)])
        self.successResultOf(server.stop())
        self.assertEqual(link.stopped, [("svc", 40123)])
        self.assertTrue(transport.stopped)
        self.successResultOf(server.stop())  # idempotent
        self.assertEqual(link.stopped, [("svc", 40123)])

    def test_listen_spec_reaches_the_transport(self) -> None:
        """An endpoint description goes to the transport as it is; an endpoint with no TCP
        port (a UNIX socket) cannot be announced."""
        link = FakeLink()
        transport = FakeServerTransport()
        server = PeerRPCServer(link, transport, lambda r: None)
        self.successResultOf(server.listen("tcp6:0:interface=\\:\\:1"))
        self.assertEqual(transport.where, "tcp6:0:interface=\\:\\:1")
        unix = PeerRPCServer(link, FakeServerTransport(), lambda r: None)
        self.assertEqual(self.successResultOf(unix.listen("unix:/tmp/x.sock")), 0)
        f = self.failureResultOf(unix.announce("svc"), RuntimeError)
        self.assertIn("no TCP port", str(f.value))
        self.assertEqual(link.announcing, [])

    def test_handler_failure_reaches_transport(self) -> None:
        events = recording_log(self)
        transport = FakeServerTransport()

        def handler(r: Request) -> Any:
            raise ValueError("handler broke")

        server = PeerRPCServer(None, transport, handler)
        self.successResultOf(server.listen(1234))
        self.assertEqual(transport.where, 1234)
        f = self.failureResultOf(transport.serve(Request("r", "k", None)))
        self.assertEqual(error_message(f), "handler broke")
        self.failureResultOf(server.announce("x"), RuntimeError)
        # ... and is logged with its traceback.
        [event] = events
        self.assertEqual(event["log_failure"].value, f.value)
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

        transport = FakeServerTransport()
        server = Greeter(None, transport)
        self.assertIsNone(server.handler)
        self.successResultOf(server.listen())
        self.assertEqual(
            self.successResultOf(transport.serve(Request("r", "sync", "you"))), "hello you"
        )
        deferred = transport.serve(Request("r", "deferred", None))
        coroutine = transport.serve(Request("r", "async", "there"))
        self.assertNoResult(deferred)
        gate.callback("hi")
        gate2.callback("hi")
        self.assertEqual(self.successResultOf(deferred), "hi")
        self.assertEqual(self.successResultOf(coroutine), "hi there")

    def test_subclass_handle_wins_over_handler(self) -> None:
        class Doubler(PeerRPCServer):
            def handle(self, request: Request) -> Any:
                return request.payload * 2

        transport = FakeServerTransport()
        Doubler(None, transport, lambda r: "ignored").listen()
        self.assertEqual(self.successResultOf(transport.serve(Request("r", "k", 21))), 42)

    def test_no_handler_no_override(self) -> None:
        with self.assertRaises(TypeError) as caught:
            PeerRPCServer(None, FakeServerTransport())
        self.assertIn("override handle()", str(caught.exception))

    def test_failure_log_is_rate_limited(self) -> None:
        """At most log_limit tracebacks per key and window; the rest are counted and reported
        in one line when the window is over (at the next failure) or at stop."""
        events = recording_log(self)
        clock = Clock()
        transport = FakeServerTransport()

        def handler(r: Request) -> Any:
            raise RuntimeError(f"broke {r.payload}")

        server = PeerRPCServer(None, transport, handler, reactor=clock, log_limit=2, log_window=10)
        self.successResultOf(server.listen())

        def fail_times(key: str, n: int) -> None:
            for i in range(n):
                self.failureResultOf(transport.serve(Request("r", key, i)), RuntimeError)

        fail_times("a", 5)
        fail_times("b", 1)
        self.assertEqual(len(events), 3)
        self.assertTrue(all("log_failure" in e for e in events))
        self.assertEqual(
            [e["log_failure"].getErrorMessage() for e in events], ["broke 0", "broke 1", "broke 0"]
        )
        clock.advance(9.9)
        fail_times("a", 1)
        self.assertEqual(len(events), 3, "still the same window")
        clock.advance(0.1)
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
        events = recording_log(self)
        held: Deferred[Any] = Deferred()
        transport = FakeServerTransport()
        server = PeerRPCServer(None, transport, lambda r: held if r.key == "held" else 1)
        self.successResultOf(server.listen())
        self.successResultOf(transport.serve(Request("r", "ok", None)))
        d = transport.serve(Request("r", "held", None))
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(events, [])


class PeerRPCClientTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.link = FakeLink({"svc": ["a:1", "b:2", "c:3"]})
        self.transport = FakeClientTransport(
            {"a:1": echo("a:1"), "b:2": echo("b:2"), "c:3": echo("c:3")}
        )

    def client(self, **kwargs: Any) -> PeerRPCClient:
        kwargs.setdefault("rng", random.Random(1))
        return PeerRPCClient(self.link, self.transport, reactor=self.clock, **kwargs)

    def test_request(self) -> None:
        """A request goes to a looked-up dest with a fresh uuid4 rid and the default timeout."""
        client = self.client()
        dest, payload = self.successResultOf(client.request("svc", {"x": 1}))
        self.assertIn(dest, ["a:1", "b:2", "c:3"])
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
        counts = {
            d: sum(1 for s, _ in self.transport.sent if s == d) for d in ["a:1", "b:2", "c:3"]
        }
        self.assertTrue(all(n >= 8 for n in counts.values()), counts)

    def test_lookup_failure(self) -> None:
        self.failureResultOf(self.client().request("nothing", 1), errors.LookupEmpty)
        self.assertEqual(self.transport.sent, [])

    def test_lookup_answered_later_or_at_once(self) -> None:
        """An answered lookup goes on at once, a pending one when it fires; same outcomes."""
        client = self.client()
        later: Deferred[list[str]] = Deferred()
        self.link.lookup = lambda name: later  # type: ignore[method-assign]
        d = client.request("svc", 1)
        self.assertEqual(self.transport.sent, [])
        later.callback(["a:1"])
        self.assertEqual(self.successResultOf(d), ["a:1", 1])
        for answer, error in (([], errors.LookupEmpty), (None, errors.LookupEmpty)):
            self.link.lookup = lambda name, a=answer: succeed(a)  # type: ignore[misc]
            self.failureResultOf(client.request("svc", 1), error)
        self.link.lookup = lambda name: fail(errors.GrapeReplyError("x"))  # type: ignore[misc]
        self.failureResultOf(client.request("svc", 1), errors.GrapeReplyError)
        self.assertEqual(len(self.transport.sent), 1)

    def test_unreachable_set_aside(self) -> None:
        """A refusing dest is left out for the backoff and the call goes elsewhere at once."""
        self.transport.behaviours["a:1"] = refuses
        client = self.client(unreachable_backoff=10.0)
        # Force the first choice to be a:1.
        client._rng = random.Random()
        client._rng.choice = lambda seq: "a:1" if "a:1" in seq else seq[0]  # type: ignore[method-assign]
        dest, _ = self.successResultOf(client.request("svc", "p", retry=1))
        self.assertEqual(dest, "b:2")
        self.assertEqual([d for d, _ in self.transport.sent], ["a:1", "b:2"])
        self.assertTrue(client.is_set_aside("a:1"))
        # While set aside, a:1 is not chosen.
        self.transport.sent.clear()
        for _ in range(5):
            self.successResultOf(client.request("svc", "p"))
        self.assertNotIn("a:1", [d for d, _ in self.transport.sent])
        # After the backoff it is eligible again.
        self.clock.advance(10.0)
        self.assertFalse(client.is_set_aside("a:1"))
        self.transport.sent.clear()
        self.successResultOf(client.request("svc", "p"))
        self.assertEqual([d for d, _ in self.transport.sent], ["a:1", "b:2"])

    def test_all_unreachable(self) -> None:
        for dest in ["a:1", "b:2", "c:3"]:
            self.transport.behaviours[dest] = refuses
        client = self.client()
        self.failureResultOf(client.request("svc", 1, retry=5), errors.DestinationUnreachable)
        self.assertEqual(sorted(d for d, _ in self.transport.sent), ["a:1", "b:2", "c:3"])
        # All set aside: the next call still tries (everyone is eligible when all are aside).
        self.transport.sent.clear()
        self.failureResultOf(client.request("svc", 1), errors.DestinationUnreachable)
        self.assertEqual(len(self.transport.sent), 3)

    def test_retry(self) -> None:
        """Remote errors use up attempts; each attempt has a new rid."""
        for dest in ["a:1", "b:2", "c:3"]:
            self.transport.behaviours[dest] = raises("ERR_BUSY")
        client = self.client()
        f = self.failureResultOf(client.request("svc", 1), errors.RemoteError)
        self.assertEqual(f.value.message, "ERR_BUSY")
        self.assertEqual(len(self.transport.sent), 1)
        self.transport.sent.clear()
        self.failureResultOf(client.request("svc", 1, retry=3), errors.RemoteError)
        self.assertEqual(len(self.transport.sent), 3)
        self.assertEqual(len({r.rid for _, r in self.transport.sent}), 3)

    def test_retry_then_success(self) -> None:
        calls = []

        def flaky(request: OutgoingRequest) -> Deferred[Any]:
            calls.append(request)
            if len(calls) == 1:
                return fail(errors.RequestTimeout())
            return succeed("ok")

        self.link.services["flaky"] = ["f:1"]
        self.transport.behaviours["f:1"] = flaky
        self.assertEqual(self.successResultOf(self.client().request("flaky", 1, retry=2)), "ok")

    def test_pending_until_reply(self) -> None:
        self.link.services["slow"] = ["s:1"]
        client = self.client()
        d = client.request("slow", 1)
        self.assertNoResult(d)
        ((_, _, held),) = self.transport.held
        held.callback("done")
        self.assertEqual(self.successResultOf(d), "done")

    def test_map_order(self) -> None:
        """Results come in destination order, whatever order the replies arrive in."""
        self.link.services["m"] = ["x:1", "y:2", "z:3"]
        client = self.client()
        d = client.map("m", "p")
        held = {dest: rd for dest, _, rd in self.transport.held}
        self.assertEqual(sorted(held), ["x:1", "y:2", "z:3"])
        held["z:3"].callback("Z")
        held["x:1"].callback("X")
        self.assertNoResult(d)
        held["y:2"].callback("Y")
        self.assertEqual(self.successResultOf(d), ["X", "Y", "Z"])

    def test_map_first_error(self) -> None:
        self.link.services["m"] = ["x:1", "y:2", "z:3"]
        client = self.client()
        d = client.map("m", "p")
        held = {dest: rd for dest, _, rd in self.transport.held}
        held["x:1"].callback("X")
        held["y:2"].errback(errors.RemoteError("ERR_Y"))
        f = self.failureResultOf(d, errors.RemoteError)
        self.assertEqual(f.value.message, "ERR_Y")
        held["z:3"].errback(errors.RemoteError("ERR_Z"))  # consumed: no unhandled error

    def test_map_limit(self) -> None:
        client = self.client()
        result = self.successResultOf(client.map("svc", "p", limit=2))
        self.assertEqual(len(result), 2)
        self.assertEqual(len({dest for dest, _ in result}), 2)
        self.assertEqual(len(self.successResultOf(client.map("svc", "p", limit=10))), 3)

    def test_map_skips_set_aside(self) -> None:
        self.transport.behaviours["a:1"] = refuses
        client = self.client()
        self.failureResultOf(client.map("svc", "p"), errors.DestinationUnreachable)
        self.assertTrue(client.is_set_aside("a:1"))
        result = self.successResultOf(client.map("svc", "p"))
        self.assertEqual(sorted(d for d, _ in result), ["b:2", "c:3"])

    def test_stop(self) -> None:
        client = self.client()
        self.successResultOf(client.stop())
        self.assertTrue(self.transport.stopped)
        self.failureResultOf(client.request("svc", 1), errors.TransportClosed)
        self.failureResultOf(client.map("svc", 1), errors.TransportClosed)


class FakePubTransport:
    def __init__(self) -> None:
        self.published: list[str | bytes] = []
        self.stopped = False

    def listen(self, where: Any) -> Deferred[int]:
        return succeed(where or 5555)

    def publish(self, message: str | bytes) -> int:
        self.published.append(message)
        return 2

    def stop(self) -> Deferred[None]:
        self.stopped = True
        return succeed(None)


class PeerPubTests(SynchronousTestCase):
    def test_pub(self) -> None:
        link = FakeLink()
        transport = FakePubTransport()
        pub = PeerPub(link, transport)
        self.assertEqual(self.successResultOf(pub.listen()), 5555)
        self.successResultOf(pub.announce("feed"))
        self.assertEqual(link.announcing, [("feed", 5555)])
        self.assertEqual(pub.pub("hello"), 2)
        self.assertEqual(pub.pub(b"\x00bin"), 2)
        self.assertEqual(transport.published, ["hello", b"\x00bin"])
        self.successResultOf(pub.stop())
        self.assertEqual(link.stopped, [("feed", 5555)])
        self.assertTrue(transport.stopped)


class FakeConnection:
    def __init__(
        self, transport: FakeSubTransport, dest: str, on_message: Any, on_close: Any
    ) -> None:
        self.transport = transport
        self.dest = dest
        self.on_message = on_message
        self.on_close = on_close
        self.open = True

    def close(self) -> None:
        if self.open:
            self.open = False
            self.on_close()


class FakeSubTransport:
    def __init__(self, refusing: set[str] | None = None) -> None:
        self.refusing = refusing if refusing is not None else set()
        self.connections: list[FakeConnection] = []
        self.attempts: list[str] = []
        self.stopped = False

    def connect(self, dest: str, on_message: Any, on_close: Any) -> Deferred[Any]:
        self.attempts.append(dest)
        if dest in self.refusing:
            return fail(errors.DestinationUnreachable("refused"))
        conn = FakeConnection(self, dest, on_message, on_close)
        self.connections.append(conn)
        return succeed(conn)

    def stop(self) -> Deferred[None]:
        self.stopped = True
        for conn in self.connections:
            conn.close()
        return succeed(None)


class PeerSubTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.link = FakeLink({"feed": ["p:1", "q:2"]})
        self.transport = FakeSubTransport()
        self.events: list[tuple[Any, ...]] = []

    def peer(self, **kwargs: Any) -> PeerSub:
        sub = PeerSub(self.link, self.transport, reactor=self.clock, rng=random.Random(3), **kwargs)
        sub.add_listener("message", lambda m: self.events.append(("message", m)))
        sub.add_listener("connected", lambda n, d: self.events.append(("connected", n, d)))
        sub.add_listener("disconnected", lambda n, d: self.events.append(("disconnected", n, d)))
        return sub

    def test_sub_and_messages(self) -> None:
        sub = self.peer()
        received: list[Any] = []
        sub.on_message = received.append
        self.successResultOf(sub.sub("feed"))
        (conn,) = self.transport.connections
        self.assertEqual(self.events, [("connected", "feed", conn.dest)])
        self.assertEqual(sub.subscriptions, {"feed": conn.dest})
        conn.on_message("one")
        conn.on_message(b"two")
        self.assertEqual(received, ["one", b"two"])
        self.assertEqual(self.events[1:], [("message", "one"), ("message", b"two")])
        self.successResultOf(sub.sub("feed"))  # already subscribed
        self.assertEqual(len(self.transport.connections), 1)

    def test_resubscribe_elsewhere(self) -> None:
        """A lost publisher is replaced after the backoff, preferring another publisher."""
        sub = self.peer(backoff_initial=0.5)
        self.successResultOf(sub.sub("feed"))
        (first,) = self.transport.connections
        first.close()
        self.assertEqual(self.events[-1], ("disconnected", "feed", first.dest))
        self.clock.advance(0.4)
        self.assertEqual(len(self.transport.connections), 1)
        self.clock.advance(0.1)
        self.assertEqual(len(self.transport.connections), 2)
        second = self.transport.connections[1]
        self.assertNotEqual(second.dest, first.dest)
        self.assertEqual(self.events[-1], ("connected", "feed", second.dest))

    def test_backoff_grows_and_resets(self) -> None:
        sub = self.peer(backoff_initial=0.1, backoff_max=0.4)
        self.successResultOf(sub.sub("feed"))
        (first,) = self.transport.connections
        self.transport.refusing.update(["p:1", "q:2"])
        first.close()
        attempts = []
        for step in [0.1, 0.2, 0.4, 0.4]:
            before = len(self.transport.attempts)
            self.clock.advance(step - 0.001)
            self.assertEqual(len(self.transport.attempts), before)
            self.clock.advance(0.001)
            attempts.append(len(self.transport.attempts) - before)
        self.assertEqual(attempts, [2, 2, 2, 2])  # both publishers each time
        self.transport.refusing.clear()
        self.clock.advance(0.4)
        self.assertEqual(sub.subscriptions["feed"] is not None, True)
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
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_first_sub_fails(self) -> None:
        self.transport.refusing.update(["p:1", "q:2"])
        sub = self.peer()
        self.failureResultOf(sub.sub("feed"), errors.DestinationUnreachable)
        self.assertEqual(sorted(self.transport.attempts), ["p:1", "q:2"])
        self.assertEqual(sub.subscriptions, {})
        self.failureResultOf(sub.sub("nothing"), errors.LookupEmpty)

    def test_stop(self) -> None:
        sub = self.peer()
        self.successResultOf(sub.sub("feed"))
        self.transport.connections[0].close()  # a reconnect is now scheduled
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.successResultOf(sub.stop())
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertTrue(self.transport.stopped)
        self.failureResultOf(sub.sub("feed"), errors.TransportClosed)

    def test_stop_closes_without_resubscribing(self) -> None:
        sub = self.peer()
        self.successResultOf(sub.sub("feed"))
        self.successResultOf(sub.stop())
        self.assertFalse(self.transport.connections[0].open)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_listener_errors_logged(self) -> None:
        sub = self.peer()

        def broken(message: Any) -> None:
            raise RuntimeError("listener bug")

        sub.add_listener("message", broken)
        self.successResultOf(sub.sub("feed"))
        self.transport.connections[0].on_message("m")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertIn(("message", "m"), self.events)
        sub.remove_listener("message", broken)
        self.assertRaises(ValueError, sub.add_listener, "nope", broken)
