"""What keeps one hostile sender from exhausting a grape's DHT socket.

* :class:`QueryRateLimiter`: a token bucket per source IP for incoming queries, in a bounded
  table of sources (least recently heard evicted first). Loopback and private addresses are
  exempt by default, so a hundred grapes on one host or a LAN still form a network.
* :class:`DropCounter`: counts datagrams that are dropped or refused, per reason, and logs at
  most one line per reason per window with the count, instead of one line per datagram (a log
  line per hostile datagram turns the disk into an amplifier).
* :func:`is_local_address`: the addresses those exemptions apply to.

The limits and their defaults are listed in docs/protocol.rst, *DHT messages*.
"""

from __future__ import annotations

import functools
import ipaddress
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger, LogLevel

__all__ = [
    "DEFAULT_MAX_SOURCES",
    "DEFAULT_QUERY_BURST",
    "DEFAULT_QUERY_RATE",
    "DEFAULT_WARN_WINDOW",
    "DropCounter",
    "QueryRateLimiter",
    "is_local_address",
]

#: Queries per second a public source may send on average.
DEFAULT_QUERY_RATE = 100.0
#: Queries a public source may send at once before its rate applies.
DEFAULT_QUERY_BURST = 500
#: Sources the rate limiter remembers; the least recently heard is forgotten past it.
DEFAULT_MAX_SOURCES = 10000
#: Seconds between two warnings about the same drop reason.
DEFAULT_WARN_WINDOW = 60.0


@functools.lru_cache(maxsize=4096)
def is_local_address(host: str) -> bool:
    """Whether ``host`` is loopback, private (RFC 1918, ULA), link-local or unspecified.

    Those senders are on this host or its LAN, where many grapes share one address: the
    per-IP limits do not apply to them. Anything unparseable counts as public.
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return (
        address.is_loopback or address.is_private or address.is_link_local or address.is_unspecified
    )


class QueryRateLimiter:
    """Token bucket per source IP: ``burst`` queries at once, then ``rate`` per second.

    ``allow(ip)`` is called once per incoming query; it costs a cached address check for exempt
    sources and a dict update for the others. At most ``max_sources`` buckets are kept (least
    recently heard evicted, which only forgives that source). ``exempt`` decides which sources
    are never limited (:func:`is_local_address` by default); ``rate`` 0 turns limiting off.
    """

    def __init__(
        self,
        seconds: Callable[[], float],
        rate: float = DEFAULT_QUERY_RATE,
        burst: int = DEFAULT_QUERY_BURST,
        max_sources: int = DEFAULT_MAX_SOURCES,
        exempt: Callable[[str], bool] = is_local_address,
    ) -> None:
        if rate < 0 or burst < 1 or max_sources < 1:
            raise ValueError("rate must be >= 0, burst and max_sources >= 1")
        self._seconds: Callable[[], float] = seconds
        self.rate = rate
        self.burst = burst
        self.max_sources = max_sources
        self.exempt = exempt
        # ip -> [tokens left, clock time of the last refill]; least recently heard first.
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()

    def allow(self, ip: str) -> bool:
        """Take one token from ``ip``'s bucket; False when it has none left."""
        if not self.rate or self.exempt(ip):
            return True
        now = self._seconds()
        bucket = self._buckets.get(ip)
        if bucket is None:
            bucket = self._buckets[ip] = [float(self.burst), now]
            if len(self._buckets) > self.max_sources:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(ip)
            bucket[0] = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
            bucket[1] = now
        if bucket[0] < 1.0:
            return False
        bucket[0] -= 1.0
        return True

    def __len__(self) -> int:
        """Sources currently tracked."""
        return len(self._buckets)


class DropCounter:
    """Counts every datagram dropped or refused, per reason, and warns with counts.

    ``counts`` (a public :class:`~collections.Counter`) holds every reason ever counted. A
    reason is logged at once the first time, then at most once per ``window`` seconds, with the
    number counted since its last line and the latest source; reasons in ``quiet`` (normal in a
    healthy network, such as a reply arriving after its timeout) are logged at debug level.
    """

    def __init__(
        self,
        seconds: Callable[[], float],
        log: Logger,
        window: float = DEFAULT_WARN_WINDOW,
        quiet: frozenset[str] = frozenset(),
    ) -> None:
        self._seconds: Callable[[], float] = seconds
        self._log = log
        self.window = window
        self.quiet = quiet
        self.counts: Counter[str] = Counter()
        self._unreported: Counter[str] = Counter()
        self._last_line: dict[str, float] = {}

    def count(self, reason: str, addr: Any, failure: Any = None) -> None:
        """Count one datagram for ``reason`` from ``addr``; log if the window allows.

        ``failure`` (a :class:`~twisted.python.failure.Failure`) is logged with its traceback
        on the lines that are written, for reasons that are bugs rather than bad input.
        """
        self.counts[reason] += 1
        self._unreported[reason] += 1
        now = self._seconds()
        last = self._last_line.get(reason)
        if last is not None and now - last < self.window:
            return
        self._last_line[reason] = now
        number = self._unreported.pop(reason)
        level = LogLevel.debug if reason in self.quiet else LogLevel.warn
        text = (
            "DHT: {number} datagram(s) dropped or refused: {reason} (since the last report, "
            "at most one per {window:.0f} s; latest from {addr}; {total} in all)"
        )
        if failure is not None:
            self._log.failure(
                text,
                failure,
                level=level,
                number=number,
                reason=reason,
                window=self.window,
                addr=addr,
                total=self.counts[reason],
            )
        else:
            self._log.emit(
                level,
                text,
                number=number,
                reason=reason,
                window=self.window,
                addr=addr,
                total=self.counts[reason],
            )
