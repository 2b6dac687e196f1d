"""The DHT node: lifecycle, routing-table upkeep, walks, lookups and the public API.

It answers every query as a Node grape (bittorrent-dht 10.0.0) does and runs the same client
flows (docs/protocol.rst, *DHT messages* and *BEP 44 items*), with the project's own choices
(docs/protocol.rst, *Deliberate differences from Node.js*): documented defaults, ed25519
verification on by default, and a lone node that keeps its own announces and puts so that a
single grape is a working development network.

:class:`DHTNode` is assembled from one module per job, each a mixin on the node's state:
:mod:`grenache.dht.serving` answers queries, :mod:`grenache.dht.bootstrap` resolves the
bootstrap nodes' names (anew before every walk from them) and reports how each bootstrap went,
:mod:`grenache.dht.down` tracks neighbours that stopped answering, :mod:`grenache.dht.fanout`
sends a query to every node of a token table and :mod:`grenache.dht.items` puts and gets BEP 44
items. This module keeps the rest: construction, start and stop, routing-table upkeep, walks,
lookups and announces; every public name of those modules stays importable from here.

The node logs what an operator needs, all under this module's namespace: the outcome of each
bootstrap, the number of DHT neighbours when it changes materially, and a warning while it is
alone although bootstrap nodes were given (:meth:`DHTNode.check_alone`, run by the grape's
maintenance timer).
"""

from __future__ import annotations

import functools
import math
import os
import random
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from grenache.dht import bep44
from grenache.dht.bootstrap import Bootstrap
from grenache.dht.down import (
    DOWN_EVICT_AFTER,
    DOWN_RETRY,
    DOWN_RETRY_MAX,
    MAX_DOWN_ADDRESSES,
    MAX_PROBES,
    DownNeighbours,
    _Down,
)
from grenache.dht.events import Events
from grenache.dht.fanout import FanOut, _Tally
from grenache.dht.items import Bep44Client, GetResult, PutResult
from grenache.dht.krpc import Address, KRPCProtocol, Response
from grenache.dht.limits import (
    DEFAULT_MAX_SOURCES,
    DEFAULT_QUERY_BURST,
    DEFAULT_QUERY_RATE,
    QueryRateLimiter,
)
from grenache.dht.lookup import Walk, decode_peer, encode_peer, valid_node_id
from grenache.dht.routing import MAX_CONTACTS_PER_IP, Contact, KBucket, RoutingTable
from grenache.dht.serving import (
    MAX_SALT_LENGTH,
    REPLY_NODES_LIMIT,
    REPLY_VALUES_LIMIT,
    QueryHandlers,
    _name,
)
from grenache.dht.store import LRUCache, RecordCache, TokenSecrets
from grenache.endpoints import join_host_port
from grenache.errors import AllQueriesFailed, DHTError

__all__ = [
    "DOWN_EVICT_AFTER",
    "DOWN_RETRY",
    "DOWN_RETRY_MAX",
    "LOOKUP_RESULT_LIMIT",
    "MAX_DOWN_ADDRESSES",
    "MAX_PROBES",
    "MAX_SALT_LENGTH",
    "PINGS_BEFORE_EVICT",
    "REPLY_NODES_LIMIT",
    "REPLY_VALUES_LIMIT",
    "STALE_CONTACT_AGE",
    "TOKEN_TABLE_MAX_AGE",
    "DHTConfig",
    "DHTNode",
    "GetResult",
    "PutResult",
    "Resolve",
    "Verify",
]

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
# Keys whose lone-node lookup answer is kept (each at most LOOKUP_RESULT_LIMIT texts).
_LONE_ANSWERS_MAX = 256
STALE_CONTACT_AGE = 10.0
PINGS_BEFORE_EVICT = 16


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


