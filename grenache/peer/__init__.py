"""Transport-neutral Grenache peers: RPC client and server, publisher and subscriber.

A peer finds other peers through a link (:class:`LinkProtocol`: ``lookup``,
``start_announcing``, ``stop_announcing``) and talks to them through a transport object
(HTTP, WebSocket: :mod:`grenache.transports`). This package knows no transport: it declares
what a transport must provide (:mod:`grenache.peer.protocols`) and the algorithms above it,
which follow grenache-nodejs-base 1.0.0 except where docs/protocol.rst, *Deliberate
differences from Node.js*, says otherwise.

- :mod:`~grenache.peer.protocols`: the link and transport protocols;
- :mod:`~grenache.peer.request`: requests, handlers and the helpers transports share;
- :mod:`~grenache.peer.coroutines`: coroutines under the default and the asyncio reactor;
- :mod:`~grenache.peer.server`, :mod:`~grenache.peer.client`: RPC;
- :mod:`~grenache.peer.pub`, :mod:`~grenache.peer.sub`: pub/sub.
"""

from grenache.peer.client import PeerRPCClient
from grenache.peer.coroutines import as_future, to_deferred
from grenache.peer.protocols import (
    ClientTransport,
    LinkProtocol,
    PubTransport,
    ServerTransport,
    StreamClientTransport,
    SubConnection,
    SubTransport,
)
from grenache.peer.pub import PeerPub
from grenache.peer.request import (
    Handler,
    OutgoingRequest,
    Reply,
    Request,
    call_handler,
    error_message,
    new_rid,
    random_bytes,
)
from grenache.peer.server import PeerRPCServer
from grenache.peer.sub import PeerSub

__all__ = [
    "ClientTransport",
    "Handler",
    "LinkProtocol",
    "OutgoingRequest",
    "PeerPub",
    "PeerRPCClient",
    "PeerRPCServer",
    "PeerSub",
    "PubTransport",
    "Reply",
    "Request",
    "ServerTransport",
    "StreamClientTransport",
    "SubConnection",
    "SubTransport",
    "as_future",
    "call_handler",
    "error_message",
    "new_rid",
    "random_bytes",
    "to_deferred",
]
