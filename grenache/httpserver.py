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

Requests are delivered whole (``HTTPRequest.body`` is bytes), unless the factory's
``stream_router`` claims them. It is called with the request's head (an
:class:`HTTPStreamRequest`) as soon as the header section is complete; when it returns a
:data:`StreamHandler`, that handler is called at once with the request and an
:class:`HTTPStreamResponse`, and nothing is buffered:

- the body is delivered as it arrives, the way ``twisted.web`` delivers a client response:
  :meth:`HTTPStreamRequest.deliverBody` connects an ``IProtocol`` whose transport is the
  request (an ``IPushProducer``: pausing it stops reading from the socket), which gets
  ``dataReceived`` for each piece and then ``connectionLost`` with ``ConnectionDone`` (the
  body is complete) or a :mod:`grenache.errors` exception (connection lost, body too large,
  malformed chunks). Until ``deliverBody`` is called the socket is not read; once the
  response is finished, a body nobody asked for is read and thrown away;
- the response is an ``IConsumer`` (:class:`BodyWriter`): ``write`` raw bytes (sent chunked
  on HTTP/1.1, raw until the close on HTTP/1.0), register a push or pull producer to follow
  the socket's backpressure (or wait on :meth:`BodyWriter.drained`), then ``finish()``;
  :meth:`HTTPStreamResponse.respond` sends a whole :class:`HTTPResponse` instead;
- ``max_body_size`` does not apply; ``max_stream_size`` (unlimited by default) does;
- a stream keeps its place in the pipeline: its writes are held (and its producer paused)
  until the responses before it are out, and the request after it waits for it;
- the idle sweep spares a stream while its handler has the turn (it holds the body, or the
  body is complete and the response is not), but not while it waits for the client (the body
  is still arriving, or the client does not read the response).

Writes to a plain TCP connection (the reactor's own ``tcp.Server``, no TLS) are batched: the
responses made while the reactor handles one round of socket events go out together at the
start of the next round (one ``callLater(0)`` per factory), each connection's with one
``send`` straight to its socket while Twisted's write buffer is empty. Writing through
``transport.write`` instead costs two ``epoll_ctl`` calls per response (``startWriting`` and
``stopWriting``), about a third of a lone grape's time under load; sending at once, response
by response, gives up the batching of reads before writes and is no faster. Anything else
(TLS, test transports) and every write that must keep its order against the transport (a
stream going live, a close) goes through ``transport.write``.

When a connection closes, reading is resumed first: a TLS close waits for the peer's
``close_notify``, which a paused socket would never read (input is discarded by then).

TLS is not handled here: serve the factory through a TLS endpoint.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from http import HTTPStatus
from typing import Any

import attrs
import httptools
from twisted.internet import protocol, tcp
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IPushProducer,
    IReactorTime,
)
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from grenache import errors

__all__ = [
    "BodyStream",
    "BodyWriter",
    "HTTPRequest",
    "HTTPResponse",
    "HTTPServerFactory",
    "HTTPServerProtocol",
    "HTTPStreamRequest",
    "HTTPStreamResponse",
    "RequestHandler",
    "StreamHandler",
    "StreamRouter",
    "header_value",
    "read_body",
]

log = Logger()


