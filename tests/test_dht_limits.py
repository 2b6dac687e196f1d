"""The DHT is no amplifier, cannot be poisoned cheaply, and survives dead neighbours.

Each test counts what it tried: reply bytes against query bytes, routing-table contacts per
address, error codes, log bytes per byte received, and lookup latency (clock time) on a
survivor before and after its neighbour died. The last class does the same with real sockets
and a ``twistd grape`` process that is killed.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

import bencode2
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from grenache.dht import bep44
from grenache.dht.krpc import Address
from grenache.dht.lookup import decode_nodes
from grenache.dht.node import (
    DOWN_RETRY,
    REPLY_NODES_LIMIT,
    REPLY_VALUES_LIMIT,
    DHTConfig,
    DHTNode,
)
from grenache.grape.service import Grape, GrapeConfig
from tests.dhtnet import FakeNetwork

PUBLIC = "1.2.3.4"


def query(q: str, t: bytes = b"\x00\x07", **args: Any) -> bytes:
    return bencode2.bencode({"a": args, "q": q, "t": t, "y": "q"})


class Node:
    """One DHT node on an in-memory network; datagrams are injected from any address and the
    node's replies read back from the network's record."""

    def __init__(self, case: SynchronousTestCase, **config: Any) -> None:
        self.net = FakeNetwork(_clock())
        self.clock = self.net.clock
        self.node = DHTNode(DHTConfig(**config), self.clock, node_id=b"N" * 20)
        self.net.attach(self.node.krpc)
        self.node.start()
        case.addCleanup(self.node.stop)

    @property
    def addr(self) -> Address:
        return ("127.0.0.1", self.node.port)

    def send(self, data: bytes, source: Address) -> list[bytes]:
        """Deliver ``data`` from ``source``; return what the node sent back to it."""
        before = len(self.net.sent)
        self.node.krpc.datagramReceived(data, source)
        return [d for s, to, d in self.net.sent[before:] if to == source]

    def ask(self, q: str, source: Address = ("127.0.0.1", 7000), **args: Any) -> Any:
        replies = self.send(query(q, **args), source)
        assert len(replies) == 1, replies
        return bencode2.bdecode(replies[0])

    def token(self, source: Address) -> bytes:
        return self.ask("get_peers", source, id=b"A" * 20, info_hash=b"x")[b"r"][b"token"]  # type: ignore[no-any-return]


def _clock() -> Any:
    from twisted.internet.task import Clock

    return Clock()


def random_id(rng: random.Random) -> bytes:
    return rng.randbytes(20)


class AmplificationTests(SynchronousTestCase):
    """No unauthenticated query makes a grape send many times its own size."""

    def test_new_id_from_one_address_replaces_the_old_one(self) -> None:
        n = Node(self, query_rate=0)
        rng = random.Random(1)
        ids = [random_id(rng) for _ in range(1000)]
        for node_id in ids:
            n.ask("ping", (PUBLIC, 6881), id=node_id)
        self.assertEqual([c.id for c in n.node.routing], [ids[-1]])
        for node_id in ids:
            n.ask("ping", ("127.0.0.1", 6881), id=node_id)
        self.assertEqual(len(n.node.routing), 2)

    def test_one_public_ip_holds_at_most_four_contacts(self) -> None:
        n = Node(self, query_rate=0)
        rng = random.Random(2)
        for port in range(1, 1001):
            n.ask("ping", (PUBLIC, port), id=random_id(rng))
        self.assertEqual(len(n.node.routing), 4)
        # Each still got its answer; only the routing table refused them.
        self.assertEqual(n.node.krpc.received["answered"], 1000)
        # Loopback and private ranges are exempt: a hundred grapes on one host.
        for port in range(1, 101):
            n.ask("ping", ("127.0.0.1", port), id=random_id(rng))
            n.ask("ping", ("192.168.1.5", port), id=random_id(rng))
        hosts = [c.host for c in n.node.routing]
        self.assertEqual(hosts.count(PUBLIC), 4)
        # As many as the k-buckets take (random ids fill the far buckets first).
        self.assertGreater(hosts.count("127.0.0.1"), 20)
        self.assertGreater(hosts.count("192.168.1.5"), 20)

    def test_replies_are_bounded_however_full_the_table(self) -> None:
        """The issue's measurement: the table filled with made-up ids (here from 3000 loopback
        ports, which the per-IP rule does not limit), 1000 peers under one key; then each
        query's reply is compared with the query's own size."""
        n = Node(self)
        rng = random.Random(3)
        for port in range(1, 3001):
            n.ask("ping", ("127.0.0.1", port), id=random_id(rng))
        self.assertGreater(len(n.node.routing), 60)
        for port in range(1, 1001):
            source = ("127.0.0.1", port)
            ack = n.ask(
                "announce_peer",
                source,
                id=random_id(rng),
                info_hash=b"svc",
                port=port,
                token=n.token(source),
            )
            self.assertIn(b"r", ack)
        asker = ("127.0.0.1", 9999)
        cases = {
            "find_node": dict(id=b"A" * 20, target=b"T" * 20),
            "get": dict(id=b"A" * 20, target=b"T" * 20),
            "get_peers (no peers)": dict(id=b"A" * 20, info_hash=b"x"),
            "get_peers (1000 peers)": dict(id=b"A" * 20, info_hash=b"svc"),
        }
        ratios = {}
        for name, args in cases.items():
            q = query(name.split()[0], t=b"", **args)
            replies = n.send(q, asker)
            self.assertEqual(len(replies), 1)
            reply = bencode2.bdecode(replies[0])[b"r"]
            if b"nodes" in reply:
                self.assertEqual(len(decode_nodes(reply[b"nodes"])), REPLY_NODES_LIMIT)
            else:
                self.assertEqual(len(reply[b"values"]), REPLY_VALUES_LIMIT)
            self.assertLess(len(replies[0]), 1000)
            ratios[name] = len(replies[0]) / len(q)
        # At most 8.5 times the query (a get_peers with a 1-byte key answered with 20 nodes).
        self.assertLess(max(ratios.values()), 8.5, ratios)
        # Values are drawn at random for each reply: repeated lookups see other peers.
        seen: set[bytes] = set()
        for _ in range(10):
            reply = bencode2.bdecode(
                n.send(query("get_peers", **cases["get_peers (1000 peers)"]), asker)[0]
            )
            seen.update(reply[b"r"][b"values"])
        self.assertGreater(len(seen), 3 * REPLY_VALUES_LIMIT)
        # The 44-byte get (no id, 1-byte target) is refused in fewer bytes than it has.
        small = query("get", t=b"", target=b"x")
        refusal = n.send(small, asker)
        self.assertLess(len(refusal[0]), 2 * len(small))
        self.assertEqual(bencode2.bdecode(refusal[0])[b"e"][0], 203)


class InputRuleTests(SynchronousTestCase):
    """BEP 44 and BEP 5 input rules, answered with the BEPs' error codes."""

    def setUp(self) -> None:
        self.n = Node(self)
        self.source = ("127.0.0.1", 7001)
        self.token = self.n.token(self.source)
        self.private = bep44.generate_private_key()
        self.public = bep44.public_key_of(self.private)

    def put(self, **args: Any) -> Any:
        args.setdefault("id", b"A" * 20)
        args.setdefault("token", self.token)
        return self.n.ask("put", self.source, **args)

    def signed(self, v: Any, seq: int, salt: bytes | None = None) -> dict[str, Any]:
        sig = bep44.sign(self.private, bep44.signature_buffer(v, seq, salt))
        args: dict[str, Any] = {"v": v, "k": self.public, "sig": sig, "seq": seq}
        if salt is not None:
            args["salt"] = salt
        return args

    def test_salt_over_64_bytes_is_207(self) -> None:
        self.assertEqual(self.put(**self.signed(b"v", 1, b"s" * 64))[b"r"], {b"id": b"N" * 20})
        self.assertEqual(self.put(**self.signed(b"v", 1, b"s" * 65))[b"e"], [207, b"salt too big"])

    def test_v_over_1000_bencoded_bytes_is_205_whatever_its_type(self) -> None:
        too_large = [205, b"data payload too large"]
        for v in (
            b"x" * 1001,
            [b"x" * 200] * 5,  # Node counts 5 elements and stores it
            {b"k": b"x" * 1000},  # Node never refuses a dict
            10**1000,  # nor an integer
            [0] * 1000,
        ):
            self.assertEqual(self.put(v=v)[b"e"], too_large, repr(v)[:40])
            self.assertEqual(self.put(**self.signed(v, 1))[b"e"], too_large)
        for v in (b"x" * 1000, [b"x" * 994], {b"k": b"x" * 980}, 10**900):
            self.assertEqual(self.put(v=v)[b"r"], {b"id": b"N" * 20})

    def test_bad_seq_and_cas_are_203(self) -> None:
        bad_seq = [203, b"`put` `a.seq` must be a non-negative integer"]
        args = self.signed(b"v", 1)
        for seq in (-1, b"1", [1]):
            self.assertEqual(self.put(**{**args, "seq": seq})[b"e"], bad_seq)
        self.assertEqual(
            self.put(**{**args, "cas": b"0"})[b"e"], [203, b"`put` `a.cas` must be an integer"]
        )
        self.assertEqual(self.put(**args)[b"r"], {b"id": b"N" * 20})

    def test_missing_or_malformed_token_is_203(self) -> None:
        bad = [203, b"cannot `put` with bad token"]
        args = {"id": b"A" * 20, "v": b"v"}
        self.assertEqual(self.n.ask("put", self.source, **args)[b"e"], bad)
        for token in (b"", b"x" * 20, 5, [self.token]):
            self.assertEqual(self.n.ask("put", self.source, token=token, **args)[b"e"], bad)
        # A token is bound to the address it was given to.
        self.assertEqual(
            self.n.ask("put", ("127.0.0.2", 7001), token=self.token, **args)[b"e"], bad
        )

    def test_malformed_mutable_fields_are_203_and_bad_signature_206(self) -> None:
        args = self.signed(b"v", 1)
        self.assertEqual(
            self.put(**{**args, "k": 5})[b"e"],
            [203, b"mutable `put` needs byte strings `a.k` and `a.sig`"],
        )
        self.assertEqual(
            self.put(**{**args, "salt": 5})[b"e"], [203, b"`put` `a.salt` must be a byte string"]
        )
        self.assertEqual(self.put(**{**args, "v": b"w"})[b"e"], [206, b"invalid signature"])


