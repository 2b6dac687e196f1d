"""Test a Grenache service without a network: grapes, a link and transports in memory, on a
``Clock``.

A :class:`MemoryNetwork` runs real grapes (the DHT node and the grape API a ``twistd grape``
runs) on an in-memory UDP network, gives real :class:`~grenache.link.Link` objects that reach
them through an in-memory HTTP agent, and in-memory transports for RPC and pub/sub that the
peers (:class:`~grenache.peer.PeerRPCServer`, :class:`~grenache.peer.PeerRPCClient`,
:class:`~grenache.peer.PeerPub`, :class:`~grenache.peer.PeerSub`) take as they take the HTTP
and WebSocket ones. Nothing opens a socket and nothing waits for real time: timeouts, retries,
re-announces and announce expiry move with ``Clock.advance`` (or :meth:`MemoryNetwork.run`).

Requests and replies cross the network as JSON text, written and read by
:mod:`grenache.codec` as the WebSocket transport writes and reads them, so what would fail on
the wire fails here. Faults are injected per address: :meth:`MemoryNetwork.refuse`,
:meth:`MemoryNetwork.blackhole`, :meth:`MemoryNetwork.answer_error`,
:meth:`MemoryNetwork.drop_connections`, and :meth:`MemoryGrape.stop` for a grape that is down.
See docs/testing.rst for a complete example test.

Modules: :mod:`~grenache.testing.network` (the network and its faults),
:mod:`~grenache.testing.grape` (grapes and the link's agent), :mod:`~grenache.testing.rpc` and
:mod:`~grenache.testing.pubsub` (transports), :mod:`~grenache.testing.udp` (the UDP network).
"""

from grenache.testing.grape import MemoryGrape, MemoryGrapeAgent
from grenache.testing.network import Fault, MemoryNetwork
from grenache.testing.pubsub import MemoryPubTransport, MemorySubConnection, MemorySubTransport
from grenache.testing.rpc import MemoryClientTransport, MemoryServerTransport
from grenache.testing.udp import MemoryUDPNetwork, MemoryUDPPort

__all__ = [
    "Fault",
    "MemoryClientTransport",
    "MemoryGrape",
    "MemoryGrapeAgent",
    "MemoryNetwork",
    "MemoryPubTransport",
    "MemoryServerTransport",
    "MemorySubConnection",
    "MemorySubTransport",
    "MemoryUDPNetwork",
    "MemoryUDPPort",
]
