"""Tests for grenache.dht.krpc: wire bytes as Node sends them (docs/protocol.rst, *DHT
messages*), transaction ids, matching, timeouts, the in-flight cap, shutdown and robustness
against hostile datagrams.

Everything runs on a ``Clock`` and a fake datagram transport except one loopback test that makes
two protocols ping each other over real UDP sockets.
"""

from __future__ import annotations

import hashlib
from typing import Any

import bencode2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.internet.error import MessageLengthError
from twisted.internet.task import Clock
from twisted.internet.testing import FakeDatagramTransport
from twisted.logger import Logger, LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase

from grenache.dht.krpc import (
    Address,
    KRPCProtocol,
    Response,
    decode_message,
    encode_error,
    encode_query,
    encode_response,
)
from grenache.dht.limits import QueryRateLimiter
from grenache.errors import KRPCClosed, KRPCError, KRPCTimeout, KRPCUnexpectedNode

A = b"A" * 20  # our id in most tests
B = b"B" * 20  # the remote node
C = b"C" * 20
TOKEN = b"T" * 20
T7 = b"\x00\x07"  # the transaction id of the exact-bytes examples
T1 = b"\x00\x01"  # our first transaction id
PEER: Address = ("10.0.0.2", 20001)


class Handler:
    """A QueryHandler that records its calls and answers with ``result`` (or raises it)."""

    def __init__(self, result: Any = None, raises: bool = False) -> None:
        self.result = result
        self.raises = raises
        self.calls: list[tuple[str, dict[str, Any], Address]] = []

    def __call__(self, q: str, a: dict[str, Any], addr: Address) -> Any:
        self.calls.append((q, a, addr))
        if self.raises:
            raise self.result
        return self.result


def ignore(d: Deferred[Any]) -> None:
    """Consume a Deferred's failure (queries left behind by a test)."""
    d.addErrback(lambda f: None)


class Harness:
    """A started protocol on a fake transport, with its clock, handler and node-seen record."""

    def __init__(
        self, node_id: bytes = A, result: Any = None, raises: bool = False, **kwargs: Any
    ) -> None:
        self.clock = Clock()
        self.handler = Handler(result, raises)
        self.seen: list[tuple[bytes, Address]] = []
        self.proto = KRPCProtocol(
            node_id,
            self.clock,
            self.handler,
            on_node_seen=lambda i, a: self.seen.append((i, a)),
            **kwargs,
        )
        self.transport = FakeDatagramTransport()
        self.proto.makeConnection(self.transport)

    @property
    def written(self) -> list[tuple[bytes, Address]]:
        return self.transport.written

    def receive(self, data: bytes, addr: Address = PEER) -> None:
        self.proto.datagramReceived(data, addr)

    def reply(self, tid: bytes, r: dict[str, Any], addr: Address = PEER) -> None:
        self.receive(encode_response(tid, r), addr)


def ping_query(sender: bytes = B, t: bytes = T7) -> bytes:
    return b"d1:ad2:id20:" + sender + b"e1:q4:ping1:t" + b"%d:" % len(t) + t + b"1:y1:qe"


# --- exact bytes (docs/protocol.rst, *DHT messages*) ----------------------------------------------


