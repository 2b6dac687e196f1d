"""The client of a grape's HTTP API (docs/protocol.rst, *Grape HTTP API*): ``POST
{grape}/{type}`` with ``{"rid":"<uuid4>","data":...}``, as the Node link sends it, through
Twisted's :class:`~twisted.web.client.Agent` and a persistent connection pool. Host names and
IPv6 literals (``http://[::1]:30001``) work (treq would refuse the latter: it IDNA-encodes
every host)."""

from __future__ import annotations

import uuid
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.error import ConnectError, ConnectionClosed, DNSLookupError
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    PartialDownloadError,
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseFailed,
    readBody,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer
from zope.interface import implementer

from grenache.codec import json_dumps, json_loads
from grenache.errors import GrapeReplyError, GrapeUnreachable, GrapeWrongAPI
from grenache.link.client import other_api_url

__all__ = ["HTTPGrapeClient", "http_result"]

#: Idle pooled connections are closed after this many seconds, before a Node grape's 5 s
#: keep-alive closes them under a request (a POST on a connection the server is closing
#: fails, and Twisted does not retry non-idempotent requests by itself).
POOL_IDLE_TIMEOUT = 4
POOL_MAX_PER_HOST = 8

_UNREACHABLE = (
    ConnectError,
    DNSLookupError,
    ConnectionClosed,
    ResponseFailed,
    RequestTransmissionFailed,
    RequestNotSent,
)

#: Statuses a WebSocket server answers a plain POST with: 405 (autobahn, this project's grape
#: WebSocket API) and 426 Upgrade Required (Node's ``ws``). No grape HTTP API answers them.
_WEBSOCKET_STATUSES = (405, 426)


def reason_of(failure: Failure) -> str:
    """A short text for a transport failure, with the reasons Twisted's web client wraps."""
    error = failure.value
    reasons = getattr(error, "reasons", None)
    if isinstance(error, (ResponseFailed, RequestTransmissionFailed)) and reasons:
        return "; ".join(r.getErrorMessage() for r in reasons)
    return failure.getErrorMessage() or type(error).__name__


def http_result(status: int, raw: bytes) -> Any:
    """Node's rules (docs/protocol.rst, *Link*): a body is JSON if it parses, else text;
    a non-2xx status makes it an error."""
    result: Any
    try:
        result = json_loads(raw) if raw else ""
    except (ValueError, RecursionError):
        result = raw.decode("utf-8", "replace")
    if not 200 <= status < 300:
        message = result if isinstance(result, str) else raw.decode("utf-8", "replace")
        raise GrapeReplyError(message, status)
    return result


@implementer(IBodyProducer)
class BytesBody:
    """A request body already in memory, written at once (``FileBodyProducer`` would need a
    cooperator, the global reactor's by default)."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.length = len(body)

    def startProducing(self, consumer: Any) -> Deferred[None]:
        """Write the whole body to ``consumer`` at once; the returned Deferred has already fired."""
        consumer.write(self.body)
        return succeed(None)

    def pauseProducing(self) -> None:
        """Nothing to pause: the body was written whole by :meth:`startProducing`."""
        pass

    def resumeProducing(self) -> None:
        """Nothing to resume: the body was written whole by :meth:`startProducing`."""
        pass

    def stopProducing(self) -> None:
        """Nothing to stop: the body was written whole by :meth:`startProducing`."""
        pass


def _partial_body(failure: Failure) -> bytes:
    """The body of a response that had no length and ended with its connection."""
    failure.trap(PartialDownloadError)
    error: Any = failure.value
    return error.response  # type: ignore[no-any-return]


class HTTPGrapeClient:
    """A :class:`~grenache.link.client.GrapeClient` for ``http://`` and ``https://`` URLs.

    ``agent`` replaces the :class:`~twisted.web.iweb.IAgent` that sends the requests (e.g.
    ``treq.testing.RequestTraversalAgent``). Without it the client owns an ``Agent`` with a
    persistent connection pool, closed by :meth:`close`.
    """

    _HEADERS = Headers({b"Content-Type": [b"application/json"]})

    def __init__(self, url: str, reactor: Any, *, agent: IAgent | None = None) -> None:
        self.url = url.rstrip("/")
        self.pool: Any = None
        self.agent: Any = agent
        if agent is None:
            self.pool = HTTPConnectionPool(reactor, persistent=True)
            self.pool.maxPersistentPerHost = POOL_MAX_PER_HOST
            self.pool.cachedConnectionTimeout = POOL_IDLE_TIMEOUT
            self.agent = Agent(reactor, pool=self.pool)

    def request(self, type_: str, payload: Any) -> Deferred[Any]:
        """POST the request; fires with the decoded 2xx result (see :class:`GrapeClient
        <grenache.link.client.GrapeClient>` for the failures)."""
        url = f"{self.url}/{type_}"
        body = json_dumps({"rid": str(uuid.uuid4()), "data": payload})
        d = maybeDeferred(
            self.agent.request, b"POST", url.encode("ascii"), self._HEADERS, BytesBody(body)
        )
        return d.addCallback(self._read).addErrback(self._unreachable, url)

    def _read(self, response: Any) -> Deferred[Any]:
        def judge(raw: bytes) -> Any:
            if response.code in _WEBSOCKET_STATUSES and not raw:
                raise GrapeWrongAPI(
                    f"{GrapeWrongAPI.wire}: {self.url} is the grape's WebSocket API (it answered"
                    f" HTTP {response.code} to a POST); use {other_api_url(self.url)}"
                )
            return http_result(response.code, raw)

        d: Deferred[bytes] = readBody(response)
        return d.addErrback(_partial_body).addCallback(judge)

    def _unreachable(self, failure: Failure, url: str) -> Failure:
        if failure.check(*_UNREACHABLE):
            raise GrapeUnreachable(f"{GrapeUnreachable.wire}: POST {url}: {reason_of(failure)}")
        return failure

    def close(self) -> Deferred[None]:
        """Close the pooled connections (if the client owns its pool)."""
        pool, self.pool = self.pool, None
        if pool is None:
            return succeed(None)
        return pool.closeCachedConnections()
