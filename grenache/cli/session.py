"""What one run of a verb holds and how it speaks: the session (options, reactor, the link,
what to stop at the end), JSON output, logging to stderr, and the one-line error messages."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from grenache import errors
from grenache.cli.options import DEFAULT_TIMEOUT, PROG
from grenache.codec import json_dumps
from grenache.link import Link

__all__ = [
    "MAX_STDIN_LINE",
    "CommandError",
    "Reported",
    "Session",
    "StdinLines",
    "WatchedLink",
    "begin_logging",
    "emit",
    "emit_text",
    "one_line",
    "stdin_lines",
    "warn",
]


class CommandError(Exception):
    """A failure the command reports as one line on stderr, with exit status 1."""


class Reported(CommandError):
    """Failures already reported on stderr one by one (a line of input, a name among several):
    exit status 1 and nothing more printed."""


def warn(verb: str, message: str) -> None:
    """Write ``grenache VERB: message`` as one line on stderr (a failure the verb goes on
    after)."""
    sys.stderr.write(f"{PROG} {verb}: {one_line(message)}\n")
    sys.stderr.flush()


def emit_text(text: str) -> None:
    """Write ``text`` as one plain line on stdout (for shell scripts: an address, a token)."""
    sys.stdout.buffer.write(text.encode("utf-8") + b"\n")
    sys.stdout.buffer.flush()


MAX_STDIN_LINE = 16 * 1024 * 1024
"""Longest line of stdin ``pub`` and ``announce`` read (bytes)."""


class StdinLines(LineReceiver):
    """Hands each line to ``receive`` (without its ``\\n`` or ``\\r\\n``); ``ended`` fires at
    the end of the input (after a last line without a newline), or fails with CommandError
    when a line is longer than :attr:`MAX_LENGTH` (the reading stops there)."""

    delimiter = b"\n"
    MAX_LENGTH = MAX_STDIN_LINE

    def __init__(self, receive: Callable[[bytes], None]) -> None:
        self.receive = receive
        self.ended: Deferred[None] = Deferred()

    def lineReceived(self, line: bytes) -> None:
        """Hand ``line`` to ``receive`` without a trailing ``\\r``."""
        self.receive(line.removesuffix(b"\r"))

    def lineLengthExceeded(self, line: bytes) -> None:
        """Fail :attr:`ended` with a :class:`CommandError` and stop reading."""
        self._buffer = b""
        if not self.ended.called:
            limit = f"{self.MAX_LENGTH} bytes"
            self.ended.errback(CommandError(f"a line of stdin is longer than {limit}: stopped"))
        transport: Any = self.transport
        transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        """End of input: hand over a last line without a newline, then fire :attr:`ended`."""
        if self._buffer:
            self.lineReceived(self._buffer)
            self._buffer = b""
        if not self.ended.called:
            self.ended.callback(None)


def stdin_lines(reactor: Any, receive: Callable[[bytes], None]) -> Deferred[None]:
    """Call ``receive`` with each line of stdin as it arrives, without blocking the reactor
    (a pipe, a FIFO or a file); fires at its end (see :class:`StdinLines`)."""
    from twisted.internet import stdio

    lines = StdinLines(receive)
    stdio.StandardIO(lines, reactor=reactor)
    return lines.ended


def emit(value: Any) -> None:
    """Write ``value`` as one line of JSON on stdout."""
    sys.stdout.buffer.write(json_dumps(value) + b"\n")
    sys.stdout.buffer.flush()


_FACTORY_NOISE = frozenset({"Starting factory {factory!r}", "Stopping factory {factory!r}"})


def begin_logging(level: str = "info") -> None:
    """Send log events of ``level`` and above to stderr (long-running verbs), without the
    factory start/stop chatter of every pooled connection."""
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        PredicateResult,
        globalLogBeginner,
        textFileLogObserver,
    )

    def quiet_(event: dict[str, Any]) -> Any:
        if event.get("log_format") in _FACTORY_NOISE:
            return PredicateResult.no
        return PredicateResult.maybe

    quiet: Any = quiet_
    # Any: the zope interfaces are invisible to mypy.
    by_level: Any = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level))
    text: Any = textFileLogObserver(sys.stderr)
    observer: Any = FilteringLogObserver(text, [by_level, quiet])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


class WatchedLink:
    """The link, as peers see it, noting whether a lookup failed (so a timeout can be blamed
    on the grape or on the service)."""

    def __init__(self, link: Any) -> None:
        self.link = link
        self.lookup_failed = False

    def lookup(self, name: str) -> Deferred[list[str]]:
        """The link's lookup of ``name``, noting in :attr:`lookup_failed` if it fails."""

        def failed(failure: Failure) -> Failure:
            self.lookup_failed = True
            return failure

        d: Deferred[list[str]] = self.link.lookup(name)
        return d.addErrback(failed)

    def start_announcing(self, name: str, port: int) -> Deferred[int]:
        """The link's :meth:`~grenache.link.Link.start_announcing`, unchanged."""
        return self.link.start_announcing(name, port)  # type: ignore[no-any-return]

    def stop_announcing(self, name: str, port: int) -> Deferred[None]:
        """The link's :meth:`~grenache.link.Link.stop_announcing`, unchanged."""
        return self.link.stop_announcing(name, port)  # type: ignore[no-any-return]