class QueryBytesTests(SynchronousTestCase):
    """Our queries are byte-identical to Node's captures (with our first tid, 1)."""

    def sent(self, q: str, args: dict[str, Any]) -> bytes:
        h = Harness()
        d = h.proto.query(PEER, q, args)
        self.assertEqual(len(h.written), 1)
        data, addr = h.written[0]
        self.assertEqual(addr, PEER)
        h.proto.stopProtocol()
        self.failureResultOf(d, KRPCClosed)
        return data

    def check(self, q: str, args: dict[str, Any], expected: bytes, length: int) -> None:
        data = self.sent(q, args)
        self.assertEqual(data, expected)
        self.assertEqual(len(data), length)

    def test_ping(self) -> None:
        self.check("ping", {}, b"d1:ad2:id20:" + A + b"e1:q4:ping1:t2:" + T1 + b"1:y1:qe", 56)

    def test_find_node(self) -> None:
        expected = (
            b"d1:ad2:id20:" + A + b"6:target20:" + A + b"e1:q9:find_node1:t2:" + T1 + b"1:y1:qe"
        )
        self.check("find_node", {"target": A}, expected, 92)

    def test_get_peers_8_byte_key(self) -> None:
        expected = (
            b"d1:ad2:id20:" + A + b"9:info_hash8:rpc_teste1:q9:get_peers1:t2:" + T1 + b"1:y1:qe"
        )
        self.check("get_peers", {"info_hash": b"rpc_test"}, expected, 82)

    def test_announce_peer(self) -> None:
        args = {"implied_port": 0, "info_hash": b"rpc_test", "port": 1337, "token": TOKEN}
        expected = (
            b"d1:ad2:id20:" + A + b"12:implied_porti0e9:info_hash8:rpc_test4:porti1337e"
            b"5:token20:" + TOKEN + b"e1:q13:announce_peer1:t2:" + T1 + b"1:y1:qe"
        )
        self.check("announce_peer", args, expected, 147)

    def test_get(self) -> None:
        target = hashlib.sha1(b"11:hello world").digest()
        self.assertEqual(target.hex(), "6d33adc2b6b2c14c3036feefb7fedbca1a880527")
        expected = b"d1:ad2:id20:" + A + b"6:target20:" + target + b"e1:q3:get1:t2:" + T1
        self.check("get", {"target": target}, expected + b"1:y1:qe", 86)

    def test_put_immutable(self) -> None:
        expected = b"d1:ad2:id20:" + A + b"5:token20:" + TOKEN + b"1:v11:hello worlde1:q3:put1:t2:"
        self.check("put", {"token": TOKEN, "v": b"hello world"}, expected + T1 + b"1:y1:qe", 102)

    def test_none_values_omitted(self) -> None:
        """None is omitted everywhere, as Node's encoder drops null and undefined."""
        args = {"implied_port": None, "port": 1, "x": {"a": None, "b": [1, None, b"z"]}}
        expected = b"d1:ad2:id20:" + A + b"4:porti1e1:xd1:bli1e1:zeee1:q1:x1:t2:" + T1 + b"1:y1:qe"
        self.check("x", args, expected, 78)

    def test_given_id_kept(self) -> None:
        """Like k-rpc, an explicit ``id`` in the arguments is not overwritten."""
        data = self.sent("ping", {"id": C})
        self.assertEqual(data, b"d1:ad2:id20:" + C + b"e1:q4:ping1:t2:" + T1 + b"1:y1:qe")

    def test_refuse_non_bytes_target_or_info_hash(self) -> None:
        """An integer target/info_hash kills a Node 10.0.0 grape: refused before sending."""
        h = Harness()
        for args in ({"target": 1}, {"info_hash": 5}, {"info_hash": "text"}, {"target": [A]}):
            q = "get_peers" if "info_hash" in args else "find_node"
            self.assertRaises(ValueError, h.proto.query, PEER, q, args)
        self.assertEqual(h.written, [])
        self.assertEqual((h.proto.in_flight, h.proto.queued), (0, 0))
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_refuse_unencodable_and_hostnames(self) -> None:
        h = Harness()
        self.assertRaises(ValueError, h.proto.query, PEER, "x", {"f": 1.5})
        self.assertRaises(ValueError, h.proto.query, ("localhost", 1), "ping", {})
        self.assertRaises(ValueError, h.proto.query, ("::1", 1), "ping", {})
        self.assertRaises(ValueError, h.proto.query, ("10.0.0.1", 0), "ping", {})
        self.assertEqual(h.written, [])

    def test_encode_helpers(self) -> None:
        self.assertEqual(
            encode_error(T7, 302, "sequence number less than current"),
            b"d1:eli302e33:sequence number less than currente1:t2:" + T7 + b"1:y1:ee",
        )
        self.assertEqual(
            encode_response(T7, {"id": B}), b"d1:rd2:id20:" + B + b"e1:t2:\x00\x071:y1:re"
        )
        self.assertEqual(encode_query(T7, "ping", {"id": B}), ping_query(B))
        self.assertRaises(ValueError, encode_query, T7, "get", {"id": B, "target": 7})