def header_value(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The value of the first of ``headers`` (names lowercased) called ``name`` (any case)."""
    name = name.lower()
    for key, value in headers:
        if key == name:
            return value
    return None


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
        return header_value(self.headers, name)


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


# --- streamed bodies -------------------------------------------------------------------------


def _body_done() -> Failure:
    """The ``connectionLost`` reason of a body that arrived complete."""
    return Failure(ConnectionDone("the body is complete"))


@implementer(IPushProducer)
class BodyStream:
    """A message body delivered as it arrives, with flow control back to the socket.

    The shape is ``twisted.web``'s ``IResponse.deliverBody``: :meth:`deliverBody` connects an
    ``IProtocol`` whose ``transport`` is this object, an ``IPushProducer``
    (``pauseProducing`` stops reading from the socket, ``resumeProducing`` starts again,
    ``stopProducing`` drops the connection). The protocol gets ``dataReceived`` for each piece
    of the body, in order, then one ``connectionLost``: with ``ConnectionDone`` when the body
    is complete, with a :mod:`grenache.errors` exception when it is not
    (:class:`~grenache.errors.TransportClosed`, :class:`~grenache.errors.RequestTooLarge`,
    :class:`~grenache.errors.RequestParseError`, :class:`~grenache.errors.RequestTimeout`).

    Nothing is read from the socket before :meth:`deliverBody`; pieces that were already on
    their way when the protocol paused (one socket read at most) are held and delivered on
    resume. ``received`` counts the body bytes so far.
    """

    def __init__(self) -> None:
        self.received = 0
        self._protocol: Any = None  # the IProtocol (Any: mypy without the zope plugin)
        self._queue: deque[bytes] = deque()
        self._end: Failure | None = None  # how the body ended, once it has
        self._end_delivered = False
        self._paused = False
        self._pumping = False
        self._discarding = False  # nobody will read the rest

    @property
    def complete(self) -> bool:
        """Whether the whole body has arrived (delivered to the protocol or not)."""
        return self._end is not None and self._end.check(ConnectionDone) is not None

    @property
    def holding(self) -> bool:
        """Whether the socket must not be read for this body now."""
        if self._end is not None or self._discarding:
            return False
        return self._protocol is None or self._paused or bool(self._queue)

    def deliverBody(self, protocol: Any) -> None:
        """Deliver the body to ``protocol``, an ``IProtocol`` (connected to this producer)."""
        if self._protocol is not None or self._discarding:
            raise RuntimeError("the body is already being delivered")
        self._protocol = protocol
        protocol.makeConnection(self)
        self._pump()

    # IPushProducer, for the protocol

    def pauseProducing(self) -> None:
        """Deliver nothing more until :meth:`resumeProducing`, and stop reading the socket."""
        if self._paused:
            return
        self._paused = True
        self._holding_changed()

    def resumeProducing(self) -> None:
        """Deliver what was held, then read the socket again."""
        if not self._paused:
            return
        self._paused = False
        self._pump()

    def stopProducing(self) -> None:
        """The consumer is gone: drop the rest of the body and the connection."""
        if self._end_delivered:
            return
        self._discarding = True
        self._queue.clear()
        self._stop()
        self._pump()

    # the connection's side

    def _feed(self, data: bytes) -> None:
        """One piece of the body, as it came off the wire (de-chunked)."""
        self.received += len(data)
        if self._discarding:
            return
        protocol = self._protocol
        if protocol is None or self._paused or self._queue or self._pumping:
            self._queue.append(data)
            self._holding_changed()
        else:
            protocol.dataReceived(data)

    def _finish(self, reason: Failure) -> None:
        """The body ended (``ConnectionDone``) or never will (an error)."""
        if self._end is not None:
            return
        self._end = reason
        self._pump()

    def _discard(self) -> None:
        """Read the rest and throw it away (nobody asked for it)."""
        if self._protocol is not None or self._discarding:
            return
        self._discarding = True
        self._queue.clear()
        self._holding_changed()

    def _pump(self) -> None:
        protocol = self._protocol
        if self._pumping or protocol is None:
            return
        self._pumping = True
        try:
            queue = self._queue
            while queue and not self._paused and not self._discarding:
                protocol.dataReceived(queue.popleft())
            end = self._end
            if end is not None and not self._end_delivered and (not queue or self._discarding):
                self._end_delivered = True
                queue.clear()
                protocol.connectionLost(end)
        finally:
            self._pumping = False
        self._holding_changed()

    # hooks for the owner

    def _holding_changed(self) -> None:
        """:attr:`holding` may have changed: pause or resume reading the socket."""

    def _stop(self) -> None:
        """Drop the connection (the consumer of the body is gone)."""


@implementer(IPushProducer)
class _WriteFlow:
    """Registered on the connection while a body is written: relays its backpressure."""

    __slots__ = ("_writer",)

    def __init__(self, writer: BodyWriter) -> None:
        self._writer = writer

    def pauseProducing(self) -> None:
        if self._writer._flow is self:
            self._writer._connection_paused(True)

    def resumeProducing(self) -> None:
        if self._writer._flow is self:
            self._writer._connection_paused(False)

    def stopProducing(self) -> None:
        if self._writer._flow is self:
            self._writer._connection_gone(None, unregister=False)


@implementer(IConsumer)
class BodyWriter:
    """An ``IConsumer`` that writes a message body to a connection as it is produced.

    ``write`` sends raw bytes, chunked (``chunked``, HTTP/1.1) or as they are; an empty
    write sends nothing. Flow control follows the connection's send buffer:

    - a registered push producer (``streaming=True``) is paused while the connection's buffer
      is full (and until the body may go out at all) and resumed when it drains;
    - a pull producer (``streaming=False``, e.g. ``twisted.protocols.basic.FileSender``) is
      asked for more each time the connection wants it;
    - without a producer, :meth:`drained` fires when the connection can take more.

    :meth:`finish` ends the body (the last chunk), unregistering any producer. When the
    connection is lost first, the producer is stopped, writes are dropped, and ``drained()``
    fails with the reason (a :mod:`grenache.errors` exception).
    """

    def __init__(self, chunked: bool) -> None:
        self.chunked = chunked
        self.written = 0  # body bytes written so far
        self._transport: Any = None  # the connection, once the body may go out
        self._held: list[bytes] = []  # what was written before that
        self._flow: _WriteFlow | None = None
        self._producer: Any = None
        self._streaming = True
        self._producer_paused = False
        self._paused = True
        self._finished = False
        self._lost: Failure | None = None
        self._waiting: list[Deferred[None]] = []

    @property
    def finished(self) -> bool:
        """Whether :meth:`finish` was called."""
        return self._finished

    @property
    def paused(self) -> bool:
        """Whether the connection cannot take more now (writes are still accepted)."""
        return self._paused

    def write(self, data: bytes) -> None:
        """Send ``data`` as the next piece of the body."""
        if self._finished:
            raise RuntimeError("write() after finish()")
        if not data or self._lost is not None:
            return
        self.written += len(data)
        if self.chunked:
            self._emit([b"%x\r\n" % len(data), data, b"\r\n"])
        else:
            self._emit([data])

    def writeSequence(self, data: list[bytes]) -> None:
        """Send the concatenation of ``data``."""
        self.write(b"".join(data))

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        """Follow the connection's backpressure with ``producer`` (push or pull)."""
        if self._producer is not None:
            raise RuntimeError("a producer is already registered")
        if self._finished:
            raise RuntimeError("registerProducer() after finish()")
        if self._lost is not None:
            producer.stopProducing()
            return
        self._producer = producer
        self._streaming = bool(streaming)
        self._producer_paused = False
        if self._streaming:
            if self._paused:
                self._producer_paused = True
                producer.pauseProducing()
        elif self._transport is not None:
            self._register_flow(streaming=False)  # the connection pulls from now on

    def unregisterProducer(self) -> None:
        """Forget the producer (it is not stopped)."""
        if self._producer is None:
            return
        pull = not self._streaming
        self._producer = None
        self._streaming = True
        if pull and self._transport is not None and not self._finished and self._lost is None:
            self._register_flow(streaming=True)

    def drained(self) -> Deferred[None]:
        """Fires when the connection can take more (at once if it can now).

        Fails with the reason when the connection is lost first.
        """
        if self._lost is not None:
            return fail(self._lost)
        if not self._paused or self._finished:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiting.append(d)
        return d

    def finish(self) -> None:
        """End the body. Later calls do nothing."""
        if self._finished:
            return
        self._finished = True
        self._producer = None
        if self._lost is None:
            if self.chunked:
                self._emit([b"0\r\n\r\n"])
            self._unregister_flow()
        self._fire_waiting()
        self._done()

    # hooks for the owner

    def _wrote(self) -> None:
        """Bytes went to the connection."""

    def _done(self) -> None:
        """:meth:`finish` was called."""

    # the connection's side

    def _emit(self, parts: list[bytes]) -> None:
        if self._lost is not None:
            return
        transport = self._transport
        if transport is None:
            self._held.extend(parts)
        else:
            transport.writeSequence(parts)
            self._wrote()

    def _go_live(self, transport: Any) -> None:
        """The body may go out on ``transport`` from now on."""
        if self._transport is not None or self._lost is not None:
            return
        self._transport = transport
        held, self._held = self._held, []
        if held:
            transport.writeSequence(held)
            self._wrote()
        if not self._finished:
            self._register_flow(self._producer is None or self._streaming)
            if self._flow is not None and self._streaming:
                self._connection_paused(False)

    def _register_flow(self, streaming: bool) -> None:
        self._unregister_flow()
        flow = _WriteFlow(self)
        self._flow = flow
        try:
            self._transport.registerProducer(flow, streaming)
        except Exception:
            self._flow = None
            log.failure("Could not register a producer on the connection")

    def _unregister_flow(self) -> None:
        flow, self._flow = self._flow, None
        if flow is not None and self._transport is not None:
            try:
                self._transport.unregisterProducer()
            except Exception:
                pass  # the connection is already gone

    def _connection_paused(self, paused: bool) -> None:
        if self._lost is not None or self._finished:
            return
        self._paused = paused
        producer = self._producer
        if producer is not None:
            if self._streaming:
                if paused != self._producer_paused:
                    self._producer_paused = paused
                    if paused:
                        producer.pauseProducing()
                    else:
                        producer.resumeProducing()
            elif not paused:
                producer.resumeProducing()
        if not self._paused:
            self._fire_waiting()

    def _connection_gone(self, reason: Failure | None, unregister: bool = True) -> None:
        """The body cannot go out any more (connection lost, or the exchange is over)."""
        if self._lost is not None:
            return
        self._lost = reason or Failure(
            errors.TransportClosed("ERR_TRANSPORT_CLOSE: connection lost")
        )
        if unregister:
            self._unregister_flow()
        self._flow = None
        self._held = []
        producer, self._producer = self._producer, None
        if producer is not None and not self._finished:
            try:
                producer.stopProducing()
            except Exception:
                log.failure("stopProducing failed")
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            if not d.called:
                d.errback(self._lost)

    def _fire_waiting(self) -> None:
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            if not d.called:
                d.callback(None)


def read_body(source: Any, limit: int | None = None) -> Deferred[bytes]:
    """Fires with the whole body of ``source`` (anything with ``deliverBody``), once complete.

    Fails with the body's error, or :class:`~grenache.errors.RequestTooLarge` (dropping the
    connection) when it exceeds ``limit`` bytes.
    """
    done: Deferred[bytes] = Deferred()
    chunks: list[bytes] = []

    class Collect(protocol.Protocol):
        size = 0

        def dataReceived(self, data: bytes) -> None:
            self.size += len(data)
            if limit is not None and self.size > limit:
                transport: Any = self.transport
                if not done.called:
                    done.errback(errors.RequestTooLarge(f"body over {limit} bytes"))
                transport.stopProducing()
                return
            chunks.append(data)

        def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
            if done.called:
                return
            if reason.check(ConnectionDone):
                done.callback(b"".join(chunks))
            else:
                done.errback(reason)

    source.deliverBody(Collect())
    return done


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
        self._slot: _Slot | None = None

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

    def __init__(self, proto: HTTPServerProtocol, slot: _Slot, version_11: bool, head: bool):
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
        parts = [_status_line(status)]
        if self.chunked:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        parts.append(_CLOSE[2:] if self._slot.close else _KEEP_ALIVE[2:])
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
            self._emit([_serialize(response, self._slot.close, self._no_body)])
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


class _Slot:
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
    )

    def __init__(self) -> None:
        self.response: HTTPResponse | None = None
        self.close = False  # close the connection after this response
        self.head = False  # HEAD request: send headers only
        self.interim: bytes | None = None  # a 100 Continue to send when this slot is first
        self.running = False  # the handler was called and has not answered yet
        self.stream: HTTPStreamResponse | None = None  # a streamed response
        self.request: HTTPStreamRequest | None = None  # and its request
        self.request_done = False  # (streams) the request body was read to its end


