"""The link: a client of a grape's API (grenache-nodejs-link 1.0.2, reference/protocol.md §4).

A :class:`Link` sends the four grape operations (``lookup``, ``announce``, ``put``, ``get``) to
one grape, over its HTTP API (an ``http://`` URL: ``POST {grape}/{type}`` with the body
``{"rid":"<uuid4>","data":...}``, exactly as the Node link sends it) or over this project's
grape WebSocket API (a ``ws://`` URL: frames ``[rid, type, data]`` answered by
``[rid, err, result]``, see :mod:`grenache.grape.api_ws`).

What it keeps from the Node link:

- one grape request per identical ``(type, data)`` in flight: concurrent callers share the
  reply (request coalescing);
- a bounded LRU cache of lookups, ``lookup_cache_ttl`` seconds from insertion (not refreshed
  by reads), ``lookup_cache_size`` entries;
- immediate retries (no back-off) up to ``retry`` attempts, 3 for lookup and announce;
- ``startAnnouncing``'s jitter formula: each gap is uniform in ``[0.5, 1.5) * interval``.

Where it deliberately differs (each is a bug or a trap in Node 1.0.2):

- **Empty lookups are not cached.** Node caches ``[]`` (truthy in JS) and so hides a service
  that appears during the next 10 s. Here ``[]`` raises :class:`~grenache.errors.LookupEmpty`
  and the next lookup asks the grape again.
- **Only transport failures are retried** (grape unreachable, connection reset or closed,
  timeout). An answer from the grape, error or not, is final: Node retries everything, which
  triples the time an error string takes to arrive and re-sends puts.
- **Error strings are errors.** Node hands an announce's ``"ERR_GRAPE_SERVICE_PORT"`` or
  ``"No nodes to query"`` to the caller as a *successful* result (§3.7). Here a result of the
  wrong type for the operation (announce: a number, put: a 40-hex key, lookup: a list, get: an
  object or nothing) raises :class:`~grenache.errors.GrapeReplyError` carrying the grape's
  string and the HTTP status, as a non-2xx reply does.
- **The re-announce interval defaults to 40 s**, so the longest gap (60 s) stays below the
  80 s a grape with the documented 120 s peer max age keeps a peer at least (§3.10). Node's
  default of 120 s gives gaps of up to 180 s, and services drop out of lookups between
  announces.
- **A get that finds nothing gives** ``None`` (Node gives ``""``), and found items are
  :class:`Item` objects.
- **Mutable puts are signed here** (ed25519, the BEP 44 signature buffer) from a 32-byte
  seed; the Node link 1.0 dropped ``putMutable`` and expects callers to send ``k``/``sig``.
- **Every request ends within** ``request_timeout`` (one timer per grape request, shared by
  its coalesced callers) with a reply or :class:`~grenache.errors.RequestTimeout`.

The link needs no explicit :meth:`Link.start`: the first request starts it. :meth:`Link.stop`
stops every announcing loop, fails the requests still in flight with
:class:`~grenache.errors.LinkStopped`, drops the cache and closes the pooled HTTP connections or
the WebSocket; a request made afterwards starts the link again.
"""

from __future__ import annotations

import random
import re
import uuid
from collections import OrderedDict
from typing import Any

import attrs
import treq
from autobahn.twisted.websocket import WebSocketClientProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.base import DelayedCall
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    ensureDeferred,
    fail,
    maybeDeferred,
    succeed,
)
from twisted.internet.error import ConnectError, ConnectionClosed, DNSLookupError
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web._newclient import _WrapperException

from grenache.codec import json_dumps, json_loads
from grenache.dht import bep44
from grenache.errors import (
    GrapeReplyError,
    GrapeUnreachable,
    LinkStopped,
    LookupEmpty,
    RequestTimeout,
    TransportClosed,
)

__all__ = ["ANNOUNCE_JITTER", "DEFAULT_ANNOUNCE_INTERVAL", "DEFAULT_GRAPE", "Item", "Link"]

log = Logger()

DEFAULT_GRAPE = "http://127.0.0.1:30001"

