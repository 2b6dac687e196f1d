"""WebSocket RPC and pub/sub between this project's peers and grenache-nodejs-ws 1.0.0.

Every test runs an in-process Python grape on loopback (host 127.0.0.1, so lookups answer
``127.0.0.1:port``); the Node peers (tests/interop/node/ws_*.js) use grenache-nodejs-link 1.0.2
against it and the Python peers use :class:`grenache.link.Link`. Ports are picked by the OS.
Skipped without Node unless ``GRENACHE_INTEROP=required``.

Covered: Node client -> Python server and Python client -> Node server (results, error
replies, an error and a result together from a handler returning ``Reply``, many concurrent
requests on one socket answered out of order, a socket closed with requests in flight),
pub/sub both ways with text and binary messages, wss both ways with client-certificate
fingerprints, and a Node publisher killed and restarted while a Python PeerSub (resubscribe
on) follows it.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import itertools
import time
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import reactor as _global_reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.trial import unittest

from grenache import errors
from grenache.link import Link
from grenache.peer import PeerPub, PeerRPCClient, PeerRPCServer, PeerSub, Reply, Request
from grenache.tls import ClientTLS, ServerTLS, fingerprint
from grenache.transports.ws import (
    WSClientTransport,
    WSPubTransport,
    WSServerTransport,
    WSSubTransport,
    fingerprint_whitelist,
)
from tests.interop import harness
from tests.interop.harness import async_test

reactor: Any = _global_reactor
LOOPBACK = harness.LOCALHOST
_names = itertools.count()


def service_name(kind: str) -> str:
    return f"interop:ws:{kind}:{next(_names)}:{time.monotonic_ns()}"


# --- certificates ------------------------------------------------------------------------------


class Identity:
    """An EC key and certificate as PEM, signed by ``issuer`` (self-signed without)."""

    def __init__(self, cn: str, issuer: Identity | None = None, ca: bool = False) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(issuer.cert.subject if issuer else name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(LOOPBACK))]
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        self.cert: x509.Certificate = builder.sign(
            issuer.key if issuer else self.key, hashes.SHA256()
        )
        self.cert_pem = self.cert.public_bytes(serialization.Encoding.PEM)
        self.key_pem = self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self.fingerprint = fingerprint(self.cert)

    def node_tls(self, ca: Identity) -> dict[str, str]:
        """Node's ``secure`` material as the ws_*.js scripts take it (PEM strings)."""
        return {
            "key": self.key_pem.decode(),
            "cert": self.cert_pem.decode(),
            "ca": ca.cert_pem.decode(),
        }


# --- the test case -------------------------------------------------------------------------------


