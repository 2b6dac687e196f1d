"""Tests for RPC over ZeroMQ (grenache.transports.zmq): real sockets on loopback.

ZeroMQ runs its own I/O thread, so these tests use the real reactor and ports chosen by the OS,
and wait for conditions (Deferreds that fire on a reply, an error or a socket event), never
for time. The frames are those of docs/protocol.rst, *RPC over ZeroMQ*; the malformed-input
tests speak them by hand on a raw pyzmq DEALER driven through the transports' own socket class.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import msgpack
import zmq
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.error import CannotListenError
from twisted.trial import unittest

from grenache.errors import (
    DestinationUnreachable,
    RemoteError,
    RequestTimeout,
    RequestTooLarge,
    TransportClosed,
)
from grenache.peer import OutgoingRequest, PeerRPCClient, PeerRPCServer, Reply, Request, new_rid
from grenache.transports import get_transport
from grenache.transports.zmq import (
    CurveClient,
    CurveRefused,
    CurveServer,
    SocketOptions,
    ZmqClientTransport,
    ZmqServerTransport,
    generate_keypair,
    read_client_keys,
    read_keypair_file,
    write_keypair_file,
)
from grenache.transports.zmq.frames import (
    ZmqSocket,
    bind_address,
    connect_address,
    decode_requests,
    get_codec,
    new_factory,
)
from tests.support import FakeLink

LOOPBACK = "127.0.0.1"
global_reactor: Any = _reactor


def out(key: str, payload: Any, timeout: float = 5.0) -> OutgoingRequest:
    return OutgoingRequest(new_rid(), key, payload, timeout)


class Held:
    """A ``serve`` that holds every request until the test answers it; ``arrived`` fires on
    each arrival."""

    def __init__(self) -> None:
        self.calls: list[tuple[Request, Deferred[Any]]] = []
        self.waiting: list[tuple[int, Deferred[None]]] = []

    def __call__(self, request: Request) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.calls.append((request, d))
        for n, w in list(self.waiting):
            if len(self.calls) >= n:
                self.waiting.remove((n, w))
                w.callback(None)
        return d

    def arrived(self, n: int) -> Deferred[None]:
        if len(self.calls) >= n:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self.waiting.append((n, d))
        return d


def echo(request: Request) -> Any:
    if request.key == "fail":
        raise ValueError("handler says no")
    if request.key == "both":
        return Reply("partial", {"got": 1})
    return {"key": request.key, "payload": request.payload, "peer": request.peer_certificate}


def answer_as(i: int) -> Any:
    return lambda r: {"server": i, "p": r.payload}


class ZmqCase(unittest.TestCase):
    """Helpers: servers and clients on the global reactor, stopped at the end."""

    def server(self, serve: Any = None, **kwargs: Any) -> Deferred[tuple[ZmqServerTransport, str]]:
        transport = ZmqServerTransport(global_reactor, interface=LOOPBACK, **kwargs)
        self.addCleanup(transport.stop)
        d = transport.listen(0, serve or (lambda r: succeed(echo(r))))
        return d.addCallback(lambda port: (transport, f"{LOOPBACK}:{port}"))

    def client(self, **kwargs: Any) -> ZmqClientTransport:
        transport = ZmqClientTransport(global_reactor, **kwargs)
        self.addCleanup(transport.stop)
        return transport

    def free_port(self) -> int:
        """A port nothing listens on (bound, then closed)."""
        import socket

        s = socket.socket()
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        s.close()
        return port


class RequestReplyTests(ZmqCase):
    async def test_reply_msgpack_and_json(self) -> None:
        """A request is answered in either codec; the handler sees rid, key, payload, the
        codec in ``meta``."""
        seen: list[Request] = []

        def serve(request: Request) -> Deferred[Any]:
            seen.append(request)
            return succeed(echo(request))

        _, dest = await self.server(serve)
        for codec in ("msgpack", "json"):
            client = self.client(codec=codec)
            request = out("svc", {"n": [1, 2.5, "x"]})
            result = await client.request(dest, request)
            self.assertEqual(result, {"key": "svc", "payload": {"n": [1, 2.5, "x"]}, "peer": None})
            self.assertEqual(seen[-1].rid, request.rid)
            self.assertEqual(seen[-1].meta["codec"], codec)

    async def test_errors(self) -> None:
        """A handler's exception is a RemoteError; a Reply carries its error and result."""
        _, dest = await self.server()
        client = self.client()
        error = await self.assertFailure(client.request(dest, out("fail", None)), RemoteError)
        self.assertEqual(error.message, "handler says no")
        error = await self.assertFailure(client.request(dest, out("both", None)), RemoteError)
        self.assertEqual((error.message, error.result), ("partial", {"got": 1}))

    async def test_timeout(self) -> None:
        """A handler that never answers: the request fails with RequestTimeout."""
        held = Held()
        _, dest = await self.server(held)
        client = self.client()
        await self.assertFailure(client.request(dest, out("svc", 1, timeout=0.2)), RequestTimeout)
        self.assertEqual(len(held.calls), 1)

    async def test_many_in_flight(self) -> None:
        """200 requests in flight on one socket, answered in reverse order, each matched to its
        own rid."""
        held = Held()
        _, dest = await self.server(held)
        client = self.client()
        requests = [client.request(dest, out("svc", i)) for i in range(200)]
        await held.arrived(200)
        for request, d in reversed(held.calls):
            d.callback(request.payload * 2)
        results = await DeferredList(requests, fireOnOneErrback=True)
        self.assertEqual([r for _, r in results], [i * 2 for i in range(200)])
        self.assertEqual(client.connections, {dest: True})

    async def test_too_large(self) -> None:
        """A request over the size limit fails before it is sent; a reply over the server's
        limit becomes an error reply."""
        _, dest = await self.server(
            lambda r: succeed("x" * 2000), options=SocketOptions(max_message_size=1000)
        )
        client = self.client(options=SocketOptions(max_message_size=1000))
        await self.assertFailure(client.request(dest, out("svc", "y" * 2000)), RequestTooLarge)
        error = await self.assertFailure(client.request(dest, out("svc", 1)), RemoteError)
        self.assertTrue(error.message.startswith("ERR_REQUEST_TOO_LARGE"), error.message)

    async def test_registry(self) -> None:
        """The ``zmq`` registry entry builds these classes."""
        entry = get_transport("zmq", pubsub=True)
        server = entry.server_transport(global_reactor, interface=LOOPBACK)
        client = entry.client_transport(global_reactor)
        self.addCleanup(client.stop)
        self.addCleanup(server.stop)
        self.assertIsInstance(server, ZmqServerTransport)
        self.assertIsInstance(client, ZmqClientTransport)
        port = await server.listen(0, lambda r: succeed(r.payload))
        self.assertEqual(await client.request(f"{LOOPBACK}:{port}", out("k", 7)), 7)

    async def test_stop_client_fails_pending(self) -> None:
        """Stopping the client fails what is in flight with TransportClosed."""
        held = Held()
        _, dest = await self.server(held)
        client = ZmqClientTransport(global_reactor)
        d = client.request(dest, out("svc", 1))
        await held.arrived(1)
        await client.stop()
        await self.assertFailure(d, TransportClosed)
        await self.assertFailure(client.request(dest, out("svc", 1)), TransportClosed)