class RateLimitTests(SynchronousTestCase):
    def test_public_source_limited_local_sources_not(self) -> None:
        n = Node(self)
        ping = query("ping", id=b"A" * 20)
        answered = sum(len(n.send(ping, (PUBLIC, 6881))) for _ in range(1000))
        self.assertEqual(answered, 500)  # the default burst
        self.assertEqual(n.node.dropped["query rate limit"], 500)
        n.clock.advance(1)
        answered = sum(len(n.send(ping, (PUBLIC, 6881))) for _ in range(1000))
        self.assertEqual(answered, 100)  # the default rate, per second
        answered = sum(len(n.send(ping, ("127.0.0.1", 6881))) for _ in range(5000))
        self.assertEqual(answered, 5000)

    def test_sources_table_is_bounded(self) -> None:
        n = Node(self, max_sources=100)
        ping = query("ping", id=b"A" * 20)
        for i in range(1000):
            n.send(ping, (f"1.2.{i // 250}.{i % 250}", 6881))
        limiter = n.node.krpc.rate_limiter
        assert limiter is not None
        self.assertEqual(len(limiter), 100)

    def test_limit_can_be_turned_off(self) -> None:
        n = Node(self, query_rate=0)
        ping = query("ping", id=b"A" * 20)
        self.assertEqual(sum(len(n.send(ping, (PUBLIC, 6881))) for _ in range(2000)), 2000)


