"""The HTTP transport on real loopback sockets: where it listens (a port, an endpoint
description, an endpoint), where it connects (IPv4, IPv6, host names), and what it says when
the destination is a WebSocket service. Ports come from the OS; every test waits on events.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import reactor as _global_reactor
from twisted.internet.defer import succeed
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.trial.unittest import TestCase

from grenache import errors
from grenache.peer import OutgoingRequest, Request
from grenache.transports.http import HTTPClientTransport, HTTPServerTransport
from grenache.transports.ws import WSServerTransport

reactor: Any = _global_reactor  # real sockets: these tests are about the OS's loopback


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


HAS_IPV6 = _has_ipv6_loopback()


def echo(request: Request) -> Any:
    return succeed({"key": request.key, "payload": request.payload})


class EndpointTests(TestCase):
    def server(self, **kwargs: Any) -> HTTPServerTransport:
        server = HTTPServerTransport(reactor, **kwargs)
        self.addCleanup(server.stop)
        return server

    def client(self) -> HTTPClientTransport:
        client = HTTPClientTransport(reactor)
        self.addCleanup(client.stop)
        return client

    async def call(self, dest: str, payload: Any = 1) -> Any:
        return await self.client().request(dest, OutgoingRequest("r-1", "svc", payload, 5.0))

    async def test_port_number(self) -> None:
        port = await self.server(interface="127.0.0.1").listen(0, echo)
        self.assertGreater(port, 0)
        self.assertEqual(await self.call(f"127.0.0.1:{port}"), {"key": "svc", "payload": 1})

    async def test_tcp_description_with_interface(self) -> None:
        port = await self.server().listen("tcp:0:interface=127.0.0.1", echo)
        self.assertEqual(await self.call(f"127.0.0.1:{port}", "x"), {"key": "svc", "payload": "x"})

    async def test_endpoint_object(self) -> None:
        endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        port = await self.server().listen(endpoint, echo)
        self.assertEqual(await self.call(f"127.0.0.1:{port}"), {"key": "svc", "payload": 1})

    async def test_host_name_destination(self) -> None:
        """``localhost:port`` is resolved (it may be ::1 or 127.0.0.1; both listen here)."""
        server = self.server()
        port = await server.listen("tcp:0:interface=127.0.0.1", echo)
        self.assertEqual(await self.call(f"localhost:{port}"), {"key": "svc", "payload": 1})

    async def test_ipv6(self) -> None:
        if not HAS_IPV6:
            self.skipTest("this machine has no IPv6 loopback (::1)")
        port = await self.server().listen("tcp6:0:interface=\\:\\:1", echo)
        self.assertEqual(await self.call(f"[::1]:{port}", "v6"), {"key": "svc", "payload": "v6"})

    async def test_bad_description(self) -> None:
        server = self.server()
        with self.assertRaises(ValueError) as caught:
            await server.listen("tcp:notaport", echo)
        self.assertIn("tcp:notaport", str(caught.exception))
        with self.assertRaises(ValueError):
            await server.listen("nosuchkind:0", echo)
        # The transport can still listen after a refused description.
        port = await server.listen("tcp:0:interface=127.0.0.1", echo)
        self.assertGreater(port, 0)

    async def test_wrong_protocol(self) -> None:
        """An HTTP request to a grenache WebSocket service: WrongProtocol, naming ``ws``."""
        ws = WSServerTransport(reactor, interface="127.0.0.1")
        self.addCleanup(ws.stop)
        port = await ws.listen(0, echo)
        with self.assertRaises(errors.WrongProtocol) as caught:
            await self.call(f"127.0.0.1:{port}")
        message = caught.exception.message
        self.assertIn(f"127.0.0.1:{port} is a WebSocket service, not HTTP", message)
        self.assertIn("--transport ws", message)
        self.assertIsInstance(caught.exception, errors.DestinationUnreachable)
