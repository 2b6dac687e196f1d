"""One connection of the lean HTTP/1.1 server: :class:`HTTPServerProtocol`.

What it does, and its override points, are described in :mod:`grenache.http.server`, whose
:class:`~grenache.http.server.HTTPServerFactory` builds it. This module parses requests
(``httptools``), keeps the pipeline and keep-alive, dispatches to the handler and closes the
connection; the rest of the connection is in mixins, one job each:
:class:`~grenache.http.server_output.OutputMixin` (ordered writing, send-buffer backpressure),
:class:`~grenache.http.server_handoff.StreamHandoffMixin` (streamed requests) and
:class:`~grenache.http.server_deadlines.DeadlinesMixin` (the sweep's deadlines).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import httptools
from twisted.internet import protocol
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure

from grenache import errors
from grenache.http.messages import HTTPRequest, HTTPResponse
from grenache.http.server_deadlines import DeadlinesMixin
from grenache.http.server_handoff import (
    _CONTINUE,
    INTERNAL_ERROR,
    StreamHandoffMixin,
    _StopParsing,
)
from grenache.http.server_output import OutputMixin, _OutputFlow
from grenache.http.server_stream import (
    HTTPStreamRequest,
    HTTPStreamResponse,
    Slot,
)
from grenache.http.streams import body_done
from grenache.speedups import twisted_tcp

if TYPE_CHECKING:
    from grenache.http.server import HTTPServerFactory

__all__ = ["HTTPServerProtocol"]

log = Logger()

_BAD_REQUEST = HTTPResponse(400, b"Bad Request")
_HEADERS_TOO_LARGE = HTTPResponse(431, b"Request Header Fields Too Large")


class HTTPServerProtocol(StreamHandoffMixin, OutputMixin, DeadlinesMixin, protocol.Protocol):
    """One HTTP/1.1 server connection (see the module docstring for the behaviour and the
    override points: :meth:`accept_client`, :meth:`before_dispatch`,
    :meth:`prepare_response`, :meth:`socket_closed`, :meth:`requestReceived`).

    ``factory`` is the :class:`HTTPServerFactory` that built it. The ``on_*`` methods are
    ``httptools`` parser callbacks, not public API.
    """

    stream_request_class: type[HTTPStreamRequest] = HTTPStreamRequest
    stream_response_class: type[HTTPStreamResponse] = HTTPStreamResponse

    def __init__(self, factory: HTTPServerFactory) -> None:
        self.factory = factory
        self._handler = factory.handler
        self._router = factory.stream_router
        self._seconds = factory.seconds
        self._max_body = factory.max_body_size
        self._max_header = factory.max_header_size
        self._header_timeout = factory.header_timeout
        self._parser = httptools.HttpRequestParser(self)
        # The per-request hooks are called only when a subclass overrides them.
        cls = type(self)
        self._before = cls.before_dispatch is not HTTPServerProtocol.before_dispatch
        self._prepare = cls.prepare_response is not HTTPServerProtocol.prepare_response
        # Transport methods, bound once in connectionMade (fast, and clear to mypy without
        # the zope plugin). ``_producer`` is None when the transport cannot pause reading.
        self._write: Callable[[bytes], object] | None = None
        # Batched output on plain TCP (grenache.speedups.twisted_tcp), else None.
        self._batched: twisted_tcp.BatchedWriter | None = None
        self._lose_connection: Callable[[], object] = _nothing
        self._abort_connection: Callable[[], object] | None = None
        self._producer: IPushProducer | None = None
        self._peer: IAddress | None = None
        # Responses in request order; the current request's slot is the last one.
        self._pending: deque[Slot] = deque()
        self._current: Slot | None = None
        self._running = 0  # handlers called and not yet answered
        self._flushing = False
        self._flush_again = False
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
        self._stream_in: HTTPStreamRequest | None = None  # the streamed body being parsed
        # Input flow.
        self._input_closed = False  # no further request will be parsed
        self._paused = False  # not parsing: the pipeline is full or a stream holds its body
        self._pipeline_full = False
        self._stream_hold = False
        self._reading_paused = False  # the transport was told to stop reading
        self._feeding = False  # inside parser.feed_data (it must not be re-entered)
        self._buffered: deque[bytes] = deque()  # input received while paused or feeding
        # Complete requests not handed to the handler yet (the pipeline or the output is full).
        self._held: deque[tuple[Slot, HTTPRequest]] = deque()
        self._closing = False  # loseConnection was called
        self._disconnected = False
        self.lastActivity = 0.0  # clock time of the last byte in or response out
        # Deadlines, checked by the factory's sweep (no timer per request).
        self._head_started = -1.0  # clock time the current header section began (-1: none)
        self._body_started = 0.0  # clock time the body clock (re)started
        self._body_base = 0  # body bytes already counted when it did
        # Output flow: the transport pauses ``_flow`` when its send buffer is full.
        self._flow: _OutputFlow | None = None
        self._out_full = False  # the client is not reading: write nothing more, read nothing
        self._out_since = 0.0  # clock time output last stalled or made progress
        self._out_seen = -1  # pending output bytes seen by the last sweep (-1: unknown)

    # --- connection events ---------------------------------------------------------------

    def connectionMade(self) -> None:
        """Register with the factory's idle sweep and remember the peer address.

        A client that :meth:`accept_client` refuses is dropped at once.
        """
        transport: Any = self.transport
        self._peer = transport.getPeer()
        if not self.accept_client(self._peer):
            self._input_closed = True
            self._closing = True
            abort = getattr(transport, "abortConnection", None)
            (abort or transport.loseConnection)()
            return
        self._write = transport.write
        batched = twisted_tcp.batched_writer(transport, self.factory.batch, self._send_failed)
        if batched is not None:
            self._batched = batched
            self._write = batched.write
        self._lose_connection = transport.loseConnection
        self._abort_connection = getattr(transport, "abortConnection", None)
        if IPushProducer.providedBy(transport):
            self._producer = transport
        self.lastActivity = self._seconds()
        self._register_flow()
        self.factory.connectionOpened(self)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        """Forget every pending response: results of handlers still running are discarded."""
        self._disconnected = True
        self._input_closed = True
        self._flow = None
        self._drop_streams(
            Failure(
                errors.TransportClosed(
                    "ERR_TRANSPORT_CLOSE: connection lost: " + reason.getErrorMessage()
                )
            )
        )
        self._forget_pending()
        self._buffered.clear()
        if self._batched is not None:
            self._batched.discard()
        self._current = None
        self.factory.connectionClosed(self)
        self.socket_closed(reason)

    # --- override points -------------------------------------------------------------------

    def accept_client(self, peer: IAddress) -> bool:
        """Whether to serve the client at ``peer`` (its address, e.g. an ``IPv4Address``).

        Called once when the connection is made; ``False`` drops the client before anything
        is read (its :meth:`socket_closed` is still called). Accepts everyone.
        """
        return True

    def before_dispatch(self, request: HTTPRequest) -> HTTPResponse | None:
        """Called with each complete buffered request before its handler.

        Return an :class:`~grenache.http.messages.HTTPResponse` to answer the request without
        calling the handler, or ``None`` to go on. Runs on the hot path: keep it cheap.
        """
        return None

    def prepare_response(self, request: HTTPRequest, response: HTTPResponse) -> HTTPResponse:
        """The response to send for ``request``, given the one its handler answered.

        Return ``response`` itself or a new one, e.g. with a header added
        (``attrs.evolve(response, headers=(*response.headers, (b"x-served-by", b"me")))``).
        Not called for the server's own error answers (400, 413, 431, 500).
        """
        return response

    def socket_closed(self, reason: Failure) -> None:
        """Called once when the connection is gone (``reason`` says how)."""

    def dataReceived(self, data: bytes) -> None:
        """Parse ``data``; never raises (errors become 400/431/413/500 responses)."""
        if self._input_closed:
            return  # discarded; not activity either (a closing connection must finish)
        now = self.lastActivity = self._seconds()
        if self._head_started < 0 and self._in_headers:
            self._head_started = now
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
                    self._reject(INTERNAL_ERROR)
                else:
                    self._reject(_BAD_REQUEST)
        except Exception:
            log.failure("Unexpected error parsing HTTP input")
            if not self._input_closed:
                self._reject(INTERNAL_ERROR)
        else:
            # A header section that spans whole chunks is buffered inside httptools before
            # any callback sees it; count those bytes too so it cannot grow without bound.
            if stalled and self._in_headers and messages == self._messages:
                self._header_raw += len(data)
                if self._header_raw > self._max_header and not self._input_closed:
                    self._reject(_HEADERS_TOO_LARGE)
        finally:
            self._feeding = False

    def _stop_input(self, reason: BaseException | None = None) -> None:
        """Parse nothing more and stop reading from the socket.

        A streamed body still arriving ends with ``reason`` (a parse error by default).
        """
        if self._input_closed:
            return
        self._input_closed = True
        self._buffered.clear()
        self._set_reading(False)
        stream = self._stream_in
        if stream is not None:
            self._stream_in = None
            self._stream_hold = False
            if stream._slot is not None:
                stream._slot.request_done = True
            stream._finish(
                Failure(
                    reason
                    if reason is not None
                    else errors.RequestParseError("ERR_REQUEST_PARSE: malformed request")
                )
            )

    def _set_reading(self, reading: bool) -> None:
        producer: Any = self._producer
        if self._closing or self._disconnected or producer is None:
            return
        if reading == (not self._reading_paused):
            return
        self._reading_paused = not reading
        if reading:
            producer.resumeProducing()
        else:
            producer.pauseProducing()

    def _update_reading(self) -> None:
        """Pause or resume parsing (and reading) after the pipeline or a stream changed."""
        paused = self._pipeline_full or self._stream_hold or self._out_full
        if paused == self._paused:
            return
        self._paused = paused
        if self._input_closed:
            return
        if not paused:
            # The client is not to blame for the time it was not read: restart its clocks.
            now = self._seconds()
            if self._head_started >= 0:
                self._head_started = now
            self._body_started = now
            self._body_base = self._body_size
        self._set_reading(not paused)
        if not paused and self._buffered and not self._feeding:
            self._drain()

    def _reject(self, response: HTTPResponse) -> None:
        """Answer the request being parsed (or a new slot) with ``response`` and close after it."""
        slot = self._current
        if slot is None or slot.running or slot.response is not None or slot.stream is not None:
            slot = Slot()
            self._pending.append(slot)
        self._current = None
        slot.close = True
        slot.interim = None
        slot.response = response
        if response.status == 413:
            self._stop_input(errors.RequestTooLarge())
        else:
            self._stop_input()
        self._flush()

    # --- httptools callbacks --------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        """httptools callback: gather the request target; a head over ``max_header_size`` is
        answered 431 and the input abandoned.
        """
        self._url.append(url)
        self._header_size += len(url)
        if self._header_size > self._max_header:
            self._reject(_HEADERS_TOO_LARGE)
            raise _StopParsing()

    def on_header(self, name: bytes, value: bytes) -> None:
        """httptools callback: keep a header (name lower-cased), counted against ``max_header_size``
        like the target (431 past it).
        """
        self._headers.append((name.lower(), value))
        self._header_size += len(name) + len(value) + 4
        if self._header_size > self._max_header:
            self._reject(_HEADERS_TOO_LARGE)
            raise _StopParsing()

    def on_headers_complete(self) -> None:
        """httptools callback: the head is parsed. Open the request's slot in the pipeline, route a
        streamed request, answer the factory's ``too_large`` response at once for a declared body
        over ``max_body_size``, send ``100 Continue`` when the client waits for it, and stop reading
        while the pipeline is full.
        """
        self._in_headers = False
        self._head_started = -1.0
        self._body_started = self.lastActivity
        self._body_base = 0
        self._messages += 1
        self._header_raw = 0
        parser = self._parser
        slot = Slot()
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
        # The interim response only matters if a body is still to come.
        interim = expect and (content_length > 0 or chunked) and parser.get_http_version() == "1.1"
        if self._router is not None and self._route(slot, content_length, interim):
            pass
        elif self._max_body is not None and content_length > self._max_body:
            self._reject(self.factory.too_large)
            raise _StopParsing()
        elif interim:
            slot.interim = _CONTINUE
            if self._pending[0] is slot:
                self._flush()
        if len(self._pending) > self.factory.max_pipeline and not self._pipeline_full:
            self._pipeline_full = True
            self._update_reading()

    def on_body(self, body: bytes) -> None:
        """httptools callback: a chunk of the body, to :meth:`bodyChunkReceived` or to the streamed
        request (``too_large`` past ``max_stream_size``).
        """
        stream = self._stream_in
        if stream is None:
            self.bodyChunkReceived(body)
            return
        self._body_size += len(body)
        limit = self.factory.max_stream_size
        if limit is not None and self._body_size > limit:
            self._stream_too_large(stream)
            raise _StopParsing()
        stream._feed(body)

    def on_message_complete(self) -> None:
        """httptools callback: the request is whole. A streamed body ends; a buffered request is
        built by :meth:`requestReceived` and dispatched, or held while the output is full. A request
        without keep-alive is the connection's last.
        """
        slot = self._current
        self._current = None
        self._in_headers = True
        stream = self._stream_in
        if stream is not None:
            self._stream_in = None
            self._forget_message()
            if slot is None:  # pragma: no cover - headers_complete always runs first
                return
            slot.request_done = True
            if self._stream_hold:
                self._stream_hold = False
                self._update_reading()
            stream._finish(body_done())
            if slot.stream is not None and slot.stream.finished:
                self._flush()
            if slot.close:
                self._stop_input()
                raise _StopParsing()
            return
        request = self.requestReceived(self._parser.get_method())
        self._forget_message()
        self._body = []
        if slot is None:  # pragma: no cover - headers_complete always runs first
            return
        slot.head = request.method == "HEAD"
        slot.close = not self._keep_alive
        slot.interim = None
        if (
            self._held
            or self._out_full
            or (self._pipeline_full and len(self._pending) > self.factory.max_pipeline + 1)
        ):
            # Parsed from input already read, but not handled yet: what waits is the
            # request (bounded by what one read holds), never its response.
            self._held.append((slot, request))
        else:
            self._dispatch(slot, request)
        if slot.close:
            self._stop_input()
            raise _StopParsing()

    def _forget_message(self) -> None:
        """Reset what was gathered of the request just parsed, for the next one."""
        self._url = []
        self._headers = []
        self._body_size = 0
        self._header_size = 0

    # --- request assembly (the seams for subclasses) --------------------------------------

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

    def streamRequestReceived(self, method: bytes) -> HTTPStreamRequest:
        """Build the :class:`HTTPStreamRequest` (the head) of the request being parsed."""
        return self.stream_request_class(
            self,
            _method_name(method),
            b"".join(self._url).decode("latin-1"),
            tuple(self._headers),
            self._peer,
            self._parser.get_http_version(),
        )

    # --- responses ------------------------------------------------------------------------

    def _dispatch(self, slot: Slot, request: HTTPRequest) -> None:
        """Call the handler; a plain result is queued at once, a Deferred when it fires."""
        try:
            result: Any = None
            if self._before:
                result = self.before_dispatch(request)
            if result is None:
                result = self._handler(request)
        except Exception:
            log.failure(
                "HTTP handler failed for {method} {path}", method=request.method, path=request.path
            )
            self._answer(slot, INTERNAL_ERROR)
            return
        if type(result) is HTTPResponse:
            self._answer(slot, self._prepared(request, result) if self._prepare else result)
            return
        if not isinstance(result, Deferred) and isinstance(result, Coroutine):  # ABC: slow
            result = Deferred.fromCoroutine(result)
        if isinstance(result, Deferred):
            slot.running = True
            slot.waiting = result
            self._running += 1
            result.addCallbacks(
                self._deferred_answer,
                self._deferred_failure,
                callbackArgs=(slot, request),
                errbackArgs=(slot, request),
            )
        else:
            self._answer(slot, self._prepared(request, result) if self._prepare else result)

    def _prepared(self, request: HTTPRequest, response: Any) -> Any:
        """:meth:`prepare_response` applied to a handler's answer (a failure answers 500)."""
        if not isinstance(response, HTTPResponse):
            return response  # _answer logs it
        try:
            return self.prepare_response(request, response)
        except Exception:
            log.failure(
                "prepare_response failed for {method} {path}",
                method=request.method,
                path=request.path,
            )
            return INTERNAL_ERROR

    def _deferred_answer(self, response: HTTPResponse, slot: Slot, request: HTTPRequest) -> None:
        if not slot.running:
            return  # abandoned: the connection closed first
        self._running -= 1
        slot.running = False
        slot.waiting = None
        self._answer(slot, self._prepared(request, response) if self._prepare else response)

    def _deferred_failure(self, failure: Failure, slot: Slot, request: HTTPRequest) -> None:
        if not slot.running:
            return None  # abandoned (and cancelled): the connection closed first
        self._running -= 1
        slot.running = False
        slot.waiting = None
        log.failure(
            "HTTP handler failed for {method} {path}",
            failure,
            method=request.method,
            path=request.path,
        )
        self._answer(slot, INTERNAL_ERROR)

    def _answer(self, slot: Slot, response: object) -> None:
        if self._disconnected:
            return  # the client left: the late result is dropped
        if not isinstance(response, HTTPResponse):
            log.error("HTTP handler returned {response!r}, not an HTTPResponse", response=response)
            response = INTERNAL_ERROR
        slot.response = response
        if self._pending and self._pending[0] is slot:
            self._flush()

    # --- closing ------------------------------------------------------------------------

    def _forget_pending(self) -> None:
        """Drop every pending response; handlers still running are cancelled (their
        Deferreds), since nobody will read what they answer."""
        pending = self._pending
        self._held.clear()
        if self._running:
            running = [slot for slot in pending if slot.running]
            self._running = 0
            for slot in running:
                slot.running = False
                waiting, slot.waiting = slot.waiting, None
                if waiting is not None:
                    waiting.cancel()
        pending.clear()

    def _close(self) -> None:
        self._stop_input()
        self._drop_streams(
            Failure(errors.TransportClosed("ERR_TRANSPORT_CLOSE: connection closed"))
        )
        self._forget_pending()
        self._current = None
        if not self._closing:
            self._lose()

    def _lose(self) -> None:
        """Read again and close politely, so that a TLS close can complete.

        TLS shuts down with ``close_notify`` both ways: the close waits for the peer's, which
        a socket paused by :meth:`_stop_input` would never read (the connection would linger
        until the idle sweep). Input is discarded by now, so reading costs nothing. The output
        flow is unregistered first: a transport does not close while a producer is registered.
        """
        self._unregister_flow()
        producer: Any = self._producer
        if self._reading_paused and producer is not None and not self._disconnected:
            self._reading_paused = False
            producer.resumeProducing()
        self._spill()
        self._closing = True
        self._lose_connection()

    def closeConnection(self, abort: bool = False) -> None:
        """Close now, dropping unanswered requests (``abort``: without flushing writes)."""
        if self._disconnected:
            return
        self._stop_input(errors.TransportClosed("ERR_TRANSPORT_CLOSE: connection closed"))
        self._drop_streams(
            Failure(errors.TransportClosed("ERR_TRANSPORT_CLOSE: connection closed"))
        )
        self._forget_pending()
        self._current = None
        if abort and self._abort_connection is not None:
            if self._batched is not None:
                self._batched.discard()
            self._closing = True
            self._abort_connection()
        elif not self._closing:
            self._lose()


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
