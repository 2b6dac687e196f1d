"""Generated hostile datagrams against a live DHT node on the in-memory network.

:func:`run_fuzz` is shared by ``tests/test_dht_fuzz.py`` (a few thousand datagrams, in CI) and
``bench/dht_fuzz.py`` (the big run). The node under test has a live neighbour and looks up
keys through it while it is fuzzed, and a probe checks between batches that valid queries are
still answered. Every datagram the node receives must end in exactly one counted outcome.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import attrs
import bencode2
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock

from grenache.dht.node import DHTConfig, DHTNode
from tests.dhtnet import FakeNetwork

__all__ = ["FuzzResult", "hostile_datagram", "run_fuzz"]

_QUERIES = [b"ping", b"find_node", b"get_peers", b"announce_peer", b"get", b"put"]
_ODD_QUERIES = [b"sample_infohashes", b"", b"\xff\xfe", b"PING", b"x" * 300]
_KEYS = [
    b"id",
    b"target",
    b"info_hash",
    b"token",
    b"port",
    b"implied_port",
    b"v",
    b"k",
    b"sig",
    b"seq",
    b"salt",
    b"cas",
    b"nodes",
    b"values",
    b"want",
]
_LENGTHS = [0, 1, 2, 6, 19, 20, 21, 26, 32, 63, 64, 65, 999, 1000, 1001, 1500]
_INTS = [0, 1, -1, 6881, 65535, 65536, 2**31, 2**63, -(2**70), 10**30]

TokenFor = Callable[[str], bytes]


def _value(rng: random.Random, depth: int = 0) -> Any:
    r = rng.random()
    if r < 0.35:
        return rng.randbytes(rng.choice(_LENGTHS) if rng.random() < 0.7 else rng.randint(0, 80))
    if r < 0.55:
        return rng.choice(_INTS) if rng.random() < 0.6 else rng.randint(-1000, 100000)
    if r < 0.7 and depth < 4:
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 6))]
    if r < 0.85 and depth < 4:
        return {rng.choice(_KEYS): _value(rng, depth + 1) for _ in range(rng.randint(0, 5))}
    return rng.randbytes(rng.randint(0, 40))


def _args(rng: random.Random, ip: str, token_for: TokenFor) -> dict[bytes, Any]:
    args: dict[bytes, Any] = {}
    if rng.random() < 0.85:
        args[b"id"] = rng.randbytes(20)
    for key in rng.sample(_KEYS, rng.randint(0, 6)):
        args[key] = _value(rng)
    if rng.random() < 0.4:
        args[b"target"] = rng.randbytes(20)
    if rng.random() < 0.3:
        args[b"token"] = token_for(ip)  # a valid token: the store paths run too
    return args


def hostile_datagram(rng: random.Random, ip: str, token_for: TokenFor) -> bytes:
    """One datagram: random bytes, a mutated message, or a well-formed message whose fields
    have random types and sizes (``token_for(ip)`` gives valid tokens now and then)."""
    r = rng.random()
    if r < 0.1:
        return rng.randbytes(rng.randint(0, 300))
    if r > 0.75:
        return _valid_query(rng, ip, token_for)
    message: dict[bytes, Any] = {}
    if rng.random() < 0.95:
        message[b"t"] = rng.choice([b"", b"\x00\x01", rng.randbytes(2), rng.randbytes(5), 7])
    y = rng.choice([b"q"] * 6 + [b"r", b"e", b"x", 5])
    if rng.random() < 0.97:
        message[b"y"] = y
    if y == b"q" or rng.random() < 0.1:
        if rng.random() < 0.97:
            message[b"q"] = rng.choice(_QUERIES if rng.random() < 0.9 else _ODD_QUERIES)
        message[b"a"] = _args(rng, ip, token_for) if rng.random() < 0.95 else _value(rng)
    elif y == b"r":
        message[b"r"] = _args(rng, ip, token_for) if rng.random() < 0.9 else _value(rng)
    else:
        message[b"e"] = _value(rng)
    data = bencode2.bencode(message)
    if 0.1 <= r < 0.3 and data:
        data = _mutate(rng, data)
    return data


def _valid_query(rng: random.Random, ip: str, token_for: TokenFor) -> bytes:
    """A query a well-behaved node could send (with its own made-up id)."""
    q = rng.choice(_QUERIES)
    a: dict[bytes, Any] = {b"id": rng.randbytes(20)}
    key = rng.choice([b"svc", b"x", rng.randbytes(20), rng.randbytes(rng.randint(0, 40))])
    if q in (b"find_node", b"get"):
        a[b"target"] = rng.randbytes(20)
    elif q == b"get_peers":
        a[b"info_hash"] = key
    elif q == b"announce_peer":
        a.update({b"info_hash": key, b"port": rng.randint(1, 65535), b"token": token_for(ip)})
    elif q == b"put":
        a.update({b"v": rng.randbytes(rng.randint(0, 1000)), b"token": token_for(ip)})
    return bencode2.bencode({b"a": a, b"q": q, b"t": rng.randbytes(2), b"y": b"q"})


def _mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.random()
        i = rng.randrange(len(buf)) if buf else 0
        if op < 0.4 and buf:
            buf[i] = rng.randrange(256)
        elif op < 0.6:
            del buf[i:]
        elif op < 0.8:
            buf[i:i] = rng.choice([b"e", b"d", b"l", b"i", b":", b"9999:", b"i-0e", b"0:"])
        else:
            buf[i:i] = buf[i : i + rng.randint(1, 20)]
    return bytes(buf)


class _Probe(DatagramProtocol):
    def __init__(self) -> None:
        self.replies: dict[bytes, dict[bytes, Any]] = {}

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        message = bencode2.bdecode(data)
        self.replies[message[b"t"]] = message


@attrs.define
class FuzzResult:
    """What a fuzz run did and what the node counted."""

    datagrams: int
    """Hostile datagrams sent."""
    delivered: int
    """Datagrams the node received in all (hostile ones, the probe's and its neighbour's)."""
    received: Counter[str]
    dropped: Counter[str]
    refused: Counter[int]
    probes: int
    probes_answered: int
    lookups: int
    lookups_done: int
    routing: int
    sources_tracked: int


def run_fuzz(count: int, seed: int = 0, batch: int = 50) -> FuzzResult:
    """Send ``count`` generated datagrams to a live node; see the module docstring."""
    rng = random.Random(seed)
    clock = Clock()
    net = FakeNetwork(clock)
    node = DHTNode(DHTConfig(), clock, node_id=b"N" * 20, rng=random.Random(seed))
    neighbour = DHTNode(
        DHTConfig(bootstrap=(("127.0.0.1", 20001),)), clock, node_id=b"M" * 20, rng=random.Random(1)
    )
    net.attach(node.krpc, port=20001)
    net.attach(neighbour.krpc, port=20002)
    node.start()
    neighbour.start()
    probe = _Probe()
    probe_port = net.attach(probe, port=29999)
    net.settle()
    sources = [("127.0.0.1", p) for p in range(30000, 30040)]
    sources += [(f"8.8.{i}.{j}", 6881 + j) for i in range(4) for j in range(10)]
    sources += [("10.0.0.7", 7000), ("192.168.3.3", 7000)]
    probes = answered = lookups = 0
    lookups_done: list[object] = []
    dest = ("127.0.0.1", node.port)
    try:
        sent = 0
        while sent < count:
            for _ in range(min(batch, count - sent)):
                source = rng.choice(sources)
                net.send(source, dest, hostile_datagram(rng, source[0], node.tokens.token))
                sent += 1
            clock.advance(0.01)
            net.settle()
            # Valid queries are still answered, and the node still walks the DHT.
            probes += 1
            tid = probes.to_bytes(4, "big")
            ping = {b"a": {b"id": b"P" * 20}, b"q": b"ping", b"t": tid, b"y": b"q"}
            probe.transport.write(bencode2.bencode(ping), dest)  # type: ignore[union-attr]
            if probes % 5 == 0:
                lookups += 1
                node.lookup(b"svc:%d" % lookups).addBoth(lookups_done.append)
            net.settle()
            if tid in probe.replies and b"r" in probe.replies.pop(tid):
                answered += 1
        net.run(120)  # lookups that asked made-up contacts wait for their timeouts
    finally:
        node.stop()
        neighbour.stop()
    delivered = sum(1 for _, to, _ in net.sent if to == dest)
    del probe_port
    limiter = node.krpc.rate_limiter
    return FuzzResult(
        datagrams=count,
        delivered=delivered,
        received=node.krpc.received,
        dropped=node.krpc.dropped,
        refused=node.krpc.refused,
        probes=probes,
        probes_answered=answered,
        lookups=lookups,
        lookups_done=len(lookups_done),
        routing=len(node.routing),
        sources_tracked=0 if limiter is None else len(limiter),
    )
