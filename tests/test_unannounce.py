"""Unannounce: the DHT's ``unannounce_peer`` (served and sent), the grape operation, background
KRPC queries (a silent node is not taken for a dead one), and a mutable-item ``verify``
function, on the in-memory network with a Clock."""

from __future__ import annotations

from typing import Any

import bencode2
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from grenache.dht import bep44
from grenache.dht.krpc import MAX_BACKGROUND, KRPCProtocol
from grenache.dht.node import DHTConfig, DHTNode
from grenache.errors import (
    AllQueriesFailed,
    GrapeAnnounceInvalid,
    GrapeDataInvalid,
    GrapeServicePortInvalid,
    KRPCTimeout,
)
from grenache.grape.operations import dispatch
from grenache.grape.service import GrapeConfig
from tests.dhtnet import FakeNetwork, result_of
from tests.test_dht_node import VECTOR_PUBLIC_KEY, VECTOR_SALTED_SIG, Network, ServingTests


class Silent:
    """Makes ``node`` drop ``unannounce_peer`` unanswered, as a Node grape drops a query it
    does not know (bittorrent-dht 10.0.0 has no default case)."""

    def __init__(self, node: DHTNode) -> None:
        self.received = 0
        inner = node.krpc.handle_query

        def handle(q: str, a: dict[str, Any], addr: tuple[str, int]) -> Any:
            if q == "unannounce_peer":
                self.received += 1
                return None
            return inner(q, a, addr)

        node.krpc.handle_query = handle


class ServingUnannounceTests(ServingTests):
    """``unannounce_peer`` as a Python grape serves it (docs/protocol.rst, *DHT messages*)."""

    def stored(self, key: bytes) -> list[bytes]:
        return self.node.peers.get(key)

    def test_forgets_the_senders_peer(self) -> None:
        token = self.token()
        self.query("announce_peer", info_hash=b"svc", port=1337, token=token)
        self.query("announce_peer", info_hash=b"svc", port=1338, token=token)
        reply = self.query("unannounce_peer", info_hash=b"svc", port=1337, token=token)
        assert reply is not None
        self.assertEqual(reply[b"y"], b"r")
        self.assertEqual(reply[b"r"], {b"id": b"B" * 20})
        self.assertEqual(self.stored(b"svc"), [bytes([127, 0, 0, 1]) + (1338).to_bytes(2, "big")])
        # Idempotent: nothing left to forget is still a success.
        again = self.query("unannounce_peer", info_hash=b"svc", port=1337, token=token)
        self.assertEqual(again[b"y"], b"r")  # type: ignore[index]

    def test_implied_port(self) -> None:
        token = self.token()
        self.query("announce_peer", info_hash=b"svc", port=1, implied_port=1, token=token)
        self.assertEqual(len(self.stored(b"svc")), 1)
        self.query("unannounce_peer", info_hash=b"svc", port=1, implied_port=1, token=token)
        self.assertEqual(self.stored(b"svc"), [])

    def test_checked_as_announce_peer(self) -> None:
        token = self.token()
        self.query("announce_peer", info_hash=b"svc", port=1337, token=token)
        for port in (0, 70000, b"1337", None):
            args: dict[str, object] = {"info_hash": b"svc", "token": token}
            if port is not None:
                args["port"] = port
            self.assertEqual(
                self.error("unannounce_peer", **args),
                [203, b"`unannounce_peer` needs a port from 1 to 65535"],
            )
        self.assertEqual(
            self.error("unannounce_peer", info_hash=b"svc", port=1337, token=b"T" * 20),
            [203, b"cannot `unannounce_peer` with bad token"],
        )
        self.assertEqual(
            self.error("unannounce_peer", port=1337, token=token),
            [203, b"`unannounce_peer` missing required `a.info_hash` field"],
        )
        self.assertEqual(len(self.stored(b"svc")), 1)


