"""RPC over HTTP, byte-compatible with grenache-nodejs-http 1.0.x (reference §6).

Wire format: the client POSTs ``[rid, key, payload]`` as JSON to ``/`` of ``ip:port`` with the
header ``grc-compress: gzip|none``; the server answers status 200 with ``[rid, error|null,
result]``. With ``grc-compress: gzip`` both bodies are raw gzip streams, signalled by that header
only: **no** ``Content-Encoding`` (node-fetch would inflate it and the Node client would then
fail its own gunzip), and the reply carries no ``Content-Type`` either.

Server (:class:`HTTPServerTransport`), on :mod:`grenache.httpserver`:

- method and path are ignored; ``Content-Length`` and chunked bodies are read whole (a chunked
  body only sets Node's ``meta.isStream``; buffered handling is the same);
- a ``_gr`` header ``[rid, key]`` overrides the body's rid and key where its elements are truthy
  (Node's ``getRidKey``); a ``_gr`` that is not JSON is answered with status 500 and Node's
  literal ``[null, "ERR_HEADER_PARSE_GR", null]``;
- a body that gunzip refuses is used raw, as Node does (so a client that says gzip and sends
  JSON still works);
- **deliberate difference** (DESIGN.md): a body that is not a JSON array is answered with status
  400 and ``[null,"ERR_REQUEST_PARSE",null]``; Node sends nothing and its client hangs;
- a body over ``max_body_size`` (8 MiB by default, checked on the wire and again after gunzip)
  is answered with status 413 and ``[null,"ERR_REQUEST_TOO_LARGE",null]`` and the connection
  is closed without reading the rest;
- over TLS, the client certificate's Node-style fingerprint and DER go into the request.

Client (:class:`HTTPClientTransport`): a lean HTTP/1.1 client on ``httptools`` with persistent
per-destination connection pools (one request at a time per connection, no pipelining, so a slow
reply never delays another). It was measured against treq with a persistent pool (see
``bench/README.md``). Errors map to :mod:`grenache.errors` as reference §6.1 and §13 say, with a
finite timeout on every request. A refused connection is
:class:`~grenache.errors.DestinationUnreachable` (the request never left), a connection lost
after the request was written is :class:`~grenache.errors.TransportClosed`, at once.

Streaming (§6.6, Node's ``peer.stream``) is not implemented: raw stream bodies are not
Grenache RPC and a buffered Node server JSON-parses them anyway.
"""

from __future__ import annotations

import zlib
from collections import deque
from collections.abc import Callable
from typing import Any

import attrs
import httptools
from OpenSSL import SSL
from twisted.internet import protocol
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure

from grenache import errors
from grenache.codec import json_dumps, json_loads
from grenache.httpserver import HTTPRequest, HTTPResponse, HTTPServerFactory, HTTPServerProtocol
from grenache.peer import OutgoingRequest, Request, error_message
from grenache.tls import ClientTLS, ServerTLS, peer_certificate

__all__ = [
    "DEFAULT_MAX_BODY_SIZE",
    "DEFAULT_MAX_REPLY_SIZE",
    "BodyTooLarge",
    "HTTPClientTransport",
    "HTTPServerTransport",
    "gunzip",
    "gzip",
    "parse_reply",
]

log = Logger()

DEFAULT_MAX_BODY_SIZE = 8 * 1024 * 1024
"""Server limit on a request body, before and after gunzip. Node has none; 8 MiB keeps a
misbehaving client from holding much memory while leaving room for large RPC payloads."""

DEFAULT_MAX_REPLY_SIZE = 64 * 1024 * 1024
"""Client limit on a reply body, before and after gunzip (replies are often the big side)."""

DEFAULT_SERVER_IDLE_TIMEOUT = 30.0
"""Seconds an idle keep-alive connection stays open on the server. Longer than the clients'
own idle time (Node's agent: 5 s; this client: 4 s), so clients close first and never send
on a connection the server is closing."""

