"""The lean HTTP/1.1 server protocol shared by the grape API and the RPC HTTP transport.

DESIGN.md ("HTTP servers on the hot path are lean") explains why this exists instead of
``twisted.web``: a bare :class:`~twisted.internet.protocol.Protocol` parsing with ``httptools``
(llhttp, the parser inside Node.js) serves several times more requests per second than a
``Site``. The protocol does only what a JSON API needs:

- HTTP/1.1 keep-alive by default; ``Connection: close`` and HTTP/1.0 without keep-alive are
  honoured (the response says ``Connection: close`` and the connection is closed after it);
- pipelining: responses go out strictly in request order, even when handlers finish out of
  order; reading is paused while more than ``max_pipeline`` responses are outstanding;
- request bodies with ``Content-Length`` or ``Transfer-Encoding: chunked``, and
  ``Expect: 100-continue`` (the interim ``100 Continue`` is sent when the request's turn comes);
- responses always carry ``Content-Length`` and ``Connection`` and nothing else unless the
  handler adds headers (no ``Date``, no ``Content-Type``: the grape API must send none);
- limits: a body over ``max_body_size`` is answered with the factory's ``too_large`` response
  and the connection is closed as soon as the limit is crossed (the rest is never read); a
  header section over ``max_header_size`` gets ``431`` and malformed HTTP ``400``, both closing;
- a handler that raises or whose Deferred fails gets ``500 Internal Server Error`` (logged), and
  the connection keeps serving;
- an idle timeout without one timer per connection: the factory runs a single sweep
  (a :class:`~twisted.internet.task.LoopingCall` on the injected clock, running only while
  connections exist) that closes connections idle for ``idle_timeout`` seconds.

Requests are delivered whole (``HTTPRequest.body`` is bytes). The parser callbacks keep the
body path separate (:meth:`HTTPServerProtocol.bodyChunkReceived`) so a streaming subclass can
hand chunks to a consumer instead of buffering them.

TLS is not handled here: serve the factory through a TLS endpoint.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Coroutine
from http import HTTPStatus
from typing import Any

import attrs
import httptools
from twisted.internet import protocol
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IPushProducer,
    IReactorTime,
)
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = [
    "HTTPRequest",
    "HTTPResponse",
    "HTTPServerFactory",
    "HTTPServerProtocol",
    "RequestHandler",
]

log = Logger()


@attrs.frozen
class HTTPRequest:
    """One complete HTTP request, as a handler sees it.

    ``path`` is the raw request target exactly as sent (query string included), decoded as
    latin-1 so that every byte survives; ``headers`` keeps the order and repetitions of the
    request with names lowercased.
    """

    method: str
    path: str
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    peer: IAddress | None = None

    def header(self, name: bytes) -> bytes | None:
        """The value of the first header called ``name`` (any case), or ``None``."""
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None


@attrs.frozen
class HTTPResponse:
    """What a handler answers.

    ``headers`` are extra header lines written verbatim after ``Content-Length`` and
    ``Connection``, which the server always adds itself; they must not contain CR or LF.
    """

    status: int = 200
    body: bytes = b""
    headers: tuple[tuple[bytes, bytes], ...] = ()


RequestHandler = Callable[[HTTPRequest], "HTTPResponse | Deferred[HTTPResponse]"]
"""Answers a request, either at once or through a Deferred (a coroutine is accepted too)."""


# Node's http.STATUS_CODES where Python's phrase differs, so status lines match Node's bytes.
_NODE_REASONS = {
    413: "Payload Too Large",
    414: "URI Too Long",
    416: "Range Not Satisfiable",
}
_STATUS_LINES: dict[int, bytes] = {}


def _status_line(status: int) -> bytes:
    """``HTTP/1.1 <status> <reason>\\r\\n``, with Node's reason phrases (``unknown`` if none)."""
    line = _STATUS_LINES.get(status)
    if line is None:
        reason = _NODE_REASONS.get(status)
        if reason is None:
            try:
                reason = HTTPStatus(status).phrase
            except ValueError:
                reason = "unknown"
        line = f"HTTP/1.1 {status} {reason}\r\n".encode("latin-1")
        if len(_STATUS_LINES) < 1000:
            _STATUS_LINES[status] = line
    return line


