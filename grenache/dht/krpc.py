"""KRPC over UDP, byte-compatible with Node's k-rpc 5.1.0 / k-rpc-socket 1.11.1.

One :class:`KRPCProtocol` is the DHT's single UDP socket: it sends our queries, answers the
queries other nodes send us, and matches their responses to our pending requests.  What it does
on the wire is described in docs/protocol.rst, *DHT messages*:

* Outgoing messages are canonical bencode (sorted keys, ``None`` omitted) with exactly the
  top-level keys ``a,q,t,y`` / ``r,t,y`` / ``e,t,y`` and no ``v``, so they are byte-identical to
  what a Node grape sends.
* Our transaction ids are a 2-byte big-endian counter (1..65535, never 0), like Node's.  Incoming
  ``t`` values are echoed verbatim whatever their length.
* A response matches a request by the first two bytes of ``t`` and by the source **IP** (the
  port is not checked, as in Node).
* Timeouts work like k-rpc-socket's: no timer per request, but one sweep every ``timeout / 4``
  seconds, and a request fails on the fifth sweep after it was sent (2.0 to 2.5 s by default).
  Sweeps are numbered from the clock, so a late timer (or a test's ``Clock.advance(5)``) counts
  every sweep period that passed, not just one.
* At most ``concurrency`` (16) requests are in flight; further queries wait in a FIFO.
* Nothing a remote sends can raise out of :meth:`KRPCProtocol.datagramReceived`, and nothing
  it sends is logged one line per datagram: every datagram ends in one outcome counted in
  :attr:`KRPCProtocol.received` (``answered``, ``refused``, ``response``, ``dropped``), drops
  are counted per reason in :attr:`KRPCProtocol.dropped` and reported at most once a minute
  per reason (:class:`~grenache.dht.limits.DropCounter`).
* Incoming queries pass a per-source rate limit first
  (:class:`~grenache.dht.limits.QueryRateLimiter`); what exceeds it is dropped unanswered.

Decoding uses ``bencode2`` (strict and fast).  Node's decoder is lenient (unsorted or duplicate
keys, leading zeros and trailing bytes are accepted), so a message ``bencode2`` refuses is retried
with a small lenient decoder before it is dropped.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from typing import Any

import attrs
import bencode2
from twisted.internet.abstract import isIPAddress
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from grenache.dht.limits import DropCounter, QueryRateLimiter
from grenache.errors import KRPCClosed, KRPCError, KRPCTimeout, KRPCUnexpectedNode

__all__ = [
    "Address",
    "KRPCProtocol",
    "QueryHandler",
    "Response",
    "decode_message",
    "encode_error",
    "encode_query",
    "encode_response",
]

Address = tuple[str, int]
"""An IPv4 address as Twisted's UDP transport uses it: ``(dotted quad, port)``."""

QueryHandler = Callable[[str, dict[str, Any], Address], "dict[str, Any] | KRPCError | None"]
"""Answers one incoming query.

Called with the query name (``"get_peers"``), the ``a`` dict (str keys, values as decoded) and
the source address.  Returns the ``r`` dict to send (without ``id``: the protocol adds its own),
a :class:`KRPCError` to send as a ``y=e`` error, or ``None`` to send nothing (Node's silent
drops).  Raising :class:`KRPCError` is the same as returning it; any other exception is logged
and nothing is sent.
"""

NodeSeen = Callable[[bytes, Address], None]
"""Told about every valid 20-byte node id that sent us a query or a response."""

NodeTimedOut = Callable[[Address], None]
"""Told about every address a query of ours timed out on (and, as ``on_answer``, about every
address that answered one)."""

#: Drop reasons that are normal in a healthy network: reported at debug level only.
QUIET_DROPS = frozenset({"late or unexpected response"})

#: Keys that a Node grape reads as byte strings and dies on when they are not.
_MUST_BE_BYTES = ("target", "info_hash")

#: Deepest nesting the lenient decoder follows; KRPC messages nest three or four levels.
_MAX_DEPTH = 64

