"""Signing with a 64-byte *expanded* ed25519 secret key, the format grenache-cli's
``grenache-keygen`` writes to ``~/.grenache-cli/key``.

grenache-cli makes its keys with orlp/ed25519: the seed is hashed with SHA-512, the first half
clamped into the secret scalar ``a`` and the second half kept as the nonce prefix; the 64
bytes ``a || prefix`` are written (as 128 hex digits) and the seed is thrown away. Since a
SHA-512 output cannot be turned back into its seed, such a key cannot be used where a 32-byte
RFC 8032 seed is expected (``cryptography``'s ``Ed25519PrivateKey``); the signature itself is
plain ed25519 (RFC 8032, section 5.1.6, from step 2 on), so it is made here with the curve
arithmetic of RFC 8032, section 6, on Python integers.

This is a few milliseconds per signature and not constant-time: it is meant for the command
line signing one put with the user's own key, not for a server signing attacker-chosen data
in a loop.
"""

from __future__ import annotations

import hashlib

__all__ = ["is_clamped", "public_key_of_expanded", "sign_expanded"]

_P = 2**255 - 19
_L = 2**252 + 27742317777372353535851937790883648493
_D = -121665 * pow(121666, _P - 2, _P) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)

_Point = tuple[int, int, int, int]  # extended coordinates (X, Y, Z, T), x = X/Z, y = Y/Z


def _recover_x(y: int, sign: int) -> int:
    xx = (y * y - 1) * pow(_D * y * y + 1, _P - 2, _P)
    x = pow(xx, (_P + 3) // 8, _P)
    if (x * x - xx) % _P != 0:
        x = x * _SQRT_M1 % _P
    if x & 1 != sign:
        x = _P - x
    return x


_BY = 4 * pow(5, _P - 2, _P) % _P
_BX = _recover_x(_BY, 0)
_BASE: _Point = (_BX, _BY, 1, _BX * _BY % _P)
_IDENTITY: _Point = (0, 1, 1, 0)


def _add(p: _Point, q: _Point) -> _Point:
    a = (p[1] - p[0]) * (q[1] - q[0]) % _P
    b = (p[1] + p[0]) * (q[1] + q[0]) % _P
    c = 2 * p[3] * q[3] * _D % _P
    d = 2 * p[2] * q[2] % _P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _times_base(scalar: int) -> _Point:
    result, addend = _IDENTITY, _BASE
    while scalar:
        if scalar & 1:
            result = _add(result, addend)
        addend = _add(addend, addend)
        scalar >>= 1
    return result


def _encode(point: _Point) -> bytes:
    inverse = pow(point[2], _P - 2, _P)
    x, y = point[0] * inverse % _P, point[1] * inverse % _P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def is_clamped(secret: bytes) -> bool:
    """Whether the first half of the 64-byte ``secret`` is a clamped ed25519 scalar (what an
    expanded key's first half always is, and a random seed rarely is)."""
    return len(secret) == 64 and secret[0] & 7 == 0 and secret[31] & 0xC0 == 0x40


def public_key_of_expanded(secret: bytes) -> bytes:
    """The 32-byte public key of the 64-byte expanded secret key ``secret``."""
    if len(secret) != 64:
        raise ValueError("an expanded ed25519 secret key is 64 bytes")
    return _encode(_times_base(int.from_bytes(secret[:32], "little")))


def sign_expanded(secret: bytes, public_key: bytes, message: bytes) -> bytes:
    """The 64-byte ed25519 signature of ``message`` by the expanded key ``secret`` whose
    public key is ``public_key`` (as orlp/ed25519's ``ed25519_sign`` makes it)."""
    if len(secret) != 64 or len(public_key) != 32:
        raise ValueError("expected a 64-byte expanded secret key and a 32-byte public key")
    scalar = int.from_bytes(secret[:32], "little")
    nonce = int.from_bytes(hashlib.sha512(secret[32:] + message).digest(), "little") % _L
    r = _encode(_times_base(nonce))
    challenge = int.from_bytes(hashlib.sha512(r + public_key + message).digest(), "little")
    s = (nonce + challenge % _L * scalar) % _L
    return r + s.to_bytes(32, "little")