class LogVolumeTests(SynchronousTestCase):
    def test_hostile_datagrams_are_counted_not_logged_one_by_one(self) -> None:
        """Bytes logged per byte received, for 20,000 hostile datagrams in ten minutes."""
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        n = Node(self)
        rng = random.Random(4)
        received = 0
        for i in range(20000):
            kind = i % 4
            if kind == 0:
                data = rng.randbytes(rng.randint(0, 200))
            elif kind == 1:
                data = query("ping", id=rng.randbytes(rng.randint(0, 30)))
            elif kind == 2:
                data = bencode2.bencode({"r": {"id": rng.randbytes(20)}, "t": b"zz", "y": "r"})
            else:
                data = query("get", id=b"A" * 20, target=rng.randbytes(3))
            received += len(data)
            n.send(data, (f"1.2.3.{i % 200}", 1000 + i % 7))
            if i % 2000 == 0:
                n.clock.advance(30)
        logged = sum(
            len(formatEvent(e)) for e in events if e.get("log_namespace", "").startswith("grenache")
        )
        self.assertLess(logged / received, 0.01, (logged, received))
        counts = n.node.krpc.received
        self.assertEqual(sum(counts.values()), 20000)
        self.assertEqual(counts["dropped"], sum(n.node.dropped.values()))


