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

Streaming (§6.6, Node's ``peer.stream`` and ``'stream'`` event), for large bodies, never
buffered whole on either side:

- client: :meth:`HTTPClientTransport.stream` (or :meth:`grenache.peer.PeerRPCClient.stream`,
  which looks the name up first) opens a ``POST /`` of its own with Node's head (``_gr:
  [rid, key]``, ``connection: close``, ``transfer-encoding: chunked`` and the extra headers)
  and gives a :class:`ClientStream`: an ``IConsumer`` for the request body (push or pull
  producers, or ``drained()``), and :meth:`ClientStream.response` for the raw response as it
  arrives (a :class:`StreamReply`, ``deliverBody``). No grenache framing, no rid matching, an
  idle timeout, typed errors;
- server: ``HTTPServerTransport(stream_handler=...)`` gets chunked requests (every request
  with ``disable_buffered=True``, Node's option) as a :class:`StreamRequest` (Node's ``meta``,
  the body through ``deliverBody`` with pause/resume of the socket) and a
  :class:`StreamResponse` (an ``IConsumer``; :meth:`StreamResponse.reply` is Node's
  convenience ``handler.reply``). ``max_body_size`` does not apply to streams;
  ``max_stream_size`` does (no limit by default, as Node). This stays on the HTTP transport:
  streams are HTTP-only in Grenache (``PeerRPCServer`` serves the buffered handler).

