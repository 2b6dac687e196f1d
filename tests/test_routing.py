"""Tests for grenache.dht.routing: k-bucket 5.1.0 distance, tree and closest().

The ``NODE_*`` literals were produced by running k-bucket@5.1.0 under Node 20 on the same
deterministic ids (see :func:`_h`); the tests never call Node themselves.
"""

from __future__ import annotations

import hashlib
import math

from twisted.trial.unittest import SynchronousTestCase

from grenache.dht.routing import Contact, K, KBucket, RoutingTable, distance


def _h(seed: str, n: int) -> bytes:
    """Deterministic ``n``-byte id: sha1(seed:0) || sha1(seed:1) || ... truncated."""
    out = b""
    i = 0
    while len(out) < n:
        out += hashlib.sha1(f"{seed}:{i}".encode()).digest()
        i += 1
    return out[:n]


def _c(id: bytes, port: int = 1) -> Contact:
    return Contact(id=id, host="127.0.0.1", port=port)


# (a hex, b hex, KBucket.distance(a, b) as Node prints it); lengths 1, 3, 8, 20, 38, 130.
NODE_DISTANCES = [
    ("fb", "38", 195.0),
    ("7e", "aae904a612e2b927791897d52a6004c1b6d19d4e", 1.2160150341854778e48),
    ("302290", "22", 1245183.0),
    ("7ee3ec", "b1b748ab5f33eff162c29b093a20d528f146541a", 1.1836487256843901e48),
    ("82a19328c208ed42", "bf", 4.467570830351532e18),
    (
        "b2be6163d817a118",
        "9ac3c55db478f3fd3441480d687bfbff524f8d42",
        2.311615316393041e47,
    ),
    ("9e91536a321d8c62b96d3104fea6d729a595a0b6", "81", 1.8268770466636286e47),
    (
        "469ac34d1aaa37e2c5ff429b2f485b648122f7c7",
        "c59ca47346715621b30a9a0ea858e159ce2e13a3",
        7.480205892354999e47,
    ),
    (
        "5292d72584c42bd57ef48bbcfc8b9a16b58a9bac8309d4c81c0c141b3819c4e58e52f374c82c",
        "8d",
        2.8518503668682805e91,
    ),
    (
        "193edafbbf5bc310a6b08ab6ad70a9c0cf743f032dd84cd4ea8a1727609bcdabb83484ec6df9",
        "3217f52611de4d3af95fb08895b2610c17a5258a",
        5.495017426772604e90,
    ),
    (
        (
            "5cf0df548d16eac9aa3843e47600524c1344ca4135ae562c71053184887454eb60736768bb4c47bb4b"
            "6795401f4b1e3ad5b2857161a168f99501e8b389a44e00d274787a2b921211fc3ff260cf58cf1b68"
            "63596ca6d585a9a102885d0b106710c213109c0dd6f21c9bf1902ece338405160a82e31338a1802c"
            "002885310c6071fe48"
        ),
        "b2",
        math.inf,
    ),
    (
        (
            "288a611fab186b83008d1493c339999dfe71a5bb67a1d86588681e7c6bd4e6d05d6ea719eb48f111"
            "160f5f063e4dd75cda75cb6f93be423d91140a48c785af59434c1a632c7dfb8ef873b2d6f9eb3b24"
            "71049544794559d9c23f615edf6cf6af7b22886a1034b3853f157476750a49b2bb49f41536dd0ba5"
            "a0fd9f19f62953ba5939"
        ),
        "e52b636d3951a1d2fe47c6c41711736b1375203d",
        math.inf,
    ),
]