DEFAULT_CLIENT_IDLE_TIMEOUT = 4.0
"""Seconds an idle pooled connection is kept; below Node's server keep-alive timeout (5 s)."""


# --- gzip (grc-compress) ---------------------------------------------------------------------


class BodyTooLarge(ValueError):
    """A body (after gunzip) exceeded its limit."""


def gzip(data: bytes) -> bytes:
    """Gzip ``data`` as Node's ``zlib.gzip`` does (default level, zlib's gzip header)."""
    c = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, 31)
    return c.compress(data) + c.flush()


def gunzip(data: bytes, limit: int | None = None) -> bytes:
    """Inflate a gzip stream (several members allowed, as Node's ``zlib.gunzip``).

    Raises ``zlib.error`` or ``ValueError`` when ``data`` is not complete gzip, and
    :class:`BodyTooLarge` as soon as the output would exceed ``limit`` bytes (so a small
    compressed body cannot expand without bound).
    """
    out: list[bytes] = []
    total = 0
    while True:
        d = zlib.decompressobj(31)
        if limit is None:
            chunk = d.decompress(data)
        else:
            chunk = d.decompress(data, limit - total + 1)
            if len(chunk) > limit - total or d.unconsumed_tail:
                raise BodyTooLarge(f"body inflates to more than {limit} bytes")
        total += len(chunk)
        out.append(chunk)
        if not d.eof:
            raise ValueError("truncated gzip stream")
        data = d.unused_data
        if not data:
            break
    return b"".join(out)


def _truthy(value: Any) -> bool:
    """JavaScript truthiness of a JSON value (``[]`` and ``{}`` are truthy, ``0``/``""`` not)."""
    if value is None or value is False:
        return False
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value == value and value != 0
    if isinstance(value, str):
        return value != ""
    return True


# --- server ------------------------------------------------------------------------------


_GR_ERROR = HTTPResponse(500, b'[null, "ERR_HEADER_PARSE_GR", null]')
_PARSE_ERROR = HTTPResponse(400, b'[null,"ERR_REQUEST_PARSE",null]')
_TOO_LARGE = HTTPResponse(413, b'[null,"ERR_REQUEST_TOO_LARGE",null]')


@attrs.frozen
class _TLSRequest(HTTPRequest):
    """An HTTP request that came over TLS: adds the client certificate, if any."""

    certificate: tuple[str, bytes] | None = None


class _RPCServerProtocol(HTTPServerProtocol):
    """The lean HTTP protocol, plus the client certificate on requests over TLS."""

    factory: _RPCServerFactory
    _certificate: tuple[str, bytes] | None = None
    _certificate_read = False

    def requestReceived(self, method: bytes) -> HTTPRequest:
        request = super().requestReceived(method)
        if not self.factory.tls:
            return request
        if not self._certificate_read:
            self._certificate_read = True
            self._certificate = peer_certificate(self.transport)
        return _TLSRequest(
            request.method,
            request.path,
            request.headers,
            request.body,
            request.peer,
            self._certificate,
        )


class _RPCServerFactory(HTTPServerFactory):
    """Builds :class:`_RPCServerProtocol` and tells when the last connection has closed."""

    tls = False
    noisy = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._drained: list[Deferred[None]] = []

    def buildProtocol(self, addr: Any) -> Any:
        return _RPCServerProtocol(self)

    def connectionClosed(self, proto: HTTPServerProtocol) -> None:
        super().connectionClosed(proto)
        if not self.connections:
            waiting, self._drained = self._drained, []
            for d in waiting:
                d.callback(None)

    def when_drained(self) -> Deferred[None]:
        """Fires once no connection is open."""
        if not self.connections:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._drained.append(d)
        return d


