"""Per-socket bounds of the WebSocket servers: a client that never reads cannot grow the server.

Used by the RPC server (:mod:`grenache.transports.ws.server`), the publisher
(:mod:`grenache.transports.ws.pub`) and the grape's WebSocket API
(:mod:`grenache.grape.api_ws`); docs/protocol.rst, *RPC over WebSocket*, lists the defaults.

Output that a client does not read
----------------------------------

Each server socket registers a streaming producer with its transport (Twisted's
producer/consumer API). Twisted pauses it once the transport holds more unsent bytes than its
own buffer size (64 KiB for TCP); the socket then **stops reading** (no new request, ping or
message can make more output) and counts what it still writes (replies of requests already
running, published messages). The socket is **dropped** (aborted: its buffers are freed at once)
when that count passes ``max_pending_output`` bytes, or when the transport has not drained
within ``pending_output_timeout`` seconds. When Twisted says the buffer has drained, reading
resumes. So what one socket can hold unsent is about the transport's buffer size, plus
``max_pending_output``, plus one read's worth of pongs. Nothing is done per message while the
output flows; a socket that is held back has one timer until it drains or is dropped.

Drops are counted (``Limits.dropped``) and logged at most once per ``report_interval`` seconds,
with the number of drops not logged since, so a stream of misbehaving clients cannot turn the
log into a disk amplifier.

The opening handshake
---------------------

A socket must finish its opening handshake within ``OPEN_HANDSHAKE_TIMEOUT`` seconds of the TCP
connection (autobahn's ``openHandshakeTimeout``, on the transport's reactor), and its HTTP
request head may not exceed :data:`MAX_HANDSHAKE_SIZE` bytes (answered ``431``, then closed):
autobahn itself would buffer an endless head until the timeout.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

__all__ = [
    "DEFAULT_MAX_PENDING_OUTPUT",
    "DEFAULT_PENDING_OUTPUT_TIMEOUT",
    "DEFAULT_PUBLISHER_MAX_PENDING_OUTPUT",
    "DEFAULT_REPORT_INTERVAL",
    "HOLD_IN_FLIGHT",
    "HOLD_OUTPUT",
    "MAX_HANDSHAKE_SIZE",
    "Limits",
    "SocketLimits",
]

log = Logger()

DEFAULT_MAX_PENDING_OUTPUT = 1024 * 1024
"""Bytes a socket may still write once its transport's buffer is full, before it is dropped."""

DEFAULT_PUBLISHER_MAX_PENDING_OUTPUT = 4 * 1024 * 1024
"""The publisher's ``max_pending_output``: a publisher sends in bursts without waiting for its
subscribers (a burst within one turn of the reactor is all held at once), so it allows more."""

DEFAULT_PENDING_OUTPUT_TIMEOUT = 30.0
"""Seconds a socket's transport may stay full (its client not reading) before it is dropped."""

DEFAULT_REPORT_INTERVAL = 60.0
"""Seconds between two log lines about dropped sockets (the others are counted)."""

MAX_HANDSHAKE_SIZE = 16 * 1024
"""Largest HTTP request head accepted for the opening handshake (Node's header limit)."""

HOLD_OUTPUT = 1
"""Reading is paused because the client does not read its output."""

HOLD_IN_FLIGHT = 2
"""Reading is paused because the socket runs its maximum of requests."""


class Limits:
    """The output bounds of one server's sockets, and the count of sockets dropped for them.

    ``clock`` schedules the drop deadlines; ``what`` names the server in log lines
    (``"WebSocket RPC server"``).
    """

    def __init__(
        self,
        clock: Any,
        what: str,
        *,
        max_pending_output: int = DEFAULT_MAX_PENDING_OUTPUT,
        pending_output_timeout: float = DEFAULT_PENDING_OUTPUT_TIMEOUT,
        report_interval: float = DEFAULT_REPORT_INTERVAL,
    ) -> None:
        if max_pending_output < 1 or not pending_output_timeout > 0:
            raise ValueError("max_pending_output and pending_output_timeout must be positive")
        self.clock = clock
        self.what = what
        self.max_pending_output = max_pending_output
        self.pending_output_timeout = pending_output_timeout
        self.report_interval = report_interval
        #: sockets dropped because their client did not read
        self.dropped = 0
        self._next_report = 0.0
        self._unreported = 0

    def socket_dropped(self, peer: str, reason: str) -> None:
        """Count one dropped socket; log it unless a line went out less than
        ``report_interval`` seconds ago (then the next line says how many were not logged)."""
        self.dropped += 1
        now = self.clock.seconds()
        if now < self._next_report:
            self._unreported += 1
            return
        self._next_report = now + self.report_interval
        unreported, self._unreported = self._unreported, 0
        log.warn(
            "{what}: dropped {peer}: {reason} ({unreported} more dropped since the last "
            "such line; {total} in all)",
            what=self.what,
            peer=peer,
            reason=reason,
            unreported=unreported,
            total=self.dropped,
        )


