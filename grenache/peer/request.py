"""Requests as handlers and transports see them, and the helpers transports share: the error
string of a reply, request ids, and calling a handler whatever it returns."""

from __future__ import annotations

import inspect
import os
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping
from typing import Any, NamedTuple, TypeVar

import attrs
from twisted.internet.defer import Deferred, fail, succeed
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


class OutgoingRequest(NamedTuple):
    """One RPC request as the client hands it to a transport.

    ``timeout`` is in seconds and always finite; the transport enforces it (it knows how to
    abandon the exchange) and fails with :class:`~grenache.errors.RequestTimeout`.
    ``compress`` asks for gzip bodies both ways where the transport supports it.

    Immutable; a named tuple rather than an attrs class because one is made for every request
    sent (half the cost).
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
    # maybeDeferred's work, inline: this runs for every request served.
    try:
        result = handler(request)
    except BaseException:
        return fail()
    if type(result) in _PLAIN:
        return succeed(result)
    if isinstance(result, Deferred):
        return result
    if isinstance(result, Coroutine):
        return to_deferred(result)
    if inspect.isawaitable(result):
        return to_deferred(_await(result))
    if isinstance(result, Failure):
        return fail(result)
    return succeed(result)


# Results that are plainly values: no Deferred, coroutine or awaitable checks for them (the
# abstract-class checks of inspect.isawaitable are most of this path's cost).
_PLAIN = frozenset({dict, list, str, int, float, bool, type(None), bytes, tuple})


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

# Request ids: a random head (the first four groups of a UUID v4) and a counter from a random
# start as the last group, the head drawn again when the counter runs out. Made 256 at a time:
# a list iterator's next per id, a fifth of what cutting every id from random bytes cost.
_RID_END = 1 << 49
_RID_CHUNK = 256


def _rid_stream() -> Iterator[list[str]]:
    while True:
        h = os.urandom(10).hex()
        variant = "89ab"[int(h[16], 16) & 3]  # two random bits under the RFC 4122 variant bits 10
        head = f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant}{h[17:20]}-"
        # Counting in [2**48, 2**49): hex() then always has 12 digits after "0x1".
        start = (1 << 48) | int.from_bytes(os.urandom(6), "big") >> 1
        for first in range(start, _RID_END, _RID_CHUNK):
            yield [head + hex(n)[3:] for n in range(first, min(first + _RID_CHUNK, _RID_END))]


_rid_chunks = _rid_stream()
_rid_chunk: Iterator[str] = iter(())


def _reset_rids() -> None:
    global _rid_chunks, _rid_chunk
    random_bytes.reset()
    _rid_chunks = _rid_stream()
    _rid_chunk = iter(())


os.register_at_fork(after_in_child=_reset_rids)


def new_rid() -> str:
    """A fresh request id: a lowercase, dashed UUID v4 string, as the Node libraries send.

    Unique, not secret (a reply is matched to its request by rid only on the connection the
    request went out on): the first four groups are random (drawn again in a forked child,
    so parent and child never share ids), the last group counts up from a random start. The
    version nibble is ``4`` and the variant bits ``10``, as in ``str(uuid.uuid4())``.
    """
    global _rid_chunk
    for rid in _rid_chunk:
        return rid
    _rid_chunk = iter(next(_rid_chunks))
    return next(_rid_chunk)
