"""
Mixed networks of Node.js grapes (grenache-grape 1.0.0, real processes) and Python grapes
(in-process): announce, lookup, immutable and mutable BEP 44 items across implementations,
the Node link against a Python grape, and service names of unusual shapes.

Python grapes bootstrap to Node grapes and Node grapes to Python ones. Every assertion is
made through the grape HTTP APIs, as clients see them.
"""

from __future__ import annotations

import hashlib
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from twisted.trial import unittest

from tests.interop import harness
from tests.interop.harness import NodeGrape, PyGrape, async_test

Grape = NodeGrape | PyGrape

LOOPBACK = harness.LOCALHOST

# BEP 44 test vector 2 (salted), as accepted by a verify-enabled Node grape.
VECTOR_K = "77ff84905a91936367c01360803104f92432fcd904a43511876df5cdf3e7e548"
VECTOR_SIG = (
    "6834284b6b24c3204eb2fea824d82f88883a3d95e8b4a21b8c0ded553d17d17d"
    "df9a8a7104b1258f30bed3787e6cb896fca78c58f8e03b5f18f14951a87d9a08"
)
VECTOR_SALT = "foobar"
VECTOR_V = "Hello World!"
VECTOR_HASH = "411eba73b6f087ca51a3795d9c8c938d365e32c1"
VECTOR_PUT = {"v": VECTOR_V, "seq": 1, "k": VECTOR_K, "salt": VECTOR_SALT, "sig": VECTOR_SIG}

SEQ_TOO_OLD = "302 sequence number less than current"
CAS_MISMATCH = "301 CAS mismatch, re-read and try again"

NAME_1_BYTE = "B"
NAME_40_BYTES = "rest:service:with:a:name:of:40:bytes:ok!"
NAME_NON_ASCII = "sérvice:ü"


def _bstr(data: bytes) -> bytes:
    return str(len(data)).encode() + b":" + data


def signature_buffer(v: bytes, seq: int, salt: bytes | None = None) -> bytes:
    """BEP 44: bencoded ``{salt?, seq, v}`` without the outer ``d``/``e``."""
    out = b""
    if salt:
        out += b"4:salt" + _bstr(salt)
    return out + b"3:seqi" + str(seq).encode() + b"e1:v" + _bstr(v)


def mutable_hash(k: bytes, salt: bytes | None = None) -> str:
    """The BEP 44 target of a mutable item: SHA1(k || salt)."""
    return hashlib.sha1(k + (salt or b"")).hexdigest()


def signed_put(
    key: Ed25519PrivateKey, v: str, seq: int, salt: str | None = None, cas: int | None = None
) -> dict[str, Any]:
    """The grape API ``/put`` data of a mutable item signed with ``key``."""
    k = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    salt_bytes = salt.encode("utf-8") if salt else None
    sig = key.sign(signature_buffer(v.encode("utf-8"), seq, salt_bytes))
    data: dict[str, Any] = {"v": v, "seq": seq, "k": k.hex(), "sig": sig.hex()}
    if salt:
        data["salt"] = salt
    if cas is not None:
        data["cas"] = cas
    return data


def _is_hex(value: Any) -> bool:
    return isinstance(value, str) and bool(value) and all(c in "0123456789abcdef" for c in value)


