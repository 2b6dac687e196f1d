"""The WebSocket transports' endpoints, destinations, reactor and override points.

- listening on endpoint descriptions (``tcp:0:interface=127.0.0.1``, ``tcp6`` on ``::1``), on an
  endpoint object, with ``tls=``; a bad description is a clear error;
- destinations with a host name and with an IPv6 literal (``[::1]:port``);
- a WebSocket client at an HTTP service fails with :class:`~grenache.errors.WrongProtocol`, and
  an HTTP request at a WebSocket port is answered ``426 Upgrade Required``;
- autobahn's timers run on the injected reactor (a ``MemoryReactorClock``);
- the public factory and protocol classes and their override points, and
  examples/custom_ws_protocol.py.

Loopback tests use ports the OS picks and wait on events only.
"""

from __future__ import annotations

import socket
import sys
from typing import Any

from autobahn.twisted.testing import MemoryReactorClockResolver
from autobahn.websocket.types import ConnectionRequest
from twisted.internet import reactor as global_reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.testing import StringTransport
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.failure import Failure
from twisted.trial import unittest

from grenache.errors import DestinationUnreachable, RemoteError, RequestTimeout, WrongProtocol
from grenache.peer import OutgoingRequest, Request
from grenache.tls import ClientTLS, ServerTLS
from grenache.transports.http import HTTPServerTransport
from grenache.transports.ws import (
    PubFactory,
    PubProtocol,
    RPCClientFactory,
    RPCClientProtocol,
    RPCServerFactory,
    RPCServerProtocol,
    SubFactory,
    SubProtocol,
    WSClientTransport,
    WSPubTransport,
    WSServerTransport,
    WSSubTransport,
    fingerprint_whitelist,
)
from tests.support import make_pki
from tests.test_transport_ws import FakeServe, MemoryNet

REPO = __import__("pathlib").Path(__file__).resolve().parent.parent
reactor: Any = global_reactor


def req(rid: str, payload: Any, timeout: float = 10.0) -> OutgoingRequest:
    return OutgoingRequest(rid, "k", payload, timeout)


def echo(request: Request) -> Deferred[Any]:
    return succeed([request.key, request.payload])


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


class _Wire(StringTransport):
    def unregisterProducer(self) -> None:
        self.producer = None


# --- listening on endpoints ---------------------------------------------------------------------


