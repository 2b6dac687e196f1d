"""Keep Twisted's TLS stack out of a process that will serve no TLS.

Twisted imports pyOpenSSL, and with it cryptography and service_identity, as soon as its TCP
module is imported, whenever they are installed, so that any connection could start TLS. In an
idle grape that is about 13 MiB of its 50 MiB resident memory (docs/performance.rst,
*Memory*). A program that knows, before Twisted's TCP module is first imported, that it will
neither listen nor connect with TLS can mark pyOpenSSL as not installed: Twisted then runs as it
does on a machine without its optional ``tls`` extra, which it supports. ``twistd grape`` does
so when its API and ``--metrics`` ports are plain TCP, UNIX or systemd sockets and it serves no
WebSocket API (the WebSocket transport checks certificates with pyOpenSSL); cryptography itself
stays importable (a grape loads it for mutable BEP 44 items when one arrives).

The mark is an import hook refusing pyOpenSSL, set only while neither Twisted's TCP module nor
pyOpenSSL is loaded, so it cannot take TLS away from anything that already has it;
afterwards, importing pyOpenSSL in that process raises :class:`ImportError` saying why.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

__all__ = ["PLAIN_ENDPOINT_TYPES", "is_plain", "keep_tls_out"]

PLAIN_ENDPOINT_TYPES = frozenset({"tcp", "tcp6", "unix", "systemd"})
"""Endpoint description types that never need TLS; any other type (``ssl``, ``tls``, a plugin's)
is assumed to."""


def is_plain(where: Any) -> bool:
    """Whether listening on ``where`` needs no TLS: ``None`` (nothing to listen on), a port
    number, or a description of a :data:`PLAIN_ENDPOINT_TYPES` type. An endpoint object is
    assumed to need TLS (it may wrap it)."""
    if where is None or (isinstance(where, int) and not isinstance(where, bool)):
        return True
    if not isinstance(where, str):
        return False
    text = where.strip()
    if text.isdigit():
        return True
    kind = text.split(":", 1)[0].strip().lower()
    return ":" in text and kind in PLAIN_ENDPOINT_TYPES


def keep_tls_out(places: Iterable[Any]) -> bool:
    """Mark pyOpenSSL as not installed for this process when every one of ``places`` (what it
    will listen on) :func:`is_plain` and Twisted's TCP module is not loaded yet; returns
    whether it did. Call it before anything imports the reactor or Twisted's endpoints."""
    if not all(is_plain(where) for where in places):
        return False
    if "twisted.internet.tcp" in sys.modules or "OpenSSL" in sys.modules:
        return False
    if not any(isinstance(finder, _RefusePyOpenSSL) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RefusePyOpenSSL())
    return True


class _RefusePyOpenSSL:
    """An import hook (``sys.meta_path``) for which pyOpenSSL is not installed."""

    def find_spec(
        self, name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if name == "OpenSSL" or name.startswith("OpenSSL."):
            raise ImportError(
                "pyOpenSSL was kept out of this process: it listens on no TLS port "
                "(grenache.tls_free)",
                name=name,
            )
        return None
