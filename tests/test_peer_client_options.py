"""PeerRPCClient's Node options: ``max_active_key_dests`` and ``max_active_dest_transports``
(grenache-nodejs-base's ``maxActiveKeyDests`` / ``maxActiveDestTransports``), and replies that
carry an error and a result together.

A fake link and fake transports stand in for the grape and the network; time is a Clock. One
test drives the real HTTP transport on a MemoryReactorClock to count connection attempts.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping
from typing import Any, cast

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from grenache import errors
from grenache.peer import OutgoingRequest, PeerRPCClient
from grenache.peer.client import DEFAULT_ACTIVE_WINDOW
from tests.support import FakeClientTransport, FakeLink, echo, refuses

DESTS = [f"h{i}:{1000 + i}" for i in range(10)]


class PooledFakeTransport(FakeClientTransport):
    """A fake with the HTTP transport's ``pool_size_per_dest`` and ``idle_timeout``, and
    streams."""

    def __init__(self, behaviours: Any = None, idle_timeout: float = 4.0) -> None:
        super().__init__(behaviours)
        self.pool_size_per_dest = 16
        self.idle_timeout = idle_timeout
        self.streams: list[str] = []

    def stream(
        self, dest: str, key: str, *, headers: Mapping[str, Any] | None, timeout: float
    ) -> Deferred[Any]:
        self.streams.append(dest)
        return succeed(dest)


class MaxActiveKeyDestsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.link = FakeLink({"svc": list(DESTS)})
        self.transport = PooledFakeTransport({d: echo(d) for d in DESTS})

    def client(self, **kwargs: Any) -> PeerRPCClient:
        kwargs.setdefault("rng", random.Random(7))
        return PeerRPCClient(self.link, self.transport, reactor=self.clock, **kwargs)

    def used(self, n: int, client: PeerRPCClient, **kwargs: Any) -> Counter[str]:
        self.transport.sent.clear()
        for _ in range(n):
            self.successResultOf(client.request("svc", None, **kwargs))
        return Counter(d for d, _ in self.transport.sent)

    def test_default_spreads_over_every_destination(self) -> None:
        counts = self.used(300, self.client())
        self.assertEqual(sorted(counts), sorted(DESTS))

    def test_once_enough_are_active_only_they_are_used(self) -> None:
        """The first three distinct destinations picked are then the only ones, each used."""
        client = self.client(max_active_key_dests=3)
        counts = self.used(300, client)
        self.assertEqual(len(counts), 3, counts)
        self.assertTrue(all(n >= 50 for n in counts.values()), counts)
        self.assertTrue(all(client.is_active(d) for d in counts))
        self.assertEqual(sum(client.is_active(d) for d in DESTS), 3)

    def test_active_window_is_the_transport_idle_timeout(self) -> None:
        client = self.client(max_active_key_dests=3)
        self.assertEqual(client.active_window, 4.0)
        first = set(self.used(50, client))
        self.clock.advance(3.9)
        self.assertEqual(set(self.used(50, client)), first, "still active")
        self.clock.advance(4.0)
        self.assertFalse(any(client.is_active(d) for d in DESTS))
        # Idle destinations no longer count: every request is free to go anywhere until
        # three are active again, so spacing requests by the window reaches them all.
        spread: set[str] = set()
        for _ in range(200):
            spread |= set(self.used(1, client))
            self.clock.advance(4.0)
        self.assertEqual(spread, set(DESTS))

    def test_default_window_without_idle_timeout(self) -> None:
        client = PeerRPCClient(
            self.link, FakeClientTransport(), reactor=self.clock, max_active_key_dests=2
        )
        self.assertEqual(client.active_window, DEFAULT_ACTIVE_WINDOW)
        self.transport.idle_timeout = float("inf")
        self.assertEqual(self.client().active_window, DEFAULT_ACTIVE_WINDOW)

    def test_set_aside_destinations_do_not_count(self) -> None:
        """An active destination that refuses is left out; the request goes elsewhere."""
        client = self.client(max_active_key_dests=2)
        active = sorted(self.used(50, client))
        self.assertEqual(len(active), 2)
        self.transport.behaviours[active[0]] = refuses
        counts = self.used(50, client)
        self.assertTrue(client.is_set_aside(active[0]))
        self.assertEqual(counts[active[0]], 1, "tried once, then set aside")
        self.assertIn(active[1], counts)
        self.assertEqual(len(counts), 3, "one more destination became active")

    def test_fewer_destinations_than_the_limit(self) -> None:
        self.link.services["small"] = DESTS[:2]
        client = self.client(max_active_key_dests=5)
        self.transport.sent.clear()
        for _ in range(100):
            self.successResultOf(client.request("small", None))
        self.assertEqual({d for d, _ in self.transport.sent}, set(DESTS[:2]))

    def test_per_call_limit(self) -> None:
        client = self.client(max_active_key_dests=8)
        self.assertEqual(len(self.used(300, client, max_active_key_dests=2)), 2)
        self.assertEqual(len(self.used(300, client)), 8)

    def test_map_makes_destinations_active(self) -> None:
        client = self.client(max_active_key_dests=3)
        self.link.services["few"] = DESTS[5:8]
        self.successResultOf(client.map("few", None))
        self.assertEqual(set(self.used(100, client)), set(DESTS[5:8]))

    def test_stream_follows_the_limit(self) -> None:
        client = self.client(max_active_key_dests=2)
        for _ in range(100):
            self.successResultOf(client.stream("svc"))
        self.assertEqual(len(set(self.transport.streams)), 2)
        self.failureResultOf(client.stream("svc", max_active_key_dests=0), ValueError)

    def test_bad_limits(self) -> None:
        for bad in (0, -1, True, 1.5, "3"):
            with self.assertRaises(ValueError):
                self.client(max_active_key_dests=bad)
            with self.assertRaises(ValueError):
                self.client(max_active_dest_transports=bad)
            self.failureResultOf(
                self.client().request("svc", None, max_active_key_dests=bad), ValueError
            )
        self.assertEqual(self.transport.sent, [])

    def test_last_use_table_is_pruned(self) -> None:
        many = [f"n{i}:1" for i in range(5000)]
        self.link.services["many"] = many
        self.transport.behaviours.update({d: echo(d) for d in many})
        client = self.client()
        client.choose = lambda dests, exclude=frozenset(), max_active=None: next(order)  # type: ignore[method-assign]
        order = iter(many)
        for _ in range(4000):
            self.successResultOf(client.request("many", None))
        self.clock.advance(client.active_window)
        for _ in range(1000):
            self.successResultOf(client.request("many", None))
        self.assertLessEqual(len(client._last_used), 1001)


class MaxActiveDestTransportsTests(SynchronousTestCase):
    def test_sets_the_transport_pool_size(self) -> None:
        transport = PooledFakeTransport()
        client = PeerRPCClient(FakeLink(), transport, reactor=Clock(), max_active_dest_transports=3)
        self.assertEqual((transport.pool_size_per_dest, client.max_active_dest_transports), (3, 3))
        PeerRPCClient(FakeLink(), transport, reactor=Clock())
        self.assertEqual(transport.pool_size_per_dest, 3, "None leaves the transport alone")

    def test_transport_without_a_pool(self) -> None:
        """One connection per destination (WebSocket) is within any limit: nothing to set."""
        transport = FakeClientTransport()
        PeerRPCClient(FakeLink(), transport, reactor=Clock(), max_active_dest_transports=2)
        self.assertFalse(hasattr(transport, "pool_size_per_dest"))

    def test_http_transport_opens_at_most_that_many_connections(self) -> None:
        from grenache.transports.http import HTTPClientTransport

        reactor = MemoryReactorClock()
        transport = HTTPClientTransport(reactor)
        link = FakeLink({"svc": ["127.0.0.1:4000"]})
        client = PeerRPCClient(link, transport, reactor=reactor, max_active_dest_transports=3)
        calls = [client.request("svc", i, timeout=1.0) for i in range(6)]
        self.assertEqual(len(reactor.tcpClients), 3)
        self.assertEqual({(c[0], c[1]) for c in reactor.tcpClients}, {("127.0.0.1", 4000)})
        reactor.advance(1.0)
        for d in calls:
            self.failureResultOf(d, errors.RequestTimeout)
        self.successResultOf(client.stop())


class ErrorWithResultTests(SynchronousTestCase):
    """A reply ``[rid, err, result]`` with both: the call fails with RemoteError whose
    ``result`` holds the result (Node's client calls back ``(err, result)``)."""

    def remote_error(self, message: str, result: Any) -> errors.RemoteError:
        error = errors.RemoteError(message)
        cast(Any, error).result = result
        return error

    def setUp(self) -> None:
        self.clock = Clock()
        self.link = FakeLink({"svc": ["a:1"], "two": ["a:1", "b:2"]})
        replies = iter(range(100))

        def partly(request: OutgoingRequest) -> Deferred[Any]:
            return fail(self.remote_error("ERR_PARTIAL", {"done": next(replies)}))

        self.transport = FakeClientTransport({"a:1": partly, "b:2": partly})
        self.client = PeerRPCClient(self.link, self.transport, reactor=self.clock)

    def test_request(self) -> None:
        error = self.failureResultOf(self.client.request("svc", 1), errors.RemoteError).value
        self.assertEqual(
            (error.message, getattr(error, "result", None)), ("ERR_PARTIAL", {"done": 0})
        )

    def test_retried_call_keeps_the_last_reply(self) -> None:
        error = self.failureResultOf(
            self.client.request("svc", 1, retry=3), errors.RemoteError
        ).value
        self.assertEqual(getattr(error, "result", None), {"done": 2})
        self.assertEqual(len(self.transport.sent), 3)

    def test_map(self) -> None:
        error = self.failureResultOf(self.client.map("two", 1), errors.RemoteError).value
        self.assertEqual(getattr(error, "result", None), {"done": 0})
