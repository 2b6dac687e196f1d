"""The streaming hand-off of one server connection: :class:`StreamHandoffMixin` of
:class:`~grenache.http.server_protocol.HTTPServerProtocol`.

When a request's header section is complete the protocol asks the factory's
``stream_router`` about it (:meth:`StreamHandoffMixin._route`); a stream handler it returns
gets the request and response of :mod:`grenache.http.server_stream`, and the callbacks here
follow them: a stream holding its body pauses reading, a body over ``max_stream_size`` is
refused, a finished response lets the pipeline move on, and a closing connection ends them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from grenache import errors
from grenache.http.messages import HTTPResponse
from grenache.http.server_stream import HTTPStreamRequest, HTTPStreamResponse, Slot

if TYPE_CHECKING:
    import httptools

    from grenache.http.server_stream import StreamRouter

__all__ = ["INTERNAL_ERROR", "StreamHandoffMixin"]

log = Logger()

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
INTERNAL_ERROR = HTTPResponse(500, b"Internal Server Error")


class _StopParsing(Exception):
    """Raised inside a parser callback to abandon the rest of the input."""


class StreamHandoffMixin:
    """The streamed requests of :class:`~grenache.http.server_protocol.HTTPServerProtocol`.

    The state it uses is kept by the protocol (declared here for type checking only).
    """

    if TYPE_CHECKING:
        factory: Any  # the HTTPServerFactory; Any, as twisted's Protocol declares it
        stream_response_class: type[HTTPStreamResponse]
        _router: StreamRouter | None
        _parser: httptools.HttpRequestParser
        _keep_alive: bool
        _pending: deque[Slot]
        _stream_in: HTTPStreamRequest | None
        _stream_hold: bool
        _body_size: int
        _disconnected: bool

        def streamRequestReceived(self, method: bytes) -> HTTPStreamRequest: ...
        def closeConnection(self, abort: bool = False) -> None: ...
        def _reject(self, response: HTTPResponse) -> None: ...
        def _stop_input(self, reason: BaseException | None = None) -> None: ...
        def _update_reading(self) -> None: ...
        def _flush(self) -> None: ...

    def _route(self, slot: Slot, content_length: int, interim: bool) -> bool:
        """Ask the router about the request whose head is complete; start it if it streams.

        The ``100 Continue`` (``interim``) is due before anything the handler writes.
        """
        router: Any = self._router
        request = self.streamRequestReceived(self._parser.get_method())
        handler = router(request)
        if handler is None:
            return False
        limit = self.factory.max_stream_size
        if limit is not None and content_length > limit:
            self._reject(self.factory.too_large)
            raise _StopParsing()
        version_11 = request.version == "1.1"
        if interim:
            slot.interim = _CONTINUE
        slot.head = request.method == "HEAD"
        slot.close = not self._keep_alive or not version_11
        # Only HTTPServerProtocol mixes this class in.
        response = self.stream_response_class(self, slot, version_11, slot.head)  # type: ignore[arg-type]
        slot.stream = response
        slot.request = request
        request._slot = slot
        self._stream_in = request
        self._body_size = 0
        try:
            result = handler(request, response)
        except Exception:
            self._stream_failed(Failure(), request, response)
        else:
            if isinstance(result, Coroutine):
                result = Deferred.fromCoroutine(result)
            if isinstance(result, Deferred):
                result.addErrback(self._stream_failed, request, response)
        if self._stream_in is request:
            self._stream_hold_changed(request)
        if self._pending and self._pending[0] is slot:
            self._flush()
        return True

    def _stream_failed(
        self, failure: Failure, request: HTTPStreamRequest, response: HTTPStreamResponse
    ) -> None:
        log.failure(
            "HTTP stream handler failed for {method} {path}",
            failure,
            method=request.method,
            path=request.path,
        )
        if self._disconnected or response.finished:
            return
        if not response.started:
            response.respond(INTERNAL_ERROR)
        else:
            self.closeConnection(abort=True)

    def _stream_hold_changed(self, request: HTTPStreamRequest) -> None:
        if request is not self._stream_in:
            return
        hold = request.holding
        if hold != self._stream_hold:
            self._stream_hold = hold
            self._update_reading()

    def _stream_too_large(self, request: HTTPStreamRequest) -> None:
        """A streamed body crossed ``max_stream_size``: 413 if possible, else drop it."""
        slot = request._slot
        response = slot.stream if slot is not None else None
        if slot is not None:
            slot.close = True
        self._stop_input(errors.RequestTooLarge())
        if response is None or response.finished:
            self._flush()
        elif not response.started:
            response.respond(self.factory.too_large)
        else:
            self.closeConnection(abort=True)

    def _stream_response_done(self, slot: Slot) -> None:
        """A streamed response was finished by its handler."""
        if slot.request is not None and not slot.request_done:
            slot.request._discard()  # nobody will read the rest: read it and throw it away
        if self._pending and self._pending[0] is slot:
            self._flush()

    def _drop_streams(self, reason: Failure) -> None:
        """End every stream on this connection with ``reason`` (it is closing)."""
        stream_in = self._stream_in
        self._stream_in = None
        self._stream_hold = False
        if stream_in is not None:
            stream_in._finish(reason)
        for slot in self._pending:
            slot.drop_stream(reason)

    def _stream_busy(self) -> bool:
        """Whether a stream's handler has the turn (the idle sweep must spare it)."""
        return bool(self._pending) and self._pending[0].stream_busy()
