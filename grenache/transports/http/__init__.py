"""RPC over HTTP, byte-compatible with grenache-nodejs-http 1.0.x.

The wire formats are in docs/protocol.rst, *RPC over HTTP* and *HTTP streaming*.

Wire format: the client POSTs ``[rid, key, payload]`` as JSON to ``/`` of ``ip:port`` with the
header ``grc-compress: gzip|none``; the server answers status 200 with ``[rid, error|null,
result]``. With ``grc-compress: gzip`` both bodies are raw gzip streams, signalled by that header
only: **no** ``Content-Encoding`` (node-fetch would inflate it and the Node client would then
fail its own gunzip), and the reply carries no ``Content-Type`` either.

Server (:class:`HTTPServerTransport`, in :mod:`grenache.transports.http.server`), on the lean
server of :mod:`grenache.http.server`, listening on a port number, an endpoint description or an
endpoint (:mod:`grenache.endpoints`):

- method and path are ignored; ``Content-Length`` and chunked bodies are read whole (a chunked
  body only sets Node's ``meta.isStream``; buffered handling is the same);
- a ``_gr`` header ``[rid, key]`` overrides the body's rid and key where its elements are truthy
  (Node's ``getRidKey``); a ``_gr`` that is not JSON is answered with status 500 and Node's
  literal ``[null, "ERR_HEADER_PARSE_GR", null]``;
- a body that gunzip refuses is used raw, as Node does (so a client that says gzip and sends
  JSON still works);
- **deliberate difference** (docs/protocol.rst, *Deliberate differences from Node.js*): a
  body that is not a JSON array is answered with status
  400 and ``[null,"ERR_REQUEST_PARSE",null]``; Node sends nothing and its client hangs;
- a body over ``max_body_size`` (8 MiB by default, checked on the wire and again after gunzip)
  is answered with status 413 and ``[null,"ERR_REQUEST_TOO_LARGE",null]`` and the connection
  is closed without reading the rest;
- over TLS, the client certificate's Node-style fingerprint and DER go into the request.

Client (:class:`HTTPClientTransport`, in :mod:`grenache.transports.http.client`): the lean
buffered client of :mod:`grenache.http.client`, with persistent per-destination connection pools
(one request at a time per connection, no pipelining, so a slow reply never delays another).
Destinations are ``host:port`` with a host name, an IPv4 literal or a bracketed IPv6 literal.
Errors map to :mod:`grenache.errors`, with a finite timeout on every request. A refused
connection is :class:`~grenache.errors.DestinationUnreachable` (the request never left), a
connection lost after the request was written is :class:`~grenache.errors.TransportClosed`, at
once; a WebSocket service at the destination is :class:`~grenache.errors.WrongProtocol` ("... is
a WebSocket service, not HTTP ...": use the ``ws`` transport).

Streaming (Node's ``peer.stream`` and ``'stream'`` event), for large bodies, never buffered
whole on either side:

- client: :meth:`HTTPClientTransport.stream` (or :meth:`grenache.peer.PeerRPCClient.stream`,
  which looks the name up first) opens a ``POST /`` of its own (:mod:`grenache.http.stream_client`)
  with Node's head (``_gr: [rid, key]``, ``connection: close``, ``transfer-encoding: chunked``
  and the extra headers, :func:`stream_head`) and gives a
  :class:`ClientStream`: an ``IConsumer`` for the request body (push or pull producers, or
  ``drained()``), and :meth:`ClientStream.response` for the raw response as it arrives (a
  :class:`StreamReply`, ``deliverBody``). No grenache framing, no rid matching, an idle
  timeout, typed errors;
- server: ``HTTPServerTransport(stream_handler=...)`` gets chunked requests (every request
  with ``disable_buffered=True``, Node's option) as a :class:`StreamRequest` (Node's ``meta``,
  the body through ``deliverBody`` with pause/resume of the socket) and a
  :class:`StreamResponse` (an ``IConsumer``; :meth:`StreamResponse.reply` is Node's
  convenience ``handler.reply``). ``max_body_size`` does not apply to streams;
  ``max_stream_size`` does (no limit by default, as Node). This stays on the HTTP transport:
  streams are HTTP-only in Grenache (``PeerRPCServer`` serves the buffered handler).

Deliberate differences on streams: a stream handler that fails before sending anything is
answered with status 500 and ``[rid, "<error>", null]`` (Node's process would crash); a
string error given to ``reply`` is sent as the message (Node sends ``null``); header
characters beyond latin-1 are sent as JSON ``\\u`` escapes (Node throws).

Override points: :class:`RPCServerProtocol` and :class:`RPCServerFactory` (server; the
transport's ``factory_class``), :class:`~grenache.http.client.HTTPClientFactory` and
:class:`~grenache.http.client.HTTPClientProtocol` (client; the transport's ``factory_class``).
See :mod:`grenache.http.server` for the hooks, and examples/custom_http_protocol.py.
"""

from grenache.http.stream_client import ClientStream, StreamReply
from grenache.http.streams import read_body
from grenache.transports.http.client import (
    DEFAULT_CLIENT_IDLE_TIMEOUT,
    HTTPClientTransport,
    RPCCall,
)
from grenache.transports.http.framing import (
    DEFAULT_MAX_BODY_SIZE,
    DEFAULT_MAX_REPLY_SIZE,
    BodyTooLarge,
    StreamMeta,
    gunzip,
    gzip,
    header_json,
    parse_reply,
    stream_head,
    stream_meta,
)
from grenache.transports.http.server import (
    DEFAULT_SERVER_IDLE_TIMEOUT,
    HTTPServerTransport,
    RPCServerFactory,
    RPCServerProtocol,
    StreamHandlerFn,
    StreamRequest,
    StreamResponse,
)

__all__ = [
    "DEFAULT_CLIENT_IDLE_TIMEOUT",
    "DEFAULT_MAX_BODY_SIZE",
    "DEFAULT_MAX_REPLY_SIZE",
    "DEFAULT_SERVER_IDLE_TIMEOUT",
    "BodyTooLarge",
    "ClientStream",
    "HTTPClientTransport",
    "HTTPServerTransport",
    "RPCCall",
    "RPCServerFactory",
    "RPCServerProtocol",
    "StreamHandlerFn",
    "StreamMeta",
    "StreamReply",
    "StreamRequest",
    "StreamResponse",
    "gunzip",
    "gzip",
    "header_json",
    "parse_reply",
    "read_body",
    "stream_head",
    "stream_meta",
]