class ReplyBytesTests(SynchronousTestCase):
    """Our replies to Node-shaped queries are byte-identical to Node's."""

    def answer(
        self, query: bytes, result: Any, raises: bool = False
    ) -> list[tuple[bytes, Address]]:
        h = Harness(node_id=B, result=result, raises=raises)
        h.receive(query, ("127.0.0.1", 20001))
        return h.written

    def test_ping_reply(self) -> None:
        written = self.answer(ping_query(A), {})
        expected = b"d1:rd2:id20:" + B + b"e1:t2:\x00\x071:y1:re"
        self.assertEqual(written, [(expected, ("127.0.0.1", 20001))])
        self.assertEqual(len(expected), 47)

    def test_announce_reply(self) -> None:
        query = (
            b"d1:ad2:id20:" + A + b"12:implied_porti0e9:info_hash8:rpc_test4:porti1337e"
            b"5:token20:" + TOKEN + b"e1:q13:announce_peer1:t2:" + T7 + b"1:y1:qe"
        )
        self.assertEqual(len(query), 147)
        h = Harness(node_id=B, result={})
        h.receive(query, ("127.0.0.1", 20001))
        q, a, addr = h.handler.calls[0]
        self.assertEqual(q, "announce_peer")
        self.assertEqual(
            a,
            {"id": A, "implied_port": 0, "info_hash": b"rpc_test", "port": 1337, "token": TOKEN},
        )
        self.assertEqual(addr, ("127.0.0.1", 20001))
        ((data, _),) = h.written
        self.assertEqual(data, b"d1:rd2:id20:" + B + b"e1:t2:\x00\x071:y1:re")
        self.assertEqual(len(data), 47)

    def test_find_node_reply(self) -> None:
        query = b"d1:ad2:id20:" + A + b"6:target20:" + A + b"e1:q9:find_node1:t2:" + T7 + b"1:y1:qe"
        nodes = A + b"\x7f\x00\x00\x01N!"
        ((data, _),) = self.answer(query, {"nodes": nodes})
        self.assertEqual(
            data, b"d1:rd2:id20:" + B + b"5:nodes26:" + nodes + b"e1:t2:" + T7 + b"1:y1:re"
        )
        ((empty, _),) = self.answer(query, {"nodes": b""})
        self.assertEqual(empty, b"d1:rd2:id20:" + B + b"5:nodes0:e1:t2:" + T7 + b"1:y1:re")

    def test_get_peers_replies(self) -> None:
        query = b"d1:ad2:id20:" + A + b"9:info_hash8:rpc_teste1:q9:get_peers1:t2:" + T7 + b"1:y1:qe"
        node = C + b"\x7f\x00\x00\x01N!"
        ((data, _),) = self.answer(query, {"nodes": node, "token": TOKEN})
        self.assertEqual(
            data,
            b"d1:rd2:id20:"
            + B
            + b"5:nodes26:"
            + node
            + b"5:token20:"
            + TOKEN
            + b"e1:t2:"
            + T7
            + b"1:y1:re",
        )
        self.assertEqual(len(data), 113)
        ((values, _),) = self.answer(query, {"token": TOKEN, "values": [b"\x7f\x00\x00\x01\x059"]})
        self.assertEqual(
            values,
            b"d1:rd2:id20:" + B + b"5:token20:" + TOKEN + b"6:valuesl6:\x7f\x00\x00\x01\x059ee"
            b"1:t2:" + T7 + b"1:y1:re",
        )

    def test_error_reply(self) -> None:
        expected = b"d1:eli203e37:cannot `announce_peer` with bad tokene1:t2:" + T7 + b"1:y1:ee"
        error = KRPCError(203, "cannot `announce_peer` with bad token")
        ((data, _),) = self.answer(ping_query(A), error)
        self.assertEqual(data, expected)
        # Raising the error is the same as returning it.
        ((raised, _),) = self.answer(ping_query(A), error, raises=True)
        self.assertEqual(raised, expected)

    def test_echo_t_verbatim(self) -> None:
        """Any t is echoed, whatever its length: 4 bytes and even empty."""
        for t in (b"\x01\x02\x03\x04", b"", b"x", b"\x00\x00"):
            ((data, _),) = self.answer(ping_query(A, t=t), {})
            self.assertEqual(data, b"d1:rd2:id20:" + B + b"e1:t%d:" % len(t) + t + b"1:y1:re")

    def test_handler_gets_str_keys_and_none_stripped(self) -> None:
        h = Harness(node_id=B, result={"token": TOKEN, "nodes": None})
        h.receive(ping_query(A))
        self.assertEqual(h.handler.calls, [("ping", {"id": A}, PEER)])
        self.assertEqual(
            h.written[0][0],
            b"d1:rd2:id20:" + B + b"5:token20:" + TOKEN + b"e1:t2:" + T7 + b"1:y1:re",
        )


# --- transaction ids and matching ---------------------------------------------------------


class TransactionIdTests(SynchronousTestCase):
    def tids(self, h: Harness) -> list[bytes]:
        return [decode_message(data)[b"t"] for data, _ in h.written]

    def test_counter_starts_at_one(self) -> None:
        h = Harness()
        for _ in range(3):
            ignore(h.proto.query(PEER, "ping", {}))
        self.assertEqual(self.tids(h), [b"\x00\x01", b"\x00\x02", b"\x00\x03"])

    def test_wraps_to_one_never_zero(self) -> None:
        h = Harness()
        h.proto._tick = 65534  # as if 65534 queries had been sent and answered
        ds = [h.proto.query(PEER, "ping", {}) for _ in range(3)]
        self.assertEqual(self.tids(h), [b"\xff\xff", b"\x00\x01", b"\x00\x02"])
        h.proto.stopProtocol()
        for d in ds:
            self.failureResultOf(d, KRPCClosed)

    def test_skips_outstanding_ids(self) -> None:
        h = Harness()
        first = h.proto.query(PEER, "ping", {})  # tid 1 stays outstanding
        h.proto._tick = 65535
        second = h.proto.query(PEER, "ping", {})
        self.assertEqual(self.tids(h), [b"\x00\x01", b"\x00\x02"])
        h.reply(b"\x00\x01", {"id": B})
        h.reply(b"\x00\x02", {"id": C})
        self.assertEqual(self.successResultOf(first).r["id"], B)
        self.assertEqual(self.successResultOf(second).r["id"], C)


