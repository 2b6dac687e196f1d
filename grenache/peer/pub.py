"""The publisher peer: sends messages to every connected subscriber and announces itself."""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred

from grenache.endpoints import ListenSpec
from grenache.peer.listener import AnnouncedListener
from grenache.peer.protocols import LinkProtocol, PubTransport

if TYPE_CHECKING:
    from grenache.metrics import Metrics

__all__ = ["PeerPub"]


class PeerPub(AnnouncedListener[PubTransport]):
    """Publishes messages to every connected subscriber and announces itself by name.

    :attr:`published` counts the messages given to :meth:`pub` and :attr:`delivered` the
    copies sent (a message to three subscribers counts three); ``metrics`` (a
    :class:`~grenache.metrics.Metrics`) reads them, and the transport's ``subscribers``, when
    scraped.
    """

    def __init__(
        self,
        link: LinkProtocol | None,
        transport: PubTransport,
        *,
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__(link, transport, metrics=metrics)
        self.published = 0
        self.delivered = 0
        if metrics is not None:
            metrics.watch_pub(self)

    def listen(self, where: ListenSpec = 0) -> Deferred[int]:
        """Start the transport on ``where`` (as :meth:`PeerRPCServer.listen
        <grenache.peer.PeerRPCServer.listen>`) and fire with the bound TCP port."""
        return self.transport.listen(where).addCallback(self._bound)

    def announce(self, name: str) -> Deferred[int]:
        """Announce ``name`` (as :meth:`AnnouncedListener.announce
        <grenache.peer.listener.AnnouncedListener.announce>`), and tell a transport that
        publishes under names (``add_topic``, ZeroMQ's) to publish under this one too."""
        add_topic = getattr(self.transport, "add_topic", None)
        if add_topic is not None:
            add_topic(name)
        return super().announce(name)

    def pub(self, message: str | bytes) -> int:
        """Send ``message`` to every subscriber; return how many it was sent to."""
        sent = self.transport.publish(message)
        self.published += 1
        self.delivered += sent
        return sent
