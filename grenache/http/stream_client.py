"""The streaming HTTP client: one request whose body is written as it is produced and whose
response is read as it arrives, at the same time (Node's ``peer.stream`` is full duplex).

It is a small protocol on ``httptools``, not ``twisted.web.client.Agent``: Agent delivers the
response only once the request body is written (or once the whole response is in), so a server
that answers while it reads (Node's ``req.pipe(res)`` echo) and a client that follows the
socket's backpressure wait for each other forever. The connection goes through
:func:`grenache.endpoints.client_endpoint` (host names, IPv6 literals, TLS), one per stream,
never pooled.

- :class:`ClientStream` is the request body, an ``IConsumer`` (push or pull producers that
  follow the socket's backpressure, or ``await drained()`` between writes, then ``finish()``);
- :meth:`ClientStream.response` fires with a :class:`StreamReply` as soon as the status and
  headers arrive, whose body comes through ``deliverBody`` as it arrives, with the socket
  paused while the reader is;
- an idle timeout: the stream fails with :class:`~grenache.errors.RequestTimeout` when nothing
  moved either way for that long (a server that does not answer, a reply nobody reads, a body
  that is not written), so every stream ends;
- typed errors: :class:`~grenache.errors.DestinationUnreachable` when no connection could be
  made (:class:`~grenache.errors.TLSHandshakeError` for a refused handshake),
  :class:`~grenache.errors.TransportClosed` when it was lost,
  :class:`~grenache.errors.RemoteError` for a response that is not HTTP.

Once the response is complete, the exchange is over: an unfinished body is abandoned (its
producer stopped) and the connection closes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httptools
from OpenSSL import SSL
from twisted.internet import protocol
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHandshakeListener
from twisted.python.failure import Failure
from zope.interface import implementer

from grenache import errors
from grenache.http.client import (
    connect_error,
    drop_connection,
    feed_response,
    set_no_delay,
    tls_error,
)
from grenache.http.messages import header_value
from grenache.http.streams import BodyStream, BodyWriter

__all__ = ["ClientStream", "StreamConnectFactory", "StreamConnection", "StreamReply"]


class StreamReply(BodyStream):
    """The response to a :class:`ClientStream`: status, headers and the raw body.

    There is no grenache framing on a stream: the body is whatever the server's handler wrote
    (a Node ``handler.reply`` writes ``[rid, err, result]`` JSON; nothing here parses it), and
    a non-2xx status is not an error. ``headers`` keep their order with names lowercased. The
    body comes through :meth:`~grenache.http.streams.BodyStream.deliverBody` as it arrives
    (see :func:`~grenache.http.streams.read_body` to collect it).
    """

    def __init__(
        self, conn: StreamConnection, status: int, headers: tuple[tuple[bytes, bytes], ...]
    ) -> None:
        super().__init__()
        self.status = status
        self.headers = headers
        self._conn = conn

    def header(self, name: bytes) -> bytes | None:
        """The value of the first header called ``name`` (any case), or ``None``."""
        return header_value(self.headers, name)

    def _holding_changed(self) -> None:
        self._conn.hold_changed()

    def _stop(self) -> None:
        self._conn.abort(errors.TransportClosed("ERR_TRANSPORT_CLOSE: response body abandoned"))


class ClientStream(BodyWriter):
    """A streamed request in progress: Node's ``peer.stream`` duplex .

    The request body is written here, an ``IConsumer`` (:class:`~grenache.http.streams.BodyWriter`):
    ``write`` raw bytes (sent chunked), or register a push or pull producer (e.g.
    ``FileSender``) that follows the socket's backpressure, or ``await drained()`` between
    writes; then :meth:`finish`. :meth:`response` fires with the :class:`StreamReply` once its
    headers arrive (the server may answer before the body is finished).

    ``timeout`` is an idle timeout: the stream fails with
    :class:`~grenache.errors.RequestTimeout` when nothing moved either way for that long,
    whatever the reason (a server that does not answer, a reply body nobody reads or paused
    that long, a body that is not written), so every stream ends. A lost connection fails with
    :class:`~grenache.errors.TransportClosed` (or :class:`~grenache.errors.TLSHandshakeError`).
    Once the response is complete, the exchange is over: an unfinished body is abandoned (its
    producer stopped) and the connection closes.
    """

    def __init__(self, conn: StreamConnection, dest: str, rid: str, key: str) -> None:
        super().__init__(chunked=True)
        self.dest = dest
        self.rid = rid
        self.key = key
        self.timeout = conn.timeout
        self._conn = conn

    def response(self) -> Deferred[StreamReply]:
        """Fires with the response once its status and headers are in."""
        return self._conn.response()

    def abort(self) -> None:
        """Drop the connection; the response and the body fail with TransportClosed."""
        self._conn.abort(errors.TransportClosed("ERR_TRANSPORT_CLOSE: stream aborted"))

    def _wrote(self) -> None:
        self._conn.activity()


@implementer(IHandshakeListener)
class StreamConnection(protocol.Protocol):
    """The connection of one stream: writes its request, parses its response."""

    def __init__(self, factory: StreamConnectFactory) -> None:
        self.factory = factory
        self.reactor = factory.reactor
        self.seconds = factory.seconds
        self.timeout = factory.timeout
        self.stream = ClientStream(self, factory.dest, factory.rid, factory.key)
        self.parser = httptools.HttpResponseParser(self)
        self.reply: StreamReply | None = None
        self.waiting: list[Deferred[StreamReply]] = []
        self.failure: Failure | None = None  # why the response will never come
        self.reason: BaseException | None = None  # why this side dropped the connection
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.framed = False
        self.until_eof = False
        self.complete = False
        self.received = False
        self.ready = False
        self.closed = False
        self.reading_paused = False
        self.last = self.seconds()
        self.timer: Any = None

    # connection

    def connectionMade(self) -> None:
        """Turn Nagle off, write the request head and start the idle timer; without TLS the stream
        is ready at once (over TLS, at :meth:`handshakeCompleted`).
        """
        transport: Any = self.transport
        set_no_delay(transport)
        self.factory.connected(self)
        transport.write(self.factory.head)
        self.activity()
        self.timer = self.reactor.callLater(self.timeout, self.check_idle)
        if not self.factory.tls:
            self.handshakeCompleted()

    def handshakeCompleted(self) -> None:
        """The connection is ready (after the TLS handshake over TLS)."""
        if self.ready or self.closed:
            return
        self.ready = True
        self.stream._go_live(self.transport)
        self.factory.ready(self.stream)

    def dataReceived(self, data: bytes) -> None:
        """Feed the response parser (any bytes count as activity for the idle timeout); a response
        that is not HTTP drops the connection with the parser's error.
        """
        self.received = True
        self.activity()
        if self.complete or self.closed:
            return
        error = feed_response(self.parser, data)
        if error is not None:
            self.abort(error)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        """End everything with the reason: the waiting :meth:`response` calls, the reply body
        (complete at EOF when it had no framing) and the request body, and tell the factory.
        """
        self.closed = True
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        if self.reason is not None:
            error: BaseException = self.reason
        elif not self.received and reason.check(SSL.Error):
            error = tls_error(reason)
        else:
            error = errors.TransportClosed(
                "ERR_TRANSPORT_CLOSE: connection lost: " + reason.getErrorMessage()
            )
        failure = Failure(error)
        self.factory.lost(self, failure)
        reply = self.reply
        if reply is None:
            self.fail_waiting(failure)
        elif not self.complete:
            self.complete = True
            if self.until_eof and self.reason is None:
                reply._finish(Failure(ConnectionDone("the body is complete")))
            else:
                reply._finish(failure)
        self.stream._connection_gone(failure, unregister=False)

    # parser callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        """httptools callback: keep a header (name lower-cased) and note whether the response is
        framed.
        """
        lower = name.lower()
        self.headers.append((lower, value))
        if lower == b"content-length" or lower == b"transfer-encoding":
            self.framed = True

    def on_headers_complete(self) -> None:
        """httptools callback: status and headers are in (an interim ``1xx`` is skipped): make the
        :class:`StreamReply` and fire every waiting :meth:`response` with it, before any of the
        body.
        """
        self.status = self.parser.get_status_code()
        if self.status < 200:
            return  # an interim response (100 Continue): the real one follows
        self.until_eof = not self.framed
        reply = self.reply = StreamReply(self, self.status, tuple(self.headers))
        waiting, self.waiting = self.waiting, []
        for d in waiting:
            if not d.called:
                d.callback(reply)
        self.hold_changed()

    def on_body(self, body: bytes) -> None:
        """httptools callback: a chunk of the body, to the reply's reader."""
        if self.reply is not None:
            self.reply._feed(body)

    def on_message_complete(self) -> None:
        """httptools callback: the response is whole, so the exchange is over: the reply body ends,
        an unfinished request body is abandoned and the connection closes.
        """
        if self.status < 200:
            self.headers = []
            self.framed = False
            return
        reply = self.reply
        self.complete = True
        if reply is not None:
            reply._finish(Failure(ConnectionDone("the body is complete")))
        # The exchange is over: an unfinished request body is abandoned, and the connection
        # (``connection: close``) is closed from this side too.
        if not self.stream.finished:
            self.stream._connection_gone(
                Failure(errors.TransportClosed("ERR_TRANSPORT_CLOSE: the response is complete"))
            )
        self.close()

    # flow, timeout, closing

    def response(self) -> Deferred[StreamReply]:
        """A Deferred of the :class:`StreamReply` (at once if its headers are in, failed if it will
        never come); cancelling it drops the connection.
        """
        if self.reply is not None:
            return succeed(self.reply)
        if self.failure is not None:
            return fail(self.failure)
        d: Deferred[StreamReply] = Deferred(lambda _: self.abort(CancelledError()))
        self.waiting.append(d)
        return d

    def fail_waiting(self, failure: Failure) -> None:
        """The response will never come: fail the waiting :meth:`response` calls and later ones."""
        self.failure = failure
        waiting, self.waiting = self.waiting, []
        for d in waiting:
            if not d.called:
                d.errback(failure)

    def activity(self) -> None:
        """Something moved (bytes read or written): the idle timeout starts again."""
        self.last = self.seconds()

    def hold_changed(self) -> None:
        """Pause or resume reading the socket as the reply's reader pauses or resumes, so an unread
        body is not buffered without bound.
        """
        reply = self.reply
        hold = reply is not None and reply.holding and not self.complete
        if hold == self.reading_paused or self.closed:
            return
        self.reading_paused = hold
        transport: Any = self.transport
        if hold:
            transport.pauseProducing()
        else:
            transport.resumeProducing()

    def check_idle(self) -> None:
        """The idle timer: abort with :class:`~grenache.errors.RequestTimeout` when nothing moved
        for ``timeout`` seconds, else check again when it could next expire.
        """
        self.timer = None
        if self.closed:
            return
        idle = self.seconds() - self.last
        if idle >= self.timeout:
            self.abort(errors.RequestTimeout())
            return
        self.timer = self.reactor.callLater(self.timeout - idle, self.check_idle)

    def abort(self, error: BaseException) -> None:
        """Drop the connection; everything waiting fails with ``error``."""
        if self.closed:
            return
        if self.reason is None:
            self.reason = error
        if self.reply is None:
            self.fail_waiting(Failure(error))
        self.stream._connection_gone(Failure(error))
        self.closed = True
        drop_connection(self.transport)

    def close(self) -> None:
        """Close politely once the exchange is over (resuming reading, so the close is seen)."""
        if self.closed:
            return
        transport: Any = self.transport
        if self.reading_paused:
            self.reading_paused = False
            transport.resumeProducing()
        transport.loseConnection()