def timed(
    net: FakeNetwork, d: Deferred[Any], step: float = 0.05, within: float = 30.0
) -> tuple[Any, float]:
    """Run the network until ``d`` fires; its result and the clock time it took."""
    clock = net.clock
    start = clock.seconds()
    box: list[Any] = []
    d.addBoth(box.append)
    net.settle()
    while not box:
        if clock.seconds() - start > within:
            raise AssertionError("Deferred did not fire")
        clock.advance(step)
        net.settle()
    result = box[0]
    if hasattr(result, "raiseException"):
        result.raiseException()
    return result, clock.seconds() - start


class DeadNeighbourTests(SynchronousTestCase):
    """Two grapes bootstrapped to each other; one dies (its datagrams are lost)."""

    def pair(self) -> tuple[FakeNetwork, DHTNode, DHTNode]:
        net = FakeNetwork(_clock())
        a_port, b_port = 21001, 21002
        a = DHTNode(DHTConfig(bootstrap=(("127.0.0.1", b_port),)), net.clock)
        b = DHTNode(DHTConfig(bootstrap=(("127.0.0.1", a_port),)), net.clock)
        net.attach(a.krpc, port=a_port)
        net.attach(b.krpc, port=b_port)
        for node in (a, b):
            node.start()
            self.addCleanup(node.stop)
        net.settle()
        self.assertEqual((len(a.routing), len(b.routing)), (1, 1))
        return net, a, b

    def latencies(self, net: FakeNetwork, node: DHTNode, count: int) -> list[float]:
        return [timed(net, node.lookup(b"svc:%d" % i))[1] for i in range(count)]

    def test_survivor_stays_fast_and_works_alone(self) -> None:
        net, a, b = self.pair()
        self.assertEqual(self.latencies(net, a, 3), [0.0, 0.0, 0.0])
        net.detach(("127.0.0.1", b.port))
        first, *rest = self.latencies(net, a, 10)
        self.assertTrue(2.0 <= first <= 2.55, first)  # one KRPC timeout (2-2.5 s), once
        self.assertEqual(rest, [0.0] * 9)
        # Announces and puts are accepted as by a lone grape.
        self.assertEqual(timed(net, a.announce(b"svc", 1337))[0], 1)
        self.assertEqual(timed(net, a.lookup(b"svc"))[0], ["127.0.0.1:1337"])
        put, took = timed(net, a.put(bep44.Item(v=b"alone")))
        self.assertEqual((put.hits, took), (1, 0.0))
        self.assertEqual(timed(net, a.get(put.key))[0].item.v, b"alone")
        # b is pinged in the background, never waited for; a's lookups stay instant.
        net.run(DOWN_RETRY)
        self.assertEqual(self.latencies(net, a, 3), [0.0, 0.0, 0.0])
        net.run(3)
        self.assertEqual(a.down[("127.0.0.1", b.port)].failures, 2)

    def test_announce_with_a_cached_token_table_falls_back_to_alone(self) -> None:
        net, a, b = self.pair()
        self.assertEqual(timed(net, a.announce(b"svc", 1337))[0], 1)
        net.detach(("127.0.0.1", b.port))
        hits, took = timed(net, a.announce(b"svc", 1338))  # first time: one timeout
        self.assertEqual(hits, 1)
        self.assertLessEqual(took, 2.55)
        hits, took = timed(net, a.announce(b"svc", 1339))
        self.assertEqual((hits, took), (1, 0.0))
        # 1337 was stored by b only, and died with it.
        self.assertEqual(
            sorted(timed(net, a.lookup(b"svc"))[0]), ["127.0.0.1:1338", "127.0.0.1:1339"]
        )

    def test_neighbour_back_on_its_port_is_found_again(self) -> None:
        net, a, b = self.pair()
        net.detach(("127.0.0.1", b.port))
        self.latencies(net, a, 2)
        self.assertIn(("127.0.0.1", b.port), a.down)
        # b restarts (new id, same port) without talking to a: a's background ping finds it.
        b2 = DHTNode(DHTConfig(), net.clock)
        net.attach(b2.krpc, port=b.port)
        b2.start()
        self.addCleanup(b2.stop)
        net.run(DOWN_RETRY + 1)
        self.latencies(net, a, 1)  # this walk's skip sends the ping
        net.settle()
        self.assertNotIn(("127.0.0.1", b.port), a.down)
        self.assertIsNotNone(a.routing.get(b2.node_id))
        timed(net, b2.announce(b"back", 2000))
        self.assertEqual(timed(net, a.lookup(b"back"))[0], ["127.0.0.1:2000"])

    def test_neighbour_that_bootstraps_again_is_found_at_once(self) -> None:
        net, a, b = self.pair()
        net.detach(("127.0.0.1", b.port))
        self.latencies(net, a, 2)
        b2 = DHTNode(DHTConfig(bootstrap=(("127.0.0.1", a.port),)), net.clock)
        net.attach(b2.krpc, port=b.port)
        b2.start()
        self.addCleanup(b2.stop)
        net.settle()
        self.assertEqual(a.down, {})
        self.assertEqual(timed(net, b2.announce(b"back", 2000))[0], 1)
        self.assertEqual(timed(net, a.lookup(b"back")), (["127.0.0.1:2000"], 0.0))