class MatchingTests(SynchronousTestCase):
    def test_response(self) -> None:
        h = Harness()
        d = h.proto.query(PEER, "find_node", {"target": A})
        self.assertEqual(h.proto.in_flight, 1)
        h.reply(T1, {"id": B, "nodes": b""})
        self.assertEqual(self.successResultOf(d), Response({"id": B, "nodes": b""}, PEER))
        self.assertEqual(h.proto.in_flight, 0)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_source_ip_must_match_port_need_not(self) -> None:
        h = Harness()
        d = h.proto.query(PEER, "ping", {})
        h.reply(T1, {"id": B}, ("10.0.0.3", PEER[1]))
        self.assertNoResult(d)
        self.assertEqual(h.proto.in_flight, 1)
        h.reply(T1, {"id": B}, (PEER[0], 9999))
        response = self.successResultOf(d)
        self.assertEqual(response.addr, (PEER[0], 9999))

    def test_unknown_short_and_trailing_t(self) -> None:
        h = Harness()
        d = h.proto.query(PEER, "ping", {})
        h.reply(b"\x00\x02", {"id": B})  # not outstanding
        h.reply(b"\x00", {"id": B})  # shorter than 2 bytes
        h.reply(b"\x00\x00", {"id": B})  # 0 is never used
        self.assertNoResult(d)
        h.reply(T1 + b"extra", {"id": B})  # only the first 2 bytes count
        self.assertEqual(self.successResultOf(d).r, {"id": B})

    def test_duplicate_response_ignored(self) -> None:
        h = Harness()
        d = h.proto.query(PEER, "ping", {})
        h.reply(T1, {"id": B})
        h.reply(T1, {"id": C})
        self.assertEqual(self.successResultOf(d).r, {"id": B})

    def test_error_reply(self) -> None:
        h = Harness()
        d = h.proto.query(PEER, "put", {"token": TOKEN, "v": b"x"})
        h.receive(encode_error(T1, 302, "sequence number less than current"))
        error = self.failureResultOf(d, KRPCError).value
        self.assertEqual((error.code, error.text), (302, "sequence number less than current"))
        self.assertEqual(error.message, "302 sequence number less than current")
        self.assertEqual(h.proto.in_flight, 0)

    def test_malformed_error_lists(self) -> None:
        cases = [
            (b"1:x", 0, "Unknown error"),
            (b"le", 0, ""),
            (b"l4:oopse", 0, "oops"),
            (b"li201ee", 201, ""),
            (b"li201e2:\xff!i7ee", 201, "\ufffd! 7"),
        ]
        for e, code, text in cases:
            h = Harness()
            d = h.proto.query(PEER, "ping", {})
            h.receive(b"d1:e" + e + b"1:t2:" + T1 + b"1:y1:ee")
            error = self.failureResultOf(d, KRPCError).value
            self.assertEqual((error.code, error.text), (code, text))

    def test_unexpected_node(self) -> None:
        h = Harness()
        d = h.proto.query(PEER, "ping", {}, node_id=B)
        h.reply(T1, {"id": C})
        self.failureResultOf(d, KRPCUnexpectedNode)
        self.assertEqual(h.proto.in_flight, 0)
        d = h.proto.query(PEER, "ping", {}, node_id=B)
        h.reply(b"\x00\x02", {"id": B})
        self.assertEqual(self.successResultOf(d).r["id"], B)
        d = h.proto.query(PEER, "ping", {}, node_id=B)
        h.receive(b"d1:ri5e1:t2:\x00\x031:y1:re")  # r is not a dict: no id either
        self.failureResultOf(d, KRPCUnexpectedNode)

    def test_r_not_a_dict_without_node_id(self) -> None:
        h = Harness()
        d = h.proto.query(PEER, "ping", {})
        h.receive(b"d1:t2:" + T1 + b"1:y1:re")
        self.assertEqual(self.successResultOf(d).r, {})


# --- timeouts and the in-flight cap --------------------------------------------------------


class TimeoutTests(SynchronousTestCase):
    def test_first_query_times_out_at_2_5_seconds(self) -> None:
        h = Harness()
        d = h.proto.query(PEER, "ping", {})
        h.clock.advance(2.49)
        self.assertNoResult(d)
        h.clock.advance(0.01)
        self.failureResultOf(d, KRPCTimeout)
        self.assertEqual(h.proto.in_flight, 0)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_timeout_between_2_0_and_2_5_seconds(self) -> None:
        """Whatever the sweep phase at send time, the query fails 2.0 to 2.5 s after it."""
        for offset in (0.0, 0.01, 0.1, 0.25, 0.49, 0.5, 0.51, 0.99):
            h = Harness()
            ignore(h.proto.query(("10.0.0.9", 1), "ping", {}))  # starts the sweep at t=0
            h.clock.advance(offset)
            d = h.proto.query(PEER, "ping", {})
            sent = h.clock.seconds()
            h.clock.advance(1.999)
            self.assertNoResult(d)
            while not d.called:  # step from timer to timer, to time the failure exactly
                next_call = min(c.getTime() for c in h.clock.getDelayedCalls())
                h.clock.advance(next_call - h.clock.seconds())
            elapsed = h.clock.seconds() - sent
            self.assertTrue(2.0 <= elapsed <= 2.5 + 1e-9, (offset, elapsed))
            self.failureResultOf(d, KRPCTimeout)

    def test_coarse_clock_advance(self) -> None:
        """A late sweep counts every period that passed, so one big advance times out."""
        h = Harness()
        d = h.proto.query(PEER, "ping", {})
        h.clock.advance(2.0)
        self.assertNoResult(d)
        late = h.proto.query(PEER, "ping", {})
        h.clock.advance(10)
        self.failureResultOf(d, KRPCTimeout)
        self.failureResultOf(late, KRPCTimeout)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_custom_timeout(self) -> None:
        h = Harness(timeout=1.0)
        d = h.proto.query(PEER, "ping", {})
        h.clock.advance(1.2)
        self.assertNoResult(d)
        h.clock.advance(0.05)
        self.failureResultOf(d, KRPCTimeout)

    def test_late_response_dropped_but_node_seen(self) -> None:
        h = Harness()
        d = h.proto.query(PEER, "ping", {})
        h.clock.advance(3)
        self.failureResultOf(d, KRPCTimeout)
        h.reply(T1, {"id": B})
        self.assertEqual(h.seen, [(B, PEER)])

    def test_idle_protocol_has_no_timer(self) -> None:
        h = Harness()
        self.assertEqual(h.clock.getDelayedCalls(), [])
        d = h.proto.query(PEER, "ping", {})
        self.assertEqual(len(h.clock.getDelayedCalls()), 1)
        h.reply(T1, {"id": B})
        self.successResultOf(d)
        self.assertEqual(h.clock.getDelayedCalls(), [])


