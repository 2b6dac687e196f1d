"""The publishing side of pub/sub over ZeroMQ: :class:`ZmqPubTransport` (work in progress)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail, succeed

from grenache.endpoints import ListenSpec

__all__ = ["ZmqPubTransport"]


class ZmqPubTransport:
    """The publishing side of ZeroMQ pub/sub (:class:`~grenache.peer.PubTransport`)."""

    def __init__(
        self, reactor: Any, *, tls: Any = None, interface: str = "", codec: str = "msgpack"
    ) -> None:
        self._reactor = reactor
        self.tls = tls
        self.interface = interface
        self.codec = codec

    def listen(self, where: ListenSpec) -> Deferred[int]:
        """Bind the PUB socket on ``where``; fires with the bound port."""
        return fail(NotImplementedError("ZmqPubTransport.listen"))

    def publish(self, message: str | bytes) -> int:
        """Send ``message`` under every announced name; return how many it was sent to."""
        return 0

    def stop(self) -> Deferred[None]:
        """Close the socket."""
        return succeed(None)
