"""
The Python proxy between the real Node.js packages:

- grenache-nodejs-proxy's own example, with the Python proxy in its place: two Node grapes,
  grenache-nodejs-ws services ``coffee`` and ``tea``, a grenache-nodejs-http client that sends
  ``ws:coffee`` and ``ws:tea`` to ``rpc_proxy``, calls ``ws:coffee`` and ``ws:tea``, stops
  ``ws:tea`` and calls it again (answered ``ws:tea is not proxied``: a Node grape keeps the
  announce until it expires);
- a grenache-nodejs-ws client calling Python services that speak HTTP and ZeroMQ only,
  through static proxies (``ws:NAME``).

Node scripts: tests/interop/node/ws_server.js, http_client.js, ws_client.js. Skipped without
Node unless ``GRENACHE_INTEROP=required``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor as _global_reactor
from twisted.internet.defer import ensureDeferred
from twisted.trial import unittest

from grenache.link import Link
from grenache.peer import PeerRPCServer, Reply, Request
from grenache.proxy import ProxyConfig, ProxyService
from grenache.transports import get_transport
from tests.interop import harness
from tests.interop.harness import async_test

reactor: Any = _global_reactor


class _Base(unittest.TestCase):
    timeout = 120

    def setUp(self) -> None:
        harness.node_modules_dir()  # skip early (or fail) without Node

    def spawn(self, script: str, conf: dict[str, Any], name: str) -> harness.NodeProcess:
        return harness.spawn_node(self, script, [harness._dumps(conf).decode()], name=name)

    async def proxy(self, config: ProxyConfig) -> ProxyService:
        service = ProxyService(config, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        assert service.started is not None
        announced = await service.started
        for key, result in announced.items():
            self.assertIsInstance(result, int, f"announcing {key}: {result}")
        return service


class NodeProxyExampleTests(_Base):
    """grenache-nodejs-proxy's examples (rpc_ws_server_coffee.js, rpc_ws_server_tea.js,
    rpc_http_client.js) with the Python proxy where rpc_proxy.js ran."""

    async def http_request(self, client: harness.NodeProcess, name: str, payload: Any) -> Any:
        self.count += 1
        client.write_json(
            {"op": "request", "name": name, "payload": payload, "opts": {"timeout": 10000}}
        )
        reply: dict[str, Any] = await client.next_message(30.0)
        self.assertEqual(reply["i"], self.count - 1, reply)
        return reply

    @async_test
    async def test_the_example_end_to_end(self) -> None:
        first = await harness.start_node_grape(self, name="g1")
        second = await harness.start_node_grape(self, [first.dht_address], name="g2")
        for name, grape in (("coffee", first), ("tea", second)):
            server = self.spawn("ws_server.js", {"grape": grape.url, "name": name}, name)
            await server.ready
            await harness.lookup_until(first.url, name, bool, "lists the Node service")
        # The proxy serves over HTTP, as the example's PeerRPCProxy({proxyType: 'http'}).
        await self.proxy(ProxyConfig("http", grape=first.url, interface="127.0.0.1"))
        await harness.lookup_until(first.url, "rpc_proxy", bool, "lists the proxy")
        client = self.spawn("http_client.js", {"grape": first.url}, "http-client")
        await client.ready
        self.count = 0

        async def ok(name: str, payload: Any) -> Any:
            reply = await self.http_request(client, name, payload)
            self.assertTrue(reply["ok"], f"{name} {payload!r}: {reply}\n" + client.logs())
            return reply["result"]

        self.assertEqual(await ok("rpc_proxy", "ws:coffee"), "Started proxying ws:coffee")
        self.assertEqual(await ok("rpc_proxy", "ws:tea"), "Started proxying ws:tea")
        await harness.lookup_until(first.url, "ws:tea", bool, "lists the proxy")
        coffee = {"echo": "Hello", "key": "coffee", "fingerprint": None}
        self.assertEqual(await ok("ws:coffee", "Hello"), coffee)
        self.assertEqual(await ok("ws:tea", "Hello"), {**coffee, "key": "tea"})
        # The service's error, as it sent it.
        reply = await self.http_request(client, "ws:coffee", {"fail": "ERR_NO_MILK"})
        self.assertEqual((reply["ok"], reply["error"]), (False, "ERR_NO_MILK"))
        self.assertEqual(await ok("rpc_proxy", "stop ws:tea"), "Stopped proxying ws:tea")
        # Node grapes drop unannounce: the client still finds the proxy, which says no.
        reply = await self.http_request(client, "ws:tea", "Hello")
        self.assertEqual((reply["ok"], reply["error"]), (False, "ws:tea is not proxied"))
        reply = await self.http_request(client, "rpc_proxy", "tea")
        self.assertFalse(reply["ok"])
        self.assertIn("rpc_proxy: 'tea' is not \"TRANSPORT:NAME\"", reply["error"])
        self.assertEqual(await ok("ws:coffee", "Hello"), coffee)


def answer(request: Request) -> Any:
    """A Python service's handler: echoes, or answers an error with a result."""
    if request.payload == "fail":
        return Reply("ERR_PYTHON_SAYS_NO", {"partial": True})
    return {"from": "python", "key": request.key, "payload": request.payload}


class NodeClientThroughStaticProxyTests(_Base):
    """A grenache-nodejs-ws client calls Python services over transports it does not speak."""

    async def python_service(self, url: str, name: str, transport: str) -> None:
        link = Link(url, reactor=reactor)
        server = PeerRPCServer(
            link,
            get_transport(transport).server_transport(reactor, interface="127.0.0.1"),
            answer,
        )

        async def stop() -> None:
            await server.stop()
            await link.stop()

        self.addCleanup(lambda: ensureDeferred(stop()))
        await server.listen(0)
        await server.announce(name)

    async def through(self, transport: str) -> None:
        grape = await harness.start_python_grape(self)
        name = f"py_{transport}"
        await self.python_service(grape.url, name, transport)
        await self.proxy(
            ProxyConfig(
                "ws",
                names=(name,),
                to_transport=transport,
                grape=grape.url,
                interface="127.0.0.1",
            )
        )
        client = self.spawn("ws_client.js", {"grape": grape.url}, "ws-client")
        await client.ready
        payloads: list[Any] = ["hello", {"n": [1, 2.5, None], "s": "☕"}, [], 0]
        for i, payload in enumerate(payloads):
            client.write_json({"id": i, "op": "request", "name": f"ws:{name}", "payload": payload})
            reply = await client.next_message(30.0)
            self.assertEqual(
                reply,
                {
                    "id": i,
                    "ok": True,
                    "result": {"from": "python", "key": name, "payload": payload},
                },
                client.logs(),
            )
        client.write_json({"id": 9, "op": "request", "name": f"ws:{name}", "payload": "fail"})
        reply = await client.next_message(30.0)
        self.assertEqual(reply, {"id": 9, "ok": False, "error": "ERR_PYTHON_SAYS_NO"})
        client.write_json({"id": 10, "op": "many", "name": f"ws:{name}", "payloads": [1, 2, 3]})
        reply = await client.next_message(30.0)
        self.assertEqual([r["result"]["payload"] for r in reply["results"]], [1, 2, 3], reply)

    @async_test
    async def test_node_ws_client_to_python_http_service(self) -> None:
        await self.through("http")

    @async_test
    async def test_node_ws_client_to_python_zmq_service(self) -> None:
        await self.through("zmq")