class QueryCountTests(SynchronousTestCase):
    """``queries`` counts each query by name, direction and outcome (the metrics read it)."""

    def test_sent(self) -> None:
        h = Harness()
        answered = h.proto.query(PEER, "ping", {})
        h.reply(T1, {"id": B})
        self.successResultOf(answered)
        refused = h.proto.query(PEER, "get", {"target": B})
        h.receive(b"d1:eli203e4:nopee1:t2:\x00\x021:y1:ee")
        self.failureResultOf(refused, KRPCError)
        timed_out = h.proto.query(PEER, "find_node", {"target": B})
        h.clock.advance(3)
        self.failureResultOf(timed_out, KRPCTimeout)
        self.assertEqual(
            dict(h.proto.queries),
            {
                ("ping", "sent", "answered"): 1,
                ("get", "sent", "error"): 1,
                ("find_node", "sent", "timeout"): 1,
            },
        )

    def test_received(self) -> None:
        h = Harness(result={"id": A})
        h.receive(ping_query())
        h.handler.result = None
        h.receive(ping_query())
        h.handler.result, h.handler.raises = KRPCError(203, "bad"), True
        h.receive(ping_query())
        h.receive(b"d1:ad2:id20:" + B + b"e1:q5:bogus1:t2:\x00\x071:y1:qe")
        self.assertEqual(
            dict(h.proto.queries),
            {
                ("ping", "received", "answered"): 1,
                ("ping", "received", "dropped"): 1,
                ("ping", "received", "refused"): 1,
                ("other", "received", "refused"): 1,
            },
        )


class ConcurrencyTests(SynchronousTestCase):
    def test_seventeenth_query_waits_for_a_slot(self) -> None:
        h = Harness()
        ds = [h.proto.query(PEER, "ping", {"n": i}) for i in range(18)]
        self.assertEqual((h.proto.in_flight, h.proto.queued), (16, 2))
        self.assertEqual(len(h.written), 16)
        h.reply(b"\x00\x05", {"id": B})
        self.successResultOf(ds[4])
        self.assertEqual((h.proto.in_flight, h.proto.queued), (16, 1))
        self.assertEqual(len(h.written), 17)
        sent = decode_message(h.written[16][0])
        self.assertEqual(sent[b"a"][b"n"], 16)  # FIFO
        self.assertEqual(sent[b"t"], b"\x00\x11")
        h.receive(encode_error(b"\x00\x06", 201, "x"))
        self.failureResultOf(ds[5], KRPCError)
        self.assertEqual(decode_message(h.written[17][0])[b"a"][b"n"], 17)
        self.assertEqual((h.proto.in_flight, h.proto.queued), (16, 0))
        h.clock.advance(2.5)
        for d in ds[:4] + ds[6:]:
            self.failureResultOf(d, KRPCTimeout)
        self.assertEqual((h.proto.in_flight, h.proto.queued), (0, 0))
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_timeouts_free_slots_for_queued_queries(self) -> None:
        h = Harness(concurrency=1)
        first = h.proto.query(PEER, "ping", {})
        second = h.proto.query(PEER, "ping", {})
        self.assertEqual(len(h.written), 1)
        h.clock.advance(2.5)
        self.failureResultOf(first, KRPCTimeout)
        self.assertEqual(len(h.written), 2)
        self.assertNoResult(second)
        h.clock.advance(2.49)
        self.assertNoResult(second)  # a full timeout of its own, counted from its send
        h.clock.advance(0.01)
        self.failureResultOf(second, KRPCTimeout)

    def test_cancel(self) -> None:
        h = Harness(concurrency=1)
        first = h.proto.query(PEER, "ping", {})
        second = h.proto.query(PEER, "ping", {})
        third = h.proto.query(PEER, "ping", {})
        second.cancel()
        self.failureResultOf(second, CancelledError)
        self.assertEqual(h.proto.queued, 1)
        first.cancel()
        self.failureResultOf(first, CancelledError)
        self.assertEqual((h.proto.in_flight, h.proto.queued), (1, 0))
        self.assertEqual(len(h.written), 2)
        h.reply(b"\x00\x02", {"id": B})
        self.successResultOf(third)

    def test_query_from_a_callback(self) -> None:
        """Callbacks may send new queries while the protocol is settling a response."""
        h = Harness(concurrency=1)
        results: list[Deferred[Response]] = []
        d = h.proto.query(PEER, "ping", {})
        d.addCallback(lambda _: results.append(h.proto.query(PEER, "ping", {})))
        h.reply(T1, {"id": B})
        self.assertEqual(h.proto.in_flight, 1)
        h.reply(b"\x00\x02", {"id": B})
        self.successResultOf(results[0])


