"""The grape operations on real DHT nodes (in memory): data checks, results, errors."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import maybeDeferred
from twisted.trial.unittest import SynchronousTestCase

from grenache.dht import bep44
from grenache.errors import (
    GrapeAnnounceInvalid,
    GrapeDataInvalid,
    GrapeHashFormat,
    GrapeLookupInvalid,
    GrapeRequestNotFound,
    GrapeServicePortInvalid,
    InvalidPut,
    KRPCError,
)
from grenache.grape.operations import dispatch
from tests.dhtnet import result_of
from tests.test_dht_node import VECTOR_PUBLIC_KEY, VECTOR_SALTED_SIG, Network

VECTOR_TARGET = "411eba73b6f087ca51a3795d9c8c938d365e32c1"


class OperationTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.network = Network(self)
        self.first, self.second = self.network.chain(2)

    def run_op(self, operation: str, data: Any, node: Any = None) -> Any:
        answer = dispatch(node or self.first, operation, data)
        return result_of(self.network.net, maybeDeferred(lambda: answer))

    def fails(self, error: type[Exception], operation: str, data: Any) -> Exception:
        return self.assertRaises(error, self.run_op, operation, data)

    def test_unknown_operation(self) -> None:
        for name in ("UNANNOUNCE", "lookup?x=1", "LOOKUP", ""):
            self.assertEqual(
                self.fails(GrapeRequestNotFound, name, "x").message, "ERR_REQ_NOTFOUND"
            )

    def test_announce_checks(self) -> None:
        self.fails(GrapeAnnounceInvalid, "announce", "rpc_test")
        self.fails(GrapeAnnounceInvalid, "announce", {"name": "x"})
        for port in ("1337", 13.5, None, True, -1, 65536):
            self.fails(GrapeServicePortInvalid, "announce", ["rpc_test", port])
        self.fails(GrapeServicePortInvalid, "announce", ["rpc_test"])
        self.assertIn(
            "must be a string", self.fails(GrapeDataInvalid, "announce", [5, 1337]).message
        )

    def test_announce_and_lookup(self) -> None:
        self.assertEqual(self.run_op("announce", ["sérvice:ü", 1337]), 1)
        self.assertEqual(self.run_op("lookup", "sérvice:ü", self.second), ["127.0.0.1:1337"])
        self.assertEqual(self.run_op("lookup", "nothing"), [])

    def test_lookup_checks(self) -> None:
        for data in ("", None, 5, ["x"]):
            self.assertEqual(
                self.fails(GrapeLookupInvalid, "lookup", data).message, "ERR_GRAPE_LOOKUP"
            )

    def test_put_get_immutable(self) -> None:
        key = self.run_op("put", {"v": "hello world"})
        self.assertEqual(key, "6d33adc2b6b2c14c3036feefb7fedbca1a880527")
        self.assertEqual(self.run_op("put", "hello world"), key)
        local = self.run_op("get", key)
        self.assertEqual(list(local), ["id", "token", "v"])
        self.assertEqual(local, {"id": self.first.node_id.hex(), "token": None, "v": "hello world"})
        remote = self.run_op("get", {"hash": key, "cache": False}, self.second)
        self.assertEqual(remote["v"], "hello world")
        self.assertEqual(len(remote["token"]), 40)
        self.assertEqual(remote["id"], self.first.node_id.hex())

    def test_put_number_value(self) -> None:
        key = self.run_op("put", {"v": 42})
        self.assertEqual(key, bep44.immutable_key(42).hex())
        self.assertEqual(self.run_op("get", key)["v"], "42")

    def test_put_errors(self) -> None:
        self.assertEqual(self.fails(InvalidPut, "put", {}).message, "opts.v not given")
        self.assertEqual(
            self.fails(InvalidPut, "put", {"v": "x" * 1000}).message,
            "v must be less than 1000 bytes in put()",
        )
        self.assertEqual(
            self.fails(InvalidPut, "put", {"v": "x", "k": "abcd", "sig": "00", "seq": 1}).message,
            "opts.k ed25519 public key must be 32 bytes",
        )
        self.assertEqual(
            self.fails(
                InvalidPut, "put", {"v": "x", "k": VECTOR_PUBLIC_KEY.hex(), "seq": 1}
            ).message,
            "opts.sign function or options.sig signature is required for mutable put",
        )
        self.assertEqual(
            self.fails(
                InvalidPut,
                "put",
                {"v": "x", "k": VECTOR_PUBLIC_KEY.hex(), "sig": "00" * 64, "seq": "1"},
            ).message,
            "opts.seq not an integer",
        )
        self.fails(GrapeDataInvalid, "put", None)
        self.fails(GrapeDataInvalid, "put", [1])

    def test_mutable_vector_through_the_api(self) -> None:
        data = {
            "v": "Hello World!",
            "seq": 1,
            "k": VECTOR_PUBLIC_KEY.hex(),
            "salt": "foobar",
            "sig": VECTOR_SALTED_SIG.hex(),
        }
        self.assertEqual(self.run_op("put", data), VECTOR_TARGET)
        # As in Node, the putter keeps no mutable item itself: it fetches it from the other node.
        found = self.run_op("get", {"hash": VECTOR_TARGET, "salt": "foobar"})
        self.assertEqual(list(found), ["id", "k", "seq", "sig", "token", "v", "salt"])
        self.assertEqual(
            {k: found[k] for k in ("k", "seq", "sig", "v", "salt")},
            {
                "k": VECTOR_PUBLIC_KEY.hex(),
                "seq": 1,
                "sig": VECTOR_SALTED_SIG.hex(),
                "v": "Hello World!",
                "salt": "foobar",
            },
        )
        error = self.fails(KRPCError, "put", data)
        self.assertEqual(
            (error.code, error.message), (302, "302 sequence number less than current")
        )
        error = self.fails(KRPCError, "put", {**data, "cas": 5})
        self.assertEqual(error.code, 301)

    def test_get_checks(self) -> None:
        for data in ("zz", "6d33", {"hash": 5}, {"salt": "x"}, "g" * 40):
            self.assertEqual(
                self.fails(GrapeHashFormat, "get", data).message, "ERR_GRAPE_HASH_FORMAT"
            )
        self.fails(GrapeDataInvalid, "get", None)
        self.assertIsNone(self.run_op("get", "00" * 20))
