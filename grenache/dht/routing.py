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
    ``d = d * 256 + 255``.  The result is that float loop's, bit for bit: CPython and V8 round
    and overflow (to ``inf``) the same way, so ties match Node's exactly.  It is computed
    without the loop (see :func:`_loop_float`), which sorting contacts calls millions of times.
    """
    if len(a) > len(b):
        a, b = b, a
    extra = len(b) - len(a)
    if not extra:
        return _loop_float(int.from_bytes(a, "big") ^ int.from_bytes(b, "big"))
    head = int.from_bytes(a, "big") ^ int.from_bytes(b[: len(a)], "big")
    return _loop_float(((head + 1) << (8 * extra)) - 1)  # the extra bytes read as 255


def _loop_float(v: int) -> float:
    """What k-bucket's float loop gives for the bytes of ``v`` (big-endian, any length).

    While ``d < 2**53`` every step is exact, so ``d`` is the integer of the bytes read so far.
    The first step that reaches ``2**53`` rounds once, to nearest-even, which is ``float()`` of
    that prefix.  From then on ``d * 256`` is exact and the next byte (< 256) is less than half
    a unit in the last place (>= 512 apart there), so it rounds away: each further byte only
    multiplies by 256, until the product overflows to ``inf``.
    """
    bits = v.bit_length()
    if bits <= 53:
        return float(v)
    shift = (bits - 54) & ~7  # the bytes after the prefix that first reaches 2**53
    try:
        return math.ldexp(float(v >> shift), shift)
    except OverflowError:
        return math.inf


def _distance_key(target: bytes) -> Callable[[Contact], float]:
    """``lambda c: distance(c.id, target)``, with ``target`` read once for same-length ids."""
    length = len(target)
    t = int.from_bytes(target, "big")

    def key(contact: Contact) -> float:
        id = contact.id
        if len(id) != length:
            return distance(id, target)
        v = int.from_bytes(id, "big") ^ t
        bits = v.bit_length()
        if bits <= 53:
            return float(v)
        shift = (bits - 54) & ~7
        try:
            return math.ldexp(float(v >> shift), shift)
        except OverflowError:
            return math.inf

    return key


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
        #: Every stored contact by id (each also sits in the leaf its id leads to).
        self._by_id: dict[bytes, Contact] = {}
        #: Distances of stored ids to ``local_id``, filled by :meth:`closest` (a walk's tables
        #: are centred on the target and sorted after every reply).
        self._own_distance: dict[bytes, float] = {}

    def _leaf_for(self, id: bytes) -> tuple[_TreeNode, int]:
        """Walk from the root to the leaf ``id`` belongs to; return it and its depth."""
        node = self._root
        bit_index = 0
        length = len(id)
        while node.contacts is None:
            byte_index = bit_index >> 3  # _bit(), inlined: the walk runs on every add
            if byte_index < length and (id[byte_index] >> (7 - (bit_index & 7))) & 1:
                node = node.right  # type: ignore[assignment]
            else:
                node = node.left  # type: ignore[assignment]
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
        id = contact.id
        node, bit_index = self._leaf_for(id)
        previous = self._by_id.get(id)
        if previous is not None:
            assert node.contacts is not None
            node.contacts.remove(previous)  # Contact compares by identity
            node.contacts.append(contact)
            self._by_id[id] = contact
            return None
        while True:
            contacts = node.contacts
            assert contacts is not None
            if len(contacts) < self.k:
                contacts.append(contact)
                self._by_id[id] = contact
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
        return self._by_id.get(id)

    def remove(self, id: bytes) -> Contact | None:
        """Remove and return the contact with this id (``None`` when absent)."""
        contact = self._by_id.pop(id, None)
        if contact is None:
            return None
        node, _ = self._leaf_for(id)
        assert node.contacts is not None
        node.contacts.remove(contact)
        self._own_distance.pop(id, None)
        return contact

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
            if target == self.local_id:
                known = self._own_distance
                for c in gathered:
                    if c.id not in known:
                        known[c.id] = distance(c.id, target)
                gathered.sort(key=lambda c: known[c.id])
            else:
                gathered.sort(key=_distance_key(target))
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
        return len(self._by_id)


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