class ListenTests(unittest.TestCase):
    """``listen`` takes a port number, an endpoint description or an endpoint."""

    async def round_trip(self, server: WSServerTransport, where: Any, host: str) -> int:
        port = await server.listen(where, echo)
        self.addCleanup(server.stop)
        client = WSClientTransport(reactor)
        self.addCleanup(client.stop)
        self.assertEqual(await client.request(f"{host}:{port}", req("r1", 1)), ["k", 1])
        return port

    async def test_tcp_description(self) -> None:
        port = await self.round_trip(
            WSServerTransport(reactor), "tcp:0:interface=127.0.0.1", "127.0.0.1"
        )
        self.assertGreater(port, 0)

    async def test_endpoint_object(self) -> None:
        endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        await self.round_trip(WSServerTransport(reactor), endpoint, "127.0.0.1")

    async def test_port_number_string(self) -> None:
        await self.round_trip(WSServerTransport(reactor, interface="127.0.0.1"), "0", "127.0.0.1")

    async def test_tcp6_on_ipv6_loopback_and_ipv6_destination(self) -> None:
        if not ipv6_loopback():
            raise unittest.SkipTest("no IPv6 loopback (::1) on this machine")
        await self.round_trip(WSServerTransport(reactor), r"tcp6:0:interface=\:\:1", "[::1]")

    async def test_ipv6_interface_with_a_port_number(self) -> None:
        if not ipv6_loopback():
            raise unittest.SkipTest("no IPv6 loopback (::1) on this machine")
        await self.round_trip(WSServerTransport(reactor, interface="::1"), 0, "[::1]")

    async def test_host_name_destination(self) -> None:
        """``localhost:port`` is resolved by the reactor; HostnameEndpoint tries each address
        it gets (::1 and 127.0.0.1), so the IPv4-only server is reached either way."""
        server = WSServerTransport(reactor)
        port = await server.listen("tcp:0:interface=127.0.0.1", echo)
        self.addCleanup(server.stop)
        client = WSClientTransport(reactor)
        self.addCleanup(client.stop)
        self.assertEqual(await client.request(f"localhost:{port}", req("r1", 2)), ["k", 2])

    async def test_bad_description(self) -> None:
        server = WSServerTransport(reactor)
        with self.assertRaises(ValueError) as caught:
            await server.listen("bogus:nothing", echo)
        self.assertIn("bogus:nothing", str(caught.exception))
        # The transport is not left half-listening: a good description works next.
        await self.round_trip(server, "tcp:0:interface=127.0.0.1", "127.0.0.1")

    async def test_listen_twice(self) -> None:
        server = WSServerTransport(reactor)
        await server.listen("tcp:0:interface=127.0.0.1", echo)
        self.addCleanup(server.stop)
        with self.assertRaises(RuntimeError):
            await server.listen(0, echo)

    async def test_pubsub_on_description_and_host_name(self) -> None:
        pub = WSPubTransport(reactor)
        port = await pub.listen("tcp:0:interface=127.0.0.1")
        self.addCleanup(pub.stop)
        sub = WSSubTransport(reactor)
        self.addCleanup(sub.stop)
        got: Deferred[str | bytes] = Deferred()
        await sub.connect(f"localhost:{port}", got.callback, lambda: None)
        self.assertEqual(pub.publish("hello"), 1)
        self.assertEqual(await got, "hello")

    async def test_tls_on_a_description_with_fingerprints(self) -> None:
        pki = make_pki()
        server = WSServerTransport(
            reactor,
            tls=ServerTLS(key=pki.server.key, cert=pki.server.cert),
            verify_client=fingerprint_whitelist([pki.client.fingerprint]),
        )
        port = await server.listen("tcp:0:interface=127.0.0.1", echo)
        self.addCleanup(server.stop)
        good = WSClientTransport(
            reactor, tls=ClientTLS(ca=pki.ca.cert, cert=pki.client.cert, key=pki.client.key)
        )
        self.addCleanup(good.stop)
        self.assertEqual(await good.request(f"127.0.0.1:{port}", req("r", 3)), ["k", 3])
        other = WSClientTransport(
            reactor,
            tls=ClientTLS(ca=pki.ca.cert, cert=pki.other_client.cert, key=pki.other_client.key),
        )
        self.addCleanup(other.stop)
        with self.assertRaises(DestinationUnreachable) as caught:
            await other.request(f"127.0.0.1:{port}", req("r", 4))
        self.assertIn("401", caught.exception.message)
        self.assertNotIsInstance(caught.exception, WrongProtocol)

    def test_tls_with_an_ssl_description_is_refused(self) -> None:
        pki = make_pki()
        server = WSServerTransport(reactor, tls=ServerTLS(key=pki.server.key, cert=pki.server.cert))
        failure = self.failureResultOf(
            server.listen("ssl:0:privateKey=k.pem:certKey=c.pem", echo), ValueError
        )
        self.assertIn("brings its own TLS", str(failure.value))


# --- destinations (in memory) ------------------------------------------------------------------