class FlowTests(SynchronousTestCase):
    def test_leaves_lookups_on_every_grape_at_once(self) -> None:
        network = Network(self)
        first, second, third = network.chain(3)
        self.assertEqual(result_of(network.net, first.announce(b"svc", 1337)), 2)
        result_of(network.net, first.announce(b"svc", 1338))
        for node in (second, third):
            self.assertEqual(
                sorted(result_of(network.net, node.lookup(b"svc"))),
                ["127.0.0.1:1337", "127.0.0.1:1338"],
            )
        now = network.clock.seconds()
        self.assertEqual(result_of(network.net, first.unannounce(b"svc", 1337)), 2)
        self.assertEqual(network.clock.seconds(), now)  # no timeout waited for
        for node in (first, second, third):
            self.assertEqual(result_of(network.net, node.lookup(b"svc")), ["127.0.0.1:1338"])

    def test_without_a_token_table_walks_first(self) -> None:
        network = Network(self)
        first, second = network.chain(2)
        result_of(network.net, first.announce(b"svc", 1337))
        first.tables.delete(b"svc")
        self.assertEqual(result_of(network.net, first.unannounce(b"svc", 1337)), 1)
        self.assertEqual(result_of(network.net, second.lookup(b"svc")), [])

    def test_port_zero_is_the_dht_port(self) -> None:
        network = Network(self)
        first, second = network.chain(2)
        result_of(network.net, first.announce(b"svc", 0))
        self.assertEqual(result_of(network.net, first.unannounce(b"svc", 0)), 1)
        self.assertEqual(result_of(network.net, second.lookup(b"svc")), [])

    def test_lone_grape(self) -> None:
        network = Network(self)
        node = network.node()
        result_of(network.net, node.announce(b"svc", 1337))
        self.assertEqual(result_of(network.net, node.unannounce(b"svc", 1337)), 1)
        self.assertEqual(result_of(network.net, node.lookup(b"svc")), [])
        self.assertEqual(result_of(network.net, node.unannounce(b"svc", 1337)), 0)

    def test_own_record_with_host(self) -> None:
        network = Network(self)
        first = network.node(host="127.0.0.1")
        second = network.node(bootstrap=(("127.0.0.1", first.port),), host="127.0.0.1")
        result_of(network.net, second.announce(b"svc", 1337))
        self.assertEqual(result_of(network.net, second.lookup(b"svc")), ["127.0.0.1:1337"])
        result_of(network.net, second.unannounce(b"svc", 1337))
        self.assertEqual(second.peers.get(b"svc"), [])
        self.assertEqual(result_of(network.net, second.lookup(b"svc")), [])
        self.assertEqual(result_of(network.net, first.lookup(b"svc")), [])

    def test_own_text_record_with_an_ipv6_host(self) -> None:
        network = Network(self)
        node = network.node(host="::1")
        result_of(network.net, node.announce(b"svc", 1337))
        self.assertEqual(result_of(network.net, node.lookup(b"svc")), ["[::1]:1337"])
        self.assertEqual(result_of(network.net, node.unannounce(b"svc", 1337)), 1)
        self.assertEqual(result_of(network.net, node.lookup(b"svc")), [])

    def test_wire_form(self) -> None:
        network = Network(self)
        first, second = network.chain(2)
        result_of(network.net, first.announce(b"svc", 1337))
        network.net.sent.clear()
        result_of(network.net, first.unannounce(b"svc", 1337))
        [query] = [
            data for source, dest, data in network.net.sent if dest == ("127.0.0.1", second.port)
        ]
        message = bencode2.bdecode(query)
        self.assertEqual(message[b"q"], b"unannounce_peer")
        self.assertEqual(message[b"y"], b"q")
        self.assertEqual(sorted(message[b"a"]), [b"id", b"info_hash", b"port", b"token"])
        self.assertEqual(message[b"a"][b"id"], first.node_id)
        self.assertEqual(message[b"a"][b"info_hash"], b"svc")
        self.assertEqual(message[b"a"][b"port"], 1337)
        self.assertEqual(bencode2.bencode(message), query)  # canonical, as every query we send

    def test_a_node_that_ignores_it_is_not_taken_for_dead(self) -> None:
        """A Node grape drops the unknown query: the others still forget the peer, the
        silent one keeps it (until it expires), stays in the routing table, is not marked
        down, and lookups are not held up behind the unanswered queries."""
        network = Network(self)
        first, second, third = network.chain(3)
        silent = Silent(third)
        result_of(network.net, first.announce(b"svc", 1337))
        unannounced = first.unannounce(b"svc", 1337)
        network.net.settle()
        self.assertEqual(silent.received, 1)
        self.assertNoResult(unannounced)
        # A lookup meanwhile is answered at once (the background query holds no slot).
        looked_up = first.lookup(b"svc")
        network.net.settle()
        self.assertEqual(self.successResultOf(looked_up), ["127.0.0.1:1337"])  # from third
        self.assertEqual(result_of(network.net, unannounced), 1)  # after the timeout
        self.assertEqual(first.down, {})
        self.assertIsNotNone(first.routing.get(third.node_id))
        self.assertEqual(third.peers.get(b"svc"), [bytes([127, 0, 0, 1, 5, 57])])
        self.assertEqual(second.peers.get(b"svc"), [])
        # The fallback: the silent node's record expires as any announce does.
        network.net.run(170)
        self.assertEqual(result_of(network.net, second.lookup(b"svc")), [])

    def test_only_silent_nodes(self) -> None:
        network = Network(self)
        first, second = network.chain(2)
        Silent(second)
        result_of(network.net, first.announce(b"svc", 1337))
        self.assertEqual(result_of(network.net, first.unannounce(b"svc", 1337)), 0)
        self.assertEqual(first.down, {})


