"""What :class:`~grenache.peer.PeerRPCServer` and :class:`~grenache.peer.PeerPub` share: the
port their transport listens on, announcing it by name through the link, and stopping both."""

from __future__ import annotations

from typing import TYPE_CHECKING, Generic, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger

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
        """Stop announcing, then stop the transport."""
        if self._stopped:
            return succeed(None)
        self._stopped = True
        for name, port in self._announced:
            try:
                assert self.link is not None
                self.link.stop_announcing(name, port)
            except Exception:
                log.failure("stop_announcing({name}, {port}) failed", name=name, port=port)
        self._announced.clear()
        return self.transport.stop()
