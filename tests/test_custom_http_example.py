"""examples/custom_http_protocol.py: it runs, and its protocol does what it says."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor as _global_reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from examples import custom_http_protocol as example
from grenache.http.messages import HTTPResponse

POST = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"


class ExampleRunTests(TestCase):
    async def test_runs(self) -> None:
        """The example's program, on real loopback sockets: one request, one count."""
        outcome = await example.run(_global_reactor)
        self.assertEqual(outcome, {"reply": {"hello": "world"}, "requests": 1})


class GuardedProtocolTests(SynchronousTestCase):
    def connect(self, host: str) -> tuple[Any, Any, StringTransport]:
        factory = example.GuardedFactory(lambda request: succeed(HTTPResponse(200, b"ok")), Clock())
        proto = factory.buildProtocol(None)
        wire = StringTransport(peerAddress=IPv4Address("TCP", host, 5555))
        proto.makeConnection(wire)
        return factory, proto, wire

    def test_allowed_client_gets_the_header(self) -> None:
        factory, proto, wire = self.connect("127.0.0.1")
        proto.dataReceived(POST)
        self.assertEqual(
            wire.value(),
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n"
            b"x-served-by: guarded\r\n\r\nok",
        )
        self.assertEqual(factory.requests, 1)

    def test_other_clients_are_dropped(self) -> None:
        factory, _proto, wire = self.connect("10.1.2.3")
        self.assertTrue(wire.disconnecting or getattr(wire, "disconnected", False))
        self.assertEqual(factory.connections, set())
        self.assertEqual(factory.requests, 0)