class _ServerTLSProtocol(TLSMemoryBIOProtocol):
    """TLS that can finish closing a connection whose reading the HTTP protocol paused.

    The lean HTTP protocol pauses reading before it closes a connection; plain TCP closes
    anyway, but a TLS shutdown waits for the peer's close_notify (or FIN), which a paused
    transport never reads, so the connection would linger until the idle sweep.
    """

    def loseConnection(self) -> None:
        super().loseConnection()
        transport: Any = self.transport
        if self.disconnecting and transport is not None:
            resume = getattr(transport, "resumeProducing", None)
            if resume is not None:
                try:
                    resume()
                except Exception:
                    pass  # already disconnected


class _ServerTLSFactory(TLSMemoryBIOFactory):
    protocol = _ServerTLSProtocol
    noisy = False


class HTTPServerTransport:
    """Serves Grenache RPC over HTTP(S) on the lean HTTP server (a ``ServerTransport``).

    ``tls`` is a :class:`~grenache.tls.ServerTLS` or any ``IOpenSSLContextFactory``.
    ``max_body_size`` limits request bodies (bytes, before and after gunzip);
    ``idle_timeout`` closes keep-alive connections idle that many seconds; ``interface``
    is the address to bind (all interfaces by default, as Node). :meth:`stop` closes open
    connections and aborts those still open ``stop_grace`` seconds later.
    """

    def __init__(
        self,
        reactor: Any,
        *,
        tls: ServerTLS | Any = None,
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
        idle_timeout: float = DEFAULT_SERVER_IDLE_TIMEOUT,
        interface: str = "",
        max_header_size: int = 16384,
        stop_grace: float = 5.0,
    ) -> None:
        self.reactor = reactor
        self.stop_grace = stop_grace
        self.tls = tls
        self.max_body_size = max_body_size
        self.idle_timeout = idle_timeout
        self.interface = interface
        self.factory = _RPCServerFactory(
            self.handle,
            reactor,
            max_body_size=max_body_size,
            max_header_size=max_header_size,
            idle_timeout=idle_timeout,
            too_large=_TOO_LARGE,
        )
        self.factory.tls = tls is not None
        self._serve: Callable[[Request], Deferred[Any]] | None = None
        self._port: IListeningPort | None = None

    def protocol_factory(self) -> Any:
        """The factory to listen with: the HTTP factory, wrapped in TLS when configured."""
        if self.tls is None:
            return self.factory
        context = self.tls.context_factory() if isinstance(self.tls, ServerTLS) else self.tls
        http_factory: Any = self.factory
        return _ServerTLSFactory(context, False, http_factory, clock=self.reactor)

    def listen(self, port: int, serve: Callable[[Request], Deferred[Any]]) -> Deferred[int]:
        """Listen on ``port`` (0: any) and fire with the bound port."""
        if self._port is not None:
            return fail(RuntimeError("HTTPServerTransport is already listening"))
        self._serve = serve
        try:
            self._port = self.reactor.listenTCP(
                port, self.protocol_factory(), interface=self.interface
            )
        except Exception:
            return fail()
        listening: Any = self._port
        bound = listening.getHost()
        return succeed(getattr(bound, "port", port) or port)

    def stop(self) -> Deferred[None]:
        """Stop listening, close open connections; fires when both are done.

        Connections still open after ``stop_grace`` seconds (a TLS peer that never answers
        the close) are aborted.
        """
        port: Any = self._port
        self._port = None
        stopped: Deferred[Any] = succeed(None)
        if port is not None:
            stopped = Deferred.fromCoroutine(_maybe_await(port.stopListening()))
        factory = self.factory
        factory.closeConnections()
        drained = factory.when_drained()
        timer = None
        if not drained.called:
            timer = self.reactor.callLater(self.stop_grace, factory.closeConnections, True)

        async def both() -> None:
            await stopped
            await drained
            if timer is not None and timer.active():
                timer.cancel()

        return Deferred.fromCoroutine(both())

    # --- request handling ---

    def handle(self, request: HTTPRequest) -> HTTPResponse | Deferred[HTTPResponse]:
        """Answer one HTTP request (the lean server's handler)."""
        compress = False
        gr: bytes | None = None
        for name, value in request.headers:
            if name == b"grc-compress":
                compress = b"gzip" in value
            elif name == b"_gr":
                gr = value
        info: Any = None
        if gr is not None:
            try:
                info = json_loads(gr)
            except ValueError:
                return _GR_ERROR
        body = request.body
        if compress:
            try:
                body = gunzip(body, self.max_body_size)
            except BodyTooLarge:
                return _TOO_LARGE
            except (zlib.error, ValueError):
                pass  # Node keeps the raw bytes when gunzip fails
        try:
            data = json_loads(body)
        except ValueError:
            return _PARSE_ERROR
        if not isinstance(data, list):
            return _PARSE_ERROR
        n = len(data)
        rid = data[0] if n > 0 else None
        key = data[1] if n > 1 else None
        payload = data[2] if n > 2 else None
        if isinstance(info, list):
            if info and _truthy(info[0]):
                rid = info[0]
            if len(info) > 1 and _truthy(info[1]):
                key = info[1]
        cert = getattr(request, "certificate", None)
        rpc = (
            Request(rid, key, payload)  # type: ignore[arg-type]
            if cert is None
            else Request(rid, key, payload, cert[0], cert[1])  # type: ignore[arg-type]
        )
        serve = self._serve
        if serve is None:
            return _reply(rid, "ERR_SERVER_NOT_READY", None, compress)
        try:
            d = serve(rpc)
        except Exception as e:
            return _reply(rid, error_message(e), None, compress)
        d.addCallbacks(
            _reply_result, _reply_failure, callbackArgs=(rid, compress), errbackArgs=(rid, compress)
        )
        # Answer synchronously when the handler did (the common case): no Deferred round trip.
        if d.called and not d.paused:
            result = d.result
            if isinstance(result, HTTPResponse):
                return result
        return d