_KEEP_ALIVE = b"\r\nConnection: keep-alive\r\n"
_CLOSE = b"\r\nConnection: close\r\n"
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_BAD_REQUEST = HTTPResponse(400, b"Bad Request")
_HEADERS_TOO_LARGE = HTTPResponse(431, b"Request Header Fields Too Large")
_INTERNAL_ERROR = HTTPResponse(500, b"Internal Server Error")


def _serialize(response: HTTPResponse, close: bool, head: bool) -> bytes:
    """The bytes of a complete response (no body for HEAD, but its Content-Length)."""
    body = response.body
    parts = [
        _status_line(response.status),
        b"Content-Length: ",
        str(len(body)).encode("ascii"),
        _CLOSE if close else _KEEP_ALIVE,
    ]
    for name, value in response.headers:
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    if not head:
        parts.append(body)
    return b"".join(parts)


class _StopParsing(Exception):
    """Raised inside a parser callback to abandon the rest of the input."""


class _Slot:
    """One request's place in the response pipeline."""

    __slots__ = ("close", "head", "interim", "response", "running")

    def __init__(self) -> None:
        self.response: HTTPResponse | None = None
        self.close = False  # close the connection after this response
        self.head = False  # HEAD request: send headers only
        self.interim: bytes | None = None  # a 100 Continue to send when this slot is first
        self.running = False  # the handler was called and has not answered yet


