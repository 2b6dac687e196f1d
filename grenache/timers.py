"""One timer for many deadlines.

Transports have a deadline per request (and per idle socket); a ``DelayedCall`` for each would
cost a heap push and a cancel on every request. A :class:`DeadlineTimer` keeps a single
``DelayedCall``, set for the earliest deadline anyone has asked for; when it fires, the owner's
``sweep(now)`` handles whatever is due and says when to fire next.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from twisted.logger import Logger

log = Logger()

#: The timer never fires more often than this (seconds): deadlines are exact to within it.
RESOLUTION = 0.05

T = TypeVar("T")


class DeadlineTimer:
    """One ``DelayedCall`` on ``clock`` for the earliest of many deadlines.

    ``sweep(now)`` handles everything due and returns the next deadline (or ``None``);
    :meth:`due` makes sure the timer fires no later than a new deadline.
    """

    def __init__(self, clock: Any, sweep: Callable[[float], float | None]) -> None:
        self._clock = clock
        self._sweep = sweep
        self._call: Any = None  # set while a call is pending: only this class cancels it
        #: When the timer fires next (clock time; infinity when nothing is due). A deadline
        #: at or after it needs no :meth:`due`: owners on a hot path compare first.
        self.at = math.inf

    def due(self, when: float) -> None:
        """Fire no later than ``when`` (clock time)."""
        if self.at <= when:
            return
        if self._call is not None:
            self._call.cancel()
        call = self._call = self._clock.callLater(
            max(0.0, when - self._clock.seconds()), self._fire
        )
        self.at = call.getTime()

    def _fire(self) -> None:
        self._call = None
        self.at = math.inf
        now = self._clock.seconds()
        try:
            nxt = self._sweep(now)
        except Exception:
            log.failure("Deadline sweep failed")
            nxt = now + 1.0
        if nxt is not None:
            self.due(max(nxt, now + RESOLUTION))

    def cancel(self) -> None:
        """Stop the timer."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self.at = math.inf


class Deadlines(Generic[T]):
    """Items with deadlines, expired in deadline order through one :class:`DeadlineTimer`.

    ``expired(item)`` is called for each item whose deadline passed and that ``settled(item)``
    does not call finished. The owner calls :meth:`finished` once for every item it added
    when the item settles; settled items are dropped lazily (when they reach the front, or when
    they outnumber the live ones), so adding and finishing an item costs no timer work, and the
    timer is cancelled as soon as no item is live.
    """

    def __init__(
        self, clock: Any, expired: Callable[[T], None], settled: Callable[[T], bool]
    ) -> None:
        self._clock = clock
        self._expired = expired
        self._settled = settled
        self._heap: list[tuple[float, int, T]] = []
        self._live = 0
        self._sweeping = False
        self._order = itertools.count()
        self._timer = DeadlineTimer(clock, self._sweep)

    def add(self, item: T, timeout: float) -> None:
        """Expire ``item`` ``timeout`` seconds from now unless it is settled by then."""
        deadline = self._clock.seconds() + timeout
        heap = self._heap
        if len(heap) > 256 and len(heap) & 255 == 0:
            self._compact()
        heapq.heappush(heap, (deadline, next(self._order), item))
        self._live += 1
        self._timer.due(deadline)

    def finished(self) -> None:
        """One added item settled; with none left, forget them all and stop the timer."""
        self._live -= 1
        if self._live <= 0 and not self._sweeping:
            self.clear()

    def _compact(self) -> None:
        live = [entry for entry in self._heap if not self._settled(entry[2])]
        if 2 * len(live) < len(self._heap):
            heapq.heapify(live)
            self._heap = live

    def _sweep(self, now: float) -> float | None:
        heap = self._heap
        self._sweeping = True
        try:
            while heap and (heap[0][0] <= now or self._settled(heap[0][2])):
                _, _, item = heapq.heappop(heap)
                if not self._settled(item):
                    self._expired(item)
        finally:
            self._sweeping = False
        if self._live <= 0:
            self._heap = []
            return None
        return heap[0][0] if heap else None

    def clear(self) -> None:
        """Forget every item and stop the timer."""
        self._heap = []
        self._live = 0
        self._timer.cancel()
