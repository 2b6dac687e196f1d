"""The deadlines of one server connection: :class:`DeadlinesMixin` of
:class:`~grenache.http.server_protocol.HTTPServerProtocol`.

The factory's single sweep (:class:`~grenache.http.server.HTTPServerFactory`) calls
:meth:`DeadlinesMixin.checkDeadlines` on every connection; it enforces the output timeout,
the header deadline, the minimum body rate and the idle timeout from clock times the protocol
records as it reads and writes (no timer per request or connection). The limits themselves
are the factory's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.python.failure import Failure

from grenache import errors
from grenache.speedups import twisted_tcp

if TYPE_CHECKING:
    from collections.abc import Callable

    from grenache.http.messages import HTTPResponse
    from grenache.http.server_stream import HTTPStreamRequest, Slot

__all__ = ["DeadlinesMixin"]


class DeadlinesMixin:
    """The sweep's checks of :class:`~grenache.http.server_protocol.HTTPServerProtocol`.

    The state it reads is kept by the protocol (declared here for type checking only).
    """

    if TYPE_CHECKING:
        factory: Any  # the HTTPServerFactory; Any, as twisted's Protocol declares it
        transport: Any
        lastActivity: float
        _disconnected: bool
        _closing: bool
        _input_closed: bool
        _paused: bool
        _in_headers: bool
        _running: int
        _current: Slot | None
        _stream_in: HTTPStreamRequest | None
        _write: Callable[[bytes], object] | None
        _abort_connection: Callable[[], object] | None
        _header_timeout: float | None
        _head_started: float
        _body_started: float
        _body_base: int
        _body_size: int
        _out_full: bool
        _out_since: float
        _out_seen: int

        def closeConnection(self, abort: bool = False) -> None: ...
        def _reject(self, response: HTTPResponse) -> None: ...
        def _stop_input(self, reason: BaseException | None = None) -> None: ...
        def _drop_streams(self, reason: Failure) -> None: ...
        def _forget_pending(self) -> None: ...
        def _lose(self) -> None: ...
        def _stream_busy(self) -> bool: ...

    def checkDeadlines(self, now: float) -> None:
        """Enforce this connection's deadlines (the factory's sweep calls it periodically).

        - output: a client that has not read for ``output_timeout`` seconds while the send
          buffer is full is dropped (aborted: it would not read a goodbye either);
        - header section: one not complete ``header_timeout`` seconds after its first byte
          is answered ``408`` (the factory's ``timed_out``) and the connection closed;
        - buffered body: one arriving slower than ``min_body_rate`` bytes a second (averaged
          since the header section, after ``body_grace`` seconds) likewise;
        - idle: see :meth:`checkIdle`.

        Time during which the server itself did not read (a full pipeline, a stream holding
        its body, a full send buffer) does not count against the client.
        """
        if self._disconnected:
            return
        factory = self.factory
        if self._out_full:
            limit = factory.output_timeout
            if limit:
                seen = twisted_tcp.pending_output(self.transport)
                if seen is not None and 0 <= seen < self._out_seen:
                    self._out_since = now  # the client read some: progress
                if seen is not None:
                    self._out_seen = seen
                if now - self._out_since >= limit:
                    self.closeConnection(abort=True)
                    return
        elif not self._paused and not self._input_closed:
            if self._in_headers:
                started = self._head_started
                limit = self._header_timeout
                if started >= 0 and limit and now - started >= limit:
                    self._reject(factory.timed_out)
                    return
            elif self._stream_in is None and (self._current is None or not self._current.interim):
                rate = factory.min_body_rate
                elapsed = now - self._body_started
                if (
                    rate
                    and elapsed >= factory.body_grace
                    and self._body_size - self._body_base < rate * elapsed
                ):
                    self._reject(factory.timed_out)
                    return
        if factory.idle_timeout:
            self.checkIdle(now, factory.idle_timeout)

    def checkIdle(self, now: float, idle_timeout: float) -> None:
        """Close the connection if it has been idle ``idle_timeout`` seconds (sweep callback).

        A connection waiting on a handler is busy, not idle (a stream too, unless it waits for
        the client). One that was already asked to close and is still here (a client that
        does not read) is aborted.
        """
        if self._disconnected or self._running or self._stream_busy():
            return
        if now - self.lastActivity < idle_timeout:
            return
        if self._write is None:
            return
        if self._closing:
            if self._abort_connection is not None:
                self._abort_connection()
            return
        self._stop_input(errors.RequestTimeout())
        self._drop_streams(Failure(errors.RequestTimeout()))
        self._forget_pending()
        self.lastActivity = now
        self._lose()
