"""The DHT node: KRPC handlers, routing-table upkeep, announce / lookup / put / get.

It answers every query as a Node grape (bittorrent-dht 10.0.0) does and runs the same client
flows (docs/protocol.rst, *DHT messages* and *BEP 44 items*), with the project's own choices
(docs/protocol.rst, *Deliberate differences from Node.js*): documented defaults, ed25519
verification on by default, and a lone node that keeps its own announces and puts so that a
single grape is a working development network.

Bootstrap nodes may be given by host name: they are resolved (IPv4: the DHT is IPv4-only, as
Node's) before every bootstrap walk, so a name that did not resolve at start is tried again on
the next retry. The node logs what an operator needs: the outcome of each bootstrap, the number
of DHT neighbours when it changes materially, and a warning while it is alone although
bootstrap nodes were given (:meth:`DHTNode.check_alone`, run by the grape's maintenance timer).
"""

from __future__ import annotations

import functools
import math
import os
import random
from collections.abc import Callable
from typing import Any

import attrs
import bencode2
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from grenache.dht import bep44
from grenache.dht.events import Events
from grenache.dht.krpc import Address, KRPCProtocol, Response
from grenache.dht.limits import (
    DEFAULT_MAX_SOURCES,
    DEFAULT_QUERY_BURST,
    DEFAULT_QUERY_RATE,
    QueryRateLimiter,
)
from grenache.dht.lookup import (
    NODE_ID_LENGTH,
    Walk,
    decode_peer,
    encode_nodes,
    encode_peer,
    valid_node_id,
)
from grenache.dht.routing import MAX_CONTACTS_PER_IP, Contact, K, KBucket, RoutingTable
from grenache.dht.store import LRUCache, RecordCache, TokenSecrets
from grenache.endpoints import join_host_port
from grenache.errors import (
    AllQueriesFailed,
    DHTError,
    InvalidPut,
    KRPCError,
    NoNodesToQuery,
)

log = Logger()

Resolve = Callable[[str], "Deferred[str]"]
"""``resolve(name)``: a Deferred firing with an IPv4 address for the host name (the shape of
:meth:`IReactorCore.resolve <twisted.internet.interfaces.IReactorCore.resolve>`)."""

Verify = Callable[[bytes, bytes, bytes], bool]
"""``verify(signature, message, public_key)``: whether ``signature`` is ``public_key``'s
signature of ``message`` (the BEP 44 signature buffer), in the argument order of Node's
``verify`` option."""

TOKEN_TABLE_MAX_AGE = 300.0
LOOKUP_RESULT_LIMIT = 100
#: Contacts in a reply's ``nodes``: the K closest, as BEP 5 asks (Node sends its whole table).
REPLY_NODES_LIMIT = K
#: Peers in a reply's ``values``, sampled at random for each reply: with the K contacts of a
#: ``nodes`` reply this keeps every reply under 1,000 bytes, one unfragmented datagram and
#: at most about ten times the smallest query that asks for it.
REPLY_VALUES_LIMIT = 50
STALE_CONTACT_AGE = 10.0
PINGS_BEFORE_EVICT = 16
MAX_SALT_LENGTH = bep44.MAX_SALT_SIZE
#: Seconds a node that timed out is left out of walks and fan-outs before it is pinged again
#: (in the background); doubled at each further timeout, up to :data:`DOWN_RETRY_MAX`.
DOWN_RETRY = 15.0
DOWN_RETRY_MAX = 600.0
#: Consecutive timeouts after which a node leaves the routing table (a timeout in a walk
#: removes it at once, as Node does).
DOWN_EVICT_AFTER = 3
#: Addresses remembered as down; the oldest is forgotten past it.
MAX_DOWN_ADDRESSES = 1024
#: Pings to down addresses in flight at once, so that probing never takes the KRPC slots
#: that lookups need (a sender that queries us but never answers is probed at this pace).
MAX_PROBES = 4


@attrs.frozen
class DHTConfig:
    """What a DHT node is told at construction. Times are in seconds.

    ``host``, when set, is the address a node stores for its own announces, as Node's ``host``
    option does; an IPv6 address or a name is stored as text (``[::1]:1337``) and answered to
    this node's own lookups only, since compact DHT peers are IPv4. ``bootstrap`` entries are
    ``(host, port)`` where host is an IPv4 address or a name (resolved before each bootstrap
    walk); IPv6 ones are ignored with a warning. ``peer_max_age`` 0 means announced peers never
    expire (the Node 1.0.0 CLI's accidental default); the default is the documented 120 s.

    Limits against hostile senders (docs/protocol.rst, *DHT messages*): ``query_rate`` queries
    per second after a ``query_burst`` per public source IP (0: no limit), ``max_sources`` IPs
    tracked, ``max_contacts_per_ip`` routing-table contacts per public IP.

    ``verify`` checks mutable items' signatures instead of the built-in ed25519 check (see
    :data:`Verify`; Node's ``verify`` option). ``verify_mutable`` False refuses mutable items
    (BEP 44 error 400) and cannot be combined with a ``verify`` function.
    """

    bootstrap: tuple[Address, ...] = ()
    host: str | None = None
    peer_max_age: float = 120.0
    node_liveness: float = 300.0
    max_tables: int = 5000
    max_values: int = 5000
    max_peers: int = 10000
    verify_mutable: bool = True
    timeout: float = 2.0
    concurrency: int = 16
    query_rate: float = DEFAULT_QUERY_RATE
    query_burst: int = DEFAULT_QUERY_BURST
    max_sources: int = DEFAULT_MAX_SOURCES
    max_contacts_per_ip: int = MAX_CONTACTS_PER_IP
    verify: Verify | None = None

    def __attrs_post_init__(self) -> None:
        if self.verify is not None:
            if not callable(self.verify):
                raise ValueError("verify must be a function (signature, message, public_key)")
            if not self.verify_mutable:
                raise ValueError("verify_mutable=False refuses mutable items: give no verify")


