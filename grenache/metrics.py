"""Prometheus metrics and a ``/health`` answer for grapes, services, clients and pub/sub.

A :class:`Metrics` is one registry (a :class:`prometheus_client.CollectorRegistry` of its own,
never the global default one) and what feeds it. Peers take it as a keyword and pay nothing
without it::

    metrics = Metrics()
    server = PeerRPCServer(link, transport, handler, metrics=metrics)
    client = PeerRPCClient(link, client_transport, reactor=reactor, metrics=metrics)
    port = await metrics.listen(reactor, 9100)      # GET /metrics, GET /health

``twistd grape --metrics``, ``twistd grenache-service --metrics`` and ``grenache serve
--metrics`` do this for the process. docs/metrics.rst lists every metric.

Cost. What the code already counts (the DHT's datagram and drop counters, the routing table,
the stores, connections, subscribers) is read when ``/metrics`` is scraped, by one custom
collector: nothing on the hot path. What nobody counted (requests by key and outcome, their
latency) is counted by small plain-Python cells: per request a dict lookup for the key's
cell, two clock reads and a few integer additions; the latency histogram is a list of bucket
counts found by bisection. ``prometheus_client`` only formats them at scrape time
(``generate_latest``).

Labels a remote chooses (an RPC key sent to a server, a grape operation) are bounded: past
:data:`MAX_LABEL_VALUES` distinct values per family, new ones count under ``other``.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from typing import Any, cast

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure

from grenache import errors
from grenache.codec import json_dumps
from grenache.endpoints import (
    ListenSpec,
    bound_port,
    describe_listen_spec,
    listen,
)
from grenache.endpoints import check_listen_spec as listen_spec
from grenache.http.messages import HTTPRequest, HTTPResponse
from grenache.http.server import HTTPServerFactory

__all__ = [
    "ALONE",
    "DEFAULT_BUCKETS",
    "HEALTHY",
    "MAX_LABEL_VALUES",
    "STATES",
    "STOPPING",
    "CallRecorder",
    "CallStats",
    "Health",
    "Metrics",
    "MetricsService",
    "listen_spec",
    "metrics_http_factory",
]

log = Logger()

#: Latency histogram bucket bounds, in seconds (``le`` labels; ``+Inf`` is added).
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

#: Distinct label values (RPC keys, destinations, names) kept per family; later ones are
#: counted under ``other``, so a client sending random keys cannot grow the registry.
MAX_LABEL_VALUES = 200
OTHER = "other"

HEALTHY = "healthy"
ALONE = "alone"
STOPPING = "stopping"
#: The ``/health`` states, best first; the process answers its worst component's.
STATES = (HEALTHY, ALONE, STOPPING)

# Outcomes, as indexes into CallStats.counts.
_OK, _ERROR, _TIMEOUT, _UNREACHABLE, _CLOSED, _CANCELLED = range(6)
OUTCOMES = ("ok", "error", "timeout", "unreachable", "closed", "cancelled")


def _outcome(result: Any) -> int:
    """The outcome index of a call's result (a value, or a Failure)."""
    if not isinstance(result, Failure):
        return _OK
    error = result.value
    if isinstance(error, (errors.HandlerTimeout, errors.RequestTimeout)):
        return _TIMEOUT
    if isinstance(error, errors.DestinationUnreachable):
        return _UNREACHABLE
    if isinstance(error, errors.TransportClosed):
        return _CLOSED
    if isinstance(error, CancelledError):
        return _CANCELLED
    return _ERROR