class StopTests(SynchronousTestCase):
    def test_stop_fails_pending_and_queued(self) -> None:
        h = Harness(concurrency=2)
        ds = [h.proto.query(PEER, "ping", {}) for _ in range(4)]
        h.proto.doStop()
        for d in ds:
            self.failureResultOf(d, KRPCClosed)
        self.assertEqual((h.proto.in_flight, h.proto.queued), (0, 0))
        self.assertEqual(h.clock.getDelayedCalls(), [])
        self.failureResultOf(h.proto.query(PEER, "ping", {}), KRPCClosed)
        self.assertEqual(len(h.written), 2)

    def test_not_started(self) -> None:
        proto = KRPCProtocol(A, Clock(), Handler())
        self.failureResultOf(proto.query(PEER, "ping", {}), KRPCClosed)

    def test_restart(self) -> None:
        h = Harness()
        h.proto.doStop()
        transport = FakeDatagramTransport()
        h.proto.makeConnection(transport)
        d = h.proto.query(PEER, "ping", {})
        self.assertEqual(len(transport.written), 1)
        h.proto.datagramReceived(encode_response(T1, {"id": B}), PEER)
        self.successResultOf(d)


# --- node seen -----------------------------------------------------------------------------


class NodeSeenTests(SynchronousTestCase):
    def test_query_sender_seen_before_dispatch(self) -> None:
        order: list[str] = []
        h = Harness(node_id=B, result={})
        h.proto.on_node_seen = lambda i, a: order.append("seen")
        handler = h.proto.handle_query

        def recording(q: str, a: dict[str, Any], addr: Address) -> Any:
            order.append("handler")
            return handler(q, a, addr)

        h.proto.handle_query = recording
        h.receive(ping_query(A))
        self.assertEqual(order, ["seen", "handler"])

    def test_only_valid_foreign_ids(self) -> None:
        h = Harness(result={})
        h.receive(ping_query(B))
        h.receive(b"d1:ad2:id3:abce1:q4:ping1:t2:aa1:y1:qe")  # short id: answered, not seen
        h.receive(ping_query(A))  # our own id
        h.receive(b"d1:ade1:q4:ping1:t2:aa1:y1:qe")  # no id: answered
        h.receive(b"d1:ad2:idi5ee1:q4:ping1:t2:aa1:y1:qe")  # int id: answered
        self.assertEqual(h.seen, [(B, PEER)])
        self.assertEqual(len(h.written), 5)

    def test_responses(self) -> None:
        h = Harness()
        d = h.proto.query(PEER, "ping", {})
        h.reply(T1, {"id": B})
        self.successResultOf(d)
        h.reply(b"\x00\x09", {"id": C}, ("10.9.9.9", 1))  # unsolicited
        h.reply(b"\x00\x09", {"id": b"short"})
        h.receive(encode_error(b"\x00\x09", 201, "x"))
        self.assertEqual(h.seen, [(B, PEER), (C, ("10.9.9.9", 1))])

    def test_unexpected_node_still_seen(self) -> None:
        h = Harness()
        d = h.proto.query(PEER, "ping", {}, node_id=B)
        h.reply(T1, {"id": C})
        self.failureResultOf(d, KRPCUnexpectedNode)
        self.assertEqual(h.seen, [(C, PEER)])

    def test_callback_error_does_not_escape(self) -> None:
        h = Harness(result={})

        def boom(node_id: bytes, addr: Address) -> None:
            raise RuntimeError("boom")

        h.proto.on_node_seen = boom
        h.receive(ping_query(B))
        self.assertEqual(len(h.written), 1)  # still answered
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


# --- robustness ----------------------------------------------------------------------------


GARBAGE = [
    b"",
    b"\x00\xff\x13garbage",
    b"d1:ad2:id20:" + B,  # truncated
    b"d1:ad2:id20:" + B + b"e1:q4:ping1:t2:aa1:y1:q",  # missing final e
    b"i1e",
    b"le",
    b"4:spam",
    b"d1:t2:aa1:y1:qe",  # y=q without q
    b"d1:a4:spam1:q4:ping1:t2:aa1:y1:qe",  # a not a dict
    b"d1:ai1e1:q4:ping1:t2:aa1:y1:qe",
    b"d1:ad2:id20:" + B + b"e1:qi1e1:t2:aa1:y1:qe",  # int q
    b"d1:ade1:q4:ping1:ti7e1:y1:qe",  # int t
    b"d1:ade1:q4:ping1:y1:qe",  # no t
    b"d1:ade1:q4:ping1:t2:aa1:y1:xe",  # unknown y
    b"d1:ade1:q4:ping1:t2:aae",  # no y
    b"d1:ade1:q4:ping1:t2:aa1:yi1ee",  # int y
    b"d1:rd2:id20:" + B + b"e1:tle1:y1:re",  # list t on a response
    b"l" * 5000 + b"e" * 5000,
    b"d" * 3000,
    b"i99999999999999999999999999999999999999e",
]


