"""grenache.speedups.twisted_tcp: the probe, and which connections get the batched path.

Both write paths are run end to end on real sockets, with the same expected bytes, by
tests.test_httpserver.BatchedWriteTests (batched, and with AVAILABLE patched false).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor as _global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientCreator, Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from grenache.speedups import twisted_tcp

reactor: Any = _global_reactor


class ProbeTests(TestCase):
    def test_available_on_this_twisted(self) -> None:
        """The pinned Twisted has the internals (if this fails, the pin is wrong)."""
        self.assertTrue(twisted_tcp.AVAILABLE)

    def test_other_transports_use_the_public_path(self) -> None:
        self.assertIsNone(twisted_tcp.batched_writer(StringTransport(), twisted_tcp.Batch(), None))

    async def test_plain_tcp_server_connection(self) -> None:
        """A real tcp.Server gets a BatchedWriter, unless the internals are missing."""
        made: Deferred[Any] = Deferred()

        class Server(Protocol):
            def connectionMade(self) -> None:
                made.callback(self.transport)

        port = reactor.listenTCP(0, Factory.forProtocol(Server), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = await ClientCreator(reactor, Protocol).connectTCP("127.0.0.1", port.getHost().port)
        transport = await made
        try:
            writer = twisted_tcp.batched_writer(transport, twisted_tcp.Batch(), None)
            self.assertIsInstance(writer, twisted_tcp.BatchedWriter)
            self.patch(twisted_tcp, "AVAILABLE", False)
            self.assertIsNone(twisted_tcp.batched_writer(transport, twisted_tcp.Batch(), None))
        finally:
            gone: Deferred[None] = Deferred()
            client.connectionLost = lambda reason: gone.callback(None)
            transport.loseConnection()
            await gone


class WriteNowTests(TestCase):
    def test_client_internals_on_this_twisted(self) -> None:
        self.assertTrue(twisted_tcp.CLIENT_AVAILABLE)

    def test_other_transports_get_write(self) -> None:
        """A transport that is not a plain tcp.Client gets the public write."""
        transport = StringTransport()
        twisted_tcp.write_now(transport, b"abc")
        self.assertEqual(transport.value(), b"abc")

    async def roundtrip(self) -> tuple[bytes, int, int]:
        """What the server reads of two write_now calls on a real tcp.Client, and the bytes
        Twisted held for the client right after each call."""
        received = bytearray()
        done: Deferred[None] = Deferred()

        class Server(Protocol):
            def dataReceived(self, data: bytes) -> None:
                received.extend(data)
                if len(received) >= 6 and not done.called:
                    done.callback(None)

        port = reactor.listenTCP(0, Factory.forProtocol(Server), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = await ClientCreator(reactor, Protocol).connectTCP("127.0.0.1", port.getHost().port)
        transport: Any = client.transport
        try:
            twisted_tcp.write_now(transport, b"abc")
            first = len(transport.dataBuffer) + transport._tempDataLen
            twisted_tcp.write_now(transport, b"def")
            second = len(transport.dataBuffer) + transport._tempDataLen
            await done
        finally:
            gone: Deferred[None] = Deferred()
            client.connectionLost = lambda reason: gone.callback(None)
            transport.loseConnection()
            await gone
        return bytes(received), first, second

    async def test_plain_tcp_client_sends_at_once(self) -> None:
        """On a real tcp.Client the bytes go to the socket at once (Twisted holds none)."""
        self.assertEqual(await self.roundtrip(), (b"abcdef", 0, 0))

    async def test_without_internals_the_public_write(self) -> None:
        """Without the internals, the same bytes through the transport's buffer."""
        self.patch(twisted_tcp, "_CLIENT", None)
        self.assertEqual(await self.roundtrip(), (b"abcdef", 3, 6))
