"""The subscribing side of pub/sub over ZeroMQ: :class:`ZmqSubTransport` (work in progress)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed

from grenache.peer.protocols import SubConnection

__all__ = ["ZmqSubTransport"]


class ZmqSubTransport:
    """The subscribing side of ZeroMQ pub/sub (:class:`~grenache.peer.SubTransport`)."""

    def __init__(self, reactor: Any, *, tls: Any = None, codec: str = "msgpack") -> None:
        self._reactor = reactor
        self.tls = tls
        self.codec = codec

    def connect(
        self,
        dest: str,
        on_message: Callable[[str | bytes], None],
        on_close: Callable[[], None],
        *,
        topic: str | None = None,
    ) -> Deferred[SubConnection]:
        """Subscribe to ``topic`` at the publisher ``dest``; fires once connected."""
        return fail(NotImplementedError("ZmqSubTransport.connect"))

    def stop(self) -> Deferred[None]:
        """Close every socket."""
        return succeed(None)
