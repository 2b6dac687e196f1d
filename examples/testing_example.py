"""A service's own tests with grenache.testing: a whole Grenache network in memory, on a Clock.

Run them with ``python -m twisted.trial examples.testing_example`` (docs/testing.rst shows this
file; the project's suite runs it as it is).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from grenache import errors
from grenache.peer import PeerPub, PeerRPCClient, PeerRPCServer, PeerSub, Request
from grenache.testing import MemoryNetwork

# --- the service under test ---------------------------------------------------------------


def greet(request: Request) -> str:
    """A handler: its return value is the reply, its exception the reply's error."""
    if not isinstance(request.payload, str) or not request.payload:
        raise ValueError("ERR_NAME_REQUIRED")
    return f"hello {request.payload}"


class Counter(PeerRPCServer):
    """A server subclass: adds each request's payload to a running total."""

    total = 0

    def handle(self, request: Request) -> int:
        self.total += int(request.payload)
        return self.total


# --- its tests ----------------------------------------------------------------------------


class GreeterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.network = MemoryNetwork(self.clock)
        self.grape = self.network.grape()  # a real grape: DHT node and grape API
        self.link = self.network.link(self.grape)  # a real grenache.link.Link
        self.server = PeerRPCServer(self.link, self.network.server_transport(), greet)
        self.successResultOf(self.server.listen())
        self.successResultOf(self.server.announce("greeter"))
        self.client = PeerRPCClient(
            self.link, self.network.client_transport(), reactor=self.clock, timeout=5
        )

    def test_greets(self) -> None:
        d = self.client.request("greeter", "world")
        self.assertEqual(self.successResultOf(d), "hello world")

    def test_handler_error(self) -> None:
        d = self.client.request("greeter", "")
        failure = self.failureResultOf(d, errors.RemoteError)
        self.assertEqual(failure.value.message, "ERR_NAME_REQUIRED")
        # The server logged the handler's traceback, as it does in production.
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_server_subclass(self) -> None:
        counter = Counter(self.link, self.network.server_transport())
        self.successResultOf(counter.listen())
        self.successResultOf(counter.announce("counter"))
        self.successResultOf(self.client.request("counter", 2))
        self.assertEqual(self.successResultOf(self.client.request("counter", 3)), 5)

    def test_timeout(self) -> None:
        self.network.blackhole(self.server.port)  # the service never answers
        d = self.client.request("greeter", "world")
        self.assertNoResult(d)
        self.clock.advance(5)  # the client's timeout
        self.failureResultOf(d, errors.RequestTimeout)

    def test_failover(self) -> None:
        backup = PeerRPCServer(self.link, self.network.server_transport(), lambda r: "backup")
        self.successResultOf(backup.listen())
        self.successResultOf(backup.announce("greeter"))
        self.network.refuse(self.server.port)  # the first instance is down
        for _ in range(5):
            self.assertEqual(self.successResultOf(self.client.request("greeter", "x")), "backup")

    def test_grape_down(self) -> None:
        self.grape.stop()
        self.clock.advance(10)  # the link's lookup cache expires
        d = self.client.request("greeter", "world")
        self.failureResultOf(d, errors.GrapeUnreachable)

    def test_announce_expires(self) -> None:
        self.network.run(300)  # re-announced all along
        self.assertEqual(self.successResultOf(self.client.request("greeter", "a")), "hello a")
        self.successResultOf(self.server.stop())  # no more announces
        self.network.run(170)  # peer_max_age 120: forgotten 80 to 160 s after the last announce
        self.failureResultOf(self.client.request("greeter", "a"), errors.LookupEmpty)


class TickerTests(SynchronousTestCase):
    def test_publish_and_resubscribe(self) -> None:
        clock = Clock()
        network = MemoryNetwork(clock)
        link = network.link()  # a link to a lone grape, made for it
        pub = PeerPub(link, network.pub_transport())
        port = self.successResultOf(pub.listen())
        self.successResultOf(pub.announce("ticker"))
        received: list[Any] = []
        sub = PeerSub(link, network.sub_transport(), reactor=clock)
        sub.on_message = received.append
        self.successResultOf(sub.sub("ticker"))
        self.assertEqual(pub.pub("BTC 100"), 1)
        self.assertEqual(received, ["BTC 100"])

        self.successResultOf(pub.stop())  # the publisher goes away...
        self.assertEqual(sub.subscriptions, {"ticker": None})
        pub = PeerPub(link, network.pub_transport())  # ...and comes back on its port
        self.successResultOf(pub.listen(port))
        self.successResultOf(pub.announce("ticker"))
        network.run(1)  # the subscriber's resubscribe timer
        self.assertEqual(sub.subscriptions, {"ticker": network.address(port)})
        pub.pub("BTC 101")
        self.assertEqual(received, ["BTC 100", "BTC 101"])