_TID_LIMIT = 0xFFFF

#: Sweeps a request survives; it fails on the next one (k-rpc-socket's ``ttl: 4``).
_TTL = 4

#: Background queries (see :meth:`KRPCProtocol.query`) in flight at once; past it a
#: background query waits for an ordinary slot.
MAX_BACKGROUND = 64

#: Slack when turning clock time into a sweep number, against float rounding.
_EPSILON = 1e-6


@attrs.frozen
class Response:
    """A successful (``y=r``) reply to one of our queries."""

    r: dict[str, Any]
    """The ``r`` dict with str keys; values as decoded (bytes, int, list, dict)."""

    addr: Address
    """The address the reply came from (same IP as the query's; the port may differ)."""


# --- encoding -----------------------------------------------------------------------------


_CONTAINERS = (dict, list, tuple)


def _strip_none(value: Any) -> Any:
    """Drop ``None`` dict values and list items, recursively, as Node's bencode encoder does."""
    # Scalars are kept without a call: this runs on every query we send.
    if isinstance(value, dict):
        return {
            k: _strip_none(v) if isinstance(v, _CONTAINERS) else v
            for k, v in value.items()
            if v is not None
        }
    if isinstance(value, (list, tuple)):
        return [_strip_none(v) if isinstance(v, _CONTAINERS) else v for v in value if v is not None]
    return value


def _bstring(data: bytes) -> bytes:
    return b"%d:%s" % (len(data), data)


def _check_query_args(a: dict[str, Any]) -> None:
    """Refuse arguments that would crash a Node 10.0.0 grape (docs/protocol.rst, *DHT messages*)."""
    for key in _MUST_BE_BYTES:
        if key in a and not isinstance(a[key], bytes):
            raise ValueError(f"KRPC argument {key!r} must be bytes, not {type(a[key]).__name__}")


def _encode_args(a: dict[str, Any]) -> bytes:
    """Validate and bencode a query's ``a`` dict (``None`` values dropped)."""
    stripped = _strip_none(a)
    _check_query_args(stripped)
    try:
        return bencode2.bencode(stripped)
    except Exception as e:  # bencode2 raises TypeError / BencodeEncodeError
        raise ValueError(f"cannot bencode KRPC arguments: {e}") from e


def _frame_query(t: bytes, q: bytes, encoded_a: bytes) -> bytes:
    # a < q < t < y: splicing the pre-encoded ``a`` keeps the message canonical.
    return b"d1:a" + encoded_a + b"1:q" + _bstring(q) + b"1:t" + _bstring(t) + b"1:y1:qe"


def encode_query(t: bytes, q: str, a: dict[str, Any]) -> bytes:
    """Bencode a query exactly as Node does: ``{a, q, t, y: "q"}``.

    ``a`` is sent as given (it must already hold ``id``); ``None`` values are omitted.  Raises
    ``ValueError`` for arguments that cannot be encoded or that would crash a Node grape.
    """
    return _frame_query(t, q.encode("utf-8"), _encode_args(a))


def encode_response(t: bytes, r: dict[str, Any]) -> bytes:
    """Bencode a response ``{r, t, y: "r"}`` (``r`` must already hold ``id``)."""
    return bencode2.bencode({"r": _strip_none(r), "t": t, "y": b"r"})


def encode_error(t: bytes, code: int, text: str) -> bytes:
    """Bencode an error ``{e: [code, text], t, y: "e"}``."""
    return bencode2.bencode({"e": [code, text.encode("utf-8")], "t": t, "y": b"e"})


# --- decoding -----------------------------------------------------------------------------


def _lenient_string(data: bytes, i: int) -> tuple[bytes, int]:
    colon = data.index(b":", i)
    digits = data[i:colon]
    if not digits.isdigit():
        raise ValueError(f"bad string length at {i}")
    start = colon + 1
    end = start + int(digits)
    if end > len(data):
        raise ValueError("truncated string")
    return data[start:end], end


