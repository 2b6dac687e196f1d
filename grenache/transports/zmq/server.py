"""The server side of RPC over ZeroMQ: :class:`ZmqServerTransport`, a ROUTER socket.

The frames are docs/protocol.rst, *RPC over ZeroMQ*: each client's DEALER sends ``[codec,
body]`` with body ``[rid, key, payload]`` or a batch of them (an array of such arrays); the
ROUTER sees ``[identity, codec, body]`` and answers ``[identity, codec, body]`` with body
``[rid, error|null, result]`` in the request's codec, as each handler finishes (any number in
flight, in any order). The replies to one client that are ready in one reactor turn leave as
one batch (``options.max_batch`` at most), if their requests came in batches: a client that
sends each request alone (an older one) gets each reply alone.

Malformed messages never stop the server:

- a wrong number of frames, or a body (or batch element) from which no string rid can be
  read: dropped;
- an unknown codec frame: answered ``ERR_REQUEST_PARSE: unknown codec ...`` **in JSON** (codec
  frame ``json``) for each rid that can be read from the body in a known codec, else dropped;
- a body that does not decode: dropped; a request (or batch element) that is not ``[rid, key,
  payload]`` with string rid and key: answered ``ERR_REQUEST_PARSE`` in the request's codec
  when the rid can be read, else dropped; the other elements of a batch are served.

Each is counted in :attr:`ZmqServerTransport.malformed` and logged at most once a minute.

Override point: subclass the transport and override :meth:`ZmqServerTransport.request_received`
``(request) -> value | Deferred`` (by default the ``serve`` given to
:meth:`ZmqServerTransport.listen`).
"""

from __future__ import annotations

from collections.abc import Callable
from types import MappingProxyType
from typing import Any

import zmq
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python.failure import Failure

from grenache.endpoints import ListenSpec
from grenache.errors import RequestParseError, RequestTooLarge
from grenache.peer import Reply, Request, error_message
from grenache.transports.zmq.curve import CurveServer, ZapHandler
from grenache.transports.zmq.frames import (
    CODECS,
    DEFAULT_CODEC,
    Codec,
    FrameError,
    RateLimitedLog,
    SocketOptions,
    ZmqSocket,
    bind_address,
    codec_of_frame,
    decode_requests,
    get_codec,
    new_factory,
    recover_rids,
)

__all__ = ["DEFAULT_MAX_IN_FLIGHT", "Serve", "ZmqServerTransport"]

log = Logger()

Serve = Callable[[Request], "Deferred[Any]"]

DEFAULT_MAX_IN_FLIGHT = 4096
"""Requests a server runs at once (all clients together) before it stops reading."""

_REQUEST_PARSE = RequestParseError.wire
_JSON = CODECS["json"]
_META = {name: MappingProxyType({"codec": name}) for name in CODECS}