class HTTPServerProtocol(protocol.Protocol):
    """One HTTP/1.1 server connection (see the module docstring for the behaviour).

    The ``on_*`` methods are ``httptools`` parser callbacks, not public API.
    """

    def __init__(self, factory: HTTPServerFactory) -> None:
        self.factory = factory
        self._handler = factory.handler
        self._seconds = factory.seconds
        self._max_body = factory.max_body_size
        self._max_header = factory.max_header_size
        self._parser = httptools.HttpRequestParser(self)
        # Transport methods, bound once in connectionMade (fast, and clear to mypy without
        # the zope plugin). ``_producer`` is None when the transport cannot pause reading.
        self._write: Callable[[bytes], object] | None = None
        self._lose_connection: Callable[[], object] = _nothing
        self._abort_connection: Callable[[], object] | None = None
        self._producer: IPushProducer | None = None
        self._peer: IAddress | None = None
        # Responses in request order; the current request's slot is the last one.
        self._pending: deque[_Slot] = deque()
        self._current: _Slot | None = None
        self._running = 0  # handlers called and not yet answered
        # The request being parsed.
        self._url: list[bytes] = []
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._body_size = 0
        self._header_size = 0  # bytes of request line and headers seen by callbacks
        self._header_raw = 0  # bytes of whole chunks that arrived inside one header section
        self._in_headers = True  # between two messages or inside a header section
        self._messages = 0  # header sections completed, to tell chunk boundaries apart
        self._keep_alive = True
        # Input flow.
        self._input_closed = False  # no further request will be parsed
        self._paused = False  # reading paused because the pipeline is full
        self._feeding = False  # inside parser.feed_data (it must not be re-entered)
        self._buffered: deque[bytes] = deque()  # input received while paused or feeding
        self._closing = False  # loseConnection was called
        self._disconnected = False
        self.lastActivity = 0.0  # clock time of the last byte in or response out

    # --- connection events ---------------------------------------------------------------

    def connectionMade(self) -> None:
        """Register with the factory's idle sweep and remember the peer address."""
        transport: Any = self.transport
        self._write = transport.write
        self._lose_connection = transport.loseConnection
        self._abort_connection = getattr(transport, "abortConnection", None)
        if IPushProducer.providedBy(transport):
            self._producer = transport
        self._peer = transport.getPeer()
        self.lastActivity = self._seconds()
        self.factory.connectionOpened(self)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        """Forget every pending response: results of handlers still running are discarded."""
        self._disconnected = True
        self._input_closed = True
        self._pending.clear()
        self._buffered.clear()
        self._current = None
        self.factory.connectionClosed(self)

    def dataReceived(self, data: bytes) -> None:
        """Parse ``data``; never raises (errors become 400/431/413/500 responses)."""
        self.lastActivity = self._seconds()
        if self._input_closed:
            return
        if self._paused or self._feeding or self._buffered:
            self._buffered.append(data)
            if not self._feeding and not self._paused:
                self._drain()
            return
        self._parse(data)
        if self._buffered and not self._paused:
            self._drain()

    # --- input ----------------------------------------------------------------------------

    def _drain(self) -> None:
        """Parse input that was held back while paused or while the parser was busy."""
        buffered = self._buffered
        while buffered and not self._paused and not self._input_closed:
            self._parse(buffered.popleft())
        if self._input_closed:
            buffered.clear()

    def _parse(self, data: bytes) -> None:
        """Feed one chunk to the parser and turn parser errors into responses."""
        stalled = self._in_headers
        messages = self._messages
        self._feeding = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # The request asking to upgrade was complete and has been dispatched; it is
            # answered normally (marked close in on_headers_complete) and nothing follows.
            self._stop_input()
        except httptools.HttpParserError as e:
            if not self._input_closed:
                cause = e.__context__
                if cause is not None and not isinstance(cause, _StopParsing):
                    log.failure(
                        "HTTP server callback failed",
                        Failure(cause, type(cause), cause.__traceback__),  # type: ignore[no-untyped-call]
                    )
                    self._reject(_INTERNAL_ERROR)
                else:
                    self._reject(_BAD_REQUEST)
        except Exception:
            log.failure("Unexpected error parsing HTTP input")
            if not self._input_closed:
                self._reject(_INTERNAL_ERROR)
        else:
            # A header section that spans whole chunks is buffered inside httptools before
            # any callback sees it; count those bytes too so it cannot grow without bound.
            if stalled and self._in_headers and messages == self._messages:
                self._header_raw += len(data)
                if self._header_raw > self._max_header and not self._input_closed:
                    self._reject(_HEADERS_TOO_LARGE)
        finally:
            self._feeding = False

    def _stop_input(self) -> None:
        """Parse nothing more and stop reading from the socket."""
        if self._input_closed:
            return
        self._input_closed = True
        self._buffered.clear()
        self._set_reading(False)

    def _set_reading(self, reading: bool) -> None:
        producer: Any = self._producer
        if self._closing or self._disconnected or producer is None:
            return
        if reading:
            producer.resumeProducing()
        else:
            producer.pauseProducing()

    def _reject(self, response: HTTPResponse) -> None:
        """Answer the request being parsed (or a new slot) with ``response`` and close after it."""
        slot = self._current
        if slot is None or slot.running or slot.response is not None:
            slot = _Slot()
            self._pending.append(slot)
        self._current = None
        slot.close = True
        slot.interim = None
        slot.response = response
        self._stop_input()
        self._flush()

    # --- httptools callbacks --------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        self._header_size += len(url)
        if self._header_size > self._max_header:
            self._reject(_HEADERS_TOO_LARGE)
            raise _StopParsing()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))
        self._header_size += len(name) + len(value) + 4
        if self._header_size > self._max_header:
            self._reject(_HEADERS_TOO_LARGE)
            raise _StopParsing()

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._messages += 1
        self._header_raw = 0
        parser = self._parser
        slot = _Slot()
        self._current = slot
        self._pending.append(slot)
        self._keep_alive = parser.should_keep_alive() and not parser.should_upgrade()
        content_length = -1
        chunked = expect = False
        for name, value in self._headers:
            if name == b"content-length":
                try:
                    content_length = int(value)
                except ValueError:
                    content_length = -1
            elif name == b"transfer-encoding":
                chunked = True
            elif name == b"expect":
                expect = value.strip().lower() == b"100-continue"
        if self._max_body is not None and content_length > self._max_body:
            self._reject(self.factory.too_large)
            raise _StopParsing()
        # The interim response only matters if a body is still to come.
        if expect and (content_length > 0 or chunked) and parser.get_http_version() == "1.1":
            slot.interim = _CONTINUE
            if self._pending[0] is slot:
                self._flush()
        if len(self._pending) > self.factory.max_pipeline and not self._paused:
            self._paused = True
            self._set_reading(False)

    def on_body(self, body: bytes) -> None:
        self.bodyChunkReceived(body)

    def on_message_complete(self) -> None:
        slot = self._current
        self._current = None
        self._in_headers = True
        request = self.requestReceived(self._parser.get_method())
        self._url = []
        self._headers = []
        self._body = []
        self._body_size = 0
        self._header_size = 0
        if slot is None:  # pragma: no cover - headers_complete always runs first
            return
        slot.head = request.method == "HEAD"
        slot.close = not self._keep_alive
        slot.interim = None
        self._dispatch(slot, request)
        if slot.close:
            self._stop_input()
            raise _StopParsing()

    # --- request assembly (the seam for a streaming subclass) -----------------------------

    def bodyChunkReceived(self, chunk: bytes) -> None:
        """Account for and buffer one chunk of the request body (already de-chunked).

        Crossing ``max_body_size`` answers the factory's ``too_large`` response at once and
        abandons the rest of the input, so an oversized upload is never buffered.
        """
        self._body_size += len(chunk)
        if self._max_body is not None and self._body_size > self._max_body:
            self._body = []
            self._reject(self.factory.too_large)
            raise _StopParsing()
        self._body.append(chunk)

    def requestReceived(self, method: bytes) -> HTTPRequest:
        """Build the :class:`HTTPRequest` for the message just completed."""
        body = self._body
        return HTTPRequest(
            method=_method_name(method),
            path=b"".join(self._url).decode("latin-1"),
            headers=tuple(self._headers),
            body=body[0] if len(body) == 1 else b"".join(body),
            peer=self._peer,
        )

    # --- responses ------------------------------------------------------------------------

    def _dispatch(self, slot: _Slot, request: HTTPRequest) -> None:
        """Call the handler; a plain result is queued at once, a Deferred when it fires."""
        try:
            result: Any = self._handler(request)
        except Exception:
            log.failure(
                "HTTP handler failed for {method} {path}", method=request.method, path=request.path
            )
            self._answer(slot, _INTERNAL_ERROR)
            return
        if type(result) is HTTPResponse:
            self._answer(slot, result)
            return
        if isinstance(result, Coroutine):
            result = Deferred.fromCoroutine(result)
        if isinstance(result, Deferred):
            slot.running = True
            self._running += 1
            result.addCallbacks(
                self._deferred_answer,
                self._deferred_failure,
                callbackArgs=(slot,),
                errbackArgs=(slot, request),
            )
        else:
            self._answer(slot, result)

    def _deferred_answer(self, response: HTTPResponse, slot: _Slot) -> None:
        self._running -= 1
        slot.running = False
        self._answer(slot, response)

    def _deferred_failure(self, failure: Failure, slot: _Slot, request: HTTPRequest) -> None:
        self._running -= 1
        slot.running = False
        log.failure(
            "HTTP handler failed for {method} {path}",
            failure,
            method=request.method,
            path=request.path,
        )
        self._answer(slot, _INTERNAL_ERROR)

    def _answer(self, slot: _Slot, response: object) -> None:
        if self._disconnected:
            return  # the client left: the late result is dropped
        if not isinstance(response, HTTPResponse):
            log.error("HTTP handler returned {response!r}, not an HTTPResponse", response=response)
            response = _INTERNAL_ERROR
        slot.response = response
        if self._pending and self._pending[0] is slot:
            self._flush()

    def _flush(self) -> None:
        """Write every response that is ready, in request order."""
        pending = self._pending
        write = self._write
        if write is None or self._closing:
            return
        wrote = False
        while pending:
            slot = pending[0]
            if slot.response is None:
                if slot.interim is not None:
                    write(slot.interim)
                    slot.interim = None
                break
            pending.popleft()
            write(_serialize(slot.response, slot.close, slot.head))
            wrote = True
            if slot.close:
                self._close()
                return
        if wrote:
            self.lastActivity = self._seconds()
        if (
            self._paused
            and len(pending) <= self.factory.max_pipeline // 2
            and not self._input_closed
        ):
            self._paused = False
            self._set_reading(True)
            if self._buffered and not self._feeding:
                self._drain()

    def _close(self) -> None:
        self._stop_input()
        self._pending.clear()
        self._current = None
        if not self._closing:
            self._closing = True
            self._lose_connection()

    def closeConnection(self, abort: bool = False) -> None:
        """Close now, dropping unanswered requests (``abort``: without flushing writes)."""
        if self._disconnected:
            return
        self._stop_input()
        self._pending.clear()
        self._current = None
        if abort and self._abort_connection is not None:
            self._closing = True
            self._abort_connection()
        elif not self._closing:
            self._closing = True
            self._lose_connection()

    # --- idle sweep -----------------------------------------------------------------------

    def checkIdle(self, now: float, idle_timeout: float) -> None:
        """Close the connection if it has been idle ``idle_timeout`` seconds (sweep callback).

        A connection waiting on a handler is busy, not idle. One that was already asked to
        close and is still here (a client that does not read) is aborted.
        """
        if self._disconnected or self._running:
            return
        if now - self.lastActivity < idle_timeout:
            return
        if self._write is None:
            return
        if self._closing:
            if self._abort_connection is not None:
                self._abort_connection()
            return
        self._stop_input()
        self._pending.clear()
        self._closing = True
        self.lastActivity = now
        self._lose_connection()


