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
from twisted.internet import task
from twisted.internet.defer import Deferred, DeferredList, fail, succeed
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
from tests.support import FakeLink, recording_log

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
        # Deferreds that fired before the handler returned: a result and a failure.
        _, fired = await self.server(
            lambda r: fail(ValueError("fired no")) if r.key == "fail" else succeed(r.payload)
        )
        self.assertEqual(await client.request(fired, out("svc", [1])), [1])
        error = await self.assertFailure(client.request(fired, out("fail", None)), RemoteError)
        self.assertEqual(error.message, "fired no")

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

    async def test_cancel_in_flight(self) -> None:
        """A cancelled request fails at once with CancelledError; its late reply is dropped,
        its entry goes with it, and the socket goes on serving; the entry of one whose reply
        never comes is swept at its deadline."""
        from twisted.internet.defer import CancelledError

        held = Held()
        _, dest = await self.server(held)
        client = self.client()
        cancelled = client.request(dest, out("svc", 1))
        short = client.request(dest, out("svc", 2, timeout=0.2))
        await held.arrived(2)
        cancelled.cancel()
        short.cancel()
        await self.assertFailure(cancelled, CancelledError)
        await self.assertFailure(short, CancelledError)
        held.calls[0][1].callback("late")
        later = client.request(dest, out("svc", 3))
        await held.arrived(3)
        held.calls[2][1].callback("fresh")
        self.assertEqual(await later, "fresh")
        pending = client._dests[dest].pending
        self.assertEqual(len(pending), 1)  # only the one whose deadline is still to come
        # Swept at its deadline (0.2 s).
        give_up = global_reactor.seconds() + 10
        while pending and global_reactor.seconds() < give_up:
            await task.deferLater(global_reactor, 0.05, lambda: None)
        self.assertEqual(pending, {})


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

    async def test_single_refusing_destination_is_set_aside_once(self) -> None:
        """With one destination and one attempt the client adds no errback of its own: the
        transport reports the refusal (watch_unreachable) and the destination is set aside
        before the caller sees DestinationUnreachable, with one log line for the episode."""
        from grenache.peer import client as client_module

        events = recording_log(self, client_module)
        dead = f"{LOOPBACK}:{self.free_port()}"
        transport = self.client()
        seen: list[tuple[str, bool]] = []
        client = PeerRPCClient(
            FakeLink({"svc": [dead]}), transport, reactor=global_reactor, timeout=5
        )
        transport.watch_unreachable(lambda dest: seen.append((dest, client.is_set_aside(dest))))
        for _ in range(2):
            await self.assertFailure(client.request("svc", "x"), DestinationUnreachable)
            self.assertTrue(client.is_set_aside(dead))
        # Each refusal reported (the client's observer ran first: set aside when ours ran).
        self.assertEqual(seen, [(dead, True), (dead, True)])
        self.assertEqual([e.get("event") for e in events].count("dest_set_aside"), 1)

    def test_clients_dropped_without_stop_are_not_kept(self) -> None:
        """The transport holds a client's observer weakly: clients made and dropped on one
        shared transport neither stay alive nor pile up in it."""
        import gc
        import weakref

        transport = self.client()
        link = FakeLink({"svc": ["127.0.0.1:1"]})
        clients = [PeerRPCClient(link, transport, reactor=global_reactor) for _ in range(50)]
        first = weakref.ref(clients[0])
        del clients
        gc.collect()
        PeerRPCClient(link, transport, reactor=global_reactor)
        self.assertIsNone(first())
        self.assertLessEqual(len(transport._unreachable_observers), 1)

    async def test_observer_failure_is_logged_and_requests_still_fail(self) -> None:
        from grenache.transports.zmq import client as zmq_client_module

        events = recording_log(self, zmq_client_module)
        transport = self.client()
        transport.watch_unreachable(lambda dest: 1 / 0)
        dest = f"{LOOPBACK}:{self.free_port()}"
        await self.assertFailure(transport.request(dest, out("svc", 1)), DestinationUnreachable)
        self.assertTrue(any(e.get("log_failure") for e in events))


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