class BackgroundQueryTests(SynchronousTestCase):
    def setUp(self) -> None:
        clock: Any = Clock()
        self.clock = clock
        self.net = FakeNetwork(self.clock)
        self.timeouts: list[tuple[str, int]] = []
        self.krpc = KRPCProtocol(
            b"A" * 20,
            self.clock,
            lambda q, a, addr: None,
            concurrency=1,
            on_timeout=self.timeouts.append,
        )
        self.net.attach(self.krpc)
        self.krpc.startProtocol()
        self.addCleanup(self.krpc.stopProtocol)
        self.nowhere = ("127.0.0.1", 9)

    def test_outside_the_in_flight_limit_and_timeout_not_reported(self) -> None:
        background = self.krpc.query(self.nowhere, "x", {}, background=True)
        ordinary = self.krpc.query(self.nowhere, "ping", {})
        self.assertEqual(self.krpc.in_flight, 2)
        self.assertEqual(self.krpc.queued, 0)
        self.clock.advance(3)
        self.failureResultOf(background, KRPCTimeout)
        self.failureResultOf(ordinary, KRPCTimeout)
        self.assertEqual(self.timeouts, [self.nowhere])  # the ordinary one only
        self.assertEqual(self.krpc.in_flight, 0)

    def test_past_the_cap_takes_an_ordinary_slot(self) -> None:
        queries = [
            self.krpc.query(self.nowhere, "x", {}, background=True)
            for _ in range(MAX_BACKGROUND + 2)
        ]
        self.assertEqual(self.krpc.in_flight, MAX_BACKGROUND + 1)
        self.assertEqual(self.krpc.queued, 1)
        queries[-1].cancel()
        self.failureResultOf(queries[-1])
        self.assertEqual(self.krpc.queued, 0)
        self.clock.advance(3)
        self.assertEqual(self.krpc.in_flight, 0)
        for query in queries[:-1]:
            self.failureResultOf(query, KRPCTimeout)
        self.assertEqual(self.timeouts, [self.nowhere])  # the one in an ordinary slot

    def test_cancel_frees_the_background_count(self) -> None:
        for _ in range(3):
            d = self.krpc.query(self.nowhere, "x", {}, background=True)
            d.cancel()
            self.failureResultOf(d)
        self.assertEqual(self.krpc.in_flight, 0)
        ordinary = self.krpc.query(self.nowhere, "ping", {})
        self.assertEqual(self.krpc.queued, 0)
        ordinary.cancel()
        self.failureResultOf(ordinary)


class OperationTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.network = Network(self)
        self.node = self.network.node()

    def run_op(self, data: Any) -> Any:
        answer = dispatch(self.node, "unannounce", data)
        return result_of(self.network.net, answer)

    def test_checks_data_as_announce(self) -> None:
        error = self.assertRaises(GrapeAnnounceInvalid, self.run_op, "svc")
        self.assertEqual(error.message, "ERR_GRAPE_UNANNOUNCE")
        for port in ("1337", 13.5, None, True, -1, 65536):
            self.assertRaises(GrapeServicePortInvalid, self.run_op, ["svc", port])
        error = self.assertRaises(GrapeDataInvalid, self.run_op, [5, 1337])
        self.assertIn("ERR_GRAPE_UNANNOUNCE", error.message)

    def test_answers_a_number(self) -> None:
        result_of(self.network.net, dispatch(self.node, "announce", ["svc", 1337]))
        self.assertEqual(self.run_op(["svc", 1337]), 1)
        self.assertEqual(self.run_op(["svc", 1337]), 0)
        self.assertEqual(dispatch(self.node, "lookup", "svc"), [])  # a lone grape: at once


class VerifyTests(SynchronousTestCase):
    """``verify(signature, message, public_key)``, Node's ``verify`` option."""

    def item(self) -> bep44.Item:
        return bep44.Item(
            v=b"Hello World!", k=VECTOR_PUBLIC_KEY, sig=VECTOR_SALTED_SIG, seq=1, salt=b"foobar"
        )

    def test_called_in_nodes_argument_order_and_obeyed(self) -> None:
        calls: list[tuple[bytes, bytes, bytes]] = []
        answer = [False]

        def verify(signature: bytes, message: bytes, public_key: bytes) -> bool:
            calls.append((signature, message, public_key))
            return answer[0]

        network = Network(self, verify=verify)
        first, second = network.chain(2)
        item = self.item()
        self.assertRaises(AllQueriesFailed, result_of, network.net, first.put(item))
        self.assertEqual(
            calls[0],
            (VECTOR_SALTED_SIG, b"4:salt6:foobar3:seqi1e1:v12:Hello World!", VECTOR_PUBLIC_KEY),
        )
        self.assertEqual(second.values.peek(item.key()), None)
        answer[0] = True
        # Even a signature ed25519 would refuse: the function decides.
        forged = bep44.Item(v=b"forged", k=VECTOR_PUBLIC_KEY, sig=b"\x00" * 64, seq=2)
        self.assertEqual(result_of(network.net, first.put(forged)).hits, 1)
        self.assertEqual(result_of(network.net, first.get(forged.key())).item.v, b"forged")

    def test_a_raising_verify_refuses_and_is_logged(self) -> None:
        def verify(signature: bytes, message: bytes, public_key: bytes) -> bool:
            raise RuntimeError("hardware verifier unplugged")

        network = Network(self, verify=verify)
        node = network.node()
        self.assertRaises(AllQueriesFailed, result_of, network.net, node.put(self.item()))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(node._verify_failures, 1)

    def test_not_with_verification_off(self) -> None:
        self.assertRaises(ValueError, DHTConfig, verify=bool, verify_mutable=False)
        self.assertRaises(ValueError, DHTConfig, verify="yes")

    def test_grape_config_passes_it_and_the_dht_limits_through(self) -> None:
        def verify(signature: bytes, message: bytes, public_key: bytes) -> bool:
            return True

        config = GrapeConfig(
            verify=verify, query_rate=5.0, query_burst=7, max_sources=11, max_contacts_per_ip=2
        ).dht_config()
        self.assertIs(config.verify, verify)
        self.assertEqual(
            (config.query_rate, config.query_burst, config.max_sources, config.max_contacts_per_ip),
            (5.0, 7, 11, 2),
        )
        self.assertRaises(ValueError, GrapeConfig(verify=verify, verify_mutable=False).dht_config)
