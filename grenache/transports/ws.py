"""RPC and pub/sub over WebSocket (autobahn), compatible with grenache-nodejs-ws 1.0.0.

The wire format is reference/protocol.md §7 and §12.6; this module implements the transport
protocols of :mod:`grenache.peer` (:class:`~grenache.peer.ServerTransport`,
:class:`~grenache.peer.ClientTransport`, :class:`~grenache.peer.PubTransport`,
:class:`~grenache.peer.SubTransport`).

RPC frames
----------

The client connects to ``ws://<dest>/ws`` (``wss://`` with TLS); the server accepts any path.
A request is one text frame holding compact JSON ``[rid, key, payload]``; the reply is one text
frame ``[rid, err, result]`` with ``err`` the error string or ``null``. Many requests may be in
flight on one socket and replies go out as their handlers finish, in any order; the client
matches them by ``rid``. The server accepts binary frames holding the same JSON, as Node's
does. Example (§12.6)::

    client -> server  81 b9 <mask> ["c69efa1c-fd7f-4a05-b203-ee2b82dcd773","rpc_ws","hello"]
    server -> client  81 35 ["c69efa1c-fd7f-4a05-b203-ee2b82dcd773",null,"world"]

Deliberate differences from Node
--------------------------------

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
  dies of it (§7.2).
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
request or per socket, and no timer runs while nothing is due. Request timeouts are exact to
within ``grenache.timers.RESOLUTION`` (0.05 s) under load.
autobahn's own handshake timers run on its batched timer service.

TLS
---

A server's ``tls`` is a :class:`~grenache.tls.ServerTLS` (PEM, Node's option names) or any
OpenSSL context factory; a client's a :class:`~grenache.tls.ClientTLS` or any Twisted TLS
connection creator. A server with TLS asks every client for a certificate (Node forces
``requestCert``): ``ServerTLS`` gets ``request_cert`` set, and another context factory whose
context does not verify peers gets ``VERIFY_PEER`` with a callback that accepts any
certificate. The decision is then ``verify_client``'s, called with the certificate's
fingerprint, as Node's ``verifyClient`` reads ``getPeerCertificate().fingerprint``;
:func:`fingerprint_whitelist` builds such a hook. The handler sees the fingerprint in
:attr:`~grenache.peer.Request.peer_certificate` (and the DER in ``peer_certificate_der``) to
authorise per action. A failed TLS handshake fails requests with
:class:`~grenache.errors.TLSHandshakeError` (a kind of ``DestinationUnreachable``).
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Callable, Iterable
from typing import Any, Generic, Protocol, TypeVar, cast

import attrs
from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from OpenSSL import SSL
from twisted.internet import endpoints
from twisted.internet.abstract import isIPAddress
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    fail,
    maybeDeferred,
    succeed,
)
from twisted.logger import Logger
from twisted.python.failure import Failure

from grenache import codec
from grenache.errors import (
    DestinationUnreachable,
    RemoteError,
    RequestParseError,
    RequestTimeout,
    RequestTooLarge,
    TLSHandshakeError,
    TransportClosed,
)
from grenache.peer import OutgoingRequest, Request, SubConnection, error_message, random_bytes
from grenache.timers import DeadlineTimer
from grenache.tls import ClientTLS, ServerTLS, peer_certificate

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "WSClientTransport",
    "WSPubTransport",
    "WSServerTransport",
    "WSSubTransport",
    "fingerprint_whitelist",
]

log = Logger()

DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024
"""Largest message accepted by default (Node's ws 7 accepts up to 100 MiB)."""

DEFAULT_MAX_IN_FLIGHT = 1024
"""Requests a server socket runs at once before it stops reading from that socket."""

_SUBSCRIBER_MESSAGE_LIMIT = 64 * 1024
_REQUEST_PARSE = RequestParseError.wire
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")

VerifyClient = Callable[[str | None], bool]
"""``verify_client(fingerprint)``: whether a client may open a socket (``True``) or not."""

Serve = Callable[[Request], "Deferred[Any]"]


class _Agent(Protocol):
    """What the client transports need to open a socket (autobahn's IWebSocketClientAgent)."""

    def open(
        self, transport_config: str, options: dict[str, Any], protocol_class: Any = None
    ) -> Deferred[Any]: ...


# --- certificates ------------------------------------------------------------------------------


def _normalise_fingerprint(fingerprint: str) -> str:
    hexdigits = re.sub(r"[^0-9A-Fa-f]", "", fingerprint).upper()
    return ":".join(hexdigits[i : i + 2] for i in range(0, len(hexdigits), 2))


def fingerprint_whitelist(fingerprints: Iterable[str]) -> VerifyClient:
    """A ``verify_client`` hook accepting exactly the clients whose certificate is listed.

    Fingerprints are in Node's format (``E1:63:C1:...``, SHA-1); case and separators do not
    matter (Ruby's lowercase colon-less form is accepted too). Anything that is not 20 bytes of
    hex (a SHA-256 ``fingerprint256``, say) raises ValueError. A client without a certificate
    (or on a plain ``ws`` server) is refused.
    """
    allowed = frozenset(_normalise_fingerprint(f) for f in fingerprints)
    for entry in allowed:
        if len(entry) != 59:
            raise ValueError(f"not a SHA-1 certificate fingerprint: {entry!r}")

    def verify_client(fingerprint: str | None) -> bool:
        return fingerprint is not None and _normalise_fingerprint(fingerprint) in allowed

    return verify_client


def _accept_any_certificate(*_args: Any) -> bool:
    return True


def _server_tls(tls: Any) -> Any:
    """The context factory to listen with, set to ask clients for a certificate.

    A :class:`~grenache.tls.ServerTLS` gets ``request_cert`` forced on (Node forces
    ``requestCert: true``); any other context factory whose context does not verify peers gets
    ``VERIFY_PEER`` with a callback that accepts any certificate, leaving the decision to
    ``verify_client``.
    """
    if isinstance(tls, ServerTLS):
        if not tls.reject_unauthorized:
            tls = attrs.evolve(tls, request_cert=True)
        return tls.context_factory()
    get_context = getattr(tls, "getContext", None)
    if get_context is not None:
        context = get_context()
        if not context.get_verify_mode() & SSL.VERIFY_PEER:
            context.set_verify(SSL.VERIFY_PEER, _accept_any_certificate)
    return tls


# --- shared machinery ---------------------------------------------------------------------------


def _js_truthy(value: Any) -> bool:
    """JavaScript truthiness (``[]`` and ``{}`` are true; ``0``, ``""``, ``null`` false)."""
    if value is None or value is False:
        return False
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value != 0 and not (isinstance(value, float) and math.isnan(value))
    if isinstance(value, str):
        return value != ""
    return True


def _text_bytes(message: str) -> bytes:
    """UTF-8 of ``message``; lone surrogates become U+FFFD, as Node's Buffer.from does."""
    try:
        return message.encode("utf-8")
    except UnicodeEncodeError:
        return _LONE_SURROGATE.sub("\ufffd", message).encode("utf-8")


def _split_dest(dest: str) -> tuple[str, int]:
    host, sep, port = dest.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"destination must be 'host:port', got {dest!r}")
    return host.strip("[]"), int(port)


