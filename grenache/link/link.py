"""The :class:`Link`: retries, the lookup cache, request coalescing, timeouts and announcing
loops, over one grape client (:mod:`grenache.link.client`)."""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from twisted.internet.base import DelayedCall
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    ensureDeferred,
    fail,
    succeed,
)
from twisted.logger import Logger
from twisted.python.failure import Failure

from grenache.codec import json_dumps
from grenache.dht import bep44
from grenache.errors import (
    GrapeReplyError,
    GrapeUnreachable,
    GrapeWrongAPI,
    LinkStopped,
    RequestTimeout,
    TransportClosed,
)
from grenache.link.announce import ANNOUNCE_JITTER, AnnounceLoop
from grenache.link.client import GrapeClient, grape_client, scheme_of
from grenache.link.item import Item
from grenache.link.results import (
    announce_result,
    copy_result,
    get_result,
    is_int,
    lookup_result,
    put_result,
)

__all__ = ["DEFAULT_ANNOUNCE_INTERVAL", "DEFAULT_GRAPE", "Link"]

log = Logger()

DEFAULT_GRAPE = "http://127.0.0.1:30001"

#: Default re-announce interval (seconds); gaps are jittered to [0.5, 1.5) of it, so at most
#: 60 s, below the 80 s minimum lifetime of a peer on grapes with the default 120 s max age.
DEFAULT_ANNOUNCE_INTERVAL = 40.0

#: Failures worth another attempt: the grape never answered (unless it is the wrong API:
#: every attempt would meet the same port).
_RETRYABLE = (GrapeUnreachable, TransportClosed, RequestTimeout)


def _hex_bytes(value: Any, name: str, size: int, what: str) -> bytes:
    """The bytes of a hex text field of ``size`` bytes; ValueError naming ``name`` otherwise."""
    if isinstance(value, str) and len(value) == 2 * size:
        try:
            return bytes.fromhex(value)
        except ValueError:
            pass
    raise ValueError(f"{name} must be the hex text of the {size}-byte {what}, not {value!r}")


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
    #: seconds the grape request may take (the link's request_timeout or a call's timeout)
    timeout: float
    #: the lookup cache's key for the result (the flight key without a custom timeout)
    cache_key: bytes
    waiters: list[Deferred[Any]] = attrs.Factory(list)
    request: Deferred[Any] | None = None
    timer: DelayedCall | None = None
    #: why the request was cancelled, if it was: "timeout", "stopped" or "abandoned"
    cancelled: str | None = None
    finished: bool = False