async def _maybe_await(value: Any) -> Any:
    if isinstance(value, Deferred):
        return await value
    return value


def _reply(rid: Any, err: str | None, result: Any, compress: bool) -> HTTPResponse:
    try:
        body = json_dumps([rid, err, result])
    except (TypeError, ValueError) as e:
        body = json_dumps([rid, error_message(e), None])
    if compress:
        body = gzip(body)
    return HTTPResponse(200, body)


def _reply_result(result: Any, rid: Any, compress: bool) -> HTTPResponse:
    return _reply(rid, None, result, compress)


def _reply_failure(failure: Failure, rid: Any, compress: bool) -> HTTPResponse:
    if not failure.check(errors.GrenacheError):
        log.debug(
            "RPC handler failed: {error}",
            error=error_message(failure),
        )
    return _reply(rid, error_message(failure), None, compress)


# --- client: replies ---------------------------------------------------------------------------


def parse_reply(
    status: int,
    body: bytes,
    *,
    compress: bool,
    rid: Any,
    limit: int | None = DEFAULT_MAX_REPLY_SIZE,
) -> Any:
    """The result of a reply, or raise the error it means (reference §6.1, §13).

    - status not 2xx: ``ERR_REQUEST_PARSE`` and ``ERR_REQUEST_TOO_LARGE`` bodies (this
      project's servers) become :class:`~grenache.errors.RequestParseError` and
      :class:`~grenache.errors.RequestTooLarge`, anything else
      ``RemoteError("ERR_REQUEST_GENERIC: <body text>")``, as Node;
    - gunzip failure (when compressed): ``RemoteError("ERR_REPLY_ENCODING_COMPRESSION")``;
    - not JSON, a falsy value or not an array: ``RemoteError("ERR_REPLY_EMPTY")``;
    - a reply for another rid: ``RemoteError("ERR_REPLY_RID_MISMATCH")`` (Node drops it and
      waits forever);
    - ``[rid, err, result]`` with a truthy ``err``: ``RemoteError(err)``.
    """
    if not 200 <= status < 300:
        text = body.decode("utf-8", "replace")
        try:
            data = json_loads(body)
        except ValueError:
            data = None
        if isinstance(data, list) and len(data) > 1:
            if data[1] == errors.RequestParseError.wire:
                raise errors.RequestParseError()
            if data[1] == errors.RequestTooLarge.wire:
                raise errors.RequestTooLarge()
        raise errors.RemoteError(f"ERR_REQUEST_GENERIC: {text}")
    if compress:
        try:
            body = gunzip(body, limit)
        except BodyTooLarge:
            raise errors.RequestTooLarge("ERR_REPLY_TOO_LARGE") from None
        except (zlib.error, ValueError):
            raise errors.RemoteError("ERR_REPLY_ENCODING_COMPRESSION") from None
    try:
        data = json_loads(body)
    except ValueError:
        raise errors.RemoteError("ERR_REPLY_EMPTY") from None
    if not _truthy(data) or not isinstance(data, list):
        raise errors.RemoteError("ERR_REPLY_EMPTY")
    n = len(data)
    reply_rid = data[0] if n > 0 else None
    err = data[1] if n > 1 else None
    if reply_rid != rid:
        raise errors.RemoteError("ERR_REPLY_RID_MISMATCH")
    if _truthy(err):
        raise errors.RemoteError(err if isinstance(err, str) else json_dumps(err).decode())
    return data[2] if n > 2 else None


