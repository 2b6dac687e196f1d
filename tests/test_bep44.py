"""Tests for grenache.dht.bep44: BEP 44 test vectors, keys, signature buffer and ed25519."""

from __future__ import annotations

import hashlib
from typing import Any

from bencode2 import bdecode
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from grenache.dht.bep44 import (
    MAX_VALUE_SIZE,
    Item,
    generate_private_key,
    immutable_key,
    mutable_key,
    public_key_of,
    sign,
    signature_buffer,
    too_large,
    verify,
)

# BEP 44 test vectors (also bittorrent-dht test/dht_test_vectors.js). The signatures were made
# with an ed25519-supercop expanded secret key, so they can be verified here but not re-made.
VECTOR_PK = bytes.fromhex("77ff84905a91936367c01360803104f92432fcd904a43511876df5cdf3e7e548")
VECTOR_V = b"Hello World!"
VECTOR1_SIG = bytes.fromhex(
    "305ac8aeb6c9c151fa120f120ea2cfb923564e11552d06a5d856091e5e853cff"
    "1260d3f39e4999684aa92eb73ffd136e6f4f3ecbfda0ce53a1608ecd7ae21f01"
)
VECTOR1_TARGET = bytes.fromhex("4a533d47ec9c7d95b1ad75f576cffc641853b750")
VECTOR2_SALT = b"foobar"
VECTOR2_SIG = bytes.fromhex(
    "6834284b6b24c3204eb2fea824d82f88883a3d95e8b4a21b8c0ded553d17d17d"
    "df9a8a7104b1258f30bed3787e6cb896fca78c58f8e03b5f18f14951a87d9a08"
)
VECTOR2_TARGET = bytes.fromhex("411eba73b6f087ca51a3795d9c8c938d365e32c1")

# RFC 8032 section 7.1, TEST 1: seed, public key, signature of the empty message.
RFC_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC_PK = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
RFC_SIG = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
    "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)


def _fill(n: int, pattern: bytes) -> bytes:
    """bittorrent-dht test/common.js ``fill(n, s)``: ``pattern`` repeated, cut to ``n`` bytes."""
    return bytes(pattern[i % len(pattern)] for i in range(n))


class VectorTests(SynchronousTestCase):
    def test_vector1_no_salt(self) -> None:
        buf = signature_buffer(VECTOR_V, 1)
        self.assertEqual(buf, b"3:seqi1e1:v12:Hello World!")
        self.assertTrue(verify(VECTOR1_SIG, buf, VECTOR_PK))
        self.assertEqual(mutable_key(VECTOR_PK), VECTOR1_TARGET)
        self.assertEqual(mutable_key(VECTOR_PK, None), VECTOR1_TARGET)
        item = Item(v=VECTOR_V, k=VECTOR_PK, sig=VECTOR1_SIG, seq=1)
        self.assertTrue(item.mutable)
        self.assertEqual(item.key(), VECTOR1_TARGET)
        self.assertTrue(item.signature_valid())

    def test_vector2_salt(self) -> None:
        buf = signature_buffer(VECTOR_V, 1, VECTOR2_SALT)
        self.assertEqual(buf, b"4:salt6:foobar3:seqi1e1:v12:Hello World!")
        self.assertTrue(verify(VECTOR2_SIG, buf, VECTOR_PK))
        self.assertEqual(mutable_key(VECTOR_PK, VECTOR2_SALT), VECTOR2_TARGET)
        item = Item(v=VECTOR_V, k=VECTOR_PK, sig=VECTOR2_SIG, seq=1, salt=VECTOR2_SALT)
        self.assertEqual(item.key(), VECTOR2_TARGET)
        self.assertTrue(item.signature_valid())

    def test_vectors_do_not_cross(self) -> None:
        """Each signature covers its own buffer only: salt and seq are signed."""
        self.assertFalse(verify(VECTOR1_SIG, signature_buffer(VECTOR_V, 1, b"foobar"), VECTOR_PK))
        self.assertFalse(verify(VECTOR2_SIG, signature_buffer(VECTOR_V, 1), VECTOR_PK))
        self.assertFalse(verify(VECTOR1_SIG, signature_buffer(VECTOR_V, 2), VECTOR_PK))
        self.assertFalse(Item(v=VECTOR_V, k=VECTOR_PK, sig=VECTOR1_SIG, seq=2).signature_valid())
        self.assertFalse(Item(v=VECTOR_V, k=VECTOR_PK, sig=VECTOR2_SIG, seq=1).signature_valid())


