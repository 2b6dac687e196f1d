"""grenache.metrics: values asserted after known traffic, scraped over HTTP; the cost-free
path without metrics; label bounds."""

from __future__ import annotations

from typing import Any

import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from grenache import errors
from grenache.link import Link
from grenache.metrics import MAX_LABEL_VALUES, Metrics
from grenache.peer import PeerPub, PeerRPCClient, PeerRPCServer, PeerSub, Request
from grenache.service_tap import GrenacheService, ServiceConfig
from grenache.transports.http import HTTPClientTransport
from grenache.transports.ws import WSPubTransport, WSSubTransport
from tests.interop.harness import start_python_grape
from tests.test_cli import reactor


def samples(text: str | bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by (name, sorted labels)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(text: str | bytes, metric: str, /, **labels: str) -> float:
    """One sample's value; KeyError naming it when absent."""
    found = samples(text)
    key = (metric, tuple(sorted(labels.items())))
    if key not in found:
        raise KeyError(f"{metric}{labels} not in {sorted(k for k in found if k[0] == metric)}")
    return found[key]


async def scrape(port: int, path: str = "/metrics") -> tuple[int, bytes, Any]:
    response = await treq.get(f"http://127.0.0.1:{port}{path}", persistent=False)
    body = await response.content()
    return response.code, body, response.headers


def double_or_fail(request: Request) -> Any:
    if request.payload == "fail":
        raise ValueError("ERR_ASKED_TO_FAIL")
    return request.payload * 2


class ServiceMetricsTests(TestCase):
    """A GrenacheService with --metrics against an in-process grape, a client with metrics."""

    timeout = 60

    async def start_service(self, grape_url: str, names: tuple[str, ...]) -> GrenacheService:
        config = ServiceConfig(
            names=names,
            handler=double_or_fail,
            grape=grape_url,
            interface="127.0.0.1",
            metrics="tcp:0:interface=127.0.0.1",
        )
        service = GrenacheService(config, reactor)
        service.startService()
        self.addCleanup(lambda: service.stopService() if service.running else None)
        assert service.started is not None
        await service.started
        return service

    async def test_requests_announces_and_health(self) -> None:
        grape = await start_python_grape(self)
        service = await self.start_service(grape.url, ("metered",))
        link = Link(grape.url, reactor=reactor)
        client_metrics = Metrics()
        client = PeerRPCClient(
            link, HTTPClientTransport(reactor), reactor=reactor, metrics=client_metrics
        )
        self.addCleanup(link.stop)
        self.addCleanup(client.stop)
        for n in (1, 2, 3):
            self.assertEqual(await client.request("metered", n), 2 * n)
        for _ in range(2):
            await self.assertFailure(client.request("metered", "fail"), errors.RemoteError)
        self.flushLoggedErrors(ValueError)

        assert service.metrics_port is not None
        code, body, headers = await scrape(service.metrics_port)
        self.assertEqual(code, 200)
        self.assertTrue(headers.getRawHeaders("content-type")[0].startswith("text/plain"))
        total = "grenache_rpc_requests_total"
        self.assertEqual(value(body, total, key="metered", outcome="ok"), 3)
        self.assertEqual(value(body, total, key="metered", outcome="error"), 2)
        self.assertEqual(value(body, total, key="metered", outcome="timeout"), 0)
        self.assertEqual(value(body, "grenache_rpc_request_seconds_count", key="metered"), 5)
        self.assertEqual(
            value(body, "grenache_rpc_request_seconds_bucket", key="metered", le="+Inf"), 5
        )
        self.assertEqual(value(body, "grenache_rpc_requests_in_flight"), 0)
        # The client keeps its keep-alive connection open.
        self.assertEqual(value(body, "grenache_rpc_connections"), 1)
        self.assertGreaterEqual(
            value(body, "grenache_announces_total", name="metered", outcome="ok"), 1
        )
        self.assertEqual(
            value(body, "grenache_announces_total", name="metered", outcome="failed"), 0
        )

        dest = f"127.0.0.1:{service.port}"
        seen = client_metrics.exposition()
        self.assertEqual(
            value(seen, "grenache_rpc_client_requests_total", dest=dest, outcome="ok"), 3
        )
        self.assertEqual(
            value(seen, "grenache_rpc_client_requests_total", dest=dest, outcome="error"), 2
        )
        self.assertEqual(value(seen, "grenache_rpc_client_request_seconds_count", dest=dest), 5)
        self.assertEqual(value(seen, "grenache_rpc_client_connections"), 1)

        code, body, headers = await scrape(service.metrics_port, "/health")
        self.assertEqual(code, 200)
        self.assertEqual(headers.getRawHeaders("content-type"), ["application/json"])
        health = json_of(body)
        self.assertEqual(health["status"], "healthy")
        self.assertEqual(health["components"]["service"]["names"], ["metered"])

        stopping = service.stopService()
        assert service.metrics is not None
        state, answer = service.metrics.health()
        self.assertEqual((state, answer["status"]), ("stopping", "stopping"))
        await stopping
        self.assertFalse(service.metrics_service and service.metrics_service.running)

    async def test_alone_while_the_last_announce_failed(self) -> None:
        from tests.test_cli import free_port

        service = await self.start_service(f"http://127.0.0.1:{free_port()}", ("lonely",))
        assert service.metrics_port is not None
        code, body, _ = await scrape(service.metrics_port, "/health")
        self.assertEqual(code, 503)
        health = json_of(body)
        self.assertEqual(health["status"], "alone")
        self.assertIn("lonely", health["components"]["service"]["announce_failed"])
        _, text, _ = await scrape(service.metrics_port)
        self.assertEqual(value(text, "grenache_announces_total", name="lonely", outcome="ok"), 0)
        self.assertEqual(
            value(text, "grenache_announces_total", name="lonely", outcome="failed"), 1
        )

    async def test_other_paths_and_methods(self) -> None:
        grape = await start_python_grape(self)
        service = await self.start_service(grape.url, ("paths",))
        port = service.metrics_port
        code, _, _ = await scrape(port, "/nothing")  # type: ignore[arg-type]
        self.assertEqual(code, 404)
        response = await treq.post(f"http://127.0.0.1:{port}/metrics", b"", persistent=False)
        await response.content()
        self.assertEqual(response.code, 405)


def json_of(body: bytes) -> Any:
    import json

    return json.loads(body)


class PubSubMetricsTests(TestCase):
    """A publisher and a subscriber over WebSocket, each with metrics."""

    timeout = 30

    async def test_published_delivered_received(self) -> None:
        grape = await start_python_grape(self)
        link = Link(grape.url, reactor=reactor)
        self.addCleanup(link.stop)
        metrics = Metrics()
        pub = PeerPub(link, WSPubTransport(reactor), metrics=metrics)
        await pub.listen("tcp:0:interface=127.0.0.1")
        self.addCleanup(pub.stop)
        await pub.announce("metered_feed")
        sub = PeerSub(link, WSSubTransport(reactor), reactor=reactor, metrics=metrics)
        self.addCleanup(sub.stop)
        got: list[Any] = []
        two: Deferred[None] = Deferred()

        def on_message(message: Any) -> None:
            got.append(message)
            if len(got) == 2:
                two.callback(None)

        sub.on_message = on_message
        await sub.sub("metered_feed")
        self.assertEqual(pub.pub("one"), 1)
        self.assertEqual(pub.pub("two"), 1)
        await two
        text = metrics.exposition()
        self.assertEqual(value(text, "grenache_pub_messages_total"), 2)
        self.assertEqual(value(text, "grenache_pub_deliveries_total"), 2)
        self.assertEqual(value(text, "grenache_pub_subscribers"), 1)
        self.assertEqual(value(text, "grenache_sub_messages_total", name="metered_feed"), 2)
        self.assertEqual(value(text, "grenache_sub_connects_total", name="metered_feed"), 1)
        self.assertEqual(value(text, "grenache_sub_connected", name="metered_feed"), 1)
        self.assertEqual(
            value(text, "grenache_announces_total", name="metered_feed", outcome="ok"), 1
        )
        sub.unsub("metered_feed")
        text = metrics.exposition()
        self.assertEqual(value(text, "grenache_sub_connected", name="metered_feed"), 0)
        self.assertEqual(value(text, "grenache_sub_messages_total", name="metered_feed"), 2)


class _Transport:
    """A server transport that keeps ``serve`` so a test calls it directly."""

    def __init__(self) -> None:
        self.serve: Any = None

    def listen(self, where: Any, serve: Any) -> Deferred[int]:
        self.serve = serve
        return succeed(1)

    def stop(self) -> Deferred[None]:
        return succeed(None)


class RecorderTests(SynchronousTestCase):
    """The server's counting on a Clock, without a network."""

    def server(self, handler: Any, **kwargs: Any) -> tuple[PeerRPCServer, _Transport, Clock]:
        clock = Clock()
        transport = _Transport()
        server = PeerRPCServer(None, transport, handler, reactor=clock, **kwargs)
        self.successResultOf(server.listen(0))
        return server, transport, clock

    def test_without_metrics_the_handler_is_served_directly(self) -> None:
        server, transport, _ = self.server(lambda r: r.payload)
        self.assertEqual(transport.serve, server._serve)

    def test_latency_timeout_and_in_flight(self) -> None:
        clock = Clock()
        metrics = Metrics(timer=clock.seconds, buckets=(0.1, 1.0))
        slow: Deferred[Any] = Deferred()
        transport = _Transport()
        server = PeerRPCServer(
            None,
            transport,
            lambda r: slow if r.payload == "slow" else r.payload,
            reactor=clock,
            metrics=metrics,
            handler_timeout=5.0,
        )
        self.successResultOf(server.listen(0))
        self.assertEqual(self.successResultOf(transport.serve(Request("1", "k", 7))), 7)
        pending = transport.serve(Request("2", "k", "slow"))
        clock.advance(0.5)
        text = metrics.exposition()
        self.assertEqual(value(text, "grenache_rpc_requests_in_flight"), 1)
        clock.advance(4.5)
        self.failureResultOf(pending, errors.HandlerTimeout)
        self.flushLoggedErrors(errors.HandlerTimeout)
        text = metrics.exposition()
        self.assertEqual(value(text, "grenache_rpc_requests_total", key="k", outcome="ok"), 1)
        self.assertEqual(value(text, "grenache_rpc_requests_total", key="k", outcome="timeout"), 1)
        self.assertEqual(value(text, "grenache_rpc_requests_in_flight"), 0)
        bucket = "grenache_rpc_request_seconds_bucket"
        self.assertEqual(value(text, bucket, key="k", le="0.1"), 1)  # the instant one
        self.assertEqual(value(text, bucket, key="k", le="1.0"), 1)
        self.assertEqual(value(text, bucket, key="k", le="+Inf"), 2)
        self.assertEqual(value(text, "grenache_rpc_request_seconds_sum", key="k"), 5.0)

    def test_keys_a_client_chooses_are_bounded(self) -> None:
        metrics = Metrics()
        _, transport, _ = self.server(lambda r: 1, metrics=metrics)
        for n in range(MAX_LABEL_VALUES + 50):
            transport.serve(Request(str(n), f"key{n}", None))
        text = metrics.exposition()
        keys = {
            dict(labels)["key"]
            for name, labels in samples(text)
            if name == "grenache_rpc_requests_total"
        }
        self.assertEqual(len(keys), MAX_LABEL_VALUES)
        self.assertEqual(value(text, "grenache_rpc_requests_total", key="other", outcome="ok"), 51)

    def test_a_failing_health_check_is_not_healthy(self) -> None:
        metrics = Metrics()

        def broken() -> Any:
            raise RuntimeError("boom")

        metrics.add_health("broken", broken)
        state, _ = metrics.health()
        self.assertEqual(state, "alone")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        with self.assertRaises(ValueError):
            metrics.add_health("broken", broken)

    def test_each_metrics_has_its_own_registry(self) -> None:
        from prometheus_client import REGISTRY

        one, two = Metrics(), Metrics()
        self.assertIsNot(one.registry, two.registry)
        self.assertIsNot(one.registry, REGISTRY)


class DocsExampleTests(TestCase):
    """docs/metrics.rst's program runs as written and prints what the page says."""

    timeout = 60

    async def test_the_program_on_the_page(self) -> None:
        import re
        from pathlib import Path

        from tests.test_docs import run_python

        page = (Path(__file__).parent.parent / "docs" / "metrics.rst").read_text()
        match = re.search(r"count nothing\)::\n\n((?:(?:    .*)?\n)+)", page)
        assert match is not None
        source = "\n".join(line[4:] for line in match.group(1).splitlines())
        code, lines, err = await run_python(self, source)
        self.assertEqual(code, 0, err.decode())
        self.assertEqual(lines[0], "42")
        self.assertEqual(lines[1], 'grenache_rpc_requests_total{key="doubler",outcome="ok"} 1.0')
        self.assertEqual(len(lines), 6)
        self.assertEqual(lines[-1], "healthy")