# --- client: connections and pools ---------------------------------------------------------


class _Call:
    """One request in flight: its bytes, Deferred, timer and where it currently is."""

    __slots__ = ("compress", "conn", "data", "deferred", "done", "rid", "timer")

    def __init__(self, rid: str, data: bytes, compress: bool) -> None:
        self.rid = rid
        self.data = data
        self.compress = compress
        self.conn: _ClientProtocol | None = None
        self.timer: Any = None
        self.done = False
        self.deferred: Deferred[Any] = Deferred(self._cancel)

    def _cancel(self, d: Deferred[Any]) -> None:
        self._detach()  # the Deferred then fails with CancelledError

    def _detach(self) -> None:
        """Mark done, stop the timer, and drop the connection the reply would have used."""
        self.done = True
        if self.timer is not None:
            if self.timer.active():
                self.timer.cancel()
            self.timer = None
        conn, self.conn = self.conn, None
        if conn is not None and conn.call is self:
            conn.call = None
            conn.abort()

    def timed_out(self) -> None:
        self.timer = None
        if self.done:
            return
        self._detach()
        self.deferred.errback(errors.RequestTimeout())

    def fail(self, error: BaseException) -> None:
        if self.done:
            return
        self.done = True
        self.conn = None
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        self.deferred.errback(error)

    def reply(self, status: int, body: bytes, limit: int | None) -> None:
        if self.done:
            return
        self.done = True
        self.conn = None
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        try:
            result = parse_reply(status, body, compress=self.compress, rid=self.rid, limit=limit)
        except Exception as e:
            self.deferred.errback(e)
        else:
            self.deferred.callback(result)


class _StopParsing(Exception):
    """Raised in a parser callback to abandon the response."""