@attrs.define
class _Down:
    """An address our queries timed out on: how often in a row, and when to ping it again."""

    failures: int = 0
    retry_at: float = 0.0
    probing: bool = False


@attrs.frozen
class GetResult:
    """A BEP 44 item found by :meth:`DHTNode.get` and who answered it.

    ``token`` is None when the item came from this node's own store.
    """

    responder: bytes
    token: bytes | None
    item: bep44.Item


@attrs.frozen
class PutResult:
    """The target hash of a put, and how many nodes (this one included) stored it."""

    key: bytes
    hits: int


class DHTNode:
    """A DHT node on one KRPC socket.

    ``krpc`` is the :class:`KRPCProtocol` to listen with (``reactor.listenUDP(port, node.krpc)``);
    :meth:`start` begins timers and the bootstrap walk, :meth:`stop` ends every timer.
    ``resolve`` turns bootstrap host names into IPv4 addresses; by default the ``clock``'s own
    ``resolve`` (a reactor has one), and names are then left unresolved when it has none.
    """

    def __init__(
        self,
        config: DHTConfig,
        clock: IReactorTime,
        node_id: bytes | None = None,
        rng: random.Random | None = None,
        resolve: Resolve | None = None,
    ) -> None:
        self.config = config
        self.clock: Any = clock  # zope interfaces confuse mypy's method binding
        self._seconds: Callable[[], float] = self.clock.seconds  # type: ignore[misc]
        self._resolve: Resolve | None = resolve or getattr(clock, "resolve", None)
        #: The bootstrap nodes as given (IPv4 literals and names), and their latest addresses.
        self._bootstrap_given = [
            (host, port) for host, port in config.bootstrap if not isIPv6Address(host.strip("[]"))
        ]
        self._bootstrap_ipv6 = [
            (host, port) for host, port in config.bootstrap if isIPv6Address(host.strip("[]"))
        ]
        self._bootstrap_addresses: dict[Address, Address] = {
            (host, port): (host, port) for host, port in self._bootstrap_given if isIPAddress(host)
        }
        self._bootstrap_waiters: list[Deferred[int]] | None = None
        self._reported_neighbours = 0
        self.node_id = node_id if node_id is not None else os.urandom(20)
        self._rng = rng or random.Random()
        #: Listeners of the grape's events (:mod:`grenache.dht.events`).
        self.events = Events()
        self._verify_failures = 0
        self.krpc = KRPCProtocol(
            self.node_id,
            clock,
            self._handle_query,
            self._node_seen,
            timeout=config.timeout,
            concurrency=config.concurrency,
            rate_limiter=QueryRateLimiter(
                self._seconds, config.query_rate, config.query_burst, config.max_sources
            ),
            on_timeout=self._timed_out,
            on_answer=self._answered,
            skip_queued=self._skip_queued,
        )
        self.krpc.on_drop = self._dropped
        self.routing = RoutingTable(self.node_id, max_per_ip=config.max_contacts_per_ip)
        #: Addresses whose last query timed out, left out of walks and fan-outs until they
        #: answer again (see :meth:`is_down`).
        self.down: dict[Address, _Down] = {}
        self._probes = 0
        self.peers = RecordCache(clock, config.peer_max_age, config.max_peers, rng=self._rng)
        # Grape's own lookup cache (`_mem`): half the peer age, like Node's.
        self.seen_peers = RecordCache(
            clock, math.ceil(config.peer_max_age * 1000 / 2) / 1000, 5000, rng=self._rng
        )
        # Announces of a lone node, answered to local lookups only (never to other nodes).
        self.own_peers = RecordCache(clock, config.peer_max_age, config.max_peers, rng=self._rng)
        # Own announces under a ``host`` that is no IPv4 address (``[::1]:1337``): stored as
        # text, answered to local lookups only (compact DHT peers are IPv4).
        self.own_texts = RecordCache(clock, config.peer_max_age, config.max_peers, rng=self._rng)
        self._own_host_compact = config.host is not None and isIPAddress(config.host)
        self.values: LRUCache[bytes, bep44.Item] = LRUCache(clock, config.max_values)
        self.tables: LRUCache[bytes, KBucket] = LRUCache(
            clock, config.max_tables, TOKEN_TABLE_MAX_AGE
        )
        self.tokens = TokenSecrets(clock)
        self._lookups: dict[bytes, list[Deferred[list[str]]]] = {}
        self._last_change = self.clock.seconds()  # type: ignore[misc]
        self._liveness_call: Any = None
        self._evicting = False
        self._eviction_queue: tuple[list[Contact], Contact] | None = None
        self._running = False
        self.ready: Deferred[None] = Deferred()

    @property
    def dropped(self) -> Any:
        """Datagrams dropped (and sends failed), per reason: a ``Counter[str]`` (see
        :attr:`KRPCProtocol.dropped <grenache.dht.krpc.KRPCProtocol.dropped>`)."""
        return self.krpc.dropped

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The UDP port the KRPC socket is bound to."""
        transport = self.krpc.transport
        if transport is None:
            raise RuntimeError("the DHT node is not listening")
        return int(transport.getHost().port)  # type: ignore[attr-defined,misc]

    def start(self) -> Deferred[None]:
        """Start timers and bootstrap; fires (never fails) once the first bootstrap walk ended
        (after resolving the bootstrap host names)."""
        self._running = True
        for host, port in self._bootstrap_ipv6:
            log.warn(
                "bootstrap node {node} is IPv6 but the DHT is IPv4-only: not used",
                node=join_host_port(host, port),
            )
        self._last_change = self.clock.seconds()
        self.peers.start()
        self.seen_peers.start()
        self.own_peers.start()
        self.own_texts.start()
        self.tokens.start()
        self._schedule_liveness()
        if self.krpc.transport is not None:
            self.events.emit("listening")
        self.bootstrap().addBoth(self._bootstrapped)
        return self.ready

    def _bootstrapped(self, _: object) -> None:
        if not self.ready.called:
            self.ready.callback(None)
            self.events.emit("ready")

    def _dropped(self, reason: str, addr: Any) -> None:
        if "warning" in self.events.active:
            self.events.emit("warning", reason)

    def stop(self) -> None:
        """Stop every timer. Closing the socket (``port.stopListening()``) is the caller's."""
        self._running = False
        self.peers.stop()
        self.seen_peers.stop()
        self.own_peers.stop()
        self.own_texts.stop()
        self.tokens.stop()
        if self._liveness_call is not None and self._liveness_call.active():
            self._liveness_call.cancel()
        self._liveness_call = None

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
            return walk.responses

        return walk.run().addCallback(finished)

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

    def _neighbours_changed(self) -> None:
        """Log the number of DHT neighbours when it changes materially: from or to none, or
        doubled or halved since it was last logged (not at every node)."""
        count = len(self.routing)
        last = self._reported_neighbours
        if count == last:
            return
        if (count == 0) != (last == 0) or count >= 2 * last or 2 * count <= last:
            self._reported_neighbours = count
            if count == 0:
                log.warn("no DHT neighbours left (had {last})", last=last)
            else:
                log.info("{count} DHT neighbours (was {last})", count=count, last=last)

    def add_node(self, addr: Address) -> Deferred[bool]:
        """Ping ``addr`` and, if it answers, add it to the routing table (Node's ``addNode``)."""
        d = self.krpc.query(addr, "ping", {})

        def answered(response: Response) -> bool:
            self._last_change = self.clock.seconds()
            return valid_node_id(response.r.get("id"))

        return d.addCallbacks(answered, lambda _: False)

    # --- routing table upkeep -----------------------------------------------------------------

    def _node_seen(self, node_id: bytes, addr: Address) -> None:
        if self.down and addr in self.down:
            # Sending us queries is no proof of answering ours (a node that came back, or one
            # that never answers): ping it, one ping at a time, at most MAX_PROBES in all.
            self._probe(addr)
        now = self.clock.seconds()
        known = self.routing.get(node_id)
        if known is not None:
            known.seen = now
            return
        before = len(self.routing)
        full = self.routing.add(Contact(id=node_id, host=addr[0], port=addr[1], seen=now))
        self._neighbours_changed()
        if len(self.routing) > before and "node" in self.events.active:
            self.events.emit("node", join_host_port(*addr))
        if full is not None:
            self._eviction_queue = full  # last one wins
            if not self._evicting:
                self._evicting = True
                self._run_evictions()

    async def _first_dead(self, contacts: list[Contact]) -> Contact | None:
        """Ping ``contacts`` one at a time; remove and return the first that does not answer."""
        for contact in contacts:
            if not self._running:
                return None
            try:
                await self.krpc.query(contact.addr, "ping", {}, node_id=contact.id)
            except DHTError:
                self.routing.remove(contact.id)
                self._neighbours_changed()
                return contact
            contact.seen = self._last_change = self.clock.seconds()
        return None

    def _run_evictions(self) -> None:
        """Settle the latest full-bucket newcomer: replace the first stale contact that is dead."""
        if self._eviction_queue is None or not self._running:
            self._evicting = False
            self._eviction_queue = None
            return
        oldest, newcomer = self._eviction_queue
        self._eviction_queue = None
        now = self.clock.seconds()
        stale = [
            c for c in reversed(oldest[:PINGS_BEFORE_EVICT]) if now - c.seen >= STALE_CONTACT_AGE
        ]

        def settle(dead: Contact | None) -> None:
            if dead is not None:
                self.routing.add(newcomer)
                self._neighbours_changed()
                if self.routing.get(newcomer.id) is not None:
                    self.events.emit("node", join_host_port(*newcomer.addr))
            self._run_evictions()

        ensureDeferred(self._first_dead(stale)).addCallback(settle)

    def _schedule_liveness(self) -> None:
        if not self._running:
            return
        delay = self._rng.uniform(30.0, 90.0)
        self._liveness_call = self.clock.callLater(delay, self._liveness_sweep)

    def _liveness_sweep(self) -> None:
        """After ``node_liveness`` without change, ping everyone until the first dead one."""
        self._liveness_call = None
        if self.clock.seconds() - self._last_change < self.config.node_liveness:
            self._schedule_liveness()
            return

        def swept(dead: Contact | None) -> None:
            if dead is not None and len(self.routing) == 0:
                self.bootstrap()
            self._schedule_liveness()

        contacts = list(reversed(self.routing.to_list()))
        ensureDeferred(self._first_dead(contacts)).addCallback(swept)

    def _timed_out(self, addr: Address) -> None:
        """A query of ours to ``addr`` timed out: leave it out of walks for a while, and out
        of the routing table after :data:`DOWN_EVICT_AFTER` timeouts in a row."""
        down = self.down.get(addr)
        if down is None:
            if len(self.down) >= MAX_DOWN_ADDRESSES:
                del self.down[next(iter(self.down))]
            down = self.down[addr] = _Down()
        down.failures += 1
        delay = min(DOWN_RETRY * 2 ** min(down.failures - 1, 16), DOWN_RETRY_MAX)
        down.retry_at = self.clock.seconds() + delay
        if down.failures >= DOWN_EVICT_AFTER:
            contact = self.routing.at(addr)
            if contact is not None:
                self.routing.remove(contact.id)
                self._neighbours_changed()

    def is_down(self, addr: Address) -> bool:
        """Whether ``addr`` timed out and has not answered since: walks and fan-outs skip it.

        Once its retry time has come, a ping goes to it in the background (the caller does not
        wait for it), as it does when a query comes from it; a reply from the address (to any
        query of ours) clears the mark.
        """
        down = self.down.get(addr)
        if down is None:
            return False
        if self.clock.seconds() >= down.retry_at:
            self._probe(addr)
        return True

    def _skip_queued(self, addr: Address) -> bool:
        """A queued query to ``addr`` is not sent: it is down and not being probed."""
        down = self.down.get(addr) if self.down else None
        return down is not None and not down.probing

    def _answered(self, addr: Address) -> None:
        if self.down:
            self.down.pop(addr, None)

    def _probe(self, addr: Address) -> None:
        """Ping an address marked down, unless a ping to it is already out."""
        down = self.down.get(addr)
        if down is None or down.probing or self._probes >= MAX_PROBES or not self._running:
            return
        down.probing = True
        self._probes += 1

        def probed(_: object) -> None:
            down.probing = False
            self._probes -= 1

        try:
            self.krpc.query(addr, "ping", {}).addBoth(probed)
        except Exception:
            probed(None)

    def _has_live_neighbour(self) -> bool:
        """Whether some routing-table contact is not known to be down."""
        down = self.down
        return any(c.addr not in down for c in self.routing)

    def _drop_timed_out(self, contact: Contact) -> None:
        known = self.routing.get(contact.id)
        if known is not None and known.addr == contact.addr:
            self.routing.remove(contact.id)
            self._neighbours_changed()

    def _walk(
        self,
        target: bytes,
        query: str,
        args: dict[str, Any],
        visit: Any = None,
        skip_down: bool = True,
    ) -> Walk:
        return Walk(
            self.krpc,
            self.routing,
            list(self._bootstrap_addresses.values()),
            target,
            query,
            args,
            visit=visit,
            on_timeout=self._drop_timed_out,
            concurrency=self.config.concurrency,
            skip=self.is_down if skip_down else None,
        )

    # --- serving queries (docs/protocol.rst, *DHT messages*) ----------------------------------

    def _handle_query(
        self, query: str, a: dict[str, Any], addr: Address
    ) -> dict[str, Any] | KRPCError | None:
        handler = _HANDLERS.get(query)
        if handler is None:
            return KRPCError(204, "Method Unknown")
        if not valid_node_id(a.get("id")):
            return KRPCError(203, f"`{query}` needs a 20-byte node id in `a.id`")
        return handler(self, a, addr)

    def _nodes_near(self, target: bytes) -> bytes:
        return encode_nodes(self.routing.closest(target, REPLY_NODES_LIMIT))

    def _on_ping(self, a: dict[str, Any], addr: Address) -> dict[str, Any]:
        return {}

    def _on_find_node(self, a: dict[str, Any], addr: Address) -> dict[str, Any] | KRPCError:
        target = a.get("target")
        if target is None:
            return KRPCError(203, "`find_node` missing required `a.target` field")
        if not isinstance(target, bytes) or len(target) != NODE_ID_LENGTH:
            return KRPCError(203, "`find_node` `a.target` must be 20 bytes")
        return {"nodes": self._nodes_near(target)}

    def _on_get_peers(self, a: dict[str, Any], addr: Address) -> dict[str, Any] | KRPCError:
        info_hash = a.get("info_hash")
        if info_hash is None:
            return KRPCError(203, "`get_peers` missing required `a.info_hash` field")
        if not isinstance(info_hash, bytes):
            return KRPCError(203, "`get_peers` `a.info_hash` must be a byte string")
        token = self.tokens.token(addr[0])
        values = self.peers.get(info_hash, REPLY_VALUES_LIMIT)
        if values:
            return {"token": token, "values": values}
        return {"nodes": self._nodes_near(info_hash), "token": token}

    def _on_announce_peer(self, a: dict[str, Any], addr: Address) -> dict[str, Any] | KRPCError:
        implied = a.get("implied_port")
        port = addr[1] if implied else a.get("port")
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port <= 65535:
            return KRPCError(203, "`announce_peer` needs a port from 1 to 65535")
        info_hash = a.get("info_hash")
        if not isinstance(info_hash, bytes) or not info_hash:
            return KRPCError(203, "`announce_peer` missing required `a.info_hash` field")
        token = a.get("token")
        if not isinstance(token, bytes) or not self.tokens.is_valid(addr[0], token):
            return KRPCError(203, "cannot `announce_peer` with bad token")
        self.peers.add(info_hash, encode_peer(addr[0], port))
        if "announce" in self.events.active:
            self.events.emit("announce", _name(info_hash))
        return {}

    def _on_unannounce_peer(self, a: dict[str, Any], addr: Address) -> dict[str, Any] | KRPCError:
        """This project's ``unannounce_peer`` (docs/protocol.rst, *DHT messages*): forget the
        peer ``(source IP, port)`` under ``info_hash``, checked as ``announce_peer`` is."""
        implied = a.get("implied_port")
        port = addr[1] if implied else a.get("port")
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port <= 65535:
            return KRPCError(203, "`unannounce_peer` needs a port from 1 to 65535")
        info_hash = a.get("info_hash")
        if not isinstance(info_hash, bytes) or not info_hash:
            return KRPCError(203, "`unannounce_peer` missing required `a.info_hash` field")
        token = a.get("token")
        if not isinstance(token, bytes) or not self.tokens.is_valid(addr[0], token):
            return KRPCError(203, "cannot `unannounce_peer` with bad token")
        if self._forget_peer(info_hash, addr[0], port):
            self.events.emit("unannounce", _name(info_hash))
        return {}

    def _forget_peer(self, key: bytes, host: str, port: int) -> bool:
        """Drop ``host:port`` under ``key`` from the peer store and the lookup results;
        whether the peer store had it."""
        self.seen_peers.remove(key, f"{host}:{port}".encode("ascii"))
        return self.peers.remove(key, encode_peer(host, port))

    def _on_get(self, a: dict[str, Any], addr: Address) -> dict[str, Any] | KRPCError:
        target = a.get("target")
        if target is None:
            return KRPCError(203, "`get` missing required `a.target` field")
        if not isinstance(target, bytes) or len(target) != NODE_ID_LENGTH:
            return KRPCError(203, "`get` `a.target` must be 20 bytes")
        token = self.tokens.token(addr[0])
        item = self.values.get(target)
        if item is None:
            return {"nodes": self._nodes_near(target), "token": token}
        reply: dict[str, Any] = {"token": token, "v": item.v}
        if item.mutable:
            reply.update(k=item.k, sig=item.sig, seq=item.seq)
        return reply

    def _on_put(self, a: dict[str, Any], addr: Address) -> dict[str, Any] | KRPCError:
        """BEP 44 ``put`` with BEP 44's error codes (docs/protocol.rst, *BEP 44 items*)."""
        v = a.get("v")
        if v is None or v == 0:
            return KRPCError(203, "`put` missing required `a.v` field")
        token = a.get("token")
        if not isinstance(token, bytes) or not self.tokens.is_valid(addr[0], token):
            return KRPCError(203, "cannot `put` with bad token")
        if bep44.too_large(v):
            return KRPCError(205, "data payload too large")
        salt = a.get("salt")
        if salt is not None and not isinstance(salt, bytes):
            return KRPCError(203, "`put` `a.salt` must be a byte string")
        if salt is not None and len(salt) > MAX_SALT_LENGTH:
            return KRPCError(207, "salt too big")
        k, sig = a.get("k"), a.get("sig")
        if k is None and sig is None:
            self.values.set(bep44.immutable_key(v), bep44.Item(v=v))
            return {}
        if not self.config.verify_mutable:
            return KRPCError(400, "verification not supported")
        if not isinstance(k, bytes) or not isinstance(sig, bytes):
            return KRPCError(203, "mutable `put` needs byte strings `a.k` and `a.sig`")
        seq = a.get("seq")
        if seq is not None and (not isinstance(seq, int) or isinstance(seq, bool) or seq < 0):
            return KRPCError(203, "`put` `a.seq` must be a non-negative integer")
        cas = a.get("cas")
        if cas is not None and (not isinstance(cas, int) or isinstance(cas, bool)):
            return KRPCError(203, "`put` `a.cas` must be an integer")
        item = bep44.Item(v=v, k=k, sig=sig, seq=seq, salt=salt or None)
        if not self.signature_valid(item):
            return KRPCError(206, "invalid signature")
        refusal = self._store_mutable(item, cas)
        return {} if refusal is None else refusal

    def _store_mutable(self, item: bep44.Item, cas: int | None) -> KRPCError | None:
        """Store a verified mutable item unless CAS or sequence rules refuse it (301, 302)."""
        key = item.key()
        previous = self.values.peek(key)
        if previous is not None:
            if cas is not None and cas != previous.seq:
                return KRPCError(301, "CAS mismatch, re-read and try again")
            seq = item.seq
            if isinstance(previous.seq, int) and not (isinstance(seq, int) and seq > previous.seq):
                return KRPCError(302, "sequence number less than current")
        self.values.set(key, item)
        return None

    # --- client operations --------------------------------------------------------------------

    def lookup(self, key: bytes) -> Deferred[list[str]]:
        """Find the peers announced under ``key``: up to 100 ``"ip:port"`` in random order.

        Concurrent lookups of one key share a single walk. Never fails.
        """
        peers = self.lookup_now(key)
        if peers is not None:
            return succeed(peers)
        waiters = self._lookups.get(key)
        if waiters is not None:
            waiter: Deferred[list[str]] = Deferred()
            waiters.append(waiter)
            return waiter
        walk = self._run_lookup(key)
        if walk.called:
            return walk
        waiters = self._lookups[key] = []

        def share(peers: list[str]) -> list[str]:
            del self._lookups[key]
            for waiter in waiters:
                waiter.callback(list(peers))
            return peers

        return walk.addCallback(share)

    def lookup_now(self, key: bytes) -> list[str] | None:
        """The answer of :meth:`lookup` when it needs no walk (a lone node: nobody to ask).

        ``None`` when the lookup has to ask the network; then call :meth:`lookup`.
        """
        if self.config.bootstrap or len(self.routing) != 0:
            return None
        self._gather(key)
        return self._peer_texts(key)

    def _gather(self, key: bytes) -> None:
        """Start a lookup's results with the peers stored here under ``key``.

        Results from earlier lookups are dropped first: a lookup answers what the DHT holds
        now, so a peer that was unannounced (or expired) leaves the answers at once
        (docs/protocol.rst, *Grape HTTP API*).
        """
        self.seen_peers.remove_key(key)
        for record in self.peers.get(key, LOOKUP_RESULT_LIMIT) + self.own_peers.get(key):
            self._remember(key, record)
        for text in self.own_texts.get(key):
            self.seen_peers.add(key, text)
            if "peer" in self.events.active:
                self.events.emit("peer", text.decode("ascii"))

    def _peer_texts(self, key: bytes) -> list[str]:
        return [r.decode("ascii") for r in self.seen_peers.get(key, LOOKUP_RESULT_LIMIT)]

    def _remember(self, key: bytes, record: bytes) -> None:
        text = _peer_text(record)
        if text is not None:
            self.seen_peers.add(key, text)
            if "peer" in self.events.active:
                self.events.emit("peer", text.decode("ascii"))

    def _run_lookup(self, key: bytes) -> Deferred[list[str]]:
        self._gather(key)

        def finished(table: KBucket) -> list[str]:
            self.tables.set(key, table)
            return self._peer_texts(key)

        def visit(response: Response) -> None:
            values = response.r.get("values")
            if isinstance(values, list):
                for value in values:
                    if isinstance(value, bytes):
                        self._remember(key, value)

        return self._walk(key, "get_peers", {"info_hash": key}, visit).run().addCallback(finished)

    def _token_table(self, key: bytes, query: str, args: dict[str, Any]) -> Deferred[KBucket]:
        cached = self.tables.peek(key)
        if cached is not None:
            return succeed(cached)
        if query == "get_peers":
            return self.lookup(key).addCallback(lambda _: self.tables.peek(key) or KBucket(key))
        walk = self._walk(key, query, args)

        def finished(table: KBucket) -> KBucket:
            self.tables.set(key, table)
            return table

        return walk.run().addCallback(finished)

    def _send_to_all(self, table: KBucket, query: str, args: dict[str, Any]) -> Deferred[int]:
        """Send ``query`` to every token-table contact with its own token (Node's queryAll).

        Fires with the number of contacts that answered. When none did, fails with the first
        3xx :class:`KRPCError` in table order, else :class:`AllQueriesFailed`; with no contact
        to send to, fails with :class:`NoNodesToQuery`.
        """
        is_down = self.is_down
        contacts = [c for c in table.to_list() if c.token and not is_down(c.addr)]
        if not contacts:
            return _fail(NoNodesToQuery())
        return self._query_all(contacts, query, args)

    def _query_all(
        self, contacts: list[Contact], query: str, args: dict[str, Any]
    ) -> Deferred[int]:
        # The hot path of every announce: no DeferredList, one callback pair per query.
        query_one = self.krpc.query
        try:
            if len(contacts) == 1:
                c = contacts[0]
                d = query_one(c.addr, query, {**args, "token": c.token}, node_id=c.id)
                return d.addCallbacks(_one_hit, _none_hit)
            tally = _Tally(len(contacts))
            for index, c in enumerate(contacts):
                query_one(c.addr, query, {**args, "token": c.token}, node_id=c.id).addCallbacks(
                    tally.hit, tally.miss, errbackArgs=(index,)
                )
        except Exception:
            return fail()
        return tally.result

    def announce(self, key: bytes, port: int) -> Deferred[int]:
        """Announce ``port`` under ``key``; fires with the number of nodes that stored it.

        Port 0 announces this node's own DHT port, as Node does. With ``host`` configured the
        node also stores itself; a lone node (no one to send to) keeps the announce for its own
        lookups and counts itself, so a single grape works as a development network.
        """
        if port == 0:
            port = self.port
        host = self.config.host
        if host is not None:
            if self._own_host_compact:
                self.peers.add(key, encode_peer(host, port))
            else:
                self.own_texts.add(key, join_host_port(host, port).encode("ascii"))
            if "announce" in self.events.active:
                self.events.emit("announce", _name(key))
        args = {"implied_port": 0, "info_hash": key, "port": port}
        table = self.tables.peek(key)
        if table is not None:
            # A cached token table (re-announces): send at once, no Deferred in between.
            down = self.down
            if down:
                contacts = [c for c in table.to_list() if c.token and not self.is_down(c.addr)]
            else:
                contacts = [c for c in table.to_list() if c.token]
            if not contacts:
                return succeed(self._announce_alone(key, port))
            d = self._query_all(contacts, "announce_peer", args)
        else:

            def send(table: KBucket) -> Deferred[int]:
                return self._send_to_all(table, "announce_peer", args)

            d = self._token_table(key, "get_peers", {"info_hash": key}).addCallback(send)

        return d.addErrback(self._announce_failed, key, port)

    def _announce_failed(self, failure: Failure, key: bytes, port: int) -> int:
        self._trap_alone(failure)
        return self._announce_alone(key, port)

    def _trap_alone(self, failure: Failure) -> None:
        """Let ``failure`` through unless it means that nobody is there to ask: no contact at
        all, or every query timed out and no neighbour is left that is not down. Then the
        node works as a lone node does."""
        if failure.check(NoNodesToQuery):
            return
        if failure.check(AllQueriesFailed) and not self._has_live_neighbour():
            return
        failure.raiseException()

    def _announce_alone(self, key: bytes, port: int) -> int:
        if self.config.host is None:
            self.own_peers.add(key, encode_peer("127.0.0.1", port))
            if "announce" in self.events.active:
                self.events.emit("announce", _name(key))
        return 1

    def unannounce(self, key: bytes, port: int) -> Deferred[int]:
        """Withdraw an announce of ``port`` under ``key`` at once instead of letting it expire;
        fires with the number of nodes that confirmed (never fails).

        Port 0 means this node's DHT port, as for :meth:`announce`. The node forgets its own
        record of the peer, then sends ``unannounce_peer`` to the nodes of the key's token
        table (the ones an announce reached), each with its token. Python grapes confirm;
        Node grapes do not know the query and drop it, so it is sent as a background query
        (docs/protocol.rst, *DHT messages*) and their silence is not taken for death: they keep
        the peer until it expires. With nobody to tell, the result is 1 when this node itself
        held the record (a lone grape), else 0.
        """
        if port == 0:
            port = self.port
        removed = self._forget_own(key, port)
        args = {"info_hash": key, "port": port}
        table = self.tables.peek(key)
        d = (
            succeed(table)
            if table is not None
            else self._token_table(key, "get_peers", {"info_hash": key})
        )

        def send(table: KBucket) -> Deferred[int] | int:
            is_down = self.is_down
            contacts = [c for c in table.to_list() if c.token and not is_down(c.addr)]
            if not contacts:
                return 0
            tally = _Tally(len(contacts))
            query_one = self.krpc.query
            for index, c in enumerate(contacts):
                query_one(
                    c.addr,
                    "unannounce_peer",
                    {**args, "token": c.token},
                    node_id=c.id,
                    background=True,
                ).addCallbacks(tally.hit, tally.miss, errbackArgs=(index,))
            return tally.result

        def counted(result: Any) -> int:
            hits = result if isinstance(result, int) else 0
            if isinstance(result, Failure) and not result.check(AllQueriesFailed, DHTError):
                log.failure("unannounce failed", result)
            return hits or (1 if removed else 0)

        return d.addCallback(send).addBoth(counted)

    def _forget_own(self, key: bytes, port: int) -> bool:
        """Forget this node's own records of ``port`` under ``key`` (self-stored with ``host``
        or kept as a lone node); whether there was one."""
        removed = False
        host = self.config.host
        if host is not None:
            if self._own_host_compact:
                removed = self._forget_peer(key, host, port)
            else:
                text = join_host_port(host, port).encode("ascii")
                removed = self.own_texts.remove(key, text)
                self.seen_peers.remove(key, text)
        else:
            self.seen_peers.remove(key, f"127.0.0.1:{port}".encode("ascii"))
        removed = self.own_peers.remove(key, encode_peer("127.0.0.1", port)) or removed
        if removed:
            self.events.emit("unannounce", _name(key))
        return removed

    def signature_valid(self, item: bep44.Item) -> bool:
        """Whether a mutable item's signature checks out (immutable: always), with the
        configured ``verify`` function or the built-in ed25519 check. A ``verify`` that raises
        counts as False (logged the first time and every 1000th)."""
        verify = self.config.verify
        if verify is None or item.k is None:
            return item.signature_valid()
        if item.sig is None:
            return False
        message = bep44.signature_buffer(item.v, item.seq or 0, item.salt)
        try:
            return bool(verify(item.sig, message, item.k))
        except Exception:
            self._verify_failures += 1
            if self._verify_failures % 1000 == 1:
                log.failure(
                    "the verify function raised ({count} times in all); the item is refused",
                    count=self._verify_failures,
                )
            return False

    def put(self, item: bep44.Item, cas: int | None = None) -> Deferred[PutResult]:
        """Store a BEP 44 item in the DHT; fires with its key and the number of storing nodes.

        Fails with :class:`InvalidPut` (Node's validation messages), :class:`KRPCError` for a
        3xx refusal (CAS mismatch, old sequence number) or :class:`AllQueriesFailed`.
        """
        try:
            _validate_put(item, cas)
        except InvalidPut as error:
            return _fail(error)
        key = item.key()
        stored_here = False
        if not item.mutable:
            self.values.set(key, item)
            stored_here = True
        args: dict[str, Any] = {"v": item.v}
        if item.mutable:
            args.update(k=item.k, seq=item.seq, sig=item.sig, salt=item.salt, cas=cas)

        def send(table: KBucket) -> Deferred[int]:
            return self._send_to_all(table, "put", args)

        d = self._token_table(key, "get", {"target": key}).addCallback(send)

        def done(hits: int) -> PutResult:
            return PutResult(key=key, hits=hits)

        def alone(failure: Failure) -> PutResult:
            self._trap_alone(failure)
            if item.mutable:
                if not self.config.verify_mutable or not self.signature_valid(item):
                    raise AllQueriesFailed()
                refusal = self._store_mutable(item, cas)
                if refusal is not None:
                    raise refusal
            return PutResult(key=key, hits=1 if stored_here or item.mutable else 0)

        return d.addCallbacks(done, alone)

    def get(
        self, key: bytes, salt: bytes | None = None, cache: bool = True
    ) -> Deferred[GetResult | None]:
        """Find the BEP 44 item stored under ``key``; None when nobody has a valid one.

        The node's own store answers first (unless ``cache`` is False). Immutable: the first
        value whose hash matches wins. Mutable: the valid signature with the highest ``seq``.
        """
        if cache:
            local = self.values.get(key)
            if local is not None:
                return succeed(GetResult(responder=self.node_id, token=None, item=local))
        best: list[GetResult] = []

        def visit(response: Response) -> bool | None:
            r = response.r
            v = r.get("v")
            if v is None:
                return None
            if r.get("k") is None and r.get("sig") is None:
                if bep44.immutable_key(v) != key:
                    return None
                best[:] = [GetResult(responder=r["id"], token=r.get("token"), item=bep44.Item(v=v))]
                return False
            if not self.config.verify_mutable:
                return None
            k, sig, seq = r.get("k"), r.get("sig"), r.get("seq")
            if not isinstance(k, bytes) or not isinstance(sig, bytes):
                return None
            if seq is not None and (not isinstance(seq, int) or isinstance(seq, bool)):
                return None
            item = bep44.Item(v=v, k=k, sig=sig, seq=seq, salt=salt)
            if item.key() != key or not self.signature_valid(item):
                return None
            if best and (best[0].item.seq or 0) >= (seq or 0):
                return None
            best[:] = [GetResult(responder=r["id"], token=r.get("token"), item=item)]
            return None

        walk = self._walk(key, "get", {"target": key}, visit)

        def finished(table: KBucket) -> GetResult | None:
            self.tables.set(key, table)
            return best[0] if best else None

        return walk.run().addCallback(finished)