class StreamConnectFactory(protocol.Factory):
    """Makes the connection of one stream and reports how it went (class :attr:`protocol`).

    :meth:`connect` opens it through a client endpoint; ``opened`` fires with the
    :class:`ClientStream` once the head is written (after the TLS handshake over TLS), or
    fails; ``on_done`` is called with the factory once the connection is gone (or never came).
    """

    noisy = False
    protocol: type[StreamConnection] = StreamConnection  # type: ignore[assignment]

    def __init__(
        self,
        reactor: Any,
        dest: str,
        rid: str,
        key: str,
        head: bytes,
        timeout: float,
        *,
        tls: bool,
        on_done: Callable[[StreamConnectFactory], None],
    ) -> None:
        self.reactor = reactor
        self.seconds: Callable[[], float] = reactor.seconds
        self.dest = dest
        self.rid = rid
        self.key = key
        self.head = head
        self.timeout = timeout
        self.tls = tls
        self.on_done = on_done
        self.attempt: Deferred[Any] | None = None
        self.conn: StreamConnection | None = None
        self.done = False
        self.opened: Deferred[ClientStream] = Deferred(self._cancel)

    def connect(self, endpoint: Any) -> Deferred[ClientStream]:
        """Connect through ``endpoint``; the Deferred is :attr:`opened`."""
        self.attempt = endpoint.connect(self)
        self.attempt.addErrback(self._connect_failed)
        return self.opened

    def buildProtocol(self, addr: Any) -> StreamConnection:
        """The :attr:`protocol` of this stream's connection, bound to this factory."""
        return self.protocol(self)

    def connected(self, conn: StreamConnection) -> None:
        """The connection is made: :meth:`stop` now drops it instead of cancelling the attempt."""
        self.conn = conn

    def ready(self, stream: ClientStream) -> None:
        """The head is written (the TLS handshake done): :attr:`opened` fires with the stream."""
        if not self.opened.called:
            self.opened.callback(stream)

    def lost(self, conn: StreamConnection, failure: Failure) -> None:
        """The connection is gone: :attr:`opened` fails with ``failure`` if it had not fired, and
        ``on_done`` is called.
        """
        if not self.opened.called:
            self.opened.errback(failure)
        self._done()

    def _connect_failed(self, reason: Failure) -> None:
        if not self.opened.called:
            error = reason.value if reason.check(CancelledError) else None
            self.opened.errback(error or connect_error(self.dest, reason))
        self._done()

    def _done(self) -> None:
        if not self.done:
            self.done = True
            self.on_done(self)

    def stop(self, error: BaseException) -> None:
        """End the stream with ``error``: drop its connection, or give up connecting."""
        conn = self.conn
        if conn is not None:
            conn.abort(error)
        elif self.attempt is not None and not self.attempt.called:
            if not self.opened.called:
                self.opened.errback(error)
            self.attempt.cancel()

    def _cancel(self, d: Deferred[ClientStream]) -> None:
        self.stop(CancelledError())
