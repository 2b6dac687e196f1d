"""The RPC server's handler deadline: a handler that never answers gets its request answered
with ``ERR_HANDLER_TIMEOUT`` after ``handler_timeout`` seconds, through one timer for all
requests, and is cancelled; its late outcome is discarded."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor as global_reactor
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from grenache import errors
from grenache.peer import OutgoingRequest, PeerRPCServer, Request, error_message, new_rid
from grenache.peer import server as server_module
from grenache.peer.server import DEFAULT_HANDLER_TIMEOUT
from grenache.service_tap import GrenacheService, Options, ServiceConfig
from grenache.transports.http import HTTPClientTransport, HTTPServerTransport
from grenache.transports.ws import WSClientTransport, WSServerTransport
from tests.support import recording_log


class FakeServerTransport:
    """Serves requests by direct calls; ``reactor`` only when given."""

    def __init__(self, reactor: Any = None) -> None:
        if reactor is not None:
            self.reactor = reactor
        self.serve: Any = None
        self.stopped = False

    def listen(self, where: Any, serve: Any) -> Deferred[int]:
        self.serve = serve
        d: Deferred[int] = Deferred()
        d.callback(40123)
        return d

    def stop(self) -> Deferred[None]:
        self.stopped = True
        d: Deferred[None] = Deferred()
        d.callback(None)
        return d


class Never:
    """A handler whose Deferreds never fire by themselves; records cancellations."""

    def __init__(self) -> None:
        self.calls: list[Deferred[Any]] = []
        self.cancelled = 0

    def __call__(self, request: Request) -> Deferred[Any]:
        d: Deferred[Any] = Deferred(self._cancel)
        self.calls.append(d)
        return d

    def _cancel(self, d: Deferred[Any]) -> None:
        self.cancelled += 1


class HandlerDeadlineTests(SynchronousTestCase):
    def serve(
        self, handler: Any, timeout: float | None = 5.0, **kwargs: Any
    ) -> tuple[PeerRPCServer, FakeServerTransport, Clock]:
        self.events = recording_log(self, server_module)
        clock = Clock()
        transport = FakeServerTransport()
        server = PeerRPCServer(
            None, transport, handler, reactor=clock, handler_timeout=timeout, **kwargs
        )
        self.successResultOf(server.listen())
        return server, transport, clock

    def test_default(self) -> None:
        self.assertEqual(DEFAULT_HANDLER_TIMEOUT, 60.0)
        server = PeerRPCServer(None, FakeServerTransport(), Never(), reactor=Clock())
        self.assertEqual(server.handler_timeout, 60.0)

    def test_never_answering_handler_gets_a_typed_error(self) -> None:
        handler = Never()
        _server, transport, clock = self.serve(handler)
        reply = transport.serve(Request("r1", "svc", 1))
        clock.advance(4.9)
        self.assertNoResult(reply)
        clock.advance(0.1)
        failure = self.failureResultOf(reply, errors.HandlerTimeout)
        self.assertEqual(error_message(failure), "ERR_HANDLER_TIMEOUT")
        self.assertEqual(handler.cancelled, 1)
        self.assertEqual(clock.getDelayedCalls(), [])
        # one logged failure, naming the key and the deadline
        self.assertEqual(len(self.events), 1)
        self.assertIn("no answer within 5 s", self.events[0]["log_failure"].getErrorMessage())
        self.assertEqual(self.events[0]["key"], "svc")

    def test_late_result_is_discarded(self) -> None:
        """A handler whose Deferred ignores cancellation and fires later: the reply stays the
        timeout error and nothing raises AlreadyCalledError."""
        late: Deferred[Any] = Deferred()  # no canceller: cancel() fails it with CancelledError
        _server, transport, clock = self.serve(lambda r: late)
        reply = transport.serve(Request("r1", "svc", 1))
        clock.advance(5)
        self.assertTrue(late.called)
        late.callback("too late")  # ignored after a cancel
        self.failureResultOf(reply, errors.HandlerTimeout)

    def test_coroutine_is_cancelled(self) -> None:
        cleanup: list[str] = []
        forever: Deferred[Any] = Deferred()

        async def handler(request: Request) -> Any:
            try:
                return await forever
            finally:
                cleanup.append(request.rid)

        _server, transport, clock = self.serve(handler)
        reply = transport.serve(Request("c1", "svc", None))
        clock.advance(5)
        self.failureResultOf(reply, errors.HandlerTimeout)
        self.assertEqual(cleanup, ["c1"])
        self.assertEqual(len(self.events), 1)  # the timeout; the CancelledError is not logged

    def test_late_failure_after_cancel_is_logged_not_sent(self) -> None:
        forever: Deferred[Any] = Deferred()

        async def handler(request: Request) -> Any:
            try:
                return await forever
            except CancelledError:
                raise RuntimeError("cleanup broke") from None

        _server, transport, clock = self.serve(handler)
        reply = transport.serve(Request("c1", "svc", None))
        clock.advance(5)
        self.failureResultOf(reply, errors.HandlerTimeout)
        self.assertEqual(
            [e["log_failure"].type for e in self.events], [errors.HandlerTimeout, RuntimeError]
        )

    def test_answer_in_time_passes_through(self) -> None:
        handler = Never()
        _server, transport, clock = self.serve(handler)
        reply = transport.serve(Request("r1", "svc", 1))
        clock.advance(4)
        handler.calls[0].callback({"ok": 1})
        self.assertEqual(self.successResultOf(reply), {"ok": 1})
        self.assertEqual(clock.getDelayedCalls(), [])
        clock.advance(10)
        self.assertEqual(handler.cancelled, 0)

    def test_failure_in_time_passes_through(self) -> None:
        handler = Never()
        _server, transport, clock = self.serve(handler)
        reply = transport.serve(Request("r1", "svc", 1))
        handler.calls[0].errback(ValueError("bad input"))
        self.assertEqual(error_message(self.failureResultOf(reply, ValueError)), "bad input")
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_synchronous_answers_need_no_timer(self) -> None:
        _server, transport, clock = self.serve(lambda r: r.payload * 2)
        self.assertEqual(self.successResultOf(transport.serve(Request("r", "k", 21))), 42)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_one_timer_for_many_requests(self) -> None:
        handler = Never()
        _server, transport, clock = self.serve(handler)
        replies = []
        for i in range(200):
            replies.append(transport.serve(Request(i, "svc", i)))
            clock.advance(0.01)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        for i in range(0, 200, 2):  # half answer in time
            handler.calls[i].callback(i)
        clock.advance(4.0)  # now 6.0: the odd ones that arrived before 1.0 expired
        answered = sum(1 for r in replies if r.called)
        self.assertEqual(answered, 100 + 50)
        clock.advance(2.0)
        for i, reply in enumerate(replies):
            if i % 2:
                self.failureResultOf(reply, errors.HandlerTimeout)
            else:
                self.assertEqual(self.successResultOf(reply), i)
        self.assertEqual(handler.cancelled, 100)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_none_waits_forever(self) -> None:
        handler = Never()
        _server, transport, clock = self.serve(handler, timeout=None)
        reply = transport.serve(Request("r1", "svc", 1))
        clock.advance(10**6)
        self.assertNoResult(reply)
        self.assertEqual(clock.getDelayedCalls(), [])
        handler.calls[0].callback("eventually")
        self.assertEqual(self.successResultOf(reply), "eventually")

    def test_timeout_read_per_request(self) -> None:
        handler = Never()
        server, transport, clock = self.serve(handler, timeout=None)
        server.handler_timeout = 1.0
        reply = transport.serve(Request("r1", "svc", 1))
        clock.advance(1)
        self.failureResultOf(reply, errors.HandlerTimeout)

    def test_bad_timeouts(self) -> None:
        for bad in (0, -1, float("inf"), float("nan")):
            with self.assertRaises(ValueError):
                PeerRPCServer(None, FakeServerTransport(), Never(), handler_timeout=bad)

    def test_transport_cancel_cancels_the_handler(self) -> None:
        handler = Never()
        _server, transport, clock = self.serve(handler)
        reply = transport.serve(Request("r1", "svc", 1))
        reply.cancel()
        self.failureResultOf(reply, CancelledError)
        self.assertEqual(handler.cancelled, 1)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_stop_cancels_pending_handlers(self) -> None:
        handler = Never()
        server, transport, clock = self.serve(handler)
        replies = [transport.serve(Request(i, "svc", i)) for i in range(3)]
        self.successResultOf(server.stop())
        self.assertTrue(transport.stopped)
        for reply in replies:
            self.failureResultOf(reply, CancelledError)
        self.assertEqual(handler.cancelled, 3)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_clock_from_transport(self) -> None:
        recording_log(self, server_module)
        clock = Clock()
        transport = FakeServerTransport(reactor=clock)
        server = PeerRPCServer(None, transport, Never(), handler_timeout=2)
        self.successResultOf(server.listen())
        reply = transport.serve(Request("r1", "svc", 1))
        clock.advance(2)
        self.failureResultOf(reply, errors.HandlerTimeout)

    def test_no_clock_no_deadline(self) -> None:
        transport = FakeServerTransport()
        handler = Never()
        server = PeerRPCServer(None, transport, handler, handler_timeout=2)
        self.successResultOf(server.listen())
        reply = transport.serve(Request("r1", "svc", 1))
        self.assertIs(reply, handler.calls[0])


class ServiceOptionTests(SynchronousTestCase):
    def parse(self, *argv: str) -> Options:
        options = Options()
        options.parseOptions(["--name", "svc", "--handler", "m:f", *argv])
        return options

    def test_default_and_flag(self) -> None:
        self.assertEqual(self.parse().config().handler_timeout, 60.0)
        self.assertEqual(self.parse("--handler-timeout", "2.5").config().handler_timeout, 2.5)
        self.assertIsNone(self.parse("--handler-timeout", "0").config().handler_timeout)

    def test_bad_flag(self) -> None:
        for bad in ("-1", "inf", "soon"):
            with self.assertRaises(Exception) as caught:
                self.parse("--handler-timeout", bad)
            self.assertIn("handler-timeout", str(caught.exception))

    def test_service_passes_it_on(self) -> None:
        config = ServiceConfig(names=("svc",), handler=lambda r: 1, handler_timeout=7.0)
        service = GrenacheService(config, Clock())
        self.assertEqual(service.server.handler_timeout, 7.0)


class OverTheWireTests(TestCase):
    """The typed error reaches a real client over loopback: the server's deadline runs on a
    Clock, advanced once the handler holds the request."""

    async def check(self, server_transport: Any, client_transport: Any) -> None:
        recording_log(self, server_module)
        clock = Clock()
        called: Deferred[None] = Deferred()
        cancelled: list[Any] = []

        def handler(request: Request) -> Deferred[Any]:
            global_reactor.callLater(0, called.callback, None)  # once the server holds it
            return Deferred(cancelled.append)

        server = PeerRPCServer(None, server_transport, handler, reactor=clock, handler_timeout=3)
        port = await server.listen("tcp:0:interface=127.0.0.1")
        self.addCleanup(server.stop)
        self.addCleanup(client_transport.stop)
        reply = client_transport.request(
            f"127.0.0.1:{port}", OutgoingRequest(new_rid(), "svc", {"x": 1}, 10.0)
        )
        await called
        clock.advance(3)
        with self.assertRaises(errors.RemoteError) as caught:
            await reply
        self.assertEqual(caught.exception.message, "ERR_HANDLER_TIMEOUT")
        self.assertEqual(len(cancelled), 1)

    def test_http(self) -> Deferred[None]:
        return ensureDeferred(
            self.check(HTTPServerTransport(global_reactor), HTTPClientTransport(global_reactor))
        )

    def test_ws(self) -> Deferred[None]:
        return ensureDeferred(
            self.check(WSServerTransport(global_reactor), WSClientTransport(global_reactor))
        )