class DestinationTests(unittest.TestCase):
    """What the client connects to for each kind of destination, on a memory reactor."""

    def test_ipv6_literal(self) -> None:
        """``[::1]:1337`` connects to ::1 port 1337 (no resolver) and says ``Host: [::1]:1337``."""
        memory = MemoryReactorClockResolver()
        client = WSClientTransport(memory)
        d = client.request("[::1]:1337", req("r", 1))
        [(host, port, factory, _timeout, _bind)] = memory.tcpClients
        self.assertEqual((host, port), ("::1", 1337))
        protocol = factory.buildProtocol(None)
        wire = _Wire()
        protocol.makeConnection(wire)
        head = wire.value().split(b"\r\n")
        self.assertEqual(head[0], b"GET /ws HTTP/1.1")
        self.assertIn(b"Host: [::1]:1337", head)
        d.cancel()
        self.failureResultOf(d)

    def test_host_name(self) -> None:
        """A name goes through the reactor's resolver (HostnameEndpoint), then connects."""
        memory = MemoryReactorClockResolver()
        client = WSClientTransport(memory)
        d = client.request("grape.internal:1337", req("r", 1))
        [(host, port, _factory, _timeout, _bind)] = memory.tcpClients
        self.assertEqual(port, 1337)
        self.assertNotEqual(host, "grape.internal")
        d.cancel()
        self.failureResultOf(d)

    def test_malformed_destinations(self) -> None:
        client = WSClientTransport(MemoryReactorClockResolver())
        for dest in ("nonsense", "host:", ":80", "[::1]", "1.2.3.4:99999", "a:b:c:1"):
            with self.subTest(dest=dest):
                failure = self.failureResultOf(client.request(dest, req("r", 1)))
                self.assertIsInstance(failure.value, DestinationUnreachable)


# --- the wrong kind of port --------------------------------------------------------------------


class WrongProtocolTests(unittest.TestCase):
    """A WebSocket client pointed at an HTTP RPC server, and an HTTP request at a WS port."""

    async def http_service(self) -> int:
        server = HTTPServerTransport(reactor)
        port: int = await server.listen(0, echo)
        self.addCleanup(server.stop)
        return port

    async def test_rpc_client_at_http_service(self) -> None:
        port = await self.http_service()
        client = WSClientTransport(reactor)
        self.addCleanup(client.stop)
        with self.assertRaises(WrongProtocol) as caught:
            await client.request(f"127.0.0.1:{port}", req("r", 1))
        message = caught.exception.message
        self.assertIn(f"127.0.0.1:{port} is an HTTP service, not WebSocket", message)
        self.assertIn("--transport http", message)

    async def test_subscriber_at_http_service(self) -> None:
        port = await self.http_service()
        sub = WSSubTransport(reactor)
        self.addCleanup(sub.stop)
        with self.assertRaises(WrongProtocol) as caught:
            await sub.connect(f"127.0.0.1:{port}", print, print)
        self.assertIn("is an HTTP service, not WebSocket", caught.exception.message)

    def test_http_request_at_ws_server_gets_426(self) -> None:
        for transport in (
            WSServerTransport(MemoryReactorClockResolver()),
            WSPubTransport(MemoryReactorClockResolver()),
        ):
            with self.subTest(transport=type(transport).__name__):
                protocol = transport.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5))
                wire = _Wire()
                protocol.makeConnection(wire)
                protocol.dataReceived(
                    b"POST / HTTP/1.1\r\nHost: 127.0.0.1:1\r\nContent-Length: 2\r\n\r\n[]"
                )
                head = wire.value().split(b"\r\n\r\n")[0].split(b"\r\n")
                self.assertEqual(head[0], b"HTTP/1.1 426 Upgrade Required")
                self.assertIn(b"Upgrade: websocket", head)
                self.assertTrue(wire.disconnecting)


# --- the injected reactor ----------------------------------------------------------------------


