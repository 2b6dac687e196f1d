"""In-memory grapes: a real DHT node and the real grape HTTP API, reached by the real
:class:`~grenache.link.Link` through an in-memory ``IAgent``.

A :class:`MemoryGrape` is a :class:`~grenache.dht.node.DHTNode` on the network's in-memory
UDP, answering the grape API through :class:`~grenache.grape.api_http.GrapeHTTPAPI` and
:func:`~grenache.grape.operations.make_dispatch`: the same code a ``twistd grape`` runs. A
link built by :meth:`MemoryNetwork.link <grenache.testing.MemoryNetwork.link>` is a plain
:class:`~grenache.link.Link` whose ``http_agent`` is :class:`MemoryGrapeAgent`, so its
retries, cache, coalescing, timeouts and announcing loops are the real ones, on the Clock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer
from zope.interface import implementer

from grenache.dht.krpc import Address
from grenache.dht.node import DHTConfig, DHTNode
from grenache.grape.api_http import GrapeHTTPAPI
from grenache.grape.operations import make_dispatch
from grenache.http.messages import HTTPRequest, HTTPResponse

if TYPE_CHECKING:
    from grenache.testing.network import MemoryNetwork

__all__ = ["MemoryGrape", "MemoryGrapeAgent", "MemoryResponse"]


class MemoryGrape:
    """One grape on a :class:`~grenache.testing.MemoryNetwork` (made by its
    :meth:`~grenache.testing.MemoryNetwork.grape`).

    ``url`` is the HTTP API's URL (``http://127.0.0.1:30001``) and ``address`` its
    ``host:port``; ``dht_address`` is the DHT's UDP ``(host, port)``, what other grapes
    bootstrap from. ``node`` is the running :class:`~grenache.dht.node.DHTNode` (a new one
    after each :meth:`start`, as a restarted process starts empty). ``requests`` records
    every API operation answered, ``(operation, data)``.
    """

    def __init__(
        self,
        network: MemoryNetwork,
        *,
        host: str,
        dht_port: int,
        api_port: int,
        config: DHTConfig,
        node_id: bytes | None = None,
    ) -> None:
        self.network = network
        self.host = host
        self.dht_port = dht_port
        self.api_port = api_port
        self.config = config
        self.node_id = node_id
        self.node: DHTNode | None = None
        self.api: GrapeHTTPAPI | None = None
        self.requests: list[tuple[str, Any]] = []

    @property
    def address(self) -> str:
        """The API's ``host:port``."""
        return self.network.address(self.api_port)

    @property
    def url(self) -> str:
        """The API's URL, what :class:`~grenache.link.Link` is given."""
        return f"http://{self.address}"

    @property
    def dht_address(self) -> Address:
        """The DHT's UDP ``(host, port)``."""
        return (self.host, self.dht_port)

    @property
    def running(self) -> bool:
        """Whether the grape is up (its API answers, its DHT node takes part)."""
        return self.node is not None

    def start(self) -> Deferred[None]:
        """Start (again): a fresh DHT node on the grape's UDP port, bootstrapped from the
        configured grapes; the API answers from now on. Fires once the first bootstrap walk
        ended (deliver datagrams with :meth:`MemoryNetwork.settle
        <grenache.testing.MemoryNetwork.settle>`)."""
        if self.node is not None:
            return succeed(None)
        clock: Any = self.network.clock
        node = DHTNode(self.config, clock, node_id=self.node_id)
        self.node_id = node.node_id
        self.network.udp.attach(node.krpc, self.host, self.dht_port)
        self.node = node
        self.api = GrapeHTTPAPI(self._dispatch(make_dispatch(node)))
        return node.start()

    def stop(self) -> None:
        """The grape goes down: its API refuses connections (a link fails with
        :class:`~grenache.errors.GrapeUnreachable`), its DHT node stops and vanishes from the
        network, and everything it stored is lost."""
        node, self.node, self.api = self.node, None, None
        if node is None:
            return
        node.stop()
        port: Any = node.krpc.transport
        if port is not None:
            port.stopListening()

    def _dispatch(self, dispatch: Any) -> Any:
        def recorded(operation: str, data: Any) -> Any:
            self.requests.append((operation, data))
            return dispatch(operation, data)

        return recorded

    def answer(self, request: HTTPRequest) -> HTTPResponse | Deferred[HTTPResponse]:
        """Answer one API request as the grape's HTTP API does (ConnectionRefusedError when
        the grape is down)."""
        if self.api is None:
            raise ConnectionRefusedError(self.address)
        return self.api(request)