def _unreachable(dest: str, reason: Any, detail: str | None = None) -> DestinationUnreachable:
    """The error for a socket to ``dest`` that never opened.

    ``reason`` is what ended it (a Failure, an exception or a text); ``detail`` what autobahn
    said about the WebSocket handshake, if it got that far (e.g. a 401 from ``verify_client``).
    """
    if isinstance(reason, Failure):
        reason = reason.value
    if isinstance(reason, DestinationUnreachable):
        return reason
    if isinstance(reason, SSL.Error):
        return TLSHandshakeError(f"{DestinationUnreachable.wire}: TLS: {reason}")
    text = reason if isinstance(reason, str) else (str(reason) or type(reason).__name__)
    if detail:
        text = detail
    return DestinationUnreachable(f"{DestinationUnreachable.wire}: {dest}: {text}")


class _Connector:
    """Opens client sockets like autobahn's agent, with TLS options and a connect timeout.

    ``open`` fires when the TCP (and TLS) connection is made, or fails when it cannot be;
    the WebSocket handshake is then followed through the protocol's own callbacks.
    """

    def __init__(self, reactor: Any, tls: Any, connect_timeout: float) -> None:
        self._reactor = reactor
        self._tls = tls
        self._connect_timeout = connect_timeout

    def open(
        self, transport_config: str, options: dict[str, Any], protocol_class: Any = None
    ) -> Deferred[Any]:
        factory = WebSocketClientFactory(url=transport_config, reactor=self._reactor)
        factory.protocol = protocol_class
        factory.noisy = False
        host, port = factory.host, factory.port
        endpoint: Any
        if isIPAddress(host):
            endpoint = endpoints.TCP4ClientEndpoint(
                self._reactor, host, port, timeout=self._connect_timeout
            )
        else:
            endpoint = endpoints.HostnameEndpoint(
                self._reactor, host, port, timeout=self._connect_timeout
            )
        if factory.isSecure:
            tls = self._tls
            if tls is None:
                return fail(ValueError("wss:// needs tls options"))
            if isinstance(tls, ClientTLS):
                tls = tls.creator_for(host)
            endpoint = endpoints.wrapClientTLS(tls, endpoint)
        return cast("Deferred[Any]", endpoint.connect(factory))


def _configure(protocol: WebSocketProtocol, max_message_size: int) -> None:
    """Per-socket autobahn options (set on the protocol, so they hold whatever the factory)."""
    p: Any = protocol
    p.maxMessagePayloadSize = max_message_size
    p.maxFramePayloadSize = max_message_size
    # Past the limit, close with 1009 (message too big) rather than drop silently.
    p.failByDrop = False
    p.openHandshakeTimeout = 10.0
    p.closeHandshakeTimeout = 1.0


def _lean_data_received(self: Any, data: bytes) -> None:
    """autobahn's ``dataReceived`` without its eagerly formatted debug-log arguments."""
    self._dataReceived(data)


_STATE_OPEN = WebSocketProtocol.STATE_OPEN


