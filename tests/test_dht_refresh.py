"""The bootstrap's range refresh (grenache/dht/bootstrap.py): a node that knows nobody in a
whole range of the id space walks towards it from the bootstrap nodes, so that its lookups of
keys there no longer end short of the key."""

from __future__ import annotations

import random

import bencode2
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from grenache.dht.bootstrap import MAX_REFRESH_WALKS, empty_ranges, random_id_in_range
from grenache.dht.node import DHTConfig, DHTNode
from grenache.dht.routing import Contact, K
from tests.dhtnet import FakeNetwork, result_of


def shared_bits(a: bytes, b: bytes) -> int:
    """Leading bits ``a`` and ``b`` have in common."""
    return 8 * len(a) - (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).bit_length()


class RangeTests(SynchronousTestCase):
    def test_random_id_shares_exactly_d_bits(self) -> None:
        rng = random.Random(7)
        own = bytes(range(20))
        for d in (0, 1, 7, 8, 100, 159):
            for _ in range(5):
                self.assertEqual(shared_bits(own, random_id_in_range(own, d, rng)), d)

    def test_empty_ranges_with_a_crowded_neighbourhood(self) -> None:
        rng = random.Random(1)
        own = b"\xf0" + bytes(19)
        # K contacts sharing 3 or more bits, two in range 2, none in ranges 0 and 1.
        contacts = [
            Contact(id=random_id_in_range(own, 3 + i % 4, rng), host="10.0.0.1", port=i)
            for i in range(K)
        ] + [Contact(id=random_id_in_range(own, 2, rng), host="10.0.0.2", port=i) for i in (1, 2)]
        self.assertEqual(empty_ranges(own, contacts), [0, 1])

    def test_no_refresh_without_k_closer_contacts(self) -> None:
        rng = random.Random(2)
        own = b"\xf0" + bytes(19)
        contacts = [
            Contact(id=random_id_in_range(own, 3, rng), host="10.0.0.1", port=i)
            for i in range(K - 1)
        ]
        self.assertEqual(empty_ranges(own, contacts), [])
        self.assertEqual(empty_ranges(b"short", contacts), [])


class BlindHalfTests(SynchronousTestCase):
    """A seed in the upper half of the id space; five nodes in the lower half and 24 in the
    upper half join from it; then node X (upper half) joins. The seed's answer to X's bootstrap
    walk holds only upper-half nodes (it knows K closer to X than any lower-half one), and so
    do theirs: X's own walk leaves it knowing nobody in the lower half, where the key is. (In
    a network this small the upper-half nodes still hold the announce, so X's lookups succeed
    either way; bench/scale.py shows the misses at 1,000 grapes.)"""

    KEY = b"\x12" + b"k" * 19

    def setUp(self) -> None:
        self.clock = Clock()
        self.net = FakeNetwork(self.clock)
        self.nodes: list[DHTNode] = []
        self.rng = random.Random(3)
        self.seed = self.node(b"\x80" + self.rng.randbytes(19), bootstrap=False)
        self.lower = [self.node(bytes([16 * i + 1]) + self.rng.randbytes(19)) for i in range(5)]
        for _ in range(24):
            self.node(bytes([0xC0 | self.rng.randrange(64)]) + self.rng.randbytes(19))
        self.addCleanup(self.stop)

    def node(self, node_id: bytes, bootstrap: bool = True, refresh: bool = True) -> DHTNode:
        seeds = (("127.0.0.1", self.seed.port),) if bootstrap else ()
        node = DHTNode(DHTConfig(bootstrap=seeds), self.clock, node_id=node_id)  # type: ignore[arg-type]
        if not refresh:
            node.refresh_ranges = lambda: None  # type: ignore[assignment,method-assign,return-value]
        self.net.attach(node.krpc)
        node.start()
        self.net.settle()
        self.nodes.append(node)
        return node

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
            node.krpc.stopProtocol()

    def lower_half_known(self, node: DHTNode) -> int:
        return sum(1 for c in node.routing if c.id[0] < 0x80)

    def announce_and_look_up(self, looker: DHTNode) -> list[str]:
        self.assertGreaterEqual(result_of(self.net, self.lower[0].announce(self.KEY, 4000)), 1)
        return result_of(self.net, looker.lookup(self.KEY))

    def test_without_refresh_the_node_is_blind(self) -> None:
        x = self.node(b"\xfe" + self.rng.randbytes(19), refresh=False)
        self.assertEqual(self.lower_half_known(x), 0)
        self.assertEqual(empty_ranges(x.node_id, x.routing)[:1], [0])

    def test_refresh_walks_from_the_seed_and_finds_the_key(self) -> None:
        sent_before = len(self.net.sent)
        x = self.node(b"\xfe" + self.rng.randbytes(19))
        self.assertGreater(self.lower_half_known(x), 0)
        self.assertNotIn(0, empty_ranges(x.node_id, x.routing))
        # The refresh walk towards the lower half started with the seed.
        refresh = [
            (dest, message)
            for source, dest, data in self.net.sent[sent_before:]
            if source == ("127.0.0.1", x.port)
            for message in [bencode2.bdecode(data)]
            if message.get(b"q") == b"find_node" and message[b"a"][b"target"][0] < 0x80
        ]
        self.assertTrue(refresh)
        self.assertEqual(refresh[0][0], ("127.0.0.1", self.seed.port))
        self.assertEqual(self.announce_and_look_up(x), [f"127.0.0.1:{4000}"])

    def test_refresh_count_is_bounded_and_reported(self) -> None:
        x = self.node(b"\xfe" + self.rng.randbytes(19))
        walks = result_of(self.net, x.refresh_ranges())
        self.assertLessEqual(walks, MAX_REFRESH_WALKS)
        self.assertEqual(empty_ranges(x.node_id, x.routing)[:walks], [])