def _lenient_value(data: bytes, i: int, depth: int) -> tuple[Any, int]:
    if depth > _MAX_DEPTH:
        raise ValueError("nested too deeply")
    c = data[i : i + 1]
    if c == b"i":
        end = data.index(b"e", i)
        digits = data[i + 1 : end]
        if not digits.lstrip(b"-").isdigit():
            raise ValueError(f"bad integer at {i}")
        return int(digits), end + 1
    if c == b"l":
        i += 1
        items: list[Any] = []
        while data[i : i + 1] != b"e":
            if i >= len(data):
                raise ValueError("truncated list")
            item, i = _lenient_value(data, i, depth + 1)
            items.append(item)
        return items, i + 1
    if c == b"d":
        i += 1
        d: dict[bytes, Any] = {}
        while data[i : i + 1] != b"e":
            if i >= len(data):
                raise ValueError("truncated dict")
            key, i = _lenient_string(data, i)
            d[key], i = _lenient_value(data, i, depth + 1)
        return d, i + 1
    return _lenient_string(data, i)


def decode_message(data: bytes) -> Any:
    """Decode one datagram as Node's ``bencode.decode`` would accept it.

    Canonical input goes through ``bencode2``.  Anything it refuses is retried leniently:
    unsorted and duplicate keys (the last wins), leading zeros and trailing bytes are accepted,
    as they are by Node.  Truncated or malformed input raises ``ValueError``.  Dict keys stay
    ``bytes``.
    """
    try:
        return bencode2.bdecode(data)
    except Exception:
        pass
    value, _ = _lenient_value(data, 0, 0)
    return value


def _str_keys(d: dict[Any, Any]) -> dict[str, Any]:
    """Top-level keys as str (UTF-8, bad bytes replaced), as Node turns Buffer keys into strings."""
    return {
        (k.decode("utf-8", "replace") if isinstance(k, bytes) else str(k)): v for k, v in d.items()
    }


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _error_from(e: Any) -> KRPCError:
    """Build the error for a ``y=e`` reply, tolerating malformed ``e`` like k-rpc-socket does.

    Node uses ``e[0]`` as the code when it is a number (else 0) and joins the list with spaces for
    the message (``"Unknown error"`` when ``e`` is not a list).
    """
    if not isinstance(e, list):
        return KRPCError(0, "Unknown error")
    if e and isinstance(e[0], int) and not isinstance(e[0], bool):
        return KRPCError(e[0], " ".join(_text(x) for x in e[1:]))
    return KRPCError(0, " ".join(_text(x) for x in e))


# --- the protocol ---------------------------------------------------------------------------


@attrs.define(eq=False)
class _Request:
    """One query of ours: queued (``tid == 0``) or in flight."""

    addr: Address
    q: bytes
    encoded_a: bytes
    node_id: bytes | None
    deferred: Deferred[Response]
    tid: int = 0
    born: int = 0
    """Number of the last sweep before the request was sent."""
    background: bool = False
    """Sent outside the in-flight limit; its timeout is not reported (see ``query``)."""


class _NotifyingDropCounter(DropCounter):
    """A :class:`DropCounter` that also tells ``on_drop`` (the grape's ``warning`` event)."""

    on_drop: Callable[[str, Any], None] | None = None

    def count(self, reason: str, addr: Any, failure: Any = None) -> None:
        super().count(reason, addr, failure)
        on_drop = self.on_drop
        if on_drop is not None:
            try:
                on_drop(reason, addr)
            except Exception:
                self._log.failure("on_drop failed for {reason}", reason=reason)