def _fast_data_received(self: Any, data: bytes) -> None:
    """autobahn's ``dataReceived``, with whole single-frame messages delivered directly.

    While the socket is open and between messages, each complete data frame that is a whole
    text or binary message (FIN set, no RSV bits, masked exactly when this side is the server,
    payload under 64 KiB and within the size limits, valid UTF-8 when text is validated) goes
    straight to ``onMessage``, as autobahn would deliver it after four layers of per-frame
    callbacks. Anything else (control frames, fragments, a violation, an oversized or invalid
    frame, an extension, a socket not open) is handed to autobahn from that frame on, so its
    outcome is autobahn's own. A frame not yet complete waits in autobahn's buffer
    (``self.data``, at a frame boundary, which is where autobahn would resume too).
    """
    if (
        self.state != _STATE_OPEN
        or self.current_frame is not None
        or self.inside_message
        or self._perMessageCompress is not None
        or self.autoPingTimeoutCall is not None
        or self.logOctets
        or self.logFrames
        or self.trackedTimings
    ):
        self._dataReceived(data)
        return
    if self.data:
        data = self.data + data
        self.data = b""
    server = self.factory.isServer
    if server and not self.applyMask:
        self._dataReceived(data)
        return
    validate = self.utf8validateIncoming
    message_limit = self.maxMessagePayloadSize
    frame_limit = self.maxFramePayloadSize
    n = len(data)
    pos = 0
    while True:
        if n - pos < 2:
            break
        b0 = data[pos]
        b1 = data[pos + 1]
        if b0 != 0x81 and b0 != 0x82:
            break
        if b1 & 0x80:
            if not server:
                break
            length = b1 & 0x7F
        elif server:
            break
        else:
            length = b1
        start = pos + 2
        if length == 126:
            if n - start < 2:
                self.data = data[pos:]
                return
            length = (data[start] << 8) | data[start + 1]
            if length < 126:
                break
            start += 2
        elif length == 127:
            break
        if 0 < message_limit < length or 0 < frame_limit < length:
            break
        if server:
            if n - start < 4:
                self.data = data[pos:]
                return
            key = data[start : start + 4]
            start += 4
        end = start + length
        if end > n:
            self.data = data[pos:]
            return
        if server:
            payload = _xor_mask(data[start:end], key)
        else:
            payload = data[start:end]
        binary = b0 == 0x82
        if validate and not binary:
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError:
                break
        pos = end
        self.onMessage(payload, binary)
        if self.state != _STATE_OPEN:
            break
    if pos < n:
        self._dataReceived(data[pos:] if pos else data)


def _lean_send_data(
    self: Any, data: bytes, sync: bool = False, chopsize: int | None = None
) -> None:
    """autobahn's ``sendData`` without its eagerly formatted debug-log arguments and stats."""
    if sync or chopsize or self.send_queue:
        WebSocketProtocol.sendData(self, data, sync, chopsize)
        return
    self.transport.write(data)


def _send_text(self: Any, payload: bytes) -> None:
    """Send ``payload`` (UTF-8 JSON) as one text message; the socket must be open.

    One frame, masked when the protocol is a client (RFC 6455), as ``sendMessage`` writes it
    when no extension is negotiated and no fragmentation is configured (otherwise it falls
    back to ``sendMessage``).
    """
    n = len(payload)
    if self._perMessageCompress is not None or 0 < self.autoFragmentSize < n:
        self.sendMessage(payload, isBinary=False)
        return
    masked = not self.factory.isServer
    bit = 0x80 if masked else 0
    if n < 126:
        header = bytes((0x81, bit | n))
    elif n < 65536:
        header = struct.pack("!BBH", 0x81, bit | 126, n)
    else:
        header = struct.pack("!BBQ", 0x81, bit | 127, n)
    if masked:
        key = random_bytes.take(4)
        self.transport.write(header + key + _xor_mask(payload, key))
    else:
        self.transport.write(header + payload)


class _LeanServerProtocol(WebSocketServerProtocol):
    """A server protocol with the hot-path shortcuts below.

    autobahn formats debug-log arguments (coloured type names) for every read and write
    whether or not debug logging is on, about a tenth of a small request's CPU time; these
    overrides do the same I/O without it.
    """

    dataReceived = _fast_data_received
    sendData = _lean_send_data
    send_text = _send_text


class _LeanClientProtocol(WebSocketClientProtocol):
    """A client protocol with the same shortcuts as :class:`_LeanServerProtocol`."""

    dataReceived = _fast_data_received
    sendData = _lean_send_data
    send_text = _send_text


def _xor_mask(data: bytes, key: bytes) -> bytes:
    """``data`` masked with the 4-byte ``key`` (RFC 6455 §5.3), as one big-integer XOR."""
    n = len(data)
    if not n:
        return b""
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(stream, "little")).to_bytes(n, "little")


def _start_closing(protocol: WebSocketProtocol, code: int | None = None) -> None:
    """Send a close frame on an open socket; drop one still opening or closing."""
    if protocol.state == WebSocketProtocol.STATE_OPEN:
        protocol.sendClose(code)
    elif protocol.state != WebSocketProtocol.STATE_CLOSED:
        protocol.dropConnection(abort=True)


class _ServerFactory(WebSocketServerFactory):
    """Builds each connection's protocol with ``new_protocol()`` (no status page)."""

    def __init__(self, reactor: Any, new_protocol: Callable[[], WebSocketServerProtocol]) -> None:
        super().__init__(reactor=reactor)
        self._new_protocol = new_protocol
        self.setProtocolOptions(webStatus=False)

    def buildProtocol(self, addr: Any) -> WebSocketServerProtocol:
        protocol = self._new_protocol()
        protocol.factory = self
        return protocol


