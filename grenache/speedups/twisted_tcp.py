"""Batched responses on plain TCP, sent straight to the socket (Twisted's ``tcp`` internals).

The HTTP server (:mod:`grenache.http.server`) answers many small requests. Writing each
response through ``transport.write`` costs two ``epoll_ctl`` calls (``startWriting`` and
``stopWriting``), about a third of a lone grape's time under load. On the reactor's own
plain-TCP connection (``twisted.internet.tcp.Server``, no TLS), :func:`batched_writer` gives a
:class:`BatchedWriter` instead: the responses made while the reactor handles one round of
socket events go out together at the start of the next round (one ``callLater(0)`` per
:class:`Batch`), each connection's with one ``send`` straight to its socket while Twisted's
write buffer is empty (``writeSomeData``, ``dataBuffer``, ``_tempDataLen``: private). Whatever
the socket does not take, and every write while Twisted still buffers, goes through
``transport.write`` as usual. Sending at once, response by response, gives up the batching of
reads before writes and is no faster.

:data:`AVAILABLE` says whether those internals are there (checked at import, and again on each
connection); when they are not, or for any other transport (TLS, test transports),
:func:`batched_writer` answers ``None`` and the server writes through the public
``transport.write``: the same bytes, in the same order. Written and tested against Twisted
26.10; the project pins Twisted below the next major version for this module's sake.

Output held for the next round is bounded: past :data:`SPILL` bytes it goes to
``transport.write`` at once, so that the transport's own backpressure (it pauses the server's
registered producer when its buffer is full) sees it, exactly as on the public path.
:func:`pending_output` reads how many bytes Twisted still holds for a connection, so the
server can tell a client that reads slowly from one that does not read at all.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

__all__ = [
    "AVAILABLE",
    "CLIENT_AVAILABLE",
    "SPILL",
    "Batch",
    "BatchedWriter",
    "batched_writer",
    "pending_output",
    "write_now",
]

log = Logger()


def _check() -> tuple[bool, Any]:
    """Whether ``tcp.Server`` still has the internals :meth:`BatchedWriter.send` uses."""
    try:
        from twisted.internet import abstract, tcp
    except ImportError:  # pragma: no cover - Twisted always has them
        return False, None
    server = getattr(tcp, "Server", None)
    if server is None:
        return False, None
    init = getattr(abstract.FileDescriptor.__init__, "__code__", None)
    ok = (
        callable(getattr(server, "writeSomeData", None))
        and callable(getattr(server, "write", None))
        and isinstance(getattr(server, "dataBuffer", None), bytes)
        and isinstance(getattr(server, "offset", None), int)
        and hasattr(server, "disconnecting")
        and hasattr(server, "TLS")
        and init is not None
        and "_tempDataLen" in init.co_names
        and "reactor" in init.co_names
    )
    return ok, server


AVAILABLE, _SERVER = _check()
"""Whether the private ``tcp.Server`` internals are there (else the public path is used)."""

_CLIENT: Any = None
if AVAILABLE:
    from twisted.internet import tcp as _tcp

    _client = getattr(_tcp, "Client", None)
    # The same internals, inherited from the same base (tcp.Connection).
    if _client is not None and getattr(_client, "writeSomeData", None) is _SERVER.writeSomeData:
        _CLIENT = _client

CLIENT_AVAILABLE: bool = _CLIENT is not None
"""Whether :func:`write_now` can send straight to a ``tcp.Client`` socket."""

SPILL = 65536
"""Bytes a :class:`BatchedWriter` holds for the next round before handing them to the
transport at once (Twisted's own send-buffer bound is the same 64 KiB)."""


class Batch:
    """The connections with output waiting, sent together at the next reactor round.

    One per server factory. The round is the connection's own reactor's (not an injected
    clock): the batch goes out with the reactor that runs the socket even when a test drives
    timers with a ``Clock``.
    """

    def __init__(self) -> None:
        self._writers: list[BatchedWriter] = []
        self._call: Any = None

    def add(self, writer: BatchedWriter) -> None:
        """Send ``writer``'s held output with the others' at the next round."""
        self._writers.append(writer)
        if self._call is None:
            self._call = writer.transport.reactor.callLater(0, self._send)

    def _send(self) -> None:
        self._call = None
        writers, self._writers = self._writers, []
        for writer in writers:
            try:
                writer.send()
            except Exception:
                log.failure("HTTP server failed to send a response")
                writer.failed()


class BatchedWriter:
    """``transport.write`` for one plain-TCP connection: output held for its :class:`Batch`.

    ``on_error`` is called (with no argument) when sending raised; the owner drops the
    connection.
    """

    __slots__ = ("_batch", "_held", "_on_error", "_out", "closed", "transport")

    def __init__(self, transport: Any, batch: Batch, on_error: Any) -> None:
        self.transport = transport
        self._batch = batch
        self._on_error = on_error
        self._out: list[bytes] = []
        self._held = 0
        self.closed = False

    def write(self, data: bytes) -> None:
        """Hold ``data`` for the next batch (or hand it on now past :data:`SPILL` bytes)."""
        out = self._out
        if not out:
            self._batch.add(self)
            self._held = 0
        out.append(data)
        self._held += len(data)
        if self._held > SPILL:
            self.spill()

    def send(self) -> None:
        """Send the held output: straight to the socket when Twisted holds nothing itself."""
        out = self._out
        if not out:
            return
        self._out = []
        if self.closed:
            return
        _send(self.transport, out[0] if len(out) == 1 else b"".join(out))

    def spill(self) -> None:
        """Hand held output to the transport now, before something else is written to it."""
        if self._out:
            out, self._out = self._out, []
            self._held = 0
            if not self.closed:
                self.transport.write(b"".join(out))

    def discard(self) -> None:
        """The connection is gone: drop what is held."""
        self.closed = True
        self._out = []

    def failed(self) -> None:
        """Sending raised (the :class:`Batch` logged it): call ``on_error``, so the owner drops the
        connection.
        """
        self._on_error()


def _send(transport: Any, data: bytes) -> None:
    """``data`` straight to the socket of a plain-TCP ``transport`` while Twisted holds nothing
    for it; the rest (or all of it) through ``transport.write``."""
    if not transport.dataBuffer and not transport._tempDataLen and not transport.disconnecting:
        sent = transport.writeSomeData(data)  # a count, or an error for doWrite to find
        if type(sent) is int:
            if sent == len(data):
                return
            data = data[sent:]
    transport.write(data)


def write_now(transport: Any, data: bytes) -> None:
    """Write ``data`` to ``transport``, sent at once when it is the reactor's plain-TCP client
    connection (``tcp.Client``, no TLS) with nothing waiting in Twisted's buffer.

    ``transport.write`` sends at the reactor's next round; a client that has just made
    requests from the replies of one read gets them to the server sooner this way, so that
    both sides work at once. Any other transport, or without the internals
    (:data:`CLIENT_AVAILABLE`), gets ``transport.write``: the same bytes in the same order.
    """
    if type(transport) is _CLIENT and not transport.TLS:
        _send(transport, data)
    else:
        transport.write(data)


def pending_output(transport: Any) -> int | None:
    """Bytes Twisted still holds to send on ``transport`` (the reactor's plain-TCP server
    connection, or a TLS connection over one), or ``None`` when that cannot be read."""
    if not AVAILABLE:
        return None
    if type(transport) is not _SERVER:
        transport = getattr(transport, "transport", None)  # TLS over TCP
        if type(transport) is not _SERVER:
            return None
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


def batched_writer(transport: Any, batch: Batch, on_error: Any) -> BatchedWriter | None:
    """A :class:`BatchedWriter` for ``transport`` if it is the reactor's plain-TCP server
    connection and the internals are there; ``None`` means: write through ``transport.write``.
    """
    if not AVAILABLE or type(transport) is not _SERVER or transport.TLS:
        return None
    if not hasattr(transport, "_tempDataLen") or getattr(transport, "reactor", None) is None:
        return None
    return BatchedWriter(transport, batch, on_error)
