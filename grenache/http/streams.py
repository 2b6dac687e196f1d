"""Message bodies as they arrive and as they are written, with flow control both ways.

Shared by the server (a streamed request's body, a streamed response) and the clients (a
stream's request body, its response):

- :class:`BodyStream` delivers a body as it arrives, the way ``twisted.web`` delivers a
  client response: :meth:`BodyStream.deliverBody` connects an ``IProtocol`` whose transport
  is an ``IPushProducer`` that pauses the socket;
- :class:`BodyWriter` is an ``IConsumer`` that writes a body (chunked or raw) and follows
  the connection's backpressure with push or pull producers, or :meth:`BodyWriter.drained`;
- :func:`read_body` collects a whole body from anything with ``deliverBody`` (a
  :class:`BodyStream`, a stream reply, a ``twisted.web`` response), with a size limit.

A body ends with ``ConnectionDone`` when it is complete, or with a :mod:`grenache.errors`
exception when it is not.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.internet import protocol
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from grenache import errors

__all__ = ["BodyStream", "BodyWriter", "body_done", "read_body"]

log = Logger()


def body_done() -> Failure:
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