class _ListeningTransport:
    """Listening and stopping, shared by :class:`WSServerTransport` and :class:`WSPubTransport`.

    A subclass sets ``_reactor``, ``tls`` (a context factory or ``None``), ``interface``,
    ``factory`` and ``_port = None``.
    """

    _reactor: Any
    tls: Any
    interface: str
    factory: WebSocketServerFactory
    _port: Any

    def _listen(self, port: int, description: str) -> Deferred[int]:
        """Listen on ``port`` (over TLS when ``tls`` is set); fire with the bound port."""
        endpoint: Any
        if self.tls is not None:
            endpoint = endpoints.SSL4ServerEndpoint(
                self._reactor, port, self.tls, interface=self.interface
            )
        else:
            endpoint = endpoints.TCP4ServerEndpoint(self._reactor, port, interface=self.interface)

        def listening(listening_port: Any) -> int:
            self._port = listening_port
            bound = int(listening_port.getHost().port)
            log.info("{description} listening on port {port}", description=description, port=bound)
            return bound

        return cast("Deferred[int]", endpoint.listen(self.factory).addCallback(listening))

    def _stop_listening(self, sockets: Iterable[Any]) -> Deferred[None]:
        """Stop listening and close each of ``sockets``; fires once all are gone."""
        port, self._port = self._port, None
        waits: list[Deferred[Any]] = []
        if port is not None:
            waits.append(maybeDeferred(port.stopListening))
        for protocol in list(sockets):
            waits.append(protocol.gone)
            _start_closing(protocol, 1000)
        return _gather(waits)


# --- RPC server ----------------------------------------------------------------------------------


class _ServerProtocol(_LeanServerProtocol):
    """One client socket of a :class:`WSServerTransport`."""

    def __init__(self, owner: WSServerTransport) -> None:
        super().__init__()
        self._owner = owner
        _configure(self, owner.max_message_size)
        # Invalid UTF-8 is answered with ERR_REQUEST_PARSE, not failed with 1007.
        self.utf8validateIncoming = False
        self.in_flight = 0
        self.last_activity = 0.0
        self.fingerprint: str | None = None
        self.certificate_der: bytes | None = None
        self._paused = False
        self.gone: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        super().connectionMade()
        self._owner._sockets.add(self)

    def onConnect(self, request: ConnectionRequest) -> None:
        """Read the client certificate and let ``verify_client`` refuse the socket (401)."""
        self.fingerprint, self.certificate_der = peer_certificate(self.transport) or (None, None)
        verify = self._owner.verify_client
        if verify is not None:
            try:
                allowed = verify(self.fingerprint)
            except Exception:
                log.failure("verify_client raised; refusing the client")
                allowed = False
            if not allowed:
                log.info(
                    "WebSocket client {peer} refused (certificate {fingerprint})",
                    peer=request.peer,
                    fingerprint=self.fingerprint,
                )
                raise ConnectionDeny(401, "Forbidden")

    def onOpen(self) -> None:
        self.last_activity = self._owner._clock.seconds()
        self._owner._sweeper.due(self.last_activity + self._owner.idle_timeout)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        owner = self._owner
        self.last_activity = owner._clock.seconds()
        try:
            message = codec.json_loads(payload)
        except (ValueError, RecursionError):
            self._reply([None, _REQUEST_PARSE, None])
            return
        if not isinstance(message, list) or len(message) < 2 or not isinstance(message[1], str):
            rid = message[0] if isinstance(message, list) and message else None
            self._reply([rid, _REQUEST_PARSE, None])
            return
        rid, key = message[0], message[1]
        payload_value = message[2] if len(message) > 2 else None
        request = Request(rid, key, payload_value, self.fingerprint, self.certificate_der)
        serve = owner._serve
        assert serve is not None
        self.in_flight += 1
        if self.in_flight >= owner.max_in_flight and not self._paused:
            self._paused = True
            self.transport.pauseProducing()  # type: ignore[union-attr]
        maybeDeferred(serve, request).addBoth(self._finished, rid)

    def _finished(self, outcome: Any, rid: Any) -> None:
        self.in_flight -= 1
        if not self.in_flight:
            owner = self._owner
            owner._sweeper.due(owner._clock.seconds() + owner.idle_timeout)
        if self._paused and self.in_flight < self._owner.max_in_flight:
            self._paused = False
            if self.transport is not None:
                self.transport.resumeProducing()
        if isinstance(outcome, Failure):
            self._reply([rid, error_message(outcome), None])
        else:
            self._reply([rid, None, outcome])

    def _reply(self, reply: list[Any]) -> None:
        """Send one reply; drop it if the socket is gone; an unencodable result is an error."""
        if self.state != WebSocketProtocol.STATE_OPEN:
            log.debug("WebSocket reply for rid {rid!r} dropped: socket closed", rid=reply[0])
            return
        self.last_activity = self._owner._clock.seconds()
        try:
            frame = codec.json_dumps(reply)
        except (TypeError, ValueError, RecursionError) as e:
            log.failure("cannot encode the reply for rid {rid!r}", rid=reply[0])
            frame = codec.json_dumps([reply[0], error_message(e), None])
        self.send_text(frame)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        super().connectionLost(reason)
        self._owner._sockets.discard(self)
        if not self.gone.called:
            self.gone.callback(None)