def _nothing() -> None:
    """Placeholder for transport methods before the connection is made."""


_METHODS: dict[bytes, str] = {}


def _method_name(method: bytes) -> str:
    name = _METHODS.get(method)
    if name is None:
        name = method.decode("latin-1")
        if len(_METHODS) < 64:
            _METHODS[method] = name
    return name


class HTTPServerFactory(protocol.Factory):
    """Builds :class:`HTTPServerProtocol` connections that answer with ``handler``.

    ``max_body_size=None`` means no limit. ``idle_timeout`` is in seconds (``None`` or ``0``
    disables it); the single sweep runs every ``idle_timeout / 4`` seconds, so an idle
    connection closes between ``idle_timeout`` and ``1.25 * idle_timeout``. ``max_pipeline`` is
    how many outstanding responses make a connection stop reading (it resumes at half).
    """

    def __init__(
        self,
        handler: RequestHandler,
        clock: IReactorTime,
        *,
        max_body_size: int | None = 8192,
        max_header_size: int = 16384,
        idle_timeout: float | None = 60.0,
        too_large: HTTPResponse = HTTPResponse(413, b"Payload Too Large"),
        max_pipeline: int = 64,
    ) -> None:
        self.handler = handler
        self.clock = clock
        # Bound once; typed through Any because mypy (without the zope plugin) misreads the
        # self-less zope declaration of IReactorTime.seconds.
        any_clock: Any = clock
        self.seconds: Callable[[], float] = any_clock.seconds
        self.max_body_size = max_body_size
        self.max_header_size = max_header_size
        self.idle_timeout = idle_timeout
        self.too_large = too_large
        self.max_pipeline = max_pipeline
        self.connections: set[HTTPServerProtocol] = set()
        self._sweeper = LoopingCall(self._sweep)
        self._sweeper.clock = clock

    def buildProtocol(self, addr: IAddress | None) -> HTTPServerProtocol:
        """A new connection's protocol."""
        return HTTPServerProtocol(self)

    def connectionOpened(self, proto: HTTPServerProtocol) -> None:
        """Track ``proto`` and start the idle sweep with the first connection."""
        self.connections.add(proto)
        if self.idle_timeout and not self._sweeper.running:
            self._sweeper.start(self.idle_timeout / 4, now=False)

    def connectionClosed(self, proto: HTTPServerProtocol) -> None:
        """Forget ``proto`` and stop the sweep when no connection remains."""
        self.connections.discard(proto)
        if not self.connections and self._sweeper.running:
            self._sweeper.stop()

    def closeConnections(self, abort: bool = False) -> None:
        """Close every open connection, e.g. when the service that listens stops.

        Stopping a listening port leaves accepted connections open; this ends them too (and
        with them the idle sweep).
        """
        for proto in list(self.connections):
            proto.closeConnection(abort)

    def _sweep(self) -> None:
        """Close connections idle for longer than ``idle_timeout``; never raises."""
        timeout = self.idle_timeout
        if not timeout:
            return
        now = self.seconds()
        for proto in list(self.connections):
            try:
                proto.checkIdle(now, timeout)
            except Exception:
                log.failure("HTTP idle sweep failed for a connection")
