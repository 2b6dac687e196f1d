"""The lean HTTP/1.1 server protocol and factory shared by the grape API and the RPC transport.

Why not ``twisted.web``: a bare :class:`~twisted.internet.protocol.Protocol` parsing with
``httptools`` (llhttp, the parser inside Node.js) serves several times more requests per
second than a ``Site`` with a trivial resource (measured with ``wrk``: about 66k against 10k
requests per second on the project's 2-core machine). The protocol does only what a JSON API
needs:

- HTTP/1.1 keep-alive by default; ``Connection: close`` and HTTP/1.0 without keep-alive are
  honoured (the response says ``Connection: close`` and the connection is closed after it);
- pipelining: responses go out strictly in request order, even when handlers finish out of
  order; reading is paused while more than ``max_pipeline`` responses are outstanding;
- request bodies with ``Content-Length`` or ``Transfer-Encoding: chunked``, and
  ``Expect: 100-continue`` (the interim ``100 Continue`` is sent when the request's turn comes);
- responses always carry ``Content-Length`` and ``Connection`` and nothing else unless the
  handler adds headers (:mod:`grenache.http.messages`);
- limits: a body over ``max_body_size`` is answered with the factory's ``too_large`` response
  and the connection is closed as soon as the limit is crossed (the rest is never read); a
  header section over ``max_header_size`` gets ``431`` and malformed HTTP ``400``, both closing;
- a handler that raises or whose Deferred fails gets ``500 Internal Server Error`` (logged), and
  the connection keeps serving;
- an idle timeout without one timer per connection: the factory runs a single sweep
  (a :class:`~twisted.internet.task.LoopingCall` on the injected clock, running only while
  connections exist) that closes connections idle for ``idle_timeout`` seconds;
- bounded output for a client that sends and does not read: each connection registers a push
  producer with its transport, which pauses it when its send buffer is full (Twisted: over
  64 KiB); from then on no response is written and nothing is read until the buffer drains,
  and a connection that stays so for ``output_timeout`` seconds without the client reading
  anything is dropped by the sweep (while a stream's response is being sent, the stream's
  own producer follows the buffer instead);
- slow clients: a header section must be complete ``header_timeout`` seconds after its first
  byte, and a buffered body must arrive at ``min_body_rate`` bytes a second or more (averaged
  from the end of the header section, checked after ``body_grace`` seconds); either failing
  is answered with the factory's ``timed_out`` response (``408``) and the connection closed.
  The same sweep checks them; time during which the server was not reading does not count.

Requests are delivered whole (``HTTPRequest.body`` is bytes), unless the factory's
``stream_router`` claims them (:mod:`grenache.http.server_stream`): it is called with the
request's head as soon as the header section is complete; a handler it returns gets the body
as it arrives and writes the response as it goes, and nothing is buffered:

- the body is delivered through ``deliverBody`` (:class:`~grenache.http.streams.BodyStream`);
  until ``deliverBody`` is called the socket is not read; once the response is finished, a
  body nobody asked for is read and thrown away;
- the response is an ``IConsumer`` (chunked on HTTP/1.1, raw until the close on HTTP/1.0);
- ``max_body_size`` does not apply; ``max_stream_size`` (unlimited by default) does;
- a stream keeps its place in the pipeline: its writes are held (and its producer paused)
  until the responses before it are out, and the request after it waits for it;
- the idle sweep spares a stream while its handler has the turn (it holds the body, or the
  body is complete and the response is not), but not while it waits for the client (the body
  is still arriving, or the client does not read the response).

On the reactor's own plain-TCP connections the responses of one reactor round are batched and
sent straight to the socket (:mod:`grenache.speedups.twisted_tcp`); anything else (TLS, test
transports), and every write that must keep its order against the transport (a stream going
live, a close), goes through ``transport.write``. When a connection closes, reading is resumed
first: a TLS close waits for the peer's ``close_notify``, which a paused socket would never
read (input is discarded by then). TLS is not handled here: serve the factory through a TLS
endpoint (``"ssl:..."``) or wrap it in a ``TLSMemoryBIOFactory``.

Override points (subclass, then set the factory's ``protocol`` attribute to your protocol
class, and pass your factory where one is expected):

- :meth:`HTTPServerProtocol.accept_client` -- called with the client's address when the
  connection is made; return ``False`` to drop the client before anything is read (allow-lists,
  per-address limits);
- :meth:`HTTPServerProtocol.before_dispatch` -- called with each complete request before its
  handler; return an :class:`~grenache.http.messages.HTTPResponse` to answer it yourself
  (authentication, rate limits), ``None`` to go on (logging, counting);
- :meth:`HTTPServerProtocol.prepare_response` -- called with each request and the response its
  handler gave, returns the response to send (add a header, rewrite a status);
- :meth:`HTTPServerProtocol.socket_closed` -- called once when the connection is gone;
- :meth:`HTTPServerProtocol.requestReceived` builds the :class:`~grenache.http.messages.HTTPRequest`
  (a subclass may return a subclass carrying more, as the RPC transport adds the client
  certificate over TLS); :attr:`HTTPServerProtocol.stream_request_class` and
  :attr:`HTTPServerProtocol.stream_response_class` are the streamed request and response types;
- :attr:`HTTPServerFactory.protocol` is the protocol class the factory builds.

The hooks of buffered requests (``before_dispatch``, ``prepare_response``) are skipped at no cost
when not overridden; streamed requests go to their stream handler, which sees everything.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import protocol
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from grenache.http.messages import HTTPResponse, RequestHandler
from grenache.http.server_protocol import HTTPServerProtocol
from grenache.http.server_stream import StreamRouter
from grenache.speedups import twisted_tcp

__all__ = [
    "DEFAULT_BODY_GRACE",
    "DEFAULT_HEADER_TIMEOUT",
    "DEFAULT_MIN_BODY_RATE",
    "DEFAULT_OUTPUT_TIMEOUT",
    "HTTPServerFactory",
    "HTTPServerProtocol",
]

log = Logger()

DEFAULT_HEADER_TIMEOUT = 20.0
"""Seconds from a request's first byte to the end of its header section (Node: 60 s)."""

