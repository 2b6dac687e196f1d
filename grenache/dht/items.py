"""BEP 44 items as a client: put an item to the nodes of its target, get the best one back.

``put`` validates as Node's ``put`` does, walks ``get`` to the target for tokens and sends
``put`` to every node of the token table; ``get`` walks ``get`` and keeps the first immutable
value whose hash matches, or the valid mutable item with the highest ``seq``. Signatures are
checked with the configured ``verify`` function or the built-in ed25519 check
(docs/protocol.rst, *BEP 44 items*).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
import bencode2
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from grenache.dht import bep44
from grenache.dht.fanout import _fail
from grenache.dht.krpc import KRPCError, Response
from grenache.dht.lookup import Walk
from grenache.dht.routing import KBucket
from grenache.dht.serving import MAX_SALT_LENGTH
from grenache.dht.store import LRUCache
from grenache.errors import AllQueriesFailed, InvalidPut

if TYPE_CHECKING:
    from grenache.dht.node import DHTConfig

#: The node's own log namespace (docs/deploying.rst, *What a grape logs*).
log = Logger(namespace="grenache.dht.node")


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


class Bep44Client:
    """The BEP 44 client part of :class:`~grenache.dht.node.DHTNode` (a mixin on its state)."""

    config: DHTConfig
    node_id: bytes
    values: LRUCache[bytes, bep44.Item]
    tables: LRUCache[bytes, KBucket]
    _verify_failures: int

    if TYPE_CHECKING:

        def _token_table(
            self, key: bytes, query: str, args: dict[str, Any]
        ) -> Deferred[KBucket]: ...

        def _send_to_all(
            self, table: KBucket, query: str, args: dict[str, Any]
        ) -> Deferred[int]: ...

        def _trap_alone(self, failure: Failure) -> None: ...

        def _store_mutable(self, item: bep44.Item, cas: int | None) -> KRPCError | None: ...

        def _walk(
            self,
            target: bytes,
            query: str,
            args: dict[str, Any],
            visit: Any = None,
            skip_down: bool = True,
        ) -> Walk: ...

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
