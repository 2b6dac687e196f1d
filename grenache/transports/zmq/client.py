"""The client side of RPC over ZeroMQ: :class:`ZmqClientTransport`, a DEALER per destination.

Requests are the frames of docs/protocol.rst, *RPC over ZeroMQ*; any number are in flight on a
destination's socket and replies are matched to them by ``rid``. The requests made to one
destination in one reactor turn (e.g. those sent from the callbacks of the replies of one read)
leave as one batch message at the end of the turn, ``options.max_batch`` at most.

ZeroMQ connects in the background and never reports a dead peer to the sender, so each DEALER
has a socket monitor, and the transport decides from its events:

- **unreachable** (:class:`~grenache.errors.DestinationUnreachable`): the first connection
  attempt was refused (``CONNECT_RETRIED`` before any handshake), the handshake failed
  (``HANDSHAKE_FAILED_*``: :class:`~grenache.transports.zmq.curve.CurveRefused` for a refused
  CURVE key), the peer closed the connection during the handshake (not a ZeroMQ RPC service,
  or CURVE settings that do not match), or no handshake succeeded within ``connect_timeout``.
  Requests waiting then never reached a handler: the socket is closed with linger 0, which
  drops them, so :class:`~grenache.peer.PeerRPCClient` fails over to another destination.
- **closed** (:class:`~grenache.errors.TransportClosed`): an established connection ended
  (``DISCONNECTED``: the server closed or died, or ZMTP heartbeats went unanswered for
  ``options.heartbeat_timeout`` seconds). The requests in flight fail at once; the socket is
  closed and the next request to that destination opens a new one.
- **timeout** (:class:`~grenache.errors.RequestTimeout`): no reply within the request's
  timeout, whatever else happened.

One timer (:class:`~grenache.timers.DeadlineTimer`) serves every deadline of the transport:
request timeouts, connect timeouts and idle sockets (closed after ``idle_timeout`` seconds
with nothing in flight).
"""

from __future__ import annotations

import inspect
import math
import weakref
from collections.abc import Callable
from typing import Any

import zmq
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger

from grenache.errors import (
    DestinationUnreachable,
    RemoteError,
    RequestTimeout,
    RequestTooLarge,
    TransportClosed,
)
from grenache.peer import OutgoingRequest
from grenache.timers import DeadlineTimer
from grenache.transports.zmq.curve import CurveClient, curve_error, is_handshake_failure
from grenache.transports.zmq.frames import (
    DEFAULT_CODEC,
    Codec,
    FrameError,
    Monitor,
    SocketOptions,
    ZmqSocket,
    connect_address,
    decode_replies,
    get_codec,
    new_factory,
)

__all__ = ["ZmqClientTransport"]

log = Logger()

_INF = math.inf


# A request waiting for its reply: ``(deadline, deferred)`` (a tuple: one is made per request).
Pending = tuple[float, "Deferred[Any]"]