@attrs.define
class MemoryResponse:
    """The part of :class:`~twisted.web.iweb.IResponse` the link reads: status and body."""

    code: int
    body: bytes
    phrase: bytes = b""
    version: tuple[bytes, int, int] = (b"HTTP", 1, 1)
    headers: Headers = attrs.Factory(Headers)
    request: Any = None
    previousResponse: Any = None

    @property
    def length(self) -> int:
        """The body's length in bytes, as ``IResponse.length``."""
        return len(self.body)

    def deliverBody(self, protocol: Any) -> None:
        """Write the whole body to ``protocol``, then end it with ``ResponseDone``."""
        if self.body:
            protocol.dataReceived(self.body)
        protocol.connectionLost(Failure(ResponseDone()))

    def setPreviousResponse(self, response: Any) -> None:
        """Remember the response this one follows (a redirect's), as ``IResponse`` asks."""
        self.previousResponse = response


class _Collect:
    """A consumer that keeps what a body producer writes."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.chunks.append(data)


@implementer(IAgent)
class MemoryGrapeAgent:
    """An ``IAgent`` that carries the link's HTTP requests to the network's grapes.

    The request reaches the grape listening at the URL's ``host:port`` (a down grape, no
    grape or a refused address: ``ConnectionRefusedError``; a blackholed one: no answer,
    until the link's timeout cancels it; one set to answer an error: HTTP 500 with the
    message), in the bytes the link sent, and the answer comes back in the bytes the grape's
    API wrote.
    """

    def __init__(self, network: MemoryNetwork) -> None:
        self.network = network

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers | None = None,
        bodyProducer: IBodyProducer | None = None,
    ) -> Deferred[MemoryResponse]:
        """Send one HTTP request to the grape the URL names, through the network; fires with its
        response (or fails as a real connection would, see the class).
        """
        parts = urlsplit(uri.decode("ascii"))
        dest = parts.netloc
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        fault = self.network.fault(dest)
        grape = self.network.listener(dest)
        if (fault is not None and fault.kind == "refuse") or not isinstance(grape, MemoryGrape):
            return fail(ConnectionRefusedError(dest))
        if fault is not None and fault.kind == "blackhole":
            return Deferred()
        if fault is not None:
            return succeed(MemoryResponse(500, fault.message.encode("utf-8")))
        body = _Collect()
        producer: Any = bodyProducer
        if producer is not None:
            producer.startProducing(body)
        lines = tuple(
            (name.lower(), value)
            for name, values in (headers.getAllRawHeaders() if headers is not None else ())
            for value in values
        )
        request = HTTPRequest(method.decode("ascii"), target, lines, b"".join(body.chunks))
        try:
            answer = grape.answer(request)
        except Exception:
            return fail()
        if not isinstance(answer, Deferred):
            return succeed(_response(answer))
        # A link that gives up closes its connection; the grape's work goes on regardless,
        # so cancelling the response does not cancel the grape's Deferred.
        response: Deferred[MemoryResponse] = Deferred()
        answer.addCallbacks(_deliver, response.errback, callbackArgs=(response,))
        return response


def _response(answer: HTTPResponse) -> MemoryResponse:
    return MemoryResponse(answer.status, answer.body)


def _deliver(answer: HTTPResponse, response: Deferred[MemoryResponse]) -> None:
    if not response.called:
        response.callback(_response(answer))
