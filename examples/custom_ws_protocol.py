"""Subclassing the WebSocket transport: a server that admits only clients sending a token
header, and counts its open sockets.

::

    python examples/custom_ws_protocol.py

It runs a server and two clients on loopback, no grape needed, and prints what happened:
the client whose factory sends the ``X-Grenache-Token`` header gets its reply; the one without
it is refused during the WebSocket handshake (HTTP 403) and its request fails with
``DestinationUnreachable``.

The override points used (see :mod:`grenache.transports.ws`):

- ``RPCServerProtocol.accept_client(request)``: admit or refuse a client from its handshake;
- ``RPCServerProtocol.socket_opened()`` / ``socket_closed(reason)``: a socket opened, ended;
- ``RPCServerFactory.protocol``, and ``WSServerTransport(factory_class=...)``;
- ``RPCClientFactory`` subclassed to send a header, given as
  ``WSClientTransport(factory_class=...)``.
"""

from __future__ import annotations

from typing import Any

from autobahn.websocket.types import ConnectionRequest
from twisted.internet.task import react
from twisted.python.failure import Failure

from grenache.errors import DestinationUnreachable
from grenache.peer import OutgoingRequest, Request, new_rid
from grenache.transports.ws import (
    RPCClientFactory,
    RPCServerFactory,
    RPCServerProtocol,
    WSClientTransport,
    WSServerTransport,
)

TOKEN = "let-me-in"


class TokenServerProtocol(RPCServerProtocol):
    """Admits a client only if its handshake carries the factory's token; counts sockets."""

    counted = False

    def accept_client(self, request: ConnectionRequest) -> bool:
        return bool(request.headers.get("x-grenache-token") == self.factory.token)

    def socket_opened(self) -> None:
        self.counted = True
        self.factory.open_sockets += 1

    def socket_closed(self, reason: Failure) -> None:
        if self.counted:
            self.factory.open_sockets -= 1


class TokenServerFactory(RPCServerFactory):
    """The server's factory: builds :class:`TokenServerProtocol`, keeps the count."""

    protocol = TokenServerProtocol

    def __init__(self, owner: Any, *, reactor: Any, token: str = TOKEN) -> None:
        super().__init__(owner, reactor=reactor)
        self.token = token
        self.open_sockets = 0


class TokenClientFactory(RPCClientFactory):
    """A client socket factory that sends the token header in its handshake."""

    def __init__(self, url: str, *, reactor: Any) -> None:
        super().__init__(url, reactor=reactor)
        self.headers = {"X-Grenache-Token": TOKEN}


def shout(request: Request) -> str:
    """The service: answers the payload in capitals."""
    return str(request.payload).upper()


async def main(reactor: Any) -> dict[str, Any]:
    """Serve, call once with the token and once without; return (and print) what happened."""
    server = WSServerTransport(reactor, factory_class=TokenServerFactory)
    port = await server.listen("tcp:0:interface=127.0.0.1", shout)
    factory = server.factory
    assert isinstance(factory, TokenServerFactory)
    dest = f"127.0.0.1:{port}"

    admitted = WSClientTransport(reactor, factory_class=TokenClientFactory)
    stranger = WSClientTransport(reactor)
    outcome: dict[str, Any] = {}
    try:
        request = OutgoingRequest(new_rid(), "shout", "hi", timeout=10.0)
        outcome["reply"] = await admitted.request(dest, request)
        outcome["open_sockets"] = factory.open_sockets
        print(f"with the token: {outcome['reply']!r} ({factory.open_sockets} socket open)")
        try:
            await stranger.request(dest, OutgoingRequest(new_rid(), "shout", "hi", timeout=10.0))
        except DestinationUnreachable as e:
            outcome["refused"] = e.message
            print(f"without the token: refused ({e.message})")
    finally:
        await admitted.stop()
        await stranger.stop()
        await server.stop()
    outcome["open_sockets_after_stop"] = factory.open_sockets
    return outcome


if __name__ == "__main__":
    from twisted.internet.defer import ensureDeferred

    react(lambda reactor: ensureDeferred(main(reactor)))
