"""Requests as handlers and transports see them, and the helpers transports share: the error
string of a reply, request ids, and calling a handler whatever it returns."""

from __future__ import annotations

import inspect
import os
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, TypeVar

import attrs
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python.failure import Failure

from grenache import errors
from grenache.peer.coroutines import to_deferred

__all__ = [
    "Handler",
    "OutgoingRequest",
    "Reply",
    "Request",
    "call_handler",
    "error_message",
    "new_rid",
    "random_bytes",
]

T = TypeVar("T")


@attrs.frozen
class Request:
    """One RPC request as a handler receives it.

    ``rid`` is whatever JSON value the client sent (Node clients send a UUID string, and the
    reply must echo it unchanged). ``peer_certificate`` is the TLS client certificate's
    fingerprint in Node's format (SHA-1 of the DER, uppercase hex pairs joined by ``:``) or
    ``None`` when there is no TLS or the client sent no certificate; ``peer_certificate_der``
    is the same certificate as DER, for other formats or full inspection.

    ``meta`` is what the transport knows of the request beyond rid, key and payload, as
    Node's handlers get it in ``meta`` (docs/protocol.rst, *RPC over HTTP*): over HTTP the
    action and its arguments (``_a``, ``_ar`` headers), the ``_gr`` header, whether the body
    was compressed; empty where the transport has nothing to add. Read-only by convention.
    """

    rid: Any
    key: str
    payload: Any
    peer_certificate: str | None = None
    peer_certificate_der: bytes | None = None
    meta: Mapping[str, Any] = attrs.field(factory=dict, eq=False)


@attrs.frozen
class Reply:
    """A handler's answer with an error *and* a result, as Node's ``handler.reply(err, res)``.

    A handler normally returns its result or raises; returning a ``Reply`` sends both
    ``error`` (the error string, or ``None``) and ``result`` in one reply ``[rid, error,
    result]``. Transports encode it; every other returned value is a plain result.
    """

    error: str | None
    result: Any = None


Handler = Callable[[Request], Any]
"""Answers a request with a value, a Deferred or a coroutine. An exception (raised or as a
failed Deferred) becomes the reply's error string (see :func:`error_message`)."""


@attrs.frozen
class OutgoingRequest:
    """One RPC request as the client hands it to a transport.

    ``timeout`` is in seconds and always finite; the transport enforces it (it knows how to
    abandon the exchange) and fails with :class:`~grenache.errors.RequestTimeout`.
    ``compress`` asks for gzip bodies both ways where the transport supports it.
    """

    rid: str
    key: str
    payload: Any
    timeout: float
    compress: bool = False


def error_message(error: BaseException | Failure) -> str:
    """The error string a reply carries for ``error`` (Node sends ``err.message``).

    A :class:`~grenache.errors.GrenacheError` sends its ``message``; any other exception its
    ``str()``. An empty message would read as *success* on a Node client (it tests ``err``
    for truthiness), so the exception's class name is sent instead.
    """
    exc = error.value if isinstance(error, Failure) else error
    text = exc.message if isinstance(exc, errors.GrenacheError) else str(exc)
    return text or type(exc).__name__


def call_handler(handler: Handler, request: Request) -> Deferred[Any]:
    """Call ``handler`` and return a Deferred of its outcome, whatever form it takes.

    A plain value, a Deferred, a coroutine or any other awaitable is accepted; an exception
    raised synchronously becomes a failed Deferred. A coroutine runs as
    :func:`~grenache.peer.coroutines.to_deferred` runs it: as an asyncio Task under the asyncio
    reactor, so that it may await asyncio libraries.
    """
    return maybeDeferred(_call, handler, request)


# Results that are plainly values: no Deferred, coroutine or awaitable checks for them (the
# abstract-class checks of inspect.isawaitable are most of this path's cost).
_PLAIN = frozenset({dict, list, str, int, float, bool, type(None), bytes, tuple})


def _call(handler: Handler, request: Request) -> Any:
    result = handler(request)
    if type(result) in _PLAIN:
        return result
    if isinstance(result, Deferred):
        return result
    if isinstance(result, Coroutine):
        return to_deferred(result)
    if inspect.isawaitable(result):
        return to_deferred(_await(result))
    return result


async def _await(awaitable: Awaitable[T]) -> T:
    return await awaitable


class _RandomBytes:
    """``os.urandom`` read 4 KiB at a time: one system call per 256 request ids.

    Emptied in a forked child, so parent and child never hand out the same bytes.
    """

    __slots__ = ("_buffer", "_pos")

    def __init__(self) -> None:
        self._buffer = b""
        self._pos = 0

    def take(self, n: int) -> bytes:
        """``n`` (at most 4096) fresh random bytes."""
        pos = self._pos
        end = pos + n
        if end > len(self._buffer):
            self._buffer = os.urandom(4096)
            pos, end = 0, n
        self._pos = end
        return self._buffer[pos:end]

    def reset(self) -> None:
        self._buffer = b""
        self._pos = 0


random_bytes = _RandomBytes()
"""Random bytes from ``os.urandom`` for request ids and WebSocket masking keys."""

# Request ids are cut from a hex string of os.urandom bytes (128 ids per system call and per
# hex conversion): a third cheaper than formatting 16 bytes per id.
_RID_HEX_CHARS = 4096
_rid_hex = [""]  # the hex text ids are cut from
_rid_pos = [_RID_HEX_CHARS]  # where the next id starts in it
# The variant nibble keeps two random bits under the RFC 4122 variant bits 10.
_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


def _reset_rids() -> None:
    random_bytes.reset()
    _rid_hex[0] = ""
    _rid_pos[0] = _RID_HEX_CHARS


os.register_at_fork(after_in_child=_reset_rids)


def new_rid() -> str:
    """A fresh request id: a lowercase, dashed UUID v4 string, as the Node libraries send.

    Cut from the hex text of ``os.urandom`` bytes, 122 random bits each (the version nibble is
    ``4``, the variant bits ``10``): the same distribution as ``str(uuid.uuid4())`` at a
    fraction of the cost, on the path of every request. Emptied in a forked child, so parent
    and child never hand out the same id.
    """
    p = _rid_pos[0]
    if p >= _RID_HEX_CHARS:
        _rid_hex[0] = os.urandom(_RID_HEX_CHARS // 2).hex()
        p = 0
    _rid_pos[0] = p + 32
    h = _rid_hex[0]
    return (
        f"{h[p : p + 8]}-{h[p + 8 : p + 12]}-4{h[p + 13 : p + 16]}-"
        f"{_VARIANT[h[p + 16]]}{h[p + 17 : p + 20]}-{h[p + 20 : p + 32]}"
    )