class WSServerTransport(_ListeningTransport):
    """The server side of WebSocket RPC (:class:`~grenache.peer.ServerTransport`).

    ``reactor`` provides TCP (and TLS) listening and the clock. ``interface`` is the address to
    bind (all IPv4 interfaces by default, like Node). ``tls`` makes it ``wss`` (see the module
    docstring); ``verify_client`` is called with each client's certificate fingerprint (or
    ``None``: no certificate, or no TLS) and refuses the socket with HTTP 401 when it returns
    false. Sockets with no request running are closed after ``idle_timeout`` seconds without
    traffic. Messages above ``max_message_size`` bytes close the socket (code 1009). A socket
    running ``max_in_flight`` requests is not read from until one finishes.
    """

    def __init__(
        self,
        reactor: Any,
        *,
        tls: Any = None,
        verify_client: VerifyClient | None = None,
        idle_timeout: float = 300.0,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        interface: str = "",
    ) -> None:
        if max_message_size < 1 or max_in_flight < 1 or not idle_timeout > 0:
            raise ValueError("limits and idle_timeout must be positive")
        self._reactor = reactor
        self._clock: Any = reactor
        self.tls = _server_tls(tls) if tls is not None else None
        self.verify_client = verify_client
        self.idle_timeout = idle_timeout
        self.max_message_size = max_message_size
        self.max_in_flight = max_in_flight
        self.interface = interface
        self._serve: Serve | None = None
        self._port: Any = None
        self._sockets: set[_ServerProtocol] = set()
        self._sweeper = DeadlineTimer(self._clock, self._sweep)
        self.factory = _ServerFactory(reactor, lambda: _ServerProtocol(self))

    def listen(self, port: int, serve: Serve) -> Deferred[int]:
        """Listen on ``port`` (0: any) and serve each request with ``serve``."""
        if self._port is not None:
            return fail(RuntimeError("WSServerTransport is already listening"))
        self._serve = serve
        return self._listen(port, "WebSocket RPC server")

    @property
    def sockets(self) -> int:
        """How many client sockets are open."""
        return len(self._sockets)

    def _sweep(self, now: float) -> float | None:
        nxt: float | None = None
        for protocol in list(self._sockets):
            if protocol.in_flight or protocol.state != WebSocketProtocol.STATE_OPEN:
                continue
            idle_at = protocol.last_activity + self.idle_timeout
            if idle_at <= now:
                log.debug("closing idle WebSocket client {peer}", peer=protocol.peer)
                protocol.sendClose(1000)
            elif nxt is None or idle_at < nxt:
                nxt = idle_at
        return nxt

    def stop(self) -> Deferred[None]:
        """Stop listening and close every client socket; fires once all are gone."""
        self._sweeper.cancel()
        return self._stop_listening(self._sockets)


def _gather(waits: list[Deferred[Any]]) -> Deferred[None]:
    if not waits:
        return succeed(None)
    d = DeferredList(waits, consumeErrors=True)
    return d.addCallback(lambda _: None)


# --- RPC client ----------------------------------------------------------------------------------


class _Pending:
    """One request waiting for its reply."""

    __slots__ = ("deadline", "deferred", "frame", "rid", "sent")

    def __init__(self, rid: str, frame: bytes, deadline: float, deferred: Deferred[Any]) -> None:
        self.rid = rid
        self.frame = frame
        self.deadline = deadline
        self.deferred = deferred
        self.sent = False


class _OutgoingProtocol(_LeanClientProtocol):
    """The socket of an :class:`_OutgoingSocket`, reporting to it as it opens and ends."""

    def __init__(self, outgoing: _OutgoingSocket[Any, Any]) -> None:
        super().__init__()
        self._outgoing = outgoing
        _configure(self, outgoing.owner.max_message_size)
        self.gone: Deferred[None] = Deferred()
        self.close_reason: str | None = None
        outgoing.attach(self)

    def connectionMade(self) -> None:
        super().connectionMade()
        if self._outgoing.is_closed:
            # Connected after whoever wanted it gave up (stop, timeout, close).
            self.dropConnection(abort=True)

    def onOpen(self) -> None:
        self._outgoing.opened()

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.close_reason = reason
        if self._outgoing.is_open:
            self._outgoing.lost(f"code {code} {reason or ''}".strip())

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        super().connectionLost(reason)
        self._outgoing.lost(reason, self.close_reason)
        if not self.gone.called:
            self.gone.callback(None)


_DialerT = TypeVar("_DialerT", bound="_DialingTransport")
_ProtocolT = TypeVar("_ProtocolT", bound=_OutgoingProtocol)


class _OutgoingSocket(Generic[_DialerT, _ProtocolT]):
    """A socket this side opens to ``ws://<dest>/ws``: an RPC connection or a subscription.

    A subclass says which protocol to build (:meth:`_new_protocol`), what to do once the
    socket is open (:meth:`_on_open`) and when it ends (:meth:`lost`).
    """

    def __init__(self, owner: _DialerT, dest: str) -> None:
        self.owner = owner
        self.dest = dest
        self.protocol: _ProtocolT | None = None
        self.is_open = False
        self.is_closed = False
        self._attempt: Deferred[Any] | None = None

    def _new_protocol(self) -> _ProtocolT:
        raise NotImplementedError

    def _on_open(self) -> None:
        raise NotImplementedError

    def lost(self, reason: Any, detail: str | None = None) -> None:
        raise NotImplementedError

    def start(self) -> None:
        """Start opening the socket; a socket that cannot be opened is :meth:`lost`."""
        scheme = "wss" if self.owner.tls is not None else "ws"
        url = f"{scheme}://{self.dest}/ws"
        try:
            _split_dest(self.dest)
            d = self.owner._agent.open(url, {}, protocol_class=self._new_protocol)
        except Exception as e:
            self.lost(e)
            return
        self._attempt = d
        d.addErrback(self._attempt_failed)

    def _attempt_failed(self, failure: Failure) -> None:
        self._attempt = None
        self.lost(failure)

    def attach(self, protocol: _ProtocolT) -> None:
        self.protocol = protocol
        self.owner._protocols.add(protocol)
        protocol.gone.addBoth(lambda _: self.owner._protocols.discard(protocol))

    def opened(self) -> None:
        """The handshake is done: use the socket, or close it if it was given up meanwhile."""
        if self.is_closed:
            assert self.protocol is not None
            self.protocol.sendClose()
            return
        self.is_open = True
        self._attempt = None
        self._on_open()

    def _shut(self) -> None:
        """Cancel the connection attempt, or start closing the socket."""
        protocol = self.protocol
        if protocol is None:
            if self._attempt is not None:
                self._attempt.cancel()
        else:
            _start_closing(protocol)


