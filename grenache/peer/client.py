"""The RPC client peer: looks services up by name and sends them requests, following
grenache-nodejs-base's ``PeerRPCClient`` with finite timeouts (docs/protocol.rst, *Link* and
*Deliberate differences from Node.js*):

- every request has a **finite** timeout (Node 1.0.0 waits forever without ``opts.timeout``);
- a destination whose connection is refused is **set aside** for a while and the request is
  sent at once to another destination, without using up a retry, so a dead service that is
  still announced does not fail calls while a live one exists;
- ``max_active_key_dests`` (Node's ``maxActiveKeyDests``) has no default limit: Node's 5 keeps
  a key's traffic on the first five destinations it used for as long as they stay busy,
  leaving the others idle; give it to get Node's behaviour;
- ``max_active_dest_transports`` (Node's ``maxActiveDestTransports``) is the transport's
  per-destination connection pool (HTTP's ``pool_size_per_dest``); WebSocket keeps one socket
  per destination, which carries any number of requests at once.

A reply that carries an error fails the call with :class:`~grenache.errors.RemoteError`; when
it carries a result too (Node's ``handler.reply(err, result)``), the error's ``result``
attribute holds it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    FirstError,
    fail,
    passthru,
)
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from grenache import errors
from grenache.peer.protocols import ClientTransport, LinkProtocol
from grenache.peer.request import OutgoingRequest, new_rid

if TYPE_CHECKING:
    from grenache.metrics import CallRecorder, Metrics

__all__ = ["DEFAULT_ACTIVE_WINDOW", "PeerRPCClient"]

log = Logger()

DEFAULT_ACTIVE_WINDOW = 120.0
"""Seconds a destination stays *active* after its last request, for ``max_active_key_dests``,
when the transport has no ``idle_timeout`` (Node's ``inactivityTimeout``)."""

#: Entries kept in the last-use table before stale ones are dropped.
_LAST_USED_PRUNE = 4096


class PeerRPCClient:
    """Sends requests to services looked up by name through ``link``.

    ``reactor`` (required) is the clock of the set-aside delays: pass the link's,
    ``link.reactor``, or a :class:`~twisted.internet.task.Clock` in tests. ``timeout``
    (seconds) applies to each attempt when a call does not give its own.
    ``unreachable_backoff`` is how long a destination that refused a connection is left out
    of the choice (unless every destination is left out). ``rng`` makes the random choices
    reproducible in tests.

    ``max_active_key_dests`` (Node's ``maxActiveKeyDests``; default: no limit) bounds how many
    of a key's destinations are used: once that many of them are *active* (sent a request
    within the transport's ``idle_timeout``, while its connections stay open; 120 s when it
    has none), requests go to the active ones only. ``max_active_dest_transports`` (Node's
    ``maxActiveDestTransports``) bounds the connections kept per destination: it sets the
    transport's ``pool_size_per_dest`` (HTTP); a transport without one (WebSocket) keeps a
    single connection per destination, within any limit.

    ``metrics`` (a :class:`~grenache.metrics.Metrics`; none by default) counts the requests
    sent (each attempt of :meth:`request` and each of :meth:`map`'s) by destination and
    outcome (``ok``, ``error``, ``timeout``, ``unreachable``, ``closed``, ``cancelled``) with
    their latency, and the transport's open connections.
    """

    def __init__(
        self,
        link: LinkProtocol,
        transport: ClientTransport,
        *,
        reactor: IReactorTime,
        timeout: float = 10.0,
        unreachable_backoff: float = 10.0,
        max_active_key_dests: int | None = None,
        max_active_dest_transports: int | None = None,
        rng: random.Random | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        if not timeout > 0:
            raise ValueError("timeout must be a positive number of seconds")
        _check_limit("max_active_key_dests", max_active_key_dests)
        _check_limit("max_active_dest_transports", max_active_dest_transports)
        if max_active_dest_transports is not None and hasattr(transport, "pool_size_per_dest"):
            cast(Any, transport).pool_size_per_dest = max_active_dest_transports
        self.max_active_key_dests = max_active_key_dests
        self.max_active_dest_transports = max_active_dest_transports
        window: Any = getattr(transport, "idle_timeout", None)
        if not (isinstance(window, (int, float)) and 0 < window < math.inf):
            window = DEFAULT_ACTIVE_WINDOW
        #: seconds a destination stays active after its last request
        self.active_window = float(window)
        self._last_used: dict[str, float] = {}  # dest -> clock time of its last request
        self.link = link
        self.transport = transport
        self.timeout = timeout
        self.unreachable_backoff = unreachable_backoff
        self._reactor: Any = reactor
        self._rng = rng if rng is not None else random.Random()
        self._set_aside: dict[str, float] = {}  # dest -> clock time it may be chosen again
        self._stopped = False
        self.metrics = metrics
        self._calls: CallRecorder | None = (
            metrics.watch_rpc_client(transport) if metrics is not None else None
        )
        # A transport that reports unreachable destinations itself (watch_unreachable) spares
        # the errback on requests that cannot be retried or sent elsewhere.
        watch_unreachable = getattr(transport, "watch_unreachable", None)
        self._told_unreachable = watch_unreachable is not None
        if watch_unreachable is not None:
            watch_unreachable(self._set_dest_aside)

    # --- destination choice ---

    def _now(self) -> float:
        return self._reactor.seconds()  # type: ignore[no-any-return]

    def _set_dest_aside(self, dest: str) -> None:
        now = self._now()
        already = self._set_aside.get(dest, -math.inf) > now
        self._set_aside[dest] = now + self.unreachable_backoff
        if already:
            return  # one line per episode (the transport and a failed request may both say)
        log.info(
            "Destination {dest} refused the connection; left out for {seconds} s",
            dest=dest,
            seconds=self.unreachable_backoff,
            event="dest_set_aside",
        )

    def _usable(self, dests: Sequence[str]) -> list[str]:
        """``dests`` minus those set aside (all of them if every one is set aside)."""
        aside = self._set_aside
        if not aside:
            return list(dests)
        now = self._now()
        for dest, until in list(aside.items()):
            if until <= now:
                del aside[dest]
        usable = [d for d in dests if d not in aside]
        return usable or list(dests)

    def choose(
        self,
        dests: Sequence[str],
        exclude: set[str] | frozenset[str] = frozenset(),
        max_active: int | None = None,
    ) -> str:
        """Pick a destination at random among those not set aside and not in ``exclude``.

        When at least ``max_active`` (default :attr:`max_active_key_dests`) of them are
        active, the pick is among the active ones only (Node's ``maxActiveKeyDests``).
        """
        if not exclude and not self._set_aside:
            limit = self.max_active_key_dests if max_active is None else max_active
            if limit is None or len(dests) <= limit:
                # Nothing to leave out (every request's case): the same pick, without copies.
                if not dests:
                    raise ValueError("no destination to choose from")
                return self._rng.choice(dests)
        candidates = [d for d in dests if d not in exclude] if exclude else list(dests)
        if not candidates:
            raise ValueError("no destination to choose from")
        usable = self._usable(candidates)
        limit = self.max_active_key_dests if max_active is None else max_active
        if limit is not None and len(usable) > limit:
            active = self._active_among(usable)
            if len(active) >= limit:
                usable = active
        return self._rng.choice(usable)

    def is_active(self, dest: str) -> bool:
        """Whether ``dest`` was sent a request within :attr:`active_window` seconds."""
        last = self._last_used.get(dest)
        return last is not None and self._now() - last < self.active_window

    def _active_among(self, dests: Sequence[str]) -> list[str]:
        now = self._now()
        last_used = self._last_used
        window = self.active_window
        return [d for d in dests if now - last_used.get(d, -math.inf) < window]

    def _used(self, dest: str) -> None:
        """Note a request to ``dest`` (what makes it active)."""
        last_used = self._last_used
        last_used[dest] = self._reactor.seconds()
        if len(last_used) > _LAST_USED_PRUNE:
            self._prune_last_used()

    def _prune_last_used(self) -> None:
        """Forget the destinations no longer active (the table keeps only those in use)."""
        now = self._reactor.seconds()
        last_used = self._last_used
        for d, t in list(last_used.items()):
            if now - t >= self.active_window:
                del last_used[d]

    def is_set_aside(self, dest: str) -> bool:
        """Whether ``dest`` is currently left out after refusing a connection."""
        until = self._set_aside.get(dest)
        return until is not None and until > self._now()

    # --- requests ---

    def _call_timeout(self, timeout: float | None) -> float:
        """A call's own ``timeout``, or the client's; ValueError unless it is positive."""
        t = self.timeout if timeout is None else timeout
        if not t > 0:
            raise ValueError("timeout must be a positive number of seconds")
        return float(t)

    def _outgoing(
        self, key: str, payload: Any, timeout: float | None, compress: bool
    ) -> OutgoingRequest:
        return OutgoingRequest(new_rid(), key, payload, self._call_timeout(timeout), compress)

    def request(
        self,
        key: str,
        payload: Any,
        *,
        timeout: float | None = None,
        retry: int = 1,
        compress: bool = False,
        max_active_key_dests: int | None = None,
    ) -> Deferred[Any]:
        """Look ``key`` up, send ``payload`` to one of its destinations, fire with the result.

        ``retry`` is the number of attempts (Node's ``opts.retry``, at least 1); any failure
        other than a refused connection uses one up, and each attempt picks a destination
        afresh. A refused connection sets the destination aside and tries another one at
        once; when every destination has refused, the call fails with
        :class:`~grenache.errors.DestinationUnreachable`. A reply with an error fails with
        :class:`~grenache.errors.RemoteError` (its ``result`` is the reply's result, if it
        had one). ``max_active_key_dests`` replaces the client's for this call.
        """
        if self._stopped:
            return fail(errors.TransportClosed("ERR_TRANSPORT_CLOSE: client stopped"))
        # The hot path of every call: checks inline, callbacks rather than a coroutine.
        t = self.timeout if timeout is None else timeout
        if not t > 0:
            return fail(ValueError("timeout must be a positive number of seconds"))
        if type(t) is not float:
            t = float(t)
        if max_active_key_dests is None:
            limit = self.max_active_key_dests
        else:
            try:
                _check_limit("max_active_key_dests", max_active_key_dests)
            except ValueError as e:
                return fail(e)
            limit = max_active_key_dests
        d: Deferred[Any] = self.link.lookup(key)
        attempts = retry if type(retry) is int and retry >= 1 else max(1, int(retry))
        dests: Any = d.result if d.called and not d.paused else None
        if dests is not None and not isinstance(dests, Failure):
            # Answered at once (a cache hit): go on now rather than chain the transport's
            # Deferred onto this one (a quarter of the peer's own time per request).
            if not dests:
                return fail(errors.LookupEmpty())
            try:
                return self._attempt(dests, key, payload, t, attempts, compress, limit, None)
            except Exception:
                return fail()
        return d.addCallback(self._first_attempt, key, payload, t, attempts, compress, limit)

    def _first_attempt(
        self,
        dests: list[str],
        key: str,
        payload: Any,
        timeout: float,
        attempts: int,
        compress: bool,
        limit: int | None,
    ) -> Deferred[Any]:
        if not dests:
            raise errors.LookupEmpty()
        return self._attempt(dests, key, payload, timeout, attempts, compress, limit, None)

    def _attempt(
        self,
        dests: list[str],
        key: str,
        payload: Any,
        timeout: float,
        attempts: int,
        compress: bool,
        limit: int | None,
        refused: set[str] | None,
    ) -> Deferred[Any]:
        alone = refused is None and len(dests) == 1  # the usual case: nothing to choose
        dest = dests[0] if alone else self.choose(dests, refused or frozenset(), limit)
        last_used = self._last_used  # _used(dest), inline on every request's path
        last_used[dest] = self._reactor.seconds()
        if len(last_used) > _LAST_USED_PRUNE:
            self._prune_last_used()
        # tuple.__new__ makes the named tuple without its Python-level __new__.
        outgoing = _new_tuple(OutgoingRequest, (new_rid(), key, payload, timeout, compress))
        d = self.transport.request(dest, outgoing)
        if self._calls is not None:
            self._count(d, dest)
        if alone and attempts == 1 and self._told_unreachable:
            # Nothing to retry, nowhere else to go, and the transport sets a refusing
            # destination aside itself: the failure goes to the caller as it is.
            return d
        # addCallbacks rather than addErrback: one call fewer on every request's path.
        return d.addCallbacks(
            passthru,
            self._attempt_failed,
            errbackArgs=(dest, dests, key, payload, timeout, attempts, compress, limit, refused),
        )

    def _attempt_failed(
        self,
        failure: Failure,
        dest: str,
        dests: list[str],
        key: str,
        payload: Any,
        timeout: float,
        attempts: int,
        compress: bool,
        limit: int | None,
        refused: set[str] | None,
    ) -> Any:
        if failure.check(errors.DestinationUnreachable):
            self._set_dest_aside(dest)
            refused = {dest} if refused is None else refused | {dest}
            if len(refused) >= len(set(dests)):
                return failure
        elif failure.check(CancelledError):
            return failure
        else:
            attempts -= 1
            if attempts <= 0:
                return failure
        return self._attempt(dests, key, payload, timeout, attempts, compress, limit, refused)

    def map(
        self,
        key: str,
        payload: Any,
        *,
        limit: int | None = None,
        timeout: float | None = None,
        compress: bool = False,
    ) -> Deferred[list[Any]]:
        """Send ``payload`` to every destination of ``key`` (or ``limit`` random ones).

        The requests run in parallel; the result lists the replies in destination order. The
        first failure fails the whole map (as Node's ``async.map``) and the other replies are
        dropped. Destinations set aside as unreachable by earlier calls are skipped while at
        least one other destination remains.
        """
        if self._stopped:
            return fail(errors.TransportClosed("ERR_TRANSPORT_CLOSE: client stopped"))
        return Deferred.fromCoroutine(self._map(key, payload, limit, timeout, compress))

    async def _map(
        self, key: str, payload: Any, limit: int | None, timeout: float | None, compress: bool
    ) -> list[Any]:
        dests: list[str] = await self.link.lookup(key)
        if not dests:
            raise errors.LookupEmpty()
        dests = self._usable(dests)
        if limit is not None and limit < len(dests):
            dests = self._rng.sample(dests, max(0, limit))
        calls: list[Deferred[Any]] = []
        for dest in dests:
            self._used(dest)
            d = self.transport.request(dest, self._outgoing(key, payload, timeout, compress))
            if self._calls is not None:
                self._count(d, dest)
            d.addErrback(self._note_unreachable, dest)
            calls.append(d)
        if not calls:
            return []
        try:
            results = await DeferredList(calls, fireOnOneErrback=True, consumeErrors=True)
        except FirstError as e:
            e.subFailure.raiseException()
        return [value for _, value in results]

    def stream(
        self,
        key: str,
        *,
        headers: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        max_active_key_dests: int | None = None,
    ) -> Deferred[Any]:
        """Look ``key`` up and open a stream to one of its destinations (Node's ``stream``).

        Only for transports that have streams (``transport.stream``, see
        :class:`StreamClientTransport`; HTTP's fires with a
        :class:`~grenache.transports.http.ClientStream`); others fail with
        ``NotImplementedError``. ``headers`` are the extra headers (e.g. ``_a``/``_ar``);
        ``timeout`` (default: the client's) is the stream's idle timeout. A destination that
        refuses the connection is set aside and another one is tried, as for requests;
        nothing else is retried (a stream's body cannot be replayed).
        ``max_active_key_dests`` as for :meth:`request`.
        """
        if self._stopped:
            return fail(errors.TransportClosed("ERR_TRANSPORT_CLOSE: client stopped"))
        open_stream = getattr(self.transport, "stream", None)
        if open_stream is None:
            return fail(
                NotImplementedError(f"{type(self.transport).__name__} does not open streams")
            )
        try:
            t = self._call_timeout(timeout)
            _check_limit("max_active_key_dests", max_active_key_dests)
        except ValueError as e:
            return fail(e)
        return Deferred.fromCoroutine(
            self._stream(open_stream, key, headers, t, max_active_key_dests)
        )

    async def _stream(
        self,
        open_stream: Callable[..., Deferred[Any]],
        key: str,
        headers: Mapping[str, Any] | None,
        timeout: float,
        limit: int | None,
    ) -> Any:
        dests: list[str] = await self.link.lookup(key)
        if not dests:
            raise errors.LookupEmpty()
        refused: set[str] = set()
        while True:
            dest = self.choose(dests, refused, limit)
            self._used(dest)
            try:
                return await open_stream(dest, key, headers=headers, timeout=timeout)
            except errors.DestinationUnreachable:
                self._set_dest_aside(dest)
                refused.add(dest)
                if len(refused) >= len(set(dests)):
                    raise

    def _count(self, d: Deferred[Any], dest: str) -> None:
        assert self._calls is not None
        cell = self._calls.stats(dest)
        cell.started += 1
        d.addBoth(cell.finish, cell.timer())

    def _note_unreachable(self, failure: Failure, dest: str) -> Failure:
        if failure.check(errors.DestinationUnreachable):
            self._set_dest_aside(dest)
        return failure

    def stop(self) -> Deferred[None]:
        """Refuse new calls and stop the transport (its pending requests fail)."""
        self._stopped = True
        return self.transport.stop()


_new_tuple = tuple.__new__


def _check_limit(name: str, value: int | None) -> None:
    """ValueError unless ``value`` is None or an integer of at least 1."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be an integer of at least 1, not {value!r}")
