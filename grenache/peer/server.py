"""The RPC server peer: serves requests through a server transport and announces itself."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from grenache import errors
from grenache.endpoints import ListenSpec
from grenache.peer.failurelog import (
    DEFAULT_LOG_LIMIT,
    DEFAULT_LOG_WINDOW,
    FailureLog,
    MonotonicClock,
)
from grenache.peer.listener import AnnouncedListener
from grenache.peer.protocols import LinkProtocol, ServerTransport
from grenache.peer.request import Handler, Request, call_handler
from grenache.timers import Deadlines

if TYPE_CHECKING:
    from grenache.metrics import CallRecorder, Metrics

__all__ = ["DEFAULT_HANDLER_TIMEOUT", "PeerRPCServer"]

log = Logger()

DEFAULT_HANDLER_TIMEOUT = 60.0
"""Seconds a handler has to answer before the request is answered with ``ERR_HANDLER_TIMEOUT``.

Six times the clients' default request timeout (10 s): a caller using the defaults has given
up long before, so the deadline never cuts short a handler someone still waits for; it only
bounds how long an abandoned request (and its connection's in-flight slot) is held."""


class _Pending:
    """One request whose handler has not answered yet: the Deferred the transport waits on
    (``reply``) and the handler's own (``work``). It is in ``pending`` (its server's set) and
    in ``deadlines`` until ``reply`` fires."""

    __slots__ = ("deadlines", "pending", "reply", "request", "work")

    def __init__(
        self,
        request: Request,
        work: Deferred[Any],
        deadlines: Deadlines[_Pending],
        pending: set[_Pending],
    ) -> None:
        self.request = request
        self.work = work
        self.deadlines: Deadlines[_Pending] | None = deadlines
        self.pending = pending
        pending.add(self)
        self.reply: Deferred[Any] = Deferred(self._cancel)

    def done(self) -> bool:
        return self.reply.called

    def settle(self, outcome: Any) -> None:
        """The handler answered: pass its outcome on, unless the reply was already sent."""
        if not self.reply.called:
            self._finish()
            self.reply.callback(outcome)  # a Failure errbacks
        # else late: discarded (a failure other than the cancellation was logged already)

    def expire(self) -> None:
        """The deadline passed: answer with the typed error, then cancel the handler."""
        if self.reply.called:
            return
        self._finish()
        self.reply.errback(errors.HandlerTimeout())
        self.work.cancel()

    def _cancel(self, reply: Deferred[Any]) -> None:
        # The transport (or stop) gave up on the reply: so does the handler. The reply fails
        # with the handler's CancelledError, or Deferred.cancel's own if the handler is slower.
        self._finish()
        self.work.cancel()

    def _finish(self) -> None:
        self.pending.discard(self)
        deadlines = self.deadlines
        if deadlines is not None:
            self.deadlines = None
            deadlines.finished()


class PeerRPCServer(AnnouncedListener[ServerTransport]):
    """Answers requests arriving on a server transport, and announces itself through ``link``.

    Give a ``handler`` function, or subclass and override :meth:`handle`::

        class Greeter(PeerRPCServer):
            def handle(self, request: Request) -> str:
                return f"hello {request.payload}"

        server = Greeter(link, HTTPServerTransport(reactor))

    ``link`` may be ``None`` for a server that is only reached directly (tests, fixed
    addresses); :meth:`announce` then fails.

    A request whose handler raises (or fails its Deferred, or raises in its coroutine) is
    answered with the error's string (:func:`~grenache.peer.error_message`) and logged with
    its traceback: at most ``log_limit`` tracebacks per service name in ``log_window``
    seconds, then one line with the number left out.

    A handler that has not answered ``handler_timeout`` seconds after the request arrived
    (default :data:`DEFAULT_HANDLER_TIMEOUT`) is given up on: the request is answered with
    ``ERR_HANDLER_TIMEOUT`` (:class:`~grenache.errors.HandlerTimeout`, logged as a handler
    failure), and the handler's Deferred or coroutine is cancelled; whatever it answers later
    is discarded. ``None`` waits forever. The attribute of the same name is read for each
    request. One timer serves every pending request.
    :meth:`stop` cancels the handlers still running (their replies cannot be delivered).

    ``reactor`` is the clock of both (the deadline needs ``callLater``); without one, the
    deadline runs on the ``reactor`` attribute of the link or the transport (the project's
    link and HTTP transport have one), and the failure window on :func:`time.monotonic`. With
    no reactor anywhere, there is no handler deadline.

    ``metrics`` (a :class:`~grenache.metrics.Metrics`; none by default, and then nothing is
    counted) counts requests by key and outcome (``ok``, ``error``, ``timeout``,
    ``cancelled``) with their latency, requests in flight, the transport's open connections
    and the announces.
    """

    def __init__(
        self,
        link: LinkProtocol | None,
        transport: ServerTransport,
        handler: Handler | None = None,
        *,
        reactor: IReactorTime | None = None,
        log_limit: int = DEFAULT_LOG_LIMIT,
        log_window: float = DEFAULT_LOG_WINDOW,
        handler_timeout: float | None = DEFAULT_HANDLER_TIMEOUT,
        metrics: Metrics | None = None,
    ) -> None:
        if handler_timeout is not None and not (0 < handler_timeout < math.inf):
            raise ValueError("handler_timeout must be a positive number of seconds, or None")
        super().__init__(link, transport, metrics=metrics)
        overridden = type(self).handle is not PeerRPCServer.handle
        if handler is None and not overridden:
            raise TypeError("give PeerRPCServer a handler, or subclass it and override handle()")
        self.handler = handler
        self._handle: Handler = self.handle if overridden or handler is None else handler
        clock: Any = reactor if reactor is not None else MonotonicClock()
        self._failures = FailureLog(log, clock, limit=log_limit, window=log_window)
        self.handler_timeout = handler_timeout
        timer_clock: Any = reactor
        for owner in (link, transport):
            if timer_clock is None:
                timer_clock = getattr(owner, "reactor", None)
        self._deadlines: Deadlines[_Pending] | None = None
        if timer_clock is not None:
            self._deadlines = Deadlines(timer_clock, self._expired, _Pending.done)
        self._pending: set[_Pending] = set()
        self._calls: CallRecorder | None = None
        # Chosen once: without metrics a request costs nothing more.
        self._serve_request: Callable[[Request], Deferred[Any]] = self._serve
        if metrics is not None:
            self._calls = metrics.watch_rpc_server(transport)
            self._serve_request = self._metered_serve

    def handle(self, request: Request) -> Any:
        """Answer ``request``: a value, a Deferred or a coroutine (an ``async def`` method).

        Override this in a subclass instead of passing a handler. Raising (or failing) sends
        the error's string to the caller. The default calls the handler given to the
        constructor.
        """
        if self.handler is None:
            raise NotImplementedError(f"{type(self).__name__} has no handler")
        return self.handler(request)

    def listen(self, where: ListenSpec = 0) -> Deferred[int]:
        """Start the transport on ``where`` (a port number, 0 for any; an endpoint
        description such as ``"tcp6:0"``; or a server endpoint) and fire with the bound TCP
        port (0 for an endpoint without one, which cannot be announced)."""
        return self.transport.listen(where, self._serve_request).addCallback(self._bound)

    def _serve(self, request: Request) -> Deferred[Any]:
        d = call_handler(self._handle, request)
        if d.called and not d.paused:
            if isinstance(d.result, Failure):
                d.addErrback(self._failed, request)
            return d
        d.addErrback(self._failed, request)
        deadlines = self._deadlines
        timeout = self.handler_timeout
        if deadlines is None or timeout is None:
            return d
        pending = _Pending(request, d, deadlines, self._pending)
        deadlines.add(pending, timeout)
        d.addBoth(pending.settle)
        return pending.reply

    def _metered_serve(self, request: Request) -> Deferred[Any]:
        assert self._calls is not None
        cell = self._calls.stats(request.key)
        cell.started += 1
        start = cell.timer()
        d = self._serve(request)
        if d.called and not d.paused:
            cell.finish(d.result, start)
        else:
            d.addBoth(cell.finish, start)
        return d

    def _expired(self, pending: _Pending) -> None:
        request = pending.request
        self._failures.failed(
            Failure(errors.HandlerTimeout(f"no answer within {self.handler_timeout:g} s")),
            request.key,
            f"handler for {request.key!r}",
        )
        pending.expire()

    def _failed(self, failure: Failure, request: Request) -> Failure:
        if not failure.check(CancelledError):
            self._failures.failed(failure, request.key, f"handler for {request.key!r}")
        return failure

    def stop(self) -> Deferred[None]:
        """Stop announcing, stop the transport, cancel the handlers still running, report
        suppressed handler failures."""
        stopped = super().stop()
        for pending in list(self._pending):
            pending.reply.cancel()
        if self._deadlines is not None:
            self._deadlines.clear()
        self._failures.flush()
        return stopped