class DeadPeerTests(ZmqCase):
    async def test_server_dies_with_requests_in_flight(self) -> None:
        """A server gone with requests in flight: they fail with TransportClosed (the monitor
        saw the connection end), long before their timeout; a later request to the dead
        destination fails with DestinationUnreachable."""
        held = Held()
        server, dest = await self.server(held)
        client = self.client()
        requests = [client.request(dest, out("svc", i, timeout=30)) for i in range(10)]
        await held.arrived(10)
        started = global_reactor.seconds()
        await server.stop()
        for d in requests:
            await self.assertFailure(d, TransportClosed)
        self.assertLess(global_reactor.seconds() - started, 5)
        await self.assertFailure(client.request(dest, out("svc", 1)), DestinationUnreachable)

    async def test_refused(self) -> None:
        """Nothing listens: DestinationUnreachable at the first refused attempt."""
        client = self.client()
        dest = f"{LOOPBACK}:{self.free_port()}"
        error = await self.assertFailure(
            client.request(dest, out("svc", 1, timeout=30)), DestinationUnreachable
        )
        self.assertIn("refused", error.message)
        self.assertEqual(client.connections, {})

    async def test_no_handshake_within_connect_timeout(self) -> None:
        """A TCP server that accepts and says nothing: unreachable after connect_timeout."""
        from twisted.internet.protocol import Factory, Protocol

        port = global_reactor.listenTCP(0, Factory.forProtocol(Protocol), interface=LOOPBACK)
        self.addCleanup(port.stopListening)
        client = self.client(connect_timeout=0.3)
        dest = f"{LOOPBACK}:{port.getHost().port}"
        error = await self.assertFailure(
            client.request(dest, out("svc", 1, timeout=30)), DestinationUnreachable
        )
        self.assertIn("no ZeroMQ connection within 0.3 s", error.message)