class _ClientProtocol(_OutgoingProtocol):
    """The socket of one :class:`_ClientConnection`."""

    def __init__(self, connection: _ClientConnection) -> None:
        super().__init__(connection)
        self._connection = connection

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self._connection.received(payload)


class _ClientConnection(_OutgoingSocket["WSClientTransport", _ClientProtocol]):
    """The socket to one destination and the requests sent or queued on it."""

    def __init__(self, owner: WSClientTransport, dest: str) -> None:
        super().__init__(owner, dest)
        self.pending: dict[str, _Pending] = {}
        self.last_activity = owner._clock.seconds()

    def _new_protocol(self) -> _ClientProtocol:
        return _ClientProtocol(self)

    def _on_open(self) -> None:
        self.last_activity = self.owner._clock.seconds()
        protocol = self.protocol
        assert protocol is not None
        for pending in list(self.pending.values()):
            if not pending.sent:
                pending.sent = True
                protocol.send_text(pending.frame)
        self.owner._sweeper.due(self.last_activity + self.owner.idle_timeout)

    def send(self, pending: _Pending) -> None:
        self.pending[pending.rid] = pending
        self.last_activity = self.owner._clock.seconds()
        if self.is_open and self.protocol is not None:
            pending.sent = True
            self.protocol.send_text(pending.frame)

    def received(self, payload: bytes) -> None:
        self.last_activity = self.owner._clock.seconds()
        try:
            message = codec.json_loads(payload)
        except (ValueError, RecursionError):
            log.debug("unparseable WebSocket reply from {dest} ignored", dest=self.dest)
            return
        if not isinstance(message, list) or not message or not isinstance(message[0], str):
            log.debug("WebSocket reply without a rid from {dest} ignored", dest=self.dest)
            return
        pending = self.pending.pop(message[0], None)
        if pending is None:
            log.debug("WebSocket reply for unknown rid {rid!r} ignored", rid=message[0])
            return
        err = message[1] if len(message) > 1 else None
        if _js_truthy(err):
            text = err if isinstance(err, str) else codec.json_dumps(err).decode("utf-8")
            pending.deferred.errback(RemoteError(text))
        else:
            pending.deferred.callback(message[2] if len(message) > 2 else None)

    def forget(self, rid: str) -> None:
        self.pending.pop(rid, None)

    def failed(self, reason: Any, detail: str | None = None) -> None:
        """The socket could not be opened: every request waiting for it is unreachable."""
        self._retire(_unreachable(self.dest, reason, detail))

    def lost(self, reason: Any, detail: str | None = None) -> None:
        """The socket ended: before opening (unreachable) or after (requests closed)."""
        if self.is_closed:
            return
        if not self.is_open:
            self.failed(reason, detail)
            return
        self._retire(TransportClosed())

    def close(self) -> None:
        """Close the socket (idle, stop); what is pending fails with TransportClosed."""
        self._retire(TransportClosed())
        self._shut()

    def _retire(self, error: Exception) -> None:
        if self.is_closed:
            return
        self.is_closed = True
        self.is_open = False
        if self.owner._connections.get(self.dest) is self:
            del self.owner._connections[self.dest]
        pending, self.pending = self.pending, {}
        for p in pending.values():
            p.deferred.errback(error)


class _DialingTransport:
    """What :class:`WSClientTransport` and :class:`WSSubTransport` share: the socket opener,
    the sockets still open (to wait for on stop) and the one timer, set by ``_sweep``."""

    def __init__(
        self,
        reactor: Any,
        tls: Any,
        connect_timeout: float,
        max_message_size: int,
        agent: _Agent | None,
    ) -> None:
        self._reactor = reactor
        self._clock: Any = reactor
        self.tls = tls
        self.max_message_size = max_message_size
        self._agent: _Agent = (
            agent if agent is not None else _Connector(reactor, tls, connect_timeout)
        )
        self._protocols: set[_OutgoingProtocol] = set()
        self._sweeper = DeadlineTimer(self._clock, self._sweep)
        self._stopped = False

    def _sweep(self, now: float) -> float | None:
        raise NotImplementedError

    def _close_every(self, sockets: Iterable[Any]) -> Deferred[None]:
        """Refuse new work, close each of ``sockets``; fires once every socket is gone."""
        self._stopped = True
        self._sweeper.cancel()
        for socket in list(sockets):
            socket.close()
        return _gather([p.gone for p in list(self._protocols)])