class ReactorTests(unittest.TestCase):
    """autobahn's handshake timers run on the reactor the transport was given."""

    def test_server_handshake_timeout_on_the_given_reactor(self) -> None:
        memory = MemoryReactorClockResolver()
        server = WSServerTransport(memory)
        protocol = server.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5))
        wire = _Wire()
        protocol.makeConnection(wire)
        self.assertTrue(memory.getDelayedCalls(), "the open-handshake timer is on the reactor")
        memory.advance(9.0)
        self.assertFalse(wire.disconnecting)
        memory.advance(1.5)
        self.assertTrue(wire.disconnecting)

    def test_client_handshake_timeout_on_the_given_reactor(self) -> None:
        """A server that accepts TCP but never answers the upgrade: the request fails when the
        handshake timer, on the given reactor, fires (before the request's own timeout)."""
        memory = MemoryReactorClockResolver()
        client = WSClientTransport(memory)
        d = client.request("127.0.0.1:1337", req("r", 1, timeout=60.0))
        [(_host, _port, factory, _timeout, _bind)] = memory.tcpClients
        protocol = factory.buildProtocol(None)
        wire = _Wire()
        protocol.makeConnection(wire)
        memory.advance(10.5)
        self.assertTrue(wire.disconnecting)
        protocol.connectionLost(Failure(ConnectionError("dropped")))
        failure = self.failureResultOf(d, DestinationUnreachable)
        self.assertNotIsInstance(failure.value, RequestTimeout)

    def test_factories_keep_the_reactor(self) -> None:
        memory = MemoryReactorClockResolver()
        self.assertIs(WSServerTransport(memory).factory.reactor, memory)
        self.assertIs(WSPubTransport(memory).factory.reactor, memory)
        self.assertIs(RPCClientFactory("ws://127.0.0.1:1/ws", reactor=memory).reactor, memory)


# --- override points ---------------------------------------------------------------------------


class _Counting(RPCServerProtocol):
    def accept_client(self, request: ConnectionRequest) -> bool:
        return "x-refuse" not in request.headers

    def socket_opened(self) -> None:
        self.factory.events.append("opened")

    def socket_closed(self, reason: Failure) -> None:
        self.factory.events.append("closed")

    def request_received(self, request: Request) -> Any:
        self.factory.events.append(request.key)
        if request.key == "local":
            return "answered by the protocol"
        if request.key == "raise":
            raise ValueError("refused by the protocol")
        if request.key == "coroutine":
            return self._later(request)
        return super().request_received(request)

    async def _later(self, request: Request) -> Any:
        return f"coroutine answered {request.payload}"


class _CountingFactory(RPCServerFactory):
    protocol = _Counting

    def __init__(self, owner: Any, *, reactor: Any) -> None:
        super().__init__(owner, reactor=reactor)
        self.events: list[str] = []


class _CountingServer(WSServerTransport):
    factory_class = _CountingFactory


class _RecordingReplies(RPCClientProtocol):
    seen: list[bytes] = []

    def reply_received(self, payload: bytes) -> None:
        _RecordingReplies.seen.append(payload)
        super().reply_received(payload)


class _RecordingClientFactory(RPCClientFactory):
    protocol = _RecordingReplies  # type: ignore[assignment]


