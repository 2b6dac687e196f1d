"""The output of one server connection: :class:`OutputMixin` of
:class:`~grenache.http.server_protocol.HTTPServerProtocol`.

Responses are written strictly in request order as their slots fill (:meth:`OutputMixin._flush`),
requests held back by a full pipeline or a full send buffer are handed to the handler as
room appears, and the transport's send-buffer backpressure reaches the protocol through an
:class:`_OutputFlow` push producer: while the buffer is full nothing more is written and
nothing is read (the sweep's ``output_timeout`` drops a client that never drains it).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from grenache.http.messages import serialize_response

if TYPE_CHECKING:
    from collections.abc import Callable

    from grenache.http.messages import HTTPRequest
    from grenache.http.server_stream import Slot
    from grenache.speedups import twisted_tcp

__all__ = ["OutputMixin"]


class OutputMixin:
    """Ordered response writing and output backpressure of
    :class:`~grenache.http.server_protocol.HTTPServerProtocol`.

    The state it uses is kept by the protocol (declared here for type checking only).
    """

    if TYPE_CHECKING:
        factory: Any  # the HTTPServerFactory; Any, as twisted's Protocol declares it
        transport: Any
        lastActivity: float
        _seconds: Callable[[], float]
        _write: Callable[[bytes], object] | None
        _batched: twisted_tcp.BatchedWriter | None
        _pending: deque[Slot]
        _held: deque[tuple[Slot, HTTPRequest]]
        _current: Slot | None
        _flushing: bool
        _flush_again: bool
        _closing: bool
        _disconnected: bool
        _input_closed: bool
        _pipeline_full: bool
        _body_started: float
        _flow: _OutputFlow | None
        _out_full: bool
        _out_since: float
        _out_seen: int

        def closeConnection(self, abort: bool = False) -> None: ...
        def _close(self) -> None: ...
        def _update_reading(self) -> None: ...
        def _dispatch(self, slot: Slot, request: HTTPRequest) -> None: ...

    def _flush(self) -> None:
        """Write every response that is ready, in request order."""
        if self._flushing:
            self._flush_again = True
            return
        self._flushing = True
        try:
            while True:
                self._flush_again = False
                self._flush_once()
                if not self._flush_again:
                    break
        finally:
            self._flushing = False

    def _flush_once(self) -> None:
        pending = self._pending
        write = self._write
        if write is None or self._closing:
            return
        wrote = False
        while pending and not self._out_full:
            slot = pending[0]
            stream = slot.stream
            if stream is not None:
                if slot.interim is not None:
                    write(slot.interim)
                    slot.interim = None
                if stream._transport is None:
                    self._spill()
                    # The stream's own producer follows the send buffer while it is live.
                    self._unregister_flow()
                    stream._go_live(self.transport)
                    if self._flush_again or self._closing or not pending or pending[0] is not slot:
                        return  # the handler acted meanwhile: flushed again from the top
                if not (stream.finished and slot.request_done):
                    break
                pending.popleft()
                wrote = True
                if slot.close:
                    self._close()
                    return
                self._register_flow()
                continue
            if slot.response is None:
                if slot.interim is not None:
                    write(slot.interim)
                    slot.interim = None
                    if slot is self._current:
                        self._body_started = self._seconds()  # the client may send it now
                break
            pending.popleft()
            write(serialize_response(slot.response, slot.close, slot.head))
            wrote = True
            if slot.close:
                self._close()
                return
        if wrote:
            self.lastActivity = self._seconds()
        if self._held:
            self._dispatch_held()
        if (
            self._pipeline_full
            and len(pending) <= self.factory.max_pipeline // 2
            and not self._input_closed
        ):
            self._pipeline_full = False
            self._update_reading()

    def _dispatch_held(self) -> None:
        """Hand held requests to the handler, in order, while fewer than ``max_pipeline``
        answers are outstanding and the client reads."""
        held = self._held
        limit = self.factory.max_pipeline
        pending = self._pending
        while held and not self._out_full and len(pending) - len(held) <= limit:
            slot, request = held.popleft()
            self._dispatch(slot, request)

    def _register_flow(self) -> None:
        """Follow the transport's send buffer (a push producer it pauses when full)."""
        if self._flow is not None or self._disconnected or self._closing:
            return
        register = getattr(self.transport, "registerProducer", None)
        if register is None:
            return
        flow = _OutputFlow(self)
        try:
            register(flow, True)
        except RuntimeError:
            return  # another producer is registered (a test transport's, say): no bound
        self._flow = flow

    def _unregister_flow(self) -> None:
        """Stop following the send buffer (a stream's producer takes over, or closing)."""
        flow, self._flow = self._flow, None
        if flow is None:
            return
        flow.proto = None
        if self._out_full:
            self._output_paused(False, flow_gone=True)
        transport: Any = self.transport
        if transport is not None and not self._disconnected:
            transport.unregisterProducer()

    def _output_paused(self, full: bool, flow_gone: bool = False) -> None:
        """The transport's send buffer filled (``full``) or drained.

        While it is full nothing more is written (responses wait in their slots) and nothing
        is read, so one client that does not read holds at most the buffer and one response;
        the sweep drops it after ``output_timeout`` without progress.
        """
        if full == self._out_full or self._disconnected:
            return
        self._out_full = full
        if full:
            self._out_since = self._seconds()
            self._out_seen = -1
        elif not flow_gone:
            self._flush()  # may fill the buffer again before reading resumes
        self._update_reading()

    def _spill(self) -> None:
        """Hand batched output to the transport now, before something else is written to it."""
        if self._batched is not None:
            self._batched.spill()

    def _send_failed(self) -> None:
        """Sending the batched output raised (logged by the batch): drop the connection."""
        self.closeConnection(abort=True)


@implementer(IPushProducer)
class _OutputFlow:
    """Registered on the transport: relays its send-buffer backpressure to the protocol."""

    __slots__ = ("proto",)

    def __init__(self, proto: OutputMixin) -> None:
        self.proto: OutputMixin | None = proto

    def pauseProducing(self) -> None:
        if self.proto is not None:
            self.proto._output_paused(True)

    def resumeProducing(self) -> None:
        if self.proto is not None:
            self.proto._output_paused(False)

    def stopProducing(self) -> None:
        """The connection is going: ``connectionLost`` follows."""
