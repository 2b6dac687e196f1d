"""Kademlia routing table, ported from k-bucket 5.1.0 so that Python and Node grapes rank
nodes identically.

Two rules matter for interoperability and are reproduced on purpose (docs/protocol.rst,
*DHT messages*):

* :func:`distance` is the k-bucket *float* distance, built byte by byte in IEEE-754 doubles,
  with missing bytes of the shorter id counted as ``255``.  Only ~53 bits are significant and
  keys of 128 bytes or more give ``inf`` for everybody, so ties are common for short and long
  keys; they are broken by a stable sort over the tree's traversal order.
* The bucket tree reads bits MSB-first and treats bits past the end of a short id as ``0``.

Both rules disagree with each other for keys shorter than node ids; that is Node's behaviour
and mixed networks only agree on "closest" if we copy it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterator

import attrs

from grenache.dht.limits import is_local_address

__all__ = ["MAX_CONTACTS_PER_IP", "Contact", "K", "KBucket", "RoutingTable", "distance"]

#: Bucket size (k-bucket ``numberOfNodesPerKBucket``), also the lookup width.
K = 20


def distance(a: bytes, b: bytes) -> float:
    """Return k-bucket's distance between two ids of any lengths.

    For the common prefix ``d = d * 256 + (a[i] ^ b[i])``; each extra byte of the longer id adds
    ``d = d * 256 + 255``.  The arithmetic is float on purpose: CPython and V8 round and overflow
    (to ``inf``) the same way, so ties match Node's exactly.  Do not replace with big-int XOR.
    """
    d = 0.0
    short, long_ = (a, b) if len(a) <= len(b) else (b, a)
    for x, y in zip(short, long_, strict=False):
        d = d * 256 + (x ^ y)
    for _ in range(len(long_) - len(short)):
        d = d * 256 + 255
    return d


@attrs.define(eq=False)
class Contact:
    """A node we know: its id, UDP address and what we last learned about it.

    Identity is by object (``eq=False``): the table compares ids explicitly, and a contact is a
    mutable record (``seen`` is refreshed in place when the node is heard from again).
    """

    id: bytes
    host: str
    port: int
    #: Clock time (``IReactorTime.seconds()``) when we last heard from this node.
    seen: float = 0.0
    #: Write token this node gave us (used by the per-lookup token tables).
    token: bytes | None = None

    @property
    def addr(self) -> tuple[str, int]:
        """The ``(host, port)`` pair to send datagrams to."""
        return (self.host, self.port)


def _bit(id: bytes, bit_index: int) -> int:
    """Bit ``bit_index`` of ``id``, MSB first; bits beyond the end of ``id`` read as 0.

    This is k-bucket's ``_determineNode`` rule ("ids that are too short are put in the low
    bucket"), including the case ``bit_index == 8 * len(id)`` where JS reads ``undefined & x``.
    """
    byte_index = bit_index >> 3
    if byte_index >= len(id):
        return 0
    return (id[byte_index] >> (7 - (bit_index & 7))) & 1


class _TreeNode:
    """A k-bucket tree node: a leaf when ``contacts`` is a list, inner when it is ``None``."""

    __slots__ = ("contacts", "dont_split", "left", "right")

    def __init__(self) -> None:
        self.contacts: list[Contact] | None = []
        self.dont_split = False
        self.left: _TreeNode | None = None
        self.right: _TreeNode | None = None

    def child(self, id: bytes, bit_index: int) -> _TreeNode:
        """The child ``id`` belongs to at depth ``bit_index`` (1 -> right, 0 -> left)."""
        node = self.right if _bit(id, bit_index) else self.left
        assert node is not None, "child() called on a leaf"
        return node

    def other(self, child: _TreeNode) -> _TreeNode:
        """The sibling of ``child`` under this inner node."""
        node = self.right if child is self.left else self.left
        assert node is not None
        return node


def _index_of(contacts: list[Contact], id: bytes) -> int:
    for i, c in enumerate(contacts):
        if c.id == id:
            return i
    return -1


class KBucket:
    """Port of k-bucket 5.1.0: binary tree of buckets, MSB-first bit indexing, a full bucket
    splits only on the local-id side (far sibling marked don't-split), target shorter than the
    bit index reads as 0 bits.

    Events are replaced by return values: :meth:`add` returns k-bucket's ``ping`` arguments
    when the newcomer does not fit, and the caller decides whom to ping and evict.
    """

    def __init__(self, local_id: bytes, k: int = K, nodes_to_ping: int = 16) -> None:
        if k <= 0:
            raise ValueError("k must be positive")
        self.local_id = local_id
        self.k = k
        self.nodes_to_ping = nodes_to_ping
        self._root = _TreeNode()
        self._count = 0

    def _leaf_for(self, id: bytes) -> tuple[_TreeNode, int]:
        """Walk from the root to the leaf ``id`` belongs to; return it and its depth."""
        node = self._root
        bit_index = 0
        while node.contacts is None:
            node = node.child(id, bit_index)
            bit_index += 1
        return node, bit_index

    def add(self, contact: Contact) -> tuple[list[Contact], Contact] | None:
        """Insert or refresh ``contact``.

        * Same id already present: the stored contact is removed and ``contact`` appended
          (k-bucket's default arbiter picks the candidate).  Returns ``None``.
        * Room in the bucket, or the bucket may split: ``contact`` is appended.  Returns ``None``.
        * Full, unsplittable bucket: nothing changes; returns ``(the bucket's first
          nodes_to_ping contacts, contact)``, k-bucket's ``ping`` event, so the caller can ping
          the oldest contacts and evict a dead one in favour of the newcomer.
        """
        node, bit_index = self._leaf_for(contact.id)
        while True:
            contacts = node.contacts
            assert contacts is not None
            index = _index_of(contacts, contact.id)
            if index >= 0:
                del contacts[index]
                contacts.append(contact)
                return None
            if len(contacts) < self.k:
                contacts.append(contact)
                self._count += 1
                return None
            if node.dont_split or not self._can_split(contacts, contact, bit_index):
                return (contacts[: self.nodes_to_ping], contact)
            self._split(node, bit_index)
            node = node.child(contact.id, bit_index)
            bit_index += 1

    def _can_split(self, contacts: list[Contact], contact: Contact, bit_index: int) -> bool:
        """False once ``bit_index`` is past every id involved.

        From there on every id reads as 0 bits, so a split moves everything to the same side
        and Node would recurse until its stack overflows.  Never reached with distinct ids of
        the usual lengths; it only turns a Node crash into a ``ping`` answer.
        """
        longest = max(len(self.local_id), len(contact.id), *(len(c.id) for c in contacts))
        return bit_index < 8 * longest

    def _split(self, node: _TreeNode, bit_index: int) -> None:
        """Turn leaf ``node`` into an inner node, keeping contact order in each child."""
        contacts = node.contacts
        assert contacts is not None
        node.left = _TreeNode()
        node.right = _TreeNode()
        for c in contacts:
            target = node.child(c.id, bit_index).contacts
            assert target is not None
            target.append(c)
        node.contacts = None
        near = node.child(self.local_id, bit_index)
        node.other(near).dont_split = True

    def get(self, id: bytes) -> Contact | None:
        """The stored contact with this id, or ``None``."""
        node, _ = self._leaf_for(id)
        assert node.contacts is not None
        index = _index_of(node.contacts, id)
        return node.contacts[index] if index >= 0 else None

    def remove(self, id: bytes) -> Contact | None:
        """Remove and return the contact with this id (``None`` when absent)."""
        node, _ = self._leaf_for(id)
        assert node.contacts is not None
        index = _index_of(node.contacts, id)
        if index < 0:
            return None
        self._count -= 1
        return node.contacts.pop(index)

    def closest(self, target: bytes, n: float = math.inf) -> list[Contact]:
        """The ``n`` contacts closest to ``target``, exactly as k-bucket 5.1.0 picks them.

        Depth-first walk pushing the far child then the near child (so the near one is visited
        first), concatenating leaves in stored order, stopping once at least ``n`` contacts are
        gathered; then a stable sort by :func:`distance` and the first ``n``.  The bit index
        is one counter bumped per inner node visited, as in Node (it equals the depth because
        the tree only ever splits along the local id's path).
        """
        if not (n == math.inf or (isinstance(n, int) and not isinstance(n, bool))) or n <= 0:
            raise ValueError("n must be a positive integer or math.inf")
        gathered: list[Contact] = []
        stack = [self._root]
        bit_index = 0
        while stack and len(gathered) < n:
            node = stack.pop()
            if node.contacts is None:
                near = node.child(target, bit_index)
                bit_index += 1
                stack.append(node.other(near))
                stack.append(near)
            else:
                gathered.extend(node.contacts)
        if len(gathered) > 1:  # one contact (a pair of grapes) needs no distance at all
            gathered.sort(key=lambda c: distance(c.id, target))
        if n == math.inf:
            return gathered
        return gathered[: int(n)]

    def __iter__(self) -> Iterator[Contact]:
        """All contacts, in tree traversal order (left subtree first)."""
        stack = [self._root]
        while stack:
            node = stack.pop()
            if node.contacts is None:
                assert node.left is not None and node.right is not None
                stack.append(node.right)
                stack.append(node.left)
            else:
                yield from node.contacts

    def to_list(self) -> list[Contact]:
        """All contacts in tree traversal order (k-bucket ``toArray``)."""
        return list(self)

    def __len__(self) -> int:
        return self._count


#: Contacts the routing table keeps per public IP address (loopback and private ones exempt).
MAX_CONTACTS_PER_IP = 4


class RoutingTable(KBucket):
    """A node's own routing table: a :class:`KBucket` that admits one contact per address.

    * One contact per ``(host, port)``: a new id from an address already in the table replaces
      the contact that was there (a node restarted with a new id, or a sender cycling ids).
    * At most ``max_per_ip`` contacts per IP address, except for addresses ``exempt`` says are
      local (loopback and private ranges by default), so that many grapes on one host or LAN
      still know each other while one public host cannot fill the table with made-up ids.

    :meth:`add` returns ``None`` without storing a contact the per-IP rule refuses.
    """

    def __init__(
        self,
        local_id: bytes,
        k: int = K,
        nodes_to_ping: int = 16,
        max_per_ip: int = MAX_CONTACTS_PER_IP,
        exempt: Callable[[str], bool] | None = None,
    ) -> None:
        super().__init__(local_id, k, nodes_to_ping)
        if max_per_ip < 1:
            raise ValueError("max_per_ip must be >= 1")
        self.max_per_ip = max_per_ip
        self.exempt = is_local_address if exempt is None else exempt
        self._by_address: dict[tuple[str, int], Contact] = {}
        self._per_ip: Counter[str] = Counter()

    def at(self, addr: tuple[str, int]) -> Contact | None:
        """The contact stored for this ``(host, port)``, or ``None``."""
        return self._by_address.get(addr)

    def add(self, contact: Contact) -> tuple[list[Contact], Contact] | None:
        """Insert or refresh ``contact`` under the address rules (see the class docstring)."""
        addr = contact.addr
        there = self._by_address.get(addr)
        if there is not None and there.id != contact.id:
            self.remove(there.id)
        previous = self.get(contact.id)
        if (
            previous is None
            and self._per_ip[contact.host] >= self.max_per_ip
            and not self.exempt(contact.host)
        ):
            return None
        full = super().add(contact)
        if full is None:
            if previous is not None:
                self._forget(previous)
            self._by_address[addr] = contact
            self._per_ip[contact.host] += 1
        return full

    def remove(self, id: bytes) -> Contact | None:
        contact = super().remove(id)
        if contact is not None:
            self._forget(contact)
        return contact

    def _forget(self, contact: Contact) -> None:
        if self._by_address.get(contact.addr) is contact:
            del self._by_address[contact.addr]
        left = self._per_ip[contact.host] - 1
        if left > 0:
            self._per_ip[contact.host] = left
        else:
            del self._per_ip[contact.host]
