"""DHT node behaviour on an in-memory network with a Clock: reply shapes, flows, expiry."""

from __future__ import annotations

import random

import bencode2
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from grenache.dht import bep44
from grenache.dht.lookup import decode_nodes, encode_peer
from grenache.dht.node import DHTConfig, DHTNode
from grenache.errors import AllQueriesFailed, InvalidPut, KRPCError
from tests.dhtnet import FakeNetwork, result_of

VECTOR_PUBLIC_KEY = bytes.fromhex(
    "77ff84905a91936367c01360803104f92432fcd904a43511876df5cdf3e7e548"
)
VECTOR_SALTED_SIG = bytes.fromhex(
    "6834284b6b24c3204eb2fea824d82f88883a3d95e8b4a21b8c0ded553d17d17d"
    "df9a8a7104b1258f30bed3787e6cb896fca78c58f8e03b5f18f14951a87d9a08"
)


class Probe(DatagramProtocol):
    """A raw KRPC speaker: sends hand-made datagrams, records what comes back."""

    def __init__(self) -> None:
        self.received: list[bytes] = []

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.append(data)


class Network:
    def __init__(self, test: SynchronousTestCase, **config: object) -> None:
        self.clock = Clock()
        self.net = FakeNetwork(self.clock)
        self.nodes: list[DHTNode] = []
        self.config = config
        test.addCleanup(self.stop)

    def node(
        self,
        bootstrap: tuple[tuple[str, int], ...] = (),
        node_id: bytes | None = None,
        **config: object,
    ) -> DHTNode:
        settings = {**self.config, **config, "bootstrap": bootstrap}
        node = DHTNode(DHTConfig(**settings), self.clock, node_id=node_id)  # type: ignore[arg-type]
        self.net.attach(node.krpc)
        node.start()
        self.net.settle()
        self.nodes.append(node)
        return node

    def chain(self, count: int, **config: object) -> list[DHTNode]:
        first = self.node(**config)
        nodes = [first]
        for _ in range(count - 1):
            nodes.append(self.node(bootstrap=(("127.0.0.1", first.port),), **config))
        return nodes

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
            node.krpc.stopProtocol()


