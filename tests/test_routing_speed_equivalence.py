"""grenache.dht.routing's and grenache.dht.lookup's fast paths give exactly what the plain
algorithms they replace give.

:func:`~grenache.dht.routing.distance` no longer runs k-bucket's byte-by-byte float loop, and
:class:`~grenache.dht.routing.KBucket` finds stored ids through a dict and remembers distances
to its own id. Node compatibility rests on the float distance (ties included), so each fast
path is checked here against a straight transcription of the algorithm it replaces.
"""

from __future__ import annotations

import math
import random
import struct
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from grenache.dht.lookup import decode_nodes, decode_peer, encode_nodes, encode_peer
from grenache.dht.routing import Contact, KBucket, RoutingTable, distance


def loop_distance(a: bytes, b: bytes) -> float:
    """k-bucket 5.1.0's ``distance``, transcribed: the float loop itself."""
    d = 0.0
    short, long_ = (a, b) if len(a) <= len(b) else (b, a)
    for x, y in zip(short, long_, strict=False):
        d = d * 256 + (x ^ y)
    for _ in range(len(long_) - len(short)):
        d = d * 256 + 255
    return d


def bits(x: float) -> bytes:
    """The IEEE-754 bytes of ``x`` (``==`` would not tell ``0.0`` from ``-0.0``)."""
    return struct.pack(">d", x)


def reference_closest(bucket: KBucket, target: bytes, n: float) -> list[Contact]:
    """k-bucket's ``closest``: near-first depth-first gathering, stable sort, first ``n``."""
    gathered: list[Contact] = []
    stack = [bucket._root]
    bit_index = 0
    while stack and len(gathered) < n:
        node = stack.pop()
        if node.contacts is None:
            near = node.child(target, bit_index)
            bit_index += 1
            stack.append(node.other(near))
            stack.append(near)
        else:
            gathered.extend(node.contacts)
    gathered.sort(key=lambda c: loop_distance(c.id, target))
    return gathered if n == math.inf else gathered[: int(n)]


# Ids that share long prefixes (ties and values near 2**53 after rounding), with runs of 0x00
# and 0xff bytes (carries when rounding), of every length that matters: shorter and longer
# than 7 bytes (where the loop first rounds), 20 (node ids) and past 128 (inf).
BYTE = st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF]) | st.integers(0, 255)
IDS = st.lists(BYTE, max_size=24).map(bytes) | st.binary(min_size=120, max_size=140)


def near(base: bytes) -> st.SearchStrategy[bytes]:
    """``base`` with a few bits flipped, cut or extended: ids close to it."""
    return st.tuples(
        st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 7)), max_size=3),
        st.integers(-3, 3),
        st.sampled_from([b"\x00", b"\xff", b"\x80"]),
    ).map(lambda t: _perturb(base, *t))


def _perturb(base: bytes, flips: list[tuple[int, int]], grow: int, fill: bytes) -> bytes:
    out = bytearray(base)
    for index, bit in flips:
        if out:
            out[index % len(out)] ^= 1 << bit
    if grow < 0:
        del out[len(out) + grow :]
    else:
        out += fill * grow
    return bytes(out)


PAIRS = IDS.flatmap(lambda a: st.tuples(st.just(a), near(a) | IDS))