class HTTPServerProtocol(protocol.Protocol):
    """One HTTP/1.1 server connection (see the module docstring for the behaviour).

    The ``on_*`` methods are ``httptools`` parser callbacks, not public API.
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
        self._parser = httptools.HttpRequestParser(self)
        # Transport methods, bound once in connectionMade (fast, and clear to mypy without
        # the zope plugin). ``_producer`` is None when the transport cannot pause reading.
        self._write: Callable[[bytes], object] | None = None
        # Batched output (plain TCP only, see the module docstring): bytes waiting for the
        # factory's next batch, and the transport they go to.
        self._out: list[bytes] = []
        self._tcp: Any = None
        self._lose_connection: Callable[[], object] = _nothing
        self._abort_connection: Callable[[], object] | None = None
        self._producer: IPushProducer | None = None
        self._peer: IAddress | None = None
        # Responses in request order; the current request's slot is the last one.
        self._pending: deque[_Slot] = deque()
        self._current: _Slot | None = None
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
        self._closing = False  # loseConnection was called
        self._disconnected = False
        self.lastActivity = 0.0  # clock time of the last byte in or response out

    # --- connection events ---------------------------------------------------------------

    def connectionMade(self) -> None:
        """Register with the factory's idle sweep and remember the peer address."""
        transport: Any = self.transport
        self._write = transport.write
        if type(transport) is tcp.Server and not transport.TLS:
            self._tcp = transport
            self._write = self._queue
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
        self._drop_streams(
            Failure(
                errors.TransportClosed(
                    "ERR_TRANSPORT_CLOSE: connection lost: " + reason.getErrorMessage()
                )
            )
        )
        self._pending.clear()
        self._buffered.clear()
        self._out = []
        self._current = None
        self.factory.connectionClosed(self)

    def dataReceived(self, data: bytes) -> None:
        """Parse ``data``; never raises (errors become 400/431/413/500 responses)."""
        if self._input_closed:
            return  # discarded; not activity either (a closing connection must finish)
        self.lastActivity = self._seconds()
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
        paused = self._pipeline_full or self._stream_hold
        if paused == self._paused:
            return
        self._paused = paused
        if self._input_closed:
            return
        self._set_reading(not paused)
        if not paused and self._buffered and not self._feeding:
            self._drain()

    def _reject(self, response: HTTPResponse) -> None:
        """Answer the request being parsed (or a new slot) with ``response`` and close after it."""
        slot = self._current
        if slot is None or slot.running or slot.response is not None or slot.stream is not None:
            slot = _Slot()
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
            stream._finish(_body_done())
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

    # --- streams ----------------------------------------------------------------------------

    def _route(self, slot: _Slot, content_length: int, interim: bool) -> bool:
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
        response = self.stream_response_class(self, slot, version_11, slot.head)
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
            response.respond(_INTERNAL_ERROR)
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

    def _stream_response_done(self, slot: _Slot) -> None:
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
            if slot.request is not None:
                slot.request._finish(reason)
            if slot.stream is not None:
                slot.stream._connection_gone(reason)

    def _stream_busy(self) -> bool:
        """Whether a stream's handler has the turn (the idle sweep must spare it)."""
        if not self._pending:
            return False
        slot = self._pending[0]
        response = slot.stream
        if response is None or response.finished:
            return False
        if response.paused and response._transport is not None:
            return False  # the client does not read the response
        request = slot.request
        # A body still arriving and not held by the handler: waiting for the client.
        return request is None or request.complete or request.holding

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
        while pending:
            slot = pending[0]
            stream = slot.stream
            if stream is not None:
                if slot.interim is not None:
                    write(slot.interim)
                    slot.interim = None
                if stream._transport is None:
                    self._spill()
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
                continue
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
            self._pipeline_full
            and len(pending) <= self.factory.max_pipeline // 2
            and not self._input_closed
        ):
            self._pipeline_full = False
            self._update_reading()

    def _queue(self, data: bytes) -> None:
        """``transport.write`` for plain TCP: hold ``data`` for the factory's next batch."""
        out = self._out
        if not out:
            self.factory._send_soon(self, self._tcp.reactor)
        out.append(data)

    def _send_out(self) -> None:
        """Send the held output (the factory's batch): straight to the socket if we can."""
        out = self._out
        if not out:
            return
        self._out = []
        transport = self._tcp
        if self._disconnected:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        if not transport.dataBuffer and not transport._tempDataLen and not transport.disconnecting:
            sent = transport.writeSomeData(data)  # a count, or an error for doWrite to find
            if type(sent) is int:
                if sent == len(data):
                    return
                data = data[sent:]
        transport.write(data)

    def _spill(self) -> None:
        """Hand held output to the transport now, before something else is written to it."""
        if self._out:
            out, self._out = self._out, []
            self._tcp.write(b"".join(out))

    def _close(self) -> None:
        self._stop_input()
        self._drop_streams(
            Failure(errors.TransportClosed("ERR_TRANSPORT_CLOSE: connection closed"))
        )
        self._pending.clear()
        self._current = None
        if not self._closing:
            self._lose()

    def _lose(self) -> None:
        """Read again and close politely, so that a TLS close can complete.

        TLS shuts down with ``close_notify`` both ways: the close waits for the peer's, which
        a socket paused by :meth:`_stop_input` would never read (the connection would linger
        until the idle sweep). Input is discarded by now, so reading costs nothing.
        """
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
        self._pending.clear()
        self._current = None
        if abort and self._abort_connection is not None:
            self._out = []
            self._closing = True
            self._abort_connection()
        elif not self._closing:
            self._lose()

    # --- idle sweep -----------------------------------------------------------------------

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
        self._pending.clear()
        self.lastActivity = now
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