DOCS = Path(__file__).resolve().parents[1] / "docs" / "protocol.rst"
DOC_RID, DOC_RID2 = "c69efa1c-fd7f-4a05-b203-ee2b82dcd773", "5b0e2f46-7c1d-4c8e-9a3b-2d6f8e1c0a97"


def doc_bytes(intro: str) -> bytes:
    """The bytes of the hex literal block that follows ``intro`` in docs/protocol.rst's *RPC
    over ZeroMQ* (annotations after two spaces are skipped)."""
    text = DOCS.read_text()
    text = text[text.index("RPC over ZeroMQ\n---") :]
    block = text[text.index(intro) :].split("::\n\n", 1)[1]
    data = bytearray()
    for line in block.splitlines():
        if not line.startswith("    "):
            break
        data += bytes.fromhex(line.strip().split("  ")[0])
    return bytes(data)


class Endpoint:
    """A raw socket speaking the frames by hand (the transports' socket class, no batching of
    its own): every message it receives, and a Deferred for the next ones."""

    def __init__(self, case: unittest.TestCase, socket_type: int) -> None:
        factory = new_factory(global_reactor)
        case.addCleanup(factory.shutdown)
        self.messages: list[list[bytes]] = []
        self.waiting: list[tuple[int, Deferred[None]]] = []
        self.socket = ZmqSocket(factory, socket_type, SocketOptions(), self._received)

    def _received(self, frames: list[bytes]) -> None:
        self.messages.append(frames)
        for n, d in list(self.waiting):
            if len(self.messages) >= n:
                self.waiting.remove((n, d))
                d.callback(None)

    def received(self, n: int) -> Deferred[None]:
        """Fires once ``n`` messages in all were received."""
        d: Deferred[None] = Deferred()
        self.waiting.append((n, d))
        if len(self.messages) >= n:
            self.waiting.remove((n, d))
            d.callback(None)
        return d


