"""RPC and pub/sub over WebSocket (autobahn), compatible with grenache-nodejs-ws 1.0.0.

The wire format is docs/protocol.rst, *RPC over WebSocket* and *Pub/sub over WebSocket*; this
package implements the transport protocols of :mod:`grenache.peer`
(:class:`~grenache.peer.ServerTransport`, :class:`~grenache.peer.ClientTransport`,
:class:`~grenache.peer.PubTransport`, :class:`~grenache.peer.SubTransport`). One module per job:

- :mod:`~grenache.transports.ws.server`: :class:`WSServerTransport`, :class:`RPCServerFactory`,
  :class:`RPCServerProtocol`;
- :mod:`~grenache.transports.ws.client`: :class:`WSClientTransport`, :class:`RPCClientFactory`,
  :class:`RPCClientProtocol`;
- :mod:`~grenache.transports.ws.pub` and :mod:`~grenache.transports.ws.sub`: the publisher
  (:class:`WSPubTransport`, :class:`PubFactory`, :class:`PubProtocol`) and the subscriber
  (:class:`WSSubTransport`, :class:`SubFactory`, :class:`SubProtocol`);
- :mod:`~grenache.transports.ws.listening` and :mod:`~grenache.transports.ws.connector`: what
  the listening and the dialing transports share (endpoints, socket bookkeeping);
- :mod:`~grenache.transports.ws.certificates`: :func:`fingerprint_whitelist`;
- :mod:`~grenache.transports.ws.limits`: the servers' per-socket bounds (output a client does
  not read, the opening handshake), shared with the grape's WebSocket API;
- :mod:`~grenache.transports.ws.common`: limits, socket options, error texts.

The read and write shortcuts that use autobahn's private frame state live in
:mod:`grenache.speedups.autobahn_ws`, which falls back to autobahn's public path when the
installed autobahn lacks them.

Endpoints
---------

``WSServerTransport.listen(where, serve)`` and ``WSPubTransport.listen(where)`` take a port
number (bound to the transport's ``interface``), an endpoint description
(``"tcp:0:interface=127.0.0.1"``, ``"tcp6:0"``, ``"ssl:8443:privateKey=key.pem:certKey=cert.pem"``)
or an ``IStreamServerEndpoint``, and fire with the bound port. Clients connect to ``host:port``
destinations: a host name (resolved by the reactor), an IPv4 address, or an IPv6 address in
brackets (``[::1]:1337``).

Subclassing
-----------

Each transport names its factory in the class attribute ``factory_class`` (or takes
``factory_class=`` when built), and each factory names the per-socket protocol in ``protocol``.
The protocols' override points (accepting a client, a socket opened or closed, each request or
message) are listed in their modules; ``examples/custom_ws_protocol.py`` is a runnable example.

RPC frames
----------

The client connects to ``ws://<dest>/ws`` (``wss://`` with TLS); the server accepts any path.
A request is one text frame holding compact JSON ``[rid, key, payload]``; the reply is one text
frame ``[rid, err, result]`` with ``err`` the error string or ``null``. Many requests may be in
flight on one socket and replies go out as their handlers finish, in any order; the client
matches them by ``rid``. The server accepts binary frames holding the same JSON, as Node's
does. Example::

    client -> server  81 b9 <mask> ["c69efa1c-fd7f-4a05-b203-ee2b82dcd773","rpc_ws","hello"]
    server -> client  81 35 ["c69efa1c-fd7f-4a05-b203-ee2b82dcd773",null,"world"]

Deliberate differences from Node
--------------------------------

(docs/protocol.rst, *Deliberate differences from Node.js*.)

- **Bad frames are answered.** A frame that is not JSON (or not UTF-8), not a JSON array, or
  whose key is not a string gets ``[rid,"ERR_REQUEST_PARSE",null]`` (``rid`` is the array's
  first element when there is one, else ``null``) and the socket stays open. Node sends
  nothing, and its client waits until its timeout, or forever without one.
- **Requests fail when their socket closes.** A request already sent on a socket that closes
  fails at once with :class:`~grenache.errors.TransportClosed` (``ERR_TRANSPORT_CLOSE``);
  Node only fails the queued, unsent ones and lets the others wait for a timeout.
- **Refused connections are errors, not crashes.** A connection that cannot be made (refused,
  unreachable, TLS or WebSocket handshake refused) fails the requests waiting for it with
  :class:`~grenache.errors.DestinationUnreachable`; a Node client with no ``'error'`` listener
  dies of it. A destination that answers as a plain HTTP service fails them with
  :class:`~grenache.errors.WrongProtocol` ("... is an HTTP service, not WebSocket").
- **Bounded output.** A server socket whose client does not read is not read from either, and
  is dropped past ``max_pending_output`` bytes (1 MiB; 4 MiB for a publisher's subscriber) or
  ``pending_output_timeout`` seconds (30) of output waiting; Node's servers buffer without
  bound. The opening handshake has a 10 s deadline and a 16 KiB request head limit.
- **Finite timeouts** always (:class:`~grenache.peer.OutgoingRequest` carries one).
- **Idle sockets are closed**: by the client after ``idle_timeout`` seconds without a request
  in flight (Node's 120 s), and by the server after its own ``idle_timeout`` (300 s; Node never
  closes). A Node client simply reconnects on its next request.
- **One socket per destination** on the client: all requests to a dest are multiplexed on it
  (Node's pool opens up to three).
- :meth:`WSPubTransport.stop` closes the listening port *and* the subscribers' sockets (Node
  leaves both open). Subscriber sockets send a WebSocket ping after ``heartbeat_interval``
  seconds of silence and are closed when nothing comes back, so a publisher that vanished
  without closing its TCP connection is noticed (Node never notices).
- TLS works for pub/sub too when both ends are Python (Node's pub/sub has none).
- The ``compress`` flag of :class:`~grenache.peer.OutgoingRequest` is ignored: the Node ws
  transport has no compression, and none is negotiated on the socket either.

Timers
------

Each transport has **one** timer (:class:`~grenache.timers.DeadlineTimer`), set for the
earliest thing due: a request timeout, an idle socket, a heartbeat. Nothing is scheduled per
request or per socket, and no timer runs while nothing is due. The one exception is a server
socket whose client does not read: it has its own deadline while its output is held back
(:mod:`~grenache.transports.ws.limits`). Request timeouts are exact to
within ``grenache.timers.RESOLUTION`` (0.05 s) under load. autobahn's own handshake timers run
on its batched timer, on the transport's reactor.

TLS
---

A server's ``tls`` is a :class:`~grenache.tls.ServerTLS` (PEM, Node's option names) or any
OpenSSL context factory; a client's a :class:`~grenache.tls.ClientTLS` or any Twisted TLS
connection creator. A server with TLS asks every client for a certificate (Node forces
``requestCert``): ``ServerTLS`` gets ``request_cert`` set, and another context factory whose
context does not verify peers gets ``VERIFY_PEER`` with a callback that accepts any
certificate. The decision is then ``verify_client``'s, called with the certificate's
fingerprint, as Node's ``verifyClient`` reads ``getPeerCertificate().fingerprint``;
:func:`fingerprint_whitelist` builds such a hook (docs/protocol.rst, *TLS and fingerprints*).
The handler sees the fingerprint in :attr:`~grenache.peer.Request.peer_certificate` (and the
DER in ``peer_certificate_der``) to authorise per action. A failed TLS handshake fails requests
with :class:`~grenache.errors.TLSHandshakeError` (a kind of ``DestinationUnreachable``).
``tls`` wraps whatever ``listen`` is given (a port, a ``tcp:``/``tcp6:`` description, an
endpoint); an ``ssl:`` description brings its own TLS and is refused together with ``tls``.
"""

