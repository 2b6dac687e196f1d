"""The server side of RPC over HTTP: :class:`HTTPServerTransport` and its protocol and factory.

See :mod:`grenache.transports.http` for the behaviour. Override points: subclass
:class:`RPCServerProtocol` (the hooks of :class:`~grenache.http.server.HTTPServerProtocol`:
``accept_client``, ``before_dispatch``, ``prepare_response``, ``socket_closed``), set it
as the ``protocol`` of a :class:`RPCServerFactory` subclass, and give that factory to the
transport as ``factory_class`` (a class attribute of a transport subclass, or the
``factory_class=`` keyword). examples/custom_http_protocol.py does this.
"""

from __future__ import annotations

import inspect
import zlib
from collections.abc import Callable, Coroutine
from typing import Any

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IListeningPort, ISSLTransport
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from grenache import endpoints, errors
from grenache.codec import json_dumps, json_loads
from grenache.endpoints import ListenSpec
from grenache.http.messages import HTTPRequest, HTTPResponse
from grenache.http.server import (
    DEFAULT_BODY_GRACE,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_MIN_BODY_RATE,
    DEFAULT_OUTPUT_TIMEOUT,
    HTTPServerFactory,
    HTTPServerProtocol,
)
from grenache.http.server_stream import (
    HTTPStreamRequest,
    HTTPStreamResponse,
    StreamHandler,
)
from grenache.peer import Request, error_message
from grenache.tls import ServerTLS, peer_certificate
from grenache.transports.http.framing import (
    DEFAULT_MAX_BODY_SIZE,
    GR_ERROR,
    GZIP_META,
    META_HEADERS,
    PARSE_ERROR,
    PLAIN_META,
    TOO_LARGE,
    BodyTooLarge,
    gunzip,
    header_json_value,
    node_meta,
    reply_failure,
    reply_result,
    rpc_reply,
    stream_meta_checked,
    truthy,
)

__all__ = [
    "DEFAULT_SERVER_IDLE_TIMEOUT",
    "TIMED_OUT",
    "HTTPServerTransport",
    "RPCServerFactory",
    "RPCServerProtocol",
    "RequestErrorHook",
    "StreamHandlerFn",
    "StreamRequest",
    "StreamResponse",
    "TLSRequest",
]

log = Logger()

DEFAULT_SERVER_IDLE_TIMEOUT = 30.0
"""Seconds an idle keep-alive connection stays open on the server. Longer than the clients'
own idle time (Node's agent: 5 s; this client: 4 s), so clients close first and never send
on a connection the server is closing."""


TIMED_OUT = HTTPResponse(408, b'[null,"ERR_REQUEST_TIMEOUT",null]')
"""The answer to a request whose header section or body arrives too slowly."""

RequestErrorHook = Callable[[errors.RequestParseError, HTTPRequest], Any]
"""``on_request_error(error, request)``: ``None`` (send the default 400), an
:class:`~grenache.http.messages.HTTPResponse` to send instead, or a Deferred/coroutine of
either (see :class:`HTTPServerTransport`)."""


@attrs.frozen
class TLSRequest(HTTPRequest):
    """An HTTP request that came over TLS: adds the client certificate, if any."""

    certificate: tuple[str, bytes] | None = None