# Node: local id _h("local", 20), numberOfNodesToPing 16, add _h(f"n{i}", 20) for i in 0..199.
# Contacts are identified below by i (stored as the port).
NODE_COUNT = 85
NODE_PINGS = 115
NODE_FIRST_PING = (
    [
        "4d4a50af", "624b7700", "677e6550", "12ac599e", "478e5195", "1f4bae21", "27e4794d",
        "18a48ee3", "3dc0a6fe", "1240d27b", "719f36e3", "21b0d1cd", "45d40937", "6348337c",
        "5c1bdbfd", "5a6eed43",
    ],
    "47ef285d",
)  # fmt: skip
NODE_ORDER = [
    1, 9, 11, 14, 15, 16, 20, 21, 22, 29, 30, 31, 35, 42, 43, 44, 45, 46, 47, 50, 3, 4, 23, 25,
    27, 51, 68, 91, 121, 143, 172, 190, 19, 32, 34, 40, 59, 82, 103, 104, 136, 152, 156, 181,
    198, 0, 6, 7, 8, 17, 18, 33, 36, 37, 48, 54, 57, 60, 62, 67, 69, 80, 85, 110, 123, 2, 5, 10,
    12, 13, 24, 26, 28, 38, 39, 41, 49, 55, 56, 65, 66, 72, 77, 78, 81,
]  # fmt: skip
# closest(target) with n = Infinity, keyed by target.
NODE_CLOSEST_ALL = {
    b"B": [
        15, 35, 1, 44, 45, 43, 9, 42, 11, 46, 30, 47, 14, 29, 50, 21, 16, 31, 20, 22, 41, 39, 13,
        81, 66, 49, 24, 38, 72, 2, 77, 12, 26, 56, 55, 10, 28, 65, 5, 78, 51, 4, 23, 143, 190,
        172, 3, 91, 68, 27, 25, 121, 40, 181, 156, 103, 34, 59, 19, 32, 136, 104, 198, 152, 82,
        69, 7, 62, 0, 17, 36, 8, 6, 123, 48, 60, 33, 80, 37, 85, 67, 57, 18, 54, 110,
    ],
    b"svc": [
        46, 30, 47, 42, 9, 11, 44, 45, 43, 15, 35, 1, 22, 31, 20, 29, 14, 50, 21, 16, 28, 5, 65,
        78, 2, 77, 12, 26, 55, 56, 10, 66, 49, 24, 38, 72, 39, 41, 13, 81, 48, 60, 80, 33, 85, 37,
        67, 18, 57, 54, 110, 69, 7, 62, 17, 36, 0, 8, 6, 123, 40, 156, 181, 59, 34, 103, 32, 19,
        136, 198, 104, 82, 152, 51, 4, 23, 172, 143, 190, 3, 68, 91, 25, 121, 27,
    ],
    b"rpc_test": [
        46, 30, 47, 9, 42, 11, 44, 45, 43, 15, 35, 1, 22, 31, 20, 29, 14, 50, 21, 16, 28, 65, 5,
        78, 2, 77, 12, 26, 56, 55, 10, 66, 49, 24, 38, 72, 41, 39, 13, 81, 48, 60, 80, 33, 37, 85,
        67, 57, 18, 54, 110, 69, 7, 62, 17, 36, 0, 8, 6, 123, 40, 181, 156, 103, 59, 34, 32, 19,
        136, 198, 104, 152, 82, 51, 4, 23, 143, 190, 172, 3, 91, 68, 27, 25, 121,
    ],
    _h("t20", 20): [
        72, 38, 66, 24, 49, 13, 41, 39, 81, 28, 78, 65, 5, 56, 55, 12, 26, 10, 77, 2, 136, 152,
        82, 104, 198, 181, 156, 40, 19, 32, 103, 59, 34, 3, 27, 121, 25, 91, 68, 4, 51, 143, 190,
        172, 23, 67, 37, 85, 110, 54, 57, 18, 60, 48, 80, 33, 8, 36, 17, 0, 123, 6, 69, 62, 7, 44,
        43, 45, 1, 35, 15, 30, 46, 47, 9, 42, 11, 21, 16, 50, 29, 14, 22, 31, 20,
    ],
    _h("t38", 38): [
        60, 48, 80, 33, 85, 37, 67, 18, 57, 110, 54, 69, 7, 62, 36, 17, 0, 8, 123, 6, 40, 156,
        181, 59, 34, 103, 19, 32, 136, 104, 198, 82, 152, 51, 4, 23, 172, 143, 190, 3, 68, 91,
        121, 25, 27, 28, 5, 65, 78, 77, 2, 12, 26, 55, 56, 10, 66, 49, 24, 38, 72, 39, 41, 13, 81,
        22, 31, 20, 29, 14, 50, 21, 16, 46, 30, 47, 42, 9, 11, 44, 45, 43, 15, 35, 1,
    ],
    # 130-byte target: every distance is inf, so this is pure traversal order (all ties).
    _h("t130", 130): [
        3, 4, 23, 25, 27, 51, 68, 91, 121, 143, 172, 190, 19, 32, 34, 40, 59, 82, 103, 104, 136,
        152, 156, 181, 198, 0, 6, 7, 8, 17, 18, 33, 36, 37, 48, 54, 57, 60, 62, 67, 69, 80, 85,
        110, 123, 2, 5, 10, 12, 13, 24, 26, 28, 38, 39, 41, 49, 55, 56, 65, 66, 72, 77, 78, 81,
        1, 9, 11, 14, 15, 16, 20, 21, 22, 29, 30, 31, 35, 42, 43, 44, 45, 46, 47, 50,
    ],
}  # fmt: skip
# closest(target, 20): stops collecting early, so it is not a prefix of the list above in general.
NODE_CLOSEST_20 = {
    b"B": [15, 35, 1, 44, 45, 43, 9, 42, 11, 46, 30, 47, 14, 29, 50, 21, 16, 31, 20, 22],
    b"svc": [46, 30, 47, 42, 9, 11, 44, 45, 43, 15, 35, 1, 22, 31, 20, 29, 14, 50, 21, 16],
    b"rpc_test": [46, 30, 47, 9, 42, 11, 44, 45, 43, 15, 35, 1, 22, 31, 20, 29, 14, 50, 21, 16],
    _h("t20", 20): [72, 38, 66, 24, 49, 13, 41, 39, 81, 28, 78, 65, 5, 56, 55, 12, 26, 10, 77, 2],
    _h("t38", 38): [60, 48, 80, 33, 85, 37, 67, 18, 57, 110, 54, 69, 7, 62, 36, 17, 0, 8, 123, 6],
    _h("t130", 130): [
        3, 4, 23, 25, 27, 51, 68, 91, 121, 143, 172, 190, 19, 32, 34, 40, 59, 82, 103, 104,
    ],
}  # fmt: skip