class ServingTests(SynchronousTestCase):
    """Each KRPC handler answers with Node's exact shape (docs/protocol.rst, *DHT messages*)."""

    def setUp(self) -> None:
        self.network = Network(self)
        self.node = self.network.node(node_id=b"B" * 20)
        self.probe = Probe()
        self.probe_port = self.network.net.attach(self.probe)

    def ask(self, message: dict[str, object]) -> dict[bytes, object] | None:
        self.probe.received.clear()
        self.probe.transport.write(bencode2.bencode(message), ("127.0.0.1", self.node.port))
        self.network.net.settle()
        if not self.probe.received:
            return None
        self.assertEqual(len(self.probe.received), 1)
        return bencode2.bdecode(self.probe.received[0])

    def query(self, q: str, **args: object) -> dict[bytes, object] | None:
        return self.ask({"t": b"\x00\x07", "y": "q", "q": q, "a": {"id": b"A" * 20, **args}})

    def token(self) -> bytes:
        reply = self.query("get_peers", info_hash=b"rpc_test")
        assert reply is not None
        return reply[b"r"][b"token"]  # type: ignore[index]

    def test_ping(self) -> None:
        self.probe.transport.write(
            b"d1:ad2:id20:" + b"A" * 20 + b"e1:q4:ping1:t2:\x00\x071:y1:qe",
            ("127.0.0.1", self.node.port),
        )
        self.network.net.settle()
        self.assertEqual(
            self.probe.received, [b"d1:rd2:id20:" + b"B" * 20 + b"e1:t2:\x00\x071:y1:re"]
        )

    def test_find_node_lists_table_including_querier(self) -> None:
        reply = self.query("find_node", target=b"A" * 20)
        assert reply is not None
        nodes = decode_nodes(reply[b"r"][b"nodes"])  # type: ignore[index]
        self.assertEqual(nodes, [(b"A" * 20, ("127.0.0.1", self.probe_port))])
        self.assertEqual(sorted(reply[b"r"]), [b"id", b"nodes"])  # type: ignore[arg-type]

    def test_find_node_without_target(self) -> None:
        reply = self.query("find_node")
        self.assertEqual(
            reply,
            {
                b"e": [203, b"`find_node` missing required `a.target` field"],
                b"t": b"\x00\x07",
                b"y": b"e",
            },
        )

    def test_get_peers_without_info_hash(self) -> None:
        reply = self.query("get_peers")
        self.assertEqual(reply[b"e"], [203, b"`get_peers` missing required `a.info_hash` field"])  # type: ignore[index]

    def test_get_peers_with_values_has_token_and_no_nodes(self) -> None:
        token = self.token()
        ack = self.query(
            "announce_peer", info_hash=b"rpc_test", port=1337, token=token, implied_port=0
        )
        self.assertEqual(ack, {b"r": {b"id": b"B" * 20}, b"t": b"\x00\x07", b"y": b"r"})
        reply = self.query("get_peers", info_hash=b"rpc_test")
        self.assertEqual(
            reply,
            {
                b"r": {b"id": b"B" * 20, b"token": token, b"values": [b"\x7f\x00\x00\x01\x059"]},
                b"t": b"\x00\x07",
                b"y": b"r",
            },
        )

    def test_announce_implied_port_uses_source_port(self) -> None:
        token = self.token()
        self.query("announce_peer", info_hash=b"x", port=1, token=token, implied_port=1)
        reply = self.query("get_peers", info_hash=b"x")
        self.assertEqual(reply[b"r"][b"values"], [encode_peer("127.0.0.1", self.probe_port)])  # type: ignore[index]

    def test_announce_bad_token(self) -> None:
        reply = self.query("announce_peer", info_hash=b"x", port=1337, token=b"T" * 20)
        self.assertEqual(reply[b"e"], [203, b"cannot `announce_peer` with bad token"])  # type: ignore[index]

    def error(self, q: str, **args: object) -> list[object]:
        reply = self.query(q, **args)
        assert reply is not None, f"no reply to {q} {args}"
        return reply[b"e"]  # type: ignore[return-value]

    def test_bad_queries_get_errors_not_silence(self) -> None:
        """Where Node drops a query silently (its sender waits 2.5 s), this grape answers
        with BEP 5's codes: 203 for bad arguments, 204 for an unknown method."""
        token = self.token()
        bad_port = [203, b"`announce_peer` needs a port from 1 to 65535"]
        for port in (0, 70000, -1, b"1337"):
            self.assertEqual(
                self.error("announce_peer", info_hash=b"x", port=port, token=token), bad_port
            )
        self.assertEqual(self.error("announce_peer", info_hash=b"x", token=token), bad_port)
        bad_token = [203, b"cannot `announce_peer` with bad token"]
        self.assertEqual(self.error("announce_peer", info_hash=b"x", port=1337), bad_token)
        self.assertEqual(self.error("announce_peer", info_hash=b"x", port=1337, token=7), bad_token)
        self.assertEqual(
            self.error("announce_peer", port=1337, token=token),
            [203, b"`announce_peer` missing required `a.info_hash` field"],
        )
        self.assertEqual(self.error("get"), [203, b"`get` missing required `a.target` field"])
        self.assertEqual(self.error("sample_infohashes", target=b"x"), [204, b"Method Unknown"])
        self.assertEqual(
            self.error("put", token=token), [203, b"`put` missing required `a.v` field"]
        )
        self.assertEqual(self.error("put", v=b"x"), [203, b"cannot `put` with bad token"])
        self.assertEqual(
            self.error("put", v=b"x", token=b"T"), [203, b"cannot `put` with bad token"]
        )
        self.assertEqual(
            self.ask({"t": b"\x00\x07", "y": "q", "q": "ping"})[b"e"],  # type: ignore[index]
            [203, b"query without an `a` dictionary"],
        )
        # A query without q gets no reply: a Node grape would crash on one (it never sends it).
        self.assertIsNone(self.ask({"t": b"\x00\x07", "y": "q", "a": {"id": b"A" * 20}}))
        # Still serving.
        self.assertIsNotNone(self.query("ping"))

    def test_ids_and_targets_must_be_20_bytes(self) -> None:
        for node_id in (None, b"", b"A" * 19, b"A" * 21, 7):
            args: dict[str, object] = {} if node_id is None else {"id": node_id}
            reply = self.ask({"t": b"\x00\x07", "y": "q", "q": "ping", "a": args})
            self.assertEqual(reply[b"e"], [203, b"`ping` needs a 20-byte node id in `a.id`"])  # type: ignore[index]
        for target in (b"", b"x" * 19, b"x" * 21, 5, [b"x" * 20]):
            self.assertEqual(
                self.error("find_node", target=target),
                [203, b"`find_node` `a.target` must be 20 bytes"],
            )
            self.assertEqual(
                self.error("get", target=target), [203, b"`get` `a.target` must be 20 bytes"]
            )
        # A service name is a key of any length.
        for info_hash in (b"", b"x", b"x" * 200):
            self.assertIn(b"token", self.query("get_peers", info_hash=info_hash)[b"r"])  # type: ignore[index,operator]
        self.assertEqual(
            self.error("get_peers", info_hash=5),
            [203, b"`get_peers` `a.info_hash` must be a byte string"],
        )
        # 5 bad ids, 5 bad targets for each of find_node and get, 1 bad info_hash.
        self.assertEqual(dict(self.node.krpc.refused), {203: 16})

    def test_garbage_leaves_node_serving(self) -> None:
        for garbage in (
            b"",
            b"garbage",
            b"d1:ti1ee",
            b"l1:ae",
            b"d1:y1:q1:t2:ab1:ai5ee",
            b"\xff" * 300,
        ):
            self.probe.transport.write(garbage, ("127.0.0.1", self.node.port))
        self.network.net.settle()
        self.assertIsNotNone(self.query("ping"))

    def test_immutable_put_and_get(self) -> None:
        token = self.token()
        self.assertEqual(self.query("put", token=token, v=b"hello world")[b"r"], {b"id": b"B" * 20})  # type: ignore[index]
        target = bytes.fromhex("6d33adc2b6b2c14c3036feefb7fedbca1a880527")
        reply = self.query("get", target=target)
        self.assertEqual(reply[b"r"], {b"id": b"B" * 20, b"token": token, b"v": b"hello world"})  # type: ignore[index]

    def test_put_too_large(self) -> None:
        token = self.token()
        self.assertEqual(
            self.query("put", token=token, v=b"x" * 1001)[b"e"],  # type: ignore[index]
            [205, b"data payload too large"],
        )
        self.assertEqual(self.query("put", token=token, v=b"x" * 1000)[b"r"], {b"id": b"B" * 20})  # type: ignore[index]

    def test_mutable_put_vector_then_sequence_and_cas_errors(self) -> None:
        token = self.token()
        args = dict(
            token=token,
            v=b"Hello World!",
            k=VECTOR_PUBLIC_KEY,
            sig=VECTOR_SALTED_SIG,
            seq=1,
            salt=b"foobar",
        )
        self.assertEqual(self.query("put", **args)[b"r"], {b"id": b"B" * 20})  # type: ignore[index]
        self.assertEqual(
            self.query("put", **args)[b"e"],  # type: ignore[index]
            [302, b"sequence number less than current"],
        )
        self.assertEqual(
            self.query("put", cas=5, **args)[b"e"],  # type: ignore[index]
            [301, b"CAS mismatch, re-read and try again"],
        )
        target = bytes.fromhex("411eba73b6f087ca51a3795d9c8c938d365e32c1")
        reply = self.query("get", target=target)
        self.assertEqual(
            reply[b"r"],
            {
                b"id": b"B" * 20,
                b"k": VECTOR_PUBLIC_KEY,
                b"seq": 1,  # type: ignore[index]
                b"sig": VECTOR_SALTED_SIG,
                b"token": token,
                b"v": b"Hello World!",
            },
        )

    def test_mutable_put_bad_signature_refused(self) -> None:
        """BEP 44's 206 (Node drops the put silently; its putter then waits 2.5 s)."""
        token = self.token()
        bad = bytes(64)
        reply = self.query(
            "put",
            token=token,
            v=b"Hello World!",
            k=VECTOR_PUBLIC_KEY,
            sig=bad,
            seq=1,
            salt=b"foobar",
        )
        self.assertEqual(reply[b"e"], [206, b"invalid signature"])  # type: ignore[index]
        target = bytes.fromhex("411eba73b6f087ca51a3795d9c8c938d365e32c1")
        self.assertNotIn(b"v", self.query("get", target=target)[b"r"])  # type: ignore[index,operator]

    def test_mutable_put_refused_without_verification(self) -> None:
        node = self.network.node(verify_mutable=False)
        self.probe.received.clear()
        self.probe.transport.write(
            bencode2.bencode(
                {"t": b"ab", "y": "q", "q": "get_peers", "a": {"id": b"A" * 20, "info_hash": b"x"}}
            ),
            ("127.0.0.1", node.port),
        )
        self.network.net.settle()
        token = bencode2.bdecode(self.probe.received[0])[b"r"][b"token"]
        self.probe.received.clear()
        self.probe.transport.write(
            bencode2.bencode(
                {
                    "t": b"ab",
                    "y": "q",
                    "q": "put",
                    "a": {
                        "id": b"A" * 20,
                        "token": token,
                        "v": b"Hello World!",
                        "k": VECTOR_PUBLIC_KEY,
                        "sig": VECTOR_SALTED_SIG,
                        "seq": 1,
                        "salt": b"foobar",
                    },
                }
            ),
            ("127.0.0.1", node.port),
        )
        self.network.net.settle()
        self.assertEqual(
            bencode2.bdecode(self.probe.received[0])[b"e"], [400, b"verification not supported"]
        )