@functools.lru_cache(maxsize=4096)
def _peer_text(record: bytes) -> bytes | None:
    """A compact peer as ``b"ip:port"`` (None for a malformed one); peers recur, so cached."""
    addr = decode_peer(record)
    return None if addr is None else f"{addr[0]}:{addr[1]}".encode("ascii")


def _name(key: bytes) -> str:
    """A key as the service name Node's grape reports (UTF-8, bad bytes replaced)."""
    return key.decode("utf-8", errors="replace")


def _one_hit(_: Response) -> int:
    return 1


def _none_hit(failure: Failure) -> int:
    """The only query of an announce or put failed: a 3xx refusal, or all queries failed."""
    error = failure.value
    if isinstance(error, KRPCError) and 300 <= error.code < 400:
        raise error
    raise AllQueriesFailed()


class _Tally:
    """Counts the answers to a query sent to several nodes; ``result`` fires when all ended."""

    __slots__ = ("_hits", "_left", "_refusal", "result")

    def __init__(self, count: int) -> None:
        self._left = count
        self._hits = 0
        self._refusal: tuple[int, KRPCError] | None = None
        self.result: Deferred[int] = Deferred()

    def hit(self, _: Response) -> None:
        self._hits += 1
        self._one_done()

    def miss(self, failure: Failure, index: int) -> None:
        error = failure.value
        if isinstance(error, KRPCError) and 300 <= error.code < 400:
            if self._refusal is None or index < self._refusal[0]:
                self._refusal = (index, error)
        self._one_done()

    def _one_done(self) -> None:
        self._left -= 1
        if self._left:
            return
        if self._hits:
            self.result.callback(self._hits)
        elif self._refusal is not None:
            self.result.errback(Failure(self._refusal[1]))
        else:
            self.result.errback(Failure(AllQueriesFailed()))


