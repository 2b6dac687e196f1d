"""PeerSub's ``error`` event (Node's PeerSub emits ``error`` for a failed lookup): emitted
besides the failed ``sub()`` Deferred, and on each failed resubscribe attempt.

A fake link and a fake subscribing transport stand in for the grape and the network; time is a
Clock.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from grenache import errors
from grenache.peer import PeerSub
from grenache.peer import sub as sub_module
from tests.support import FakeLink, FakeSubTransport


class HeldSubTransport(FakeSubTransport):
    """Connection attempts wait for the test."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[Deferred[Any]] = []

    def connect(
        self, dest: str, on_message: Any, on_close: Any, *, topic: str | None = None
    ) -> Deferred[Any]:
        self.attempts.append(dest)
        d: Deferred[Any] = Deferred()
        self.pending.append(d)
        return d


class ErrorEventTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.link = FakeLink({"feed": ["p:1", "q:2"]})
        self.transport = FakeSubTransport()
        self.errors: list[tuple[str, Exception]] = []

    def peer(self, transport: Any = None, **kwargs: Any) -> PeerSub:
        sub = PeerSub(
            self.link,
            transport or self.transport,
            reactor=self.clock,
            rng=random.Random(3),
            **kwargs,
        )
        sub.add_listener("error", lambda name, error: self.errors.append((name, error)))
        return sub

    def test_lookup_failure(self) -> None:
        sub = self.peer()
        failure = self.failureResultOf(sub.sub("nothing"), errors.LookupEmpty)
        self.assertEqual(self.errors, [("nothing", failure.value)])

    def test_every_publisher_refuses(self) -> None:
        self.transport.refusing.update(["p:1", "q:2"])
        sub = self.peer()
        failure = self.failureResultOf(sub.sub("feed"), errors.DestinationUnreachable)
        self.assertEqual(self.errors, [("feed", failure.value)])
        self.assertEqual(sub.subscriptions, {})

    def test_no_error_on_success(self) -> None:
        sub = self.peer()
        self.successResultOf(sub.sub("feed"))
        self.assertEqual(self.errors, [])

    def test_each_failed_resubscribe(self) -> None:
        """No Deferred is left to fail once subscribed: the event is what tells."""
        sub = self.peer(backoff_initial=0.5, backoff_max=0.5)
        self.successResultOf(sub.sub("feed"))
        self.transport.refusing.update(["p:1", "q:2"])
        self.transport.connections[0].close()
        for n in (1, 2, 3):
            self.clock.advance(0.5)
            self.assertEqual(len(self.errors), n)
        self.assertTrue(all(name == "feed" for name, _ in self.errors))
        self.assertTrue(
            all(isinstance(error, errors.DestinationUnreachable) for _, error in self.errors)
        )
        self.transport.refusing.clear()
        self.clock.advance(0.5)
        self.assertEqual(len(self.errors), 3)
        self.assertIsNotNone(sub.subscriptions["feed"])

    def test_resubscribe_lookup_failure(self) -> None:
        sub = self.peer(backoff_initial=1.0)
        self.successResultOf(sub.sub("feed"))
        del self.link.services["feed"]
        self.transport.connections[0].close()
        self.clock.advance(1.0)
        [(name, error)] = self.errors
        self.assertEqual(name, "feed")
        self.assertIsInstance(error, errors.LookupEmpty)

    def test_unsub_while_connecting_is_no_error(self) -> None:
        transport = HeldSubTransport()
        sub = self.peer(transport)
        d = sub.sub("feed")
        sub.unsub("feed")
        transport.pending[0].errback(errors.DestinationUnreachable("refused"))
        self.failureResultOf(d)
        self.assertEqual(self.errors, [])

    def test_on_error_attribute(self) -> None:
        sub = self.peer()
        seen: list[Any] = []
        sub.on_error = lambda name, error: seen.append(name)
        self.failureResultOf(sub.sub("nothing"), errors.LookupEmpty)
        self.assertEqual(seen, ["nothing"])
        self.assertEqual(len(self.errors), 1)

    def test_listener_that_raises_is_logged(self) -> None:
        events: list[dict[str, Any]] = []
        self.patch(sub_module, "log", Logger(observer=events.append))  # type: ignore[arg-type]
        sub = self.peer()

        def broken(name: str, error: Exception) -> None:
            raise RuntimeError("listener bug")

        sub.add_listener("error", broken)
        self.failureResultOf(sub.sub("nothing"), errors.LookupEmpty)
        self.assertEqual([e["event"] for e in events if "log_failure" in e], ["error"])
        self.assertEqual(len(self.errors), 1)
        sub.remove_listener("error", broken)

    def test_unknown_event(self) -> None:
        with self.assertRaises(ValueError) as caught:
            self.peer().add_listener("eror", print)
        self.assertIn("'error'", str(caught.exception))