class _Base(unittest.TestCase):
    """Shared helpers: a persistent HTTP pool and polling shorthands."""

    timeout = 120

    def setUp(self) -> None:
        harness.node_modules_dir()  # skip early (or fail) without Node
        self.pool = harness.http_pool(self)

    async def request(self, grape: Grape, op: str, data: Any) -> harness.GrapeReply:
        return await harness.grape_request(grape.url, op, data, pool=self.pool)

    async def announce(self, grape: Grape, name: str, port: int) -> harness.GrapeReply:
        """Announce until at least one node stored it."""

        async def probe() -> harness.GrapeReply:
            return await self.request(grape, "announce", [name, port])

        return await harness.wait_until(
            probe,
            20,
            f"announce {name!r}:{port} via {grape.url} is stored by >= 1 node",
            done=lambda r: r.status == 200 and isinstance(r.json, int) and r.json >= 1,
        )

    async def lookup_equals(self, grape: Grape, name: str, expected: list[str]) -> list[str]:
        """Poll lookups via ``grape`` until the result, as a set, is ``expected``."""

        async def probe() -> Any:
            reply = await self.request(grape, "lookup", name)
            if reply.status != 200 or not isinstance(reply.json, list):
                raise AssertionError(f"lookup reply {reply!r}")
            return reply.json

        result: list[str] = await harness.wait_until(
            probe,
            20,
            f"lookup {name!r} via {grape.url} gives exactly {sorted(expected)}",
            done=lambda peers: sorted(peers) == sorted(expected) and len(peers) == len(expected),
        )
        return result

    async def get_until(
        self, grape: Grape, data: Any, describe: str, timeout: float = 20
    ) -> dict[str, Any]:
        """Poll ``/get`` via ``grape`` until it answers an object."""

        async def probe() -> harness.GrapeReply:
            return await self.request(grape, "get", data)

        reply = await harness.wait_until(
            probe,
            timeout,
            describe,
            done=lambda r: r.status == 200 and isinstance(r.json, dict),
        )
        result: dict[str, Any] = reply.json
        return result

    async def put_ok(self, grape: Grape, data: Any, expected_hash: str) -> None:
        """Put via ``grape`` until it answers the hash (the first put may race bootstrap)."""

        async def probe() -> harness.GrapeReply:
            return await self.request(grape, "put", data)

        await harness.wait_until(
            probe,
            20,
            f"put via {grape.url} answers {expected_hash!r}",
            done=lambda r: r.status == 200 and r.json == expected_hash,
        )

    def assert_node_grapes_alive(self, *grapes: NodeGrape) -> None:
        for g in grapes:
            self.assertFalse(
                g.process.has_ended,
                f"Node grape died: {g.process.describe_exit()}\n" + g.process.logs(),
            )


