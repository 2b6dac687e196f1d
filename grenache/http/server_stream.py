"""The requests and responses the server streams, and a request's place in its pipeline.

The server (:mod:`grenache.http.server`) asks its factory's ``stream_router`` about each
request as soon as its header section is complete; a :data:`StreamHandler` it returns is
called at once with an :class:`HTTPStreamRequest` (the head, and the body through
``deliverBody`` as it arrives) and an :class:`HTTPStreamResponse` (an ``IConsumer`` for the
response body), and nothing is buffered. See the server module's docstring for how streams
keep their place in the pipeline and how the idle sweep treats them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IAddress
from twisted.python.failure import Failure

from grenache.http.messages import (
    CLOSE,
    KEEP_ALIVE,
    HTTPResponse,
    header_value,
    serialize_response,
    status_line,
)
from grenache.http.streams import BodyStream, BodyWriter

if TYPE_CHECKING:
    from grenache.http.server import HTTPServerProtocol

__all__ = ["HTTPStreamRequest", "HTTPStreamResponse", "StreamHandler", "StreamRouter"]


class HTTPStreamRequest(BodyStream):
    """A request whose body is streamed to its handler (see the module docstring).

    ``method``, ``path``, ``headers`` and ``peer`` are as in :class:`HTTPRequest`;
    ``version`` is ``"1.1"`` or ``"1.0"``. The body comes through :meth:`deliverBody`.
    """

    def __init__(
        self,
        proto: HTTPServerProtocol,
        method: str,
        path: str,
        headers: tuple[tuple[bytes, bytes], ...],
        peer: IAddress | None,
        version: str,
    ) -> None:
        super().__init__()
        self.method = method
        self.path = path
        self.headers = headers
        self.peer = peer
        self.version = version
        self._proto = proto
        self._slot: Slot | None = None

    def header(self, name: bytes) -> bytes | None:
        """The value of the first header called ``name`` (any case), or ``None``."""
        return header_value(self.headers, name)

    def _holding_changed(self) -> None:
        self._proto._stream_hold_changed(self)

    def _stop(self) -> None:
        self._proto.closeConnection(abort=True)


class HTTPStreamResponse(BodyWriter):
    """The response to a streamed request, sent as it is written (an ``IConsumer``).

    The status line and headers go out with the first write (:meth:`start` chooses them;
    the default is ``200`` with no extra header), followed by ``Transfer-Encoding: chunked``
    and ``Connection`` from the server; on HTTP/1.0 the body is raw and the connection
    closes after it. :meth:`respond` sends a whole :class:`HTTPResponse` instead (with
    ``Content-Length``). :meth:`abort` drops the connection, e.g. when the handler fails
    halfway through a body.
    """

    def __init__(self, proto: HTTPServerProtocol, slot: Slot, version_11: bool, head: bool):
        super().__init__(chunked=version_11)
        self.started = False
        self.status: int | None = None
        self._proto = proto
        self._slot = slot
        self._no_body = head

    def start(self, status: int = 200, headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        """Send the status line and headers (lines written verbatim, no CR or LF in them)."""
        if self.started:
            raise RuntimeError("the response has already started")
        if self._finished:
            raise RuntimeError("the response is finished")
        self.started = True
        self.status = status
        parts = [status_line(status)]
        if self.chunked:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        parts.append(CLOSE[2:] if self._slot.close else KEEP_ALIVE[2:])
        for name, value in headers:
            parts += (name, b": ", value, b"\r\n")
        parts.append(b"\r\n")
        self._emit(parts)
        if self._no_body:
            self.chunked = False

    def write(self, data: bytes) -> None:
        """Send ``data`` as the next piece of the body (after the head, at the first call)."""
        if not self.started and not self._finished:
            self.start()
        if self._no_body and not self._finished:
            return
        super().write(data)

    def finish(self) -> None:
        """End the response (sending the head first if nothing was written)."""
        if not self.started and not self._finished and self._lost is None:
            self.start()
        super().finish()

    def respond(self, response: HTTPResponse) -> None:
        """Send ``response`` whole, as a buffered handler would, and finish."""
        if self.started or self._finished:
            raise RuntimeError("the response has already started")
        self.started = True
        self.status = response.status
        if self._lost is None:
            self._emit([serialize_response(response, self._slot.close, self._no_body)])
        self.chunked = False
        super().finish()

    def abort(self) -> None:
        """Drop the connection now."""
        self._proto.closeConnection(abort=True)

    def _wrote(self) -> None:
        self._proto.lastActivity = self._proto._seconds()

    def _done(self) -> None:
        self._proto._stream_response_done(self._slot)


StreamHandler = Callable[[HTTPStreamRequest, HTTPStreamResponse], Any]
"""Handles a streamed request: reads the body and writes the response (it may return a
Deferred or a coroutine; a failure is logged and answered with ``500`` if nothing was sent
yet, or drops the connection)."""

StreamRouter = Callable[[HTTPStreamRequest], "StreamHandler | None"]
"""Called with each request's head: the handler that streams it, or ``None`` to buffer it."""


class Slot:
    """One request's place in the response pipeline."""

    __slots__ = (
        "close",
        "head",
        "interim",
        "request",
        "request_done",
        "response",
        "running",
        "stream",
        "waiting",
    )

    def __init__(self) -> None:
        self.response: HTTPResponse | None = None
        self.close = False  # close the connection after this response
        self.head = False  # HEAD request: send headers only
        self.interim: bytes | None = None  # a 100 Continue to send when this slot is first
        self.running = False  # the handler was called and has not answered yet
        self.waiting: Any = None  # and the Deferred of its answer, cancelled if abandoned
        self.stream: HTTPStreamResponse | None = None  # a streamed response
        self.request: HTTPStreamRequest | None = None  # and its request
        self.request_done = False  # (streams) the request body was read to its end

    def stream_busy(self) -> bool:
        """Whether this slot's stream handler has the turn (the idle sweep must spare it).

        Not when the client is the one to act: it does not read the response, or the body is
        still arriving and the handler does not hold it.
        """
        response = self.stream
        if response is None or response.finished:
            return False
        if response.paused and response._transport is not None:
            return False
        request = self.request
        return request is None or request.complete or request.holding

    def drop_stream(self, reason: Failure) -> None:
        """End this slot's stream, if any, with ``reason`` (the connection is closing)."""
        if self.request is not None:
            self.request._finish(reason)
        if self.stream is not None:
            self.stream._connection_gone(reason)