class ZmqServerTransport:
    """The server side of ZeroMQ RPC (:class:`~grenache.peer.ServerTransport`).

    One ROUTER socket, bound by :meth:`listen` to a port (on ``interface``; all IPv4
    addresses when empty) or ``tcp:PORT[:interface=ADDR]``. ``tls`` is a
    :class:`~grenache.transports.zmq.curve.CurveServer` (CURVE encryption and, with
    ``allowed_clients``, client authentication; the handler sees the client's Z85 public key
    in :attr:`~grenache.peer.Request.peer_certificate`) or ``None`` for plaintext.
    ``options`` bounds the socket (high-water marks, message size, heartbeats); a reply larger
    than ``options.max_message_size`` is replaced by an ``ERR_REQUEST_TOO_LARGE`` error reply.
    With ``max_in_flight`` requests running, the socket is not read until half of them
    finished (ZeroMQ's queues, then TCP, push back on clients; the rest of the batch being
    read is still served). ``on_request_error`` is
    called with the frames of each malformed message. ``codec`` is accepted for symmetry
    with the other ZeroMQ transports: replies always use the codec of their request.
    :attr:`malformed` counts malformed messages; :attr:`refused` CURVE clients refused.
    """

    def __init__(
        self,
        reactor: Any,
        *,
        tls: CurveServer | None = None,
        interface: str = "",
        codec: str | Codec = DEFAULT_CODEC,
        options: SocketOptions | None = None,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        on_request_error: Callable[[list[bytes]], Any] | None = None,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be positive")
        if tls is not None and not isinstance(tls, CurveServer):
            raise TypeError(f"the zmq transport's tls is a CurveServer, not {tls!r}")
        self._reactor = reactor
        self.tls = tls
        self.interface = interface
        self.codec = get_codec(codec)
        self.options = options or SocketOptions()
        self._max_size = self.options.max_message_size
        self.max_in_flight = max_in_flight
        self.on_request_error = on_request_error
        self.in_flight = 0
        self._malformed = RateLimitedLog(reactor, "ZeroMQ RPC server")
        self._serve: Serve | None = None
        self._factory: Any = None
        self._socket: ZmqSocket | None = None
        self._zap: ZapHandler | None = None
        self.port: int | None = None

    @property
    def malformed(self) -> int:
        """How many malformed messages were dropped or answered with an error."""
        return self._malformed.count

    @property
    def refused(self) -> int:
        """How many CURVE clients the whitelist refused."""
        return self._zap.refused if self._zap is not None else 0

    def listen(self, where: ListenSpec, serve: Serve) -> Deferred[int]:
        """Bind the ROUTER on ``where`` and serve each request with ``serve``; fires with the
        bound port. Fails with :class:`ValueError` for what ZeroMQ cannot bind (endpoint
        objects, ``ssl:``/``unix:`` descriptions) and :class:`CannotListenError` when the
        address is taken."""
        if self._socket is not None:
            return fail(RuntimeError("ZmqServerTransport is already listening"))
        try:
            address = bind_address(where, self.interface)
        except ValueError:
            return fail()
        self._serve = serve
        factory = new_factory(self._reactor, self.options)
        tls = self.tls
        try:
            if tls is not None:
                self._zap = ZapHandler(factory, tls)
            self._socket = ZmqSocket(
                factory,
                zmq.ROUTER,
                self.options,
                self._received,
                configure=tls.configure if tls is not None else None,
                copy_frames=tls is None,
                send_failed=self._send_failed,
            )
            self.port = self._socket.bind(address)
        except zmq.ZMQError as e:
            factory.shutdown()
            self._socket = self._zap = None
            return fail(CannotListenError(address, where, e))
        self._factory = factory
        log.info("ZeroMQ RPC server listening on {address}", address=address)
        return succeed(self.port)

    # --- override point ---------------------------------------------------------------------

    def request_received(self, request: Request) -> Any:
        """Serve one request: its result, a Deferred, or an exception for an error reply."""
        serve = self._serve
        assert serve is not None
        return serve(request)

    # --- the hot path -------------------------------------------------------------------------

    def _received(self, frames: list[Any]) -> None:
        peer: str | None = None
        if self.tls is not None:
            if len(frames) == 3:
                try:
                    peer = frames[1].get("User-Id")
                except zmq.ZMQError:
                    peer = None
            frames = [f.bytes for f in frames]
        if len(frames) != 3:
            self._bad(frames, f"{len(frames) - 1} frames instead of 2 (codec, body)")
            return
        identity, codec_frame, body = frames
        codec = codec_of_frame(codec_frame)
        if codec is None:
            text = f"unknown codec {codec_frame[:16]!r} (known: {', '.join(CODECS)})"
            self._bad(frames, text)
            for rid in recover_rids(body):
                self._send(identity, _JSON, [rid, f"{_REQUEST_PARSE}: {text}", None], True)
            return
        try:
            requests = decode_requests(codec, body)
        except FrameError as e:
            self._bad(frames, str(e))
            return
        meta = _META[codec.name]
        alone = len(requests) == 1  # a client that batches gets batches back
        for request in requests:
            if type(request) is not tuple:
                assert isinstance(request, FrameError)
                self._bad(frames, str(request))
                if request.rid is not None:
                    reply = [request.rid, f"{_REQUEST_PARSE}: {request}", None]
                    self._send(identity, codec, reply, alone)
                continue
            rid, key, payload = request
            self.in_flight += 1
            if self.in_flight >= self.max_in_flight and self._socket is not None:
                self._socket.pause()
            try:
                outcome = self.request_received(Request(rid, key, payload, peer, None, meta))
            except Exception:
                outcome = Failure()
            if isinstance(outcome, Deferred):
                if outcome.called and not outcome.paused:
                    # Already answered (a synchronous handler): no callback chain to run.
                    result = outcome.result
                    if not isinstance(result, Failure):
                        self._finished(result, identity, codec, rid, alone)
                        continue
                outcome.addBoth(self._finished, identity, codec, rid, alone)
            else:
                self._finished(outcome, identity, codec, rid, alone)

    def _finished(self, outcome: Any, identity: bytes, codec: Codec, rid: str, alone: bool) -> None:
        self.in_flight -= 1
        socket = self._socket
        if socket is not None and socket.paused and self.in_flight <= self.max_in_flight // 2:
            socket.resume()
        if isinstance(outcome, Failure):
            self._send(identity, codec, [rid, error_message(outcome), None], alone)
        elif isinstance(outcome, Reply):
            error = outcome.error
            if isinstance(error, BaseException):
                error = error_message(error)
            self._send(identity, codec, [rid, error, outcome.result], alone)
        else:
            self._send(identity, codec, [rid, None, outcome], alone)

    def _send(self, identity: bytes, codec: Codec, reply: list[Any], alone: bool) -> None:
        socket = self._socket
        if socket is None or socket.closed:
            log.debug("ZeroMQ reply for rid {rid!r} dropped: server stopped", rid=reply[0])
            return
        try:
            body = codec.dumps(reply)
        except (TypeError, ValueError, RecursionError, OverflowError) as e:
            log.failure("cannot encode the reply for rid {rid!r}", rid=reply[0])
            body = codec.dumps([reply[0], error_message(e), None])
        limit = self._max_size
        if len(body) > limit:
            text = f"{RequestTooLarge.wire}: reply of {len(body)} bytes > {limit}"
            body = codec.dumps([reply[0], text, None])
        socket.batch(identity, codec, body, reply[0], alone)

    def _send_failed(self, rids: list[Any], error: zmq.ZMQError) -> None:
        # A ROUTER drops what it cannot route; only a closing socket raises.
        log.debug("ZeroMQ replies for rids {rids!r} not sent: {e}", rids=rids, e=error)

    def _bad(self, frames: list[bytes], reason: str) -> None:
        self._malformed(reason)
        hook = self.on_request_error
        if hook is not None:
            try:
                hook(frames[1:])
            except Exception:
                log.failure("on_request_error raised")

    def stop(self) -> Deferred[None]:
        """Close the socket (linger 0) and the ZeroMQ context; clients see their connection
        end. Replies of handlers still running are dropped."""
        factory, self._factory = self._factory, None
        socket, self._socket = self._socket, None
        if socket is not None:
            socket.close()
        if self._zap is not None:
            self._zap.close()
        if factory is not None:
            factory.shutdown()
        return succeed(None)