# Node: local id b"B" (a 1-byte key, as in a lookup token table), same 200 contacts.
NODE_SHORT_COUNT = 88
NODE_SHORT_PINGS = 112
NODE_SHORT_ORDER = [
    14, 16, 20, 21, 22, 29, 31, 50, 61, 63, 64, 70, 79, 87, 88, 89, 90, 93, 95, 99, 1, 15, 35,
    52, 58, 71, 76, 94, 97, 147, 157, 169, 185, 189, 191, 197, 43, 44, 45, 74, 118, 129, 130,
    138, 140, 144, 146, 194, 9, 11, 30, 42, 46, 47, 53, 73, 75, 83, 96, 101, 108, 109, 112, 124,
    131, 145, 148, 153, 0, 2, 3, 4, 5, 6, 7, 8, 10, 12, 13, 17, 18, 19, 23, 24, 25, 26, 27, 28,
]  # fmt: skip
NODE_SHORT_CLOSEST_20 = [
    185, 197, 169, 191, 15, 52, 58, 71, 94, 35, 97, 157, 76, 189, 147, 1, 129, 140, 74, 138,
]  # fmt: skip
NODE_SHORT_CLOSEST_ALL = [
    185, 197, 169, 191, 15, 52, 58, 71, 94, 35, 97, 157, 76, 189, 147, 1, 129, 140, 74, 138,
    194, 44, 130, 45, 118, 144, 43, 146, 9, 109, 42, 11, 83, 75, 108, 131, 46, 124, 153, 101,
    145, 30, 96, 47, 73, 148, 112, 53, 70, 99, 93, 14, 29, 64, 50, 21, 87, 16, 31, 20, 88, 89,
    95, 79, 63, 90, 61, 22, 13, 24, 2, 12, 26, 10, 28, 5, 4, 23, 3, 27, 25, 19, 7, 0, 17, 8, 6,
    18,
]  # fmt: skip


