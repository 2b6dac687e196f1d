"""The scale simulation: many real grapes in one process, on one event clock.

What runs is the project's own code: every grape is a :class:`~grenache.testing.MemoryGrape`
(a real :class:`~grenache.dht.node.DHTNode` with the real grape HTTP API), announces and
lookups go through a real :class:`~grenache.link.Link`, and the DHT nodes exchange real KRPC
datagrams (bencoded, decoded, rate-checked) over an in-memory UDP network. Only two things are
the simulation's own:

- :class:`EventClock`, an ``IReactorTime`` on a heap: ``twisted.internet.task.Clock`` keeps
  its calls in a sorted list (an insertion and a ``pop(0)`` per call), which is fine for a
  test and too slow for the million datagrams of a 10,000-grape network.
- :class:`LatencyUDPNetwork`, the in-memory UDP network of :mod:`grenache.testing.udp` with a
  one-way delay per datagram (drawn from a seeded generator), counters instead of a record of
  every datagram, and a count of datagrams in flight, so that "the network is quiet" can be
  known without scanning the clock.

Each lookup is traced by wrapping the looking node's ``krpc.query`` (:class:`LookupTracer`),
without changing the DHT code: every ``get_peers`` the walk sends is counted, and each contact
gets a *hop* number, 1 for the contacts the walk starts from (the looker's routing table) and
``h + 1`` for a contact first learned from the ``nodes`` of a hop-``h`` reply. The hop of the
first reply that carries the announced peer is the lookup's hop count (what Kademlia's
``O(log n)`` bound is about); the deepest hop queried is the walk's depth.
"""

from __future__ import annotations

import heapq
import itertools
import math
import os
import random
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs
from twisted.internet.base import DelayedCall
from twisted.internet.defer import Deferred

from grenache.dht.krpc import Address
from grenache.dht.lookup import decode_nodes
from grenache.dht.node import DHTNode
from grenache.link import Link
from grenache.testing import MemoryGrape, MemoryNetwork
from grenache.testing.udp import MemoryUDPNetwork, UDPAddress

__all__ = [
    "EventClock",
    "LatencyUDPNetwork",
    "LookupTrace",
    "LookupTracer",
    "ScaleNetwork",
    "Stats",
    "log2_fit",
    "rss_mb",
]


class EventClock:
    """A simulated ``IReactorTime`` whose calls wait in a heap; time moves only by
    :meth:`step` (to the next call) or :meth:`advance`.

    The calls are Twisted's own :class:`~twisted.internet.base.DelayedCall`, so cancel, reset
    and ``active()`` behave as on a reactor; a cancelled or moved call stays in the heap and is
    skipped when it comes up.
    """

    def __init__(self) -> None:
        self._now = 0.0
        self._heap: list[tuple[float, int, DelayedCall]] = []
        self._order = itertools.count()
        #: Calls run so far (how much work the simulation did).
        self.calls_run = 0

    def seconds(self) -> float:
        """The simulated time, in seconds from the start."""
        return self._now

    def callLater(self, delay: float, f: Callable[..., Any], *args: Any, **kw: Any) -> DelayedCall:
        """Run ``f(*args, **kw)`` ``delay`` simulated seconds from now."""
        call = DelayedCall(
            self._now + max(0.0, delay), f, args, kw, self._cancel, self._moved, self.seconds
        )
        heapq.heappush(self._heap, (call.time, next(self._order), call))
        return call

    def _cancel(self, call: DelayedCall) -> None:
        """Nothing to do: a cancelled call is dropped when it reaches the top of the heap."""

    def _moved(self, call: DelayedCall) -> None:
        heapq.heappush(self._heap, (call.time, next(self._order), call))

    def getDelayedCalls(self) -> list[DelayedCall]:
        """The calls still to run (cancelled and already-run ones left out)."""
        return [c for t, _, c in self._heap if c.active() and c.time == t]

    def next_time(self) -> float | None:
        """When the next live call is due (None: nothing is scheduled)."""
        heap = self._heap
        while heap:
            when, _, call = heap[0]
            if call.cancelled or call.called or call.time != when:
                heapq.heappop(heap)
                continue
            if call.delayed_time:
                # Reset to a later time: Twisted's reactors move the call when it comes up.
                heapq.heappop(heap)
                call.activate_delay()
                heapq.heappush(heap, (call.time, next(self._order), call))
                continue
            return when
        return None

    def step(self) -> bool:
        """Run the next call (moving time to it); False when nothing is scheduled."""
        when = self.next_time()
        if when is None:
            return False
        _, _, call = heapq.heappop(self._heap)
        self._now = max(self._now, when)
        call.called = 1
        self.calls_run += 1
        call.func(*call.args, **call.kw)
        return True

    def advance(self, amount: float) -> None:
        """Run every call due within ``amount`` seconds, then set the time to now + amount."""
        until = self._now + amount
        while True:
            when = self.next_time()
            if when is None or when > until:
                break
            self.step()
        self._now = until