class Destination:
    """The DEALER socket to one destination, its monitor and the requests sent on it."""

    def __init__(self, owner: ZmqClientTransport, dest: str, address: str) -> None:
        self.owner = owner
        self.dest = dest
        self.pending: dict[str, Pending] = {}  # by rid
        self.opened = False
        self.closed = False
        now = owner._reactor.seconds()
        self.connect_deadline = now + owner.connect_timeout
        self.last_activity = now
        curve = owner.tls
        self.socket = ZmqSocket(
            owner._factory,
            zmq.DEALER,
            owner.options,
            self._received,
            configure=curve.configure if curve is not None else None,
            send_failed=self._send_failed,
        )
        self.monitor = Monitor(owner._factory, self.socket, self._event)
        self.socket.connect(address)

    def _received(self, frames: list[bytes]) -> None:
        try:
            replies = decode_replies(frames)
        except FrameError as e:
            log.debug("bad ZeroMQ reply from {dest} ignored: {e}", dest=self.dest, e=e)
            return
        pending_by_rid = self.pending
        matched = False
        for reply in replies:
            if type(reply) is not list:
                log.debug("bad ZeroMQ reply from {dest} ignored: {e}", dest=self.dest, e=reply)
                continue
            rid, error, result = reply
            pending = pending_by_rid.pop(rid, None)
            if pending is None:
                log.debug("ZeroMQ reply for unknown rid {rid!r} ignored", rid=rid)
                continue
            matched = self.opened = True  # a reply may come before the handshake event
            if error is None or error == "" or error is False:
                pending[1].callback(result)
            else:
                text = error if isinstance(error, str) else repr(error)
                pending[1].errback(RemoteError(text, result))
        if matched:
            self.last_activity = self.owner._reactor.seconds()

    def _send_failed(self, rids: list[str], error: zmq.ZMQError) -> None:
        """A batch was not sent: each of its requests fails as a lone send would have."""
        failure: Exception
        if isinstance(error, zmq.Again):
            failure = DestinationUnreachable(
                f"{DestinationUnreachable.wire}: {self.dest}: send queue full "
                f"({self.owner.options.hwm} messages)"
            )
        else:
            failure = TransportClosed(f"{TransportClosed.wire}: {self.dest}: {error}")
        pop = self.pending.pop
        failed = [p for rid in rids if (p := pop(rid, None)) is not None]
        if failed and isinstance(failure, DestinationUnreachable):
            self.owner._report_unreachable(self.dest)
        for _, d in failed:
            d.errback(failure)

    def _event(self, event: int, value: int) -> None:
        if self.closed:
            return
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self.opened = True
        elif is_handshake_failure(event):
            self.retire(curve_error(self.dest, event, value))
        elif event == zmq.EVENT_DISCONNECTED:
            if self.opened:
                self.retire(TransportClosed(f"{TransportClosed.wire}: {self.dest} disconnected"))
            else:
                self.retire(
                    DestinationUnreachable(
                        f"{DestinationUnreachable.wire}: {self.dest} closed the connection "
                        "during the ZeroMQ handshake (not a ZeroMQ RPC service, or CURVE "
                        "settings that do not match)"
                    )
                )
        elif event == zmq.EVENT_CONNECT_RETRIED and not self.opened:
            self.retire(
                DestinationUnreachable(
                    f"{DestinationUnreachable.wire}: {self.dest}: connection refused"
                )
            )

    def retire(self, error: Exception) -> None:
        """Close the socket (dropping what it still queues) and fail what is pending."""
        if self.closed:
            return
        self.closed = True
        if self.owner._dests.get(self.dest) is self:
            del self.owner._dests[self.dest]
        self.monitor.close()
        self.socket.close()
        pending, self.pending = self.pending, {}
        if pending and isinstance(error, DestinationUnreachable):
            self.owner._report_unreachable(self.dest)
        for _, d in pending.values():
            d.errback(error)


