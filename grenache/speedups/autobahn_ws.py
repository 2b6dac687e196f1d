"""autobahn's WebSocket send and receive path without its per-frame overhead (private internals).

autobahn formats debug-log arguments (coloured type names) for every read and write whether or
not debug logging is on, and hands each frame through four layers of callbacks: about a tenth
of a small request's CPU time. The protocols of :mod:`grenache.transports.ws` take their read
and write methods from :data:`FastPath`, which is one of

- :class:`LeanPath` when :data:`AVAILABLE`: whole single-frame messages are parsed straight from
  ``dataReceived`` and given to ``onMessage``; text replies are written as one frame with no
  intermediate calls. It reads autobahn's frame state (``current_frame``, ``inside_message``,
  the buffer ``data``, ``_perMessageCompress``, ``send_queue``, the option attributes) and calls
  its private ``_dataReceived`` for everything it does not handle itself;
- :class:`PublicPath` otherwise: autobahn's own ``dataReceived``/``sendData``, and
  ``sendMessage`` for text replies. Same messages, same bytes on the wire.

:data:`AVAILABLE` is decided at import by :func:`probe`: a server and a client protocol with the
lean path are connected to in-memory transports, and must find every internal they read and
deliver and write exactly what autobahn's public path does. Checked with autobahn 26.10.2 and
txaio 26.6.1 (the versions setup.cfg's upper bounds allow).

:func:`bind_timers` also lives here, because it too reaches into autobahn and txaio: autobahn
schedules a factory's handshake and ping timers through txaio on the global reactor; it makes
them run on the reactor the factory was given instead (when the internals are missing, they
stay on the global reactor, which is the same one in a running program).
"""

from __future__ import annotations

import inspect
import struct
from typing import Any

from autobahn.twisted.websocket import (
    WebSocketAdapterProtocol,
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from autobahn.websocket.protocol import WebSocketProtocol

from grenache.peer import random_bytes
from grenache.speedups.twisted_tcp import write_now

__all__ = [
    "AVAILABLE",
    "HOLD",
    "TIMERS_AVAILABLE",
    "FastPath",
    "LeanPath",
    "PublicPath",
    "bind_timers",
    "probe",
    "xor_mask",
]

_STATE_OPEN = WebSocketProtocol.STATE_OPEN

HOLD = 16
"""Text messages a client socket holds while it handles received data before writing them
(16 kept the bench's 64 requests in flight flowing both ways at the least CPU per request)."""


def xor_mask(data: bytes, key: bytes) -> bytes:
    """``data`` masked with the 4-byte ``key`` (RFC 6455 §5.3), as one big-integer XOR."""
    n = len(data)
    if not n:
        return b""
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(stream, "little")).to_bytes(n, "little")


def fast_data_received(self: Any, data: bytes) -> None:
    """autobahn's ``dataReceived``, with whole single-frame messages delivered directly (see
    ``deliver_frames``).

    On a client socket, the text messages sent while the received data is handled (requests
    sent from the callbacks of the replies it carried) are held and written :data:`HOLD` at a
    time, and what is left once it has been handled: one write for many requests instead of
    one each, sent at once (:func:`~grenache.speedups.twisted_tcp.write_now`) so that the
    server works on them while this side handles the rest. Anything else written meanwhile
    (a pong, a close frame) writes what is held first, so the bytes on the wire are the same,
    in the same order.
    """
    if self.factory.isServer or self._held is not None:
        deliver_frames(self, data)
        return
    held = self._held = []
    try:
        deliver_frames(self, data)
    finally:
        self._held = None
        if held:
            write_now(self.transport, held[0] if len(held) == 1 else b"".join(held))


def deliver_frames(self: Any, data: bytes) -> None:
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
            payload = xor_mask(data[start:end], key)
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