class WSClientTransport(_DialingTransport):
    """The client side of WebSocket RPC (:class:`~grenache.peer.ClientTransport`).

    One socket per destination, opened on the first request and shared by every request to
    that destination; closed after ``idle_timeout`` seconds with nothing in flight, and opened
    again on demand. ``tls`` makes it ``wss`` (client certificate and trust in the options).
    ``connect_timeout`` bounds the TCP connection; ``max_message_size`` the replies accepted
    (and the requests sent: a larger one fails with
    :class:`~grenache.errors.RequestTooLarge`). ``agent`` replaces the socket opener, e.g.
    with ``autobahn.twisted.testing.create_memory_agent`` in tests.
    """

    def __init__(
        self,
        reactor: Any,
        *,
        tls: Any = None,
        idle_timeout: float = 120.0,
        connect_timeout: float = 10.0,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        agent: _Agent | None = None,
    ) -> None:
        if max_message_size < 1 or not idle_timeout > 0 or not connect_timeout > 0:
            raise ValueError("limits and timeouts must be positive")
        super().__init__(reactor, tls, connect_timeout, max_message_size, agent)
        self.idle_timeout = idle_timeout
        self._connections: dict[str, _ClientConnection] = {}

    def request(self, dest: str, request: OutgoingRequest) -> Deferred[Any]:
        """Send ``request`` to ``dest`` and fire with the reply's result (see the protocol)."""
        if self._stopped:
            return fail(TransportClosed())
        if not (request.timeout > 0 and math.isfinite(request.timeout)):
            return fail(ValueError(f"timeout must be positive and finite: {request.timeout!r}"))
        try:
            frame = codec.json_dumps([request.rid, request.key, request.payload])
        except (TypeError, ValueError, RecursionError):
            return fail()
        if len(frame) > self.max_message_size:
            return fail(
                RequestTooLarge(
                    f"{RequestTooLarge.wire}: {len(frame)} bytes > {self.max_message_size}"
                )
            )
        connection = self._connections.get(dest)
        if connection is None or connection.is_closed:
            connection = _ClientConnection(self, dest)
            self._connections[dest] = connection
            fresh = True
        else:
            fresh = False
        if request.rid in connection.pending:
            return fail(ValueError(f"rid {request.rid!r} is already in flight to {dest}"))

        def cancel(_: Deferred[Any]) -> None:
            connection.forget(request.rid)

        d: Deferred[Any] = Deferred(cancel)
        deadline = self._clock.seconds() + request.timeout
        connection.send(_Pending(request.rid, frame, deadline, d))
        self._sweeper.due(deadline)
        if fresh:
            connection.start()
        return d

    @property
    def connections(self) -> dict[str, bool]:
        """Each destination with a socket, and whether that socket is open yet."""
        return {dest: c.is_open for dest, c in self._connections.items()}

    def _sweep(self, now: float) -> float | None:
        nxt: float | None = None
        for connection in list(self._connections.values()):
            expired = [p for p in connection.pending.values() if p.deadline <= now]
            for p in expired:
                connection.pending.pop(p.rid, None)
                p.deferred.errback(RequestTimeout())
            for p in connection.pending.values():
                if nxt is None or p.deadline < nxt:
                    nxt = p.deadline
            if connection.pending or not connection.is_open:
                continue
            idle_at = connection.last_activity + self.idle_timeout
            if idle_at <= now:
                log.debug("closing idle WebSocket socket to {dest}", dest=connection.dest)
                connection.close()
            elif nxt is None or idle_at < nxt:
                nxt = idle_at
        return nxt

    def stop(self) -> Deferred[None]:
        """Close every socket; requests still pending fail with TransportClosed."""
        return self._close_every(self._connections.values())


# --- pub/sub -------------------------------------------------------------------------------------