class DistanceTests(SynchronousTestCase):
    """:func:`distance` returns the loop's float, bit for bit."""

    @settings(max_examples=1500, deadline=None)
    @given(PAIRS)
    @example((b"", b""))
    @example((b"\x00" * 7, b"\x20" + b"\x00" * 6 + b"\x80"))  # exactly 2**53 at byte 7
    @example((b"\x00" * 8, b"\x1f" + b"\xff" * 7))  # 2**61 - 1: rounds up, carries
    @example((b"\x01" + bytes(127), bytes(128)))  # 2**1016: finite
    @example((b"\x01" + bytes(128), bytes(129)))  # overflows to inf
    @example((b"\xff" * 127, b"\xff" * 127 + b"\x00"))  # 255 * 256**0 extra byte only
    def test_same_float_as_the_loop(self, pair: tuple[bytes, bytes]) -> None:
        a, b = pair
        expected = loop_distance(a, b)
        self.assertEqual(bits(distance(a, b)), bits(expected), (a.hex(), b.hex()))
        self.assertEqual(bits(distance(b, a)), bits(expected))

    def test_random_node_ids(self) -> None:
        """20-byte ids, as in every real table: 20,000 random pairs, and pairs sharing
        random-length prefixes."""
        rng = random.Random(7)
        for _ in range(20_000):
            a = rng.getrandbits(160).to_bytes(20, "big")
            cut = rng.randrange(21)
            b = a[:cut] + rng.getrandbits(160).to_bytes(20, "big")[cut:]
            self.assertEqual(bits(distance(a, b)), bits(loop_distance(a, b)), (a.hex(), b.hex()))

    def test_every_rounding_boundary(self) -> None:
        """Differences whose top bit sits at each position, with the bits below it all ones,
        all zeros or half-way patterns (ties to even), for ids of 7 to 20 bytes."""
        for length in range(7, 21):
            for top in range(8 * length):
                for low in (0, (1 << top) - 1, 1 << max(0, top - 54), 3 << max(0, top - 55)):
                    v = (1 << top) | (low & ((1 << top) - 1))
                    a = bytes(length)
                    b = v.to_bytes(length, "big")
                    self.assertEqual(bits(distance(a, b)), bits(loop_distance(a, b)), b.hex())


def _apply(bucket: KBucket, ops: list[tuple[str, int, int]], ids: list[bytes]) -> list[Any]:
    """Run add/remove/get operations; what each returned (contacts named by their id)."""
    out: list[Any] = []
    for op, which, port in ops:
        id = ids[which % len(ids)]
        if op == "add":
            full = bucket.add(Contact(id=id, host="127.0.0.1", port=port))
            out.append(None if full is None else ([c.id for c in full[0]], full[1].id))
        elif op == "remove":
            gone = bucket.remove(id)
            out.append(None if gone is None else gone.id)
        else:
            got = bucket.get(id)
            out.append(None if got is None else (got.id, got.port))
    return out


OPS = st.lists(
    st.tuples(
        st.sampled_from(["add", "add", "add", "remove", "get"]),
        st.integers(0, 10**6),
        st.integers(1, 65535),
    ),
    max_size=200,
)


class KBucketTests(SynchronousTestCase):
    """The id index and the distance memo never disagree with the tree."""

    def assertConsistent(self, bucket: KBucket) -> None:
        listed = bucket.to_list()
        self.assertEqual(len(listed), len(bucket))
        self.assertEqual({c.id: c for c in listed}, bucket._by_id)
        for c in listed:
            self.assertIs(bucket.get(c.id), c)
            leaf, _ = bucket._leaf_for(c.id)
            self.assertIn(c, leaf.contacts or [])
        for id, d in bucket._own_distance.items():
            self.assertIn(id, bucket._by_id)
            self.assertEqual(bits(d), bits(loop_distance(id, bucket.local_id)))

    @settings(max_examples=300, deadline=None)
    @given(
        st.lists(IDS, min_size=1, max_size=12) | st.lists(st.binary(min_size=20, max_size=20)),
        OPS,
        st.integers(1, 4),
    )
    def test_operations_and_closest(
        self, ids: list[bytes], ops: list[tuple[str, int, int]], k: int
    ) -> None:
        if not ids:
            ids = [b"\x00" * 20]
        local = ids[0]
        bucket = KBucket(local, k=k, nodes_to_ping=2)
        results = _apply(bucket, ops, ids)
        self.assertEqual(len(results), len(ops))
        for target in (local, *ids[:4]):
            for n in (1, 3, 20, math.inf):
                self.assertEqual(
                    [c.id for c in bucket.closest(target, n)],
                    [c.id for c in reference_closest(bucket, target, n)],
                )
        self.assertConsistent(bucket)

    def test_refresh_keeps_one_entry_and_moves_it_last(self) -> None:
        bucket = KBucket(bytes(20))
        first = Contact(id=b"\x01" * 20, host="127.0.0.1", port=1)
        second = Contact(id=b"\x02" * 20, host="127.0.0.1", port=2)
        bucket.add(first)
        bucket.add(second)
        again = Contact(id=first.id, host="127.0.0.1", port=3)
        self.assertIsNone(bucket.add(again))
        self.assertEqual(bucket.to_list(), [second, again])
        self.assertIs(bucket.get(first.id), again)
        self.assertEqual(len(bucket), 2)

    def test_memo_is_dropped_with_the_contact(self) -> None:
        """A removed id's remembered distance goes with it (bounded memory)."""
        local = bytes(20)
        bucket = KBucket(local)
        ids = [bytes([i]) * 20 for i in range(1, 6)]
        for id in ids:
            bucket.add(Contact(id=id, host="127.0.0.1", port=1))
        bucket.closest(local, 3)
        self.assertEqual(set(bucket._own_distance), set(ids))
        bucket.remove(ids[0])
        self.assertNotIn(ids[0], bucket._own_distance)
        self.assertConsistent(bucket)

    def test_routing_table_walkthrough_matches_reference(self) -> None:
        """A routing table fed 3,000 random contacts (splits, full buckets, address
        replacements) answers closest exactly as the reference for 200 targets."""
        rng = random.Random(3)
        table = RoutingTable(rng.getrandbits(160).to_bytes(20, "big"))
        ids = [rng.getrandbits(160).to_bytes(20, "big") for _ in range(3000)]
        for i, id in enumerate(ids):
            table.add(Contact(id=id, host="127.0.0.1", port=1 + i % 2000))
        self.assertConsistent(table)
        for _ in range(200):
            target = rng.choice(ids) if rng.random() < 0.5 else rng.randbytes(20)
            self.assertEqual(
                [c.id for c in table.closest(target, 20)],
                [c.id for c in reference_closest(table, target, 20)],
            )