class LatencyUDPNetwork(MemoryUDPNetwork):
    """:class:`~grenache.testing.MemoryUDPNetwork` with a one-way delay per datagram.

    ``latency`` is ``(low, high)`` seconds: each datagram takes a delay drawn uniformly from it
    (``rng`` seeded for repeatable runs). Datagrams are counted (:attr:`datagrams`, and per
    message kind in :attr:`kinds`), not recorded, and :attr:`in_flight` counts those not yet
    delivered. While :attr:`hold` is set, :meth:`settle` does nothing, so that
    :meth:`MemoryNetwork.grape <grenache.testing.MemoryNetwork.grape>` can start many grapes
    before any datagram moves (grapes booting together, as a cluster does).
    """

    def __init__(self, clock: EventClock, latency: tuple[float, float], rng: random.Random) -> None:
        super().__init__(clock)  # type: ignore[arg-type]
        self.event_clock = clock
        self.latency = latency
        self.rng = rng
        self.datagrams = 0
        self.in_flight = 0
        self.hold = False

    def send(self, source: UDPAddress, dest: UDPAddress, data: bytes) -> None:
        """Deliver ``data`` to ``dest`` after a random one-way delay."""
        self.datagrams += 1
        self.in_flight += 1
        low, high = self.latency
        delay = low if high <= low else self.rng.uniform(low, high)
        self.clock.callLater(delay, self._arrive, source, dest, data)

    def _arrive(self, source: UDPAddress, dest: UDPAddress, data: bytes) -> None:
        self.in_flight -= 1
        self._deliver(source, dest, data)

    def settle(self, limit: int = 0) -> None:
        """Run the clock until no datagram is in flight (a no-op while :attr:`hold` is set)."""
        if self.hold:
            return
        while self.in_flight and self.event_clock.step():
            pass

    def run(self, seconds: float, step: float = 0.5) -> None:
        """Let ``seconds`` of simulated time pass."""
        self.event_clock.advance(seconds)


@attrs.define
class LookupTrace:
    """What one lookup cost: ``queries`` (get_peers sent by the walk), ``answered`` (replies),
    ``hops`` (hop of the first reply carrying a peer; None if none did), ``depth`` (deepest hop
    queried), ``datagrams`` (every datagram sent on the network from the lookup's start until
    its answer: queries, replies and any pings they caused, not the traffic that follows once
    the answer is in), ``sim_time`` (simulated seconds), ``started`` (simulated time it began)
    and ``found`` (the answer held the announced peer)."""

    queries: int = 0
    answered: int = 0
    hops: int | None = None
    depth: int = 0
    datagrams: int = 0
    sim_time: float = 0.0
    found: bool = False
    started: float = 0.0
    hop_of: dict[Address, int] = attrs.field(factory=dict, repr=False)


class LookupTracer:
    """Traces the walks of the lookups started through :meth:`trace` on one node, by
    wrapping ``node.krpc.query`` (an instance attribute: the DHT code is unchanged)."""

    def __init__(self, node: DHTNode) -> None:
        self.node = node
        self.active: dict[bytes, LookupTrace] = {}
        self._query = node.krpc.query
        node.krpc.query = self._traced  # type: ignore[method-assign]

    def trace(self, key: bytes) -> LookupTrace:
        """Start tracing the walks for ``key`` (until :meth:`done`)."""
        trace = self.active[key] = LookupTrace()
        return trace

    def done(self, key: bytes) -> None:
        """Stop tracing ``key``."""
        self.active.pop(key, None)

    def _traced(
        self,
        addr: Address,
        q: str,
        args: dict[str, Any],
        node_id: bytes | None = None,
        background: bool = False,
    ) -> Deferred[Any]:
        d = self._query(addr, q, args, node_id=node_id, background=background)
        trace = self.active.get(args.get("info_hash")) if q == "get_peers" else None  # type: ignore[arg-type]
        if trace is None:
            return d
        hop = trace.hop_of.setdefault(addr, 1)
        trace.queries += 1
        trace.depth = max(trace.depth, hop)

        def answered(response: Any) -> Any:
            trace.answered += 1
            for _, learned in decode_nodes(response.r.get("nodes")):
                trace.hop_of.setdefault(learned, hop + 1)
            values = response.r.get("values")
            if trace.hops is None and isinstance(values, list) and values:
                trace.hops = hop
            return response

        # Added before the walk's own callbacks: hops are known before it sends the next ones.
        d.addCallback(answered)
        return d