class DHTNode(Bootstrap, QueryHandlers, Bep44Client, FanOut, DownNeighbours):
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
        # A lone node's lookup answers per key, with the store versions they were read at.
        self._lone_answers: dict[bytes, tuple[tuple[int, int, int], list[str]]] = {}
        self._last_change = self.clock.seconds()  # type: ignore[misc]
        self._liveness_call: Any = None
        self._liveness_after = self._liveness_threshold()
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

    def _liveness_threshold(self) -> float:
        """``node_liveness`` stretched by a random 0 to 25 %, drawn anew for every sweep, so
        that grapes started together do not all ping their whole tables in the same minute."""
        return self.config.node_liveness * self._rng.uniform(1.0, 1.25)

    def _liveness_sweep(self) -> None:
        """After ``node_liveness`` (stretched by :meth:`_liveness_threshold`) without change,
        ping everyone until the first dead one."""
        self._liveness_call = None
        if self.clock.seconds() - self._last_change < self._liveness_after:
            self._schedule_liveness()
            return
        self._liveness_after = self._liveness_threshold()

        def swept(dead: Contact | None) -> None:
            if dead is not None and len(self.routing) == 0:
                self.bootstrap()
            self._schedule_liveness()

        contacts = list(reversed(self.routing.to_list()))
        ensureDeferred(self._first_dead(contacts)).addCallback(swept)

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

    # --- client operations --------------------------------------------------------------------

    def lookup(self, key: bytes) -> Deferred[list[str]]:
        """Find the peers announced under ``key``: up to 100 ``"ip:port"`` in random order.

        Concurrent lookups of one key share a single walk; each caller gets a Deferred of its
        own, so cancelling one (its client went away) leaves the walk to the others. Never
        fails.
        """
        peers = self.lookup_now(key)
        if peers is not None:
            return succeed(peers)
        waiters = self._lookups.get(key)
        if waiters is None:
            walk = self._run_lookup(key)
            if walk.called:
                return walk
            waiters = self._lookups[key] = []
            walk.addBoth(self._lookup_done, key, waiters)
        waiter: Deferred[list[str]] = Deferred()
        waiters.append(waiter)
        return waiter

    def _lookup_done(
        self, result: list[str] | Failure, key: bytes, waiters: list[Deferred[list[str]]]
    ) -> None:
        """Hand a shared walk's answer to every caller still waiting (a copy each)."""
        if self._lookups.get(key) is waiters:
            del self._lookups[key]
        for waiter in waiters:
            if waiter.called:
                continue  # cancelled
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(list(result))

    def lookup_now(self, key: bytes) -> list[str] | None:
        """The answer of :meth:`lookup` when it needs no walk (a lone node: nobody to ask).

        ``None`` when the lookup has to ask the network; then call :meth:`lookup`.
        """
        if self.config.bootstrap or len(self.routing) != 0:
            return None
        # What _gather + _peer_texts answer, without the lookup cache: nothing was walked, so
        # there is nothing to keep for the next lookup (which starts afresh anyway). The
        # distinct peer texts are kept per key until one of the three stores changes.
        versions = (self.peers.version, self.own_peers.version, self.own_texts.version)
        known = self._lone_answers.get(key)
        if known is not None and known[0] == versions:
            texts = known[1]
        else:
            texts = self._lone_texts(key)
            if len(texts) <= LOOKUP_RESULT_LIMIT:
                if len(self._lone_answers) >= _LONE_ANSWERS_MAX:
                    self._lone_answers.clear()
                self._lone_answers[key] = (versions, texts)
        if "peer" in self.events.active:
            for peer in texts:
                self.events.emit("peer", peer)
        if len(texts) > LOOKUP_RESULT_LIMIT:
            return self._rng.sample(texts, LOOKUP_RESULT_LIMIT)
        answer = list(texts)
        if len(answer) > 1:
            self._rng.shuffle(answer)
        return answer

    def _lone_texts(self, key: bytes) -> list[str]:
        """The distinct ``"ip:port"`` a lone node holds under ``key`` (all three stores)."""
        texts: dict[bytes, None] = {}
        for record in self.peers.get(key) + self.own_peers.get(key):
            text = _peer_text(record)
            if text is not None:
                texts[text] = None
        for text in self.own_texts.get(key):
            texts[text] = None
        return [text.decode("ascii") for text in texts]

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


@functools.lru_cache(maxsize=4096)
def _peer_text(record: bytes) -> bytes | None:
    """A compact peer as ``b"ip:port"`` (None for a malformed one); peers recur, so cached."""
    addr = decode_peer(record)
    return None if addr is None else f"{addr[0]}:{addr[1]}".encode("ascii")