class CallStats:
    """Calls under one label value (an RPC key, a destination, a grape operation): how many
    started, how many ended with each outcome, and their latency histogram.

    :meth:`finish` is a Deferred callback (it passes the result on untouched).
    """

    __slots__ = ("bounds", "buckets", "counts", "seconds", "started", "timer")

    def __init__(self, timer: Callable[[], float], bounds: Sequence[float]) -> None:
        self.timer = timer
        self.bounds = bounds
        self.started = 0
        self.counts = [0] * len(OUTCOMES)
        self.buckets = [0] * (len(bounds) + 1)  # not cumulative; the last is +Inf
        self.seconds = 0.0

    def finish(self, result: Any, start: float) -> Any:
        """Count a call that began at ``start`` (a ``timer()`` reading) and ended with
        ``result``; returns ``result``."""
        elapsed = self.timer() - start
        self.buckets[bisect_left(self.bounds, elapsed)] += 1
        self.seconds += elapsed
        self.counts[_outcome(result)] += 1
        return result

    @property
    def finished(self) -> int:
        """How many calls ended, whatever their outcome."""
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, float]]:
        """The histogram's buckets as Prometheus wants them: cumulative, ``+Inf`` last."""
        total = 0
        out: list[tuple[str, float]] = []
        for bound, count in zip((*self.bounds, float("inf")), self.buckets, strict=True):
            total += count
            out.append((floatToGoString(bound), total))
        return out


class CallRecorder:
    """:class:`CallStats` by label value, at most ``limit`` of them, ``other`` included.

    ``timer`` is the clock the latencies are read from (:func:`time.perf_counter`; a test
    may give a ``Clock``'s ``seconds``).
    """

    def __init__(
        self,
        timer: Callable[[], float] = time.perf_counter,
        bounds: Sequence[float] = DEFAULT_BUCKETS,
        limit: int = MAX_LABEL_VALUES,
    ) -> None:
        self.timer = timer
        self.bounds = tuple(bounds)
        self.limit = limit
        self.by_label: dict[str, CallStats] = {}

    def stats(self, label: str) -> CallStats:
        """The cell of ``label`` (created on first use; ``other`` past the limit)."""
        cell = self.by_label.get(label)
        if cell is None:
            if len(self.by_label) >= self.limit - 1:  # one left for "other"
                label = OTHER
                cell = self.by_label.get(label)
            if cell is None:
                cell = self.by_label[label] = CallStats(self.timer, self.bounds)
        return cell

    @property
    def in_flight(self) -> int:
        """How many calls started and have not ended yet, under every label value."""
        return sum(cell.started - cell.finished for cell in self.by_label.values())

    def families(
        self, prefix: str, label: str, doc: str, outcomes: Sequence[str]
    ) -> Iterator[Metric]:
        """``<prefix>_total{label,outcome}``, ``<prefix>_seconds{label}`` and
        ``<prefix>_in_flight``."""
        total = CounterMetricFamily(
            f"{prefix}s", f"{doc}, by {label} and outcome.", labels=[label, "outcome"]
        )
        seconds = HistogramMetricFamily(
            f"{prefix}_seconds",
            f"Seconds each of the {doc[0].lower() + doc[1:]} took, by {label}.",
            labels=[label],
        )
        indexes = [OUTCOMES.index(name) for name in outcomes]
        for value, cell in sorted(self.by_label.items()):
            for index in indexes:
                total.add_metric([value, OUTCOMES[index]], cell.counts[index])
            seconds.add_metric([value], cell.cumulative(), cell.seconds)
        yield total
        yield seconds
        yield GaugeMetricFamily(
            f"{prefix}s_in_flight", f"{doc} started and not finished yet.", value=self.in_flight
        )


class _Announces:
    """Announce outcomes by name, counted by wrapping a link's ``announce``."""

    def __init__(self) -> None:
        self.ok: dict[str, int] = {}
        self.failed: dict[str, int] = {}
        self.last_failed: dict[str, str] = {}  # name -> error text, while the last one failed

    def note(self, result: Any, name: str) -> Any:
        if isinstance(result, Failure):
            if result.check(CancelledError, errors.LinkStopped):
                return result
            self.failed[name] = self.failed.get(name, 0) + 1
            self.last_failed[name] = result.getErrorMessage()
        else:
            self.ok[name] = self.ok.get(name, 0) + 1
            self.last_failed.pop(name, None)
        return result


Health = Callable[[], tuple[str, dict[str, Any]]]
"""A component's health check: its state (one of :data:`STATES`) and details (JSON-able)."""