class PeerTests(ZmqCase):
    async def peers(self, n: int) -> tuple[PeerRPCClient, list[str]]:
        dests = []
        for i in range(n):
            transport = ZmqServerTransport(global_reactor, interface=LOOPBACK)
            server = PeerRPCServer(None, transport, answer_as(i))
            port = await server.listen(0)
            self.addCleanup(server.stop)
            dests.append(f"{LOOPBACK}:{port}")
        link = FakeLink({"svc": dests})
        client = PeerRPCClient(link, self.client(), reactor=global_reactor, timeout=5)
        return client, dests

    async def test_request_and_map(self) -> None:
        """PeerRPCClient's request and map over three ZeroMQ servers."""
        client, _ = await self.peers(3)
        reply = await client.request("svc", "hi")
        self.assertEqual(reply["p"], "hi")
        replies = await client.map("svc", "all")
        self.assertEqual(sorted(r["server"] for r in replies), [0, 1, 2])

    async def test_failover_past_dead_destination(self) -> None:
        """A destination nobody listens on is skipped: every request reaches the live one."""
        client, dests = await self.peers(1)
        dead = f"{LOOPBACK}:{self.free_port()}"
        client.link.services["svc"] = [dead, dests[0]]  # type: ignore[attr-defined]
        for _ in range(4):
            reply = await client.request("svc", "x")
            self.assertEqual(reply["server"], 0)


class MalformedTests(ZmqCase):
    """Frames sent by hand on a DEALER: the server answers or drops, and keeps serving."""

    def raw(self, dest: str) -> tuple[ZmqSocket, list[list[bytes]], Any]:
        factory = new_factory(global_reactor)
        self.addCleanup(factory.shutdown)
        replies: list[list[bytes]] = []
        waiting: list[Deferred[None]] = []

        def received(frames: list[bytes]) -> None:
            replies.append(frames)
            fire = list(waiting)
            waiting.clear()
            for d in fire:
                d.callback(None)

        def next_reply() -> Deferred[list[bytes]]:
            d: Deferred[None] = Deferred()
            waiting.append(d)
            return d.addCallback(lambda _: replies[-1])

        socket = ZmqSocket(factory, zmq.DEALER, SocketOptions(), received)
        socket.connect(connect_address(dest))
        return socket, replies, next_reply

    async def test_answered_or_dropped(self) -> None:
        errors: list[list[bytes]] = []
        server, dest = await self.server(on_request_error=errors.append)
        socket, replies, next_reply = self.raw(dest)
        # Dropped: wrong frame counts, and bodies without a readable rid.
        socket.send([b"msgpack"])
        socket.send([b"msgpack", msgpack.packb(["r0", "k", 1]), b"extra"])
        socket.send([b"msgpack", b"\xc1garbage"])
        socket.send([b"json", b"[1,2,3]"])
        # Answered in the request's codec: a key that is not a string, a 2-array.
        wait = next_reply()
        socket.send([b"msgpack", msgpack.packb(["r1", 5, 1])])
        frames = await wait
        self.assertEqual(frames[0], b"msgpack")
        rid, error, result = msgpack.unpackb(frames[1])
        self.assertEqual((rid, result), ("r1", None))
        self.assertTrue(error.startswith("ERR_REQUEST_PARSE"), error)
        wait = next_reply()
        socket.send([b"json", b'["r2","k"]'])
        frames = await wait
        self.assertEqual(frames[0], b"json")
        self.assertEqual(json.loads(frames[1])[:1], ["r2"])
        # Unknown codec: answered in JSON when the rid can be read.
        wait = next_reply()
        socket.send([b"cbor", msgpack.packb(["r3", "k", 1])])
        frames = await wait
        self.assertEqual(frames[0], b"json")
        rid, error, result = json.loads(frames[1])
        self.assertEqual(rid, "r3")
        self.assertIn("unknown codec b'cbor' (known: msgpack, json)", error)
        # And it still serves.
        wait = next_reply()
        socket.send([b"msgpack", msgpack.packb(["r4", "k", 41])])
        frames = await wait
        self.assertEqual(msgpack.unpackb(frames[1])[0], "r4")
        self.assertEqual(server.malformed, 7)
        self.assertEqual(len(errors), 7)
        self.assertEqual(len(replies), 4)

    def test_decode_requests(self) -> None:
        """The body checks, one by one, alone and as batch elements."""
        codec = get_codec("json")
        self.assertEqual(decode_requests(codec, b'["r","k",null]'), [("r", "k", None)])
        self.assertRaises(ValueError, decode_requests, codec, b"nope")
        for body, rid in [
            (b"{}", None),
            (b"[]", None),
            (b"[1,2,3]", None),
            (b'["r"]', "r"),
            (b'["r",1,2]', "r"),
            (b'["r","k",1,2]', "r"),
        ]:
            for message in (body, b'[["a","k",1],' + body + b"]"):
                decoded = decode_requests(codec, message)
                error = decoded[-1]
                self.assertIsInstance(error, ValueError, message)
                self.assertEqual(getattr(error, "rid", None), rid, message)
                if message is not body:
                    self.assertEqual(decoded[0], ("a", "k", 1))

    def test_addresses(self) -> None:
        self.assertEqual(bind_address(0), "tcp://0.0.0.0:*")
        self.assertEqual(bind_address(5000, "127.0.0.1"), "tcp://127.0.0.1:5000")
        self.assertEqual(bind_address("tcp:0:interface=::1"), "tcp://[::1]:*")
        self.assertEqual(connect_address("[::1]:80"), "tcp://[::1]:80")
        for bad in ("ssl:443", "unix:/tmp/x", "tcp:x", "tcp:1:backlog=5", 70000, True):
            self.assertRaises(ValueError, bind_address, bad)
        self.assertRaises(ValueError, get_codec, "cbor")

    async def test_listen_errors(self) -> None:
        server, _ = await self.server()
        other = ZmqServerTransport(global_reactor, interface=LOOPBACK)
        self.addCleanup(other.stop)
        await self.assertFailure(other.listen(server.port or 0, echo), CannotListenError)
        await self.assertFailure(other.listen("ssl:0", echo), ValueError)