class MixedNetworkTests(_Base):
    """A chain P1 <- N1 <- P2 <- N2 (arrows: "bootstraps to"), so each kind bootstraps to
    the other."""

    async def network(self) -> tuple[PyGrape, NodeGrape, PyGrape, NodeGrape]:
        p1 = await harness.start_python_grape(self)
        n1 = await harness.start_node_grape(self, [p1.dht_address], name="n1")
        p2 = await harness.start_python_grape(self, [n1.dht_address])
        n2 = await harness.start_node_grape(self, [p2.dht_address], name="n2")
        return p1, n1, p2, n2

    @async_test
    async def test_announce_via_node_lookup_via_python(self) -> None:
        p1, n1, p2, n2 = await self.network()
        await self.announce(n1, "mixed:node-announced", 3001)
        await self.announce(n2, "mixed:node-announced", 3002)
        expected = [f"{LOOPBACK}:3001", f"{LOOPBACK}:3002"]
        for grape in (p1, p2):
            await self.lookup_equals(grape, "mixed:node-announced", expected)

    @async_test
    async def test_announce_via_python_lookup_via_node(self) -> None:
        p1, n1, p2, n2 = await self.network()
        await self.announce(p1, "mixed:py-announced", 3101)
        await self.announce(p2, "mixed:py-announced", 3102)
        expected = [f"{LOOPBACK}:3101", f"{LOOPBACK}:3102"]
        for grape in (n1, n2):
            await self.lookup_equals(grape, "mixed:py-announced", expected)
        self.assert_node_grapes_alive(n1, n2)

    @async_test
    async def test_service_names_of_any_shape(self) -> None:
        """1-byte, 40-byte and non-ASCII names: announce through each kind, look up
        through the other."""
        self.assertEqual(len(NAME_1_BYTE.encode()), 1)
        self.assertEqual(len(NAME_40_BYTES.encode()), 40)
        self.assertNotEqual(len(NAME_NON_ASCII.encode()), len(NAME_NON_ASCII))
        p1, n1, p2, n2 = await self.network()
        for i, name in enumerate((NAME_1_BYTE, NAME_40_BYTES, NAME_NON_ASCII)):
            py_port, node_port = 3200 + 2 * i, 3201 + 2 * i
            await self.announce(p1, name, py_port)
            await self.announce(n2, name, node_port)
            expected = [f"{LOOPBACK}:{py_port}", f"{LOOPBACK}:{node_port}"]
            for grape in (n1, p2, p1, n2):
                await self.lookup_equals(grape, name, expected)
        self.assert_node_grapes_alive(n1, n2)

    @async_test
    async def test_immutable_put_via_python_get_via_node(self) -> None:
        p1, n1, _p2, n2 = await self.network()
        value = "stored by python é"
        digest = hashlib.sha1(_bstr(value.encode())).hexdigest()
        await self.put_ok(p1, {"v": value}, digest)
        for grape in (n1, n2):
            got = await self.get_until(
                grape, {"hash": digest, "cache": False}, f"get {digest} via {grape.url}"
            )
            self.assertEqual(got["v"], value)
            self.assertTrue(_is_hex(got["token"]), got)
        self.assert_node_grapes_alive(n1, n2)

    @async_test
    async def test_immutable_put_via_node_get_via_python(self) -> None:
        p1, _n1, p2, n2 = await self.network()
        value = "stored by node ü"
        digest = hashlib.sha1(_bstr(value.encode())).hexdigest()
        await self.put_ok(n2, {"v": value}, digest)
        for grape in (p1, p2):
            got = await self.get_until(
                grape, {"hash": digest, "cache": False}, f"get {digest} via {grape.url}"
            )
            self.assertEqual(got["v"], value)
            self.assertTrue(_is_hex(got["token"]), got)
            plain = await self.request(grape, "get", digest)
            self.assertEqual(plain.json["v"], value)

    @async_test
    async def test_node_grapes_survive_python_repertoire(self) -> None:
        """Python grapes send every query they have (ping, find_node, get_peers,
        announce_peer, get, put immutable and mutable, which stock Node grapes refuse);
        the Node grapes keep answering."""
        p1, n1, p2, n2 = await self.network()
        await self.announce(p1, "repertoire", 3300)
        await self.lookup_equals(p2, "repertoire", [f"{LOOPBACK}:3300"])
        digest = hashlib.sha1(_bstr(b"repertoire")).hexdigest()
        await self.put_ok(p2, {"v": "repertoire"}, digest)
        await self.get_until(p1, {"hash": digest, "cache": False}, "immutable get via p1")
        key = Ed25519PrivateKey.generate()
        mutable = await self.request(p1, "put", signed_put(key, "m", 0))
        # Stock Node grapes have no verify function and answer 400, which is collapsed
        # into "All queries failed" unless a Python grape stored it.
        self.assertEqual(mutable.status, 200, mutable)
        await self.request(p2, "get", {"hash": mutable_hash(self._k(key)), "cache": False})
        self.assert_node_grapes_alive(n1, n2)
        # Still answering, and still part of the network.
        await self.announce(n1, "repertoire", 3301)
        await self.lookup_equals(n2, "repertoire", [f"{LOOPBACK}:3300", f"{LOOPBACK}:3301"])

    @staticmethod
    def _k(key: Ed25519PrivateKey) -> bytes:
        return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @async_test
    async def test_cli_grape_in_the_network(self) -> None:
        """The stock ``grape`` CLI as the root, a Python grape bootstrapping to it and a Node
        grape bootstrapping to the Python one."""
        cli = await harness.start_node_grape_cli(self, name="cli")
        p1 = await harness.start_python_grape(self, [cli.dht_address])
        n1 = await harness.start_node_grape(self, [p1.dht_address], name="n1")
        await self.announce(n1, "cli:mixed", 3400)
        await self.lookup_equals(cli, "cli:mixed", [f"{LOOPBACK}:3400"])
        await self.announce(cli, "cli:mixed:2", 3401)
        await self.lookup_equals(p1, "cli:mixed:2", [f"{LOOPBACK}:3401"])
        self.assert_node_grapes_alive(cli, n1)


