"""What :class:`~grenache.peer.PeerRPCServer` and :class:`~grenache.peer.PeerPub` share: the
port their transport listens on, announcing it by name through the link, and stopping both."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic, TypeVar

from twisted.internet.defer import Deferred, fail, gatherResults, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from grenache.peer.protocols import LinkProtocol, PubTransport, ServerTransport

if TYPE_CHECKING:
    from grenache.metrics import Metrics

__all__ = ["AnnouncedListener"]

log = Logger()

_ListeningT = TypeVar("_ListeningT", ServerTransport, PubTransport)


class AnnouncedListener(Generic[_ListeningT]):
    """A transport that listens, and the names it is announced under.

    ``link`` may be ``None`` for a peer that is only reached directly (tests, fixed
    addresses); :meth:`announce` then fails. With ``metrics`` (a
    :class:`~grenache.metrics.Metrics`), every announce the link makes for it is counted by
    name and outcome.
    """

    def __init__(
        self,
        link: LinkProtocol | None,
        transport: _ListeningT,
        *,
        metrics: Metrics | None = None,
    ) -> None:
        self.link = link
        self.metrics = metrics
        self.transport: _ListeningT = transport
        self._port: int | None = None
        self._announced: list[tuple[str, int]] = []
        self._stopped = False

    @property
    def port(self) -> int:
        """The TCP port the transport listens on (0 for an endpoint without one, e.g. a UNIX
        socket); raises RuntimeError before ``listen`` completed."""
        if self._port is None:
            raise RuntimeError(f"{type(self).__name__}.listen() has not completed")
        return self._port

    def _bound(self, actual: int) -> int:
        self._port = actual
        return actual

    def announce(self, name: str) -> Deferred[int]:
        """Announce ``name`` on the bound port until :meth:`stop` (``link.start_announcing``);
        fires with the first announce's result."""
        if self.link is None:
            return fail(RuntimeError(f"{type(self).__name__} has no link to announce with"))
        port = self.port
        if port == 0:
            return fail(RuntimeError(f"{type(self).__name__} has no TCP port to announce"))
        self._announced.append((name, port))
        if self.metrics is not None:
            self.metrics.count_announces(self.link)
        return self.link.start_announcing(name, port)

    def stop(self) -> Deferred[None]:
        """Stop announcing, then stop the transport.

        :class:`~grenache.link.Link`'s ``stop_announcing`` also unannounces each name, so
        that lookups stop finding this peer at once; the transport stops once that ended
        (at most the link's ``request_timeout``; never an error: a grape without unannounce
        leaves the peer in lookups until its last announce expires). A link whose
        ``stop_announcing`` returns nothing is not waited for.
        """
        if self._stopped:
            return succeed(None)
        self._stopped = True
        leaving = [self._stop_announcing(name, port) for name, port in self._announced]
        self._announced.clear()
        if not leaving:
            return self.transport.stop()
        return gatherResults(leaving).addCallback(lambda _: self.transport.stop())

    def _stop_announcing(self, name: str, port: int) -> Deferred[None]:
        assert self.link is not None
        d: Deferred[Any] = maybeDeferred(self.link.stop_announcing, name, port)

        def failed(failure: Failure) -> None:
            log.failure("stop_announcing({name}, {port}) failed", failure, name=name, port=port)

        return d.addErrback(failed)