def lean_send_data(self: Any, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
    """autobahn's ``sendData`` without its eagerly formatted debug-log arguments and stats."""
    held = self._held
    if held:
        # Text messages held by fast_data_received go first, as they were sent first.
        self.transport.write(b"".join(held))
        held.clear()
    if sync or chopsize or self.send_queue:
        WebSocketProtocol.sendData(self, data, sync, chopsize)
        return
    self.transport.write(data)


def lean_send_text(self: Any, payload: bytes) -> None:
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
        frame = header + key + xor_mask(payload, key)
    else:
        frame = header + payload
    held = self._held
    if held is not None:
        held.append(frame)
        if len(held) >= HOLD:
            write_now(self.transport, b"".join(held))
            held.clear()
    else:
        self.transport.write(frame)


class PublicPath:
    """autobahn's public path: its own ``dataReceived`` and ``sendData``, and ``sendMessage``.

    Put first among the bases of a protocol of :mod:`grenache.transports.ws` to make it use
    the public path whatever :data:`AVAILABLE` says.
    """

    dataReceived = WebSocketAdapterProtocol.dataReceived
    """autobahn's own ``dataReceived``: every frame through its parser and callbacks."""
    sendData = WebSocketProtocol.sendData
    """autobahn's own ``sendData``, with its debug logging and traffic statistics."""

    def send_text(self, payload: bytes) -> None:
        """Send ``payload`` (UTF-8) as one text message."""
        self.sendMessage(payload, isBinary=False)  # type: ignore[attr-defined]


class LeanPath:
    """The lean path (see the module docstring); only correct while :data:`AVAILABLE`."""

    dataReceived = fast_data_received
    sendData = lean_send_data
    send_text = lean_send_text
    _held: list[bytes] | None = None
    """Text frames a client socket holds while it handles received data (see
    ``fast_data_received``); ``None`` when not holding."""


_ATTRIBUTES = (
    "state",
    "current_frame",
    "inside_message",
    "_perMessageCompress",
    "autoPingTimeoutCall",
    "logOctets",
    "logFrames",
    "trackedTimings",
    "data",
    "applyMask",
    "utf8validateIncoming",
    "maxMessagePayloadSize",
    "maxFramePayloadSize",
    "send_queue",
    "autoFragmentSize",
)

_HANDSHAKE = (
    b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: iD7NWU8onF8772KbeffXvQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


class _Wire:
    """The least of an ITransport the probe needs: it keeps what is written."""

    def __init__(self) -> None:
        self.written = b""
        self.disconnecting = False

    def write(self, data: bytes) -> None:
        self.written += data

    def writeSequence(self, data: list[bytes]) -> None:
        self.written += b"".join(data)

    def loseConnection(self) -> None:
        self.disconnecting = True

    abortConnection = loseConnection

    def getPeer(self) -> Any:
        from twisted.internet.address import IPv4Address

        return IPv4Address("TCP", "127.0.0.1", 2)

    getHost = getPeer

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass


def _no_timers(factory: Any) -> Any:
    factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0, autoPingInterval=0)
    return factory


def probe() -> bool:
    """Whether the lean path works with the installed autobahn (see the module docstring)."""
    try:
        if "chopsize" not in inspect.signature(WebSocketProtocol.sendData).parameters:
            return False
        if not callable(getattr(WebSocketProtocol, "_dataReceived", None)):
            return False

        class Server(LeanPath, WebSocketServerProtocol):  # type: ignore[misc]
            def onMessage(self, payload: bytes, isBinary: bool) -> None:
                self.got = (payload, isBinary)

        server: Any = Server()
        server.factory = _no_timers(WebSocketServerFactory(reactor=_NoReactor()))
        wire = _Wire()
        server.makeConnection(wire)
        server.dataReceived(_HANDSHAKE)
        if server.state != _STATE_OPEN or not all(hasattr(server, a) for a in _ATTRIBUTES):
            return False
        key = b"\x01\x02\x03\x04"
        server.dataReceived(b"\x81\x82" + key + xor_mask(b"hi", key))
        if getattr(server, "got", None) != (b"hi", False):
            return False
        wire.written = b""
        server.send_text(b'["r",null,1]')
        lean = wire.written
        wire.written = b""
        server.sendMessage(b'["r",null,1]', isBinary=False)
        if lean != wire.written or lean != b'\x81\x0c["r",null,1]':
            return False
        client: Any = type("Client", (LeanPath, WebSocketClientProtocol), {})()
        client.factory = _no_timers(
            WebSocketClientFactory(url="ws://127.0.0.1:1/ws", reactor=_NoReactor())
        )
        client.makeConnection(_Wire())
        # A client has its frame state only once open; the rest must be there already.
        opening = ("current_frame", "inside_message")
        return all(hasattr(client, a) for a in _ATTRIBUTES if a not in opening)
    except Exception:
        return False


class _NoReactor:
    """A reactor that must not be used (the probe schedules nothing)."""

    def callLater(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the autobahn probe scheduled a timer")

    def seconds(self) -> float:
        return 0.0


AVAILABLE: bool = probe()
"""Whether autobahn has the internals :class:`LeanPath` relies on (decided at import)."""

FastPath: type = LeanPath if AVAILABLE else PublicPath
"""The path the transports' protocols use: :class:`LeanPath`, or :class:`PublicPath`."""


# --- timers on the injected reactor ---------------------------------------------------------


def _batched_timer_class() -> Any:
    try:
        from txaio._common import _BatchedTimer
    except ImportError:
        return None
    try:
        parameters = inspect.signature(_BatchedTimer).parameters
    except (TypeError, ValueError):
        return None
    if not {"seconds_provider", "delayed_call_creator"} <= set(parameters):
        return None
    return _BatchedTimer


_BatchedTimer = _batched_timer_class()

TIMERS_AVAILABLE: bool = _BatchedTimer is not None and hasattr(
    WebSocketServerFactory(reactor=_NoReactor()), "_batched_timer"
)
"""Whether :func:`bind_timers` can move a factory's timers onto its reactor."""


def bind_timers(factory: Any, reactor: Any) -> None:
    """Make the handshake and ping timers of ``factory``'s sockets run on ``reactor``.

    autobahn builds each factory's timer (``_batched_timer``, 0.2 s buckets) on txaio, which
    always uses the global reactor; this replaces it with the same timer on ``reactor``, so that
    a program's reactor (or a test's ``Clock``) runs them. Without the internals
    (:data:`TIMERS_AVAILABLE` false) nothing changes.
    """
    if not TIMERS_AVAILABLE:
        return
    factory._batched_timer = _BatchedTimer(
        200.0,
        1000,
        seconds_provider=reactor.seconds,
        delayed_call_creator=reactor.callLater,
    )