@attrs.frozen
class Stats:
    """Mean, median, 95th percentile and maximum of a sample."""

    mean: float
    p50: float
    p95: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Stats:
        """The statistics of ``values`` (all zero for an empty sample)."""
        if not values:
            return cls(0.0, 0.0, 0.0, 0.0)
        ordered = sorted(values)
        p95 = ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]
        return cls(statistics.fmean(ordered), statistics.median(ordered), p95, ordered[-1])

    def as_dict(self) -> dict[str, float]:
        """``{"mean", "p50", "p95", "max"}``, rounded for a report."""
        return {k: round(v, 3) for k, v in attrs.asdict(self).items()}


def log2_fit(ns: Sequence[int], ys: Sequence[float]) -> dict[str, float]:
    """Least-squares fit ``y = a + b * log2(n)``: ``{"a", "b", "r2"}``."""
    xs = [math.log2(n) for n in ns]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    b = sxy / sxx if sxx else 0.0
    a = my - b * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - (a + b * x)) ** 2 for x, y in zip(xs, ys, strict=True))
    r2 = 1 - ss_res / ss_tot if ss_tot else 1.0
    return {"a": round(a, 3), "b": round(b, 3), "r2": round(r2, 4)}


def rss_mb() -> float:
    """This process's resident memory now, in MB (0 where /proc is not there)."""
    try:
        with open(f"/proc/{os.getpid()}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class ScaleNetwork:
    """``n`` real grapes on one :class:`EventClock`: built, then announced to and looked up
    from, with each lookup traced.

    Grapes 0 and 1 are the seeds and grape 1 bootstraps from grape 0. With ``topology``
    ``"two-seeds"`` every other grape bootstraps from both (a deployment with two well-known
    grapes); with ``"node-suite"`` grape ``i`` bootstraps from grape ``(i + 1) % 2`` only, as
    the Node test suite's ``createGrapes`` does. Grapes start in batches of
    ``batch`` that boot together (their datagrams interleave); the next batch starts once the
    network is quiet. ``latency`` is the one-way delay range of a datagram, in seconds.
    """

    def __init__(
        self,
        n: int,
        *,
        seed: int = 1,
        latency: tuple[float, float] = (0.002, 0.020),
        batch: int = 100,
        node_timeout: float = 2.0,
        topology: str = "two-seeds",
    ) -> None:
        if n < 2:
            raise ValueError("a scale network needs at least 2 grapes")
        if topology not in ("two-seeds", "node-suite"):
            raise ValueError(f"unknown topology {topology!r}")
        self.n = n
        self.rng = random.Random(seed)
        self.clock = EventClock()
        self.network = MemoryNetwork(self.clock)  # type: ignore[arg-type]
        self.udp = LatencyUDPNetwork(self.clock, latency, random.Random(seed + 1))
        self.network.udp = self.udp
        self.batch = batch
        self.node_timeout = node_timeout
        self.topology = topology
        self.grapes: list[MemoryGrape] = []
        self._links: dict[int, Link] = {}
        self._tracers: dict[int, LookupTracer] = {}
        #: name -> port announced under it
        self.announced: dict[str, int] = {}
        #: name -> index of the grape that announces it
        self.announcer: dict[str, int] = {}
        #: simulated seconds between announce rounds, as a service's link re-announces
        self.announce_interval = 60.0
        self._announced_at = 0.0
        #: simulated and wall seconds the build took, and datagrams it sent
        self.build_sim_time = 0.0
        self.build_wall_time = 0.0
        self.build_datagrams = 0

    # --- building -------------------------------------------------------------------------

    def _new_grape(self, bootstrap: list[MemoryGrape]) -> MemoryGrape:
        node_id = self.rng.getrandbits(160).to_bytes(20, "big")
        return self.network.grape(bootstrap=bootstrap, node_id=node_id, timeout=self.node_timeout)

    def build(self) -> None:
        """Start every grape, batch by batch, and run until the network is quiet with every
        grape's first bootstrap walk done."""
        started_wall, started_sim = time.perf_counter(), self.clock.seconds()
        before = self.udp.datagrams
        order = range(self.n)
        for first in range(0, self.n, self.batch):
            self.udp.hold = True
            for i in order[first : first + self.batch]:
                self.grapes.append(self._new_grape(self._bootstrap_of(i)))
                if i < 2:
                    # Seeds come up one after the other: each finds the ones before it.
                    self.udp.hold = False
                    self.quiet()
                    self.udp.hold = True
            self.udp.hold = False
            self.quiet()
        self.build_sim_time = self.clock.seconds() - started_sim
        self.build_wall_time = time.perf_counter() - started_wall
        self.build_datagrams = self.udp.datagrams - before

    def _bootstrap_of(self, i: int) -> list[MemoryGrape]:
        if i < 2 or self.topology == "two-seeds":
            return self.grapes[: min(i, 2)]
        return [self.grapes[(i + 1) % 2]]

    def busy(self) -> bool:
        """Whether a datagram is in flight or a grape still waits for a reply (a walk, a
        timeout) or has not finished its first bootstrap."""
        if self.udp.in_flight:
            return True
        for grape in self.grapes:
            node = grape.node
            if node is not None and (node.krpc.in_flight or node.krpc.queued):
                return True
            if node is not None and not node.ready.called:
                return True
        return False

    def quiet(self, limit: float = 600.0) -> None:
        """Run the clock until nothing is in flight (at most ``limit`` simulated seconds)."""
        deadline = self.clock.seconds() + limit
        while True:
            while self.udp.in_flight and self.clock.step():
                pass
            if not self.busy() or self.clock.seconds() > deadline:
                return
            if not self.clock.step():
                return

    def run_until(self, d: Deferred[Any], limit: float = 60.0) -> Any:
        """Run the clock until ``d`` fires; its result (its failure raised)."""
        box: list[Any] = []
        d.addBoth(box.append)
        deadline = self.clock.seconds() + limit
        while not box and self.clock.seconds() <= deadline and self.clock.step():
            pass
        if not box:
            raise AssertionError(f"no result within {limit} simulated seconds")
        result = box[0]
        if hasattr(result, "raiseException"):
            result.raiseException()
        return result

    # --- links, announces, lookups --------------------------------------------------------

    def link(self, index: int) -> Link:
        """A link to grape ``index`` (no lookup cache: every lookup walks the DHT)."""
        link = self._links.get(index)
        if link is None:
            link = self._links[index] = self.network.link(
                self.grapes[index], lookup_cache_ttl=0, request_timeout=30
            )
        return link

    def announce(self, index: int, name: str, port: int) -> int:
        """Announce ``name`` at ``port`` through grape ``index``'s API; the number of nodes
        that stored it."""
        stored = int(self.run_until(self.link(index).announce(name, port, retry=1)))
        self.announced[name] = port
        self.announcer[name] = index
        if not self._announced_at:
            self._announced_at = self.clock.seconds()
        self.quiet()
        return stored

    def reannounce(self) -> None:
        """Announce every name again once :attr:`announce_interval` has passed since the last
        round, as services' links do (an announce lives 120 s): between lookups, so that
        their traffic is not counted as a lookup's."""
        now = self.clock.seconds()
        if not self.announced or now - self._announced_at < self.announce_interval:
            return
        self._announced_at = now
        for name, port in self.announced.items():
            self.run_until(self.link(self.announcer[name]).announce(name, port, retry=1))
        self.quiet()

    def lookup(self, index: int, name: str) -> LookupTrace:
        """Look ``name`` up through grape ``index``'s API, traced."""
        grape = self.grapes[index]
        assert grape.node is not None
        tracer = self._tracers.get(index)
        if tracer is None or tracer.node is not grape.node:
            tracer = self._tracers[index] = LookupTracer(grape.node)
        self.reannounce()
        key = name.encode("utf-8")
        trace = tracer.trace(key)
        trace.started = self.clock.seconds()
        before, started = self.udp.datagrams, self.clock.seconds()
        try:
            peers = self.run_until(self.link(index).lookup(name, cache=False, retry=1))
        except Exception:
            peers = []
        finally:
            tracer.done(key)
        trace.sim_time = self.clock.seconds() - started
        trace.datagrams = self.udp.datagrams - before
        self.quiet()
        trace.found = f"127.0.0.1:{self.announced.get(name)}" in peers
        return trace

    def routing_sizes(self) -> list[int]:
        """Each running grape's routing-table size."""
        return [len(g.node.routing) for g in self.grapes if g.node is not None]


def summarize(traces: Iterable[LookupTrace]) -> dict[str, Any]:
    """The report of a set of lookups: success count and statistics of each measure."""
    traces = list(traces)
    return {
        "lookups": len(traces),
        "found": sum(t.found for t in traces),
        "queries": Stats.of([t.queries for t in traces]).as_dict(),
        "datagrams": Stats.of([t.datagrams for t in traces]).as_dict(),
        "hops": Stats.of([t.hops for t in traces if t.hops is not None]).as_dict(),
        "depth": Stats.of([t.depth for t in traces]).as_dict(),
        "sim_ms": Stats.of([1000 * t.sim_time for t in traces]).as_dict(),
        "most_datagrams_at_sim_s": round(max(traces, key=lambda t: t.datagrams).started, 2)
        if traces
        else None,
    }