class Link:
    """Client of a grape's API: HTTP (``http://`` URL) or the grape's WebSocket API
    (``ws://`` URL). Host names and IPv6 literals work in either (``http://[::1]:30001``).

    ``reactor`` (required) provides time and connections. ``request_timeout`` bounds every
    grape request in seconds (each operation also takes its own ``timeout``, per attempt, as
    Node's ``opts.timeout``); ``lookup_cache_ttl`` and ``lookup_cache_size`` shape the lookup
    cache (0 disables it); ``announce_interval`` is the default re-announce interval of
    :meth:`start_announcing`. ``http_agent`` replaces the :class:`~twisted.web.iweb.IAgent`
    that posts to an HTTP API (e.g. ``treq.testing.RequestTraversalAgent``); ``ws_agent`` replaces
    the agent that opens the WebSocket (``open(url, options, protocol_class)``, e.g.
    ``autobahn.twisted.testing``'s memory agent); ``rng`` draws the re-announce jitter.
    """

    def __init__(
        self,
        grape: str = DEFAULT_GRAPE,
        *,
        reactor: Any,
        request_timeout: float = 2.5,
        lookup_cache_ttl: float = 10.0,
        lookup_cache_size: int = 2500,
        announce_interval: float = DEFAULT_ANNOUNCE_INTERVAL,
        http_agent: Any = None,
        ws_agent: Any = None,
        rng: random.Random | None = None,
    ) -> None:
        if reactor is None:
            raise TypeError("Link needs reactor= (the reactor the program runs)")
        scheme = scheme_of(grape)
        if request_timeout <= 0:
            raise ValueError("request_timeout must be positive")
        if announce_interval <= 0:
            raise ValueError("announce_interval must be positive")
        self.websocket = scheme in ("ws", "wss")
        self.grape = grape if self.websocket else grape.rstrip("/")
        #: GrapeReplyError.status for a result of the wrong type (HTTP answers those with 200)
        self._ok_status: int | None = None if self.websocket else 200
        self.reactor = reactor
        self.request_timeout = request_timeout
        self.announce_interval = announce_interval
        #: Called as ``observer(outcome, name)`` with each announce's result or Failure (the
        #: announcing loops' too), before the caller sees it; returns the outcome unchanged.
        #: :meth:`grenache.metrics.Metrics.count_announces` counts announces this way.
        self.announce_observers: list[Callable[[Any, str], Any]] = []
        self._rng = rng if rng is not None else random.Random()
        self._cache = _LookupCache(reactor, lookup_cache_ttl, lookup_cache_size)
        self._flights: dict[bytes, _Flight] = {}
        self._loops: dict[tuple[str, int], AnnounceLoop] = {}
        self._told_unsupported = False
        self._http_agent = http_agent
        self._ws_agent = ws_agent
        self._client: GrapeClient | None = None
        self.running = False

    # --- lifetime ---------------------------------------------------------------------------

    def start(self) -> None:
        """Get ready to send requests (idempotent; the first request calls it too)."""
        if self.running:
            return
        self.running = True
        self._client = grape_client(
            self.grape,
            self.reactor,
            attempt_timeout=self.request_timeout,
            http_agent=self._http_agent,
            ws_agent=self._ws_agent,
        )

    def stop(self) -> Deferred[None]:
        """Stop every announcing loop, fail requests in flight with LinkStopped, drop the
        lookup cache and close the grape client's connections.

        Fires once the connections are closed.
        """
        self.running = False
        for loop in list(self._loops.values()):
            loop.stop()
        self._loops.clear()
        for flight in list(self._flights.values()):
            self._cancel_flight(flight, "stopped")
        self._cache.clear()
        client, self._client = self._client, None
        if client is None:
            return succeed(None)
        return client.close()

    # --- operations -------------------------------------------------------------------------

    def lookup(
        self,
        name: str,
        *,
        retry: int = 3,
        cache: bool = True,
        timeout: float | None = None,
    ) -> Deferred[list[str]]:
        """The ``"ip:port"`` peers announced under ``name``.

        Fails with LookupEmpty when the grape knows none (such an answer is not cached), with
        GrapeReplyError when it answers an error string. ``cache=False`` skips the cache read
        (a fresh answer still refreshes the cache). ``retry`` is the number of attempts and
        ``timeout`` (seconds, default :attr:`request_timeout`) bounds each one, as Node's
        ``opts.retry`` and ``opts.timeout``.
        """
        t = self._timeout(timeout)
        key = b"lookup:" + json_dumps(name)
        if cache:
            # A cache hit answers at once, without the coroutine and retry loop of _call.
            self.start()
            hit = self._cache.get(key)
            if hit is not None:
                try:
                    return succeed(lookup_result(hit, self._ok_status))
                except Exception:
                    return fail()
        d = ensureDeferred(self._attempts("lookup", name, key, max(1, retry), cache, t))
        return d.addCallback(lookup_result, self._ok_status)

    def announce(
        self, name: str, port: int, *, retry: int = 3, timeout: float | None = None
    ) -> Deferred[int]:
        """Announce ``name`` at ``port`` on this grape's DHT; fires with the number of DHT
        nodes that stored it (GrapeReplyError for "No nodes to query" and the like).
        ``retry`` and ``timeout`` as for :meth:`lookup`."""
        d = self._call("announce", [name, port], retry, timeout)
        d.addCallback(announce_result, self._ok_status)
        for observer in self.announce_observers:
            d.addBoth(observer, name)
        return d

    def unannounce(
        self, name: str, port: int, *, retry: int = 3, timeout: float | None = None
    ) -> Deferred[int]:
        """Withdraw the announce of ``name`` at ``port`` at once, instead of letting it expire
        (the grape API's ``unannounce``, docs/protocol.rst, *Grape HTTP API*); fires with the
        number of DHT nodes that confirmed. Python grapes have it; a Node grape answers
        ``ERR_REQ_NOTFOUND`` (GrapeReplyError, see :meth:`unannounce_unsupported`) and keeps
        the service in lookups until its last announce expires. ``retry`` and ``timeout`` as
        for :meth:`lookup`."""
        d = self._call("unannounce", [name, port], retry, timeout)
        return d.addCallback(announce_result, self._ok_status)

    @staticmethod
    def unannounce_unsupported(failure: Failure) -> bool:
        """Whether an :meth:`unannounce` failed because the grape has no such operation (a
        Node grape: ``ERR_REQ_NOTFOUND`` with status 200, or 404 from its development
        branch)."""
        error = failure.value
        return isinstance(error, GrapeReplyError) and error.message == "ERR_REQ_NOTFOUND"

    def put(
        self,
        value: str,
        *,
        private_key: bytes | None = None,
        k: str | None = None,
        sig: str | None = None,
        seq: int | None = None,
        salt: str | None = None,
        cas: int | None = None,
        retry: int = 1,
        timeout: float | None = None,
    ) -> Deferred[str]:
        """Store ``value`` as a BEP 44 item; fires with its 40-hex key.

        Without a key the item is immutable (key ``sha1(bencode(v))``). A mutable item needs
        ``seq`` and either

        - ``private_key``, a 32-byte ed25519 seed: the link signs
          ``signature_buffer(utf8(value), seq, utf8(salt))``; or
        - ``k`` and ``sig``, the hex public key and the hex signature made elsewhere (a
          hardware key, another service), sent as they are, as Node's link sends them. The
          link checks the signature first and raises ``ValueError`` if it does not verify.

        Either way the grape gets ``v``, ``seq``, ``k``, ``salt`` (when given), ``sig`` and
        ``cas`` (compare-and-swap on the stored ``seq``), as Node's grape expects
        (docs/protocol.rst, *BEP 44 items*). ``retry`` is 1 as in Node: a re-sent mutable put
        could answer "302 ..." to itself. ``timeout`` as for :meth:`lookup`.
        """
        if not isinstance(value, str):
            raise TypeError("value must be a str")
        data: dict[str, Any] = {"v": value}
        if private_key is None and k is None and sig is None:
            if seq is not None or salt is not None or cas is not None:
                raise ValueError(
                    "seq, salt and cas are for mutable puts: give private_key, or k and sig"
                )
        else:
            if not is_int(seq):
                raise ValueError("a mutable put needs an integer seq")
            if cas is not None and not is_int(cas):
                raise ValueError("cas must be an integer")
            if salt is not None and not isinstance(salt, str):
                raise ValueError("salt must be a str")
            assert seq is not None
            salt_bytes = salt.encode("utf-8") if salt else None
            message = bep44.signature_buffer(value.encode("utf-8"), seq, salt_bytes)
            if private_key is not None:
                if k is not None or sig is not None:
                    raise ValueError("give private_key, or k and sig, not both")
                if not isinstance(private_key, bytes) or len(private_key) != 32:
                    raise ValueError("private_key must be a 32-byte ed25519 seed")
                k = bep44.public_key_of(private_key).hex()
                sig = bep44.sign(private_key, message).hex()
            else:
                public = _hex_bytes(k, "k", bep44.PUBLIC_KEY_SIZE, "ed25519 public key")
                signature = _hex_bytes(sig, "sig", bep44.SIGNATURE_SIZE, "ed25519 signature")
                if not bep44.verify(signature, message, public):
                    raise ValueError(
                        "sig is not k's signature of this value, seq and salt"
                        " (docs/protocol.rst, *BEP 44 items*)"
                    )
                assert k is not None and sig is not None
                k, sig = k.lower(), sig.lower()
            data["seq"] = seq
            data["k"] = k
            if salt:
                data["salt"] = salt
            data["sig"] = sig
            if cas is not None:
                data["cas"] = cas
        d = self._call("put", data, retry, timeout)
        return d.addCallback(put_result, self._ok_status)

    def get(
        self,
        key: str,
        *,
        salt: str | None = None,
        cache: bool = True,
        options: Mapping[str, Any] | None = None,
        retry: int = 1,
        timeout: float | None = None,
    ) -> Deferred[Item | None]:
        """The item stored under the 40-hex ``key`` (with ``salt`` for a salted mutable item),
        or None when the grape finds none.

        ``cache=False`` asks the grape to query the DHT even when its own store has the
        item (Node's ``{hash, cache: false}``). ``options`` are further fields sent to the
        grape as they are, in the object Node's ``get`` accepts (``hash``, ``salt`` and
        ``cache`` have their keywords). ``retry`` and ``timeout`` as for :meth:`lookup`.
        """
        data: Any = key
        if salt or not cache or options:
            data = {"hash": key}
            if salt:
                data["salt"] = salt
            if not cache:
                data["cache"] = False
            for name, value in (options or {}).items():
                if name in ("hash", "salt", "cache"):
                    raise ValueError(f"give {name} as get's keyword, not in options")
                data[name] = value
        d = self._call("get", data, retry, timeout)
        return d.addCallback(get_result, self._ok_status)

    # --- announcing loops -------------------------------------------------------------------

    def start_announcing(
        self,
        name: str,
        port: int,
        interval: float | None = None,
        *,
        retry: int = 3,
        timeout: float | None = None,
    ) -> Deferred[int]:
        """Announce ``name``:``port`` now and then again and again, each gap drawn uniformly
        from ``[0.5, 1.5) * interval`` (default :attr:`announce_interval`) after the previous
        announce finished.

        Fires with the first announce's result (or its error); the loop keeps going either way
        until :meth:`stop_announcing` or :meth:`stop`. A failed re-announce is logged and the
        next tick tries again. Stopping the loop before its first announce finished fails the
        Deferred with LinkStopped. If ``name``:``port`` is already announcing, no second loop is
        started and the Deferred follows the running loop's first announce. ``retry`` and
        ``timeout`` apply to each announce, as for :meth:`announce` (Node passes
        ``startAnnouncing``'s ``opts`` on to ``announce``).
        """
        period = self.announce_interval if interval is None else interval
        if period <= 0:
            raise ValueError("interval must be positive")
        self._timeout(timeout)
        key = (name, port)
        loop = self._loops.get(key)
        if loop is None:
            loop = self._loops[key] = AnnounceLoop(
                self, name, port, period, retry=retry, timeout=timeout
            )
            loop.start()
        return loop.first_result()

    def stop_announcing(self, name: str, port: int) -> Deferred[None]:
        """Stop the announcing loop of ``name``:``port`` (its timer and announce in flight)
        and :meth:`unannounce` it, so that lookups stop finding it at once.

        Returns a ``Deferred[None]`` that fires when the unannounce ended; it never fails. A
        grape without ``unannounce`` (a Node grape) is not an error: the service then leaves
        lookups when its last announce expires, as it always did, and the link logs it once.
        Other failures are logged as warnings. Without a running loop for ``name``:``port``
        nothing is sent.
        """
        loop = self._loops.pop((name, port), None)
        if loop is None:
            return succeed(None)
        loop.stop()
        d = self.unannounce(name, port, retry=1)
        return d.addCallbacks(lambda _: None, self._unannounce_failed, errbackArgs=(name, port))

    def _unannounce_failed(self, failure: Failure, name: str, port: int) -> None:
        if self.unannounce_unsupported(failure):
            if not self._told_unsupported:
                self._told_unsupported = True
                log.info(
                    "grape {grape} has no unannounce (a Node grape?): {name}:{port} and later "
                    "services stay in lookups until their last announce expires",
                    grape=self.grape,
                    name=name,
                    port=port,
                )
            return
        if failure.check(LinkStopped):
            return
        log.warn(
            "unannounce of {name}:{port} failed ({error}); it stays in lookups until its last "
            "announce expires",
            name=name,
            port=port,
            error=failure.getErrorMessage(),
        )

    def announcing(self) -> list[tuple[str, int]]:
        """The ``(name, port)`` pairs with a running announcing loop."""
        return list(self._loops)

    def _next_gap(self, interval: float) -> float:
        low, high = ANNOUNCE_JITTER
        return interval * (low + (high - low) * self._rng.random())

    # --- requests: retries, cache, coalescing, timeout --------------------------------------

    def _timeout(self, timeout: float | None) -> float:
        """A call's own ``timeout``, or :attr:`request_timeout`; ValueError unless positive."""
        if timeout is None:
            return self.request_timeout
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        return float(timeout)

    def _call(self, type_: str, payload: Any, retry: int, timeout: float | None) -> Deferred[Any]:
        """One operation: up to ``retry`` attempts, retried at once on transport failures."""
        t = self._timeout(timeout)
        key = type_.encode() + b":" + json_dumps(payload)
        return ensureDeferred(self._attempts(type_, payload, key, max(1, retry), False, t))

    async def _attempts(
        self, type_: str, payload: Any, key: bytes, attempts: int, cache: bool, timeout: float
    ) -> Any:
        for attempt in range(1, attempts + 1):
            try:
                return await self._request(type_, payload, key, cache, timeout)
            except _RETRYABLE as error:
                if attempt == attempts or isinstance(error, GrapeWrongAPI):
                    raise
                log.info(
                    "grape {type} request failed ({error}); attempt {next} of {attempts}",
                    type=type_,
                    error=error,
                    next=attempt + 1,
                    attempts=attempts,
                )
        raise AssertionError("unreachable")

    def _request(
        self, type_: str, payload: Any, key: bytes, cache: bool, timeout: float
    ) -> Deferred[Any]:
        """One attempt: a cache hit, or a share of the grape request for ``key``.

        Calls coalesce when they also have the same timeout: a call with a timeout of its own
        does not shorten or stretch the grape request other callers are waiting for.
        """
        self.start()
        if cache and type_ == "lookup":
            hit = self._cache.get(key)
            if hit is not None:
                return succeed(hit)
        flight_key = key if timeout == self.request_timeout else key + b"|%r" % timeout
        flight = self._flights.get(flight_key)
        new = flight is None
        if flight is None:
            flight = self._flights[flight_key] = _Flight(flight_key, type_, timeout, key)
        waiter: Deferred[Any] = Deferred(lambda d: self._abandon(flight, d))
        flight.waiters.append(waiter)
        if new:
            self._launch(flight, payload)
        return waiter

    def _launch(self, flight: _Flight, payload: Any) -> None:
        flight.timer = self.reactor.callLater(
            flight.timeout, self._cancel_flight, flight, "timeout"
        )
        assert self._client is not None
        request = self._client.request(flight.type, payload)
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
            self._cache.put(flight.cache_key, outcome)
        waiters, flight.waiters = flight.waiters, []
        for waiter in waiters:
            if isinstance(outcome, Failure):
                waiter.errback(outcome)
            else:
                waiter.callback(copy_result(outcome))
