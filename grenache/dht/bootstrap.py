"""Bootstrap: resolve the bootstrap nodes' names, walk from them, and say how it went.

Bootstrap nodes may be given by host name: they are resolved (IPv4: the DHT is IPv4-only, as
Node's) before every bootstrap walk, so a name that did not resolve at start is tried again on
the next retry. Each bootstrap logs which bootstrap nodes answered, and a node alone although
bootstrap nodes were given warns and bootstraps again (:meth:`Bootstrap.check_alone`, run by
the grape's maintenance timer). Log lines: docs/deploying.rst, *What a grape logs*.

After each bootstrap walk the node refreshes the ranges of its routing table that it has no
contact in although it knows at least K nodes closer to itself (Kademlia's join step, "refresh
every bucket further away than the closest neighbour"): one ``find_node`` walk towards a random
id of each such range, started from the bootstrap nodes. Without it a node can end up knowing
nobody in a whole half of the id space (nodes learn each other only from traffic, and a
Grenache network's traffic all goes to the few ranges its service names fall in), and a walk
from there ends on the closest nodes it can see, short of the key (docs/protocol.rst, *DHT
messages*). The walks are ordinary ``find_node`` queries, one walk at a time, in the background:
``ready`` does not wait for them.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from twisted.internet.abstract import isIPAddress
from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from grenache.dht.krpc import Address, KRPCProtocol, Response
from grenache.dht.lookup import NODE_ID_LENGTH, Walk
from grenache.dht.routing import Contact, K, KBucket, RoutingTable
from grenache.endpoints import join_host_port

if TYPE_CHECKING:
    from grenache.dht.node import DHTConfig, Resolve

#: The node's own log namespace (docs/deploying.rst, *What a grape logs*).
log = Logger(namespace="grenache.dht.node")

#: Refresh walks after one bootstrap, at most (one per empty range; a table has about
#: log2(n / K) ranges that can be empty while closer ones are known).
MAX_REFRESH_WALKS = 8


def empty_ranges(own: bytes, contacts: Iterable[Contact], k: int = K) -> list[int]:
    """The ranges of the id space worth refreshing: each ``d`` such that no contact shares
    exactly ``d`` leading bits with ``own`` while at least ``k`` contacts share more.

    A node that knows ``k`` nodes closer to itself than range ``d`` has a crowded
    neighbourhood, and range ``d`` (as large as that whole neighbourhood) should hold nodes too:
    an empty one is a blind spot, not an empty part of the network. Contacts whose ids are not
    20 bytes are ignored.
    """
    if len(own) != NODE_ID_LENGTH:
        return []
    mine = int.from_bytes(own, "big")
    bits = 8 * NODE_ID_LENGTH
    per_range = [0] * (bits + 1)
    for contact in contacts:
        if len(contact.id) == NODE_ID_LENGTH:
            per_range[bits - (mine ^ int.from_bytes(contact.id, "big")).bit_length()] += 1
    empty = []
    closer = sum(per_range[1:])
    for d in range(bits):
        if closer < k:
            break
        if per_range[d] == 0:
            empty.append(d)
        closer -= per_range[d + 1]
    return empty


def random_id_in_range(own: bytes, d: int, rng: random.Random) -> bytes:
    """A random 20-byte id sharing exactly ``d`` leading bits with ``own``."""
    bits = 8 * len(own)
    mine = int.from_bytes(own, "big")
    low = bits - d - 1
    prefix = (mine >> (low + 1)) << (low + 1)
    flipped = ((mine >> low) & 1) ^ 1
    value = prefix | (flipped << low) | rng.getrandbits(low)
    return value.to_bytes(len(own), "big")


class Bootstrap:
    """The bootstrap part of :class:`~grenache.dht.node.DHTNode` (a mixin on its state)."""

    config: DHTConfig
    node_id: bytes
    routing: RoutingTable
    _running: bool
    _resolve: Resolve | None
    _bootstrap_given: list[Address]
    _bootstrap_addresses: dict[Address, Address]
    _bootstrap_waiters: list[Deferred[int]] | None
    _rng: random.Random
    krpc: KRPCProtocol

    if TYPE_CHECKING:

        def is_down(self, addr: Address) -> bool: ...

        def _drop_timed_out(self, contact: Contact) -> None: ...

        def _walk(
            self,
            target: bytes,
            query: str,
            args: dict[str, Any],
            visit: Any = None,
            skip_down: bool = True,
        ) -> Walk: ...

    def bootstrap(self) -> Deferred[int]:
        """Resolve the bootstrap nodes' names, then walk ``find_node`` on our own id from them;
        fires (never fails) with the number of responders and logs the outcome.

        A call while a bootstrap is under way shares it.
        """
        waiter: Deferred[int] = Deferred()
        if self._bootstrap_waiters is not None:
            self._bootstrap_waiters.append(waiter)
            return waiter
        waiters = self._bootstrap_waiters = [waiter]

        def done(result: Any) -> None:
            self._bootstrap_waiters = None
            if isinstance(result, Failure):
                log.failure("bootstrap failed", result)
                result = 0
            for one in waiters:
                one.callback(result)

        self._resolve_bootstrap().addCallback(self._bootstrap_walk).addBoth(done)
        return waiter

    def _resolve_bootstrap(self) -> Deferred[None]:
        """Look up every bootstrap name again (addresses change); literals need no lookup."""
        names = [(h, p) for h, p in self._bootstrap_given if not isIPAddress(h)]
        if not names:
            return succeed(None)
        if self._resolve is None:
            for host, port in names:
                log.warn(
                    "bootstrap node {node} not resolved: no resolver",
                    node=join_host_port(host, port),
                )
            return succeed(None)
        resolve = self._resolve

        def one(host: str, port: int) -> Deferred[None]:
            try:
                d = resolve(host)
            except Exception:
                d = fail()

            def resolved(address: str) -> None:
                self._bootstrap_addresses[(host, port)] = (address, port)

            def failed(failure: Failure) -> None:
                self._bootstrap_addresses.pop((host, port), None)
                log.warn(
                    "bootstrap node {node} not resolved ({reason}); it is tried again on the "
                    "next bootstrap",
                    node=join_host_port(host, port),
                    reason=failure.getErrorMessage(),
                )

            return d.addCallbacks(resolved, failed)

        return DeferredList([one(h, p) for h, p in names]).addCallback(lambda _: None)

    def _bootstrap_walk(self, _: None) -> Deferred[int] | int:
        if not self._running:
            return 0
        addresses = self._bootstrap_addresses
        answered: set[Address] = set()

        def visit(response: Response) -> None:
            answered.add(response.addr)

        # Bootstrap nodes are asked even when down: this walk is how a lone grape finds them back.
        walk = self._walk(
            self.node_id, "find_node", {"target": self.node_id}, visit, skip_down=False
        )

        def finished(_: KBucket) -> int:
            if self._bootstrap_given:
                self._log_bootstrap(
                    [
                        (given, addresses[given])
                        for given in self._bootstrap_given
                        if addresses.get(given) in walk.queried
                    ],
                    answered,
                )
            self.refresh_ranges()
            return walk.responses

        return walk.run().addCallback(finished)

    def refresh_ranges(self) -> Deferred[int]:
        """Walk ``find_node`` towards a random id of every range :func:`empty_ranges` finds in
        the routing table, one walk after the other, each started from the bootstrap nodes
        (from the routing table when there are none, or when none answered); fires with the
        number of walks run (never fails). The bootstrap walk starts it, in the background."""
        done: Deferred[int] = Deferred()
        walked: set[int] = set()

        def next_walk(_: object = None) -> None:
            ranges = [d for d in empty_ranges(self.node_id, self.routing) if d not in walked]
            if not self._running or not ranges or len(walked) >= MAX_REFRESH_WALKS:
                done.callback(len(walked))
                return
            walked.add(ranges[0])
            target = random_id_in_range(self.node_id, ranges[0], self._rng)
            seeds = list(self._bootstrap_addresses.values())
            self._refresh_walk(target, seeds).addBoth(next_walk)

        next_walk()
        return done

    def _refresh_walk(self, target: bytes, seeds: list[Address]) -> Deferred[int]:
        """One refresh walk towards ``target``: from ``seeds`` (an empty table makes the walk
        start from its bootstrap list), then from the routing table if no seed answered."""

        def walk(start: KBucket, bootstrap: list[Address]) -> Deferred[int]:
            one = Walk(
                self.krpc,
                start,
                bootstrap,
                target,
                "find_node",
                {"target": target},
                on_timeout=self._drop_timed_out,
                concurrency=self.config.concurrency,
                skip=self.is_down,
            )
            return one.run().addCallback(lambda _: one.responses)

        def unanswered(responses: int) -> Deferred[int] | int:
            if responses or not seeds:
                return responses
            return walk(self.routing, [])

        if not seeds:
            return walk(self.routing, [])
        return walk(KBucket(target), seeds).addCallback(unanswered)

    def _log_bootstrap(
        self, queried: list[tuple[Address, Address]], answered: set[Address]
    ) -> None:
        """One line per bootstrap: which bootstrap nodes answered, which did not."""

        def name(given: Address, address: Address) -> str:
            text = join_host_port(*given)
            return text if given == address else f"{text} ({join_host_port(*address)})"

        good = [name(g, a) for g, a in queried if a in answered]
        bad = [name(g, a) for g, a in queried if a not in answered]
        if good:
            log.info(
                "bootstrap succeeded: {answered} answered{missing}; {neighbours} DHT neighbours",
                answered=", ".join(good),
                missing=f" (no answer from {', '.join(bad)})" if bad else "",
                neighbours=len(self.routing),
            )
        elif bad and len(self.routing):
            # Another node found us meanwhile (it bootstrapped from us): not alone.
            log.info(
                "bootstrap: no answer from {nodes}, but {neighbours} DHT neighbours known",
                nodes=", ".join(bad),
                neighbours=len(self.routing),
            )
        elif bad:
            log.warn("bootstrap failed: no answer from {nodes}", nodes=", ".join(bad))

    def check_alone(self) -> bool:
        """If bootstrap nodes were given but the node has no neighbour, warn and bootstrap again
        (names resolved anew). Returns whether a bootstrap was started. The grape runs this
        periodically; it never raises."""
        if not self._running or not self.config.bootstrap or len(self.routing) != 0:
            return False
        if self._bootstrap_waiters is not None:
            return False
        log.warn(
            "no DHT neighbours although bootstrap nodes were given ({nodes}): retrying bootstrap",
            nodes=", ".join(join_host_port(h, p) for h, p in self.config.bootstrap),
        )
        self.bootstrap()
        return True