class ZmqClientTransport:
    """The client side of ZeroMQ RPC (:class:`~grenache.peer.ClientTransport`).

    One DEALER socket per destination (``host:port``, ``[v6]:port``), opened on the first
    request, shared by every request to it, closed after ``idle_timeout`` seconds with nothing
    in flight. Requests are encoded with ``codec`` (``"msgpack"``, the default, or
    ``"json"``). ``tls`` is a :class:`~grenache.transports.zmq.curve.CurveClient` (the
    server's public key, this client's key pair) or ``None`` for plaintext. A destination
    with no ZeroMQ handshake within ``connect_timeout`` seconds is unreachable (see the module
    docstring for how a dead or refusing server is told). ``options`` bounds the sockets; a
    request larger than ``options.max_message_size`` fails with
    :class:`~grenache.errors.RequestTooLarge` without being sent, and one that finds the
    destination's queue full (``options.hwm`` messages, e.g. while connecting) with
    :class:`~grenache.errors.DestinationUnreachable`, as does every request of its batch
    (the requests made to one destination in one reactor turn leave as one message, at the
    end of the turn).
    """

    def __init__(
        self,
        reactor: Any,
        *,
        tls: CurveClient | None = None,
        codec: str | Codec = DEFAULT_CODEC,
        idle_timeout: float = 120.0,
        connect_timeout: float = 10.0,
        options: SocketOptions | None = None,
    ) -> None:
        if not idle_timeout > 0 or not connect_timeout > 0:
            raise ValueError("timeouts must be positive")
        if tls is not None and not isinstance(tls, CurveClient):
            raise TypeError(f"the zmq transport's tls is a CurveClient, not {tls!r}")
        self._reactor = reactor
        self.tls = tls
        self.codec = get_codec(codec)
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self.options = options or SocketOptions()
        self._max_size = self.options.max_message_size
        self._factory = new_factory(reactor, self.options)
        self._dests: dict[str, Destination] = {}
        self._sweeper = DeadlineTimer(reactor, self._sweep)
        self._stopped = False
        self._unreachable_observers: list[Callable[[], Callable[[str], object] | None]] = []

    def watch_unreachable(self, observer: Callable[[str], object]) -> None:
        """Call ``observer(dest)`` whenever requests to ``dest`` are about to fail with
        :class:`~grenache.errors.DestinationUnreachable`, before they fail.

        :class:`~grenache.peer.PeerRPCClient` sets such a destination aside through it, so a
        request it cannot retry or send elsewhere (one destination, one attempt: the usual
        case) needs no errback of its own (a tenth of the client's time per request). A bound
        method is held weakly: a client dropped without being stopped does not stay alive,
        or in this list, through its transport.
        """
        ref: Callable[[], Callable[[str], object] | None]
        ref = weakref.WeakMethod(observer) if inspect.ismethod(observer) else lambda: observer
        self._unreachable_observers = [r for r in self._unreachable_observers if r() is not None]
        self._unreachable_observers.append(ref)

    def _report_unreachable(self, dest: str) -> None:
        for ref in list(self._unreachable_observers):
            observer = ref()
            if observer is None:
                continue
            try:
                observer(dest)
            except Exception:
                log.failure("An unreachable-destination observer failed")

    def request(self, dest: str, request: OutgoingRequest) -> Deferred[Any]:
        """Send ``request`` to ``dest`` and fire with the reply's result (see the protocol)."""
        if self._stopped:
            return fail(TransportClosed(f"{TransportClosed.wire}: client stopped"))
        rid = request.rid
        timeout = request.timeout
        if not 0 < timeout < _INF:
            return fail(ValueError(f"timeout must be positive and finite: {timeout!r}"))
        codec = self.codec
        try:
            body = codec.dumps([rid, request.key, request.payload])
        except (TypeError, ValueError, RecursionError, OverflowError):
            return fail()
        if len(body) > self._max_size:
            return fail(
                RequestTooLarge(f"{RequestTooLarge.wire}: {len(body)} bytes > {self._max_size}")
            )
        destination = self._dests.get(dest)
        if destination is None:
            try:
                address = connect_address(dest)
            except ValueError:
                return fail()
            destination = Destination(self, dest, address)
            self._dests[dest] = destination
            self._sweeper.due(destination.connect_deadline)
        pending_by_rid = destination.pending
        if rid in pending_by_rid:
            return fail(ValueError(f"rid {rid!r} is already in flight to {dest}"))
        # No canceller (cheaper than one per request): a cancelled request fails at once,
        # Twisted ignores the later callback or errback of a Deferred cancelled without one,
        # and the entry goes with the late reply or at its deadline, whichever comes first.
        d: Deferred[Any] = Deferred()
        destination.last_activity = now = self._reactor.seconds()
        pending_by_rid[rid] = (deadline := now + timeout, d)
        sweeper = self._sweeper
        if sweeper.at > deadline:
            sweeper.due(deadline)
        destination.socket.batch(None, codec, body, rid)
        return d

    @property
    def connections(self) -> dict[str, bool]:
        """Each destination with a socket, and whether its handshake succeeded."""
        return {dest: d.opened for dest, d in self._dests.items()}

    def _sweep(self, now: float) -> float | None:
        nxt: float | None = None
        expired: list[Deferred[Any]] = []
        for destination in list(self._dests.values()):
            if not destination.opened:
                if destination.connect_deadline <= now:
                    destination.retire(
                        DestinationUnreachable(
                            f"{DestinationUnreachable.wire}: {destination.dest}: no ZeroMQ "
                            f"connection within {self.connect_timeout:g} s"
                        )
                    )
                    continue
                nxt = _earliest(nxt, destination.connect_deadline)
            pending = destination.pending
            for rid in [rid for rid, (deadline, _) in pending.items() if deadline <= now]:
                expired.append(pending.pop(rid)[1])
            for deadline, _ in pending.values():
                nxt = _earliest(nxt, deadline)
            if pending:
                continue
            idle_at = destination.last_activity + self.idle_timeout
            if idle_at <= now:
                log.debug("closing idle ZeroMQ socket to {dest}", dest=destination.dest)
                destination.retire(TransportClosed())
            else:
                nxt = _earliest(nxt, idle_at)
        for d in expired:
            d.errback(RequestTimeout())
        # An errback may have stopped the transport: then nothing is due any more.
        return None if self._stopped else nxt

    def stop(self) -> Deferred[None]:
        """Close every socket and the ZeroMQ context; pending requests fail with
        TransportClosed."""
        if self._stopped:
            return succeed(None)
        self._stopped = True
        self._sweeper.cancel()
        for destination in list(self._dests.values()):
            destination.retire(TransportClosed(f"{TransportClosed.wire}: client stopped"))
        self._factory.shutdown()
        return succeed(None)


def _earliest(a: float | None, b: float) -> float:
    return b if a is None or b < a else a
