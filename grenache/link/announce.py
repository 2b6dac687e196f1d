"""The link's announcing loops: one name:port announced again and again, with one timer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.base import DelayedCall
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from grenache.errors import LinkStopped

if TYPE_CHECKING:
    from grenache.link.link import Link

__all__ = ["ANNOUNCE_JITTER", "AnnounceLoop"]

log = Logger()

#: Jitter bounds of the re-announce gap, as multiples of the interval (Node's formula).
ANNOUNCE_JITTER = (0.5, 1.5)


class AnnounceLoop:
    """Announces ``name``:``port`` through ``link`` until stopped, each gap drawn from
    ``[0.5, 1.5) * interval`` after the previous announce finished.

    Logs a warning at the first failure of a run of failures (later ones at debug level, so a
    grape that is down for an hour does not fill the log) and one line when announcing works
    again: "announce of NAME:PORT recovered after K failures".
    """

    def __init__(
        self,
        link: Link,
        name: str,
        port: int,
        interval: float,
        *,
        retry: int = 3,
        timeout: float | None = None,
    ) -> None:
        self.link = link
        self.name = name
        self.port = port
        self.interval = interval
        self.retry = retry
        self.timeout = timeout
        self.running = False
        self.failures = 0
        self.call: DelayedCall | None = None
        self.in_flight: Deferred[int] | None = None
        self._first: Any = None
        self._first_done = False
        self._first_waiters: list[Deferred[int]] = []

    def start(self) -> None:
        """Announce now, and again after each gap until :meth:`stop`."""
        self.running = True
        self._tick()

    def stop(self) -> None:
        """Stop announcing: cancel the next tick and the announce in flight (a :meth:`first_result`
        still waiting then fails with :class:`~grenache.errors.LinkStopped`).
        """
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
        d = self.in_flight = self.link.announce(
            self.name, self.port, retry=self.retry, timeout=self.timeout
        )
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
        if self.running:
            self._note(outcome)
            self.call = self.link.reactor.callLater(self.link._next_gap(self.interval), self._tick)

    def _note(self, outcome: Any) -> None:
        if isinstance(outcome, Failure):
            self.failures += 1
            level = log.warn if self.failures == 1 else log.debug
            level(
                "announce of {name}:{port} failed ({error}); trying again in the next tick",
                name=self.name,
                port=self.port,
                error=outcome.getErrorMessage(),
                failures=self.failures,
            )
        elif self.failures:
            log.info(
                "announce of {name}:{port} recovered after {failures} failures",
                name=self.name,
                port=self.port,
                failures=self.failures,
            )
            self.failures = 0
