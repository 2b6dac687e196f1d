"""The client side of RPC over HTTP: :class:`HTTPClientTransport`.

Requests go through the buffered client of :mod:`grenache.http.client` (pooled keep-alive
connections); streams through the ``Agent``-based client of :mod:`grenache.http.stream_client`.
This module adds the Grenache framing: the request bytes, the reply's meaning, the stream's
``_gr`` head (docs/protocol.rst, *RPC over HTTP* and *HTTP streaming*).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.internet.defer import Deferred, fail

from grenache import errors
from grenache.codec import json_dumps
from grenache.endpoints import split_host_port
from grenache.http.client import ClientCall, HTTPClient, HTTPClientFactory
from grenache.http.stream_client import ClientStream, StreamConnectFactory
from grenache.peer import OutgoingRequest, new_rid
from grenache.tls import ClientTLS
from grenache.transports.http.framing import (
    DEFAULT_MAX_REPLY_SIZE,
    gzip,
    parse_reply,
    stream_head,
)

__all__ = ["DEFAULT_CLIENT_IDLE_TIMEOUT", "HTTPClientTransport", "RPCCall"]

DEFAULT_CLIENT_IDLE_TIMEOUT = 4.0
"""Seconds an idle pooled connection is kept; below Node's server keep-alive timeout (5 s)."""

_HEAD = b"POST / HTTP/1.1\r\nHost: %s\r\ngrc-compress: %s\r\n%sContent-Length: %d\r\n\r\n"
_TEXT = b"Content-Type: text/plain;charset=UTF-8\r\n"


class RPCCall(ClientCall):
    """One RPC in flight: its reply is ``[rid, err, result]`` (:func:`parse_reply`)."""

    __slots__ = ("compress", "rid")

    def __init__(self, rid: str, data: bytes, compress: bool) -> None:
        super().__init__(data)
        self.rid = rid
        self.compress = compress

    def parse(self, status: int, body: bytes, limit: int | None) -> Any:
        return parse_reply(status, body, compress=self.compress, rid=self.rid, limit=limit)


class HTTPClientTransport(HTTPClient):
    """Sends Grenache RPC requests over HTTP(S) (a ``ClientTransport``).

    ``tls`` (a :class:`~grenache.tls.ClientTLS`) switches to HTTPS. Each destination
    (``host:port``: a host name, an IPv4 literal or ``[ipv6]:port``) gets a pool of at most
    ``pool_size_per_dest`` persistent connections; requests beyond that wait for a free
    connection (their timeout runs meanwhile). Idle connections are closed after
    ``idle_timeout`` seconds. ``max_reply_size`` limits reply bodies (before and after
    gunzip). ``factory_class`` is the factory of each pooled connection (see
    :mod:`grenache.http.client`), :attr:`stream_factory_class` that of each stream's
    (:mod:`grenache.http.stream_client`).
    """

    stream_factory_class: type[StreamConnectFactory] = StreamConnectFactory
    """The factory of each stream's connection (its ``protocol`` is the connection's class)."""

    def __init__(
        self,
        reactor: Any,
        *,
        tls: ClientTLS | None = None,
        pool_size_per_dest: int = 16,
        max_reply_size: int | None = DEFAULT_MAX_REPLY_SIZE,
        idle_timeout: float = DEFAULT_CLIENT_IDLE_TIMEOUT,
        connect_timeout: float = 30.0,
        factory_class: type[HTTPClientFactory] | None = None,
    ) -> None:
        super().__init__(
            reactor,
            tls=tls,
            pool_size_per_dest=pool_size_per_dest,
            max_reply_size=max_reply_size,
            idle_timeout=idle_timeout,
            connect_timeout=connect_timeout,
            factory_class=factory_class,
        )
        self._streams: set[StreamConnectFactory] = set()

    def request(self, dest: str, request: OutgoingRequest) -> Deferred[Any]:
        """POST ``request`` to ``dest`` and fire with the reply's result.

        Fails with a :mod:`grenache.errors` exception (see :mod:`grenache.http.client`), or
        :class:`~grenache.errors.RemoteError` with the remote handler's error string.
        """
        try:
            body = json_dumps([request.rid, request.key, request.payload])
        except (TypeError, ValueError) as e:
            return fail(e)
        if request.compress:
            body = gzip(body)
            head = _HEAD % (dest.encode("latin-1"), b"gzip", b"", len(body))
        else:
            head = _HEAD % (dest.encode("latin-1"), b"none", _TEXT, len(body))
        return self.submit(
            dest, RPCCall(request.rid, head + body, request.compress), request.timeout
        )

    def stream(
        self,
        dest: str,
        key: str,
        *,
        headers: Mapping[str, Any] | None = None,
        timeout: float = 60.0,
        rid: str | None = None,
    ) -> Deferred[ClientStream]:
        """Open a stream to ``dest`` (Node's ``peer.stream``, docs/protocol.rst, *HTTP streaming*).

        Connects (a connection of its own, never pooled), sends the head (see
        :func:`~grenache.transports.http.framing.stream_head`; ``headers`` are the extra
        headers, e.g. ``{"_a": "upload", "_ar": {"id": 1}}``) and fires with a
        :class:`~grenache.http.stream_client.ClientStream` to write the body to and read the
        response from. ``timeout`` is the idle timeout of the whole exchange (and bounds the
        connection attempt). Fails with :class:`~grenache.errors.DestinationUnreachable`
        (nothing was sent; including a failed TLS handshake,
        :class:`~grenache.errors.TLSHandshakeError`), :class:`~grenache.errors.RequestTimeout`,
        or :class:`~grenache.errors.TransportClosed` (stopped). Cancelling drops the attempt.
        """
        if self.stopped:
            return fail(errors.TransportClosed("ERR_TRANSPORT_CLOSE: transport stopped"))
        if not timeout > 0:
            return fail(ValueError("timeout must be a positive number of seconds"))
        try:
            host, port = split_host_port(dest)
        except ValueError as e:
            return fail(errors.DestinationUnreachable(f"ERR_REQUEST_GENERIC: {e}"))
        rid = new_rid() if rid is None else rid
        try:
            head = stream_head(dest, rid, key, headers)
        except (TypeError, ValueError) as e:
            return fail(e)
        factory = self.stream_factory_class(
            self.reactor,
            dest,
            rid,
            key,
            head,
            timeout,
            tls=self.tls is not None,
            on_done=self._stream_done,
        )
        self._streams.add(factory)
        return factory.connect(
            self.endpoint(host, port, timeout=min(timeout, self.connect_timeout))
        )

    def _stream_done(self, factory: StreamConnectFactory) -> None:
        """A stream's connection closed (or never opened)."""
        self._streams.discard(factory)
        self._check_drained()

    def busy(self) -> bool:
        return bool(self.pools) or bool(self._streams)

    def stop_others(self, error: BaseException) -> None:
        for factory in list(self._streams):
            factory.stop(error)
