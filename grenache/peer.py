"""Transport-neutral Grenache peers: RPC client and server, publisher and subscriber.

A peer finds other peers through a link (``lookup`` / ``start_announcing``) and talks to them
through a transport object (HTTP, WebSocket, ZeroMQ: ``grenache.transports``). This module
knows no transport (DESIGN.md): it defines what a transport must provide, as
:class:`typing.Protocol` classes, and the algorithms that sit above it, which follow
grenache-nodejs-base 1.0.0 (reference §5) except where DESIGN.md decides otherwise:

- every request has a **finite** timeout (Node 1.0.0 waits forever without ``opts.timeout``);
- a destination whose connection is refused is **set aside** for a while and the request is
  sent at once to another destination, without using up a retry, so a dead service that is
  still announced does not fail calls while a live one exists;
- a subscriber **resubscribes** with backoff when its publisher goes away.

The link is any object with Grenache link methods: ``lookup(name) -> Deferred[list[str]]``
(failing with :class:`~grenache.errors.LookupEmpty`), ``start_announcing(name, port) ->
Deferred[int]`` and ``stop_announcing(name, port)``.
"""

from __future__ import annotations

import functools
import inspect
import os
import random
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, Generic, Protocol, TypeVar

import attrs
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    FirstError,
    fail,
    succeed,
)
from twisted.logger import Logger
from twisted.python.failure import Failure

from grenache import errors

__all__ = [
    "ClientTransport",
    "Handler",
    "OutgoingRequest",
    "PeerPub",
    "PeerRPCClient",
    "PeerRPCServer",
    "PeerSub",
    "PubTransport",
    "Request",
    "ServerTransport",
    "StreamClientTransport",
    "SubConnection",
    "SubTransport",
    "call_handler",
    "error_message",
]

log = Logger()
T = TypeVar("T")


# --- values ------------------------------------------------------------------------------


@attrs.frozen
class Request:
    """One RPC request as a handler receives it.

    ``rid`` is whatever JSON value the client sent (Node clients send a UUID string, and the
    reply must echo it unchanged). ``peer_certificate`` is the TLS client certificate's
    fingerprint in Node's format (SHA-1 of the DER, uppercase hex pairs joined by ``:``) or
    ``None`` when there is no TLS or the client sent no certificate; ``peer_certificate_der``
    is the same certificate as DER, for other formats or full inspection.
    """

    rid: Any
    key: str
    payload: Any
    peer_certificate: str | None = None
    peer_certificate_der: bytes | None = None


Handler = Callable[[Request], Any]
"""Answers a request with a value, a Deferred or a coroutine. An exception (raised or as a
failed Deferred) becomes the reply's error string (see :func:`error_message`)."""


@attrs.frozen
class OutgoingRequest:
    """One RPC request as the client hands it to a transport.

    ``timeout`` is in seconds and always finite; the transport enforces it (it knows how to
    abandon the exchange) and fails with :class:`~grenache.errors.RequestTimeout`.
    ``compress`` asks for gzip bodies both ways where the transport supports it.
    """

    rid: str
    key: str
    payload: Any
    timeout: float
    compress: bool = False


# --- transport protocols -----------------------------------------------------------------


class ServerTransport(Protocol):
    """The server side of an RPC transport."""

    def listen(self, port: int, serve: Callable[[Request], Deferred[Any]]) -> Deferred[int]:
        """Listen on ``port`` (0: any) and fire with the bound port.

        For each request, call ``serve``: it fires with the result to send, or fails with the
        error whose :func:`error_message` is to be sent.
        """
        ...

    def stop(self) -> Deferred[None]:
        """Stop listening and close open connections."""
        ...