def _fill(local_id: bytes) -> tuple[KBucket, list[tuple[list[Contact], Contact]]]:
    """The 200-contact table the Node fixtures were made from, and the ping tuples."""
    table = KBucket(local_id, nodes_to_ping=16)
    pings = []
    for i in range(200):
        result = table.add(_c(_h(f"n{i}", 20), port=i))
        if result is not None:
            pings.append(result)
    return table, pings


def _ports(contacts: list[Contact]) -> list[int]:
    return [c.port for c in contacts]


class DistanceTests(SynchronousTestCase):
    def test_by_hand(self) -> None:
        """Common prefix is XORed, extra bytes of the longer id count as 255."""
        self.assertEqual(distance(b"ab", b"ab"), 0.0)
        self.assertEqual(distance(b"\x0f", b"\xf0"), 255.0)
        self.assertEqual(distance(b"\x01\x02", b"\x01\x03"), 1.0)
        self.assertEqual(distance(b"\x01\x02", b"\x01"), 255.0)
        self.assertEqual(distance(b"", b"\x00\x00"), 65535.0)
        self.assertEqual(distance(b"\x02", b"\x00\x00\x00"), 2 * 65536.0 + 255 * 256 + 255)

    def test_symmetric(self) -> None:
        a, b = _h("x", 3), _h("y", 20)
        self.assertEqual(distance(a, b), distance(b, a))

    def test_one_byte_key_vs_node_id(self) -> None:
        """xor * 256**19 plus 255-fill, rounded as doubles: ties for a shared first byte.

        Exactly, 0 * 256**19 + (256**19 - 1) and 1 * 256**19 + (256**19 - 1); both round to a
        power of two once past 53 bits, so the whole 19-byte tail of the node id is irrelevant.
        """
        node_id = bytes([0x42]) + _h("id", 19)
        other = bytes([0x42]) + _h("other", 19)
        self.assertEqual(distance(b"B", node_id), 2.0**152)
        self.assertEqual(distance(b"B", other), 2.0**152)
        self.assertEqual(distance(b"C", node_id), 2.0**153)

    def test_only_53_bits_count(self) -> None:
        """20-byte ids differing only past the first ~53 bits are tied."""
        a = _h("a", 20)
        b1 = _h("b", 19) + b"\x00"
        b2 = _h("b", 19) + b"\xff"
        self.assertEqual(distance(a, b1), distance(a, b2))

    def test_overflow_to_inf(self) -> None:
        """256**128 overflows a double: keys of 128+ bytes are all tied at inf."""
        self.assertEqual(distance(b"\x01" + bytes(128), bytes(129)), math.inf)
        self.assertEqual(distance(bytes(130), bytes(130)), 0.0)

    def test_matches_node(self) -> None:
        for a, b, expected in NODE_DISTANCES:
            self.assertEqual(distance(bytes.fromhex(a), bytes.fromhex(b)), expected, (a, b))
            self.assertEqual(distance(bytes.fromhex(b), bytes.fromhex(a)), expected, (a, b))


class ContactTests(SynchronousTestCase):
    def test_addr_and_defaults(self) -> None:
        c = Contact(id=b"x" * 20, host="10.0.0.1", port=20001)
        self.assertEqual(c.addr, ("10.0.0.1", 20001))
        self.assertEqual(c.seen, 0.0)
        self.assertIsNone(c.token)

    def test_identity_equality(self) -> None:
        self.assertNotEqual(_c(b"a"), _c(b"a"))


