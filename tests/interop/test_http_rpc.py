"""RPC over HTTP between this project's peers and grenache-nodejs-http 1.0.2
(docs/protocol.rst, *RPC over HTTP*).

Both directions, over loopback sockets, with services announced through an in-process Python
grape (a lone grape stores its own announces) by grenache.link.Link and by the Node link:

- Node client -> Python server and Python client -> Node server: plain and gzip bodies, error
  replies, unicode and 1 MiB payloads, Node's stream client (chunked body with ``_gr``);
- ``map`` over a mix of Node and Python servers, from both clients;
- TLS with client certificates both ways (fingerprints in Node's format);
- a killed-but-announced server skipped in favour of a live one;
- silent servers time out.

Node scripts: tests/interop/node/http_server.js and http_client.js. Skipped without Node unless
``GRENACHE_INTEROP=required``.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from twisted.internet import reactor as _global_reactor
from twisted.internet.defer import Deferred
from twisted.trial import unittest

from grenache import errors
from grenache.codec import json_dumps
from grenache.link import Link
from grenache.peer import PeerRPCClient, PeerRPCServer, Request
from grenache.tls import ClientTLS, ServerTLS
from grenache.transports.http import HTTPClientTransport, HTTPServerTransport
from tests.interop import harness
from tests.interop.harness import async_test
from tests.support import make_pki

reactor: Any = _global_reactor
LOOPBACK = harness.LOCALHOST
MIB = 1024 * 1024
UNICODE = {"text": "héllo wörld ✓ 🚀 日本語", "emoji": "👩‍💻", "quote": '"\\/'}


def py_handler(tag: str) -> Any:
    """The Python twin of http_server.js's handler."""

    def handler(request: Request) -> Any:
        payload = request.payload if isinstance(request.payload, dict) else {}
        if payload.get("silent"):
            return Deferred()
        if payload.get("error"):
            raise Exception(payload["error"])
        return {
            "server": tag,
            "key": request.key,
            "echo": request.payload,
            "fingerprint": request.peer_certificate,
        }

    return handler


def sha1_of_json(value: Any) -> str:
    """What http_client.js reports for a summarised result: sha1 of JSON.stringify."""
    return hashlib.sha1(json_dumps(value)).hexdigest()