class OverrideTests(unittest.TestCase):
    """Subclassed protocols and factories, given by class attribute or keyword."""

    def setUp(self) -> None:
        self.net = MemoryNet()

    def test_server_hooks(self) -> None:
        for server in (
            _CountingServer(self.net.reactor),
            WSServerTransport(self.net.reactor, factory_class=_CountingFactory),
        ):
            with self.subTest(server=type(server).__name__):
                serve = FakeServe()
                self.successResultOf(server.listen(0, serve))
                _RecordingReplies.seen = []
                client = WSClientTransport(
                    self.net.reactor,
                    agent=self.net.agent(server.factory),
                    factory_class=_RecordingClientFactory,
                )
                local = client.request("127.0.0.1:1", OutgoingRequest("r1", "local", 1, 10.0))
                remote = client.request("127.0.0.1:1", OutgoingRequest("r2", "k", 2, 10.0))
                self.net.flush()
                self.assertEqual(self.successResultOf(local), "answered by the protocol")
                [(request, d)] = serve.calls
                self.assertEqual(request.key, "k")
                d.callback("served")
                self.net.flush()
                self.assertEqual(self.successResultOf(remote), "served")
                self.assertEqual(len(_RecordingReplies.seen), 2)
                # Raising at once, and answering with a coroutine, as a Deferred would.
                raised = client.request("127.0.0.1:1", OutgoingRequest("r3", "raise", 3, 10.0))
                later = client.request("127.0.0.1:1", OutgoingRequest("r4", "coroutine", 4, 10.0))
                self.net.flush()
                error = self.failureResultOf(raised, RemoteError).value
                self.assertEqual(error.message, "refused by the protocol")
                self.assertEqual(self.successResultOf(later), "coroutine answered 4")
                stopped = client.stop()
                self.net.flush()
                self.successResultOf(stopped)
                events = server.factory.events  # type: ignore[attr-defined]
                self.assertEqual(events, ["opened", "local", "k", "raise", "coroutine", "closed"])

    async def test_accept_client_on_loopback(self) -> None:
        server = WSServerTransport(reactor, factory_class=_CountingFactory)
        port = await server.listen("tcp:0:interface=127.0.0.1", echo)
        self.addCleanup(server.stop)

        class Refused(RPCClientFactory):
            def __init__(self, url: str, *, reactor: Any) -> None:
                super().__init__(url, reactor=reactor)
                self.headers = {"X-Refuse": "1"}

        client = WSClientTransport(reactor, factory_class=Refused)
        self.addCleanup(client.stop)
        with self.assertRaises(DestinationUnreachable) as caught:
            await client.request(f"127.0.0.1:{port}", req("r", 1))
        self.assertIn("403", caught.exception.message)
        self.assertNotIsInstance(caught.exception, WrongProtocol)
        self.assertNotIn("opened", server.factory.events)  # type: ignore[attr-defined]

    def test_pubsub_hooks(self) -> None:
        seen: list[Any] = []

        class Pub(PubProtocol):
            def socket_opened(self) -> None:
                seen.append("pub opened")

            def message_received(self, payload: bytes, is_binary: bool) -> None:
                seen.append(payload)

        class PubF(PubFactory):
            protocol = Pub

        class Sub(SubProtocol):
            def message_received(self, message: str | bytes) -> None:
                seen.append(("sub", message))
                super().message_received(message)

        class SubF(SubFactory):
            protocol = Sub  # type: ignore[assignment]

        pub = WSPubTransport(self.net.reactor, factory_class=PubF)
        self.successResultOf(pub.listen(0))
        sub = WSSubTransport(
            self.net.reactor, agent=self.net.agent(pub.factory), factory_class=SubF
        )
        got: list[str | bytes] = []
        d = sub.connect("127.0.0.1:1", got.append, lambda: None)
        self.net.flush()
        connection = self.successResultOf(d)
        pub.publish("m")
        self.net.flush()
        assert isinstance(connection.protocol, Sub)  # type: ignore[attr-defined]
        connection.protocol.sendMessage(b"from the subscriber")  # type: ignore[attr-defined]
        self.net.flush()
        self.assertEqual(got, ["m"])
        self.assertEqual(seen, ["pub opened", ("sub", "m"), b"from the subscriber"])


# --- the example -------------------------------------------------------------------------------


class ExampleTests(unittest.TestCase):
    """examples/custom_ws_protocol.py, in process and as the README runs it."""

    async def test_in_process(self) -> None:
        from examples.custom_ws_protocol import main

        outcome = await main(reactor)
        self.assertEqual(outcome["reply"], "HI")
        self.assertEqual(outcome["open_sockets"], 1)
        self.assertIn("403", outcome["refused"])
        self.assertEqual(outcome["open_sockets_after_stop"], 0)

    async def test_as_a_program(self) -> None:
        out, err, code = await getProcessOutputAndValue(
            sys.executable, [str(REPO / "examples" / "custom_ws_protocol.py")], path=str(REPO)
        )
        self.assertEqual(code, 0, err)
        lines = out.decode().splitlines()
        self.assertEqual(lines[0], "with the token: 'HI' (1 socket open)")
        self.assertTrue(lines[1].startswith("without the token: refused ("), lines)