class RobustnessTests(SynchronousTestCase):
    def test_garbage_dropped(self) -> None:
        """Garbage is dropped and counted per reason; a query whose ``a`` is no dictionary
        is refused with 203 (it has a ``t`` to answer to); nothing reaches the handler."""
        h = Harness(result={})
        d = h.proto.query(PEER, "ping", {})
        for data in GARBAGE:
            h.receive(data)
        self.assertEqual(h.handler.calls, [])
        errors = [bencode2.bdecode(data) for data, _ in h.written[1:]]
        self.assertEqual([e[b"e"] for e in errors], [[203, b"query without an `a` dictionary"]] * 2)
        self.assertNoResult(d)
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(h.proto.received, {"dropped": len(GARBAGE) - 2, "refused": 2})
        self.assertEqual(sum(h.proto.dropped.values()), len(GARBAGE) - 2)
        self.assertEqual(h.proto.refused, {203: 2})
        self.assertEqual(h.proto.dropped["undecodable"], 6)

    def test_drops_are_reported_once_per_window_with_counts(self) -> None:
        events: list[dict[str, Any]] = []
        h = Harness(result={})
        h.proto.log = Logger(observer=events.append)
        h.proto.drops._log = h.proto.log
        for _ in range(1000):
            h.receive(b"garbage")
        h.clock.advance(59)
        h.receive(b"garbage")
        self.assertEqual(len(events), 1)  # the first one, at once
        h.clock.advance(1)
        h.receive(b"garbage")
        h.receive(b"le")
        self.assertEqual(len(events), 3)
        self.assertEqual(
            [(e["reason"], e["number"], e["total"]) for e in events],
            [("undecodable", 1, 1), ("undecodable", 1001, 1002), ("not a dictionary", 1, 1)],
        )
        self.assertIn("1001 datagram(s) dropped or refused: undecodable", formatEvent(events[1]))
        self.assertEqual(h.proto.dropped, {"undecodable": 1002, "not a dictionary": 1})

    def test_queued_query_to_a_down_address_is_not_sent(self) -> None:
        down: set[Address] = set()
        answered: list[Address] = []
        h = Harness(concurrency=1, skip_queued=down.__contains__, on_answer=answered.append)
        first = h.proto.query(PEER, "ping", {})
        queued = h.proto.query(PEER, "ping", {})
        other = h.proto.query(("10.0.0.9", 1), "ping", {})
        down.add(PEER)
        h.reply(T1, {"id": B})
        self.assertEqual(answered, [PEER])
        self.successResultOf(first)
        self.failureResultOf(queued, KRPCTimeout)
        self.assertEqual([addr for _, addr in h.written], [PEER, ("10.0.0.9", 1)])
        self.assertNoResult(other)

    def test_late_responses_are_reported_at_debug_level(self) -> None:
        events: list[dict[str, Any]] = []
        h = Harness(result={})
        h.proto.drops._log = Logger(observer=events.append)
        h.reply(T1, {"id": B})
        self.assertEqual([e["log_level"] for e in events], [LogLevel.debug])
        self.assertEqual(h.proto.dropped, {"late or unexpected response": 1})

    def test_query_rate_limit_per_source(self) -> None:
        clock = Clock()
        limiter = QueryRateLimiter(clock.seconds, rate=10, burst=20)
        h = Harness(result={}, rate_limiter=limiter)
        h.clock = clock
        h.proto.clock = clock
        public, other = ("1.2.3.4", 6881), ("5.6.7.8", 6881)
        for _ in range(50):
            h.receive(ping_query(B), public)
        h.receive(ping_query(B), other)
        self.assertEqual(len(h.written), 21)  # a burst of 20, and the other source
        self.assertEqual(h.proto.dropped, {"query rate limit": 30})
        clock.advance(1)  # 10 more tokens
        for _ in range(50):
            h.receive(ping_query(B), public)
        self.assertEqual(len(h.written), 31)
        for _ in range(100):
            h.receive(ping_query(B), ("127.0.0.1", 20002))  # loopback: exempt
            h.receive(ping_query(B), ("10.1.2.3", 20002))  # private: exempt
        self.assertEqual(len(h.written), 231)

    def test_port_zero_source_dropped(self) -> None:
        h = Harness(result={})
        h.receive(ping_query(B), ("10.0.0.2", 0))
        self.assertEqual(h.written, [])

    def test_handler_none_sends_nothing(self) -> None:
        h = Harness(result=None)
        h.receive(b"d1:ad2:id20:" + B + b"e1:q17:sample_infohashes1:t2:aa1:y1:qe")
        self.assertEqual(h.handler.calls[0][0], "sample_infohashes")
        self.assertEqual(h.written, [])
        self.assertEqual(h.proto.dropped, {"no reply (sample_infohashes)": 1})

    def test_handler_exception_logged_not_raised(self) -> None:
        h = Harness(result=RuntimeError("handler bug"), raises=True)
        h.receive(ping_query(B))
        self.assertEqual(h.written, [])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_bad_handler_results(self) -> None:
        h = Harness(result={"f": 1.5})
        h.receive(ping_query(B))
        h.handler.result = "not a dict"
        h.receive(ping_query(B))
        self.assertEqual(h.written, [])
        self.flushLoggedErrors()

    def test_lenient_decoding(self) -> None:
        """Like Node's decoder: unsorted keys, duplicates, leading zeros and trailing bytes."""
        h = Harness(result={})
        h.receive(b"d1:y1:q1:t2:aa1:q4:ping1:ad2:id20:" + B + b"ee")
        h.receive(ping_query(B) + b"trailing")
        h.receive(b"d1:ad2:id020:" + B + b"e1:q4:ping1:q4:ping1:t2:aa1:y1:qe")
        self.assertEqual(len(h.written), 3)
        self.assertEqual([c[1] for c in h.handler.calls], [{"id": B}] * 3)

    def test_write_errors_are_not_fatal(self) -> None:
        class Failing(FakeDatagramTransport):
            def write(self, packet: bytes, addr: Any = None) -> None:
                raise MessageLengthError("message too long")

        clock = Clock()
        proto = KRPCProtocol(A, clock, Handler({}))
        proto.makeConnection(Failing())
        proto.datagramReceived(ping_query(B), PEER)  # reply fails, logged
        d = proto.query(PEER, "ping", {})  # send fails: left to time out, as in Node
        self.assertEqual(proto.in_flight, 1)
        clock.advance(2.5)
        self.failureResultOf(d, KRPCTimeout)

    def test_non_ascii_keys_and_names(self) -> None:
        h = Harness(result=None)
        h.receive(b"d1:ad2:\xffk1:ve1:q3:\xe2\x82\xac1:t0:1:y1:qe")
        self.assertEqual(h.handler.calls, [("\u20ac", {"\ufffdk": b"v"}, PEER)])