class NodeLinkAgainstPythonGrapeTests(_Base):
    """grenache-nodejs-link 1.0.2 (link_client.js) as the client of Python grapes."""

    @async_test
    async def test_link_ops_on_python_grapes(self) -> None:
        p1 = await harness.start_python_grape(self)
        n1 = await harness.start_node_grape(self, [p1.dht_address], name="n1")
        p2 = await harness.start_python_grape(self, [n1.dht_address])
        hello = hashlib.sha1(_bstr(b"hello world")).hexdigest()

        first = await harness.run_link_ops(
            self,
            p1.url,
            [
                {"op": "announce", "name": "link:py", "port": 4100},
                {"op": "announce", "name": "link:py", "port": "4100"},
                {"op": "put", "data": {"v": "hello world"}},
                {"op": "lookup", "name": "link:nobody"},
                {"op": "get", "data": "00" * 20},
            ],
        )
        announced, bad_port, put, empty, missing = first
        self.assertTrue(announced["ok"], announced)
        self.assertIsInstance(announced["result"], int)
        self.assertGreaterEqual(announced["result"], 1)
        # The Node link hands grape error strings of /announce over as results.
        self.assertEqual(bad_port["result"], "ERR_GRAPE_SERVICE_PORT")
        self.assertEqual(put, {"i": 2, "op": "put", "ok": True, "result": hello})
        self.assertEqual(
            empty,
            {"i": 3, "op": "lookup", "ok": False, "error": "ERR_GRAPE_LOOKUP_EMPTY", "code": None},
        )
        # Not found is an empty body, which the link turns into "".
        self.assertEqual(missing, {"i": 4, "op": "get", "ok": True, "result": ""})

        await self.lookup_equals(p2, "link:py", [f"{LOOPBACK}:4100"])
        second = await harness.run_link_ops(
            self,
            p2.url,
            [
                {"op": "lookup", "name": "link:py"},
                {"op": "get", "data": hello},
                {"op": "get", "data": {"hash": hello}},
                {"op": "put", "data": {}},
            ],
        )
        looked, got, got_obj, invalid = second
        self.assertEqual(looked["result"], [f"{LOOPBACK}:4100"])
        self.assertEqual(got["result"]["v"], "hello world")
        self.assertEqual(got_obj["result"]["v"], "hello world")
        self.assertEqual(invalid["result"], "opts.v not given")
        self.assert_node_grapes_alive(n1)

    @async_test
    async def test_link_start_announcing_on_python_grape(self) -> None:
        p1 = await harness.start_python_grape(self)
        n1 = await harness.start_node_grape(self, [p1.dht_address], name="n1")
        link = await harness.start_link_session(self, p1.url)
        started = await link.call(
            {"op": "startAnnouncing", "name": "link:loop", "port": 4200, "opts": {"interval": 200}}
        )
        self.assertTrue(started["ok"], started)
        await self.lookup_equals(n1, "link:loop", [f"{LOOPBACK}:4200"])
        looked = await link.call({"op": "lookup", "name": "link:loop"})
        self.assertEqual(looked["result"], [f"{LOOPBACK}:4200"])
        stopped = await link.call({"op": "stopAnnouncing", "name": "link:loop", "port": 4200})
        self.assertEqual(stopped["result"], True)


