"""Streaming over HTTP (docs/protocol.rst, *HTTP streaming*) between this project and
grenache-nodejs-http 1.0.2.

Over loopback sockets, with services announced through an in-process Python grape:

- Node's stream client (``peer.stream``) -> a Python ``stream_handler``: 20 MB echoed back as
  it arrives (checked by SHA-256 on both ends), Node's ``meta`` seen in Python, a convenience
  ``reply`` read by Node, and the request head Node writes compared byte for byte with
  :func:`~grenache.transports.http.stream_head`;
- the Python stream client (``PeerRPCClient.stream``) -> a Node server with
  ``disableBuffered: true`` handling ``'stream'``: 20 MB echoed by ``req.pipe(res)``,
  ``handler.reply`` answers, ``_a``/``_ar`` as Node's ``meta``.

Node scripts: tests/interop/node/http_stream_client.js and http_stream_server.js. Skipped
without Node unless ``GRENACHE_INTEROP=required``.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from twisted.internet import protocol
from twisted.internet import reactor as _global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.trial import unittest

from grenache.http.streams import read_body
from grenache.link import Link
from grenache.peer import PeerRPCClient, PeerRPCServer
from grenache.transports.http import (
    ClientStream,
    HTTPClientTransport,
    HTTPServerTransport,
    StreamMeta,
    StreamRequest,
    StreamResponse,
    stream_head,
)
from tests.interop import harness
from tests.interop.harness import async_test

reactor: Any = _global_reactor
LOOPBACK = harness.LOCALHOST
SIZE = 20 * 1024 * 1024


class HashingEcho(protocol.Protocol):
    """Echoes a stream's body as it arrives (following the response's backpressure) and
    hashes it; ``reply`` mode answers ``[rid, null, {size, sha256}]`` at the end instead."""

    def __init__(self, request: StreamRequest, response: StreamResponse, done: Deferred[Any]):
        self.request = request
        self.response = response
        self.done = done
        self.hash = hashlib.sha256()
        self.size = 0
        self.echo = request.meta.action in (None, "echo")

    def connectionMade(self) -> None:
        if self.echo:
            self.response.registerProducer(self.transport, True)

    def dataReceived(self, data: bytes) -> None:
        self.size += len(data)
        self.hash.update(data)
        if self.echo:
            self.response.write(data)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        summary = {"size": self.size, "sha256": self.hash.hexdigest()}
        if not reason.check(ConnectionDone):
            self.response.abort()
            self.done.errback(reason)
            return
        if self.echo:
            self.response.unregisterProducer()
            self.response.finish()
        else:
            self.response.reply(self.request.rid, None, {**summary, "args": self.request.meta.args})
        self.done.callback(summary)


class HashingReader(protocol.Protocol):
    """Hashes a response body as it arrives."""

    def __init__(self) -> None:
        self.hash = hashlib.sha256()
        self.size = 0
        self.done: Deferred[dict[str, Any]] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.size += len(data)
        self.hash.update(data)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if reason.check(ConnectionDone):
            self.done.callback({"size": self.size, "sha256": self.hash.hexdigest()})
        else:
            self.done.errback(reason)


async def upload(stream: ClientStream, size: int) -> dict[str, Any]:
    """Write ``size`` random bytes in 64 KiB pieces, waiting whenever the socket is full."""
    sent = hashlib.sha256()
    left = size
    while left:
        piece = os.urandom(min(65536, left))
        left -= len(piece)
        sent.update(piece)
        stream.write(piece)
        if stream.paused:
            await stream.drained()
    stream.finish()
    return {"size": size, "sha256": sent.hexdigest()}


class StreamingInteropTests(unittest.TestCase):
    timeout = 180

    def setUp(self) -> None:
        harness.node_modules_dir()  # skips (or fails when required) without Node

    async def grape(self) -> harness.PyGrape:
        self.py_grape = await harness.start_python_grape(self, reactor=reactor, host=LOOPBACK)
        return self.py_grape

    def link(self) -> Link:
        link = Link(self.py_grape.url, reactor=reactor)
        link.start()
        self.addCleanup(link.stop)
        return link

    async def node_stream_client(self) -> Any:
        conf = {"grape": self.py_grape.url}
        proc = harness.spawn_node(
            self, "http_stream_client.js", [json.dumps(conf)], name="node-stream-client"
        )
        await proc.ready
        return proc

    async def node_call(self, proc: Any, op: dict[str, Any], timeout: float = 120.0) -> Any:
        proc.write_json(op)
        reply = await proc.next_message(timeout)
        if not reply["ok"]:
            raise AssertionError(f"Node stream client failed: {reply}")
        return reply["result"]

    async def node_stream_server(self, names: list[str]) -> tuple[Any, int]:
        conf = {"grape": self.py_grape.url, "names": names}
        proc = harness.spawn_node(
            self, "http_stream_server.js", [json.dumps(conf)], name="node-stream-server"
        )
        ready = await proc.ready
        return proc, int(ready["port"])

    # --- Node client -> Python server ---

    @async_test
    async def test_node_stream_client_python_server(self) -> None:
        await self.grape()
        seen: list[StreamMeta] = []
        finished: list[Deferred[Any]] = []

        def handler(request: StreamRequest, response: StreamResponse) -> None:
            seen.append(request.meta)
            done: Deferred[Any] = Deferred()
            finished.append(done)
            request.deliverBody(HashingEcho(request, response, done))

        transport = HTTPServerTransport(reactor, interface=LOOPBACK, stream_handler=handler)
        server = PeerRPCServer(self.link(), transport, lambda r: r.payload)
        await server.listen(0)
        self.addCleanup(server.stop)
        await server.announce("py:stream")
        node = await self.node_stream_client()

        # 20 MB echoed back as it arrives.
        result = await self.node_call(
            node,
            {
                "op": "stream",
                "name": "py:stream",
                "size": SIZE,
                "opts": {"timeout": 60000, "headers": {"_a": "echo", "_ar": {"n": 1, "s": "é"}}},
            },
        )
        here = await finished[0]
        self.assertEqual(result["sent"], SIZE)
        self.assertEqual(here, {"size": SIZE, "sha256": result["sentSha256"]})
        self.assertEqual((result["received"], result["sha256"]), (SIZE, result["sentSha256"]))
        meta = seen[0]
        self.assertEqual(meta.key, "py:stream")
        self.assertIsInstance(meta.rid, str)
        self.assertEqual(
            (meta.action, meta.args, meta.is_stream), ("echo", {"n": 1, "s": "é"}, True)
        )

        # The convenience reply, read by Node as the raw body text.
        result = await self.node_call(
            node,
            {
                "op": "stream",
                "name": "py:stream",
                "body": "hello stream ✓",
                "opts": {"timeout": 10000, "headers": {"_a": "hash", "_ar": {"k": [1, 2]}}},
            },
        )
        rid, err, summary = json.loads(result["text"])
        self.assertEqual(rid, seen[1].rid)
        self.assertIsNone(err)
        self.assertEqual(
            summary,
            {
                "size": len("hello stream ✓".encode()),
                "sha256": hashlib.sha256("hello stream ✓".encode()).hexdigest(),
                "args": {"k": [1, 2]},
            },
        )

    @async_test
    async def test_node_stream_head_bytes(self) -> None:
        """The head Node's peer.stream writes is the one stream_head builds, byte for byte."""
        await self.grape()
        heads: list[bytes] = []
        got: Deferred[None] = Deferred()

        class Capture(protocol.Protocol):
            def __init__(self) -> None:
                self.data = b""

            def dataReceived(self, data: bytes) -> None:
                self.data += data
                if b"\r\n\r\n" in self.data and b"0\r\n\r\n" in self.data.split(b"\r\n\r\n", 1)[1]:
                    heads.append(self.data.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n")
                    transport: Any = self.transport
                    transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    transport.loseConnection()
                    if not got.called:
                        got.callback(None)

        factory = protocol.Factory.forProtocol(Capture)
        port = reactor.listenTCP(0, factory, interface=LOOPBACK)
        self.addCleanup(port.stopListening)
        number = port.getHost().port
        link = self.link()
        await link.start_announcing("capture:stream", number)
        self.addCleanup(link.stop_announcing, "capture:stream", number)
        node = await self.node_stream_client()
        headers = {"_a": "uploadPublic", "_ar": {"foo": "bar", "n": [1, None]}, "x-kind": "pdf"}
        result = await self.node_call(
            node,
            {
                "op": "stream",
                "name": "capture:stream",
                "body": "x",
                "opts": {"timeout": 10000, "headers": headers},
            },
        )
        await got
        self.assertEqual(result["text"], "ok")
        (head,) = heads
        gr = next(line for line in head.split(b"\r\n") if line.startswith(b"_gr: "))
        rid = json.loads(gr[5:])[0]
        self.assertEqual(head, stream_head(f"{LOOPBACK}:{number}", rid, "capture:stream", headers))

    # --- Python client -> Node server ---

    @async_test
    async def test_python_stream_client_node_server(self) -> None:
        await self.grape()
        node, _ = await self.node_stream_server(["node:stream"])
        client = PeerRPCClient(
            self.link(), HTTPClientTransport(reactor), reactor=reactor, timeout=30.0
        )
        self.addCleanup(client.stop)

        # 20 MB echoed by req.pipe(res), read while it is being written.
        stream = await client.stream("node:stream", headers={"_a": "echo", "_ar": {"n": 2}})
        reader = HashingReader()
        stream.response().addCallback(lambda reply: reply.deliverBody(reader))
        sent = await upload(stream, SIZE)
        echoed = await reader.done
        self.assertEqual(echoed, sent)
        reply = await stream.response()
        self.assertEqual(reply.status, 200)
        event = await node.next_message()
        self.assertEqual(
            event,
            {
                "event": "stream",
                "infoHeaders": [stream.rid, "node:stream"],
                "action": "echo",
                "args": {"n": 2},
                "isStream": True,
            },
        )

        # Node's handler.reply on the stream: [rid, null, result] as the raw body.
        stream = await client.stream("node:stream", headers={"_a": "hash", "_ar": {"tag": "ü"}})
        sent = await upload(stream, 3 * 1024 * 1024 + 7)
        reply = await stream.response()
        rid, err, result = json.loads(await read_body(reply))
        self.assertEqual((rid, err), (stream.rid, None))
        self.assertEqual(
            result,
            {
                "size": sent["size"],
                "sha256": sent["sha256"],
                "args": {"tag": "ü"},
                "key": "node:stream",
            },
        )
        await node.next_message()

        # An error reply: Node's message in the body, status 200 (no grenache framing here).
        stream = await client.stream(
            "node:stream", headers={"_a": "error", "_ar": {"message": "no space ✗"}}
        )
        stream.write(b"doomed")
        stream.finish()
        reply = await stream.response()
        self.assertEqual(reply.status, 200)
        self.assertEqual(json.loads(await read_body(reply)), [stream.rid, "no space ✗", None])