def loop_decode_nodes(data: object) -> list[tuple[bytes, tuple[str, int]]]:
    """``decode_nodes`` as a loop over 26-byte entries (what Node's k-rpc does)."""
    if not isinstance(data, bytes):
        return []
    nodes = []
    for offset in range(0, len(data) - 26 + 1, 26):
        entry = data[offset : offset + 26]
        addr = decode_peer(entry[20:])
        if addr is not None:
            nodes.append((entry[:20], addr))
    return nodes


def loop_encode_nodes(contacts: list[Contact], limit: int | None) -> bytes:
    """``encode_nodes`` through :func:`encode_peer` for each contact."""
    parts = []
    for c in contacts:
        if len(c.id) != 20:
            continue
        try:
            parts.append(c.id + encode_peer(c.host, c.port))
        except (OSError, struct.error):
            continue
        if limit is not None and len(parts) >= limit:
            break
    return b"".join(parts)


ENTRY = st.tuples(
    st.binary(min_size=24, max_size=24),
    st.sampled_from([b"\0\0", b"\0\1"]) | st.binary(min_size=2, max_size=2),
)


class CompactNodeTests(SynchronousTestCase):
    """The compact node codecs of a walk's every reply."""

    @settings(max_examples=500, deadline=None)
    @given(
        st.lists(ENTRY, max_size=12).map(lambda es: b"".join(a + b for a, b in es)),
        st.binary(max_size=30),
    )
    def test_decode_nodes_matches_the_loop(self, entries: bytes, tail: bytes) -> None:
        for data in (entries, entries + tail, tail, entries[: len(entries) // 2]):
            self.assertEqual(decode_nodes(data), loop_decode_nodes(data))
        self.assertEqual(decode_nodes(bytearray(entries)), [])
        self.assertEqual(decode_nodes(None), [])

    @settings(max_examples=300, deadline=None)
    @given(
        st.lists(
            st.builds(
                Contact,
                id=st.binary(min_size=19, max_size=21),
                host=st.sampled_from(["127.0.0.1", "10.1.2.3", "1.2.3", "::1", "300.1.1.1", "x"]),
                port=st.sampled_from([0, 1, 8080, 65535, 65536, -1]),
            ),
            max_size=30,
        ),
        st.sampled_from([None, 1, 8, 20]),
    )
    def test_encode_nodes_matches_encode_peer(
        self, contacts: list[Contact], limit: int | None
    ) -> None:
        self.assertEqual(encode_nodes(contacts, limit), loop_encode_nodes(contacts, limit))