Deliberate differences on streams: a stream handler that fails before sending anything is
answered with status 500 and ``[rid, "<error>", null]`` (Node's process would crash); a
string error given to ``reply`` is sent as the message (Node sends ``null``); header
characters beyond latin-1 are sent as JSON ``\\u`` escapes (Node throws).
"""

from __future__ import annotations

import inspect
import re
import zlib
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import attrs
import httptools
from OpenSSL import SSL
from twisted.internet import protocol
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHandshakeListener, IListeningPort
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from grenache import errors
from grenache.codec import json_dumps, json_loads
from grenache.httpserver import (
    BodyStream,
    BodyWriter,
    HTTPRequest,
    HTTPResponse,
    HTTPServerFactory,
    HTTPServerProtocol,
    HTTPStreamRequest,
    HTTPStreamResponse,
    StreamHandler,
    header_value,
    read_body,
)
from grenache.peer import OutgoingRequest, Request, error_message, new_rid
from grenache.timers import Deadlines
from grenache.tls import ClientTLS, ServerTLS, peer_certificate

__all__ = [
    "DEFAULT_MAX_BODY_SIZE",
    "DEFAULT_MAX_REPLY_SIZE",
    "BodyTooLarge",
    "ClientStream",
    "HTTPClientTransport",
    "HTTPServerTransport",
    "StreamMeta",
    "StreamReply",
    "StreamRequest",
    "StreamResponse",
    "gunzip",
    "gzip",
    "header_json",
    "parse_reply",
    "read_body",
    "stream_head",
    "stream_meta",
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


def _header_json(value: bytes) -> Any:
    """A header holding JSON, read as Node reads it (header bytes are latin-1 characters)."""
    return json_loads(value.decode("latin-1"))


@attrs.frozen
class StreamMeta:
    """What Node's ``'stream'`` event calls ``meta`` (reference §6.2, §6.6).

    ``info_headers`` is the ``_gr`` header's JSON (``[rid, key]`` from a stream client;
    ``None`` without the header); ``action`` is the ``_a`` header (``None`` if absent or
    empty); ``args`` the ``_ar`` header's JSON (``{}`` if absent or not JSON); ``is_stream``
    whether ``transfer-encoding`` is exactly ``chunked`` (Node's test); ``compress`` whether
    ``grc-compress`` says gzip. Over TLS, ``peer_certificate`` and ``peer_certificate_der``
    are the client certificate as in :class:`~grenache.peer.Request`.
    """

    info_headers: Any = None
    action: str | None = None
    args: Any = attrs.Factory(dict)
    is_stream: bool = False
    compress: bool = False
    peer_certificate: str | None = None
    peer_certificate_der: bytes | None = None

    @property
    def rid(self) -> Any:
        """``info_headers[0]`` (the stream's request id), or ``None``."""
        info = self.info_headers
        return info[0] if isinstance(info, list) and info else None

    @property
    def key(self) -> Any:
        """``info_headers[1]`` (the service name the client looked up), or ``None``."""
        info = self.info_headers
        return info[1] if isinstance(info, list) and len(info) > 1 else None


def stream_meta(
    headers: tuple[tuple[bytes, bytes], ...], certificate: tuple[str, bytes] | None = None
) -> StreamMeta:
    """Node's ``meta`` for a request with these headers; ``ValueError`` if ``_gr`` is not JSON."""
    meta, gr_ok = _stream_meta(headers, certificate)
    if not gr_ok:
        raise ValueError("the _gr header is not JSON")
    return meta


def _stream_meta(
    headers: tuple[tuple[bytes, bytes], ...], certificate: tuple[str, bytes] | None
) -> tuple[StreamMeta, bool]:
    """:func:`stream_meta`, and whether ``_gr`` (if any) was JSON (``info_headers`` is
    ``None`` when it was not)."""
    gr_ok = True
    info: Any = None
    action: str | None = None
    args: Any = {}
    compress = False
    encodings: list[bytes] = []
    seen_gr = seen_a = seen_ar = False
    for name, value in headers:
        if name == b"_gr" and not seen_gr:
            seen_gr = True
            try:
                info = _header_json(value)
            except ValueError:
                gr_ok = False
        elif name == b"_a" and not seen_a:
            seen_a = True
            action = value.decode("latin-1") or None
        elif name == b"_ar" and not seen_ar:
            seen_ar = True
            try:
                args = _header_json(value)
            except ValueError:
                args = {}
        elif name == b"grc-compress":
            compress = compress or b"gzip" in value
        elif name == b"transfer-encoding":
            encodings.append(value)
    meta = StreamMeta(
        info,
        action,
        args,
        b", ".join(encodings) == b"chunked",
        compress,
        certificate[0] if certificate is not None else None,
        certificate[1] if certificate is not None else None,
    )
    return meta, gr_ok


class StreamRequest(HTTPStreamRequest):
    """A request on the streaming path (:class:`HTTPServerTransport`'s ``stream_handler``).

    The head (``method``, ``path``, ``headers``, ``peer``) and :attr:`meta` (Node's
    ``meta``), with the raw body delivered as it arrives by
    :meth:`~grenache.httpserver.BodyStream.deliverBody` (an ``IProtocol`` whose transport is
    this request, an ``IPushProducer`` that pauses the socket). ``rid`` and ``key`` come from
    the ``_gr`` header.
    """

    def __init__(
        self,
        proto: Any,
        method: str,
        path: str,
        headers: tuple[tuple[bytes, bytes], ...],
        peer: Any,
        version: str,
    ) -> None:
        super().__init__(proto, method, path, headers, peer, version)
        certificate = proto.certificate() if isinstance(proto, _RPCServerProtocol) else None
        self.meta, gr_ok = _stream_meta(headers, certificate)
        self.gr_error = not gr_ok  # answered by the transport, the handler never sees it

    @property
    def rid(self) -> Any:
        """The request id from ``_gr`` (``meta.rid``)."""
        return self.meta.rid

    @property
    def key(self) -> Any:
        """The service name from ``_gr`` (``meta.key``)."""
        return self.meta.key


class StreamResponse(HTTPStreamResponse):
    """The response to a :class:`StreamRequest`: raw bytes as written (an ``IConsumer``).

    ``write`` / ``registerProducer`` / ``finish`` stream a raw body (status 200, chunked);
    :meth:`reply` answers as Node's convenience ``handler.reply`` does.
    """

    def reply(self, rid: Any, err: BaseException | str | None = None, result: Any = None) -> None:
        """Send one grenache reply, ``[rid, error, result]`` as JSON, and finish.

        Node's ``handler.reply(rid, err, result)`` on a ``'stream'`` event: status 200,
        uncompressed. ``err`` is an exception (its :func:`~grenache.peer.error_message` is
        sent) or a string sent as is (Node would send ``null`` for a string: it reads
        ``err.message``); ``None`` for success.
        """
        if err is None or err == "":
            message: str | None = None
        elif isinstance(err, str):
            message = err
        else:
            message = error_message(err)
        try:
            body = json_dumps([rid, message, result])
        except (TypeError, ValueError) as e:
            body = json_dumps([rid, error_message(e), None])
        self.respond(HTTPResponse(200, body))


StreamHandlerFn = Callable[[StreamRequest, StreamResponse], Any]
"""A stream handler: called with each streamed request and its response as soon as the
request's headers are in; may return a Deferred or a coroutine (a failure before anything was
sent is answered with status 500 and ``[rid, error, null]``; after, the connection drops)."""


class _RPCServerProtocol(HTTPServerProtocol):
    """The lean HTTP protocol, plus the client certificate on requests over TLS."""

    factory: _RPCServerFactory
    stream_request_class = StreamRequest
    stream_response_class = StreamResponse
    _certificate: tuple[str, bytes] | None = None
    _certificate_read = False

    def certificate(self) -> tuple[str, bytes] | None:
        """The client certificate (fingerprint, DER) over TLS, or ``None``."""
        if not self.factory.tls:
            return None
        if not self._certificate_read:
            self._certificate_read = True
            self._certificate = peer_certificate(self.transport)
        return self._certificate

    def requestReceived(self, method: bytes) -> HTTPRequest:
        request = super().requestReceived(method)
        if not self.factory.tls:
            return request
        return _TLSRequest(
            request.method,
            request.path,
            request.headers,
            request.body,
            request.peer,
            self.certificate(),
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


class _ServerTLSFactory(TLSMemoryBIOFactory):
    noisy = False


class HTTPServerTransport:
    """Serves Grenache RPC over HTTP(S) on the lean HTTP server (a ``ServerTransport``).

    ``tls`` is a :class:`~grenache.tls.ServerTLS` or any ``IOpenSSLContextFactory``.
    ``max_body_size`` limits request bodies (bytes, before and after gunzip);
    ``idle_timeout`` closes keep-alive connections idle that many seconds; ``interface``
    is the address to bind (all interfaces by default, as Node). :meth:`stop` closes open
    connections and aborts those still open ``stop_grace`` seconds later.

    Streaming (reference §6.6): with a ``stream_handler``, requests with
    ``transfer-encoding: chunked`` (Node's ``isStream``), or every request with
    ``disable_buffered`` (Node's option), go to it instead of the RPC handler, as a
    :class:`StreamRequest` and a :class:`StreamResponse`, without buffering;
    ``max_stream_size`` limits those bodies (no limit by default, as Node). Without a
    ``stream_handler``, chunked requests are read whole and served as RPC, as Node's
    buffered default does.
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
        stream_handler: StreamHandlerFn | None = None,
        disable_buffered: bool = False,
        max_stream_size: int | None = None,
    ) -> None:
        self.reactor = reactor
        self.stream_handler = stream_handler
        self.disable_buffered = disable_buffered
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
            stream_router=self._route_stream if stream_handler is not None else None,
            max_stream_size=max_stream_size,
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

    def _route_stream(self, request: HTTPStreamRequest) -> StreamHandler | None:
        """The stream handler for chunked requests (all with ``disable_buffered``)."""
        if not isinstance(request, StreamRequest):  # pragma: no cover - always one here
            return None
        if not (request.meta.is_stream or self.disable_buffered):
            return None
        if request.gr_error:
            return _answer_gr_error
        return self._run_stream  # type: ignore[return-value]

    def _run_stream(self, request: StreamRequest, response: StreamResponse) -> None:
        handler = self.stream_handler
        if handler is None:  # pragma: no cover - routed only with a handler
            return
        try:
            result = handler(request, response)
        except Exception:
            self._stream_failed(Failure(), request, response)
            return
        if isinstance(result, Coroutine):
            result = Deferred.fromCoroutine(result)
        elif not isinstance(result, Deferred) and inspect.isawaitable(result):
            result = Deferred.fromCoroutine(_maybe_await(result))
        if isinstance(result, Deferred):
            result.addErrback(self._stream_failed, request, response)

    def _stream_failed(
        self, failure: Failure, request: StreamRequest, response: StreamResponse
    ) -> None:
        log.debug("Stream handler failed: {error}", error=error_message(failure))
        if response.finished:
            return
        if response.started:
            response.abort()
            return
        try:
            body = json_dumps([request.rid, error_message(failure), None])
        except (TypeError, ValueError):
            body = json_dumps([None, error_message(failure), None])
        response.respond(HTTPResponse(500, body))

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
                info = _header_json(gr)
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
    if isinstance(value, Deferred) or inspect.isawaitable(value):
        return await value
    return value


def _answer_gr_error(request: HTTPStreamRequest, response: HTTPStreamResponse) -> None:
    """Node's answer to a ``_gr`` header that is not JSON (the body is discarded)."""
    response.respond(_GR_ERROR)


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
    """One request in flight: its bytes, Deferred and where it currently is."""

    __slots__ = ("compress", "conn", "data", "deadlines", "deferred", "done", "rid")

    def __init__(self, rid: str, data: bytes, compress: bool) -> None:
        self.rid = rid
        self.data = data
        self.compress = compress
        self.conn: _ClientProtocol | None = None
        self.deadlines: Deadlines[_Call] | None = None
        self.done = False
        self.deferred: Deferred[Any] = Deferred(self._cancel)

    def _cancel(self, d: Deferred[Any]) -> None:
        self._detach()  # the Deferred then fails with CancelledError

    def _settle(self) -> None:
        """Mark done (its deadline is then ignored) and forget the connection and bytes."""
        self.done = True
        self.conn = None
        self.data = b""
        deadlines = self.deadlines
        if deadlines is not None:
            self.deadlines = None
            deadlines.finished()

    def _detach(self) -> None:
        """Settle, and drop the connection the reply would have used."""
        conn = self.conn
        self._settle()
        if conn is not None and conn.call is self:
            conn.call = None
            conn.abort()

    def timed_out(self) -> None:
        if self.done:
            return
        self._detach()
        self.deferred.errback(errors.RequestTimeout())

    def fail(self, error: BaseException) -> None:
        if self.done:
            return
        self._settle()
        self.deferred.errback(error)

    def reply(self, status: int, body: bytes, limit: int | None) -> None:
        if self.done:
            return
        self._settle()
        try:
            result = parse_reply(status, body, compress=self.compress, rid=self.rid, limit=limit)
        except Exception as e:
            self.deferred.errback(e)
        else:
            self.deferred.callback(result)


class _StopParsing(Exception):
    """Raised in a parser callback to abandon the response."""


def _feed_response(parser: httptools.HttpResponseParser, data: bytes) -> BaseException | None:
    """Feed ``data`` to a response parser; the error to fail with if the response is bad.

    ``None`` when it parsed, or when a callback raised :class:`_StopParsing` (it has dealt
    with the response already).
    """
    try:
        parser.feed_data(data)
    except httptools.HttpParserUpgrade:
        return errors.RemoteError("ERR_REQUEST_GENERIC: unexpected protocol upgrade")
    except httptools.HttpParserError as e:
        if isinstance(e.__context__, _StopParsing):
            return None
        return errors.RemoteError(f"ERR_REQUEST_GENERIC: invalid HTTP response ({e})")
    return None


def _set_no_delay(transport: Any) -> None:
    """Turn Nagle off: requests are written whole, never held back (Node's agent does the same)."""
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is not None:
        try:
            set_no_delay(True)
        except OSError:
            pass


def _drop_connection(transport: Any) -> None:
    """Close at once, without flushing writes, where the transport can."""
    abort = getattr(transport, "abortConnection", None)
    if abort is not None:
        abort()
    else:
        transport.loseConnection()


def _tls_error(reason: Failure) -> errors.TLSHandshakeError:
    """The error for a connection that ended in a failed TLS handshake."""
    return errors.TLSHandshakeError(f"ERR_REQUEST_GENERIC: TLS: {reason.value}")


def _connect_error(dest: str, reason: Failure) -> BaseException:
    """The error for a connection to ``dest`` that could not be made."""
    if reason.check(SSL.Error):
        return _tls_error(reason)
    return errors.DestinationUnreachable(f"ERR_REQUEST_GENERIC: {dest}: {reason.getErrorMessage()}")


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
        _set_no_delay(self.transport)
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
        _drop_connection(self.transport)

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
        error = _feed_response(self.parser, data)
        if error is not None:
            self._fail(error)

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
            call.fail(_tls_error(reason))
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
        error = _connect_error(self.dest, reason)
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


# --- client: streams (reference §6.6) ----------------------------------------------------------


_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_BEYOND_LATIN1 = re.compile("[^\x00-\xff]")
_RESERVED = frozenset({b"transfer-encoding", b"content-length"})


def _escape_beyond_latin1(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def header_json(value: Any) -> bytes:
    """``JSON.stringify(value)`` as Node puts it in a header (latin-1 bytes).

    Node cannot send characters beyond latin-1 in a header (it throws); they are sent here as
    JSON ``\\u`` escapes, which every JSON parser reads back as the same string.
    """
    text = json_dumps(value).decode("utf-8")
    return _BEYOND_LATIN1.sub(_escape_beyond_latin1, text).encode("latin-1")


def stream_head(dest: str, rid: str, key: str, headers: Mapping[str, Any] | None = None) -> bytes:
    """The request head Node's ``peer.stream`` sends (reference §6.6).

    ``POST /`` with ``_gr: [rid, key]``, ``connection: close``, ``transfer-encoding:
    chunked``, then ``headers`` (string values as is, others as JSON; a name given again in
    any case replaces the earlier line in place, as Node's ``setHeader``), then ``Host``.
    Names must be HTTP tokens; ``transfer-encoding`` and ``content-length`` cannot be
    replaced (the body is chunked); values must be latin-1 without CR, LF or NUL.
    """
    lines: list[list[bytes]] = [
        [b"_gr", header_json([rid, key])],
        [b"connection", b"close"],
        [b"transfer-encoding", b"chunked"],
    ]
    host = True
    for name, value in (headers or {}).items():
        if not isinstance(name, str):
            raise TypeError(f"header names must be strings, not {name!r}")
        raw_name = name.encode("latin-1", "replace")
        if not _TOKEN.match(raw_name):
            raise ValueError(f"invalid header name {name!r}")
        lower = raw_name.lower()
        if lower in _RESERVED:
            raise ValueError(f"the {name} header of a stream cannot be replaced")
        if isinstance(value, str):
            try:
                raw_value = value.encode("latin-1")
            except UnicodeEncodeError:
                raise ValueError(f"header {name!r} holds characters beyond latin-1") from None
        else:
            raw_value = header_json(value)
        if b"\r" in raw_value or b"\n" in raw_value or b"\0" in raw_value:
            raise ValueError(f"header {name!r} holds CR, LF or NUL")
        if lower == b"host":
            host = False
        for line in lines:
            if line[0].lower() == lower:
                line[0], line[1] = raw_name, raw_value
                break
        else:
            lines.append([raw_name, raw_value])
    if host:
        lines.append([b"Host", dest.encode("latin-1")])
    parts = [b"POST / HTTP/1.1\r\n"]
    for raw_name, raw_value in lines:
        parts += (raw_name, b": ", raw_value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


class StreamReply(BodyStream):
    """The response to a :class:`ClientStream`: status, headers and the raw body.

    There is no grenache framing on a stream: the body is whatever the server's handler wrote
    (a Node ``handler.reply`` writes ``[rid, err, result]`` JSON; nothing here parses it), and
    a non-2xx status is not an error. ``headers`` keep their order with names lowercased. The
    body comes through :meth:`~grenache.httpserver.BodyStream.deliverBody` as it arrives
    (see :func:`~grenache.httpserver.read_body` to collect it).
    """

    def __init__(
        self, conn: _StreamConnection, status: int, headers: tuple[tuple[bytes, bytes], ...]
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
    """A streamed request in progress: Node's ``peer.stream`` duplex (reference §6.6).

    The request body is written here, an ``IConsumer`` (:class:`~grenache.httpserver.BodyWriter`):
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

    def __init__(self, conn: _StreamConnection, dest: str, rid: str, key: str) -> None:
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
class _StreamConnection(protocol.Protocol):
    """The connection of one stream: writes its request, parses its response."""

    def __init__(self, factory: _StreamConnectFactory) -> None:
        self.factory = factory
        self.owner = factory.owner
        self.seconds = factory.owner.seconds
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
        transport: Any = self.transport
        _set_no_delay(transport)
        self.factory.connected(self)
        transport.write(self.factory.head)
        self.activity()
        self.timer = self.owner.reactor.callLater(self.timeout, self.check_idle)
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
        self.received = True
        self.activity()
        if self.complete or self.closed:
            return
        error = _feed_response(self.parser, data)
        if error is not None:
            self.abort(error)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.closed = True
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        if self.reason is not None:
            error: BaseException = self.reason
        elif not self.received and reason.check(SSL.Error):
            error = _tls_error(reason)
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
        lower = name.lower()
        self.headers.append((lower, value))
        if lower == b"content-length" or lower == b"transfer-encoding":
            self.framed = True

    def on_headers_complete(self) -> None:
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
        if self.reply is not None:
            self.reply._feed(body)

    def on_message_complete(self) -> None:
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
        if self.reply is not None:
            return succeed(self.reply)
        if self.failure is not None:
            return fail(self.failure)
        d: Deferred[StreamReply] = Deferred(lambda _: self.abort(CancelledError()))
        self.waiting.append(d)
        return d

    def fail_waiting(self, failure: Failure) -> None:
        self.failure = failure
        waiting, self.waiting = self.waiting, []
        for d in waiting:
            if not d.called:
                d.errback(failure)

    def activity(self) -> None:
        self.last = self.seconds()

    def hold_changed(self) -> None:
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
        self.timer = None
        if self.closed:
            return
        idle = self.seconds() - self.last
        if idle >= self.timeout:
            self.abort(errors.RequestTimeout())
            return
        self.timer = self.owner.reactor.callLater(self.timeout - idle, self.check_idle)

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
        _drop_connection(self.transport)

    def close(self) -> None:
        if self.closed:
            return
        transport: Any = self.transport
        if self.reading_paused:
            self.reading_paused = False
            transport.resumeProducing()
        transport.loseConnection()


class _StreamConnectFactory(protocol.ClientFactory):
    """Makes the connection of one stream and reports how it went."""

    noisy = False

    def __init__(
        self,
        owner: HTTPClientTransport,
        dest: str,
        rid: str,
        key: str,
        head: bytes,
        timeout: float,
    ) -> None:
        self.owner = owner
        self.dest = dest
        self.rid = rid
        self.key = key
        self.head = head
        self.timeout = timeout
        self.tls = owner.tls is not None
        self.connector: Any = None
        self.conn: _StreamConnection | None = None
        self.opened: Deferred[ClientStream] = Deferred(self._cancel)

    def buildProtocol(self, addr: Any) -> _StreamConnection:
        return _StreamConnection(self)

    def connected(self, conn: _StreamConnection) -> None:
        self.conn = conn

    def ready(self, stream: ClientStream) -> None:
        if not self.opened.called:
            self.opened.callback(stream)

    def lost(self, conn: _StreamConnection, failure: Failure) -> None:
        if not self.opened.called:
            self.opened.errback(failure)
        self.owner.stream_done(self)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        if not self.opened.called:
            self.opened.errback(_connect_error(self.dest, reason))
        self.owner.stream_done(self)

    def stop(self, error: BaseException) -> None:
        conn = self.conn
        if conn is not None:
            conn.abort(error)
        elif self.connector is not None:
            if not self.opened.called:
                self.opened.errback(error)
            try:
                self.connector.stopConnecting()
            except Exception:
                self.owner.stream_done(self)

    def _cancel(self, d: Deferred[ClientStream]) -> None:
        self.stop(CancelledError())


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
        # One timer for every request's timeout, not a DelayedCall per request.
        self._deadlines: Deadlines[_Call] = Deadlines(
            reactor, _Call.timed_out, lambda call: call.done
        )
        self._drained: list[Deferred[None]] = []
        self._streams: set[_StreamConnectFactory] = set()

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
        call.deadlines = self._deadlines
        self._deadlines.add(call, request.timeout)
        pool.submit(call)
        return call.deferred

    def stream(
        self,
        dest: str,
        key: str,
        *,
        headers: Mapping[str, Any] | None = None,
        timeout: float = 60.0,
        rid: str | None = None,
    ) -> Deferred[ClientStream]:
        """Open a stream to ``dest`` (Node's ``peer.stream``, reference §6.6).

        Connects (a connection of its own, never pooled), sends the head (see
        :func:`stream_head`; ``headers`` are the extra headers, e.g. ``{"_a": "upload",
        "_ar": {"id": 1}}``) and fires with a :class:`ClientStream` to write the body to and
        read the response from. ``timeout`` is the idle timeout of the whole exchange (and
        bounds the connection attempt). Fails with
        :class:`~grenache.errors.DestinationUnreachable` (nothing was sent; including a failed
        TLS handshake, :class:`~grenache.errors.TLSHandshakeError`),
        :class:`~grenache.errors.RequestTimeout`, or
        :class:`~grenache.errors.TransportClosed` (stopped). Cancelling drops the attempt.
        """
        if self.stopped:
            return fail(errors.TransportClosed("ERR_TRANSPORT_CLOSE: transport stopped"))
        if not timeout > 0:
            return fail(ValueError("timeout must be a positive number of seconds"))
        try:
            host, port = _split_dest(dest)
        except ValueError as e:
            return fail(errors.DestinationUnreachable(f"ERR_REQUEST_GENERIC: {e}"))
        rid = new_rid() if rid is None else rid
        try:
            head = stream_head(dest, rid, key, headers)
        except (TypeError, ValueError) as e:
            return fail(e)
        factory = _StreamConnectFactory(self, dest, rid, key, head, timeout)
        wrapped: protocol.ClientFactory = factory
        if self.tls is not None:
            inner: Any = factory
            tls = TLSMemoryBIOFactory(self.tls.creator_for(host), True, inner, clock=self.reactor)
            tls.noisy = False
            wrapped = tls  # type: ignore[assignment]
        self._streams.add(factory)
        factory.connector = self.reactor.connectTCP(
            host, port, wrapped, timeout=min(timeout, self.connect_timeout)
        )
        return factory.opened

    def stream_done(self, factory: _StreamConnectFactory) -> None:
        """A stream's connection closed (or never opened)."""
        self._streams.discard(factory)
        self._check_drained()

    def pool_empty(self, pool: _Pool) -> None:
        """Forget a pool that has neither connections nor waiting requests."""
        if pool.connections or pool.attempts:
            return
        if self.pools.get(pool.dest) is pool:
            del self.pools[pool.dest]
        self._check_drained()

    def _check_drained(self) -> None:
        if self.stopped and not self.pools and not self._streams:
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
        self._deadlines.clear()
        for pool in list(self.pools.values()):
            pool.stop(error)
        for pool in list(self.pools.values()):
            self.pool_empty(pool)
        for factory in list(self._streams):
            factory.stop(error)
        if not self.pools and not self._streams:
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
