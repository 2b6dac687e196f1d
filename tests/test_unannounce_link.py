"""The link's ``unannounce`` and ``stop_announcing`` against Python grapes and against grapes
that lack it (Node's answers, imitated on a Clock), and a stopped RPC server leaving lookups on
another grape at once (real sockets, in-process Python grapes)."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.logger import formatEvent
from twisted.trial import unittest

from grenache import errors
from grenache.grape.service import Grape, GrapeConfig
from grenache.link import Link
from grenache.link import link as link_module
from grenache.peer import PeerRPCServer
from grenache.transports.http import HTTPServerTransport
from tests.support import recording_log
from tests.test_link import HTTPCase, answer


class LinkUnannounceTests(HTTPCase):
    def test_sends_the_operation_and_answers_the_count(self) -> None:
        link = self.make(answer(b"2"))
        self.assertEqual(self.successResultOf(link.unannounce("svc", 1337)), 2)
        [seen] = self.grape.seen
        self.assertEqual(
            (seen.type, seen.method, seen.data), ("unannounce", b"POST", ["svc", 1337])
        )

    def test_node_grape_answers_are_unsupported(self) -> None:
        # Node 1.0.0: 200 "ERR_REQ_NOTFOUND"; its development branch: 404.
        for status in (200, 404):
            link = self.make(answer(b'"ERR_REQ_NOTFOUND"', status))
            failure = self.failureResultOf(link.unannounce("svc", 1), errors.GrapeReplyError)
            self.assertTrue(Link.unannounce_unsupported(failure))
        failure = self.failureResultOf(
            self.make(answer(b'"No nodes to query"')).unannounce("svc", 1)
        )
        self.assertFalse(Link.unannounce_unsupported(failure))

    def test_stop_announcing_falls_back_quietly(self) -> None:
        events = recording_log(self, link_module)

        def grape(seen: Any) -> tuple[int, bytes]:
            return (200, b"1") if seen.type == "announce" else (200, b'"ERR_REQ_NOTFOUND"')

        link = self.make(grape)
        for port in (1, 2):
            self.successResultOf(link.start_announcing("svc", port))
        for port in (1, 2):
            self.assertIsNone(self.successResultOf(link.stop_announcing("svc", port)))
        self.assertEqual([seen.type for seen in self.grape.seen].count("unannounce"), 2)
        lines = [formatEvent(e) for e in events]
        self.assertEqual(len(lines), 1, lines)  # once per link, at info level
        self.assertIn("has no unannounce", lines[0])
        self.assertEqual(events[0]["log_level"].name, "info")
        self.assertNoTimers()

    def test_stop_announcing_never_fails(self) -> None:
        events = recording_log(self, link_module)

        def grape(seen: Any) -> tuple[int, bytes]:
            return (200, b"1") if seen.type == "announce" else (500, b"boom")

        link = self.make(grape)
        self.successResultOf(link.start_announcing("svc", 1))
        self.assertIsNone(self.successResultOf(link.stop_announcing("svc", 1)))
        [event] = events
        self.assertEqual(event["log_level"].name, "warn")
        self.assertIn("unannounce of svc:1 failed", formatEvent(event))

    def test_a_grape_that_never_answers_bounds_the_wait(self) -> None:
        link = self.make(lambda seen: (200, b"1") if seen.type == "announce" else None)
        self.successResultOf(link.start_announcing("svc", 1))
        leaving = link.stop_announcing("svc", 1)
        self.assertNoResult(leaving)
        self.clock.advance(link.request_timeout)
        self.assertIsNone(self.successResultOf(leaving))


class StoppedServerLeavesLookupsTests(unittest.TestCase):
    """Two Python grapes: a service announced on one, looked up through the other, stops and
    is gone from the other's lookups at once (not after up to 160 s)."""

    async def grape(self, *bootstrap: Grape) -> Grape:
        nodes: Any = [("127.0.0.1", b.dht_port) for b in bootstrap]
        config = GrapeConfig(dht_port=0, api_port=0, bootstrap=nodes)
        grape = Grape(config, reactor)
        await grape.start()
        self.addCleanup(grape.stop)
        return grape

    def link(self, grape: Grape) -> Link:
        link = Link(grape.api_url, reactor=reactor, lookup_cache_ttl=0)
        self.addCleanup(link.stop)
        return link

    async def test_stop_unannounces(self) -> None:
        first = await self.grape()
        second = await self.grape(first)
        server_link = self.link(first)
        server = PeerRPCServer(
            server_link, HTTPServerTransport(reactor, interface="127.0.0.1"), lambda r: "ok"
        )
        port = await server.listen(0)
        self.assertEqual(await server.announce("unannounce_svc"), 1)
        looker = self.link(second)
        self.assertEqual(await looker.lookup("unannounce_svc"), [f"127.0.0.1:{port}"])
        await server.stop()
        await self.assertFailure(looker.lookup("unannounce_svc"), errors.LookupEmpty)
        self.assertEqual(server_link.announcing(), [])
