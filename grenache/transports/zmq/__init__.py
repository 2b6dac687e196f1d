"""RPC and pub/sub over ZeroMQ (txzmq over pyzmq), msgpack by default, CURVE as an option.

Grenache's Node.js ZeroMQ package never worked, so there is nothing to be wire-compatible with:
this package defines the frames, specified in docs/protocol.rst, *RPC over ZeroMQ* and
*Pub/sub over ZeroMQ*; docs/zeromq.rst is the user's guide. It implements the transport
protocols of :mod:`grenache.peer`:

- :mod:`~grenache.transports.zmq.server`: :class:`ZmqServerTransport` (a ROUTER socket);
- :mod:`~grenache.transports.zmq.client`: :class:`ZmqClientTransport` (a DEALER socket per
  destination, a socket monitor telling refused, dead and refusing peers apart);
- :mod:`~grenache.transports.zmq.pub` and :mod:`~grenache.transports.zmq.sub`:
  :class:`ZmqPubTransport` (PUB) and :class:`ZmqSubTransport` (SUB);
- :mod:`~grenache.transports.zmq.frames`: codecs, frames, addresses, the socket options
  (:class:`SocketOptions`: high-water marks, message size, reconnect and heartbeat
  intervals, batch size) and the txzmq socket class every transport uses, which sends the
  RPC requests and replies of one reactor turn as batches;
- :mod:`~grenache.transports.zmq.curve`: CURVE keys and key files, :class:`CurveServer`,
  :class:`CurveClient`, the reactor-driven ZAP handler.

Constructors take ``(reactor, *, tls=None, interface="")`` (listening side) or ``(reactor, *,
tls=None)`` (dialing side), as the other transports do, where ``tls`` is a
:class:`CurveServer` / :class:`CurveClient` (``None``: plaintext), and ``codec``
(``"msgpack"`` or ``"json"``). ZeroMQ binds its own sockets: ``listen`` takes a port number or
``tcp:PORT[:interface=ADDR]``, not a Twisted endpoint.
"""

from __future__ import annotations

from grenache.transports.zmq.client import ZmqClientTransport
from grenache.transports.zmq.curve import (
    CurveClient,
    CurveKeyPair,
    CurveRefused,
    CurveServer,
    generate_keypair,
    read_client_keys,
    read_keypair_file,
    write_keypair_file,
)
from grenache.transports.zmq.frames import CODECS, DEFAULT_CODEC, SocketOptions
from grenache.transports.zmq.pub import ZmqPubTransport
from grenache.transports.zmq.server import ZmqServerTransport
from grenache.transports.zmq.sub import ZmqSubTransport

__all__ = [
    "CODECS",
    "DEFAULT_CODEC",
    "CurveClient",
    "CurveKeyPair",
    "CurveRefused",
    "CurveServer",
    "SocketOptions",
    "ZmqClientTransport",
    "ZmqPubTransport",
    "ZmqServerTransport",
    "ZmqSubTransport",
    "generate_keypair",
    "read_client_keys",
    "read_keypair_file",
    "write_keypair_file",
]