class _OutputProducer:
    """What the transport pauses and resumes: the socket's side of producer/consumer."""

    __slots__ = ("protocol",)

    def __init__(self, protocol: SocketLimits) -> None:
        self.protocol = protocol

    def pauseProducing(self) -> None:
        self.protocol._output_full()

    def resumeProducing(self) -> None:
        self.protocol._output_drained()

    def stopProducing(self) -> None:
        self.protocol._cancel_output_deadline()


class SocketLimits:
    """Mixin for autobahn server protocols: bounded output and handshake (module docstring).

    Put it before autobahn's protocol among the bases. Call :meth:`limit_output` from
    ``connectionMade`` (the transport is set), and :meth:`count_output` after each write the
    protocol makes itself while ``output_blocked`` is true. :meth:`hold_reading` and
    :meth:`release_reading` pause reading for several reasons at once (``HOLD_*`` bits).
    """

    output_blocked: bool = False
    """Whether the transport's buffer is full (the client is not reading)."""

    _limits: Limits
    _reading_holds: int = 0
    _output_written: int = 0
    _output_deadline: Any = None
    _output_dropped: bool = False

    def limit_output(self, limits: Limits) -> None:
        """Register with the transport as a streaming producer bounded by ``limits``."""
        self._limits = limits
        self.transport.registerProducer(_OutputProducer(self), True)  # type: ignore[attr-defined]

    def count_output(self, size: int) -> None:
        """``size`` more bytes were written while the output is blocked; drop past the bound."""
        self._output_written += size
        if self._output_written > self._limits.max_pending_output:
            self.drop_slow_client(
                f"over {self._limits.max_pending_output} bytes of output not read"
            )

    def hold_reading(self, reason: int) -> None:
        """Stop reading from the socket (``reason``: a ``HOLD_*`` bit)."""
        if not self._reading_holds:
            self.transport.pauseProducing()  # type: ignore[attr-defined]
        self._reading_holds |= reason

    def release_reading(self, reason: int) -> None:
        """Lift the ``reason`` hold; read again once no hold is left."""
        if not self._reading_holds & reason:
            return
        self._reading_holds &= ~reason
        transport: Any = self.transport  # type: ignore[attr-defined]
        if not self._reading_holds and transport is not None:
            transport.resumeProducing()

    def drop_slow_client(self, reason: str) -> None:
        """Abort the socket (its buffers are freed), count and maybe log it.

        The socket is closed at once for autobahn too (``dropConnection``): the rest of what
        was read with it is not processed and nothing more is written to it.
        """
        self._cancel_output_deadline()
        if self._output_dropped:
            return
        self._output_dropped = True
        self._limits.socket_dropped(str(self.peer), reason)  # type: ignore[attr-defined]
        p: Any = self
        # autobahn logs a drop it thinks unclean as a warning, one per socket; this one was
        # counted (and logged at a bounded rate) above, so it is told the drop is clean.
        p.wasClean = True
        p.dropConnection(abort=True)
        p.wasClean = False
        p.wasNotCleanReason = f"dropped: {reason}"

    def _output_full(self) -> None:
        # Twisted calls this on every write while its buffer is over its size.
        if self.output_blocked:
            return
        self.output_blocked = True
        self._output_written = 0
        limits = self._limits
        self._output_deadline = limits.clock.callLater(
            limits.pending_output_timeout, self._output_timed_out
        )
        self.hold_reading(HOLD_OUTPUT)

    def _output_drained(self) -> None:
        if not self.output_blocked:
            return
        self.output_blocked = False
        self._cancel_output_deadline()
        self.release_reading(HOLD_OUTPUT)

    def _output_timed_out(self) -> None:
        self._output_deadline = None
        self.drop_slow_client(f"output not read for {self._limits.pending_output_timeout:g} s")

    def _cancel_output_deadline(self) -> None:
        call, self._output_deadline = self._output_deadline, None
        if call is not None and call.active():
            call.cancel()

    def processHandshake(self) -> None:
        """autobahn's, refusing a request head over :data:`MAX_HANDSHAKE_SIZE` bytes."""
        data: bytes = self.data  # type: ignore[attr-defined]
        if len(data) > MAX_HANDSHAKE_SIZE and data.find(b"\r\n\r\n", 0, MAX_HANDSHAKE_SIZE) < 0:
            self.failHandshake(  # type: ignore[attr-defined]
                "HTTP request head too large", 431
            )
            return
        super().processHandshake()  # type: ignore[misc]