class ImmutableTests(SynchronousTestCase):
    def test_hello_world(self) -> None:
        expected = bytes.fromhex("6d33adc2b6b2c14c3036feefb7fedbca1a880527")
        self.assertEqual(immutable_key(b"hello world"), expected)
        self.assertEqual(immutable_key("hello world"), expected)  # str: UTF-8 bytes
        item = Item(v=b"hello world")
        self.assertFalse(item.mutable)
        self.assertEqual(item.key(), expected)
        self.assertTrue(item.signature_valid())

    def test_bittorrent_dht_500_bytes_abc(self) -> None:
        """dht_store_immutable.js: ``common.fill(500, 'abc')``."""
        value = _fill(500, b"abc")
        self.assertEqual(value[:7], b"abcabca")
        self.assertEqual(len(value), 500)
        self.assertEqual(
            immutable_key(value), bytes.fromhex("3a34a097641348623d123acfba3aa589028f241e")
        )

    def test_other_bencodable_values(self) -> None:
        """Non-string values hash their bencoding (Node accepts lists and ints)."""
        self.assertEqual(immutable_key(42), hashlib.sha1(b"i42e").digest())
        self.assertEqual(immutable_key([b"a", 1]), hashlib.sha1(b"l1:ai1ee").digest())
        self.assertEqual(
            immutable_key({b"b": 1, b"a": b""}), hashlib.sha1(b"d1:a0:1:bi1ee").digest()
        )

    def test_too_large(self) -> None:
        """205: a string past 1000 bytes (Node's rule), any other value whose bencoding is."""
        self.assertEqual(MAX_VALUE_SIZE, 1000)
        self.assertFalse(too_large(b"x" * 1000))
        self.assertTrue(too_large(b"x" * 1001))
        self.assertTrue(too_large("\u00e9" * 501))  # 1002 UTF-8 bytes
        self.assertFalse(too_large([0] * 332))  # l + 332 * i0e + e: 998 bytes
        self.assertTrue(too_large([0] * 333))  # 1001 bytes
        self.assertFalse(too_large([b"x" * 994]))  # l994:...e: 1000 bytes
        self.assertTrue(too_large([b"x" * 995]))
        self.assertTrue(too_large([0] * 1000))  # Node counts 1000 elements and accepts it
        self.assertTrue(too_large([b"x" * 200] * 5))  # Node: 5 elements
        self.assertFalse(too_large(10**997))  # i<998 digits>e: 1000 bytes
        self.assertTrue(too_large(10**998))
        self.assertTrue(too_large(10**5000))  # past Python's int-to-text limit
        self.assertTrue(too_large({b"x" * 2000: 1}))  # Node never refuses a dict
        self.assertFalse(too_large({b"k": b"x" * 980}))


class SignatureBufferTests(SynchronousTestCase):
    def test_empty_salt_is_omitted(self) -> None:
        self.assertEqual(signature_buffer(b"v", 0, b""), b"3:seqi0e1:v1:v")
        self.assertEqual(signature_buffer(b"v", 0, None), b"3:seqi0e1:v1:v")

    def test_non_string_values(self) -> None:
        self.assertEqual(signature_buffer(7, 3), b"3:seqi3e1:vi7e")
        self.assertEqual(signature_buffer([b"a"], -1, b"s"), b"4:salt1:s3:seqi-1e1:vl1:ae")

    def test_missing_seq_is_zero(self) -> None:
        pk = public_key_of(RFC_SEED)
        sig = sign(RFC_SEED, signature_buffer(b"x", 0))
        self.assertTrue(Item(v=b"x", k=pk, sig=sig).signature_valid())


