"""Log observers: the structured ``twisted.logger`` events as JSON lines, or as text.

Every event this project logs is a ``twisted.logger`` event whose ``{format}`` fields are
event keys (``name``, ``port``, ``grape``, ``error``...), and the key ones carry an ``event``
key naming what happened (``announce``, ``announce_failed``, ``listening``...; docs/metrics.rst
lists them). Written as JSON, one object per line, they can be searched by field::

    twistd --logger grenache.logs.json_observer -n grape
    grenache serve NAME --handler pkg.mod:fn --log-format json 2> service.log

``twistd --logger`` takes the fully-qualified name of a callable that returns an observer:
:func:`json_observer` writes to standard output (run ``twistd -n``, as in a container, where
standard output is kept).
"""

from __future__ import annotations

import sys
from typing import IO, Any

from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    PredicateResult,
    globalLogBeginner,
    jsonFileLogObserver,
    textFileLogObserver,
)

__all__ = ["FORMATS", "begin_logging", "json_lines_observer", "json_observer", "observer"]

#: The values of ``--log-format``.
FORMATS = ("text", "json")

_FACTORY_NOISE = frozenset({"Starting factory {factory!r}", "Stopping factory {factory!r}"})


def json_lines_observer(stream: IO[str]) -> Any:
    """An observer writing each event to ``stream`` as one JSON object on one line (Twisted's
    :func:`~twisted.logger.jsonFileLogObserver` without its record separator; every field of
    the event is kept, a value JSON cannot hold as its ``repr``)."""
    return jsonFileLogObserver(stream, recordSeparator="")


def json_observer() -> Any:
    """For ``twistd --logger grenache.logs.json_observer``: JSON lines on standard output."""
    return json_lines_observer(sys.stdout)


def _quiet(event: dict[str, Any]) -> Any:
    if event.get("log_format") in _FACTORY_NOISE:
        return PredicateResult.no
    return PredicateResult.maybe


def observer(log_format: str = "text", level: str = "info", stream: IO[str] | None = None) -> Any:
    """An observer of events of ``level`` and above in ``log_format`` (``text`` or ``json``)
    on ``stream`` (standard error), without the factory start/stop chatter of every pooled
    connection."""
    if log_format not in FORMATS:
        raise ValueError(f"unknown log format {log_format!r} (one of {', '.join(FORMATS)})")
    out = sys.stderr if stream is None else stream
    inner: Any = json_lines_observer(out) if log_format == "json" else textFileLogObserver(out)
    by_level: Any = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level))
    quiet: Any = _quiet
    return FilteringLogObserver(inner, [by_level, quiet])


def begin_logging(log_format: str = "text", level: str = "info") -> None:
    """Send events of ``level`` and above to standard error in ``log_format`` (the CLI's
    long-running verbs); events logged so far are replayed."""
    globalLogBeginner.beginLoggingTo([observer(log_format, level)], redirectStandardIO=False)
