"""Token-table fan-out: a query sent to every node of a key's token table, with its token.

What ``announce_peer``, ``unannounce_peer`` and BEP 44 ``put`` do after the walk that collected
the tokens (Node's ``queryAll``; docs/protocol.rst, *DHT messages* and *BEP 44 items*), and the
rule that makes a node with nobody left to ask work as a lone node.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

from grenache.dht.krpc import Address, KRPCProtocol, Response
from grenache.dht.lookup import Walk
from grenache.dht.routing import Contact, KBucket
from grenache.dht.store import LRUCache
from grenache.errors import AllQueriesFailed, KRPCError, NoNodesToQuery


class FanOut:
    """The fan-out part of :class:`~grenache.dht.node.DHTNode` (a mixin on its state)."""

    krpc: KRPCProtocol
    tables: LRUCache[bytes, KBucket]

    if TYPE_CHECKING:

        def is_down(self, addr: Address) -> bool: ...

        def _has_live_neighbour(self) -> bool: ...

        def lookup(self, key: bytes) -> Deferred[list[str]]: ...

        def _walk(
            self,
            target: bytes,
            query: str,
            args: dict[str, Any],
            visit: Any = None,
            skip_down: bool = True,
        ) -> Walk: ...

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

    def _trap_alone(self, failure: Failure) -> None:
        """Let ``failure`` through unless it means that nobody is there to ask: no contact at
        all, or every query timed out and no neighbour is left that is not down. Then the
        node works as a lone node does."""
        if failure.check(NoNodesToQuery):
            return
        if failure.check(AllQueriesFailed) and not self._has_live_neighbour():
            return
        failure.raiseException()


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