class Ed25519Tests(SynchronousTestCase):
    def test_rfc8032_vector(self) -> None:
        self.assertEqual(public_key_of(RFC_SEED), RFC_PK)
        self.assertEqual(sign(RFC_SEED, b""), RFC_SIG)
        self.assertTrue(verify(RFC_SIG, b"", RFC_PK))

    def test_round_trip(self) -> None:
        seed = generate_private_key()
        self.assertEqual(len(seed), 32)
        self.assertNotEqual(seed, generate_private_key())
        pk = public_key_of(seed)
        self.assertEqual(len(pk), 32)
        buf = signature_buffer(b"Hello World!", 5, b"salt")
        sig = sign(seed, buf)
        self.assertEqual(len(sig), 64)
        self.assertTrue(verify(sig, buf, pk))
        item = Item(v=b"Hello World!", k=pk, sig=sig, seq=5, salt=b"salt")
        self.assertTrue(item.signature_valid())
        self.assertEqual(item.key(), mutable_key(pk, b"salt"))

    def test_tampering(self) -> None:
        buf = signature_buffer(VECTOR_V, 1)
        bad_sig = bytes([VECTOR1_SIG[0] ^ 1]) + VECTOR1_SIG[1:]
        bad_pk = bytes([VECTOR_PK[0] ^ 1]) + VECTOR_PK[1:]
        self.assertFalse(verify(bad_sig, buf, VECTOR_PK))
        self.assertFalse(verify(VECTOR1_SIG, buf + b"x", VECTOR_PK))
        self.assertFalse(verify(VECTOR1_SIG, buf, bad_pk))
        tampered = Item(v=b"Hello World?", k=VECTOR_PK, sig=VECTOR1_SIG, seq=1)
        self.assertFalse(tampered.signature_valid())

    def test_wrong_lengths_and_types_are_false(self) -> None:
        buf = signature_buffer(VECTOR_V, 1)
        self.assertFalse(verify(VECTOR1_SIG[:63], buf, VECTOR_PK))
        self.assertFalse(verify(VECTOR1_SIG + b"\x00", buf, VECTOR_PK))
        self.assertFalse(verify(VECTOR1_SIG, buf, VECTOR_PK[:31]))
        self.assertFalse(verify(VECTOR1_SIG, buf, VECTOR_PK + b"\x00"))
        self.assertFalse(verify(b"", buf, b""))
        not_bytes: Any = "not bytes"
        self.assertFalse(verify(not_bytes, buf, VECTOR_PK))
        self.assertFalse(verify(VECTOR1_SIG, not_bytes, VECTOR_PK))
        self.assertFalse(verify(VECTOR1_SIG, buf, not_bytes))

    def test_mutable_item_without_sig_is_invalid(self) -> None:
        self.assertFalse(Item(v=VECTOR_V, k=VECTOR_PK, seq=1).signature_valid())
        self.assertFalse(Item(v=VECTOR_V, k=b"short", sig=VECTOR1_SIG, seq=1).signature_valid())


_scalars = st.binary(max_size=40) | st.integers(min_value=-(2**70), max_value=2**70)
_values = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.binary(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


class SignatureBufferPropertyTests(SynchronousTestCase):
    @given(
        v=_values,
        seq=st.integers(min_value=-(2**63), max_value=2**63),
        salt=st.none() | st.binary(max_size=64),
    )
    def test_decodes_back(self, v: object, seq: int, salt: bytes | None) -> None:
        """Wrapping the buffer in d...e gives a dict with exactly salt (if non-empty), seq, v."""
        decoded = bdecode(b"d" + signature_buffer(v, seq, salt) + b"e")
        expected: dict[bytes, object] = {b"seq": seq, b"v": v}
        if salt:
            expected[b"salt"] = salt
        self.assertEqual(decoded, expected)
        self.assertEqual(list(decoded), sorted(expected))