class _ClientProtocol(protocol.Protocol):
    """One pooled client connection; carries one request at a time."""

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.call: _Call | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.limit = pool.owner.max_reply_size
        self.body: list[bytes] = []
        self.size = 0
        self.status = 0
        self.headers_done = False
        self.until_eof = False  # no Content-Length and not chunked: the body ends at EOF
        self.received = False
        self.idle_since = 0.0
        self.closed = False
        self._framed = False

    def connectionMade(self) -> None:
        # Requests are written whole: never let Nagle hold one back (Node's agent does the same).
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            try:
                set_no_delay(True)
            except OSError:
                pass
        self.pool.connection_made(self)

    def send(self, call: _Call) -> None:
        self.call = call
        call.conn = self
        self.body = []
        self.size = 0
        self.status = 0
        self.headers_done = False
        self.until_eof = False
        self._framed = False
        self.received = False
        transport: Any = self.transport
        transport.write(call.data)

    def abort(self) -> None:
        """Drop the connection at once (timeout, cancel, protocol error)."""
        if self.closed:
            return
        self.closed = True
        transport: Any = self.transport
        abort = getattr(transport, "abortConnection", None)
        if abort is not None:
            abort()
        else:
            transport.loseConnection()

    def close(self) -> None:
        """Close an idle connection politely."""
        if self.closed:
            return
        self.closed = True
        transport: Any = self.transport
        transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.call is None:
            # Nothing was asked: a server talking out of turn cannot be trusted.
            self.abort()
            return
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(errors.RemoteError("ERR_REQUEST_GENERIC: unexpected protocol upgrade"))
        except httptools.HttpParserError as e:
            cause = e.__context__
            if isinstance(cause, _StopParsing):
                return
            self._fail(errors.RemoteError(f"ERR_REQUEST_GENERIC: invalid HTTP response ({e})"))

    def _fail(self, error: BaseException) -> None:
        call, self.call = self.call, None
        self.abort()
        if call is not None:
            call.fail(error)

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        if lower == b"content-length" or lower == b"transfer-encoding":
            self._framed = True

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.headers_done = True
        self.until_eof = not self._framed and self.status >= 200

    def on_body(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.limit is not None and self.size > self.limit:
            self._fail(errors.RequestTooLarge("ERR_REPLY_TOO_LARGE"))
            raise _StopParsing()
        self.body.append(chunk)

    def on_message_complete(self) -> None:
        status = self.status
        if status < 200:  # an interim 1xx response: the real one follows
            self.headers_done = False
            self._framed = False
            return
        call, self.call = self.call, None
        body = b"".join(self.body)
        self.body = []
        keep_alive = self.parser.should_keep_alive()
        if call is not None:
            call.conn = None
        self.pool.response_done(self, keep_alive)
        if call is not None:
            call.reply(status, body, self.limit)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.closed = True
        call, self.call = self.call, None
        self.pool.connection_lost(self)
        if call is None:
            return
        if self.headers_done and self.until_eof:
            call.reply(self.status, b"".join(self.body), self.limit)
        elif not self.received and reason.check(SSL.Error):
            call.fail(errors.TLSHandshakeError(f"ERR_REQUEST_GENERIC: TLS: {reason.value}"))
        else:
            call.fail(
                errors.TransportClosed(
                    "ERR_TRANSPORT_CLOSE: connection lost before the reply: "
                    + reason.getErrorMessage()
                )
            )


class _ConnectFactory(protocol.ClientFactory):
    """Builds the protocol of one connection attempt and reports its failure."""

    noisy = False

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.connector: Any = None

    def buildProtocol(self, addr: Any) -> _ClientProtocol:
        self.pool.attempt_done(self)
        return _ClientProtocol(self.pool)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.pool.attempt_done(self)
        self.pool.connect_failed(reason)


class _Pool:
    """Persistent connections to one destination and the requests waiting for one."""

    def __init__(self, owner: HTTPClientTransport, dest: str, host: str, port: int) -> None:
        self.owner = owner
        self.dest = dest
        self.host = host
        self.port = port
        self.idle: list[_ClientProtocol] = []
        self.connections: set[_ClientProtocol] = set()
        self.attempts: set[_ConnectFactory] = set()
        self.waiting: deque[_Call] = deque()

    def submit(self, call: _Call) -> None:
        idle = self.idle
        if idle:
            now = self.owner.seconds()
            limit = self.owner.idle_timeout
            while idle:
                conn = idle.pop()
                if conn.closed:
                    continue
                if now - conn.idle_since >= limit:
                    conn.close()
                    continue
                conn.send(call)
                return
        self.waiting.append(call)
        if len(self.connections) + len(self.attempts) < self.owner.pool_size_per_dest:
            self.connect()

    def connect(self) -> None:
        owner = self.owner
        factory = _ConnectFactory(self)
        self.attempts.add(factory)
        wrapped: protocol.ClientFactory = factory
        if owner.tls is not None:
            inner: Any = factory
            tls = TLSMemoryBIOFactory(
                owner.tls.creator_for(self.host), True, inner, clock=owner.reactor
            )
            tls.noisy = False
            wrapped = tls  # type: ignore[assignment]
        factory.connector = owner.reactor.connectTCP(
            self.host, self.port, wrapped, timeout=owner.connect_timeout
        )

    def attempt_done(self, factory: _ConnectFactory) -> None:
        self.attempts.discard(factory)

    def connection_made(self, conn: _ClientProtocol) -> None:
        self.connections.add(conn)
        self.release(conn)

    def release(self, conn: _ClientProtocol) -> None:
        """Give ``conn`` the next waiting request, or keep it idle."""
        waiting = self.waiting
        while waiting:
            call = waiting.popleft()
            if call.done:
                continue
            conn.send(call)
            return
        conn.idle_since = self.owner.seconds()
        self.idle.append(conn)
        self.owner.idle_added()

    def response_done(self, conn: _ClientProtocol, keep_alive: bool) -> None:
        if keep_alive and not conn.closed and not self.owner.stopped:
            self.release(conn)
        else:
            conn.close()

    def connect_failed(self, reason: Failure) -> None:
        if self.connections or self.attempts:
            return  # the waiting requests are served by the other connections
        waiting, self.waiting = list(self.waiting), deque()
        if reason.check(SSL.Error):
            error: BaseException = errors.TLSHandshakeError(
                f"ERR_REQUEST_GENERIC: TLS: {reason.value}"
            )
        else:
            error = errors.DestinationUnreachable(
                f"ERR_REQUEST_GENERIC: {self.dest}: {reason.getErrorMessage()}"
            )
        for call in waiting:
            call.fail(error)
        self.owner.pool_empty(self)

    def connection_lost(self, conn: _ClientProtocol) -> None:
        self.connections.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)
        if self.owner.stopped:
            self.owner.pool_empty(self)
            return
        if any(not c.done for c in self.waiting):
            if len(self.connections) + len(self.attempts) < self.owner.pool_size_per_dest:
                self.connect()
        elif not self.connections and not self.attempts:
            self.waiting.clear()
            self.owner.pool_empty(self)

    def sweep(self, now: float, limit: float) -> None:
        keep = []
        for conn in self.idle:
            if conn.closed:
                continue
            if now - conn.idle_since >= limit:
                conn.close()
            else:
                keep.append(conn)
        self.idle = keep

    def stop(self, error: BaseException) -> None:
        waiting, self.waiting = list(self.waiting), deque()
        for call in waiting:
            call.fail(error)
        for conn in list(self.connections):
            inflight = conn.call
            conn.call = None
            if inflight is not None:
                conn.abort()
                inflight.fail(error)
            else:
                conn.close()
        for attempt in list(self.attempts):
            connector = attempt.connector
            if connector is not None:
                try:
                    connector.stopConnecting()
                except Exception:
                    self.attempts.discard(attempt)
        self.idle = []