class WSInteropTests(unittest.TestCase):
    timeout = 120

    async def setup_grape(self) -> None:
        harness.node_modules_dir()  # skip early when Node is missing
        self.grape = await harness.start_python_grape(self, reactor=reactor, host=LOOPBACK)
        self.link = Link(self.grape.url, reactor=reactor, lookup_cache_ttl=1.0)
        self.link.start()
        self.addCleanup(self.link.stop)

    async def announced(self, name: str, port: int) -> None:
        """Wait until the grape's lookup of ``name`` lists ``127.0.0.1:port``."""
        dest = f"{LOOPBACK}:{port}"
        await harness.lookup_until(
            self.grape.url, name, lambda dests: dest in dests, f"lists {dest}"
        )

    def spawn(self, script: str, conf: dict[str, Any], name: str) -> harness.NodeProcess:
        return harness.spawn_node(self, script, [harness._dumps(conf).decode()], name=name)

    async def next_event(
        self, proc: harness.NodeProcess, event: str, timeout: float = 15.0
    ) -> dict[str, Any]:
        """The next line of ``proc`` whose ``event`` is ``event`` (others are skipped)."""
        deadline = reactor.seconds() + timeout
        while True:
            left = deadline - reactor.seconds()
            if left <= 0:
                raise harness.WaitTimeout(f"no {event!r} event\n" + proc.logs())
            message: dict[str, Any] = await proc.next_message(left)
            if message.get("event") == "uncaught":
                self.fail(f"uncaught exception in {proc.name}: {message}\n" + proc.logs())
            if message.get("event") == event:
                return message

    async def call(self, proc: harness.NodeProcess, command: dict[str, Any]) -> dict[str, Any]:
        """Send a command to ws_client.js and return its reply line."""
        proc.write_json(command)
        while True:
            reply: dict[str, Any] = await proc.next_message(30.0)
            if reply.get("event") == "uncaught":
                self.fail(f"uncaught exception in {proc.name}: {reply}\n" + proc.logs())
            if reply.get("id") == command["id"]:
                return reply

    async def python_server(
        self, handler: Any, name: str, **kwargs: Any
    ) -> tuple[PeerRPCServer, WSServerTransport]:
        transport = WSServerTransport(reactor, interface=LOOPBACK, **kwargs)
        server = PeerRPCServer(self.link, transport, handler)
        port = await server.listen(0)
        self.addCleanup(server.stop)
        await server.announce(name)
        await self.announced(name, port)
        return server, transport

    def python_client(self, **kwargs: Any) -> tuple[PeerRPCClient, WSClientTransport]:
        transport = WSClientTransport(reactor, **kwargs)
        client = PeerRPCClient(self.link, transport, timeout=10.0, reactor=reactor)
        self.addCleanup(client.stop)
        return client, transport

    async def node_server(self, name: str, **conf: Any) -> harness.NodeProcess:
        proc = self.spawn(
            "ws_server.js", {"grape": self.grape.url, "name": name, **conf}, "ws-server"
        )
        ready = await proc.ready
        await self.announced(name, int(ready["port"]))
        return proc

    async def node_client(self, **conf: Any) -> harness.NodeProcess:
        proc = self.spawn("ws_client.js", {"grape": self.grape.url, **conf}, "ws-client")
        await proc.ready
        return proc

    # --- RPC: Node client -> Python server --------------------------------------------------------

    @async_test
    async def test_node_client_python_server(self) -> None:
        await self.setup_grape()
        name = service_name("py-server")

        def handler(request: Request) -> Any:
            if request.payload == "boom":
                raise errors.RemoteError("ws went wrong")
            if request.payload == "value-error":
                raise ValueError("bad value")
            return {"echo": request.payload, "key": request.key}

        await self.python_server(handler, name)
        node = await self.node_client()
        reply = await self.call(node, {"id": 1, "op": "request", "name": name, "payload": "hello"})
        self.assertEqual(reply, {"id": 1, "ok": True, "result": {"echo": "hello", "key": name}})
        payload = {"ü": [1, 2.5, None, True], "s": "a/b\u2028"}
        reply = await self.call(node, {"id": 2, "op": "request", "name": name, "payload": payload})
        self.assertEqual(reply["result"], {"echo": payload, "key": name})
        reply = await self.call(node, {"id": 3, "op": "request", "name": name, "payload": "boom"})
        self.assertEqual(reply, {"id": 3, "ok": False, "error": "ws went wrong"})
        reply = await self.call(
            node, {"id": 4, "op": "request", "name": name, "payload": "value-error"}
        )
        self.assertEqual(reply, {"id": 4, "ok": False, "error": "bad value"})
        # The service may log a handler's exception with its traceback, besides replying with it.
        self.flushLoggedErrors(errors.RemoteError, ValueError)

    @async_test
    async def test_node_client_gets_error_and_result_of_a_reply(self) -> None:
        """A handler returning Reply(error, result) answers as Node's handler.reply(err, res):
        the Node client's callback gets both, and an empty meta is all a WS handler sees."""
        await self.setup_grape()
        name = service_name("py-reply")
        metas: list[dict[str, Any]] = []

        def handler(request: Request) -> Any:
            metas.append(dict(request.meta))
            if request.payload == "partial":
                return Reply("ERR_PARTIAL", {"done": 2, "of": 3})
            if request.payload == "no-error":
                return Reply(None, [1, 2])
            return Reply("only the error")

        await self.python_server(handler, name)
        proc = self.spawn("ws_reply_client.js", {"grape": self.grape.url}, "ws-reply-client")
        await proc.ready
        expected = {
            "partial": {"error": "ERR_PARTIAL", "result": {"done": 2, "of": 3}},
            "no-error": {"error": None, "result": [1, 2]},
            "bare": {"error": "only the error", "result": None},
        }
        for i, (payload, reply) in enumerate(expected.items()):
            got = await self.call(proc, {"id": i, "name": name, "payload": payload})
            self.assertEqual(got, {"id": i, **reply}, payload)
        self.assertEqual(metas, [{}, {}, {}])

    @async_test
    async def test_node_client_many_concurrent_on_one_socket(self) -> None:
        """200 requests from one Node socket, answered by Python in reverse order."""
        await self.setup_grape()
        name = service_name("py-concurrent")
        count = 200
        waiting: list[tuple[int, Deferred[Any]]] = []
        all_in: Deferred[None] = Deferred()

        def handler(request: Request) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            waiting.append((request.payload, d))
            if len(waiting) == count:
                all_in.callback(None)
            return d

        _, transport = await self.python_server(handler, name)
        node = await self.node_client(peer={"maxActiveDestTransports": 1})
        node.write_json(
            {"id": 1, "op": "many", "name": name, "payloads": list(range(count)), "timeout": 20000}
        )
        await all_in
        self.assertEqual(transport.sockets, 1)
        for payload, d in sorted(waiting, reverse=True):
            d.callback(payload * 3)
        reply: dict[str, Any] = await node.next_message(30.0)
        self.assertEqual(reply["results"], [{"ok": True, "result": i * 3} for i in range(count)])

    # --- RPC: Python client -> Node server --------------------------------------------------------

    @async_test
    async def test_python_client_node_server(self) -> None:
        await self.setup_grape()
        name = service_name("node-server")
        await self.node_server(name)
        client, _ = self.python_client()
        self.assertEqual(
            await client.request(name, "hello"),
            {"echo": "hello", "key": name, "fingerprint": None},
        )
        payload = {"ü": [1, 2.5, None, True], "nested": {"a": []}}
        self.assertEqual((await client.request(name, payload))["echo"], payload)
        with self.assertRaises(errors.RemoteError) as caught:
            await client.request(name, {"fail": "ws went wrong"})
        self.assertEqual(caught.exception.message, "ws went wrong")

    @async_test
    async def test_python_client_many_concurrent_on_one_socket(self) -> None:
        """200 requests multiplexed on one socket; Node answers them in reverse order."""
        await self.setup_grape()
        name = service_name("node-concurrent")
        await self.node_server(name)
        client, transport = self.python_client()
        count = 200
        calls = [client.request(name, {"n": i, "delay": 1 + (count - i) * 2}) for i in range(count)]
        results = await gatherResults(calls)
        self.assertEqual([r["echo"]["n"] for r in results], list(range(count)))
        self.assertEqual(len(transport.connections), 1)

    @async_test
    async def test_python_client_node_server_killed_in_flight(self) -> None:
        """Requests in flight fail with TransportClosed as soon as the Node server dies."""
        await self.setup_grape()
        name = service_name("node-dies")
        proc = await self.node_server(name)
        client, _ = self.python_client()
        await client.request(name, "warm-up")
        pending = [client.request(name, {"delay": 60000, "n": i}) for i in range(5)]
        for _ in pending:  # every request reached the server and waits there
            await self.next_event(proc, "delayed")
        started = reactor.seconds()
        await proc.stop()
        for d in pending:
            with self.assertRaises(errors.TransportClosed):
                await d
        self.assertLess(reactor.seconds() - started, 8.0)

    # --- pub/sub ---------------------------------------------------------------------------------

    @async_test
    async def test_node_pub_python_sub(self) -> None:
        await self.setup_grape()
        name = service_name("node-pub")
        pub = self.spawn("ws_pub.js", {"grape": self.grape.url, "name": name}, "ws-pub")
        ready = await pub.ready
        await self.announced(name, int(ready["port"]))
        received: list[str | bytes] = []
        sub = PeerSub(self.link, WSSubTransport(reactor), reactor=reactor)
        self.addCleanup(sub.stop)
        sub.add_listener("message", received.append)
        await sub.sub(name)
        await self.next_event(pub, "connection")
        messages: list[dict[str, Any]] = [
            {"text": "world"},
            {"text": '{"a":1}'},
            {"base64": base64.b64encode(b"bin\x00\xff").decode()},
            {"text": "ü"},
        ]
        for m in messages:
            pub.write_json({"op": "pub", **m})
            self.assertEqual((await self.next_event(pub, "published"))["subscribers"], 1)
        await harness.wait_until(
            lambda: _now(len(received)), 10.0, "4 messages arrive", done=lambda n: n == 4
        )
        self.assertEqual(received, ["world", '{"a":1}', b"bin\x00\xff", "ü"])

    @async_test
    async def test_python_pub_node_sub(self) -> None:
        await self.setup_grape()
        name = service_name("py-pub")
        transport = WSPubTransport(reactor, interface=LOOPBACK)
        pub = PeerPub(self.link, transport)
        self.addCleanup(pub.stop)
        port = await pub.listen(0)
        await pub.announce(name)
        await self.announced(name, port)
        subs = [
            self.spawn("ws_sub.js", {"grape": self.grape.url, "name": name}, f"ws-sub-{i}")
            for i in range(2)
        ]
        for proc in subs:
            await proc.ready
            await self.next_event(proc, "connected")
        self.assertEqual(transport.subscribers, 2)
        self.assertEqual(pub.pub("world"), 2)
        self.assertEqual(pub.pub('{"a":1}'), 2)
        self.assertEqual(pub.pub(b"bin\x00\xff"), 2)
        self.assertEqual(pub.pub("ü"), 2)
        for proc in subs:
            got = [await self.next_event(proc, "message") for _ in range(4)]
            self.assertEqual(
                [{k: v for k, v in m.items() if k != "event"} for m in got],
                [
                    {"text": "world"},
                    {"text": '{"a":1}'},
                    {"base64": base64.b64encode(b"bin\x00\xff").decode()},
                    {"text": "ü"},
                ],
            )
        # Unlike Node's, stop() closes the subscribers' sockets: they see it.
        await pub.stop()
        for proc in subs:
            await self.next_event(proc, "disconnected")

    @async_test
    async def test_node_publisher_restarted(self) -> None:
        """A killed publisher, restarted on its port, is followed again within seconds."""
        await self.setup_grape()
        name = service_name("node-pub-restart")
        conf = {"grape": self.grape.url, "name": name}
        pub = self.spawn("ws_pub.js", conf, "ws-pub-1")
        port = int((await pub.ready)["port"])
        await self.announced(name, port)
        received: list[str | bytes] = []
        events: list[str] = []
        sub = PeerSub(self.link, WSSubTransport(reactor), reactor=reactor)
        self.addCleanup(sub.stop)
        sub.add_listener("message", received.append)
        sub.add_listener("connected", lambda n, d: events.append("connected"))
        sub.add_listener("disconnected", lambda n, d: events.append("disconnected"))
        await sub.sub(name)
        await self.next_event(pub, "connection")
        pub.write_json({"op": "pub", "text": "before"})
        await harness.wait_until(
            lambda: _now(received), 10.0, "'before' arrives", done=lambda r: r == ["before"]
        )

        await pub.stop()
        await harness.wait_until(
            lambda: _now(events),
            10.0,
            "the subscriber sees the publisher go",
            done=lambda e: "disconnected" in e,
        )
        await deferLater(reactor, 1.0, lambda: None)  # resubscribe attempts are refused meanwhile
        restarted = reactor.seconds()
        pub2 = self.spawn("ws_pub.js", {**conf, "port": port}, "ws-pub-2")
        self.assertEqual(int((await pub2.ready)["port"]), port)
        await self.next_event(pub2, "connection", timeout=10.0)
        back_after = reactor.seconds() - restarted
        self.assertLess(back_after, 5.0)
        pub2.write_json({"op": "pub", "text": "after"})
        await harness.wait_until(
            lambda: _now(received), 10.0, "'after' arrives", done=lambda r: r[-1:] == ["after"]
        )
        self.assertEqual(received, ["before", "after"])
        self.assertEqual(events, ["connected", "disconnected", "connected"])

    # --- TLS -------------------------------------------------------------------------------------

    def pki(self) -> tuple[Identity, Identity, Identity]:
        ca = Identity("grenache interop CA", ca=True)
        return ca, Identity("localhost", ca), Identity("client1", ca)

    @async_test
    async def test_tls_python_client_node_server(self) -> None:
        await self.setup_grape()
        ca, server_id, client_id = self.pki()
        stranger = Identity("stranger", ca)
        name = service_name("node-wss")
        proc = await self.node_server(
            name, tls=server_id.node_tls(ca), whitelist=[client_id.fingerprint]
        )
        tls = ClientTLS(ca=ca.cert_pem, cert=client_id.cert_pem, key=client_id.key_pem)
        client, _ = self.python_client(tls=tls)
        result = await client.request(name, "secret")
        self.assertEqual(
            result, {"echo": "secret", "key": name, "fingerprint": client_id.fingerprint}
        )
        verify = await self.next_event(proc, "verify")
        self.assertEqual(
            verify, {"event": "verify", "fingerprint": client_id.fingerprint, "allowed": True}
        )

        # A certificate the server's verifyClient does not list: 401, an error, no crash.
        other = ClientTLS(ca=ca.cert_pem, cert=stranger.cert_pem, key=stranger.key_pem)
        refused, _ = self.python_client(tls=other)
        with self.assertRaises(errors.DestinationUnreachable) as caught:
            await refused.request(name, "nope")
        self.assertIn("401", caught.exception.message)
        verify = await self.next_event(proc, "verify")
        self.assertEqual(verify["allowed"], False)
        self.assertEqual(
            await client.request(name, "still"),
            {"echo": "still", "key": name, "fingerprint": client_id.fingerprint},
        )

    @async_test
    async def test_tls_node_client_python_server(self) -> None:
        await self.setup_grape()
        ca, server_id, client_id = self.pki()
        stranger = Identity("stranger", ca)
        name = service_name("py-wss")
        seen: list[str | None] = []

        def handler(request: Request) -> Any:
            seen.append(request.peer_certificate)
            return {"fingerprint": request.peer_certificate, "echo": request.payload}

        await self.python_server(
            handler,
            name,
            tls=ServerTLS(key=server_id.key_pem, cert=server_id.cert_pem, ca=ca.cert_pem),
            verify_client=fingerprint_whitelist([client_id.fingerprint]),
        )
        node = await self.node_client(tls=client_id.node_tls(ca))
        reply = await self.call(node, {"id": 1, "op": "request", "name": name, "payload": "x"})
        self.assertEqual(
            reply,
            {"id": 1, "ok": True, "result": {"fingerprint": client_id.fingerprint, "echo": "x"}},
        )
        self.assertEqual(seen, [client_id.fingerprint])

        # A Node client whose certificate is not whitelisted gets the socket refused (401).
        # Its ws socket has no 'error' listener, so that would kill the process; the script
        # reports the uncaught error instead, then the request fails with ERR_TRANSPORT_CLOSE.
        other = await self.node_client(tls=stranger.node_tls(ca))
        other.write_json({"id": 2, "op": "request", "name": name, "payload": "y", "timeout": 3000})
        lines: list[dict[str, Any]] = []
        while not lines or lines[-1].get("id") != 2:
            lines.append(await other.next_message(20.0))
        self.assertEqual(
            lines,
            [
                {"event": "uncaught", "error": "Unexpected server response: 401"},
                {"id": 2, "ok": False, "error": "ERR_TRANSPORT_CLOSE"},
            ],
        )
        self.assertEqual(seen, [client_id.fingerprint])


async def _now(value: Any) -> Any:
    """A probe for harness.wait_until that just returns ``value`` (read at call time)."""
    return value