class ClientTransport(Protocol):
    """The client side of an RPC transport."""

    def request(self, dest: str, request: OutgoingRequest) -> Deferred[Any]:
        """Send ``request`` to ``dest`` (``"ip:port"``) and fire with the reply's result.

        Fails with :class:`~grenache.errors.RemoteError` (the reply's error string),
        :class:`~grenache.errors.RequestTimeout`, :class:`~grenache.errors.TransportClosed`,
        :class:`~grenache.errors.DestinationUnreachable` (no connection could be made: the
        request certainly never reached a handler) or :class:`~grenache.errors.RequestTooLarge`.
        """
        ...

    def stop(self) -> Deferred[None]:
        """Close connections; pending requests fail with TransportClosed."""
        ...


class StreamClientTransport(ClientTransport, Protocol):
    """A client transport that also opens streams (HTTP only in Grenache, reference §6.6)."""

    def stream(
        self, dest: str, key: str, *, headers: Mapping[str, Any] | None, timeout: float
    ) -> Deferred[Any]:
        """Open a stream for ``key`` to ``dest``; fires with the transport's stream object.

        Fails with :class:`~grenache.errors.DestinationUnreachable` when no connection could
        be made (nothing was sent).
        """
        ...


class PubTransport(Protocol):
    """The publishing side of a pub/sub transport."""

    def listen(self, port: int) -> Deferred[int]:
        """Listen on ``port`` (0: any) and fire with the bound port."""
        ...

    def publish(self, message: str | bytes) -> int:
        """Send ``message`` to every subscriber; return how many it was sent to."""
        ...

    def stop(self) -> Deferred[None]:
        """Stop listening and disconnect subscribers."""
        ...


class SubConnection(Protocol):
    """One subscription connection made by a :class:`SubTransport`."""

    def close(self) -> None:
        """Close the connection (``on_close`` is then called)."""
        ...


class SubTransport(Protocol):
    """The subscribing side of a pub/sub transport."""

    def connect(
        self,
        dest: str,
        on_message: Callable[[str | bytes], None],
        on_close: Callable[[], None],
    ) -> Deferred[SubConnection]:
        """Connect to the publisher at ``dest``; fires once connected.

        ``on_message`` is called for each message and ``on_close`` once when an established
        connection ends (for any reason). A failed connection attempt fails the Deferred
        (with :class:`~grenache.errors.DestinationUnreachable` when refused) and never calls
        ``on_close``.
        """
        ...

    def stop(self) -> Deferred[None]:
        """Close every connection."""
        ...


# --- helpers shared by transports --------------------------------------------------------


def error_message(error: BaseException | Failure) -> str:
    """The error string a reply carries for ``error`` (Node sends ``err.message``).

    A :class:`~grenache.errors.GrenacheError` sends its ``message``; any other exception its
    ``str()``. An empty message would read as *success* on a Node client (it tests ``err``
    for truthiness), so the exception's class name is sent instead.
    """
    exc = error.value if isinstance(error, Failure) else error
    text = exc.message if isinstance(exc, errors.GrenacheError) else str(exc)
    return text or type(exc).__name__


def call_handler(handler: Handler, request: Request) -> Deferred[Any]:
    """Call ``handler`` and return a Deferred of its outcome, whatever form it takes.

    A plain value, a Deferred, a coroutine or any other awaitable is accepted; an exception
    raised synchronously becomes a failed Deferred.
    """
    try:
        result = handler(request)
    except Exception:
        return fail()
    if isinstance(result, Deferred):
        return result
    if isinstance(result, Coroutine):
        return Deferred.fromCoroutine(result)
    if inspect.isawaitable(result):
        return Deferred.fromCoroutine(_await(result))
    return succeed(result)


async def _await(awaitable: Awaitable[T]) -> T:
    return await awaitable


class _RandomBytes:
    """``os.urandom`` read 4 KiB at a time: one system call per 256 request ids.

    Emptied in a forked child, so parent and child never hand out the same bytes.
    """

    __slots__ = ("_buffer", "_pos")

    def __init__(self) -> None:
        self._buffer = b""
        self._pos = 0

    def take(self, n: int) -> bytes:
        """``n`` (at most 4096) fresh random bytes."""
        pos = self._pos
        end = pos + n
        if end > len(self._buffer):
            self._buffer = os.urandom(4096)
            pos, end = 0, n
        self._pos = end
        return self._buffer[pos:end]

    def reset(self) -> None:
        self._buffer = b""
        self._pos = 0


