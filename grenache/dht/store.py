"""Bounded, expiring stores used by the DHT node, with Node's semantics.

* :class:`RecordCache` is the announced-peer store (record-cache 1.2.0, docs/protocol.rst,
  *DHT messages*):
  two generations swapped by a timer, so a peer lives between 2/3 and 4/3 of ``max_age``.
* :class:`LRUCache` is lru 3.1.0: the BEP 44 value store (no age) and the per-lookup token
  tables (max age 300 s).
* :class:`TokenSecrets` makes and checks write tokens exactly as bittorrent-dht 10.0.0 does
  (docs/protocol.rst, *DHT messages*), so tokens stay valid for 5 to 10 minutes.

Nothing here touches the global reactor: time comes from an injected ``IReactorTime`` and
randomness from an injectable :class:`random.Random`.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import random
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar, cast

from twisted.internet.base import DelayedCall
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

__all__ = ["LRUCache", "RecordCache", "TokenSecrets"]

K = TypeVar("K")
V = TypeVar("V")


log = Logger()


class _Generation:
    """One record-cache generation: key -> insertion-ordered set of records, plus a count."""

    __slots__ = ("records", "size")

    def __init__(self) -> None:
        self.records: dict[bytes, dict[bytes, None]] = {}
        self.size = 0

    def add(self, key: bytes, record: bytes) -> bool:
        bucket = self.records.setdefault(key, {})
        if record in bucket:
            return False
        bucket[record] = None
        self.size += 1
        return True

    def remove(self, key: bytes, record: bytes) -> bool:
        bucket = self.records.get(key)
        if bucket is None or record not in bucket:
            return False
        del bucket[record]
        self.size -= 1
        if not bucket:
            del self.records[key]
        return True

    def get(self, key: bytes) -> list[bytes]:
        bucket = self.records.get(key)
        return list(bucket) if bucket else []


class _Interval:
    """JS ``setInterval`` on an injected clock: one ``DelayedCall``, re-armed each tick.

    Deadlines follow a fixed schedule (start + n * interval), so a late tick does not push the
    following ones back; with ``task.Clock`` a large ``advance`` runs every tick it skipped.
    """

    def __init__(self, clock: IReactorTime, interval: float, fn: Callable[[], object]) -> None:
        # Bound once; also keeps mypy (without the zope plugin) from misreading the interface.
        self._call_later: Callable[..., DelayedCall] = clock.callLater
        self._seconds: Callable[[], float] = cast(Any, clock).seconds
        self.interval = interval
        self._fn = fn
        self._call: DelayedCall | None = None
        self._due = 0.0

    @property
    def running(self) -> bool:
        return self._call is not None

    def start(self) -> None:
        if self._call is None:
            self._due = self._seconds() + self.interval
            self._call = self._call_later(self.interval, self._fire)

    def stop(self) -> None:
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def _fire(self) -> None:
        self._due += self.interval
        self._call = self._call_later(max(0.0, self._due - self._seconds()), self._fire)
        self._fn()


class RecordCache:
    """record-cache 1.2.0: two generations (fresh, stale). add() removes from stale and inserts
    in fresh (dedup identical records); get(key, n) samples n at random from fresh + stale (n=0:
    all, random order); gc() moves fresh->stale and drops old stale. With max_age > 0 a timer on
    the injected clock runs gc every ceil(2/3*max_age) (skipped once if a size-triggered gc
    happened since last tick); max_age == 0: never expires. Size: when the number of fresh
    records across all keys exceeds max_size, gc runs immediately.

    ``max_age`` is in seconds; the tick is rounded up to a whole millisecond, as Node computes
    it in milliseconds.  ``max_age`` of ``inf`` also means "never expires", and a ``max_size``
    of 0 means unbounded (record-cache's ``maxSize || Infinity``).
    """

    def __init__(
        self,
        clock: IReactorTime,
        max_age: float,
        max_size: int = 10000,
        rng: random.Random | None = None,
    ) -> None:
        if max_age < 0:
            raise ValueError("max_age must be >= 0")
        self.max_age = max_age
        self.max_size: float = max_size if max_size > 0 else math.inf
        self._rng = rng if rng is not None else random.Random()
        self._fresh = _Generation()
        self._stale = _Generation()
        self._gced = False
        #: Bumped by every change to what :meth:`get` can answer (a record added, removed or
        #: expired), so a caller may keep something derived from the records until it moves.
        self.version = 0
        #: Seconds between automatic gc runs, or ``None`` when records never expire.
        self.tick: float | None = None
        self._timer: _Interval | None = None
        if 0 < max_age < math.inf:
            self.tick = math.ceil(2 / 3 * max_age * 1000) / 1000
            self._timer = _Interval(clock, self.tick, self._gc_auto)

    def start(self) -> None:
        """Start the gc timer (no-op when records never expire or it already runs)."""
        if self._timer is not None:
            self._timer.start()

    def stop(self) -> None:
        """Cancel the pending gc timer; safe to call twice or before :meth:`start`."""
        if self._timer is not None:
            self._timer.stop()

    def _gc_auto(self) -> None:
        if not self._gced:
            self.gc()
        self._gced = False

    def add(self, key: bytes, record: bytes) -> None:
        """Store (or refresh) ``record`` under ``key``; may trigger a size gc."""
        self._stale.remove(key, record)
        if self._fresh.add(key, record):
            self.version += 1
            if self._fresh.size > self.max_size:
                self.gc()

    def remove(self, key: bytes, record: bytes) -> bool:
        """Forget ``record`` under ``key`` in both generations; whether it was there."""
        fresh = self._fresh.remove(key, record)
        removed = self._stale.remove(key, record) or fresh
        if removed:
            self.version += 1
        return removed

    def remove_key(self, key: bytes) -> None:
        """Forget every record under ``key``."""
        for generation in (self._fresh, self._stale):
            bucket = generation.records.pop(key, None)
            if bucket:
                generation.size -= len(bucket)
                self.version += 1

    def get(self, key: bytes, n: int = 0) -> list[bytes]:
        """Up to ``n`` distinct records of ``key`` in random order (all of them when ``n`` is 0)."""
        records = self._fresh.get(key) + self._stale.get(key)
        if len(records) <= 1:
            return records
        if n <= 0 or n >= len(records):
            self._rng.shuffle(records)
            return records
        return self._rng.sample(records, n)

    def gc(self) -> None:
        """Age everything one generation: fresh becomes stale, the old stale is dropped.

        What expired is told in one debug event (``event="expiry"``, ``expired``, ``kept``),
        once per gc, never per record."""
        expired = self._stale.size
        self._stale = self._fresh
        self._fresh = _Generation()
        self._gced = True
        if expired:
            self.version += 1
        if expired:
            log.debug(
                "{expired} records expired, {kept} kept",
                event="expiry",
                expired=expired,
                kept=self._stale.size,
            )

    def keys(self) -> list[bytes]:
        """Keys that currently have at least one record."""
        return list(dict.fromkeys([*self._fresh.records, *self._stale.records]))

    def __len__(self) -> int:
        return self._fresh.size + self._stale.size


class LRUCache(Generic[K, V]):
    """Bounded LRU, optional max age measured from insertion (reads do not refresh the age).
    Used for BEP 44 values (no age, get refreshes recency) and lookup token tables (max age
    300 s).

    Semantics of lru 3.1.0: setting an existing key replaces the value, restarts its age and
    makes it most recent; an entry is expired once ``now - set_time > max_age``; expired entries
    are dropped lazily when looked at (no timers).
    """

    def __init__(self, clock: IReactorTime, max_size: int, max_age: float = 0.0) -> None:
        if max_size < 1:
            raise ValueError("max_size must be >= 1")
        self._seconds: Callable[[], float] = cast(Any, clock).seconds
        self.max_size = max_size
        self.max_age = max_age
        # key -> (value, time set); order = least recently used first.
        self._data: OrderedDict[K, tuple[V, float]] = OrderedDict()

    def _live(self, key: K) -> tuple[V, float] | None:
        """The entry for ``key`` if present and not expired; drops it when expired."""
        entry = self._data.get(key)
        if entry is None:
            return None
        if self.max_age and self._seconds() - entry[1] > self.max_age:
            del self._data[key]
            return None
        return entry

    def get(self, key: K) -> V | None:
        """The value, made most recently used; ``None`` when absent or expired."""
        entry = self._live(key)
        if entry is None:
            return None
        self._data.move_to_end(key)
        return entry[0]

    def peek(self, key: K) -> V | None:
        """The value without changing recency; ``None`` when absent or expired."""
        entry = self._live(key)
        return None if entry is None else entry[0]

    def set(self, key: K, value: V) -> None:
        """Store ``value`` as most recently used, evicting the least recently used overflow."""
        self._data[key] = (value, self._seconds())
        self._data.move_to_end(key)
        while len(self._data) > self.max_size:
            self._data.popitem(last=False)

    def delete(self, key: K) -> None:
        """Remove ``key`` if present."""
        self._data.pop(key, None)

    def _purge(self) -> None:
        if not self.max_age:
            return
        now = self._seconds()
        for key in [k for k, (_, t) in self._data.items() if now - t > self.max_age]:
            del self._data[key]

    def items(self) -> Iterator[tuple[K, V]]:
        """Live ``(key, value)`` pairs, least recently used first, without changing recency."""
        self._purge()
        return iter([(k, v) for k, (v, _) in self._data.items()])

    def keys(self) -> list[K]:
        """Live keys, least recently used first."""
        self._purge()
        return list(self._data)

    def __contains__(self, key: object) -> bool:
        return self._live(cast(K, key)) is not None

    def __len__(self) -> int:
        self._purge()
        return len(self._data)


class TokenSecrets:
    """Write tokens as Node makes them: token(ip) = SHA1(ip dotted string as UTF-8 + secret),
    secrets [current, previous] of 20 random bytes, rotated every 300 s on the injected clock; a
    token is valid under either.

    So a token handed out is accepted for between ``rotate_every`` and twice that, which covers
    Node's 5-minute reuse of cached token tables.
    """

    SECRET_SIZE = 20

    def __init__(
        self,
        clock: IReactorTime,
        rotate_every: float = 300.0,
        rng: random.Random | None = None,
    ) -> None:
        self.rotate_every = rotate_every
        self._rng = rng
        self._timer = _Interval(clock, rotate_every, self.rotate)
        self._secrets = [self._new_secret(), self._new_secret()]

    def _new_secret(self) -> bytes:
        if self._rng is None:
            return os.urandom(self.SECRET_SIZE)
        return self._rng.randbytes(self.SECRET_SIZE)

    def start(self) -> None:
        """Start rotating every ``rotate_every`` seconds (no-op if already started)."""
        self._timer.start()

    def stop(self) -> None:
        """Stop rotating; safe to call twice or before :meth:`start`."""
        self._timer.stop()

    def rotate(self) -> None:
        """Make the current secret the previous one and draw a new current secret."""
        self._secrets = [self._new_secret(), self._secrets[0]]

    @staticmethod
    def _make(ip: str, secret: bytes) -> bytes:
        return hashlib.sha1(ip.encode("utf-8") + secret).digest()

    def token(self, ip: str) -> bytes:
        """The token to hand to a node at ``ip`` (port not included, as in Node)."""
        return self._make(ip, self._secrets[0])

    def is_valid(self, ip: str, token: bytes) -> bool:
        """Whether ``token`` was issued to ``ip`` under the current or previous secret."""
        if not isinstance(token, bytes):
            return False
        return any(hmac.compare_digest(token, self._make(ip, s)) for s in self._secrets)