from __future__ import annotations

from grenache.transports.ws.certificates import VerifyClient, fingerprint_whitelist
from grenache.transports.ws.client import (
    RPCClientFactory,
    RPCClientProtocol,
    WSClientTransport,
)
from grenache.transports.ws.common import DEFAULT_MAX_IN_FLIGHT, DEFAULT_MAX_MESSAGE_SIZE
from grenache.transports.ws.connector import ClientFactory, OutgoingProtocol
from grenache.transports.ws.limits import (
    DEFAULT_MAX_PENDING_OUTPUT,
    DEFAULT_PENDING_OUTPUT_TIMEOUT,
    DEFAULT_PUBLISHER_MAX_PENDING_OUTPUT,
    Limits,
)
from grenache.transports.ws.listening import ServerFactory
from grenache.transports.ws.pub import PubFactory, PubProtocol, WSPubTransport
from grenache.transports.ws.server import (
    RPCServerFactory,
    RPCServerProtocol,
    Serve,
    WSServerTransport,
)
from grenache.transports.ws.sub import SubFactory, SubProtocol, WSSubTransport

__all__ = [
    "DEFAULT_MAX_IN_FLIGHT",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_MAX_PENDING_OUTPUT",
    "DEFAULT_PENDING_OUTPUT_TIMEOUT",
    "DEFAULT_PUBLISHER_MAX_PENDING_OUTPUT",
    "ClientFactory",
    "Limits",
    "OutgoingProtocol",
    "PubFactory",
    "PubProtocol",
    "RPCClientFactory",
    "RPCClientProtocol",
    "RPCServerFactory",
    "RPCServerProtocol",
    "Serve",
    "ServerFactory",
    "SubFactory",
    "SubProtocol",
    "VerifyClient",
    "WSClientTransport",
    "WSPubTransport",
    "WSServerTransport",
    "WSSubTransport",
    "fingerprint_whitelist",
]