class HTTPServerFactory(protocol.Factory):
    """Builds :class:`HTTPServerProtocol` connections that answer with ``handler``.

    ``max_body_size=None`` means no limit. ``idle_timeout`` is in seconds (``None`` or ``0``
    disables it); the single sweep runs every ``idle_timeout / 4`` seconds, so an idle
    connection closes between ``idle_timeout`` and ``1.25 * idle_timeout``. ``max_pipeline`` is
    how many outstanding responses make a connection stop reading (it resumes at half).
    ``stream_router`` chooses the requests whose bodies are streamed (module docstring);
    ``max_stream_size`` limits those bodies (``None``: no limit), answered with ``too_large``
    if the response has not started, else by dropping the connection.
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
        stream_router: StreamRouter | None = None,
        max_stream_size: int | None = None,
    ) -> None:
        self.handler = handler
        self.stream_router = stream_router
        self.max_stream_size = max_stream_size
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
        # Connections with batched output, sent by one call at the next reactor round.
        self._outgoing: list[HTTPServerProtocol] = []
        self._outgoing_call: Any = None

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

    def _send_soon(self, proto: HTTPServerProtocol, reactor: Any) -> None:
        """Send ``proto``'s batched output with the others', at the next round of ``reactor``.

        The connection's own reactor, not the injected clock: the batch must go out with the
        reactor that runs the socket even when a test drives the idle sweep with a ``Clock``.
        """
        self._outgoing.append(proto)
        if self._outgoing_call is None:
            self._outgoing_call = reactor.callLater(0, self._send_batch)

    def _send_batch(self) -> None:
        self._outgoing_call = None
        protos, self._outgoing = self._outgoing, []
        for proto in protos:
            try:
                proto._send_out()
            except Exception:
                log.failure("HTTP server failed to send a response")
                proto.closeConnection(abort=True)

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