random_bytes = _RandomBytes()
"""Random bytes from ``os.urandom`` for request ids and WebSocket masking keys."""
os.register_at_fork(after_in_child=random_bytes.reset)


def new_rid() -> str:
    """A fresh request id: a lowercase, dashed UUID v4 string, as the Node libraries send.

    Built from ``os.urandom`` directly (:data:`random_bytes`): the same bits as
    ``str(uuid.uuid4())`` at a fraction of the cost, on the path of every request.
    """
    b = bytearray(random_bytes.take(16))
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _default_reactor() -> Any:
    """The global reactor, imported only when a caller did not inject one."""
    from twisted.internet import reactor

    return reactor


# --- RPC server ----------------------------------------------------------------------------


_ListeningT = TypeVar("_ListeningT", ServerTransport, PubTransport)


class _AnnouncedListener(Generic[_ListeningT]):
    """What :class:`PeerRPCServer` and :class:`PeerPub` share: the port their transport
    listens on, announcing that port by name through ``link``, and stopping both.

    ``link`` may be ``None`` for a peer that is only reached directly (tests, fixed
    addresses); :meth:`announce` then fails.
    """

    def __init__(self, link: Any, transport: _ListeningT) -> None:
        self.link = link
        self.transport: _ListeningT = transport
        self._port: int | None = None
        self._announced: list[tuple[str, int]] = []
        self._stopped = False

    @property
    def port(self) -> int:
        """The port the transport listens on; raises RuntimeError before :meth:`listen`."""
        if self._port is None:
            raise RuntimeError(f"{type(self).__name__}.listen() has not completed")
        return self._port

    def _bound(self, actual: int) -> int:
        self._port = actual
        return actual

    def announce(self, name: str) -> Deferred[int]:
        """Announce ``name`` on the bound port until :meth:`stop` (link.start_announcing)."""
        if self.link is None:
            return fail(RuntimeError(f"{type(self).__name__} has no link to announce with"))
        port = self.port
        self._announced.append((name, port))
        return self.link.start_announcing(name, port)  # type: ignore[no-any-return]

    def stop(self) -> Deferred[None]:
        """Stop announcing, then stop the transport."""
        if self._stopped:
            return succeed(None)
        self._stopped = True
        for name, port in self._announced:
            try:
                self.link.stop_announcing(name, port)
            except Exception:
                log.failure("stop_announcing({name}, {port}) failed", name=name, port=port)
        self._announced.clear()
        return self.transport.stop()


class PeerRPCServer(_AnnouncedListener[ServerTransport]):
    """Serves ``handler`` over a server transport and announces it through ``link``.

    ``link`` may be ``None`` for a server that is only reached directly (tests, fixed
    addresses); :meth:`announce` then fails.
    """

    def __init__(self, link: Any, transport: ServerTransport, handler: Handler) -> None:
        super().__init__(link, transport)
        self.handler = handler

    def listen(self, port: int = 0) -> Deferred[int]:
        """Start the transport on ``port`` (0: any) and fire with the bound port."""
        return self.transport.listen(port, self._serve).addCallback(self._bound)

    def _serve(self, request: Request) -> Deferred[Any]:
        return call_handler(self.handler, request)


# --- RPC client ----------------------------------------------------------------------------