class MutableItemTests(_Base):
    """BEP 44 mutable items between a Python grape and a verify-enabled Node grape. Two
    grapes only, so that a get with ``cache: false`` can only be answered by the other
    implementation."""

    def test_vector_signature_buffer(self) -> None:
        """The test's own signature buffer verifies the BEP 44 vector."""
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(VECTOR_K)).verify(
            bytes.fromhex(VECTOR_SIG),
            signature_buffer(VECTOR_V.encode(), 1, VECTOR_SALT.encode()),
        )
        self.assertEqual(mutable_hash(bytes.fromhex(VECTOR_K), b"foobar"), VECTOR_HASH)

    async def pair(self) -> tuple[PyGrape, NodeGrape]:
        node = await harness.start_node_grape(self, verify=True, name="n-verify")
        py = await harness.start_python_grape(self, [node.dht_address])
        return py, node

    def assert_vector(self, got: dict[str, Any], responder: Grape, local: bool) -> None:
        self.assertEqual(got["v"], VECTOR_V)
        self.assertEqual(got["seq"], 1)
        self.assertEqual(got["k"], VECTOR_K)
        self.assertEqual(got["sig"], VECTOR_SIG)
        self.assertEqual(got["id"], responder.node_id)
        if local:
            self.assertIsNone(got["token"])
        else:
            self.assertTrue(_is_hex(got["token"]), got)
            self.assertEqual(got["salt"], VECTOR_SALT)

    @async_test
    async def test_put_via_python_node_verifies_stores_and_serves(self) -> None:
        py, node = await self.pair()
        await self.put_ok(py, VECTOR_PUT, VECTOR_HASH)
        # The Node grape verified the signature and stored the item.
        local = await self.request(node, "get", {"hash": VECTOR_HASH, "salt": VECTOR_SALT})
        self.assertEqual(local.status, 200, local)
        self.assert_vector(local.json, node, local=True)
        # A Python get walks to the Node grape and accepts its answer.
        remote = await self.get_until(
            py,
            {"hash": VECTOR_HASH, "salt": VECTOR_SALT, "cache": False},
            "the Python grape gets the vector from the Node grape",
        )
        self.assert_vector(remote, node, local=False)
        # Without the salt the item is not found.
        unsalted = await self.request(py, "get", {"hash": VECTOR_HASH, "cache": False})
        self.assertEqual((unsalted.status, unsalted.body), (200, b""))
        # The Node grape refuses the same seq again: 302 comes back through Python.
        again = await self.request(py, "put", VECTOR_PUT)
        self.assertEqual((again.status, again.json), (302, SEQ_TOO_OLD))
        self.assert_node_grapes_alive(node)

    @async_test
    async def test_put_via_node_python_verifies_stores_and_serves(self) -> None:
        py, node = await self.pair()
        await self.put_ok(node, VECTOR_PUT, VECTOR_HASH)
        local = await self.request(py, "get", {"hash": VECTOR_HASH, "salt": VECTOR_SALT})
        self.assertEqual(local.status, 200, local)
        self.assert_vector(local.json, py, local=True)
        # A Node get walks to the Python grape and accepts (verifies) its answer.
        remote = await self.get_until(
            node,
            {"hash": VECTOR_HASH, "salt": VECTOR_SALT, "cache": False},
            "the Node grape gets the vector from the Python grape",
        )
        self.assert_vector(remote, py, local=False)
        # The Python grape refuses the same seq again with KRPC 302; Node reports it.
        again = await self.request(node, "put", VECTOR_PUT)
        self.assertEqual((again.status, again.json), (302, SEQ_TOO_OLD))
        self.assert_node_grapes_alive(node)

    @async_test
    async def test_sequence_updates_and_cas_both_ways(self) -> None:
        """Fresh ed25519 keys and a non-ASCII salt. A grape stores mutable items others put
        (not its own), so: seq 0 then 1 (cas 0) via Python are stored by Node; seq 2 then 3
        (cas 2) via Node are stored by Python; each side then serves the other's latest,
        and a stale cas is refused with 301 by either side."""
        py, node = await self.pair()
        key = Ed25519PrivateKey.generate()
        k = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        salt = "sàlt"
        target = mutable_hash(k, salt.encode())
        query = {"hash": target, "salt": salt, "cache": False}

        await self.put_ok(py, signed_put(key, "v0", 0, salt), target)
        await self.put_ok(py, signed_put(key, "v1 from python", 1, salt, cas=0), target)
        got = await self.get_until(py, query, "python gets seq 1 from node")
        self.assertEqual((got["seq"], got["v"], got["id"]), (1, "v1 from python", node.node_id))

        await self.put_ok(node, signed_put(key, "v2 from node", 2, salt), target)
        await self.put_ok(node, signed_put(key, "v3 from node", 3, salt, cas=2), target)
        got = await self.get_until(node, query, "node gets seq 3 from python")
        self.assertEqual((got["seq"], got["v"], got["id"]), (3, "v3 from node", py.node_id))

        # cas 0 matches neither stored seq (1 on Node, 3 on Python).
        stale = await self.request(py, "put", signed_put(key, "v4", 4, salt, cas=0))
        self.assertEqual((stale.status, stale.json), (301, CAS_MISMATCH))
        stale = await self.request(node, "put", signed_put(key, "v4", 4, salt, cas=0))
        self.assertEqual((stale.status, stale.json), (301, CAS_MISMATCH))
        self.assert_node_grapes_alive(node)

    @async_test
    async def test_bad_signature_is_dropped_both_ways(self) -> None:
        """A put whose signature does not verify is silently dropped by the receiving
        grape, whichever its implementation; the putter reports "All queries failed"."""
        py, node = await self.pair()
        key = Ed25519PrivateKey.generate()
        bad = signed_put(key, "forged", 5)
        bad["v"] = "tampered"
        target = mutable_hash(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
        for putter, holder in ((py, node), (node, py)):
            reply = await self.request(putter, "put", bad)
            self.assertEqual((reply.status, reply.json), (200, "All queries failed"))
            held = await self.request(holder, "get", target)
            self.assertEqual((held.status, held.body), (200, b""))
        self.assert_node_grapes_alive(node)
