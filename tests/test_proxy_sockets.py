"""The transport proxy on loopback: real transports between an in-process grape, origin
services and callers; ``grenache proxy`` and ``twistd -n grenache-proxy`` as subprocesses."""

from __future__ import annotations

import json
import socket
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.trial.unittest import TestCase

from grenache import errors
from grenache.link import Link
from grenache.peer import PeerPub, PeerRPCClient, PeerRPCServer, PeerSub, Reply, Request
from grenache.proxy import ProxyConfig, ProxyService
from grenache.proxy_tap import Options as TapOptions
from grenache.proxy_tap import makeService
from grenache.transports import get_transport
from tests.interop.harness import start_python_grape, wait_until
from tests.test_cli import TWISTD, grenache, reactor, run_cli, spawn, start_server
from tests.test_metrics import scrape, value


def origin(request: Request) -> Any:
    """The service behind the proxy: echoes, fails, or answers an error with a result."""
    payload = request.payload
    if isinstance(payload, dict) and "fail" in payload:
        raise ValueError(payload["fail"])
    if isinstance(payload, dict) and "reply" in payload:
        return Reply(*payload["reply"])
    return {"key": request.key, "payload": payload}


PAYLOADS: list[Any] = [
    "Hello",
    {"n": [1, 2.5, -0.0, 1e21, None, True], "s": '☕ \u2028 "quoted"'},
    [],
    0,
    "x" * 100_000,
]