class FlowTests(SynchronousTestCase):
    """Announce, lookup, put and get across nodes."""

    def test_lone_node_keeps_its_own_announce(self) -> None:
        network = Network(self)
        node = network.node()
        self.assertEqual(result_of(network.net, node.announce(b"rpc_test", 1337)), 1)
        self.assertEqual(result_of(network.net, node.lookup(b"rpc_test")), ["127.0.0.1:1337"])

    def test_lone_node_lookup_follows_its_stores(self) -> None:
        # A lone node keeps its lookup answer between lookups; every change to what it holds
        # (announce, unannounce, expiry) shows in the next lookup.
        network = Network(self)
        node = network.node()
        result_of(network.net, node.announce(b"rpc_test", 1337))
        self.assertEqual(node.lookup_now(b"rpc_test"), ["127.0.0.1:1337"])
        self.assertEqual(node.lookup_now(b"rpc_test"), ["127.0.0.1:1337"])
        result_of(network.net, node.announce(b"rpc_test", 1338))
        self.assertEqual(
            sorted(node.lookup_now(b"rpc_test") or []), ["127.0.0.1:1337", "127.0.0.1:1338"]
        )
        result_of(network.net, node.unannounce(b"rpc_test", 1337))
        self.assertEqual(node.lookup_now(b"rpc_test"), ["127.0.0.1:1338"])
        answer = node.lookup_now(b"rpc_test")
        assert answer is not None
        answer.append("mutated by the caller")
        self.assertEqual(node.lookup_now(b"rpc_test"), ["127.0.0.1:1338"])
        network.net.run(2 * node.config.peer_max_age, step=10)
        self.assertEqual(node.lookup_now(b"rpc_test"), [])

    def test_lone_node_put_and_get(self) -> None:
        network = Network(self)
        node = network.node()
        put = result_of(network.net, node.put(bep44.Item(v=b"hello world")))
        self.assertEqual(put.key.hex(), "6d33adc2b6b2c14c3036feefb7fedbca1a880527")
        found = result_of(network.net, node.get(put.key))
        self.assertEqual(found.item.v, b"hello world")
        self.assertIsNone(found.token)

    def test_announce_on_one_lookup_on_other(self) -> None:
        network = Network(self)
        first, second = network.chain(2)
        self.assertEqual(result_of(network.net, first.announce(b"rest:util:net", 1337)), 1)
        self.assertEqual(
            result_of(network.net, second.lookup(b"rest:util:net")), ["127.0.0.1:1337"]
        )

    def test_announce_port_zero_is_dht_port(self) -> None:
        network = Network(self)
        first, second = network.chain(2)
        result_of(network.net, first.announce(b"svc", 0))
        self.assertEqual(result_of(network.net, second.lookup(b"svc")), [f"127.0.0.1:{first.port}"])

    def test_outdated_services_expire(self) -> None:
        network = Network(self, peer_max_age=120.0)
        first, second = network.chain(2)
        result_of(network.net, first.announce(b"svc", 1337))
        self.assertEqual(result_of(network.net, second.lookup(b"svc")), ["127.0.0.1:1337"])
        network.net.run(79)
        self.assertEqual(result_of(network.net, second.lookup(b"svc")), ["127.0.0.1:1337"])
        network.net.run(90)
        self.assertEqual(result_of(network.net, second.lookup(b"svc")), [])
        self.assertEqual(result_of(network.net, first.lookup(b"svc")), [])

    def test_reannounced_service_stays(self) -> None:
        network = Network(self, peer_max_age=1.0)
        first, second = network.chain(2)
        for _ in range(10):
            result_of(network.net, first.announce(b"svc", 2000))
            network.net.run(0.5)
        self.assertEqual(result_of(network.net, second.lookup(b"svc")), ["127.0.0.1:2000"])

    def test_reannounce_from_cached_token_table(self) -> None:
        network = Network(self)
        first, second, third = network.chain(3)
        self.assertEqual(result_of(network.net, first.announce(b"svc", 2000)), 2)
        self.assertIsNotNone(first.tables.peek(b"svc"))
        self.assertEqual(result_of(network.net, first.announce(b"svc", 2001)), 2)
        network.net.detach(("127.0.0.1", third.port))
        self.assertEqual(result_of(network.net, first.announce(b"svc", 2002), within=10), 1)
        network.net.detach(("127.0.0.1", second.port))
        # Every neighbour is gone: the announce is kept as a lone grape keeps it.
        self.assertEqual(result_of(network.net, first.announce(b"svc", 2003), within=10), 1)
        self.assertIn("127.0.0.1:2003", result_of(network.net, first.lookup(b"svc")))

    def test_hundred_nodes_one_byte_key(self) -> None:
        network = Network(self)
        nodes = network.chain(100)
        self.assertGreater(result_of(network.net, nodes[1].announce(b"B", 2000)), 0)
        self.assertEqual(result_of(network.net, nodes[2].lookup(b"B")), ["127.0.0.1:2000"])
        self.assertEqual(result_of(network.net, nodes[3].lookup(b"B")), ["127.0.0.1:2000"])

    def test_immutable_put_get_across_nodes(self) -> None:
        network = Network(self)
        first, _second, third = network.chain(3)
        put = result_of(network.net, first.put(bep44.Item(v=b"hello world")))
        self.assertEqual(put.hits, 2)
        found = result_of(network.net, third.get(put.key, cache=False))
        self.assertEqual(found.item.v, b"hello world")
        self.assertIsNotNone(found.token)
        self.assertNotEqual(found.responder, third.node_id)

    def test_mutable_put_get_and_sequence_errors(self) -> None:
        network = Network(self)
        first, second, third = network.chain(3)
        private = bep44.generate_private_key()
        public = bep44.public_key_of(private)

        def item(seq: int, value: bytes) -> bep44.Item:
            buf = bep44.signature_buffer(value, seq, b"salt")
            return bep44.Item(
                v=value, k=public, sig=bep44.sign(private, buf), seq=seq, salt=b"salt"
            )

        put = result_of(network.net, first.put(item(1, b"one")))
        self.assertEqual(put.key, bep44.mutable_key(public, b"salt"))
        found = result_of(network.net, third.get(put.key, salt=b"salt"))
        self.assertEqual((found.item.v, found.item.seq), (b"one", 1))
        result_of(network.net, first.put(item(2, b"two")))
        found = result_of(network.net, second.get(put.key, salt=b"salt", cache=False))
        self.assertEqual((found.item.v, found.item.seq), (b"two", 2))
        error = self.assertRaises(KRPCError, result_of, network.net, first.put(item(2, b"again")))
        self.assertEqual(error.message, "302 sequence number less than current")
        error = self.assertRaises(
            KRPCError, result_of, network.net, first.put(item(3, b"x"), cas=1)
        )
        self.assertEqual(error.code, 301)

    def test_put_validation(self) -> None:
        network = Network(self)
        node = network.node()
        cases = [
            (bep44.Item(v=None), "opts.v not given"),
            (bep44.Item(v=b"x" * 1000), "v must be less than 1000 bytes in put()"),
            (
                bep44.Item(v=b"x", k=b"k" * 31, sig=b"s" * 64, seq=1),
                "opts.k ed25519 public key must be 32 bytes",
            ),
            (
                bep44.Item(v=b"x", k=b"k" * 32, seq=1),
                "opts.sign function or options.sig signature is required for mutable put",
            ),
            (
                bep44.Item(v=b"x", k=b"k" * 32, sig=b"s" * 64),
                "opts.seq not provided for a mutable update",
            ),
            (
                bep44.Item(v=b"x", k=b"k" * 32, sig=b"s" * 64, seq=1, salt=b"s" * 65),
                "opts.salt is > 64 bytes long",
            ),
        ]
        for item, message in cases:
            error = self.assertRaises(InvalidPut, result_of, network.net, node.put(item))
            self.assertEqual(error.message, message)

    def test_put_all_queries_failed(self) -> None:
        network = Network(self)
        first, _second = network.chain(2, verify_mutable=False)
        private = bep44.generate_private_key()
        buf = bep44.signature_buffer(b"v", 1)
        item = bep44.Item(
            v=b"v", k=bep44.public_key_of(private), sig=bep44.sign(private, buf), seq=1
        )
        self.assertRaises(AllQueriesFailed, result_of, network.net, first.put(item))

    def test_dead_node_leaves_routing_table_after_lookup_timeout(self) -> None:
        network = Network(self)
        first, second, third = network.chain(3)
        self.assertIsNotNone(first.routing.get(third.node_id))
        network.net.detach(("127.0.0.1", third.port))
        result_of(network.net, first.lookup(b"anything"), within=10)
        self.assertIsNone(first.routing.get(third.node_id))
        self.assertIsNotNone(first.routing.get(second.node_id))

    def test_lookups_of_one_key_share_a_walk(self) -> None:
        network = Network(self)
        first, _second = network.chain(2)
        before = len(network.net.sent)
        d1, d2 = first.lookup(b"svc"), first.lookup(b"svc")
        network.net.settle()
        self.assertEqual(self.successResultOf(d1), self.successResultOf(d2))
        queries = [d for s, _, d in network.net.sent[before:] if s == ("127.0.0.1", first.port)]
        self.assertEqual(len(queries), 1)

    def test_a_cancelled_lookup_leaves_the_shared_walk_to_the_others(self) -> None:
        # The first caller's Deferred is cancelled (its HTTP client went away) while the walk
        # is out: the others still get the answer, and later lookups of the key are answered
        # (they used to join the abandoned walk forever).
        network = Network(self)
        first, _second = network.chain(2)
        result_of(network.net, first.announce(b"svc", 1337))
        d1, d2 = first.lookup(b"svc"), first.lookup(b"svc")
        d1.cancel()
        self.failureResultOf(d1)
        network.net.settle()
        self.assertEqual(self.successResultOf(d2), ["127.0.0.1:1337"])
        self.assertEqual(result_of(network.net, first.lookup(b"svc")), ["127.0.0.1:1337"])


