"""A grape with metrics (``twistd grape --metrics``'s wiring): API and DHT values after known
traffic, scraped over HTTP, and ``/health`` for healthy, alone and stopping."""

from __future__ import annotations

import json
from typing import Any

import treq
from twisted.trial.unittest import TestCase

from grenache.grape.service import Grape, GrapeConfig, add_metrics
from grenache.grape.tap import Options, makeService
from grenache.metrics import MetricsService
from tests.test_cli import free_port, reactor
from tests.test_metrics import scrape, value


async def api(grape: Grape, operation: str, data: Any) -> Any:
    response = await treq.post(
        f"{grape.api_url}/{operation}",
        json.dumps({"rid": "r", "data": data}).encode(),
        persistent=False,
    )
    return await response.content()


class GrapeMetricsTests(TestCase):
    timeout = 60

    async def start(self, **config: Any) -> tuple[Grape, int]:
        cfg = GrapeConfig(dht_port=0, api_port="tcp:0:interface=127.0.0.1", **config)
        grape = Grape(cfg, reactor)
        metrics = add_metrics(grape, "tcp:0:interface=127.0.0.1")
        self.assertIs(metrics, grape.getServiceNamed("metrics").metrics)
        await grape.start()
        self.addCleanup(lambda: grape.stop() if grape.running else None)
        service = grape.getServiceNamed("metrics")
        assert isinstance(service, MetricsService)
        await service.when_listening()
        return grape, service.port

    async def test_api_and_dht_values_after_known_traffic(self) -> None:
        grape, port = await self.start()
        await api(grape, "announce", ["metered_svc", 1337])
        await api(grape, "announce", ["metered_svc", 1338])
        for _ in range(3):
            await api(grape, "lookup", "metered_svc")
        await api(grape, "lookup", 42)  # a bad lookup: ERR_GRAPE_LOOKUP
        await api(grape, "nonsense", None)
        code, text, _ = await scrape(port)
        self.assertEqual(code, 200)
        total = "grenache_grape_requests_total"
        self.assertEqual(value(text, total, op="announce", outcome="ok"), 2)
        self.assertEqual(value(text, total, op="lookup", outcome="ok"), 3)
        self.assertEqual(value(text, total, op="lookup", outcome="error"), 1)
        self.assertEqual(value(text, total, op="other", outcome="error"), 1)
        self.assertEqual(value(text, total, op="put", outcome="ok"), 0)
        self.assertEqual(value(text, "grenache_grape_request_seconds_count", op="lookup"), 4)
        self.assertEqual(value(text, "grenache_grape_request_seconds_count", op="announce"), 2)
        self.assertEqual(value(text, "grenache_grape_requests_in_flight"), 0)
        # A lone grape stores its own announces: two peers under one name.
        self.assertEqual(value(text, "grenache_dht_stored_peers"), 2)
        self.assertEqual(value(text, "grenache_dht_stored_values"), 0)
        self.assertEqual(value(text, "grenache_dht_routing_nodes"), 0)
        code, body, _ = await scrape(port, "/health")
        self.assertEqual(code, 200)
        health = json.loads(body)
        self.assertEqual(health["status"], "healthy")
        self.assertEqual(health["components"]["grape"]["neighbours"], 0)

    async def test_dropped_datagrams_by_reason(self) -> None:
        grape, port = await self.start()
        # Datagrams delivered straight to the protocol, as the socket would.
        grape.node.krpc.datagramReceived(b"not bencode", ("127.0.0.1", 5555))
        grape.node.krpc.datagramReceived(b"d1:t2:aa1:y1:ze", ("127.0.0.1", 5555))
        _, text, _ = await scrape(port)
        self.assertEqual(value(text, "grenache_dht_dropped_total", reason="undecodable"), 1)
        self.assertEqual(value(text, "grenache_dht_dropped_total", reason="unknown y"), 1)
        self.assertEqual(value(text, "grenache_dht_datagrams_total", outcome="dropped"), 2)

    async def test_alone_with_bootstrap_nodes_and_no_neighbour(self) -> None:
        _, port = await self.start(bootstrap=(("127.0.0.1", free_port()),))
        code, body, _ = await scrape(port, "/health")
        self.assertEqual(code, 503)
        health = json.loads(body)
        self.assertEqual(health["status"], "alone")
        self.assertEqual(health["components"]["grape"]["bootstrap"], 1)

    async def test_two_grapes_are_healthy_then_stopping(self) -> None:
        first, _ = await self.start()
        second, port = await self.start(bootstrap=(("127.0.0.1", first.dht_port),))
        code, body, _ = await scrape(port, "/health")
        self.assertEqual((code, json.loads(body)["status"]), (200, "healthy"))
        _, text, _ = await scrape(port)
        self.assertGreaterEqual(value(text, "grenache_dht_routing_nodes"), 1)
        # The bootstrap's find_node went out and was answered by the first grape.
        queries = "grenache_dht_queries_total"
        self.assertGreaterEqual(
            value(text, queries, q="find_node", direction="sent", outcome="answered"), 1
        )
        _, first_text, _ = await scrape(first.getServiceNamed("metrics").port)
        self.assertGreaterEqual(
            value(first_text, queries, q="find_node", direction="received", outcome="answered"), 1
        )
        metrics = second.getServiceNamed("metrics").metrics
        stopping = second.stop()
        state, answer = metrics.health()
        self.assertEqual((state, answer["components"]["grape"]["status"]), ("stopping", "stopping"))
        await stopping

    def test_twistd_option(self) -> None:
        options = Options()
        options.parseOptions(["--dp", "0", "--aph", "0", "--metrics", "0"])
        self.assertEqual(options["metrics"], 0)
        grape = makeService(options)
        self.assertIsInstance(grape.getServiceNamed("metrics"), MetricsService)  # type: ignore[attr-defined]
        without = Options()
        without.parseOptions(["--dp", "0", "--aph", "0"])
        self.assertNotIn("metrics", makeService(without).namedServices)  # type: ignore[attr-defined]