class KRPCProtocol(DatagramProtocol):
    """The DHT's UDP socket: KRPC queries out, answers in, and a server for incoming queries.

    ``clock`` drives timeouts (a ``Clock`` in tests).  ``handle_query`` answers incoming queries
    (see :data:`QueryHandler`); ``on_node_seen`` hears about every node that talks to us with a
    valid 20-byte id, which is how Node feeds its routing table.  Both are public attributes and
    may be replaced after construction.

    Listen with ``maxPacketSize=65535``: Node's replies can be far larger than Twisted's default
    8192 bytes (docs/protocol.rst, *DHT messages*).

    ``rate_limiter`` (None: no limit) is asked once per incoming query with the source IP;
    ``on_timeout`` hears about every address a query of ours timed out on, ``on_answer`` about
    every address that answered one (``y=r`` or ``y=e``). A queued query whose address
    ``skip_queued`` says is down by the time a slot frees up is not sent: it fails with
    :class:`KRPCTimeout` at once, so that queries to a dead node queued before it was known
    dead do not each wait out a timeout. ``on_drop(reason, addr)`` (None: nobody) hears about
    every datagram dropped and every send that failed. Counters, all public
    and only ever incremented: :attr:`received` (the outcome of every datagram), :attr:`dropped`
    (per reason) and :attr:`refused` (error replies sent, per code).
    """

    noisy = False
    log = Logger()

    def __init__(
        self,
        node_id: bytes,
        clock: IReactorTime,
        handle_query: QueryHandler,
        on_node_seen: NodeSeen | None = None,
        timeout: float = 2.0,
        concurrency: int = 16,
        rate_limiter: QueryRateLimiter | None = None,
        on_timeout: NodeTimedOut | None = None,
        on_answer: NodeTimedOut | None = None,
        skip_queued: Callable[[Address], bool] | None = None,
    ) -> None:
        if not 1 <= concurrency < _TID_LIMIT:
            raise ValueError("concurrency must be between 1 and 65534")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.node_id = node_id
        self.clock = clock
        # Bound once; also keeps mypy (without the zope plugin) from misreading the interface.
        self._call_later: Callable[..., IDelayedCall] = clock.callLater
        self._seconds: Callable[[], float] = clock.seconds  # type: ignore[misc]
        self.handle_query = handle_query
        self.on_node_seen = on_node_seen
        self.on_timeout = on_timeout
        self.on_answer = on_answer
        self.skip_queued = skip_queued
        self.rate_limiter = rate_limiter
        #: Every datagram received, by outcome: ``answered`` (a query answered ``y=r``),
        #: ``refused`` (a query answered ``y=e``), ``response`` (a reply to one of our queries)
        #: or ``dropped``; the values always add up to the number of datagrams received.
        self.received: Counter[str] = Counter()
        self.drops = _NotifyingDropCounter(self._seconds, self.log, quiet=QUIET_DROPS)
        #: Dropped datagrams (and failed sends, ``send failed``) per reason.
        self.dropped: Counter[str] = self.drops.counts
        #: Error replies sent, per KRPC error code.
        self.refused: Counter[int] = Counter()
        # (query name, "sent" or "received", outcome): the metrics' grenache_dht_queries_total.
        self.queries: Counter[tuple[str, str, str]] = Counter()
        self.timeout = timeout
        self.concurrency = concurrency
        self._tick = 0
        self._outstanding: dict[int, _Request] = {}
        self._background = 0  # background requests among _outstanding
        self._queue: deque[_Request] = deque()
        self._period = timeout / 4
        self._sweep_call: IDelayedCall | None = None
        self._epoch = 0.0  # clock time of sweep number 0 (sweeps run only while busy)
        self._next_sweep = 1  # number of the sweep _sweep_call is scheduled for
        self._running = False

    @property
    def on_drop(self) -> Callable[[str, Any], None] | None:
        """Told ``(reason, addr)`` for every dropped datagram and failed send (None: nobody)."""
        return self.drops.on_drop

    @on_drop.setter
    def on_drop(self, fn: Callable[[str, Any], None] | None) -> None:
        self.drops.on_drop = fn

    # -- lifecycle ------------------------------------------------------------------------

    def startProtocol(self) -> None:
        """The socket is open: queries may be sent."""
        self._running = True

    def stopProtocol(self) -> None:
        """The socket closed: fail every pending and queued query with :class:`KRPCClosed`."""
        self._running = False
        self._stop_sweep()
        requests = [*self._outstanding.values(), *self._queue]
        self._outstanding.clear()
        self._background = 0
        self._queue.clear()
        for req in requests:
            req.deferred.errback(KRPCClosed())

    # -- client side ------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Queries sent and still waiting for a reply or a timeout (background ones too)."""
        return len(self._outstanding)

    @property
    def queued(self) -> int:
        """Queries waiting for a free in-flight slot."""
        return len(self._queue)

    def query(
        self,
        addr: Address,
        q: str,
        args: dict[str, Any],
        node_id: bytes | None = None,
        background: bool = False,
    ) -> Deferred[Response]:
        """Send query ``q`` with arguments ``args`` to ``addr``.

        ``args`` need not hold ``id``: our node id is added (a given ``id`` is kept, as k-rpc
        does).  ``None`` values are omitted.  When ``node_id`` is given, the reply must come from
        that node.

        The Deferred fires with a :class:`Response`, or fails with :class:`KRPCError` (the node
        answered ``y=e``), :class:`KRPCTimeout`, :class:`KRPCUnexpectedNode` or
        :class:`KRPCClosed`.  Cancelling it withdraws the query and frees its slot.

        A ``background`` query is for a message some nodes may not answer at all (a query a
        Node grape does not know, which it drops): it is sent at once, outside the
        ``concurrency`` limit (up to :data:`MAX_BACKGROUND` of them; past that it takes an
        ordinary slot), and its timeout fails the Deferred without telling ``on_timeout``, so
        a silent node is not taken for a dead one.

        Raises ``ValueError`` at once when ``addr`` is not an IPv4 address and port, or when
        ``args`` cannot be encoded or would crash a Node grape (a non-bytes ``target`` or
        ``info_hash``).
        """
        host, port = addr
        if not isIPAddress(host) or not 0 < port <= 0xFFFF:
            raise ValueError(f"KRPC peers are IPv4 address and port, not {addr!r}")
        a = dict(args)
        a.setdefault("id", self.node_id)
        encoded_a = _encode_args(a)
        if not self._running:
            return fail(KRPCClosed())

        req: _Request

        def cancel(d: Deferred[Response]) -> None:
            self._withdraw(req)

        req = _Request(addr, q.encode("utf-8"), encoded_a, node_id, Deferred(cancel))
        if background and self._background < MAX_BACKGROUND:
            req.background = True
            self._background += 1
            self._send(req)
        elif len(self._outstanding) - self._background < self.concurrency and not self._queue:
            self._send(req)
        else:
            self._queue.append(req)
        return req.deferred

    def _next_tid(self) -> int:
        """Next 2-byte transaction id: 1..65535, wrapping, skipping ids still outstanding."""
        while True:
            self._tick = self._tick % _TID_LIMIT + 1
            if self._tick not in self._outstanding:
                return self._tick

    def _send(self, req: _Request) -> None:
        req.tid = self._next_tid()
        if self._sweep_call is None:
            self._epoch = self._seconds()
            self._schedule_sweep(1)
        req.born = self._sweep_number()
        self._outstanding[req.tid] = req
        data = _frame_query(req.tid.to_bytes(2, "big"), req.q, req.encoded_a)
        # A failed send is logged and left to time out, as in Node (its send callback is a no-op).
        self._write(data, req.addr)

    def _drain(self) -> None:
        """Send queued queries while in-flight slots are free (see ``skip_queued``)."""
        skip = self.skip_queued
        skipped = []
        while (
            self._queue
            and self._running
            and len(self._outstanding) - self._background < self.concurrency
        ):
            req = self._queue.popleft()
            if skip is not None and skip(req.addr):
                self.queries[(_query_name(req.q), "sent", "skipped")] += 1
                skipped.append(req)
            else:
                self._send(req)
        for req in skipped:
            req.deferred.errback(KRPCTimeout())

    def _finish(self, req: _Request) -> None:
        """Take an in-flight request off the books and let the queue move."""
        del self._outstanding[req.tid]
        if req.background:
            self._background -= 1
        if not self._outstanding:
            self._stop_sweep()
        self._drain()

    def _withdraw(self, req: _Request) -> None:
        """Canceller: forget a queued or in-flight query."""
        if self._outstanding.get(req.tid) is req:
            self._finish(req)
        else:
            try:
                self._queue.remove(req)
            except ValueError:
                pass

    def _stop_sweep(self) -> None:
        # The sweep clears _sweep_call when it runs, so a stored call is always still active.
        if self._sweep_call is not None:
            self._sweep_call.cancel()  # type: ignore[misc]  # zope method, no mypy-zope
            self._sweep_call = None

    def _sweep_number(self) -> int:
        """How many sweep periods have passed since the sweeps (re)started."""
        return int((self._seconds() - self._epoch) / self._period + _EPSILON)

    def _schedule_sweep(self, number: int) -> None:
        self._next_sweep = number
        delay = self._epoch + number * self._period - self._seconds()
        self._sweep_call = self._call_later(max(delay, 0.0), self._sweep)

    def _sweep(self) -> None:
        """k-rpc-socket's ``check``: fail the requests that have lived through ``_TTL`` sweeps.

        State is settled (expired requests removed, next sweep scheduled, queue drained) before
        any Deferred fires, so callbacks may query or cancel freely.
        """
        self._sweep_call = None
        number = max(self._next_sweep, self._sweep_number())
        expired = [r for r in self._outstanding.values() if number - r.born > _TTL]
        for req in expired:
            del self._outstanding[req.tid]
            self.queries[(_query_name(req.q), "sent", "timeout")] += 1
            if req.background:
                self._background -= 1
        if self._running and (self._outstanding or self._queue):
            self._schedule_sweep(number + 1)
            self._drain()
        for req in expired:
            if self.on_timeout is not None and not req.background:
                try:
                    self.on_timeout(req.addr)
                except Exception:
                    self.log.failure("on_timeout failed for {addr}", addr=req.addr)
        for req in expired:
            req.deferred.errback(KRPCTimeout())

    # -- wire -----------------------------------------------------------------------------

    def _write(self, data: bytes, addr: Address) -> None:
        transport = self.transport
        if transport is None:
            return
        try:
            transport.write(data, addr)  # type: ignore  # zope interface; no mypy-zope
        except Exception as e:  # EMSGSIZE, EHOSTUNREACH, ...: never fatal for the socket
            self.drops.count(f"send failed ({type(e).__name__})", addr)

    def _drop(self, reason: str, addr: Address) -> None:
        self.received["dropped"] += 1
        self.drops.count(reason, addr)

    def datagramReceived(self, datagram: bytes, addr: Address) -> None:
        """Dispatch one datagram; never raises. Each datagram is counted in :attr:`received`."""
        try:
            self._received(datagram, addr)
        except Exception:
            self.received["dropped"] += 1
            self.drops.count("internal error", addr, Failure())

    def _received(self, datagram: bytes, addr: Address) -> None:
        if not addr[1]:
            self._drop("source port 0", addr)
            return
        try:
            message = decode_message(datagram)
        except Exception:
            self._drop("undecodable", addr)
            return
        if not isinstance(message, dict):
            self._drop("not a dictionary", addr)
            return
        y = message.get(b"y")
        t = message.get(b"t")
        if not isinstance(t, bytes):
            self._drop("no byte-string t", addr)
            return
        if y == b"q":
            self._on_query(message, t, addr)
        elif y == b"r" or y == b"e":
            self._on_response(message, y, t, addr)
        else:
            self._drop("unknown y", addr)

    def _node_seen(self, node_id: Any, addr: Address) -> None:
        if (
            self.on_node_seen is not None
            and isinstance(node_id, bytes)
            and len(node_id) == 20
            and node_id != self.node_id
        ):
            try:
                self.on_node_seen(node_id, addr)
            except Exception:
                self.log.failure("on_node_seen failed for {addr}", addr=addr)

    def _on_query(self, message: dict[bytes, Any], t: bytes, addr: Address) -> None:
        limiter = self.rate_limiter
        if limiter is not None and not limiter.allow(addr[0]):
            self._drop("query rate limit", addr)
            return
        q = message.get(b"q")
        if not isinstance(q, bytes):
            # No reply: a Node grape would not understand one (docs/protocol.rst, *DHT messages*).
            self._drop("query without q", addr)
            return
        a = message.get(b"a")
        if not isinstance(a, dict):
            self._refuse(t, addr, KRPCError(203, "query without an `a` dictionary"))
            return
        # Before dispatch, as Node does: a find_node reply then already includes the asker.
        self._node_seen(a.get(b"id"), addr)
        name = q.decode("utf-8", "replace")
        counted = _query_name(q)
        try:
            result = self.handle_query(name, _str_keys(a), addr)
        except KRPCError as e:
            result = e
        except Exception:
            self.received["dropped"] += 1
            self.drops.count(f"handler error ({name[:20]})", addr, Failure())
            return
        if result is None:
            self.queries[(counted, "received", "dropped")] += 1
            self._drop(f"no reply ({name[:20]})", addr)
            return
        if isinstance(result, KRPCError):
            self.queries[(counted, "received", "refused")] += 1
            self._refuse(t, addr, result)
            return
        if not isinstance(result, dict):
            self.received["dropped"] += 1
            self.drops.count(
                f"handler bug: {name[:20]} answered {type(result).__name__}",
                addr,
                Failure(TypeError("a KRPC handler must return a dict, a KRPCError or None")),
            )
            return
        r = dict(result)
        r.setdefault("id", self.node_id)
        try:
            data = encode_response(t, r)
        except Exception:
            self.received["dropped"] += 1
            self.drops.count(f"reply not encodable ({name[:20]})", addr, Failure())
            return
        self.received["answered"] += 1
        self.queries[(counted, "received", "answered")] += 1
        self._write(data, addr)

    def _refuse(self, t: bytes, addr: Address, error: KRPCError) -> None:
        """Answer a query with a ``y=e`` error."""
        self.received["refused"] += 1
        self.refused[error.code] += 1
        self._write(encode_error(t, error.code, error.text), addr)

    def _on_response(self, message: dict[bytes, Any], y: bytes, t: bytes, addr: Address) -> None:
        r = message.get(b"r")
        if isinstance(r, dict):
            # Also for late or unexpected replies.
            self._node_seen(r.get(b"id"), addr)
        if len(t) < 2:
            self._drop("response with a short t", addr)
            return
        req = self._outstanding.get(int.from_bytes(t[:2], "big"))
        if req is None or req.addr[0] != addr[0]:
            self._drop("late or unexpected response", addr)
            return
        self.received["response"] += 1
        self._finish(req)
        if self.on_answer is not None:
            self.on_answer(addr)
        if y == b"e":
            self.queries[(_query_name(req.q), "sent", "error")] += 1
            req.deferred.errback(_error_from(message.get(b"e")))
            return
        self.queries[(_query_name(req.q), "sent", "answered")] += 1
        r_str = _str_keys(r) if isinstance(r, dict) else {}
        if req.node_id is not None and r_str.get("id") != req.node_id:
            req.deferred.errback(KRPCUnexpectedNode())
            return
        req.deferred.callback(Response(r_str, addr))


_QUERY_NAMES = {
    q.encode(): q
    for q in ("ping", "find_node", "get_peers", "announce_peer", "get", "put", "unannounce_peer")
}


def _query_name(q: bytes) -> str:
    """The query's name for counting: one of the queries Grenache knows, else ``other`` (so a
    hostile peer cannot grow the counters with made-up names)."""
    return _QUERY_NAMES.get(q, "other")