@attrs.define
class Session:
    """What one run of a verb holds: its options, the reactor, and what to stop at the end."""

    verb: str
    options: Any
    reactor: Any
    cleanups: list[Callable[[], Any]] = attrs.Factory(list)
    watched: WatchedLink | None = None

    @property
    def grape(self) -> str:
        """The grape API URL the verb talks to (``--grape``, with ``-p`` and ``-t`` applied)."""
        return str(self.options["grape"])

    @property
    def timeout(self) -> float:
        """Seconds to wait for each reply: ``--timeout``, or :data:`DEFAULT_TIMEOUT` for a verb
        without one."""
        return float(self.options.get("timeout") or DEFAULT_TIMEOUT)

    def link(self) -> WatchedLink:
        """The link to ``--grape`` (one per run, stopped at the end)."""
        if self.watched is None:
            try:
                link = Link(self.grape, reactor=self.reactor, request_timeout=self.timeout)
            except ValueError as error:
                raise CommandError(str(error)) from None
            self.cleanups.append(link.stop)
            self.watched = WatchedLink(link)
        return self.watched

    async def close(self) -> None:
        """Run the cleanups, last added first (a client is stopped before its link); one that
        fails does not keep the others from running, since the verb's outcome is decided."""
        while self.cleanups:
            try:
                await self.cleanups.pop()()
            except Exception:
                pass

    def describe(self, error: BaseException, name: str | None = None) -> str:
        """The one-line message for ``error`` (about the service ``name``, default the
        verb's NAME)."""
        name = self.options.get("name") if name is None else name
        target = f"{name!r}" if isinstance(name, str) else "the service"
        grape = self.grape
        if isinstance(error, errors.WrongProtocol):
            return error.message  # it says what was expected and what answered
        if isinstance(error, errors.LookupEmpty):
            return f"no peer is announced as {target} on the grape at {grape} ({error.wire})"
        if isinstance(error, errors.GrapeUnreachable):
            return f"cannot reach the grape at {grape}: is it running? ({error.message})"
        if isinstance(error, errors.RequestTimeout):
            seconds = f"{self.timeout:g} s"
            watched = self.watched if self.verb in ("request", "map", "sub") else None
            if watched is None or watched.lookup_failed:
                return f"the grape at {grape} did not answer within {seconds} ({error.wire})"
            return f"{target} did not answer within {seconds} ({error.wire})"
        if isinstance(error, errors.GrapeReplyError):
            status = f" (HTTP {error.status})" if error.status not in (None, 200) else ""
            return f"the grape at {grape} answered an error{status}: {error.message}"
        if isinstance(error, errors.RemoteError):
            return f"{target} answered an error: {error.message}"
        if isinstance(error, errors.DestinationUnreachable):
            return f"cannot connect to {target}: {error.message}"
        if isinstance(error, errors.TransportClosed):
            return f"the connection to {target} closed before its reply ({error.message})"
        if isinstance(error, errors.GrenacheError):
            return error.message
        if isinstance(error, CommandError):
            return str(error)
        return f"{type(error).__name__}: {error}"


def one_line(text: str) -> str:
    """``text`` with its whitespace runs (newlines included) made single spaces."""
    return " ".join(text.split())