class KBucketTests(SynchronousTestCase):
    def test_constant(self) -> None:
        self.assertEqual(K, 20)
        self.assertEqual(KBucket(b"x").k, 20)

    def test_add_get_len(self) -> None:
        table = KBucket(bytes(20))
        a = _c(b"\x01" * 20)
        self.assertIsNone(table.add(a))
        self.assertIs(table.get(a.id), a)
        self.assertIsNone(table.get(b"\x02" * 20))
        self.assertEqual(len(table), 1)

    def test_readd_moves_to_end(self) -> None:
        """k-bucket's default arbiter replaces the stored contact and appends the new one."""
        table = KBucket(bytes(20))
        a, b, c = _c(b"\x01" * 20), _c(b"\x02" * 20), _c(b"\x03" * 20)
        for x in (a, b, c):
            table.add(x)
        a2 = _c(a.id, port=2)
        self.assertIsNone(table.add(a2))
        self.assertEqual(table.to_list(), [b, c, a2])
        self.assertIs(table.get(a.id), a2)
        self.assertEqual(len(table), 3)

    def test_remove(self) -> None:
        table = KBucket(bytes(20))
        a, b = _c(b"\x01" * 20), _c(b"\x02" * 20)
        table.add(a)
        table.add(b)
        self.assertIs(table.remove(a.id), a)
        self.assertIsNone(table.remove(a.id))
        self.assertIsNone(table.get(a.id))
        self.assertEqual(table.to_list(), [b])
        self.assertEqual(len(table), 1)

    def test_split_only_near_side(self) -> None:
        """A full bucket splits; the half without the local id is never split again."""
        table = KBucket(bytes(20), k=2, nodes_to_ping=1)
        far1, far2, far3 = (_c(bytes([0x80 | i]) + bytes(19)) for i in range(3))
        near1, near2, near3 = (_c(bytes([0x40 >> i]) + bytes(19)) for i in range(3))
        self.assertIsNone(table.add(far1))
        self.assertIsNone(table.add(far2))
        # Third far contact: root splits on bit 0, far half (1xxx) is full and don't-split.
        self.assertEqual(table.add(far3), ([far1], far3))
        self.assertIsNone(table.get(far3.id))
        # The near half (0xxx) still has room, and splits again when it fills.
        self.assertIsNone(table.add(near1))  # 0100...
        self.assertIsNone(table.add(near2))  # 0010...
        self.assertIsNone(table.add(near3))  # 0001...: splits 0xxx on bit 1
        self.assertEqual(len(table), 5)
        self.assertEqual(table.to_list(), [near2, near3, near1, far1, far2])

    def test_ping_tuple_when_full(self) -> None:
        """Full unsplittable bucket: the first nodes_to_ping contacts and the newcomer."""
        table = KBucket(bytes(20), k=4, nodes_to_ping=3)
        far = [_c(bytes([0x80, i]) + bytes(18)) for i in range(5)]
        for c in far[:4]:
            self.assertIsNone(table.add(c))
        self.assertEqual(table.add(far[4]), (far[:3], far[4]))
        self.assertEqual(len(table), 4)
        # Re-adding a known id in a full bucket still refreshes it (no ping).
        again = _c(far[0].id)
        self.assertIsNone(table.add(again))
        self.assertEqual(table.to_list(), [*far[1:4], again])

    def test_matches_node_tree(self) -> None:
        table, pings = _fill(_h("local", 20))
        self.assertEqual(len(table), NODE_COUNT)
        self.assertEqual(_ports(table.to_list()), NODE_ORDER)
        self.assertEqual(len(pings), NODE_PINGS)
        old, new = pings[0]
        self.assertEqual(([c.id.hex()[:8] for c in old], new.id.hex()[:8]), NODE_FIRST_PING)

    def test_matches_node_closest(self) -> None:
        table, _ = _fill(_h("local", 20))
        for target, expected in NODE_CLOSEST_ALL.items():
            self.assertEqual(_ports(table.closest(target)), expected, target)
        for target, expected in NODE_CLOSEST_20.items():
            self.assertEqual(_ports(table.closest(target, 20)), expected, target)

    def test_matches_node_short_local_id(self) -> None:
        """A 1-byte local id: bits past its end read as 0 when splitting."""
        table, pings = _fill(b"B")
        self.assertEqual(len(table), NODE_SHORT_COUNT)
        self.assertEqual(len(pings), NODE_SHORT_PINGS)
        self.assertEqual(_ports(table.to_list()), NODE_SHORT_ORDER)
        self.assertEqual(_ports(table.closest(b"B", 20)), NODE_SHORT_CLOSEST_20)
        self.assertEqual(_ports(table.closest(b"B")), NODE_SHORT_CLOSEST_ALL)

    def test_closest_stable_ties_one_byte_target(self) -> None:
        """Contacts sharing the target's first byte tie; they keep bucket order."""
        table = KBucket(bytes(20))
        tied = [_c(b"\x42" + _h(str(i), 19), port=i) for i in range(5)]
        closer = _c(b"\x40" + bytes(19), port=99)
        for c in [tied[0], tied[1], closer, tied[2], tied[3], tied[4]]:
            table.add(c)
        result = table.closest(b"\x42")
        self.assertEqual(result, [tied[0], tied[1], tied[2], tied[3], tied[4], closer])
        # Re-adding moves a contact to the end of its bucket, hence to the end of the tie.
        table.add(tied[0])
        self.assertEqual(table.closest(b"\x42")[:5], [*tied[1:], tied[0]])
        self.assertEqual(table.closest(b"\x42", 2), tied[1:3])

    def test_closest_n(self) -> None:
        table = KBucket(bytes(20))
        self.assertEqual(table.closest(b"x"), [])
        for i in range(5):
            table.add(_c(bytes([i]) * 20))
        self.assertEqual(len(table.closest(bytes(20), 3)), 3)
        self.assertEqual(table.closest(bytes(20), 1)[0].id, bytes(20))
        self.assertRaises(ValueError, table.closest, b"x", 0)
        self.assertRaises(ValueError, table.closest, b"x", -1)

    def test_degenerate_ids_do_not_recurse_forever(self) -> None:
        """Ids that read identically at every bit cannot be separated by splitting."""
        table = KBucket(b"", k=2, nodes_to_ping=2)
        a, b, c = _c(b""), _c(b"\x00"), _c(b"\x00\x00")
        table.add(a)
        table.add(b)
        self.assertEqual(table.add(c), ([a, b], c))