class StreamRequest(HTTPStreamRequest):
    """A request on the streaming path (:class:`HTTPServerTransport`'s ``stream_handler``).

    The head (``method``, ``path``, ``headers``, ``peer``) and :attr:`meta` (Node's
    ``meta``), with the raw body delivered as it arrives by
    :meth:`~grenache.http.streams.BodyStream.deliverBody` (an ``IProtocol`` whose transport is
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
        certificate = proto.certificate() if isinstance(proto, RPCServerProtocol) else None
        self.meta, gr_ok = stream_meta_checked(headers, certificate)
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


class RPCServerProtocol(HTTPServerProtocol):
    """The lean HTTP protocol, plus the client certificate on requests over TLS.

    Over TLS (the transport's ``tls`` option, or a TLS endpoint such as ``"ssl:..."``),
    buffered requests are :class:`TLSRequest` and stream requests carry the certificate in
    their ``meta``. The override points are :class:`~grenache.http.server.HTTPServerProtocol`'s.
    """

    factory: RPCServerFactory
    stream_request_class = StreamRequest
    stream_response_class = StreamResponse
    _certificate: tuple[str, bytes] | None = None
    _certificate_read = False
    _tls = False

    def connectionMade(self) -> None:
        """Note whether the connection is TLS, then set up as the HTTP protocol does."""
        self._tls = self.factory.tls or ISSLTransport.providedBy(self.transport)
        super().connectionMade()

    def certificate(self) -> tuple[str, bytes] | None:
        """The client certificate (fingerprint, DER) over TLS, or ``None``."""
        if not self._tls:
            return None
        if not self._certificate_read:
            self._certificate_read = True
            self._certificate = peer_certificate(self.transport)
        return self._certificate

    def requestReceived(self, method: bytes) -> HTTPRequest:
        request = super().requestReceived(method)
        if not self._tls:
            return request
        return TLSRequest(
            request.method,
            request.path,
            request.headers,
            request.body,
            request.peer,
            self.certificate(),
        )


class RPCServerFactory(HTTPServerFactory):
    """Builds :attr:`protocol` (:class:`RPCServerProtocol`) connections for
    :class:`HTTPServerTransport`, and tells when the last connection has closed.

    The transport builds it as ``factory_class(transport.handle, reactor, **limits)`` (the
    keywords of :class:`~grenache.http.server.HTTPServerFactory`); ``tls`` is set when the
    transport wraps it in TLS itself.
    """

    protocol: type[HTTPServerProtocol] = RPCServerProtocol
    tls = False
    noisy = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._drained: list[Deferred[None]] = []

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

    Streaming (docs/protocol.rst, *HTTP streaming*): with a ``stream_handler``, requests with
    ``transfer-encoding: chunked`` (Node's ``isStream``), or every request with
    ``disable_buffered`` (Node's option), go to it instead of the RPC handler, as a
    :class:`StreamRequest` and a :class:`StreamResponse`, without buffering;
    ``max_stream_size`` limits those bodies (no limit by default, as Node). Without a
    ``stream_handler``, chunked requests are read whole and served as RPC, as Node's
    buffered default does.

    :meth:`listen` takes a port number, an endpoint description (``"tcp6:0"``,
    ``"tcp:0:interface=127.0.0.1"``, ``"ssl:8443:privateKey=key.pem:certKey=cert.pem"``) or an
    ``IStreamServerEndpoint`` (:mod:`grenache.endpoints`); ``interface`` applies to a port
    number only. ``tls`` wraps whatever is listened on: do not combine it with an ``ssl:``
    endpoint (a client certificate is read from either).

    :attr:`factory_class` (or the ``factory_class=`` keyword) is the factory the transport
    builds, an :class:`RPCServerFactory` subclass whose ``protocol`` may be a subclass of
    :class:`RPCServerProtocol` (see examples/custom_http_protocol.py).

    Handlers get :class:`~grenache.peer.Request` with ``meta`` as Node's handlers get it
    (:func:`~grenache.transports.http.framing.node_meta`: ``isStream``, ``compress``,
    ``action``, ``args``, and ``infoHeaders`` when the ``_gr`` header is there), and may
    return a :class:`~grenache.peer.Reply` to send an error and a result together.

    ``on_request_error`` is Node's ``'request-error'`` event: called as
    ``on_request_error(error, request)`` for a body that is not a JSON array, with a
    :class:`~grenache.errors.RequestParseError` (its ``__cause__`` the decoder's error, if
    any) and the :class:`~grenache.http.messages.HTTPRequest` (raw body, headers, peer). It
    may observe (return ``None``: the default ``400 [null,"ERR_REQUEST_PARSE",null]`` is
    sent) or answer (return an :class:`~grenache.http.messages.HTTPResponse`, or a Deferred
    or coroutine of one or of ``None``). If it raises, the failure is logged and the default
    is sent. Every request still gets an answer: Node's silence is not an option here.

    Limits against one hostile client (:class:`~grenache.http.server.HTTPServerFactory`
    enforces them): ``max_pipeline`` responses outstanding before reading pauses;
    ``header_timeout`` seconds for a header section, ``min_body_rate`` bytes a second for a
    body after ``body_grace`` seconds (both answered ``408 [null,"ERR_REQUEST_TIMEOUT",null]``
    and closed); ``output_timeout`` seconds for a client that reads nothing while its send
    buffer is full (dropped). ``None`` disables a deadline.
    """

    factory_class: type[RPCServerFactory] = RPCServerFactory
    """The factory class; its ``protocol`` is the class of each connection."""

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
        factory_class: type[RPCServerFactory] | None = None,
        on_request_error: RequestErrorHook | None = None,
        max_pipeline: int = 64,
        header_timeout: float | None = DEFAULT_HEADER_TIMEOUT,
        min_body_rate: float | None = DEFAULT_MIN_BODY_RATE,
        body_grace: float = DEFAULT_BODY_GRACE,
        output_timeout: float | None = DEFAULT_OUTPUT_TIMEOUT,
    ) -> None:
        if factory_class is not None:
            self.factory_class = factory_class
        self.reactor = reactor
        self.stream_handler = stream_handler
        self.disable_buffered = disable_buffered
        self.stop_grace = stop_grace
        self.tls = tls
        self.max_body_size = max_body_size
        self.idle_timeout = idle_timeout
        self.interface = interface
        self.on_request_error = on_request_error
        self.factory = self.factory_class(
            self.handle,
            reactor,
            max_body_size=max_body_size,
            max_header_size=max_header_size,
            idle_timeout=idle_timeout,
            too_large=TOO_LARGE,
            stream_router=self._route_stream if stream_handler is not None else None,
            max_stream_size=max_stream_size,
            max_pipeline=max_pipeline,
            header_timeout=header_timeout,
            min_body_rate=min_body_rate,
            body_grace=body_grace,
            output_timeout=output_timeout,
            timed_out=TIMED_OUT,
        )
        self.factory.tls = tls is not None
        self._serve: Callable[[Request], Deferred[Any]] | None = None
        self._port: IListeningPort | None = None
        self._listening = False

    def protocol_factory(self) -> Any:
        """The factory to listen with: the HTTP factory, wrapped in TLS when configured."""
        if self.tls is None:
            return self.factory
        context = self.tls.context_factory() if isinstance(self.tls, ServerTLS) else self.tls
        http_factory: Any = self.factory
        return _ServerTLSFactory(context, False, http_factory, clock=self.reactor)

    def listen(self, where: ListenSpec, serve: Callable[[Request], Deferred[Any]]) -> Deferred[int]:
        """Listen on ``where`` and fire with the bound TCP port (0 for a UNIX socket).

        ``where`` is a port number (0: any), an endpoint description or an endpoint (see the
        class docstring). A port that is taken fails with ``CannotListenError``, a malformed
        description with ``ValueError``.
        """
        if self._listening:
            return fail(RuntimeError("HTTPServerTransport is already listening"))
        self._listening = True
        self._serve = serve

        def listening(port: IListeningPort) -> int:
            self._port = port
            return endpoints.bound_port(port)

        def failed(failure: Failure) -> Failure:
            self._listening = False
            return failure

        d = endpoints.listen(self.reactor, where, self.protocol_factory(), interface=self.interface)
        return d.addCallbacks(listening, failed)

    def stop(self) -> Deferred[None]:
        """Stop listening, close open connections; fires when both are done.

        Connections still open after ``stop_grace`` seconds (a TLS peer that never answers
        the close) are aborted.
        """
        port: Any = self._port
        self._port = None
        self._listening = False
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
        extra = False  # a header that changes meta (_a, _ar, transfer-encoding)
        for name, value in request.headers:
            if name == b"grc-compress":
                compress = b"gzip" in value
            elif name == b"_gr":
                gr = value
            elif name in META_HEADERS:
                extra = True
        info: Any = None
        if gr is not None:
            try:
                info = header_json_value(gr)
            except ValueError:
                return GR_ERROR
        body = request.body
        if compress:
            try:
                body = gunzip(body, self.max_body_size)
            except BodyTooLarge:
                return TOO_LARGE
            except (zlib.error, ValueError):
                pass  # Node keeps the raw bytes when gunzip fails
        try:
            data = json_loads(body)
        except (ValueError, RecursionError) as e:
            return self._request_error(request, e)
        if not isinstance(data, list):
            return self._request_error(request, None)
        n = len(data)
        rid = data[0] if n > 0 else None
        key = data[1] if n > 1 else None
        payload = data[2] if n > 2 else None
        if isinstance(info, list):
            if info and truthy(info[0]):
                rid = info[0]
            if len(info) > 1 and truthy(info[1]):
                key = info[1]
        if gr is None and not extra:
            meta = GZIP_META if compress else PLAIN_META
        else:
            meta = node_meta(request.headers)
        cert = getattr(request, "certificate", None)
        rpc = (
            Request(rid, key, payload, None, None, meta)  # type: ignore[arg-type]
            if cert is None
            else Request(rid, key, payload, cert[0], cert[1], meta)  # type: ignore[arg-type]
        )
        serve = self._serve
        if serve is None:
            return rpc_reply(rid, "ERR_SERVER_NOT_READY", None, compress)
        try:
            d = serve(rpc)
        except Exception as e:
            return rpc_reply(rid, error_message(e), None, compress)
        d.addCallbacks(
            reply_result, reply_failure, callbackArgs=(rid, compress), errbackArgs=(rid, compress)
        )
        # Answer synchronously when the handler did (the common case): no Deferred round trip.
        if d.called and not d.paused:
            result = d.result
            if isinstance(result, HTTPResponse):
                return result
        return d

    def _request_error(
        self, request: HTTPRequest, cause: BaseException | None
    ) -> HTTPResponse | Deferred[HTTPResponse]:
        """Answer a body that is not a JSON array: ``on_request_error``'s answer, or 400."""
        hook = self.on_request_error
        if hook is None:
            return PARSE_ERROR
        error = errors.RequestParseError(
            "ERR_REQUEST_PARSE: "
            + ("body is not a JSON array" if cause is None else "body is not JSON")
        )
        error.__cause__ = cause
        try:
            answer = hook(error, request)
        except Exception:
            log.failure("on_request_error failed")
            return PARSE_ERROR
        if isinstance(answer, Coroutine):
            answer = Deferred.fromCoroutine(answer)
        if isinstance(answer, Deferred):
            return answer.addCallbacks(_hook_answer, _hook_failed)
        return _hook_answer(answer)


def _hook_answer(answer: Any) -> HTTPResponse:
    """``on_request_error``'s answer: ``None`` is the default 400, else an HTTPResponse."""
    if answer is None:
        return PARSE_ERROR
    if isinstance(answer, HTTPResponse):
        return answer
    log.error("on_request_error returned {answer!r}, not an HTTPResponse", answer=answer)
    return PARSE_ERROR


def _hook_failed(failure: Failure) -> HTTPResponse:
    log.failure("on_request_error failed", failure)
    return PARSE_ERROR


def _answer_gr_error(request: HTTPStreamRequest, response: HTTPStreamResponse) -> None:
    """Node's answer to a ``_gr`` header that is not JSON (the body is discarded)."""
    response.respond(GR_ERROR)


async def _maybe_await(value: Any) -> Any:
    if isinstance(value, Deferred) or inspect.isawaitable(value):
        return await value
    return value