# --- properties ----------------------------------------------------------------------------

_leaf = st.one_of(st.binary(max_size=40), st.integers(min_value=-(2**70), max_value=2**70))
_values = st.recursive(
    _leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.binary(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_key = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12).filter(
    lambda k: k not in ("target", "info_hash")
)
_args = st.dictionaries(_key, _values, max_size=6)
_field = st.sampled_from([b"a", b"q", b"t", b"y", b"r", b"e", b"id", b"v"])
_messages = st.dictionaries(
    _field,
    st.one_of(_values, st.sampled_from([b"q", b"r", b"e", b"ping", b"\x00\x01"])),
    max_size=5,
)


class PropertyTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.binary(max_size=300))
    def test_arbitrary_bytes_never_raise(self, data: bytes) -> None:
        h = Harness(result={})
        ignore(h.proto.query(PEER, "ping", {}))
        h.receive(data)
        h.receive(b"d" + data)
        self.assertEqual(self.flushLoggedErrors(), [])

    @settings(max_examples=300, deadline=None)
    @given(_messages)
    def test_arbitrary_messages_never_raise(self, message: dict[bytes, Any]) -> None:
        h = Harness(result={})
        ignore(h.proto.query(PEER, "ping", {}))
        h.receive(bencode2.bencode(message))
        self.assertEqual(self.flushLoggedErrors(), [])

    @settings(max_examples=300, deadline=None)
    @given(
        _args,
        st.text(st.characters(blacklist_categories=("Cs",)), max_size=20),
        st.binary(max_size=6),
        st.one_of(st.none(), st.binary(max_size=30)),
    )
    def test_query_round_trip(
        self, args: dict[str, Any], q: str, t: bytes, target: bytes | None
    ) -> None:
        a = {"id": C, **args}
        if target is not None:
            a["target"] = target
        h = Harness(result={})
        h.receive(encode_query(t, q, a))
        self.assertEqual(h.handler.calls, [(q, a, PEER)])
        ((data, _),) = h.written
        self.assertEqual(decode_message(data)[b"t"], t)

    @settings(max_examples=100, deadline=None)
    @given(_args)
    def test_query_to_response_round_trip(self, args: dict[str, Any]) -> None:
        """query() on one protocol, served by another, answered back to the first."""
        client, server = Harness(node_id=A), Harness(node_id=B, result=dict(args))
        d = client.proto.query(PEER, "echo", args)
        ((data, _),) = client.written
        server.receive(data, ("10.0.0.1", 1))
        self.assertEqual(server.handler.calls, [("echo", {"id": A, **args}, ("10.0.0.1", 1))])
        ((reply, _),) = server.written
        client.receive(reply)
        self.assertEqual(self.successResultOf(d).r, {"id": B, **args})


# --- real sockets ---------------------------------------------------------------------------


class LoopbackTests(TestCase):
    """Two protocols on real UDP sockets (127.0.0.1, ports chosen by the OS)."""

    def listen(self, proto: KRPCProtocol) -> int:
        from twisted.internet import reactor

        port = reactor.listenUDP(0, proto, interface="127.0.0.1", maxPacketSize=65535)
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)

    @inlineCallbacks
    def test_ping_each_other(self) -> Any:
        from twisted.internet import reactor

        seen: list[tuple[bytes, Address]] = []
        big_nodes = (C + b"\x7f\x00\x00\x01N!") * 400  # 10,400 bytes: beyond the 8 KiB default

        def handler(q: str, a: dict[str, Any], addr: Address) -> dict[str, Any] | None:
            if q == "ping":
                return {}
            if q == "find_node":
                return {"nodes": big_nodes}
            return None

        one = KRPCProtocol(A, reactor, handler, on_node_seen=lambda i, a: seen.append((i, a)))
        two = KRPCProtocol(B, reactor, handler, on_node_seen=lambda i, a: seen.append((i, a)))
        port_one = self.listen(one)
        port_two = self.listen(two)

        response = yield one.query(("127.0.0.1", port_two), "ping", {}, node_id=B)
        self.assertEqual(response, Response({"id": B}, ("127.0.0.1", port_two)))
        response = yield two.query(("127.0.0.1", port_one), "find_node", {"target": B})
        self.assertEqual(response.r, {"id": A, "nodes": big_nodes})
        self.assertEqual(
            seen,
            [
                (A, ("127.0.0.1", port_one)),
                (B, ("127.0.0.1", port_two)),
                (B, ("127.0.0.1", port_two)),
                (A, ("127.0.0.1", port_one)),
            ],
        )
        self.assertEqual((one.in_flight, two.in_flight), (0, 0))