class RoutingTableAddressRuleTests(SynchronousTestCase):
    """One contact per address; at most ``max_per_ip`` per public IP (local ones exempt)."""

    def test_new_id_at_an_address_replaces_the_old_contact(self) -> None:
        table = RoutingTable(b"\x00" * 20)
        table.add(Contact(id=b"\x01" * 20, host="1.2.3.4", port=1))
        table.add(Contact(id=b"\x02" * 20, host="1.2.3.4", port=1))
        self.assertEqual([c.id for c in table], [b"\x02" * 20])
        self.assertEqual(table.at(("1.2.3.4", 1)).id, b"\x02" * 20)  # type: ignore[union-attr]
        table.remove(b"\x02" * 20)
        self.assertIsNone(table.at(("1.2.3.4", 1)))
        self.assertEqual(len(table), 0)

    def test_public_ip_cap_and_local_exemption(self) -> None:
        table = RoutingTable(b"\x00" * 20, max_per_ip=2)
        for port in range(1, 6):
            table.add(Contact(id=bytes([port]) * 20, host="1.2.3.4", port=port))
            table.add(Contact(id=bytes([port + 100]) * 20, host="127.0.0.1", port=port))
        hosts = [c.host for c in table]
        self.assertEqual((hosts.count("1.2.3.4"), hosts.count("127.0.0.1")), (2, 5))
        # A freed place takes the next contact; a known id may move to a new port.
        table.remove(b"\x01" * 20)
        table.add(Contact(id=b"\x09" * 20, host="1.2.3.4", port=9))
        table.add(Contact(id=b"\x02" * 20, host="1.2.3.4", port=22))
        self.assertEqual(
            sorted(c.addr for c in table if c.host == "1.2.3.4"),
            [("1.2.3.4", 9), ("1.2.3.4", 22)],
        )
        self.assertIsNone(table.at(("1.2.3.4", 2)))