DEFAULT_MIN_BODY_RATE = 1024.0
"""Bytes a second a buffered request body must average (after :data:`DEFAULT_BODY_GRACE`)."""

DEFAULT_BODY_GRACE = 10.0
"""Seconds into a buffered body before its rate is checked."""

DEFAULT_OUTPUT_TIMEOUT = 30.0
"""Seconds a client may leave a full send buffer unread before it is dropped."""


class HTTPServerFactory(protocol.Factory):
    """Builds :class:`HTTPServerProtocol` connections that answer with ``handler``.

    ``max_body_size=None`` means no limit. ``idle_timeout`` is in seconds (``None`` or ``0``
    disables it); the single sweep runs every ``idle_timeout / 4`` seconds, so an idle
    connection closes between ``idle_timeout`` and ``1.25 * idle_timeout``. ``max_pipeline`` is
    how many outstanding responses make a connection stop reading (it resumes at half).
    ``stream_router`` chooses the requests whose bodies are streamed (module docstring);
    ``max_stream_size`` limits those bodies (``None``: no limit), answered with ``too_large``
    if the response has not started, else by dropping the connection.

    Deadlines (seconds; ``None`` or ``0`` disables each): ``header_timeout`` from a request's
    first byte to the end of its header section; ``min_body_rate`` (bytes a second) for
    buffered bodies, enforced ``body_grace`` seconds into the body; ``output_timeout`` for a
    client that reads nothing while its send buffer is full. The first two are answered with
    ``timed_out``; the last drops the connection. One sweep checks every deadline, every
    quarter of the shortest of them (and of ``idle_timeout``), so each is exact to within
    that.

    :attr:`protocol` is the class each connection is built from: set it to a subclass of
    :class:`HTTPServerProtocol` (on the factory or a subclass of it) to use the override points.
    """

    protocol: type[HTTPServerProtocol] = HTTPServerProtocol

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
        header_timeout: float | None = DEFAULT_HEADER_TIMEOUT,
        min_body_rate: float | None = DEFAULT_MIN_BODY_RATE,
        body_grace: float = DEFAULT_BODY_GRACE,
        output_timeout: float | None = DEFAULT_OUTPUT_TIMEOUT,
        timed_out: HTTPResponse = HTTPResponse(408, b"Request Timeout"),
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
        self.header_timeout = header_timeout
        self.min_body_rate = min_body_rate
        self.body_grace = body_grace
        self.output_timeout = output_timeout
        self.timed_out = timed_out
        periods = [
            p
            for p in (idle_timeout, header_timeout, output_timeout, min_body_rate and body_grace)
            if p
        ]
        self.sweep_interval: float | None = max(min(periods) / 4, 0.01) if periods else None
        self.connections: set[HTTPServerProtocol] = set()
        self._sweeper = LoopingCall(self._sweep)
        self._sweeper.clock = clock
        # Plain-TCP output of every connection, sent together at the next reactor round.
        self.batch = twisted_tcp.Batch()

    def buildProtocol(self, addr: IAddress | None) -> HTTPServerProtocol:
        """A new connection's protocol: ``self.protocol(self)``."""
        return self.protocol(self)

    def connectionOpened(self, proto: HTTPServerProtocol) -> None:
        """Track ``proto`` and start the idle sweep with the first connection."""
        self.connections.add(proto)
        if self.sweep_interval and not self._sweeper.running:
            self._sweeper.start(self.sweep_interval, now=False)

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
        """Enforce every connection's deadlines (idle, header, body, output); never raises."""
        now = self.seconds()
        for proto in list(self.connections):
            try:
                proto.checkDeadlines(now)
            except Exception:
                log.failure("HTTP server sweep failed for a connection")