class CurveTests(ZmqCase):
    async def test_accepted_and_refused(self) -> None:
        """With a whitelist, a listed client key is served (the handler sees it), another is
        refused with CurveRefused, and a plaintext client is unreachable."""
        server_keys, good, bad = generate_keypair(), generate_keypair(), generate_keypair()
        server, dest = await self.server(tls=CurveServer(server_keys, [good.public]))
        client = self.client(tls=CurveClient(server_keys.public, good))
        reply = await client.request(dest, out("svc", 1))
        self.assertEqual(reply["peer"], good.public.decode("ascii"))
        refused = self.client(tls=CurveClient(server_keys.public, bad))
        error = await self.assertFailure(
            refused.request(dest, out("svc", 1, timeout=30)), CurveRefused
        )
        self.assertIn("refused this client's CURVE key", error.message)
        self.assertEqual(server.refused, 1)
        plain = self.client(connect_timeout=2)
        await self.assertFailure(
            plain.request(dest, out("svc", 1, timeout=30)), DestinationUnreachable
        )

    async def test_wrong_server_key(self) -> None:
        server_keys = generate_keypair()
        _, dest = await self.server(tls=CurveServer(server_keys))
        client = self.client(tls=CurveClient(generate_keypair().public), connect_timeout=2)
        await self.assertFailure(
            client.request(dest, out("svc", 1, timeout=30)), DestinationUnreachable
        )

    def test_key_files(self) -> None:
        path = Path(self.mktemp()) / "sub" / "curve.json"
        keypair = write_keypair_file(path)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(read_keypair_file(path), keypair)
        self.assertRaises(FileExistsError, write_keypair_file, path)
        self.assertEqual(read_client_keys(str(path)), {keypair.public})
        other = generate_keypair()
        listing = path.with_name("clients.txt")
        listing.write_text(f"# clients\n{keypair.public.decode()}\n{other.public.decode()}\n")
        self.assertEqual(read_client_keys(str(listing)), {keypair.public, other.public})
        self.assertEqual(
            read_client_keys(f"{keypair.public.decode()},{other.public.decode()}"),
            {keypair.public, other.public},
        )
        self.assertRaises(ValueError, read_client_keys, "tooshort")
        path.write_text('{"public": "x"}')
        self.assertRaises(ValueError, read_keypair_file, path)