class _Loopback(TestCase):
    timeout = 60

    async def grape_url(self) -> str:
        grape = await start_python_grape(self)
        return grape.url

    def client(self, url: str, transport: str) -> PeerRPCClient:
        link = Link(url, reactor=reactor, lookup_cache_ttl=0)
        client = PeerRPCClient(
            link, get_transport(transport).client_transport(reactor), reactor=reactor, timeout=10
        )

        async def stop() -> None:
            await client.stop()
            await link.stop()

        self.addCleanup(lambda: ensureDeferred(stop()))
        return client

    async def proxy(self, config: ProxyConfig) -> ProxyService:
        service = ProxyService(config, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        assert service.started is not None
        await service.started
        return service

    async def check_forwarding(self, client: PeerRPCClient, key: str, name: str) -> None:
        for payload in PAYLOADS:
            self.assertEqual(await client.request(key, payload), {"key": name, "payload": payload})
        with self.assertRaises(errors.RemoteError) as caught:
            await client.request(key, {"reply": ["ERR_PARTIAL", {"done": [1, 2]}]})
        self.assertEqual(
            (caught.exception.message, caught.exception.result),
            (
                "ERR_PARTIAL",
                {"done": [1, 2]},
            ),
        )
        with self.assertRaises(errors.RemoteError) as caught:
            await client.request(key, {"fail": "ERR_NO_MILK"})
        self.assertEqual((caught.exception.message, caught.exception.result), ("ERR_NO_MILK", None))
        self.flushLoggedErrors(ValueError)


async def serve(case: TestCase, url: str, name: str, transport: str, tls: Any = None) -> int:
    """``origin`` served over ``transport`` on loopback, announced as ``name``; its port."""
    if transport != "zmq":
        return await start_server(case, url, name, origin, transport=transport)
    link = Link(url, reactor=reactor)
    server = PeerRPCServer(
        link,
        get_transport("zmq").server_transport(reactor, tls=tls, interface="127.0.0.1"),
        origin,
    )

    async def stop() -> None:
        await server.stop()
        await link.stop()

    case.addCleanup(lambda: ensureDeferred(stop()))
    port = await server.listen(0)
    await server.announce(name)
    return port


class LoopbackTests(_Loopback):
    async def static(self, source: str, target: str) -> None:
        url = await self.grape_url()
        await serve(self, url, "svc", target)
        service = await self.proxy(
            ProxyConfig(
                source, names=("svc",), to_transport=target, grape=url, interface="127.0.0.1"
            )
        )
        self.assertEqual(service.keys(), [f"{source}:svc"])
        await self.check_forwarding(self.client(url, source), f"{source}:svc", "svc")

    async def test_ws_to_http(self) -> None:
        await self.static("ws", "http")

    async def test_http_to_ws(self) -> None:
        await self.static("http", "ws")

    async def test_ws_to_zmq(self) -> None:
        await self.static("ws", "zmq")

    async def test_zmq_to_http(self) -> None:
        await self.static("zmq", "http")

    async def test_bytes_from_zmq_have_no_json_form(self) -> None:
        url = await self.grape_url()
        await serve(self, url, "svc", "ws")
        await self.proxy(
            ProxyConfig("zmq", names=("svc",), to_transport="ws", grape=url, interface="127.0.0.1")
        )
        client = self.client(url, "zmq")
        with self.assertRaises(errors.RemoteError) as caught:
            await client.request("zmq:svc", b"\x00\x01")
        self.assertEqual(caught.exception.message, "Object of type bytes is not JSON serializable")
        self.assertEqual(await client.request("zmq:svc", "ok"), {"key": "svc", "payload": "ok"})
        self.flushLoggedErrors(TypeError)

    async def test_zmq_with_curve_to_ws(self) -> None:
        from grenache.transports.zmq import CurveClient, CurveServer, generate_keypair

        url = await self.grape_url()
        await serve(self, url, "svc", "ws")
        proxy_keys = generate_keypair()
        await self.proxy(
            ProxyConfig(
                "zmq",
                names=("svc",),
                to_transport="ws",
                grape=url,
                interface="127.0.0.1",
                tls=CurveServer(proxy_keys),
            )
        )
        link = Link(url, reactor=reactor, lookup_cache_ttl=0)
        transport = get_transport("zmq").client_transport(
            reactor, tls=CurveClient(proxy_keys.public)
        )
        client = PeerRPCClient(link, transport, reactor=reactor, timeout=10)
        self.addCleanup(lambda: ensureDeferred(_stop_client(client)))
        await self.check_forwarding(client, "zmq:svc", "svc")

    async def test_ws_to_zmq_with_curve(self) -> None:
        from grenache.transports.zmq import CurveClient, CurveServer, generate_keypair

        url = await self.grape_url()
        service_keys = generate_keypair()
        await serve(self, url, "svc", "zmq", tls=CurveServer(service_keys))
        await self.proxy(
            ProxyConfig(
                "ws",
                names=("svc",),
                to_transport="zmq",
                grape=url,
                interface="127.0.0.1",
                to_security={"zmq": CurveClient(service_keys.public)},
            )
        )
        await self.check_forwarding(self.client(url, "ws"), "ws:svc", "svc")

    async def test_control_with_a_zmq_target(self) -> None:
        url = await self.grape_url()
        await serve(self, url, "beans", "zmq")
        await self.proxy(ProxyConfig("http", grape=url, interface="127.0.0.1"))
        client = self.client(url, "http")
        self.assertEqual(
            await client.request("rpc_proxy", "zmq:beans"), "Started proxying zmq:beans"
        )
        await self.check_forwarding(client, "zmq:beans", "beans")

    async def test_control_over_http(self) -> None:
        url = await self.grape_url()
        await start_server(self, url, "coffee", origin, transport="ws")
        await self.proxy(ProxyConfig("http", grape=url, interface="127.0.0.1"))
        client = self.client(url, "http")
        self.assertEqual(
            await client.request("rpc_proxy", "ws:coffee"), "Started proxying ws:coffee"
        )
        await self.check_forwarding(client, "ws:coffee", "coffee")
        self.assertEqual(
            await client.request("rpc_proxy", "stop ws:coffee"), "Stopped proxying ws:coffee"
        )
        with self.assertRaises(errors.LookupEmpty):
            await client.request("ws:coffee", "Hello")

    async def relay(self, source: str, target: str) -> None:
        """A publisher of ``ticker`` on ``target``, a relay to ``source``, a subscriber of
        ``SOURCE:ticker``: published messages arrive unchanged."""
        url = await self.grape_url()
        link = Link(url, reactor=reactor, lookup_cache_ttl=0)
        pub_transport = get_transport(target, pubsub=True).pub_transport(
            reactor, interface="127.0.0.1"
        )
        pub = PeerPub(link, pub_transport)
        await pub.listen(0)
        await pub.announce("ticker")

        async def stop() -> None:
            await pub.stop()
            await link.stop()

        self.addCleanup(lambda: ensureDeferred(stop()))
        service = await self.proxy(
            ProxyConfig(
                source,
                names=("ticker",),
                to_transport=target,
                pubsub=True,
                grape=url,
                interface="127.0.0.1",
            )
        )
        relay = service.relay
        assert relay is not None
        self.assertEqual(relay.key, f"{source}:ticker")
        await wait_until(lambda: ensureDeferred(_value(relay.connected)), 10, "relay connected")
        received: list[Any] = []
        sub = PeerSub(
            link, get_transport(source, pubsub=True).sub_transport(reactor), reactor=reactor
        )
        sub.add_listener("message", received.append)
        self.addCleanup(sub.stop)
        await sub.sub(f"{source}:ticker")

        async def published() -> list[Any]:
            # Published until one arrives: a new subscription takes a moment to reach the
            # publisher (ZeroMQ's slow joiner).
            pub.pub("tick ☕")
            return received

        await wait_until(lambda: ensureDeferred(published()), 10, "a relayed message")
        self.assertEqual(set(received), {"tick ☕"})

    async def test_pubsub_relay_ws_to_ws(self) -> None:
        await self.relay("ws", "ws")

    async def test_pubsub_relay_from_zmq_publishers_to_ws_subscribers(self) -> None:
        await self.relay("ws", "zmq")

    async def test_pubsub_relay_from_ws_publishers_to_zmq_subscribers(self) -> None:
        await self.relay("zmq", "ws")


async def _value(value: Any) -> Any:
    return value


class MakeServiceTests(TestCase):
    def test_port_in_use_is_a_one_line_error(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            port = taken.getsockname()[1]
            options = TapOptions()
            options.parseOptions(["--from", "http", "--port", str(port), "-b", "127.0.0.1"])
            error = self.assertRaises(SystemExit, makeService, options)
        self.assertEqual(
            error.code,
            f"twistd grenache-proxy: cannot listen on TCP port {port}: Address already in use",
        )

    def test_port_is_bound_by_makeService(self) -> None:
        options = TapOptions()
        options.parseOptions(["--from", "ws", "--name", "x", "--to", "http", "-b", "127.0.0.1"])
        service: Any = makeService(options)
        self.addCleanup(service.stopService)
        self.assertGreater(service.port, 0)


class CommandTests(TestCase):
    """``grenache proxy`` and ``twistd -n grenache-proxy`` as subprocesses."""

    timeout = 120

    async def test_grenache_proxy_static_with_metrics(self) -> None:
        url = (await start_python_grape(self)).url
        origin_port = await start_server(self, url, "svc", origin, transport="http")
        proc = grenache(
            self,
            "proxy",
            "svc",
            "--from",
            "ws",
            "--to",
            "http",
            "-g",
            url,
            "-b",
            "127.0.0.1",
            "--metrics",
            "tcp:0:interface=127.0.0.1",
        )
        line = json.loads(await proc.line(0))
        self.assertEqual(
            {k: line[k] for k in ("mode", "keys", "from", "to", "grape")},
            {"mode": "static", "keys": ["ws:svc"], "from": "ws", "to": "http", "grape": url},
        )
        self.assertEqual(line["announced"], {"ws:svc": 1})
        client = PeerRPCClient(
            Link(url, reactor=reactor),
            get_transport("ws").client_transport(reactor),
            reactor=reactor,
        )
        self.addCleanup(lambda: ensureDeferred(_stop_client(client)))
        self.assertEqual(await client.request("ws:svc", "hi"), {"key": "svc", "payload": "hi"})
        code, body, _ = await scrape(line["metrics"])
        self.assertEqual(code, 200)
        self.assertEqual(
            value(body, "grenache_rpc_requests_total", key="ws:svc", outcome="ok"), 1.0
        )
        dest = f"127.0.0.1:{origin_port}"
        self.assertEqual(
            value(body, "grenache_rpc_client_requests_total", dest=dest, outcome="ok"), 1.0
        )
        code, health, _ = await scrape(line["metrics"], "/health")
        self.assertEqual(code, 200, health)
        ended = await proc.stop()
        self.assertEqual(ended.code, 0, ended.describe())

    async def test_twistd_control_mode(self) -> None:
        url = (await start_python_grape(self)).url
        await start_server(self, url, "coffee", origin, transport="ws")
        twistd = spawn(
            self,
            (
                *TWISTD,
                "-n",
                "--pidfile=",
                "grenache-proxy",
                "--from",
                "http",
                "-g",
                url,
                "-b",
                "127.0.0.1",
            ),
        )
        await twistd.wait_for(
            lambda p: b"Announced 'rpc_proxy'" in p.out + p.err, "the announce log line"
        )
        result = await run_cli(self, "request", "rpc_proxy", '"ws:coffee"', "-g", url)
        self.assertEqual(result.json(), "Started proxying ws:coffee", result.describe())
        result = await run_cli(self, "request", "ws:coffee", '"Hello"', "-g", url)
        self.assertEqual(result.json(), {"key": "coffee", "payload": "Hello"}, result.describe())
        result = await run_cli(self, "request", "rpc_proxy", '"smtp:coffee"', "-g", url)
        self.assertEqual(result.code, 1)
        self.assertIn(b"unknown transport 'smtp'", result.err)
        ended = await twistd.stop()
        self.assertIn(b"Server Shut Down", ended.out + ended.err, ended.describe())

    async def test_twistd_lists_the_plugin_and_refuses_bad_options(self) -> None:
        result = await spawn(self, (*TWISTD, "--help")).finish()
        self.assertIn(b"grenache-proxy", result.out)
        result = await spawn(self, (*TWISTD, "grenache-proxy", "--help")).finish()
        self.assertIn(b"twistd -n grenache-proxy --from http --port 1341", result.out)
        result = await spawn(
            self, (*TWISTD, "-n", "--pidfile=", "grenache-proxy", "--from", "ws", "--name", "x")
        ).finish()
        self.assertNotEqual(result.code, 0)
        self.assertIn(b"give --to TRANSPORT", result.out + result.err)


async def _stop_client(client: PeerRPCClient) -> None:
    await client.stop()
    await client.link.stop()  # type: ignore[attr-defined]