class Metrics:
    """One registry of metrics and health checks (a process's, or one service's).

    Pass it to peers (``metrics=``) and grapes; :meth:`exposition` is the ``/metrics`` body
    and :meth:`health` the ``/health`` answer; :meth:`listen` serves both over HTTP.
    ``timer`` is the latency clock (:func:`time.perf_counter`).
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        timer: Callable[[], float] = time.perf_counter,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.timer = timer
        self.buckets = tuple(buckets)
        #: RPC requests served, by key.
        self.rpc_server = CallRecorder(timer, self.buckets)
        #: RPC requests sent, by destination.
        self.rpc_client = CallRecorder(timer, self.buckets)
        #: Grape API operations, by operation.
        self.grape = CallRecorder(timer, self.buckets)
        self.announces = _Announces()
        self._links: list[Any] = []
        self._server_transports: list[Any] = []
        self._client_transports: list[Any] = []
        self._pubs: list[Any] = []
        self._subs: list[Any] = []
        self._nodes: list[Any] = []
        self._health: dict[str, Health] = {}
        self.stopping = False
        self.registry.register(_Collector(self))

    # --- what feeds it ------------------------------------------------------------------------

    def watch_rpc_server(self, transport: Any) -> CallRecorder:
        """Count the open connections of a server ``transport``; the recorder to count
        requests with."""
        self._server_transports.append(transport)
        return self.rpc_server

    def watch_rpc_client(self, transport: Any) -> CallRecorder:
        """Count the open connections of a client ``transport``; the recorder to count
        requests with."""
        self._client_transports.append(transport)
        return self.rpc_client

    def watch_pub(self, pub: Any) -> None:
        """Read a :class:`~grenache.peer.PeerPub`'s counters and subscribers at scrape time."""
        self._pubs.append(pub)

    def watch_sub(self, sub: Any) -> None:
        """Read a :class:`~grenache.peer.PeerSub`'s counters at scrape time."""
        self._subs.append(sub)

    def watch_dht(self, node: Any) -> None:
        """Read a :class:`~grenache.dht.node.DHTNode`'s tables and counters at scrape time."""
        self._nodes.append(node)

    def watch_grape(self, grape: Any) -> None:
        """Read a :class:`~grenache.grape.service.Grape`'s DHT at scrape time and add it to
        ``/health``: "stopping" once it stops, "alone" while it has no DHT neighbour although
        bootstrap nodes are configured (a lone grape without bootstrap nodes is healthy).
        Its API operations are counted when the grape was built with these metrics (its
        dispatcher goes through :meth:`wrap_dispatch`)."""
        self.watch_dht(grape.node)

        def health() -> tuple[str, dict[str, Any]]:
            node = grape.node
            details: dict[str, Any] = {
                "node_id": node.node_id.hex(),
                "neighbours": len(node.routing),
                "bootstrap": len(grape.config.bootstrap),
            }
            if self.stopping or not grape.running:
                return STOPPING, details
            if grape.config.bootstrap and len(node.routing) == 0:
                return ALONE, details
            return HEALTHY, details

        self.add_health("grape", health)

    def count_announces(self, link: Any) -> None:
        """Count every announce ``link`` makes (its announcing loops' too), by name and
        outcome, through its ``announce_observers`` (:class:`grenache.link.Link` has them; a
        link without them is not counted)."""
        observers = getattr(link, "announce_observers", None)
        if observers is not None and self.announces.note not in observers:
            observers.append(self.announces.note)
            self._links.append(link)

    def wrap_dispatch(self, dispatch: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
        """A grape API dispatcher (``dispatch(operation, data)``) that counts each operation
        by outcome and latency. Unknown operations count as ``other``."""
        recorder = self.grape
        cells = {op: recorder.stats(op) for op in ("announce", "lookup", "put", "get")}
        other = recorder.stats(OTHER)
        timer = self.timer

        def metered(operation: str, data: Any) -> Any:
            cell = cells.get(operation, other)
            cell.started += 1
            start = timer()
            try:
                result = dispatch(operation, data)
            except BaseException:
                cell.finish(Failure(), start)
                raise
            if isinstance(result, Coroutine):
                result = Deferred.fromCoroutine(result)
            if isinstance(result, Deferred):
                if result.called and not result.paused:
                    cell.finish(result.result, start)
                else:
                    result.addBoth(cell.finish, start)
            else:
                cell.finish(result, start)
            return result

        return metered

    def add_health(self, name: str, check: Health) -> None:
        """Add a component to ``/health`` (``name`` must be new)."""
        if name in self._health:
            raise ValueError(f"a health check called {name!r} exists already")
        self._health[name] = check

    # --- what it answers ----------------------------------------------------------------------

    def exposition(self) -> bytes:
        """The Prometheus text exposition of the registry (the ``/metrics`` body)."""
        return generate_latest(self.registry)

    def health(self) -> tuple[str, dict[str, Any]]:
        """The process's state (its worst component's, or ``stopping`` once :attr:`stopping`
        is set) and the JSON answer of ``/health``."""
        components: dict[str, Any] = {}
        worst = HEALTHY
        for name, check in self._health.items():
            try:
                state, details = check()
            except Exception:
                log.failure("health check {name} failed", name=name)
                state, details = ALONE, {"error": "the health check failed"}
            components[name] = {"status": state, **details}
            if STATES.index(state) > STATES.index(worst):
                worst = state
        if self.stopping:
            worst = STOPPING
        return worst, {"status": worst, "components": components}

    def listen(self, reactor: Any, where: ListenSpec) -> Deferred[IListeningPort]:
        """Serve ``GET /metrics`` and ``GET /health`` on ``where`` (a port number, an endpoint
        description or a server endpoint)."""
        return listen(reactor, where, cast(Any, metrics_http_factory(self, reactor)))

    # --- the collector ------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        """Every family of what is watched (a family nothing feeds is left out)."""
        if self._server_transports:
            yield from self.rpc_server.families(
                "grenache_rpc_request",
                "key",
                "RPC requests served",
                ("ok", "error", "timeout", "cancelled"),
            )
            yield GaugeMetricFamily(
                "grenache_rpc_connections",
                "Open connections to this process's RPC servers.",
                value=sum(_server_connections(t) for t in self._server_transports),
            )
        if self._client_transports:
            yield from self.rpc_client.families(
                "grenache_rpc_client_request", "dest", "RPC requests sent", OUTCOMES
            )
            yield GaugeMetricFamily(
                "grenache_rpc_client_connections",
                "Open connections of this process's RPC clients.",
                value=sum(_client_connections(t) for t in self._client_transports),
            )
        if self._links:
            announces = CounterMetricFamily(
                "grenache_announces",
                "Announces made through the grape, by name and outcome.",
                labels=["name", "outcome"],
            )
            for name in sorted({*self.announces.ok, *self.announces.failed}):
                announces.add_metric([name, "ok"], self.announces.ok.get(name, 0))
                announces.add_metric([name, "failed"], self.announces.failed.get(name, 0))
            yield announces
        yield from self._collect_pubsub()
        if self._nodes:
            yield from self.grape.families(
                "grenache_grape_request", "op", "Grape API requests", ("ok", "error")
            )
            yield from _dht_families(self._nodes)

    def _collect_pubsub(self) -> Iterator[Metric]:
        if self._pubs:
            yield CounterMetricFamily(
                "grenache_pub_messages",
                "Messages published.",
                value=sum(p.published for p in self._pubs),
            )
            yield CounterMetricFamily(
                "grenache_pub_deliveries",
                "Messages sent to subscribers (one message to three subscribers counts 3).",
                value=sum(p.delivered for p in self._pubs),
            )
            yield GaugeMetricFamily(
                "grenache_pub_subscribers",
                "Subscribers connected to this process's publishers.",
                value=sum(_int_attr(p.transport, "subscribers") for p in self._pubs),
            )
        if self._subs:
            received = CounterMetricFamily(
                "grenache_sub_messages", "Messages received, by subscribed name.", labels=["name"]
            )
            connects = CounterMetricFamily(
                "grenache_sub_connects",
                "Connections made to a publisher (resubscribes included), by name.",
                labels=["name"],
            )
            connected = GaugeMetricFamily(
                "grenache_sub_connected",
                "1 while the subscription is connected to a publisher, else 0, by name.",
                labels=["name"],
            )
            totals: dict[str, list[int]] = {}
            for sub in self._subs:
                current = sub.subscriptions
                for name, stats in sub.stats.items():
                    row = totals.setdefault(name, [0, 0, 0])
                    row[0] += stats.messages
                    row[1] += stats.connects
                    row[2] += current.get(name) is not None
            for name, (messages, connects_, up) in sorted(totals.items()):
                received.add_metric([name], messages)
                connects.add_metric([name], connects_)
                connected.add_metric([name], up)
            yield received
            yield connects
            yield connected


class _Collector:
    """The registry's view of a :class:`Metrics`: everything is read at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Metric]:
        return []  # names are not checked for clashes: this collector is alone in its registry

    def collect(self) -> Iterator[Metric]:
        return self.metrics.collect()


_KNOWN_QUERIES = ("ping", "find_node", "get_peers", "announce_peer", "get", "put")


def _dht_families(nodes: Sequence[Any]) -> Iterator[Metric]:
    def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, doc, value=value)

    yield gauge(
        "grenache_dht_routing_nodes",
        "Nodes in the DHT routing table.",
        sum(len(n.routing) for n in nodes),
    )
    yield gauge(
        "grenache_dht_stored_peers",
        "Announced peers stored (for other nodes, and a lone grape's own announces).",
        sum(len(n.peers) + len(n.own_peers) + len(n.own_texts) for n in nodes),
    )
    yield gauge(
        "grenache_dht_stored_values", "BEP 44 values stored.", sum(len(n.values) for n in nodes)
    )
    yield gauge(
        "grenache_dht_down_nodes",
        "Addresses whose last query timed out (left out of walks).",
        sum(len(n.down) for n in nodes),
    )
    yield gauge(
        "grenache_dht_queries_in_flight",
        "DHT queries sent and waiting for a reply.",
        sum(n.krpc.in_flight for n in nodes),
    )
    yield gauge(
        "grenache_dht_queries_queued",
        "DHT queries waiting for an in-flight slot.",
        sum(n.krpc.queued for n in nodes),
    )
    datagrams = CounterMetricFamily(
        "grenache_dht_datagrams",
        "Datagrams received, by outcome: answered, refused (answered with an error), response "
        "(to our query), dropped.",
        labels=["outcome"],
    )
    for outcome, count in _sum_counters(n.krpc.received for n in nodes):
        datagrams.add_metric([outcome], count)
    yield datagrams
    dropped = CounterMetricFamily(
        "grenache_dht_dropped",
        "Datagrams dropped (and sends failed), by reason.",
        labels=["reason"],
    )
    for reason, count in _sum_counters(n.dropped for n in nodes):
        dropped.add_metric([reason], count)
    yield dropped
    refused = CounterMetricFamily(
        "grenache_dht_refused", "Error replies sent, by KRPC error code.", labels=["code"]
    )
    for code, count in _sum_counters(n.krpc.refused for n in nodes):
        refused.add_metric([str(code)], count)
    yield refused
    queries = CounterMetricFamily(
        "grenache_dht_queries",
        "DHT queries by type, direction (sent, received) and outcome.",
        labels=["q", "direction", "outcome"],
    )
    for (q, direction, outcome), count in _sum_counters(
        getattr(n.krpc, "queries", {}) for n in nodes
    ):
        queries.add_metric([q, direction, outcome], count)
    yield queries


def _sum_counters(counters: Iterable[Any]) -> list[tuple[Any, int]]:
    total: dict[Any, int] = {}
    for counter in counters:
        for key, count in list(counter.items()):
            total[key] = total.get(key, 0) + count
    return sorted(total.items(), key=lambda item: str(item[0]))


def _int_attr(owner: Any, name: str) -> int:
    value = getattr(owner, name, 0)
    return value if isinstance(value, int) else 0


def _server_connections(transport: Any) -> int:
    """Open connections of a server transport: its ``sockets`` (WebSocket) or its factory's
    ``connections`` (HTTP); 0 for one that has neither."""
    sockets = getattr(transport, "sockets", None)
    if isinstance(sockets, int):
        return sockets
    connections = getattr(getattr(transport, "factory", None), "connections", None)
    return len(connections) if connections is not None else 0


def _client_connections(transport: Any) -> int:
    """Open connections of a client transport: its pools' (HTTP) or its sockets by destination
    (WebSocket)."""
    pools = getattr(transport, "pools", None)
    if isinstance(pools, dict):
        return sum(len(pool.connections) for pool in pools.values())
    connections = getattr(transport, "_connections", None)
    return len(connections) if isinstance(connections, dict) else 0


# --- serving ----------------------------------------------------------------------------------

_METRICS_TYPE = ((b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii")),)
_JSON_TYPE = ((b"Content-Type", b"application/json"),)
_NOT_FOUND = HTTPResponse(404, b"not found: GET /metrics or /health\n")
_NOT_ALLOWED = HTTPResponse(405, b"GET or HEAD only\n", ((b"Allow", b"GET, HEAD"),))


def metrics_http_factory(metrics: Metrics, clock: Any) -> HTTPServerFactory:
    """The HTTP server of ``/metrics`` and ``/health`` (the project's lean HTTP server, with
    its limits against slow or idle clients; it is not on any request path).

    ``/health`` answers 200 when healthy and 503 otherwise, with the JSON of
    :meth:`Metrics.health`. Any other path is 404; a method other than GET or HEAD is 405.
    """

    def answer(request: HTTPRequest) -> HTTPResponse:
        if request.method not in ("GET", "HEAD"):
            return _NOT_ALLOWED
        path = request.path.split("?", 1)[0]
        if path == "/metrics":
            return HTTPResponse(200, metrics.exposition(), _METRICS_TYPE)
        if path == "/health":
            state, body = metrics.health()
            return HTTPResponse(200 if state == HEALTHY else 503, json_dumps(body), _JSON_TYPE)
        return _NOT_FOUND

    return HTTPServerFactory(answer, clock, max_body_size=0)


class MetricsService(Service):
    """Serves a :class:`Metrics` on ``where`` while running (a child of a grape or a service).

    :meth:`when_listening` fires with the listening port once bound (or fails, and the failure
    is logged); :attr:`port` is the bound TCP port then. Stopping sets the registry's
    ``stopping`` (``/health`` answers 503 "stopping") and closes the port.
    """

    name = "metrics"

    def __init__(self, metrics: Metrics, reactor: Any, where: ListenSpec) -> None:
        self.metrics = metrics
        self.reactor = reactor
        self.where = where
        self.factory = metrics_http_factory(metrics, reactor)
        self._listening_port: Any = None
        self._outcome: Any = None  # the port, or the Failure, once known
        self._waiters: list[Deferred[IListeningPort]] = []

    @property
    def port(self) -> int:
        """The bound TCP port (0 for a UNIX socket); RuntimeError while not listening."""
        if self._listening_port is None:
            raise RuntimeError("the metrics endpoint is not listening")
        return bound_port(self._listening_port)

    def when_listening(self) -> Deferred[IListeningPort]:
        """Fires with the listening port, or fails with why it could not listen."""
        d: Deferred[IListeningPort] = Deferred()
        if self._outcome is None:
            self._waiters.append(d)
        elif isinstance(self._outcome, Failure):
            d.errback(self._outcome)
        else:
            d.callback(self._outcome)
        return d

    def startService(self) -> None:
        """Start listening on ``where``; :meth:`when_listening` tells how it went."""
        super().startService()
        self.metrics.stopping = False
        self._outcome = None
        listen(self.reactor, self.where, cast(Any, self.factory)).addBoth(self._listened)

    def _listened(self, outcome: Any) -> None:
        where = describe_listen_spec(self.where)
        if isinstance(outcome, Failure):
            log.error(
                "cannot serve metrics on {where}: {error}",
                where=where,
                error=outcome.getErrorMessage(),
                event="metrics_listen_failed",
            )
        else:
            self._listening_port = outcome
            log.info(
                "metrics and health on {where}: GET /metrics, GET /health",
                where=where,
                event="metrics_listening",
            )
        self._outcome = outcome
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if isinstance(outcome, Failure):
                waiter.errback(outcome)
            else:
                waiter.callback(outcome)

    def stopService(self) -> Deferred[None]:  # type: ignore[override]
        """Mark the registry stopping, close open connections and stop listening; fires once the
        port is closed.
        """
        super().stopService()
        self.metrics.stopping = True
        port, self._listening_port = self._listening_port, None
        self.factory.closeConnections()
        return maybeDeferred(port.stopListening) if port is not None else succeed(None)
