"""The RPC server peer: serves requests through a server transport and announces itself."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

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

__all__ = ["PeerRPCServer"]

log = Logger()


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
    seconds, then one line with the number left out. ``reactor`` is the clock of that
    window (the link's own is a good choice); without one, :func:`time.monotonic` is used.
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
    ) -> None:
        super().__init__(link, transport)
        overridden = type(self).handle is not PeerRPCServer.handle
        if handler is None and not overridden:
            raise TypeError("give PeerRPCServer a handler, or subclass it and override handle()")
        self.handler = handler
        self._handle: Handler = self.handle if overridden or handler is None else handler
        clock: Any = reactor if reactor is not None else MonotonicClock()
        self._failures = FailureLog(log, clock, limit=log_limit, window=log_window)

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
        return self.transport.listen(where, self._serve).addCallback(self._bound)

    def _serve(self, request: Request) -> Deferred[Any]:
        d = call_handler(self._handle, request)
        if d.called and not isinstance(d.result, Failure):
            return d
        return d.addErrback(self._failed, request)

    def _failed(self, failure: Failure, request: Request) -> Failure:
        if not failure.check(CancelledError):
            self._failures.failed(failure, request.key, f"handler for {request.key!r}")
        return failure

    def stop(self) -> Deferred[None]:
        """Stop announcing, report suppressed handler failures, stop the transport."""
        self._failures.flush()
        return super().stop()