#: Default re-announce interval (seconds); gaps are jittered to [0.5, 1.5) of it, so at most
#: 60 s, below the 80 s minimum lifetime of a peer on grapes with the default 120 s max age.
DEFAULT_ANNOUNCE_INTERVAL = 40.0

#: Jitter bounds of the re-announce gap, as multiples of the interval (Node's formula).
ANNOUNCE_JITTER = (0.5, 1.5)

#: Failures worth another attempt: the grape never answered.
_RETRYABLE = (GrapeUnreachable, TransportClosed, RequestTimeout)

#: Idle pooled HTTP connections are closed after this many seconds, before a Node grape's
#: 5 s keep-alive closes them under a request (a POST on a connection the server is closing
#: fails, and Twisted does not retry non-idempotent requests by itself).
_POOL_IDLE_TIMEOUT = 4.0
_POOL_MAX_PER_HOST = 8

#: How long :meth:`Link.stop` waits for the grape to complete the WebSocket close handshake
#: before it drops the connection.
_WS_CLOSE_TIMEOUT = 1.0

_KEY_RE = re.compile(r"[0-9a-f]{40}\Z")


@attrs.frozen
class Item:
    """A BEP 44 item as a grape's ``get`` answers it (reference/protocol.md §3.5).

    ``id`` is the hex node id of the DHT node that answered, ``token`` its hex write token (None
    when the grape served the item from its own store). Mutable items also have the hex public
    key ``k``, the hex signature ``sig`` and the sequence number ``seq``; ``salt`` is echoed
    when the item came from a remote node and the request had one.
    """

    v: str
    id: str
    token: str | None
    k: str | None = None
    sig: str | None = None
    seq: int | None = None
    salt: str | None = None

    @property
    def mutable(self) -> bool:
        """True for a mutable (signed) item."""
        return self.k is not None

    @classmethod
    def from_json(cls, result: dict[str, Any]) -> Item:
        """Build an item from a get result; raises ``ValueError`` on a malformed one."""

        def text(name: str, optional: bool) -> str | None:
            value = result.get(name)
            if value is None and optional:
                return None
            if not isinstance(value, str):
                raise ValueError(f"{name} is {value!r}")
            return value

        seq = result.get("seq")
        if seq is not None and (not isinstance(seq, int) or isinstance(seq, bool)):
            raise ValueError(f"seq is {seq!r}")
        v = text("v", False)
        node_id = text("id", False)
        assert v is not None and node_id is not None
        return cls(
            v=v,
            id=node_id,
            token=text("token", True),
            k=text("k", True),
            sig=text("sig", True),
            seq=seq,
            salt=text("salt", True),
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _text_of(result: Any) -> str:
    """The grape's string for an unexpected result: a string as is, anything else as JSON."""
    if isinstance(result, str):
        return result
    try:
        return json_dumps(result).decode("utf-8")
    except (TypeError, ValueError):
        return repr(result)


def _copy(result: Any) -> Any:
    """A private copy of a shared result for one caller (results are JSON values)."""
    if isinstance(result, list):
        return [_copy(x) for x in result]
    if isinstance(result, dict):
        return {k: _copy(v) for k, v in result.items()}
    return result


def _reason(failure: Failure) -> str:
    """A short text for a transport failure, unwrapping Twisted's wrapper exceptions."""
    error = failure.value
    if isinstance(error, _WrapperException) and error.reasons:
        return "; ".join(r.getErrorMessage() for r in error.reasons)
    return failure.getErrorMessage() or type(error).__name__


class _LookupCache:
    """A bounded LRU of lookup results, each valid ``ttl`` seconds from insertion."""

    def __init__(self, clock: Any, ttl: float, size: int) -> None:
        self._clock = clock
        self._ttl = ttl
        self._size = size
        self._entries: OrderedDict[bytes, tuple[float, list[str]]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> list[str] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if self._clock.seconds() >= expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return list(value)

    def put(self, key: bytes, value: list[str]) -> None:
        if self._size <= 0 or self._ttl <= 0:
            return
        self._entries[key] = (self._clock.seconds() + self._ttl, list(value))
        self._entries.move_to_end(key)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()


@attrs.define(eq=False)
class _Flight:
    """One grape request in flight and the callers waiting for its reply."""

    key: bytes
    type: str
    waiters: list[Deferred[Any]] = attrs.Factory(list)
    request: Deferred[Any] | None = None
    timer: DelayedCall | None = None
    #: why the request was cancelled, if it was: "timeout", "stopped" or "abandoned"
    cancelled: str | None = None
    finished: bool = False


class Link:
    """Client of a grape's API: HTTP (http:// URL) or the grape's WebSocket API (ws:// URL).

    ``reactor`` provides time and connections (``None`` imports the global reactor: a
    convenience for scripts; libraries and tests pass theirs). ``request_timeout`` bounds every
    grape request in seconds; ``lookup_cache_ttl`` and ``lookup_cache_size`` shape the lookup
    cache (0 disables it); ``announce_interval`` is the default re-announce interval of
    :meth:`start_announcing`. ``http_client`` replaces the treq client (an object with treq's
    ``post``, and optionally ``content``, e.g. ``treq.testing.StubTreq``); ``ws_agent`` replaces
    autobahn's ``IWebSocketClientAgent`` (e.g. ``autobahn.twisted.testing``'s memory agent);
    ``rng`` draws the re-announce jitter.
    """

    def __init__(
        self,
        grape: str = DEFAULT_GRAPE,
        *,
        reactor: Any = None,
        request_timeout: float = 2.5,
        lookup_cache_ttl: float = 10.0,
        lookup_cache_size: int = 2500,
        announce_interval: float = DEFAULT_ANNOUNCE_INTERVAL,
        http_client: Any = None,
        ws_agent: Any = None,
        rng: random.Random | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        scheme = grape.split("://", 1)[0].lower() if "://" in grape else ""
        if scheme not in ("http", "https", "ws", "wss"):
            raise ValueError(f"grape URL {grape!r} must start with http://, https:// or ws://")
        if request_timeout <= 0:
            raise ValueError("request_timeout must be positive")
        if announce_interval <= 0:
            raise ValueError("announce_interval must be positive")
        self.grape = grape.rstrip("/") if scheme in ("http", "https") else grape
        self.websocket = scheme in ("ws", "wss")
        #: GrapeReplyError.status for a result of the wrong type (HTTP answers those with 200)
        self._ok_status: int | None = None if self.websocket else 200
        self.reactor = reactor
        self.request_timeout = request_timeout
        self.announce_interval = announce_interval
        self._rng = rng if rng is not None else random.Random()
        self._cache = _LookupCache(reactor, lookup_cache_ttl, lookup_cache_size)
        self._flights: dict[bytes, _Flight] = {}
        self._loops: dict[tuple[str, int], _AnnounceLoop] = {}
        self._given_http = http_client
        self._http: Any = None
        self._pool: Any = None
        self._ws_agent = ws_agent
        self._ws: _WSConnection | None = None
        self._closing: list[Deferred[Any]] = []
        self.running = False

    # --- lifetime ---------------------------------------------------------------------------

    def start(self) -> None:
        """Get ready to send requests (idempotent; the first request calls it too)."""
        if self.running:
            return
        self.running = True
        if self.websocket:
            if self._ws_agent is None:
                from autobahn.twisted.websocket import create_client_agent

                self._ws_agent = create_client_agent(self.reactor)
        elif self._given_http is not None:
            self._http = self._given_http
        else:
            from treq.client import HTTPClient
            from twisted.web.client import Agent, HTTPConnectionPool

            self._pool = HTTPConnectionPool(self.reactor, persistent=True)
            self._pool.maxPersistentPerHost = _POOL_MAX_PER_HOST
            self._pool.cachedConnectionTimeout = _POOL_IDLE_TIMEOUT
            self._http = HTTPClient(Agent(self.reactor, pool=self._pool))  # type: ignore[arg-type]

    def stop(self) -> Deferred[None]:
        """Stop every announcing loop, fail requests in flight with LinkStopped, drop the
        lookup cache and close the pooled connections or the WebSocket.

        Fires once the connections are closed.
        """
        self.running = False
        for loop in list(self._loops.values()):
            loop.stop()
        self._loops.clear()
        for flight in list(self._flights.values()):
            self._cancel_flight(flight, "stopped")
        self._cache.clear()
        waits: list[Deferred[Any]] = self._closing
        self._closing = []
        if self._pool is not None:
            pool, self._pool = self._pool, None
            waits.append(pool.closeCachedConnections())
        self._http = None
        if self._ws is not None:
            ws, self._ws = self._ws, None
            waits.append(ws.close())
        if not waits:
            return succeed(None)
        return DeferredList(waits, consumeErrors=True).addCallback(lambda _: None)

    # --- operations -------------------------------------------------------------------------

    def lookup(self, name: str, *, retry: int = 3, cache: bool = True) -> Deferred[list[str]]:
        """The ``"ip:port"`` peers announced under ``name``.

        Fails with LookupEmpty when the grape knows none (such an answer is not cached), with
        GrapeReplyError when it answers an error string. ``cache=False`` skips the cache read
        (a fresh answer still refreshes the cache).
        """
        key = b"lookup:" + json_dumps(name)
        if cache:
            # A cache hit answers at once, without the coroutine and retry loop of _call.
            self.start()
            hit = self._cache.get(key)
            if hit is not None:
                try:
                    return succeed(_lookup_result(hit, self._ok_status))
                except Exception:
                    return fail()
        d = ensureDeferred(self._attempts("lookup", name, key, max(1, retry), cache))
        return d.addCallback(_lookup_result, self._ok_status)

    def announce(self, name: str, port: int, *, retry: int = 3) -> Deferred[int]:
        """Announce ``name`` at ``port`` on this grape's DHT; fires with the number of DHT
        nodes that stored it (GrapeReplyError for "No nodes to query" and the like)."""
        d = self._call("announce", [name, port], retry, False)
        return d.addCallback(_announce_result, self._ok_status)

    def put(
        self,
        value: str,
        *,
        private_key: bytes | None = None,
        seq: int | None = None,
        salt: str | None = None,
        cas: int | None = None,
        retry: int = 1,
    ) -> Deferred[str]:
        """Store ``value`` as a BEP 44 item; fires with its 40-hex key.

        Without ``private_key`` the item is immutable (key ``sha1(bencode(v))``). With a 32-byte
        ed25519 seed it is mutable: ``seq`` is required, the link signs
        ``signature_buffer(utf8(value), seq, utf8(salt))`` and sends ``k``, ``seq``, ``sig``,
        ``salt`` and ``cas`` (compare-and-swap on the stored ``seq``) as Node's grape expects.
        ``retry`` is 1 as in Node: a re-sent mutable put could answer "302 ..." to itself.
        """
        if not isinstance(value, str):
            raise TypeError("value must be a str")
        data: dict[str, Any] = {"v": value}
        if private_key is None:
            if seq is not None or salt is not None or cas is not None:
                raise ValueError("seq, salt and cas are for mutable puts: give private_key too")
        else:
            if not isinstance(private_key, bytes) or len(private_key) != 32:
                raise ValueError("private_key must be a 32-byte ed25519 seed")
            if not _is_int(seq):
                raise ValueError("a mutable put needs an integer seq")
            if cas is not None and not _is_int(cas):
                raise ValueError("cas must be an integer")
            assert seq is not None
            salt_bytes = salt.encode("utf-8") if salt else None
            message = bep44.signature_buffer(value.encode("utf-8"), seq, salt_bytes)
            data["seq"] = seq
            data["k"] = bep44.public_key_of(private_key).hex()
            if salt:
                data["salt"] = salt
            data["sig"] = bep44.sign(private_key, message).hex()
            if cas is not None:
                data["cas"] = cas
        d = self._call("put", data, retry, False)
        return d.addCallback(_put_result, self._ok_status)

    def get(self, key: str, *, salt: str | None = None, retry: int = 1) -> Deferred[Item | None]:
        """The item stored under the 40-hex ``key`` (with ``salt`` for a salted mutable item),
        or None when the grape finds none."""
        data: Any = {"hash": key, "salt": salt} if salt else key
        d = self._call("get", data, retry, False)
        return d.addCallback(_get_result, self._ok_status)

    # --- announcing loops -------------------------------------------------------------------

    def start_announcing(
        self, name: str, port: int, interval: float | None = None
    ) -> Deferred[int]:
        """Announce ``name``:``port`` now and then again and again, each gap drawn uniformly
        from ``[0.5, 1.5) * interval`` (default :attr:`announce_interval`) after the previous
        announce finished.

        Fires with the first announce's result (or its error); the loop keeps going either way
        until :meth:`stop_announcing` or :meth:`stop`. A failed re-announce is logged and the
        next tick tries again. Stopping the loop before its first announce finished fails the
        Deferred with LinkStopped. If ``name``:``port`` is already announcing, no second loop is
        started and the Deferred follows the running loop's first announce.
        """
        period = self.announce_interval if interval is None else interval
        if period <= 0:
            raise ValueError("interval must be positive")
        key = (name, port)
        loop = self._loops.get(key)
        if loop is None:
            loop = self._loops[key] = _AnnounceLoop(self, name, port, period)
            loop.start()
        return loop.first_result()

    def stop_announcing(self, name: str, port: int) -> None:
        """Stop the announcing loop of ``name``:``port`` (its timer and announce in flight)."""
        loop = self._loops.pop((name, port), None)
        if loop is not None:
            loop.stop()

    def announcing(self) -> list[tuple[str, int]]:
        """The ``(name, port)`` pairs with a running announcing loop."""
        return list(self._loops)

    def _next_gap(self, interval: float) -> float:
        low, high = ANNOUNCE_JITTER
        return interval * (low + (high - low) * self._rng.random())

    # --- requests: retries, cache, coalescing, timeout --------------------------------------

    def _call(self, type_: str, payload: Any, retry: int, cache: bool) -> Deferred[Any]:
        """One operation: up to ``retry`` attempts, retried at once on transport failures."""
        key = type_.encode() + b":" + json_dumps(payload)
        return ensureDeferred(self._attempts(type_, payload, key, max(1, retry), cache))

    async def _attempts(
        self, type_: str, payload: Any, key: bytes, attempts: int, cache: bool
    ) -> Any:
        for attempt in range(1, attempts + 1):
            try:
                return await self._request(type_, payload, key, cache)
            except _RETRYABLE as error:
                if attempt == attempts:
                    raise
                log.info(
                    "grape {type} request failed ({error}); attempt {next} of {attempts}",
                    type=type_,
                    error=error,
                    next=attempt + 1,
                    attempts=attempts,
                )
        raise AssertionError("unreachable")

    def _request(self, type_: str, payload: Any, key: bytes, cache: bool) -> Deferred[Any]:
        """One attempt: a cache hit, or a share of the grape request for ``key``."""
        self.start()
        if cache and type_ == "lookup":
            hit = self._cache.get(key)
            if hit is not None:
                return succeed(hit)
        flight = self._flights.get(key)
        new = flight is None
        if flight is None:
            flight = self._flights[key] = _Flight(key, type_)
        waiter: Deferred[Any] = Deferred(lambda d: self._abandon(flight, d))
        flight.waiters.append(waiter)
        if new:
            self._launch(flight, payload)
        return waiter

    def _launch(self, flight: _Flight, payload: Any) -> None:
        flight.timer = self.reactor.callLater(
            self.request_timeout, self._cancel_flight, flight, "timeout"
        )
        if self.websocket:
            request = self._ws_request(flight.type, payload)
        else:
            request = self._http_request(flight.type, payload)
        flight.request = request
        request.addBoth(self._finish, flight)

    def _abandon(self, flight: _Flight, waiter: Deferred[Any]) -> None:
        """A caller cancelled its Deferred; the last one to go cancels the grape request."""
        if waiter in flight.waiters:
            flight.waiters.remove(waiter)
        if not flight.waiters:
            self._cancel_flight(flight, "abandoned")

    def _cancel_flight(self, flight: _Flight, why: str) -> None:
        """End the flight now (timeout, stop, no caller left) and cancel its request.

        The callers are answered at once, whether or not the transport honours the
        cancellation synchronously; whatever the request does later is ignored.
        """
        if flight.finished:
            return
        flight.cancelled = why
        if flight.request is not None and not flight.request.called:
            flight.request.cancel()
        self._finish(Failure(CancelledError()), flight)

    def _finish(self, outcome: Any, flight: _Flight) -> None:
        if flight.finished:
            return
        flight.finished = True
        if flight.timer is not None and flight.timer.active():
            flight.timer.cancel()
        flight.timer = None
        if self._flights.get(flight.key) is flight:
            del self._flights[flight.key]
        if isinstance(outcome, Failure):
            if flight.cancelled == "timeout":
                outcome = Failure(RequestTimeout())
            elif flight.cancelled == "stopped":
                outcome = Failure(LinkStopped())
        elif flight.type == "lookup" and isinstance(outcome, list) and outcome:
            self._cache.put(flight.key, outcome)
        waiters, flight.waiters = flight.waiters, []
        for waiter in waiters:
            if isinstance(outcome, Failure):
                waiter.errback(outcome)
            else:
                waiter.callback(_copy(outcome))

    # --- HTTP -------------------------------------------------------------------------------

    def _http_request(self, type_: str, payload: Any) -> Deferred[Any]:
        """POST the request; fires with the decoded 2xx result, or fails with GrapeReplyError
        (non-2xx) or GrapeUnreachable (no answer)."""
        url = f"{self.grape}/{type_}"
        body = json_dumps({"rid": str(uuid.uuid4()), "data": payload})
        http = self._http
        d = maybeDeferred(
            http.post,
            url,
            data=body,
            headers={b"Content-Type": [b"application/json"]},
            allow_redirects=False,
        )
        content = getattr(http, "content", None) or treq.content

        def read(response: Any) -> Deferred[Any]:
            return content(response).addCallback(lambda raw: _http_result(response.code, raw))

        def unreachable(failure: Failure) -> Failure:
            if failure.check(ConnectError, DNSLookupError, ConnectionClosed, _WrapperException):
                raise GrapeUnreachable(f"{GrapeUnreachable.wire}: POST {url}: {_reason(failure)}")
            return failure

        return d.addCallback(read).addErrback(unreachable)

    # --- WebSocket --------------------------------------------------------------------------

    def _ws_request(self, type_: str, payload: Any) -> Deferred[Any]:
        connection = self._ws
        if connection is not None and not connection.closed:
            waited = self.reactor.seconds() - connection.started
            if connection.is_open or waited < self.request_timeout:
                return connection.request(type_, payload)
            # An attempt that has not opened within a request timeout is given up (a grape
            # that accepts nothing would otherwise hold requests until the TCP timeout); the
            # requests queued on it, never sent, move to the new attempt.
            stale = connection
            connection = self._ws = _WSConnection(self, self.grape)
            stale.hand_over(connection)
            self._closing_ws(stale)
        else:
            connection = self._ws = _WSConnection(self, self.grape)
        d = connection.request(type_, payload)
        connection.connect(self._ws_agent)
        return d

    def _ws_cancel(self, rid: str) -> None:
        """A WebSocket request was cancelled (timeout, stop, no caller left)."""
        if self._ws is not None:
            self._ws.forget(rid)

    def _closing_ws(self, connection: _WSConnection) -> None:
        """Close ``connection``; :meth:`stop` waits for it if it is still closing then."""
        closed = connection.close()
        if not closed.called:
            self._closing.append(closed)
            closed.addBoth(
                lambda _: self._closing.remove(closed) if closed in self._closing else None
            )

    def _ws_finished(self, connection: _WSConnection) -> None:
        """A connection ended; the next request opens a new one."""
        if self._ws is connection:
            self._ws = None


def _http_result(status: int, raw: bytes) -> Any:
    """Node's rules (reference/protocol.md §3.7): a body is JSON if it parses, else text;
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


def _unexpected(result: Any, status: int | None) -> GrapeReplyError:
    return GrapeReplyError(_text_of(result), status)


def _lookup_result(result: Any, status: int | None) -> list[str]:
    if isinstance(result, list):
        if not result:
            raise LookupEmpty()
        if all(isinstance(peer, str) for peer in result):
            return result
    raise _unexpected(result, status)


def _announce_result(result: Any, status: int | None) -> int:
    if _is_int(result):
        return int(result)
    raise _unexpected(result, status)


def _put_result(result: Any, status: int | None) -> str:
    if isinstance(result, str) and _KEY_RE.match(result):
        return result
    raise _unexpected(result, status)


def _get_result(result: Any, status: int | None) -> Item | None:
    if result is None or result == "":
        return None
    if isinstance(result, dict):
        try:
            return Item.from_json(result)
        except ValueError:
            pass
    raise _unexpected(result, status)


class _AnnounceLoop:
    """Announces one name:port again and again, with one timer, until stopped."""

    def __init__(self, link: Link, name: str, port: int, interval: float) -> None:
        self.link = link
        self.name = name
        self.port = port
        self.interval = interval
        self.running = False
        self.call: DelayedCall | None = None
        self.in_flight: Deferred[int] | None = None
        self._first: Any = None
        self._first_done = False
        self._first_waiters: list[Deferred[int]] = []

    def start(self) -> None:
        self.running = True
        self._tick()

    def stop(self) -> None:
        self.running = False
        if self.call is not None and self.call.active():
            self.call.cancel()
        self.call = None
        if self.in_flight is not None:
            self.in_flight.cancel()

    def first_result(self) -> Deferred[int]:
        """A Deferred following the loop's first announce."""
        d: Deferred[int] = Deferred()
        if self._first_done:
            self._deliver(d, self._first)
        else:
            self._first_waiters.append(d)
        return d

    @staticmethod
    def _deliver(d: Deferred[int], outcome: Any) -> None:
        if isinstance(outcome, Failure):
            d.errback(outcome)
        else:
            d.callback(outcome)

    def _tick(self) -> None:
        self.call = None
        d = self.in_flight = self.link.announce(self.name, self.port)
        d.addBoth(self._done)

    def _done(self, outcome: Any) -> None:
        self.in_flight = None
        if not self.running and isinstance(outcome, Failure) and outcome.check(CancelledError):
            outcome = Failure(LinkStopped())
        if not self._first_done:
            self._first_done = True
            self._first = outcome
            waiters, self._first_waiters = self._first_waiters, []
            for waiter in waiters:
                self._deliver(waiter, outcome)
        elif isinstance(outcome, Failure) and self.running:
            log.warn(
                "re-announce of {name!r}:{port} failed ({error}); next try in the next tick",
                name=self.name,
                port=self.port,
                error=outcome.getErrorMessage(),
            )
        if self.running:
            self.call = self.link.reactor.callLater(self.link._next_gap(self.interval), self._tick)


class _GrapeWSClient(WebSocketClientProtocol):
    """The client end of the grape WebSocket API; reports everything to its connection."""

    def __init__(self, connection: _WSConnection) -> None:
        super().__init__()
        self.connection = connection

    def connectionMade(self) -> None:
        super().connectionMade()
        self.connection.made(self)

    def onOpen(self) -> None:
        self.connection.opened()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.connection.received(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.connection.closing(f"code {code}" + (f": {reason}" if reason else ""))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self.connection.lost(reason)


class _WSConnection:
    """One WebSocket to the grape: many requests in flight, matched by rid.

    Requests made before the handshake completes are queued and sent on open. When the socket
    closes, every request on it fails at once with TransportClosed (GrapeUnreachable if it
    never opened); the link opens a new socket for the next request.
    """

    def __init__(self, link: Link, url: str) -> None:
        self.link = link
        self.url = url
        self.started: float = link.reactor.seconds()
        self.protocol: _GrapeWSClient | None = None
        self.is_open = False
        self.closed = False
        self.abandoned = False
        self.error: Exception = TransportClosed()
        self.pending: dict[str, Deferred[Any]] = {}
        self.queue: list[tuple[str, bytes]] = []
        #: fires when the attempt is over: connection failed or lost
        self.done: Deferred[None] = Deferred()
        self._close_timer: DelayedCall | None = None

    def connect(self, agent: Any) -> None:
        d = maybeDeferred(agent.open, self.url, {}, protocol_class=lambda: _GrapeWSClient(self))
        d.addErrback(self._connect_failed)

    def _connect_failed(self, failure: Failure) -> None:
        if self.protocol is None:
            self._end(GrapeUnreachable(f"{GrapeUnreachable.wire}: {self.url}: {_reason(failure)}"))
            self._finished()

    # requests

    def request(self, type_: str, payload: Any) -> Deferred[Any]:
        if self.closed:
            return fail(self.error)
        rid = str(uuid.uuid4())
        frame = json_dumps([rid, type_, payload])

        d: Deferred[Any] = Deferred(lambda _: self.link._ws_cancel(rid))
        self.pending[rid] = d
        if self.is_open:
            self._send(rid, frame)
        else:
            self.queue.append((rid, frame))
        return d

    def forget(self, rid: str) -> None:
        """Drop a request: a reply for it will be ignored, and it is not sent if queued."""
        self.pending.pop(rid, None)
        self.queue = [(r, f) for r, f in self.queue if r != rid]

    def hand_over(self, other: _WSConnection) -> None:
        """Move the requests queued here (never sent) to ``other``."""
        for rid, frame in self.queue:
            d = self.pending.pop(rid, None)
            if d is not None:
                other.pending[rid] = d
                other.queue.append((rid, frame))
        self.queue = []

    def _send(self, rid: str, frame: bytes) -> None:
        assert self.protocol is not None
        try:
            self.protocol.sendMessage(frame, isBinary=False)
        except Exception as error:
            d = self.pending.pop(rid, None)
            if d is not None:
                d.errback(TransportClosed(f"{TransportClosed.wire}: {error}"))

    # protocol events

    def made(self, protocol: _GrapeWSClient) -> None:
        self.protocol = protocol
        if self.abandoned:
            protocol.dropConnection(abort=True)

    def opened(self) -> None:
        if self.abandoned or self.closed:
            return
        self.is_open = True
        queue, self.queue = self.queue, []
        for rid, frame in queue:
            self._send(rid, frame)

    def received(self, payload: bytes) -> None:
        try:
            message = json_loads(payload)
        except (ValueError, RecursionError):
            log.warn("grape WS API sent a frame that is not JSON: {frame!r}", frame=payload[:200])
            return
        if not (isinstance(message, list) and len(message) == 3):
            log.warn("grape WS API sent an unexpected frame: {frame!r}", frame=payload[:200])
            return
        rid, err, result = message
        d = self.pending.pop(rid, None) if isinstance(rid, str) else None
        if d is None:
            if rid is not None:
                log.debug("grape WS API reply for unknown rid {rid!r} dropped", rid=rid)
            else:
                log.warn("grape WS API answered {err!r} to a frame it could not read", err=err)
            return
        if err is not None:
            d.errback(GrapeReplyError(_text_of(err), None))
        else:
            d.callback(result)

    def closing(self, why: str) -> None:
        if self.closed:
            return
        if self.is_open:
            self._end(TransportClosed(f"{TransportClosed.wire}: WebSocket closed ({why})"))
        else:
            self._end(
                GrapeUnreachable(
                    f"{GrapeUnreachable.wire}: {self.url}: WebSocket closed before the"
                    f" handshake completed ({why})"
                )
            )

    def lost(self, reason: Failure) -> None:
        self.closing(_reason(reason))
        self._finished()

    def _end(self, error: Exception) -> None:
        """Fail every request on this socket; no new request will use it."""
        self.closed = True
        self.error = error
        self.is_open = False
        self.link._ws_finished(self)
        pending, self.pending = self.pending, {}
        self.queue = []
        for d in pending.values():
            d.errback(error)

    def _finished(self) -> None:
        if self._close_timer is not None and self._close_timer.active():
            self._close_timer.cancel()
        self._close_timer = None
        if not self.done.called:
            self.done.callback(None)

    def close(self) -> Deferred[None]:
        """Close the socket (handshake, then a drop after a second); fires once it is gone."""
        self.abandoned = True
        if not self.closed:
            self._end(TransportClosed())
        follower: Deferred[None] = Deferred()
        self.done.addBoth(lambda _: follower.callback(None))
        protocol = self.protocol
        if protocol is not None and not self.done.called:
            if protocol.state == WebSocketProtocol.STATE_OPEN:
                protocol.sendClose(code=1000)
                self._close_timer = self.link.reactor.callLater(
                    _WS_CLOSE_TIMEOUT, protocol.dropConnection, True
                )
            else:
                protocol.dropConnection(abort=True)
        return follower