class BatchTests(ZmqCase):
    """Batches (docs/protocol.rst, *RPC over ZeroMQ*, *Batches*) on real sockets, seen from a
    raw ROUTER (as a server) or DEALER (as a client)."""

    def router(self) -> tuple[Endpoint, str]:
        raw = Endpoint(self, zmq.ROUTER)
        port = raw.socket.bind(f"tcp://{LOOPBACK}:0")
        return raw, f"{LOOPBACK}:{port}"

    def dealer(self, dest: str) -> Endpoint:
        raw = Endpoint(self, zmq.DEALER)
        raw.socket.connect(connect_address(dest))
        return raw

    async def test_client_sends_one_message_per_turn(self) -> None:
        """Five requests made in one turn arrive as ONE message whose body is the array of
        the five; a batch reply answers them all; a lone request later goes in the two-frame
        form, byte for byte the docs' example."""
        raw, dest = self.router()
        client = self.client()
        requests = [out("svc", i) for i in range(5)]
        results = [client.request(dest, r) for r in requests]
        await raw.received(1)
        identity, codec_frame, body = raw.messages[0]
        self.assertEqual(codec_frame, b"msgpack")
        self.assertEqual(msgpack.unpackb(body), [[r.rid, "svc", i] for i, r in enumerate(requests)])
        batch = [[r.rid, None, i * 10] for i, r in reversed(list(enumerate(requests)))]
        raw.socket.send([identity, b"msgpack", msgpack.packb(batch)])
        self.assertEqual(await DeferredList(results), [(True, i * 10) for i in range(5)])
        self.assertEqual(len(raw.messages), 1)
        # Alone in its turn: today's two frames, the docs' bytes.
        lone = client.request(dest, OutgoingRequest(DOC_RID, "rpc_zmq", "hello", 5.0))
        await raw.received(2)
        self.assertEqual(raw.messages[1][1:], [b"msgpack", doc_bytes("frame 2 (53 bytes) is")])
        reply = doc_bytes('and the reply ``"world"``: frame 1 ``msgpack``, frame 2 (46 bytes)')
        raw.socket.send([identity, b"msgpack", reply])
        self.assertEqual(await lone, "world")

    async def test_bounds(self) -> None:
        """``max_batch`` requests per message at most, then the next message; JSON batches
        are JSON arrays; the byte bound splits large requests into several messages."""
        raw, dest = self.router()
        client = self.client(codec="json", options=SocketOptions(max_batch=2))
        for i in range(5):
            client.request(dest, out("svc", i, timeout=30)).addErrback(lambda _: None)
        await raw.received(3)
        bodies = [json.loads(m[2]) for m in raw.messages]
        self.assertEqual([[e[2] for e in b] for b in bodies[:2]], [[0, 1], [2, 3]])
        self.assertEqual(bodies[2][1:], ["svc", 4])  # the last one alone: the single form
        big = self.client(options=SocketOptions(max_message_size=1000))
        for _ in range(4):
            big.request(dest, out("svc", "x" * 400, timeout=30)).addErrback(lambda _: None)
        await raw.received(5)
        sizes = [len(msgpack.unpackb(m[2])) for m in raw.messages[3:]]
        self.assertEqual(sizes, [2, 2])  # two 450-byte requests fit in 1000 bytes, not three

    async def test_server_answers_a_batch_with_a_batch(self) -> None:
        """The docs' batch is answered with the docs' reply batch; in a mixed batch each bad
        element is answered ERR_REQUEST_PARSE (or dropped without a rid), the rest served."""
        server, dest = await self.server(
            lambda r: succeed("world" if r.payload == "hello" else r.payload)
        )
        raw = self.dealer(dest)
        raw.socket.send([b"msgpack", doc_bytes("frame 2 (107 bytes)")])
        await raw.received(1)
        self.assertEqual(raw.messages[0], [b"msgpack", doc_bytes("frame 2 (93 bytes)")])
        mixed = [["a", "k", 1], ["b", 5, 2], 7, ["c"], [], ["d", "k", 4]]
        raw.socket.send([b"msgpack", msgpack.packb(mixed)])
        await raw.received(2)
        replies = msgpack.unpackb(raw.messages[1][1])
        self.assertEqual([r[0] for r in replies], ["a", "b", "c", "d"])
        self.assertEqual((replies[0][1:], replies[3][1:]), ([None, 1], [None, 4]))
        for _, error, result in replies[1:3]:
            self.assertTrue(error.startswith("ERR_REQUEST_PARSE"), error)
            self.assertIsNone(result)
        self.assertEqual(server.malformed, 4)
        raw.socket.send([b"json", b'[["j1","k",1],["j2","k",2]]'])
        await raw.received(3)
        self.assertEqual(json.loads(raw.messages[2][1]), [["j1", None, 1], ["j2", None, 2]])
        # An unknown codec: each readable rid answered in JSON, alone.
        raw.socket.send([b"cbor", msgpack.packb([["u1", "k", 1], ["u2", "k", 2]])])
        await raw.received(5)
        self.assertEqual([json.loads(m[1])[0] for m in raw.messages[3:]], ["u1", "u2"])

    async def test_replies_of_one_turn_leave_together(self) -> None:
        """Replies that become ready later, all in one turn (outside any read), leave as one
        batch at the end of that turn."""
        held = Held()
        _, dest = await self.server(held)
        raw = self.dealer(dest)
        raw.socket.send([b"msgpack", msgpack.packb([[f"r{i}", "k", i] for i in range(3)])])
        await held.arrived(3)
        await task.deferLater(global_reactor, 0, lambda: None)  # out of the server's read
        for request, d in reversed(held.calls):
            d.callback(request.payload)
        await raw.received(1)
        replies = msgpack.unpackb(raw.messages[0][1])
        self.assertEqual(replies, [[f"r{i}", None, i] for i in (2, 1, 0)])

    async def test_in_flight_bound(self) -> None:
        """A batch that crosses ``max_in_flight`` is served whole, then the server stops
        reading until half of the bound is left running."""
        held = Held()
        server, dest = await self.server(held, max_in_flight=4)
        raw = self.dealer(dest)
        raw.socket.send([b"msgpack", msgpack.packb([[f"r{i}", "k", i] for i in range(6)])])
        await held.arrived(6)
        self.assertEqual((server.in_flight, server._socket.paused), (6, True))  # type: ignore[union-attr]
        raw.socket.send([b"msgpack", msgpack.packb(["r6", "k", 6])])
        for request, d in held.calls[:4]:
            d.callback(request.payload)
        self.assertFalse(server._socket.paused)  # type: ignore[union-attr]
        await held.arrived(7)
        self.assertEqual(held.calls[6][0].rid, "r6")
        await raw.received(1)
        self.assertEqual(len(msgpack.unpackb(raw.messages[0][1])), 4)

    def test_closed_socket(self) -> None:
        """A body given to a closed socket fails at once through ``send_failed``."""
        failed: list[tuple[list[Any], zmq.ZMQError]] = []
        factory = new_factory(global_reactor)
        self.addCleanup(factory.shutdown)
        socket = ZmqSocket(
            factory,
            zmq.DEALER,
            SocketOptions(),
            lambda frames: None,
            send_failed=lambda tokens, e: failed.append((tokens, e)),
        )
        socket.close()
        socket.batch(None, get_codec("json"), b'["r","k",1]', "r")
        self.assertEqual([(tokens, e.errno) for tokens, e in failed], [(["r"], zmq.ENOTSOCK)])

    async def test_old_style_peer(self) -> None:
        """A client that sends each request alone (as before batches) gets each reply alone,
        even when the server reads them in one pass."""
        held = Held()
        _, dest = await self.server(held)
        raw = self.dealer(dest)
        for i in range(3):
            raw.socket.send([b"msgpack", msgpack.packb([f"r{i}", "k", i])])
        await held.arrived(3)
        for request, d in held.calls:
            d.callback(request.payload)  # all three answered in this one turn
        await raw.received(3)
        self.assertEqual(
            [msgpack.unpackb(m[1]) for m in raw.messages], [[f"r{i}", None, i] for i in range(3)]
        )

    def silent(self) -> str:
        """A TCP server that accepts and never speaks ZeroMQ: a DEALER's queue fills up."""
        from twisted.internet.protocol import Factory, Protocol

        port = global_reactor.listenTCP(0, Factory.forProtocol(Protocol), interface=LOOPBACK)
        self.addCleanup(port.stopListening)
        return f"{LOOPBACK}:{port.getHost().port}"

    async def test_failed_batch_fails_each_request(self) -> None:
        """A batch that finds the queue full (high-water mark 1, nobody reading) fails every
        request of it with DestinationUnreachable, the lone send's error; at the bound (inside
        the turn) and at the end of the turn alike."""
        dest = self.silent()
        client = self.client(options=SocketOptions(hwm=1, max_batch=2), connect_timeout=30)
        first = [client.request(dest, out("svc", i, timeout=30)) for i in range(2)]
        full = [client.request(dest, out("svc", i, timeout=30)) for i in range(2)]
        for d in full:
            error = await self.assertFailure(d, DestinationUnreachable)
            self.assertIn("send queue full (1 messages)", error.message)
        self.assertEqual([d.called for d in first], [False, False])
        other = self.client(options=SocketOptions(hwm=1), connect_timeout=30)
        queued = [other.request(dest, out("svc", i, timeout=30)) for i in range(3)]
        await task.deferLater(global_reactor, 0, lambda: None)  # the next turn
        late = [other.request(dest, out("svc", i, timeout=30)) for i in range(3)]
        for d in late:
            await self.assertFailure(d, DestinationUnreachable)
        self.assertEqual([d.called for d in queued], [False] * 3)
        for d in first + queued:
            d.addErrback(lambda _: None)