class NodeClient:
    """http_client.js: one operation at a time, answers matched by index."""

    def __init__(self, process: harness.NodeProcess) -> None:
        self.process = process
        self.count = 0
        self.early: dict[int, dict[str, Any]] = {}

    async def call(self, op: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
        index = self.count
        self.count += 1
        self.process.write_json(op)
        while index not in self.early:
            message = await self.process.next_message(timeout)
            self.early[int(message["i"])] = message
        return self.early.pop(index)

    async def ok(self, op: dict[str, Any], timeout: float = 60.0) -> Any:
        reply = await self.call(op, timeout)
        if not reply["ok"]:
            raise AssertionError(f"Node client failed {op.get('op')}: {reply}")
        return reply["result"]


class HTTPRPCInteropTests(unittest.TestCase):
    timeout = 180

    def setUp(self) -> None:
        harness.node_modules_dir()  # skips (or fails when required) without Node

    # --- fixtures ---

    async def grape(self) -> harness.PyGrape:
        self.py_grape = await harness.start_python_grape(self, reactor=reactor, host=LOOPBACK)
        return self.py_grape

    def link(self) -> Link:
        link = Link(self.py_grape.url, reactor=reactor)
        link.start()
        self.addCleanup(link.stop)
        return link

    async def py_server(
        self, names: list[str], tag: str = "py", tls: ServerTLS | None = None, handler: Any = None
    ) -> int:
        transport = HTTPServerTransport(reactor, tls=tls, interface=LOOPBACK)
        server = PeerRPCServer(self.link(), transport, handler or py_handler(tag))
        port = await server.listen(0)
        self.addCleanup(server.stop)
        for name in names:
            await server.announce(name)
        return port

    async def node_server(
        self, names: list[str], tag: str = "node", secure: dict[str, Any] | None = None
    ) -> tuple[harness.NodeProcess, int]:
        conf: dict[str, Any] = {"grape": self.py_grape.url, "names": names, "tag": tag}
        if secure is not None:
            conf["secure"] = secure
        proc = harness.spawn_node(self, "http_server.js", [json.dumps(conf)], name=f"{tag}-server")
        ready = await proc.ready
        return proc, int(ready["port"])

    async def node_client(self, secure: dict[str, Any] | None = None) -> NodeClient:
        conf: dict[str, Any] = {"grape": self.py_grape.url}
        if secure is not None:
            conf["secure"] = secure
        proc = harness.spawn_node(self, "http_client.js", [json.dumps(conf)], name="node-client")
        await proc.ready
        return NodeClient(proc)

    def py_client(self, tls: ClientTLS | None = None, **kwargs: Any) -> PeerRPCClient:
        transport = HTTPClientTransport(reactor, tls=tls)
        client = PeerRPCClient(self.link(), transport, reactor=reactor, **kwargs)
        self.addCleanup(client.stop)
        return client

    async def wait_for_dests(self, name: str, count: int) -> list[str]:
        link = self.link()

        async def probe() -> list[str]:
            return list(await link.lookup(name, cache=False))

        return await harness.wait_until(
            probe, 20, f"{count} dests for {name}", done=lambda d: len(set(d)) >= count
        )

    def pki_files(self, **extra: bool) -> dict[str, dict[str, Any]]:
        """PEM files of the test PKI; Node configs for a server and a client."""
        pki = make_pki()
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        files = {}
        for name, data in [
            ("ca", pki.ca.cert),
            ("server-cert", pki.server.cert),
            ("server-key", pki.server.key),
            ("client-cert", pki.client.cert),
            ("client-key", pki.client.key),
        ]:
            path = os.path.join(base, name + ".pem")
            with open(path, "wb") as f:
                f.write(data)
            files[name] = path
        return {
            "server": {
                "key": files["server-key"],
                "cert": files["server-cert"],
                "ca": files["ca"],
                "requestCert": True,
                "rejectUnauthorized": False,
                **extra,
            },
            "client": {
                "key": files["client-key"],
                "cert": files["client-cert"],
                "ca": files["ca"],
                "rejectUnauthorized": True,
            },
        }

    # --- Node client -> Python server ---

    @async_test
    async def test_node_client_python_server(self) -> None:
        await self.grape()
        await self.py_server(["py:echo"])
        node = await self.node_client()
        base = {"op": "request", "name": "py:echo", "opts": {"timeout": 10000}}
        for compress in (False, True):
            opts = {"timeout": 10000, "compress": compress}
            result = await node.ok({**base, "payload": {"hello": "world"}, "opts": opts})
            self.assertEqual(
                result,
                {"server": "py", "key": "py:echo", "echo": {"hello": "world"}, "fingerprint": None},
            )
            result = await node.ok({**base, "payload": UNICODE, "opts": opts})
            self.assertEqual(result["echo"], UNICODE)
            big = {"blob": "é" + "x" * MIB, "n": list(range(100))}
            summary = await node.ok({**base, "payload": big, "opts": opts, "summary": True})
            expected = {"server": "py", "key": "py:echo", "echo": big, "fingerprint": None}
            self.assertEqual(summary["sha1"], sha1_of_json(expected))
            reply = await node.call({**base, "payload": {"error": "boom ✗"}, "opts": opts})
            self.assertEqual(reply, {"i": reply["i"], "ok": False, "error": "boom ✗"})
            self.assertTrue(self.flushLoggedErrors(Exception))  # the service logs the handler
        # Node's stream client: a chunked body with the _gr header, answered raw.
        text = await node.ok(
            {
                "op": "stream",
                "name": "py:echo",
                "body": '["body-rid","body-key",{"s":"ü"}]',
                "opts": {"timeout": 10000},
            }
        )
        rid, err, result = json.loads(text)
        self.assertNotEqual(rid, "body-rid")  # _gr's rid wins
        self.assertIsNone(err)
        self.assertEqual(result["key"], "py:echo")  # and _gr's key
        self.assertEqual(result["echo"], {"s": "ü"})

    @async_test
    async def test_python_client_node_server(self) -> None:
        await self.grape()
        await self.node_server(["node:echo"], tag="node")
        client = self.py_client()
        for compress in (False, True):
            result = await client.request("node:echo", {"hello": "world"}, compress=compress)
            self.assertEqual(
                result,
                {
                    "server": "node",
                    "key": "node:echo",
                    "echo": {"hello": "world"},
                    "fingerprint": None,
                },
            )
            result = await client.request("node:echo", UNICODE, compress=compress)
            self.assertEqual(result["echo"], UNICODE)
            big = ["é" + "x" * MIB, {"nested": [1, 2.5, None, True]}]
            result = await client.request("node:echo", big, compress=compress)
            self.assertEqual(result["echo"], big)
            with self.assertRaises(errors.RemoteError) as caught:
                await client.request("node:echo", {"error": "boom ✗"}, compress=compress)
            self.assertEqual(caught.exception.message, "boom ✗")
        # Node's handler.reply('a string') sends a null error: success with a null result.
        self.assertIsNone(await client.request("node:echo", {"stringError": "lost"}))

    # --- Node's meta and handler.reply(err, result) ---

    async def node_meta_server(self, names: list[str]) -> int:
        conf = {"grape": self.py_grape.url, "names": names}
        proc = harness.spawn_node(self, "http_meta_server.js", [json.dumps(conf)], name="node-meta")
        ready = await proc.ready
        return int(ready["port"])

    @async_test
    async def test_meta_as_node(self) -> None:
        """Node's client gives a Python handler the meta a Node handler gets from it: buffered
        requests (plain and gzip), and Node's stream client with ``_a``/``_ar`` headers (its
        buffered requests cannot carry them)."""
        await self.grape()

        def handler(request: Request) -> Any:
            meta = dict(request.meta)
            meta["args"] = dict(meta["args"])  # read-only mappings: copied to send back
            return {"meta": meta, "rid": request.rid, "key": request.key}

        await self.py_server(["meta:py"], handler=handler)
        await self.node_meta_server(["meta:node"])
        node = await self.node_client()
        for compress in (False, True):
            op = {"op": "request", "payload": 1, "opts": {"timeout": 10000, "compress": compress}}
            py = await node.ok({**op, "name": "meta:py"})
            js = await node.ok({**op, "name": "meta:node"})
            self.assertEqual(py["meta"], js["meta"])
            expected: dict[str, Any] = {
                "isStream": False,
                "compress": compress,
                "action": None,
                "args": {},
            }
            self.assertEqual(py["meta"], expected)
        headers = {"_a": "upload", "_ar": {"foo": "bar", "n": [1, 2]}}
        stream = {
            "op": "stream",
            "body": '["body-rid","body-key",1]',
            "opts": {"timeout": 10000, "headers": headers},
        }
        metas = []
        for name in ("meta:py", "meta:node"):
            rid, err, result = json.loads(await node.ok({**stream, "name": name}))
            self.assertIsNone(err)
            self.assertEqual(result["rid"], rid)  # _gr's rid and key win
            self.assertEqual(result["key"], name)
            meta = result["meta"]
            self.assertEqual(meta.pop("infoHeaders"), [rid, name])
            metas.append(meta)
        self.assertEqual(metas[0], metas[1])
        self.assertEqual(
            metas[0],
            {"isStream": True, "compress": False, "action": "upload", "args": headers["_ar"]},
        )

    @async_test
    async def test_error_and_result_from_node(self) -> None:
        """Node's handler.reply(err, result) reaches a Python client as a RemoteError carrying
        both the message and the result."""
        await self.grape()
        await self.node_meta_server(["both:node"])
        client = self.py_client()
        payload = {"both": {"error": "ERR_PARTIAL", "result": {"done": 3, "of": 5}}}
        with self.assertRaises(errors.RemoteError) as caught:
            await client.request("both:node", payload)
        self.assertEqual(caught.exception.message, "ERR_PARTIAL")
        self.assertEqual(caught.exception.result, {"done": 3, "of": 5})

    # --- map over a mix ---

    @async_test
    async def test_map_mixed(self) -> None:
        await self.grape()
        await self.node_server(["mix:echo"], tag="node-a")
        await self.node_server(["mix:echo"], tag="node-b")
        await self.py_server(["mix:echo"], tag="py-a")
        await self.py_server(["mix:echo"], tag="py-b")
        await self.wait_for_dests("mix:echo", 4)
        expected = ["node-a", "node-b", "py-a", "py-b"]
        client = self.py_client()
        results = await client.map("mix:echo", {"m": 1})
        self.assertEqual(sorted(r["server"] for r in results), expected)
        self.assertTrue(all(r["echo"] == {"m": 1} for r in results))
        results = await client.map("mix:echo", {"m": 2}, limit=2)
        self.assertEqual(len({r["server"] for r in results}), 2)
        # The Python service logs its handler's failure, maybe after map failed on Node's.
        self.addCleanup(self.flushLoggedErrors, Exception)
        with self.assertRaises(errors.RemoteError):
            await client.map("mix:echo", {"error": "map fails"})
        node = await self.node_client()
        results = await node.ok(
            {"op": "map", "name": "mix:echo", "payload": {"m": 3}, "opts": {"timeout": 10000}}
        )
        self.assertEqual(sorted(r["server"] for r in results), expected)

    # --- TLS ---

    @async_test
    async def test_tls_python_client_node_server(self) -> None:
        pki = make_pki()
        files = self.pki_files()
        await self.grape()
        await self.node_server(["tls:node"], tag="node-tls", secure=files["server"])
        client = self.py_client(tls=ClientTLS(pki.ca.cert, pki.client.cert, pki.client.key))
        result = await client.request("tls:node", {"secure": True}, compress=True)
        self.assertEqual(result["server"], "node-tls")
        self.assertEqual(result["fingerprint"], pki.client.fingerprint)
        # Without a client certificate Node's handler sees none (requestCert, no reject).
        anonymous = self.py_client(tls=ClientTLS(pki.ca.cert))
        self.assertIsNone((await anonymous.request("tls:node", 1))["fingerprint"])
        # A client that does not trust the server's CA refuses it.
        distrustful = self.py_client(tls=ClientTLS(pki.rogue_ca.cert))
        with self.assertRaises(errors.TLSHandshakeError):
            await distrustful.request("tls:node", 1)

    @async_test
    async def test_tls_node_client_python_server(self) -> None:
        pki = make_pki()
        files = self.pki_files()
        await self.grape()
        tls = ServerTLS(
            pki.server.key,
            pki.server.cert,
            pki.ca.cert,
            request_cert=True,
            reject_unauthorized=True,
        )
        await self.py_server(["tls:py"], tag="py-tls", tls=tls)
        node = await self.node_client(secure=files["client"])
        for compress in (False, True):
            result = await node.ok(
                {
                    "op": "request",
                    "name": "tls:py",
                    "payload": {"secure": True},
                    "opts": {"timeout": 10000, "compress": compress},
                }
            )
            self.assertEqual(result["server"], "py-tls")
            self.assertEqual(result["fingerprint"], pki.client.fingerprint)

    # --- failures ---

    @async_test
    async def test_killed_server_skipped(self) -> None:
        """A dead server still announced is set aside; every call reaches the live one."""
        await self.grape()
        dead, dead_port = await self.node_server(["dead:svc"], tag="doomed")
        await self.py_server(["dead:svc"], tag="alive")
        dests = await self.wait_for_dests("dead:svc", 2)
        await dead.stop()
        client = self.py_client(unreachable_backoff=30.0)
        for _ in range(20):
            result = await client.request("dead:svc", "ping", timeout=5.0)
            self.assertEqual(result["server"], "alive")
        dead_dest = f"{LOOPBACK}:{dead_port}"
        self.assertIn(dead_dest, dests)
        self.assertTrue(client.is_set_aside(dead_dest))
        results = await client.map("dead:svc", "m")
        self.assertEqual([r["server"] for r in results], ["alive"])

    @async_test
    async def test_silent_servers_time_out(self) -> None:
        await self.grape()
        await self.node_server(["silent:node"], tag="node")
        await self.py_server(["silent:py"], tag="py")
        client = self.py_client()
        start = reactor.seconds()
        with self.assertRaises(errors.RequestTimeout):
            await client.request("silent:node", {"silent": True}, timeout=1.0)
        self.assertLess(reactor.seconds() - start, 5.0)
        # The connection was dropped; the next call works.
        self.assertEqual((await client.request("silent:node", 1))["server"], "node")
        node = await self.node_client()
        reply = await node.call(
            {
                "op": "request",
                "name": "silent:py",
                "payload": {"silent": True},
                "opts": {"timeout": 1000},
            }
        )
        self.assertFalse(reply["ok"])
        self.assertIn("timeout", reply["error"])
        self.assertEqual(
            (
                await node.ok(
                    {"op": "request", "name": "silent:py", "payload": 1, "opts": {"timeout": 10000}}
                )
            )["server"],
            "py",
        )