_HEAD = b"POST / HTTP/1.1\r\nHost: %s\r\ngrc-compress: %s\r\n%sContent-Length: %d\r\n\r\n"
_TEXT = b"Content-Type: text/plain;charset=UTF-8\r\n"


class HTTPClientTransport:
    """Sends Grenache RPC requests over HTTP(S) (a ``ClientTransport``).

    ``tls`` (a :class:`~grenache.tls.ClientTLS`) switches to HTTPS. Each destination gets a
    pool of at most ``pool_size_per_dest`` persistent connections; requests beyond that wait
    for a free connection (their timeout runs meanwhile). Idle connections are closed after
    ``idle_timeout`` seconds. ``max_reply_size`` limits reply bodies (before and after
    gunzip).
    """

    def __init__(
        self,
        reactor: Any,
        *,
        tls: ClientTLS | None = None,
        pool_size_per_dest: int = 16,
        max_reply_size: int | None = DEFAULT_MAX_REPLY_SIZE,
        idle_timeout: float = DEFAULT_CLIENT_IDLE_TIMEOUT,
        connect_timeout: float = 30.0,
    ) -> None:
        if pool_size_per_dest < 1:
            raise ValueError("pool_size_per_dest must be at least 1")
        self.reactor = reactor
        self.seconds: Callable[[], float] = reactor.seconds
        self.tls = tls
        self.pool_size_per_dest = pool_size_per_dest
        self.max_reply_size = max_reply_size
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self.pools: dict[str, _Pool] = {}
        self.stopped = False
        self._sweeper = LoopingCall(self._sweep)
        self._sweeper.clock = reactor
        self._drained: list[Deferred[None]] = []

    def request(self, dest: str, request: OutgoingRequest) -> Deferred[Any]:
        """POST ``request`` to ``dest`` and fire with the reply's result (see module doc)."""
        if self.stopped:
            return fail(errors.TransportClosed("ERR_TRANSPORT_CLOSE: transport stopped"))
        pool = self.pools.get(dest)
        if pool is None:
            try:
                host, port = _split_dest(dest)
            except ValueError as e:
                return fail(errors.DestinationUnreachable(f"ERR_REQUEST_GENERIC: {e}"))
            pool = self.pools[dest] = _Pool(self, dest, host, port)
        try:
            body = json_dumps([request.rid, request.key, request.payload])
        except (TypeError, ValueError) as e:
            return fail(e)
        if request.compress:
            body = gzip(body)
            head = _HEAD % (dest.encode(), b"gzip", b"", len(body))
        else:
            head = _HEAD % (dest.encode(), b"none", _TEXT, len(body))
        call = _Call(request.rid, head + body, request.compress)
        call.timer = self.reactor.callLater(request.timeout, call.timed_out)
        pool.submit(call)
        return call.deferred

    def pool_empty(self, pool: _Pool) -> None:
        """Forget a pool that has neither connections nor waiting requests."""
        if pool.connections or pool.attempts:
            return
        if self.pools.get(pool.dest) is pool:
            del self.pools[pool.dest]
        if self.stopped and not self.pools:
            waiting, self._drained = self._drained, []
            for d in waiting:
                d.callback(None)

    def idle_added(self) -> None:
        if not self._sweeper.running and self.idle_timeout > 0:
            self._sweeper.start(self.idle_timeout / 2, now=False)

    def _sweep(self) -> None:
        now = self.seconds()
        idle = False
        for pool in list(self.pools.values()):
            pool.sweep(now, self.idle_timeout)
            idle = idle or bool(pool.idle)
        if not idle and self._sweeper.running:
            self._sweeper.stop()

    def stop(self) -> Deferred[None]:
        """Fail pending requests with TransportClosed, close every connection; fires when closed."""
        self.stopped = True
        if self._sweeper.running:
            self._sweeper.stop()
        error = errors.TransportClosed("ERR_TRANSPORT_CLOSE: transport stopped")
        for pool in list(self.pools.values()):
            pool.stop(error)
        for pool in list(self.pools.values()):
            self.pool_empty(pool)
        if not self.pools:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._drained.append(d)
        return d


def _split_dest(dest: str) -> tuple[str, int]:
    """``"ip:port"`` (or ``"[v6]:port"``) to ``(host, port)``."""
    host, sep, port_text = dest.rpartition(":")
    if not sep or not host:
        raise ValueError(f"invalid destination {dest!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"invalid destination port in {dest!r}")
    return host, port
