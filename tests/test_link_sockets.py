"""The link over real loopback sockets against the grape's own API listeners (the HTTP and
WebSocket API factories around a fixed dispatcher): host names, IPv6 literals, and a URL that
points at the wrong API. Ports are picked by the OS."""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import maybeDeferred
from twisted.trial import unittest

from grenache import errors
from grenache.endpoints import join_host_port
from grenache.grape.api_http import grape_http_factory
from grenache.grape.api_ws import grape_ws_factory
from grenache.link import Link

reactor: Any = _reactor


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


HAS_IPV6 = _has_ipv6_loopback()


def dispatch(operation: str, data: Any) -> Any:
    """A grape that knows one service and stores every announce on one node."""
    if operation == "lookup":
        return ["127.0.0.1:1337"] if data == "svc" else []
    if operation == "announce":
        return 1
    raise errors.GrapeRequestNotFound()


class _APICase(unittest.TestCase):
    timeout = 30

    def serve(self, kind: str, interface: str) -> int:
        """Serve the grape's ``kind`` ("http" or "ws") API on ``interface``; its port."""
        factory: Any
        if kind == "http":
            factory = grape_http_factory(dispatch, reactor)
        else:
            factory = grape_ws_factory(dispatch, reactor=reactor)
        port = reactor.listenTCP(0, factory, interface=interface)
        self.addCleanup(lambda: maybeDeferred(port.stopListening))
        self.addCleanup(factory.closeConnections)
        return int(port.getHost().port)

    def link(self, url: str) -> Link:
        link = Link(url, reactor=reactor, request_timeout=5)
        self.addCleanup(link.stop)
        return link

    async def check_link(self, url: str) -> None:
        link = self.link(url)
        self.assertEqual(await link.lookup("svc"), ["127.0.0.1:1337"])
        self.assertEqual(await link.announce("svc", 1337), 1)
        with self.assertRaises(errors.LookupEmpty):
            await link.lookup("nothing")


class AddressTests(_APICase):
    async def test_host_name_http(self) -> None:
        port = self.serve("http", "127.0.0.1")
        await self.check_link(f"http://localhost:{port}")

    async def test_host_name_ws(self) -> None:
        port = self.serve("ws", "127.0.0.1")
        await self.check_link(f"ws://localhost:{port}")

    async def test_ipv6_http(self) -> None:
        if not HAS_IPV6:
            raise unittest.SkipTest("this machine has no IPv6 loopback (::1)")
        port = self.serve("http", "::1")
        await self.check_link(f"http://{join_host_port('::1', port)}")

    async def test_ipv6_ws(self) -> None:
        if not HAS_IPV6:
            raise unittest.SkipTest("this machine has no IPv6 loopback (::1)")
        port = self.serve("ws", "::1")
        await self.check_link(f"ws://{join_host_port('::1', port)}/")


class WrongAPITests(_APICase):
    async def test_http_url_at_the_websocket_api(self) -> None:
        port = self.serve("ws", "127.0.0.1")
        link = self.link(f"http://127.0.0.1:{port}")
        with self.assertRaises(errors.GrapeWrongAPI) as caught:
            await link.lookup("svc")
        error = caught.exception
        self.assertIsInstance(error, errors.GrapeUnreachable)
        self.assertIsInstance(error, errors.WrongProtocol)
        self.assertRegex(
            error.message,
            rf"^ERR_GRAPE_WRONG_API: http://127.0.0.1:{port} is the grape's WebSocket API \(it"
            rf" answered HTTP 4(05|26) to a POST\); use ws://127.0.0.1:{port}$",
        )

    async def test_ws_url_at_the_http_api(self) -> None:
        port = self.serve("http", "127.0.0.1")
        link = self.link(f"ws://127.0.0.1:{port}")
        with self.assertRaises(errors.GrapeWrongAPI) as caught:
            await link.announce("svc", 1)
        self.assertRegex(
            caught.exception.message,
            rf"^ERR_GRAPE_WRONG_API: ws://127.0.0.1:{port} is the grape's HTTP API \(it answered"
            rf" the WebSocket handshake with HTTP \d+\); use http://127.0.0.1:{port}$",
        )

    async def test_wrong_api_is_not_retried(self) -> None:
        port = self.serve("ws", "127.0.0.1")
        link = self.link(f"http://127.0.0.1:{port}")
        sent: list[str] = []
        link.start()
        client: Any = link._client
        request = client.agent.request

        def counting(method: bytes, url: bytes, *args: Any) -> Any:
            sent.append(url.decode())
            return request(method, url, *args)

        client.agent.request = counting
        with self.assertRaises(errors.GrapeWrongAPI):
            await link.lookup("svc", retry=3)
        self.assertEqual(sent, [f"http://127.0.0.1:{port}/lookup"])
