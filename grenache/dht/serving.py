"""Serving KRPC queries: the input checks and replies of every query a DHT node answers.

``ping``, ``find_node``, ``get_peers`` and ``announce_peer`` as BEP 5 and Node's grape answer
them, ``get`` and ``put`` with BEP 44's error codes, and this project's ``unannounce_peer``
(docs/protocol.rst, *DHT messages* and *BEP 44 items*). Every bad input gets a KRPC error
(203 for a malformed query), never an exception.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from grenache.dht import bep44
from grenache.dht.events import Events
from grenache.dht.krpc import Address, KRPCError
from grenache.dht.lookup import NODE_ID_LENGTH, encode_nodes, encode_peer, valid_node_id
from grenache.dht.routing import K, RoutingTable
from grenache.dht.store import LRUCache, RecordCache, TokenSecrets

if TYPE_CHECKING:
    from grenache.dht.node import DHTConfig

#: Contacts in a reply's ``nodes``: the K closest, as BEP 5 asks (Node sends its whole table).
REPLY_NODES_LIMIT = K
#: Peers in a reply's ``values``, sampled at random for each reply: with the K contacts of a
#: ``nodes`` reply this keeps every reply under 1,000 bytes, one unfragmented datagram and
#: at most about ten times the smallest query that asks for it.
REPLY_VALUES_LIMIT = 50
MAX_SALT_LENGTH = bep44.MAX_SALT_SIZE


class QueryHandlers:
    """The query-serving part of :class:`~grenache.dht.node.DHTNode` (a mixin on its state)."""

    config: DHTConfig
    routing: RoutingTable
    tokens: TokenSecrets
    peers: RecordCache
    seen_peers: RecordCache
    values: LRUCache[bytes, bep44.Item]
    events: Events

    if TYPE_CHECKING:

        def signature_valid(self, item: bep44.Item) -> bool: ...

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


def _name(key: bytes) -> str:
    """A key as the service name Node's grape reports (UTF-8, bad bytes replaced)."""
    return key.decode("utf-8", errors="replace")


_Handler = Callable[[QueryHandlers, dict[str, Any], Address], "dict[str, Any] | KRPCError"]

_HANDLERS: dict[str, _Handler] = {
    "ping": QueryHandlers._on_ping,
    "find_node": QueryHandlers._on_find_node,
    "get_peers": QueryHandlers._on_get_peers,
    "announce_peer": QueryHandlers._on_announce_peer,
    "get": QueryHandlers._on_get,
    "put": QueryHandlers._on_put,
    "unannounce_peer": QueryHandlers._on_unannounce_peer,
}