def _fail(error: Exception) -> Deferred[Any]:
    d: Deferred[Any] = Deferred()
    d.errback(Failure(error))
    return d


def _validate_put(item: bep44.Item, cas: int | None) -> None:
    """Refuse what Node's ``put`` refuses, with its messages (docs/protocol.rst, *BEP 44 items*)."""
    v = item.v
    if v is None:
        raise InvalidPut("opts.v not given")
    try:
        size = len(v) if isinstance(v, bytes) else len(bencode2.bencode(v))
    except Exception as error:
        raise InvalidPut(f"v cannot be encoded: {error}") from error
    if size >= bep44.MAX_VALUE_SIZE:
        raise InvalidPut("v must be less than 1000 bytes in put()")
    if item.k is None:
        return
    if len(item.k) != 32:
        raise InvalidPut("opts.k ed25519 public key must be 32 bytes")
    if item.sig is None:
        raise InvalidPut("opts.sign function or options.sig signature is required for mutable put")
    if item.salt is not None and len(item.salt) > MAX_SALT_LENGTH:
        raise InvalidPut("opts.salt is > 64 bytes long")
    if item.seq is None:
        raise InvalidPut("opts.seq not provided for a mutable update")
    if not isinstance(item.seq, int) or isinstance(item.seq, bool):
        raise InvalidPut("opts.seq not an integer")
    if cas is not None and (not isinstance(cas, int) or isinstance(cas, bool)):
        raise InvalidPut("opts.cas must be an integer if provided")


_HANDLERS = {
    "ping": DHTNode._on_ping,
    "find_node": DHTNode._on_find_node,
    "get_peers": DHTNode._on_get_peers,
    "announce_peer": DHTNode._on_announce_peer,
    "get": DHTNode._on_get,
    "put": DHTNode._on_put,
    "unannounce_peer": DHTNode._on_unannounce_peer,
}