class RoutingUpkeepTests(SynchronousTestCase):
    """Liveness sweep and ping-before-evict."""

    def test_liveness_sweep_removes_a_dead_contact(self) -> None:
        network = Network(self, node_liveness=300.0)
        first, second, third = network.chain(3)
        self.assertEqual(len(first.routing), 2)
        network.net.detach(("127.0.0.1", third.port))
        network.net.detach(("127.0.0.1", second.port))
        # Sweeps run every 30-90 s, but ping only after 300 s without a routing change; each
        # sweep removes at most the first contact that does not answer.
        network.net.run(200, step=5)
        self.assertEqual(len(first.routing), 2)
        network.net.run(400, step=5)
        self.assertEqual(len(first.routing), 0)

    def test_liveness_sweep_waits_a_random_extra_of_up_to_a_quarter(self) -> None:
        class Highest(random.Random):
            """Draws the top of every range: sweeps every 90 s, threshold 1.25 x 300 s."""

            def uniform(self, a: float, b: float) -> float:
                return b

        network = Network(self, node_liveness=300.0)
        seed = network.node()
        node = DHTNode(
            DHTConfig(bootstrap=(("127.0.0.1", seed.port),), node_liveness=300.0),
            network.clock,  # type: ignore[arg-type]
            rng=Highest(),
        )
        network.net.attach(node.krpc)
        node.start()
        network.nodes.append(node)
        network.net.settle()

        def pings() -> int:
            return sum(
                1
                for source, _, data in network.net.sent
                if source == ("127.0.0.1", node.port) and b"4:ping" in data
            )

        # The sweeps at 90, 180, 270 and 360 s find fewer than 375 s without change.
        network.net.run(400, step=5)
        self.assertEqual(pings(), 0)
        network.net.run(60, step=5)
        self.assertEqual(pings(), 1)

    def test_liveness_sweep_keeps_live_contacts(self) -> None:
        network = Network(self, node_liveness=300.0)
        first, _second = network.chain(2)
        network.net.run(1000, step=5)
        self.assertEqual(len(first.routing), 1)

    def test_full_bucket_evicts_a_dead_contact_for_a_newcomer(self) -> None:
        network = Network(self)
        hub = network.node(node_id=b"\x00" * 20)
        # Ids whose first bit is 1 all land in the far bucket, which never splits: 20 fill it.
        far = [network.node(node_id=b"\x80" + bytes([i]) * 19) for i in range(20)]
        for node in far:
            result_of(network.net, node.add_node(("127.0.0.1", hub.port)))
        self.assertEqual(len(hub.routing), 20)
        network.net.detach(("127.0.0.1", far[5].port))
        network.net.run(11)  # contacts are only pinged once they are 10 s old
        newcomer = network.node(node_id=b"\xff" * 20)
        result_of(network.net, newcomer.add_node(("127.0.0.1", hub.port)))
        network.net.run(5)
        self.assertIsNone(hub.routing.get(far[5].node_id))
        self.assertIsNotNone(hub.routing.get(newcomer.node_id))

    def test_full_bucket_of_live_contacts_drops_the_newcomer(self) -> None:
        network = Network(self)
        hub = network.node(node_id=b"\x00" * 20)
        far = [network.node(node_id=b"\x80" + bytes([i]) * 19) for i in range(20)]
        for node in far:
            result_of(network.net, node.add_node(("127.0.0.1", hub.port)))
        network.net.run(11)
        newcomer = network.node(node_id=b"\xff" * 20)
        result_of(network.net, newcomer.add_node(("127.0.0.1", hub.port)))
        network.net.run(5)
        self.assertIsNone(hub.routing.get(newcomer.node_id))
        self.assertEqual(len(hub.routing), 20)


