"""The publisher peer: sends messages to every connected subscriber and announces itself."""

from __future__ import annotations

from twisted.internet.defer import Deferred

from grenache.endpoints import ListenSpec
from grenache.peer.listener import AnnouncedListener
from grenache.peer.protocols import PubTransport

__all__ = ["PeerPub"]


class PeerPub(AnnouncedListener[PubTransport]):
    """Publishes messages to every connected subscriber and announces itself by name."""

    def listen(self, where: ListenSpec = 0) -> Deferred[int]:
        """Start the transport on ``where`` (as :meth:`PeerRPCServer.listen
        <grenache.peer.PeerRPCServer.listen>`) and fire with the bound TCP port."""
        return self.transport.listen(where).addCallback(self._bound)

    def pub(self, message: str | bytes) -> int:
        """Send ``message`` to every subscriber; return how many it was sent to."""
        return self.transport.publish(message)
