"""Handler failures in the log, with their traceback, at a rate an operator can read.

A handler that fails on every request would otherwise write a traceback per request. Per key
(the service name), at most ``limit`` tracebacks are logged in each ``window`` seconds; the
failures past that are counted and reported in one line when the key's next window opens
(at its next failure) or when the server stops.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

import attrs
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

__all__ = ["DEFAULT_LOG_LIMIT", "DEFAULT_LOG_WINDOW", "FailureLog", "MonotonicClock"]

DEFAULT_LOG_LIMIT = 5
"""Tracebacks logged per key and window."""

DEFAULT_LOG_WINDOW = 60.0
"""Length of a window, in seconds."""

_MAX_KEYS = 1000


class MonotonicClock:
    """``seconds()`` from :func:`time.monotonic`: a clock for a server given no reactor."""

    def seconds(self) -> float:
        """Seconds from an arbitrary start, never going back."""
        return time.monotonic()


@attrs.define
class _Window:
    start: float
    logged: int = 0
    suppressed: int = 0


class FailureLog:
    """Logs failures per key with :meth:`twisted.logger.Logger.failure`, rate-limited.

    ``clock`` is anything with ``seconds()`` (a reactor, a :class:`~twisted.internet.task.Clock`).
    At most ``_MAX_KEYS`` keys are tracked; the oldest one is reported and forgotten first.
    """

    def __init__(
        self,
        logger: Logger,
        clock: Any,
        *,
        limit: int = DEFAULT_LOG_LIMIT,
        window: float = DEFAULT_LOG_WINDOW,
    ) -> None:
        if limit < 0 or not window > 0:
            raise ValueError("limit must be >= 0 and window > 0")
        self._log = logger
        self._clock = clock
        self.limit = limit
        self.window = window
        self._windows: OrderedDict[str, _Window] = OrderedDict()

    def failed(self, failure: Failure, key: str, what: str) -> None:
        """Log ``failure`` of ``what`` (e.g. "handler for 'svc'"), unless ``key`` is over its
        limit in the current window."""
        now = self._clock.seconds()
        window = self._windows.get(key)
        if window is None or now - window.start >= self.window:
            if window is not None:
                self._report(key, window)
            window = self._windows[key] = _Window(now)
            self._windows.move_to_end(key)
            while len(self._windows) > _MAX_KEYS:
                old_key, old = self._windows.popitem(last=False)
                self._report(old_key, old)
        if window.logged < self.limit:
            window.logged += 1
            self._log.failure("{what} failed", failure, LogLevel.error, what=what, key=key)
        else:
            window.suppressed += 1

    def flush(self) -> None:
        """Report every suppressed count now and forget the windows (the server stops)."""
        windows, self._windows = self._windows, OrderedDict()
        for key, window in windows.items():
            self._report(key, window)

    def _report(self, key: str, window: _Window) -> None:
        if window.suppressed:
            self._log.warn(
                "{key!r}: suppressed {count} more failure tracebacks in {seconds:g} s",
                key=key,
                count=window.suppressed,
                seconds=self.window,
            )
