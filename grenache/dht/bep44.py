"""BEP 44 items: keys, the signature buffer and ed25519, as bittorrent-dht 10.0.0 uses them.

* Immutable item: key = ``SHA1(bencode(v))``.
* Mutable item: key = ``SHA1(k || salt)``; ``sig`` is an ed25519 signature by ``k`` over the
  *signature buffer*, the bencoded dict ``{salt?, seq, v}`` without its outer ``d``/``e``
  (docs/protocol.rst, *BEP 44 items*).

Ed25519 comes from ``cryptography``; private keys are 32-byte seeds (RFC 8032), not the
64-byte "expanded" secret keys of ed25519-supercop. It is imported by the first signature
made or checked, so a grape that never sees a mutable item does not load it.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, cast

import attrs
from bencode2 import bencode

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = [
    "MAX_SALT_SIZE",
    "MAX_VALUE_SIZE",
    "PUBLIC_KEY_SIZE",
    "SIGNATURE_SIZE",
    "Item",
    "generate_private_key",
    "immutable_key",
    "mutable_key",
    "public_key_of",
    "sign",
    "signature_buffer",
    "too_large",
    "verify",
]

#: Largest ``v`` a Node grape stores: a put with ``len(v) > 1000`` gets KRPC error 205.
MAX_VALUE_SIZE = 1000
#: Largest salt the Node client accepts for a mutable put.
MAX_SALT_SIZE = 64
PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64

#: What ``v`` may be: anything bencodable (str is encoded as UTF-8).
Value = bytes | str | int | list[Any] | dict[Any, Any]


def too_large(v: object) -> bool:
    """Whether a grape refuses ``v`` with error 205 ("data payload too large").

    A string is too large past 1000 bytes, as Node counts it (its byte length, not its
    bencoding, so a 1000-byte string is accepted as by Node); any other value (list, dict,
    integer) when its bencoding is longer than 1000 bytes. Node counts a list's elements and
    never refuses a dict or an integer: this grape bounds them all. A value that cannot be
    bencoded is too large.
    """
    if isinstance(v, str):
        return len(v.encode("utf-8")) > MAX_VALUE_SIZE
    if isinstance(v, bytes):
        return len(v) > MAX_VALUE_SIZE
    try:
        if isinstance(v, int) and not isinstance(v, bool):
            return len(str(v)) + 2 > MAX_VALUE_SIZE
        return len(bencode(v)) > MAX_VALUE_SIZE
    except Exception:
        return True


def immutable_key(v: Value) -> bytes:
    """Target of an immutable item: ``SHA1(bencode(v))`` (20 bytes)."""
    return hashlib.sha1(bencode(v)).digest()


def mutable_key(public_key: bytes, salt: bytes | None = None) -> bytes:
    """Target of a mutable item: ``SHA1(k || salt)`` (20 bytes)."""
    return hashlib.sha1(public_key + (salt or b"")).digest()


def signature_buffer(v: object, seq: int, salt: bytes | None = None) -> bytes:
    """The bytes a mutable item's signature covers.

    The bencoded dict ``{salt?, seq, v}`` with the outer ``d``/``e`` removed, e.g.
    ``b"4:salt6:foobar3:seqi1e1:v12:Hello World!"``.  ``salt`` is included only when
    non-empty (Grape never sends an empty one).
    """
    fields: dict[bytes, object] = {b"seq": seq, b"v": v}
    if salt:
        fields[b"salt"] = salt
    return bencode(fields)[1:-1]


def verify(signature: bytes, message: bytes, public_key: bytes) -> bool:
    """Whether ``signature`` is ``public_key``'s ed25519 signature of ``message``.

    Never raises: a wrong-length key or signature, a non-bytes argument, or an invalid point is
    simply ``False`` (Node's verify callback returns a boolean too).
    """
    if not (
        isinstance(signature, bytes)
        and isinstance(message, bytes)
        and isinstance(public_key, bytes)
        and len(signature) == SIGNATURE_SIZE
        and len(public_key) == PUBLIC_KEY_SIZE
    ):
        return False
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def _private_key_class() -> type[Ed25519PrivateKey]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey


def sign(private_key: bytes, message: bytes) -> bytes:
    """Sign ``message`` with the 32-byte ed25519 seed ``private_key`` (64-byte signature)."""
    return _private_key_class().from_private_bytes(private_key).sign(message)


def public_key_of(private_key: bytes) -> bytes:
    """The raw 32-byte public key of a 32-byte ed25519 seed."""
    return _private_key_class().from_private_bytes(private_key).public_key().public_bytes_raw()


def generate_private_key() -> bytes:
    """A fresh random 32-byte ed25519 seed."""
    return _private_key_class().generate().private_bytes_raw()


@attrs.frozen
class Item:
    """A BEP 44 item as stored/returned: immutable when k is None."""

    #: The value: bytes for strings; int, list and dict are allowed too.
    v: object
    #: Public key (32 bytes) of a mutable item.
    k: bytes | None = None
    #: Signature (64 bytes) of a mutable item over :func:`signature_buffer`.
    sig: bytes | None = None
    #: Sequence number of a mutable item (treated as 0 when missing, as Node does).
    seq: int | None = None
    #: Optional salt of a mutable item; part of the key, never returned by Node's get.
    salt: bytes | None = None

    @property
    def mutable(self) -> bool:
        """True for a mutable (signed) item."""
        return self.k is not None

    def key(self) -> bytes:
        """The 20-byte target this item is stored under."""
        if self.k is not None:
            return mutable_key(self.k, self.salt)
        return immutable_key(cast(Value, self.v))

    def signature_valid(self) -> bool:
        """Mutable: the signature checks out under ``k``; immutable: always True."""
        if self.k is None:
            return True
        if self.sig is None:
            return False
        return verify(self.sig, signature_buffer(self.v, self.seq or 0, self.salt), self.k)