class _PubProtocol(_LeanServerProtocol):
    """One subscriber's socket on a :class:`WSPubTransport`."""

    def __init__(self, owner: WSPubTransport) -> None:
        super().__init__()
        self._owner = owner
        _configure(self, _SUBSCRIBER_MESSAGE_LIMIT)
        self.gone: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        super().connectionMade()
        self._owner._all.add(self)

    def onOpen(self) -> None:
        self._owner._subscribers.add(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """Subscribers have nothing to say; anything they send is ignored, as in Node."""

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self._owner._subscribers.discard(self)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        super().connectionLost(reason)
        self._owner._subscribers.discard(self)
        self._owner._all.discard(self)
        if not self.gone.called:
            self.gone.callback(None)


class WSPubTransport(_ListeningTransport):
    """The publishing side of WebSocket pub/sub (:class:`~grenache.peer.PubTransport`).

    Every connected subscriber receives each published message verbatim: a ``str`` as a text
    frame, ``bytes`` as a binary frame, with no envelope (§7.3). The frame is built once per
    message and written to every socket. ``tls`` makes it ``wss`` (Python subscribers only;
    Node's subscriber has no TLS).
    """

    def __init__(self, reactor: Any, *, tls: Any = None, interface: str = "") -> None:
        self._reactor = reactor
        self.tls = tls.context_factory() if isinstance(tls, ServerTLS) else tls
        self.interface = interface
        self._port: Any = None
        self._subscribers: set[_PubProtocol] = set()
        self._all: set[_PubProtocol] = set()
        self.factory = _ServerFactory(reactor, lambda: _PubProtocol(self))

    def listen(self, port: int) -> Deferred[int]:
        """Listen on ``port`` (0: any) for subscribers."""
        if self._port is not None:
            return fail(RuntimeError("WSPubTransport is already listening"))
        return self._listen(port, "WebSocket publisher")

    @property
    def subscribers(self) -> int:
        """How many subscribers are connected."""
        return len(self._subscribers)

    def publish(self, message: str | bytes) -> int:
        """Send ``message`` to every subscriber; return how many it was sent to."""
        if not self._subscribers:
            return 0
        if isinstance(message, str):
            payload, binary = _text_bytes(message), False
        else:
            payload, binary = bytes(message), True
        prepared = self.factory.prepareMessage(payload, isBinary=binary)
        sent = 0
        for protocol in list(self._subscribers):
            if protocol.state == WebSocketProtocol.STATE_OPEN:
                protocol.sendPreparedMessage(prepared)
                sent += 1
        return sent

    def stop(self) -> Deferred[None]:
        """Stop listening and close every subscriber's socket; fires once all are gone."""
        return self._stop_listening(self._all)


class _SubProtocol(_OutgoingProtocol):
    """A subscriber socket."""

    def __init__(self, subscription: _Subscription) -> None:
        super().__init__(subscription)
        self._subscription = subscription
        self.last_seen = 0.0
        self.ping_sent: float | None = None

    def onOpen(self) -> None:
        self.last_seen = self._subscription.owner._clock.seconds()
        super().onOpen()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.last_seen = self._subscription.owner._clock.seconds()
        self._subscription.received(payload if isBinary else payload.decode("utf-8"))

    def onPong(self, payload: bytes) -> None:
        self.last_seen = self._subscription.owner._clock.seconds()


class _Subscription(_OutgoingSocket["WSSubTransport", _SubProtocol]):
    """One subscriber socket (:class:`~grenache.peer.SubConnection`)."""

    def __init__(
        self,
        owner: WSSubTransport,
        dest: str,
        on_message: Callable[[str | bytes], None],
        on_close: Callable[[], None],
    ) -> None:
        super().__init__(owner, dest)
        self._on_message = on_message
        self._on_close = on_close
        self.ready: Deferred[SubConnection] = Deferred(lambda _: self.close())

    def _new_protocol(self) -> _SubProtocol:
        return _SubProtocol(self)

    def _on_open(self) -> None:
        self.owner._subscriptions.add(self)
        interval = self.owner.heartbeat_interval
        if interval is not None:
            self.owner._sweeper.due(self.owner._clock.seconds() + interval)
        self.ready.callback(self)

    def received(self, message: str | bytes) -> None:
        if self.is_closed:
            return
        try:
            self._on_message(message)
        except Exception:
            log.failure("subscriber on_message failed for a message from {dest}", dest=self.dest)

    def lost(self, reason: Any, detail: str | None = None) -> None:
        """The socket ended (or never opened: the ``ready`` Deferred fails)."""
        if self.is_closed:
            return
        was_open = self.is_open
        self.is_closed = True
        self.is_open = False
        self.owner._subscriptions.discard(self)
        if not was_open:
            if not self.ready.called:
                error = reason if isinstance(reason, CancelledError) else None
                self.ready.errback(error or _unreachable(self.dest, reason, detail))
            return
        try:
            self._on_close()
        except Exception:
            log.failure("subscriber on_close failed for {dest}", dest=self.dest)

    def close(self) -> None:
        """Close the socket; ``on_close`` is called if it was open."""
        was_open = self.is_open
        self._shut()
        # on_close now, not after the closing handshake: the caller asked for it to end.
        self.lost("closed" if was_open else CancelledError())


class WSSubTransport(_DialingTransport):
    """The subscribing side of WebSocket pub/sub (:class:`~grenache.peer.SubTransport`).

    Connects to ``ws://<dest>/ws`` (``wss://`` with ``tls``) and hands each message to
    ``on_message``: ``str`` for a text frame, ``bytes`` for a binary one. After
    ``heartbeat_interval`` seconds without traffic a ping is sent, and a socket that stays
    silent for another interval is closed (``None``: never). ``agent`` replaces the socket
    opener (tests).
    """

    def __init__(
        self,
        reactor: Any,
        *,
        tls: Any = None,
        heartbeat_interval: float | None = 30.0,
        connect_timeout: float = 10.0,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        agent: _Agent | None = None,
    ) -> None:
        if heartbeat_interval is not None and not heartbeat_interval > 0:
            raise ValueError("heartbeat_interval must be positive or None")
        super().__init__(reactor, tls, connect_timeout, max_message_size, agent)
        self.heartbeat_interval = heartbeat_interval
        self._subscriptions: set[_Subscription] = set()
        self._pending: set[_Subscription] = set()

    def connect(
        self,
        dest: str,
        on_message: Callable[[str | bytes], None],
        on_close: Callable[[], None],
    ) -> Deferred[SubConnection]:
        """Subscribe to the publisher at ``dest``; fires once the socket is open."""
        if self._stopped:
            return fail(TransportClosed())
        subscription = _Subscription(self, dest, on_message, on_close)
        self._pending.add(subscription)
        subscription.ready.addBoth(self._settled, subscription)
        subscription.start()
        return subscription.ready

    def _settled(self, result: Any, subscription: _Subscription) -> Any:
        self._pending.discard(subscription)
        return result

    @property
    def connections(self) -> int:
        """How many subscriber sockets are open."""
        return len(self._subscriptions)

    def _sweep(self, now: float) -> float | None:
        interval = self.heartbeat_interval
        if interval is None:
            return None
        nxt: float | None = None
        for subscription in list(self._subscriptions):
            protocol = subscription.protocol
            if protocol is None or protocol.state != WebSocketProtocol.STATE_OPEN:
                continue
            if now - protocol.last_seen < interval:
                due = protocol.last_seen + interval
            elif protocol.ping_sent is None or protocol.ping_sent <= protocol.last_seen:
                protocol.sendPing()
                protocol.ping_sent = now
                due = now + interval
            elif now - protocol.ping_sent >= interval:
                log.info(
                    "publisher {dest} silent for {seconds} s after a ping; closing",
                    dest=subscription.dest,
                    seconds=now - protocol.last_seen,
                )
                protocol.dropConnection(abort=True)
                subscription.lost("heartbeat timeout")
                continue
            else:
                due = protocol.ping_sent + interval
            if nxt is None or due < nxt:
                nxt = due
        return nxt

    def stop(self) -> Deferred[None]:
        """Close every subscriber socket (each ``on_close`` is called)."""
        return self._close_every(list(self._subscriptions) + list(self._pending))