class PeerRPCClient:
    """Sends requests to services looked up by name (reference §5.2, with finite timeouts).

    ``timeout`` (seconds) applies to each attempt when a call does not give its own.
    ``unreachable_backoff`` is how long a destination that refused a connection is left out
    of the choice (unless every destination is left out). ``rng`` makes the random choices
    reproducible in tests.
    """

    def __init__(
        self,
        link: Any,
        transport: ClientTransport,
        *,
        timeout: float = 10.0,
        unreachable_backoff: float = 10.0,
        reactor: Any = None,
        rng: random.Random | None = None,
    ) -> None:
        if not timeout > 0:
            raise ValueError("timeout must be a positive number of seconds")
        self.link = link
        self.transport = transport
        self.timeout = timeout
        self.unreachable_backoff = unreachable_backoff
        self._reactor = reactor if reactor is not None else _default_reactor()
        self._rng = rng if rng is not None else random.Random()
        self._set_aside: dict[str, float] = {}  # dest -> clock time it may be chosen again
        self._stopped = False

    # --- destination choice ---

    def _now(self) -> float:
        return self._reactor.seconds()  # type: ignore[no-any-return]

    def _set_dest_aside(self, dest: str) -> None:
        self._set_aside[dest] = self._now() + self.unreachable_backoff
        log.info(
            "Destination {dest} refused the connection; left out for {seconds} s",
            dest=dest,
            seconds=self.unreachable_backoff,
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

    def choose(self, dests: Sequence[str], exclude: set[str] | frozenset[str] = frozenset()) -> str:
        """Pick a destination at random among those not set aside and not in ``exclude``."""
        candidates = [d for d in dests if d not in exclude] if exclude else list(dests)
        if not candidates:
            raise ValueError("no destination to choose from")
        return self._rng.choice(self._usable(candidates))

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
    ) -> Deferred[Any]:
        """Look ``key`` up, send ``payload`` to one of its destinations, fire with the result.

        ``retry`` is the number of attempts (Node's ``opts.retry``, at least 1); any failure
        other than a refused connection uses one up, and each attempt picks a destination
        afresh. A refused connection sets the destination aside and tries another one at
        once; when every destination has refused, the call fails with
        :class:`~grenache.errors.DestinationUnreachable`.
        """
        if self._stopped:
            return fail(errors.TransportClosed("ERR_TRANSPORT_CLOSE: client stopped"))
        try:
            t = self._call_timeout(timeout)
        except ValueError as e:
            return fail(e)
        # Callbacks rather than a coroutine: this is the hot path of every call.
        d: Deferred[Any] = self.link.lookup(key)
        attempts = max(1, int(retry))
        dests: Any = d.result if d.called and not d.paused else None
        if dests is not None and not isinstance(dests, Failure):
            # Answered at once (a cache hit): go on now rather than chain the transport's
            # Deferred onto this one (a quarter of the peer's own time per request).
            try:
                return self._first_attempt(dests, key, payload, t, attempts, compress)
            except Exception:
                return fail()
        return d.addCallback(self._first_attempt, key, payload, t, attempts, compress)

    def _first_attempt(
        self,
        dests: list[str],
        key: str,
        payload: Any,
        timeout: float,
        attempts: int,
        compress: bool,
    ) -> Deferred[Any]:
        if not dests:
            raise errors.LookupEmpty()
        return self._attempt(dests, key, payload, timeout, attempts, compress, None)

    def _attempt(
        self,
        dests: list[str],
        key: str,
        payload: Any,
        timeout: float,
        attempts: int,
        compress: bool,
        refused: set[str] | None,
    ) -> Deferred[Any]:
        dest = self.choose(dests, refused or frozenset())
        d = self.transport.request(
            dest, OutgoingRequest(new_rid(), key, payload, timeout, compress)
        )
        return d.addErrback(
            self._attempt_failed, dest, dests, key, payload, timeout, attempts, compress, refused
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
        return self._attempt(dests, key, payload, timeout, attempts, compress, refused)

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
            d = self.transport.request(dest, self._outgoing(key, payload, timeout, compress))
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
    ) -> Deferred[Any]:
        """Look ``key`` up and open a stream to one of its destinations (Node's ``stream``).

        Only for transports that have streams (``transport.stream``, see
        :class:`StreamClientTransport`; HTTP's fires with a
        :class:`~grenache.transports.http.ClientStream`); others fail with
        ``NotImplementedError``. ``headers`` are the extra headers (e.g. ``_a``/``_ar``);
        ``timeout`` (default: the client's) is the stream's idle timeout. A destination that
        refuses the connection is set aside and another one is tried, as for requests;
        nothing else is retried (a stream's body cannot be replayed).
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
        except ValueError as e:
            return fail(e)
        return Deferred.fromCoroutine(self._stream(open_stream, key, headers, t))

    async def _stream(
        self,
        open_stream: Callable[..., Deferred[Any]],
        key: str,
        headers: Mapping[str, Any] | None,
        timeout: float,
    ) -> Any:
        dests: list[str] = await self.link.lookup(key)
        if not dests:
            raise errors.LookupEmpty()
        refused: set[str] = set()
        while True:
            dest = self.choose(dests, refused)
            try:
                return await open_stream(dest, key, headers=headers, timeout=timeout)
            except errors.DestinationUnreachable:
                self._set_dest_aside(dest)
                refused.add(dest)
                if len(refused) >= len(set(dests)):
                    raise

    def _note_unreachable(self, failure: Failure, dest: str) -> Failure:
        if failure.check(errors.DestinationUnreachable):
            self._set_dest_aside(dest)
        return failure

    def stop(self) -> Deferred[None]:
        """Refuse new calls and stop the transport (its pending requests fail)."""
        self._stopped = True
        return self.transport.stop()


# --- pub/sub ---------------------------------------------------------------------------------


class PeerPub(_AnnouncedListener[PubTransport]):
    """Publishes messages to every connected subscriber and announces itself by name."""

    def listen(self, port: int = 0) -> Deferred[int]:
        """Start the transport on ``port`` (0: any) and fire with the bound port."""
        return self.transport.listen(port).addCallback(self._bound)

    def pub(self, message: str | bytes) -> int:
        """Send ``message`` to every subscriber; return how many it was sent to."""
        return self.transport.publish(message)


_EVENTS = ("message", "connected", "disconnected")


class _Subscription:
    """One name a :class:`PeerSub` follows: its current connection and reconnect state."""

    def __init__(self, peer: PeerSub, name: str) -> None:
        self.peer = peer
        self.name = name
        self.connection: SubConnection | None = None
        self.dest: str | None = None
        self.delay = peer.backoff_initial
        self.timer: Any = None
        self.closed = False

    async def connect_once(self, avoid: str | None) -> None:
        """Look the name up and connect to a publisher, trying each until one accepts."""
        peer = self.peer
        dests: list[str] = await peer.link.lookup(self.name)
        if not dests:
            raise errors.LookupEmpty()
        # Other publishers first (in random order), the one just lost last.
        candidates = [d for d in dests if d != avoid]
        peer._rng.shuffle(candidates)
        if avoid is not None and avoid in dests:
            candidates.append(avoid)
        last: BaseException | None = None
        for dest in candidates:
            if self.closed:
                raise CancelledError()
            try:
                conn = await peer.transport.connect(
                    dest, self._on_message, functools.partial(self._on_close, dest)
                )
            except CancelledError:
                raise
            except Exception as e:
                last = e
                continue
            if self.closed:
                conn.close()
                raise CancelledError()
            self.connection = conn
            self.dest = dest
            self.delay = peer.backoff_initial
            peer._emit("connected", self.name, dest)
            return
        assert last is not None
        raise last

    def _on_message(self, message: str | bytes) -> None:
        self.peer._emit("message", message)

    def _on_close(self, dest: str) -> None:
        if self.dest != dest:
            return
        self.connection = None
        self.dest = None
        self.peer._emit("disconnected", self.name, dest)
        if not self.closed and self.peer.resubscribe:
            self._schedule(dest)

    def _schedule(self, avoid: str | None) -> None:
        delay = self.delay
        self.delay = min(self.delay * 2, self.peer.backoff_max)
        self.timer = self.peer._reactor.callLater(delay, self._retry, avoid)

    def _retry(self, avoid: str | None) -> None:
        self.timer = None
        if self.closed:
            return

        def failed(failure: Failure) -> None:
            if self.closed or failure.check(CancelledError):
                return
            log.debug(
                "Resubscribing to {name} failed ({error}); retrying",
                name=self.name,
                error=error_message(failure),
            )
            self._schedule(avoid)

        Deferred.fromCoroutine(self.connect_once(avoid)).addErrback(failed)

    def close(self) -> None:
        self.closed = True
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        conn, self.connection = self.connection, None
        if conn is not None:
            conn.close()


class PeerSub:
    """Subscribes to publishers by name and resubscribes when a publisher goes away.

    Events (see :meth:`add_listener`): ``"message"`` ``(message)`` for each message,
    ``"connected"`` ``(name, dest)`` and ``"disconnected"`` ``(name, dest)``. The attributes
    ``on_message``, ``on_connected`` and ``on_disconnected`` may also be set to a callable.
    With ``resubscribe`` (the default) a lost connection is replaced after a backoff that
    doubles from ``backoff_initial`` up to ``backoff_max`` seconds, preferring another
    publisher when the name has several. Disconnects are events, never logged tracebacks.
    """

    def __init__(
        self,
        link: Any,
        transport: SubTransport,
        *,
        resubscribe: bool = True,
        reactor: Any = None,
        backoff_initial: float = 0.1,
        backoff_max: float = 2.0,
        rng: random.Random | None = None,
    ) -> None:
        self.link = link
        self.transport = transport
        self.resubscribe = resubscribe
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._reactor = reactor if reactor is not None else _default_reactor()
        self._rng = rng if rng is not None else random.Random()
        self._subscriptions: dict[str, _Subscription] = {}
        self._listeners: dict[str, list[Callable[..., Any]]] = {e: [] for e in _EVENTS}
        self.on_message: Callable[[str | bytes], Any] | None = None
        self.on_connected: Callable[[str, str], Any] | None = None
        self.on_disconnected: Callable[[str, str], Any] | None = None
        self._stopped = False

    def add_listener(self, event: str, fn: Callable[..., Any]) -> None:
        """Call ``fn`` on ``event`` (``"message"``, ``"connected"`` or ``"disconnected"``)."""
        if event not in self._listeners:
            raise ValueError(f"unknown event {event!r}; expected one of {_EVENTS}")
        self._listeners[event].append(fn)

    def remove_listener(self, event: str, fn: Callable[..., Any]) -> None:
        """Stop calling ``fn`` on ``event``."""
        self._listeners[event].remove(fn)

    def _emit(self, event: str, *args: Any) -> None:
        fns = list(self._listeners[event])
        attr = getattr(self, "on_" + event)
        if attr is not None:
            fns.append(attr)
        for fn in fns:
            try:
                fn(*args)
            except Exception:
                log.failure("PeerSub {event} listener failed", event=event)

    @property
    def subscriptions(self) -> dict[str, str | None]:
        """Each subscribed name and the publisher it is connected to (``None`` while not)."""
        return {name: s.dest for name, s in self._subscriptions.items()}

    def sub(self, name: str) -> Deferred[None]:
        """Subscribe to ``name``; fires once connected to one of its publishers.

        The first connection is tried on each looked-up publisher in random order; if none
        accepts (or the lookup fails) the Deferred fails and nothing is retried. After a
        successful connection, losses are handled by resubscribing.
        """
        if self._stopped:
            return fail(errors.TransportClosed("ERR_TRANSPORT_CLOSE: subscriber stopped"))
        if name in self._subscriptions:
            return succeed(None)
        subscription = _Subscription(self, name)
        self._subscriptions[name] = subscription

        def failed(failure: Failure) -> Failure:
            if self._subscriptions.get(name) is subscription:
                del self._subscriptions[name]
            subscription.close()
            return failure

        d = Deferred.fromCoroutine(subscription.connect_once(None))
        d.addErrback(failed)
        return d

    def unsub(self, name: str) -> None:
        """Stop following ``name`` and close its connection."""
        subscription = self._subscriptions.pop(name, None)
        if subscription is not None:
            subscription.close()

    def stop(self) -> Deferred[None]:
        """Close every subscription and stop the transport."""
        self._stopped = True
        for name in list(self._subscriptions):
            self.unsub(name)
        return self.transport.stop()
