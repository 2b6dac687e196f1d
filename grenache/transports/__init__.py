"""The transports this installation has, by name: what ``--transport`` chooses from.

One registry for the ``grenache`` command and ``twistd grenache-service``. Each entry names
the module holding the transport and its classes, and builds them from the reactor and the
TLS settings; the module is imported only when a transport of that kind is built, so a
command that never talks WebSocket never imports autobahn.

- ``http``: RPC over HTTP (docs/protocol.rst, *RPC over HTTP*);
- ``ws``: RPC and publish/subscribe over WebSocket (docs/protocol.rst, *RPC over WebSocket*,
  *Pub/sub over WebSocket*);
- ``zmq``: RPC and publish/subscribe over ZeroMQ, msgpack or JSON, CURVE for security
  (docs/protocol.rst, *RPC over ZeroMQ*, *Pub/sub over ZeroMQ*; docs/zeromq.rst). Its
  ``tls`` is a :class:`~grenache.transports.zmq.CurveServer` or
  :class:`~grenache.transports.zmq.CurveClient`.

A transport is listed here once it exists; asking for any other name raises
:class:`UnknownTransport`, whose message lists what is available.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import attrs

__all__ = [
    "TRANSPORTS",
    "TransportEntry",
    "UnknownTransport",
    "get_transport",
    "transport_names",
]


class UnknownTransport(ValueError):
    """No transport of that name (for that use); the message lists the available ones."""


@attrs.frozen
class TransportEntry:
    """One transport: where its classes live and how to build them.

    ``server``/``client`` name the RPC classes, ``publisher``/``subscriber`` the pub/sub
    ones (``None`` when the transport has no publish/subscribe). Server-side constructors get
    ``tls`` (a :class:`~grenache.tls.ServerTLS` or an OpenSSL context factory) and
    ``interface`` (the address a bare port number binds); client-side ones get ``tls`` (a
    :class:`~grenache.tls.ClientTLS`). ``None`` means plain TCP.
    """

    name: str
    module: str
    description: str
    server: str
    client: str
    publisher: str | None = None
    subscriber: str | None = None

    @property
    def pubsub(self) -> bool:
        """Whether the transport has publish/subscribe."""
        return self.publisher is not None and self.subscriber is not None

    def load(self, class_name: str) -> Any:
        """``class_name`` from the transport's module, imported now."""
        return getattr(importlib.import_module(self.module), class_name)

    def server_transport(self, reactor: Any, *, tls: Any = None, interface: str = "") -> Any:
        """A new RPC server transport on ``reactor``."""
        return self.load(self.server)(reactor, tls=tls, interface=interface)

    def client_transport(self, reactor: Any, *, tls: Any = None) -> Any:
        """A new RPC client transport on ``reactor``."""
        return self.load(self.client)(reactor, tls=tls)

    def pub_transport(self, reactor: Any, *, tls: Any = None, interface: str = "") -> Any:
        """A new publisher transport on ``reactor``."""
        if self.publisher is None:
            raise UnknownTransport(_no_pubsub(self.name))
        return self.load(self.publisher)(reactor, tls=tls, interface=interface)

    def sub_transport(self, reactor: Any, *, tls: Any = None) -> Any:
        """A new subscriber transport on ``reactor``."""
        if self.subscriber is None:
            raise UnknownTransport(_no_pubsub(self.name))
        return self.load(self.subscriber)(reactor, tls=tls)


TRANSPORTS: Mapping[str, TransportEntry] = {
    entry.name: entry
    for entry in (
        TransportEntry(
            "http",
            "grenache.transports.http",
            "RPC over HTTP(S), as grenache-nodejs-http",
            server="HTTPServerTransport",
            client="HTTPClientTransport",
        ),
        TransportEntry(
            "ws",
            "grenache.transports.ws",
            "RPC and pub/sub over WebSocket, as grenache-nodejs-ws",
            server="WSServerTransport",
            client="WSClientTransport",
            publisher="WSPubTransport",
            subscriber="WSSubTransport",
        ),
        TransportEntry(
            "zmq",
            "grenache.transports.zmq",
            "RPC and pub/sub over ZeroMQ (msgpack or JSON, CURVE)",
            server="ZmqServerTransport",
            client="ZmqClientTransport",
            publisher="ZmqPubTransport",
            subscriber="ZmqSubTransport",
        ),
    )
}
"""Every transport, by name, in the order help texts list them."""


def transport_names(*, pubsub: bool = False) -> list[str]:
    """The names of the transports (only those with publish/subscribe when ``pubsub``)."""
    return [name for name, entry in TRANSPORTS.items() if entry.pubsub or not pubsub]


def get_transport(name: str, *, pubsub: bool = False) -> TransportEntry:
    """The entry for ``name``; :class:`UnknownTransport` when there is none (or, with
    ``pubsub``, when it has no publish/subscribe)."""
    entry = TRANSPORTS.get(name)
    if entry is None:
        available = ", ".join(transport_names(pubsub=pubsub))
        raise UnknownTransport(f"unknown transport {name!r} (available: {available})")
    if pubsub and not entry.pubsub:
        raise UnknownTransport(_no_pubsub(name))
    return entry


def _no_pubsub(name: str) -> str:
    available = ", ".join(transport_names(pubsub=True))
    return f"the {name} transport has no publish/subscribe (available: {available})"