class RealDeadNeighbourTests(TestCase):
    """A Python grape in a ``twistd grape`` process is killed; the survivor, bootstrapped to
    it, is measured on real sockets."""

    timeout = 120

    async def test_survivor_lookup_latency(self) -> None:
        from tests.interop.harness import start_twistd_grape

        victim = await start_twistd_grape(self, name="victim")
        survivor = Grape(
            GrapeConfig(dht_port=0, api_port=0, bootstrap=(("127.0.0.1", victim.dht_port),)),
            reactor,
        )
        await survivor.start()
        self.addCleanup(survivor.stop)
        node = survivor.node
        self.assertEqual(len(node.routing), 1)

        async def lookup_seconds(name: bytes) -> float:
            start = time.monotonic()
            await node.lookup(name)
            return time.monotonic() - start

        before = [await lookup_seconds(b"before:%d" % i) for i in range(5)]
        await victim.stop()
        first = await lookup_seconds(b"first")
        after = [await lookup_seconds(b"after:%d" % i) for i in range(5)]
        hits = await node.announce(b"svc", 1337)
        if os.environ.get("GRENACHE_REPORT"):
            print(f"\nlookup seconds before {before}, first after death {first}, after {after}")
        self.assertEqual(hits, 1)
        self.assertGreaterEqual(first, 1.9)  # the one KRPC timeout
        # Each later lookup ends before a KRPC timeout could have fired: nothing waits on the
        # dead grape.
        self.assertLess(max(after), node.config.timeout, after)
