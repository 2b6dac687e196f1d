"""Iterative DHT walks (find_node, get_peers, get) as a Node grape runs them.

A walk keeps a temporary routing table centred on the target, queries the 20 closest contacts
it knows that it has not queried yet, learns more contacts from every reply's ``nodes``, and ends
when the 20 closest known contacts have all been queried and nothing is outstanding
(docs/protocol.rst, *DHT messages*). Beside it a second table, the *token table*, keeps every
responder that gave a write token; announce and put send to each of those with its own token,
and a node caches the table for five minutes so that re-announces do not walk again.

Nothing here owns a timer: timeouts come from the KRPC layer's single sweep, so a walk costs no
``DelayedCall`` of its own.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from grenache.dht.krpc import Address, KRPCProtocol, Response
from grenache.dht.routing import Contact, K, KBucket
from grenache.errors import KRPCTimeout

NODE_ID_LENGTH = 20
COMPACT_NODE_LENGTH = 26
COMPACT_PEER_LENGTH = 6

_PORT = struct.Struct(">H")
_COMPACT_NODE = struct.Struct(">20s4sH")

#: A walk's visitor sees every response; returning False stops the walk from sending more queries.
Visitor = Callable[[Response], "bool | None"]

#: Tells a walk which addresses not to query (nodes known to be down): ``skip(addr)``.
Skip = Callable[[Address], bool]


def encode_peer(host: str, port: int) -> bytes:
    """Compact peer info: IPv4 (4 bytes) and port (2 bytes, big-endian)."""
    return socket.inet_aton(host) + _PORT.pack(port)


def decode_peer(data: bytes) -> Address | None:
    """Read a compact peer as Node does (first 6 bytes); None for short items or port 0."""
    if not isinstance(data, bytes) or len(data) < COMPACT_PEER_LENGTH:
        return None
    port = struct.unpack(">H", data[4:6])[0]
    if port == 0:
        return None
    return socket.inet_ntoa(data[:4]), port


def encode_nodes(contacts: Iterable[Contact], limit: int | None = None) -> bytes:
    """Compact node info of each contact with a 20-byte id (others are skipped, as Node does)."""
    parts = []
    inet_aton, pack_port = socket.inet_aton, _PORT.pack  # encode_peer, inlined: hot path
    for contact in contacts:
        if len(contact.id) != NODE_ID_LENGTH:
            continue
        try:
            parts.append(contact.id + inet_aton(contact.host) + pack_port(contact.port))
        except (OSError, struct.error):
            continue
        if limit is not None and len(parts) >= limit:
            break
    return b"".join(parts)


def decode_nodes(data: object) -> list[tuple[bytes, Address]]:
    """Decode a ``nodes`` string; port-0 entries and a trailing partial entry are ignored."""
    if not isinstance(data, bytes):
        return []
    whole = len(data) - len(data) % COMPACT_NODE_LENGTH
    inet_ntoa = socket.inet_ntoa
    return [
        (node_id, (inet_ntoa(ip), port))
        for node_id, ip, port in _COMPACT_NODE.iter_unpack(data[:whole])
        if port
    ]


def valid_node_id(value: object) -> bool:
    """Whether ``value`` is a node id as KRPC carries it: exactly 20 bytes (docs/protocol.rst,
    *DHT messages*); anything else in a reply is ignored, never trusted."""
    return isinstance(value, bytes) and len(value) == NODE_ID_LENGTH


class Walk:
    """One iterative walk towards ``target``.

    ``run()`` fires with the token table (a :class:`KBucket` centred on the target whose
    contacts carry the tokens they gave) once the walk has ended; it never fails. Addresses
    for which ``skip`` answers True are treated as already queried: a walk does not wait for a
    node known to be down.
    """

    def __init__(
        self,
        krpc: KRPCProtocol,
        routing: KBucket,
        bootstrap: Sequence[Address],
        target: bytes,
        query: str,
        args: dict[str, Any],
        visit: Visitor | None = None,
        on_timeout: Callable[[Contact], None] | None = None,
        concurrency: int = 16,
        skip: Skip | None = None,
    ) -> None:
        self._krpc = krpc
        self._skip = skip
        self._routing = routing
        self._bootstrap = list(bootstrap)
        self._target = target
        self._query = query
        self._args = args
        self._visit = visit
        self._on_timeout = on_timeout
        self._concurrency = concurrency
        self._table = KBucket(target)
        self.tokens = KBucket(target)
        #: Every address queried so far (a walk never queries one twice).
        self.queried: set[Address] = set()
        self._pending = 0
        self._bootstrapped = False
        self._stopped = False
        self._done: Deferred[KBucket] | None = None
        #: Number of responders with a valid id (Node's ``count``).
        self.responses = 0
        #: Number of candidates not queried because ``skip`` said they are down.
        self.skipped = 0

    def run(self) -> Deferred[KBucket]:
        """Start the walk; the Deferred fires with the token table when it ends."""
        self._done = Deferred()
        self._kick()
        return self._done

    def _candidates(self) -> list[Contact]:
        minimum = max(1, len(self._bootstrap))
        candidates = self._table.closest(self._target, K)
        if len(candidates) < minimum:
            candidates = self._routing.closest(self._target, K)
        if len(candidates) < minimum and not self._bootstrapped:
            self._bootstrapped = True
            known = {c.addr for c in candidates}
            candidates = candidates + [
                Contact(id=b"", host=host, port=port)
                for host, port in self._bootstrap
                if (host, port) not in known
            ]
        return candidates

    def _kick(self) -> None:
        if self._done is None or self._done.called:
            return
        if not self._stopped:
            for contact in self._candidates():
                if self._pending >= self._concurrency:
                    return
                if contact.addr in self.queried:
                    continue
                self.queried.add(contact.addr)
                if self._skip is not None and self._skip(contact.addr):
                    self.skipped += 1
                    continue
                self._send(contact)
        if self._pending == 0:
            self._done.callback(self.tokens)

    def _send(self, contact: Contact) -> None:
        self._pending += 1
        expected = contact.id if valid_node_id(contact.id) else None
        d = self._krpc.query(contact.addr, self._query, dict(self._args), node_id=expected)
        d.addCallbacks(self._answered, self._failed, errbackArgs=(contact,))

    def _answered(self, response: Response) -> None:
        try:
            self._on_response(response)
        finally:
            self._after()

    def _failed(self, failure: Failure, contact: Contact) -> None:
        try:
            self._on_error(failure, contact)
        finally:
            self._after()

    def _on_response(self, response: Response) -> None:
        r = response.r
        responder = r.get("id")
        if not valid_node_id(responder):
            return
        assert isinstance(responder, bytes)
        self.responses += 1
        host, port = response.addr
        table = self._table
        table.add(Contact(id=responder, host=host, port=port))
        own_id = self._krpc.node_id
        for node_id, (node_host, node_port) in decode_nodes(r.get("nodes")):
            if node_id != own_id:
                table.add(Contact(id=node_id, host=node_host, port=node_port))
        token = r.get("token")
        if isinstance(token, bytes) and token:
            self.tokens.add(Contact(id=responder, host=host, port=port, token=token))
        if self._visit is not None and self._visit(response) is False:
            self._stopped = True

    def _on_error(self, failure: Failure, contact: Contact) -> None:
        if failure.check(KRPCTimeout) and self._on_timeout is not None and contact.id:
            self._on_timeout(contact)

    def _after(self) -> None:
        self._pending -= 1
        self._kick()