class LoneNodeMutableTests(SynchronousTestCase):
    """A lone node applies to its own mutable puts the rules a remote node would."""

    def test_sequence_cas_and_signature_rules(self) -> None:
        network = Network(self)
        node = network.node()
        private = bep44.generate_private_key()
        public = bep44.public_key_of(private)

        def item(seq: int, value: bytes) -> bep44.Item:
            buf = bep44.signature_buffer(value, seq)
            return bep44.Item(v=value, k=public, sig=bep44.sign(private, buf), seq=seq)

        self.assertEqual(result_of(network.net, node.put(item(1, b"one"))).hits, 1)
        error = self.assertRaises(KRPCError, result_of, network.net, node.put(item(1, b"one")))
        self.assertEqual(error.code, 302)
        error = self.assertRaises(
            KRPCError, result_of, network.net, node.put(item(2, b"two"), cas=5)
        )
        self.assertEqual(error.code, 301)
        result_of(network.net, node.put(item(2, b"two"), cas=1))
        forged = bep44.Item(v=b"x", k=public, sig=bytes(64), seq=3)
        self.assertRaises(AllQueriesFailed, result_of, network.net, node.put(forged))
        self.assertEqual(result_of(network.net, node.get(bep44.mutable_key(public))).item.v, b"two")
