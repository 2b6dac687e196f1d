"""
Unannounce in a network with real Node grapes (grenache-grape 1.0.0, which lacks it):

- the DHT query ``unannounce_peer`` sent straight to a Node grape: it drops it unanswered
  (bittorrent-dht 10.0.0 ignores query names it does not know), does not crash and keeps
  serving;
- a mixed network: a Python grape's ``/unannounce`` reaches the Python grapes, the Node grape
  keeps the peer until it expires (the documented fallback) and is not taken for a dead node;
- the link against a Node grape's HTTP API: ``unannounce`` is "not supported" and
  ``stop_announcing`` (so ``PeerRPCServer.stop()``) falls back quietly.
"""

from __future__ import annotations

import os
from typing import Any

import bencode2
from twisted.internet import defer, reactor
from twisted.internet.protocol import DatagramProtocol
from twisted.trial import unittest

from grenache import errors
from grenache.link import Link
from grenache.peer import PeerRPCServer
from grenache.transports.http import HTTPServerTransport
from tests.interop import harness
from tests.interop.harness import async_test

LOOPBACK = harness.LOCALHOST


class KRPCProbe(DatagramProtocol):
    """Sends hand-made KRPC queries and sorts the replies by transaction id."""

    def __init__(self) -> None:
        self.replies: dict[bytes, dict[bytes, Any]] = {}
        self.waiting: dict[bytes, defer.Deferred[dict[bytes, Any]]] = {}
        self.node_id = os.urandom(20)

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        message = bencode2.bdecode(data)
        t = message[b"t"]
        self.replies[t] = message
        waiter = self.waiting.pop(t, None)
        if waiter is not None:
            waiter.callback(message)

    def send(self, addr: tuple[str, int], t: bytes, q: str, **args: Any) -> None:
        query = {"a": {"id": self.node_id, **args}, "q": q, "t": t, "y": "q"}
        assert self.transport is not None
        transport: Any = self.transport
        transport.write(bencode2.bencode(query), addr)

    def ask(
        self, addr: tuple[str, int], t: bytes, q: str, **args: Any
    ) -> defer.Deferred[dict[bytes, Any]]:
        waiter: defer.Deferred[dict[bytes, Any]] = defer.Deferred()
        self.waiting[t] = waiter
        self.send(addr, t, q, **args)
        waiter.addTimeout(10, reactor)
        return waiter


class UnannounceInteropTests(unittest.TestCase):
    timeout = 120

    def setUp(self) -> None:
        harness.node_modules_dir()  # skip early (or fail) without Node

    def probe(self) -> KRPCProbe:
        probe = KRPCProbe()
        port = reactor.listenUDP(0, probe, interface=LOOPBACK)  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        return probe

    @async_test
    async def test_node_grape_drops_the_query_and_keeps_serving(self) -> None:
        node = await harness.start_node_grape(self)
        addr = node.dht_address
        probe = self.probe()
        peers = await probe.ask(addr, b"\x00\x01", "get_peers", info_hash=b"unannounce:node")
        token = peers[b"r"][b"token"]
        stored = await probe.ask(
            addr, b"\x00\x04", "announce_peer", info_hash=b"unannounce:node", port=4567, token=token
        )
        self.assertEqual(stored[b"y"], b"r")
        # The query as a Python grape sends it, then a ping: Node handles datagrams in order,
        # so once the ping is answered the unannounce_peer has been handled too.
        probe.send(
            addr,
            b"\x00\x02",
            "unannounce_peer",
            info_hash=b"unannounce:node",
            port=4567,
            token=token,
        )
        pong = await probe.ask(addr, b"\x00\x03", "ping")
        self.assertEqual(pong[b"y"], b"r")
        self.assertNotIn(b"\x00\x02", probe.replies)  # dropped: no reply, no error
        self.assertFalse(node.process.has_ended, node.process.logs())
        # The Node grape still serves, and still has the peer (it does not know the query).
        reply = await harness.grape_request(node.url, "lookup", "unannounce:node")
        self.assertEqual(reply.json, [f"{LOOPBACK}:4567"])

    @async_test
    async def test_mixed_network(self) -> None:
        node = await harness.start_node_grape(self)
        first = await harness.start_python_grape(self, [node.dht_address])
        second = await harness.start_python_grape(self, [node.dht_address, first.dht_address])
        name, port = "unannounce:mixed", 4321
        expected = [f"{LOOPBACK}:{port}"]
        await harness.announce_until_acknowledged(first.url, name, port)
        for grape in (node, second):
            await harness.lookup_until(
                grape.url, name, lambda peers: peers == expected, "finds the service"
            )
        self.assertNotEqual(second.grape.node.peers.get(name.encode()), [])

        reply = await harness.grape_request(first.url, "unannounce", [name, port])
        self.assertEqual(reply.status, 200)
        self.assertGreaterEqual(reply.json, 1)  # the Python grape confirmed; Node did not
        # The Python grapes dropped it; the Node grape keeps it until it expires.
        self.assertEqual(second.grape.node.peers.get(name.encode()), [])
        reply = await harness.grape_request(node.url, "lookup", name)
        self.assertEqual(reply.json, expected)
        # Node's silence is not taken for death: no down mark, still a neighbour.
        self.assertEqual(first.grape.node.down, {})
        self.assertIn(node.dht_port, [c.port for c in first.grape.node.routing.to_list()])
        self.assertFalse(node.process.has_ended, node.process.logs())
        # Everything still works across the implementations.
        await harness.announce_until_acknowledged(node.url, "unannounce:after", 5432)
        await harness.lookup_until(
            first.url,
            "unannounce:after",
            lambda peers: peers == [f"{LOOPBACK}:5432"],
            "finds a service announced on the Node grape",
        )

    @async_test
    async def test_link_against_a_node_grape_falls_back_quietly(self) -> None:
        other = await harness.start_node_grape(self)
        node = await harness.start_node_grape(self, [other.dht_address])
        link = Link(node.url, reactor=reactor, lookup_cache_ttl=0)
        self.addCleanup(link.stop)
        failure = None
        try:
            await link.unannounce("unannounce:link", 1234)
        except errors.GrapeReplyError as error:
            failure = error
        assert failure is not None
        self.assertEqual((failure.message, failure.status), ("ERR_REQ_NOTFOUND", 200))

        server = PeerRPCServer(
            link, HTTPServerTransport(reactor, interface=LOOPBACK), lambda request: "ok"
        )
        self.addCleanup(server.stop)
        port = await server.listen(0)
        self.assertGreaterEqual(await server.announce("unannounce:link"), 1)
        self.assertEqual(await link.lookup("unannounce:link"), [f"{LOOPBACK}:{port}"])
        await server.stop()  # no error: the link falls back to expiry
        self.assertEqual(link.announcing(), [])
        # The fallback: the Node grape still lists it until its last announce expires.
        self.assertEqual(await link.lookup("unannounce:link"), [f"{LOOPBACK}:{port}"])
