"""What every ZeroMQ transport module shares: codecs, frames, endpoints, sockets.

The frames are docs/protocol.rst, *RPC over ZeroMQ* and *Pub/sub over ZeroMQ*. Every message
names its codec in a frame of its own (ASCII ``msgpack`` or ``json``), so that a peer speaking
another codec gets a clear error instead of garbage:

- RPC request (DEALER -> ROUTER): ``[codec, body]``, body = ``[rid, key, payload]``, or a
  batch: body = an array of such requests (the requests of one reactor turn to one socket);
- RPC reply (ROUTER -> DEALER): ``[codec, body]``, body = ``[rid, error|null, result]``, in the
  codec of the request, or a batch: an array of such replies (the replies to one peer that
  were ready in one reactor turn);
- pub/sub message (PUB -> SUB): ``[topic, codec, body]``, topic = the service name in UTF-8.

Sockets are txzmq connections (:class:`ZmqSocket`) on a :class:`~txzmq.ZmqFactory` whose
``reactor`` is the injected one; :func:`new_factory` builds it. :meth:`ZmqSocket.batch` gathers
the bodies of one reactor turn into batches. Listening takes what
:func:`bind_address` accepts; destinations are ``host:port`` (:func:`connect_address`).
"""

from __future__ import annotations

import itertools
import os
import struct
import sys
import threading
from collections.abc import Callable
from typing import Any

import attrs
import msgpack
import zmq
from twisted.logger import Logger
from txzmq import ZmqConnection, ZmqFactory

from grenache import codec as _codec
from grenache.endpoints import ListenSpec, is_ip_literal, split_host_port

__all__ = [
    "CODECS",
    "DEFAULT_CODEC",
    "DEFAULT_HWM",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "Codec",
    "FrameError",
    "Monitor",
    "RateLimitedLog",
    "SocketOptions",
    "ZmqSocket",
    "batch_io_supported",
    "bind_address",
    "bound_port",
    "connect_address",
    "decode_replies",
    "decode_requests",
    "get_codec",
    "new_factory",
]

log = Logger()

DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024
"""Largest message a socket accepts (``ZMQ_MAXMSGSIZE``): a peer sending more is
disconnected by libzmq. The same bound as the WebSocket transport's."""

DEFAULT_HWM = 10_000
"""Messages queued per peer and direction (``ZMQ_SNDHWM``/``ZMQ_RCVHWM``) before libzmq
pushes back (a DEALER refuses to send, a ROUTER or PUB drops)."""

DEFAULT_CODEC = "msgpack"
"""The codec clients and publishers send unless told otherwise."""

DEFAULT_MAX_BATCH = 32
"""Requests (or replies) a batch carries at most (``SocketOptions.max_batch``). Measured with
64 requests in flight (bench/zmq_rpc.py), 32 did best of 8 to 64: the client's window leaves
in two messages, so the server works on the first while the client makes the second (with 64
the two sides take turns, idle half the time; with 8 or 16 each message costs more CPU)."""

BATCH_BYTES = 64 * 1024
"""Bytes of bodies a batch carries at most (less when ``max_message_size`` is smaller); a
body that would pass it starts the next batch."""


@attrs.frozen
class Codec:
    """A body codec: its name as it travels in the codec frame, and its functions.

    ``loads`` raises :class:`ValueError` (or a subclass) on malformed input; ``array`` makes
    the encoded array of already encoded elements (a batch body), without decoding them.
    """

    name: str
    frame: bytes
    dumps: Callable[[Any], bytes]
    loads: Callable[[bytes], Any]
    array: Callable[[list[bytes]], bytes]


def _msgpack_loads(data: bytes) -> Any:
    try:
        return _codec.msgpack_loads(data)
    except ValueError:
        raise
    except Exception as e:  # msgpack's ExtraData, FormatError, StackError...
        raise ValueError(f"bad msgpack: {e}") from None


_FIXARRAY = [bytes((0x90 | n,)) for n in range(16)]


def _msgpack_array(items: list[bytes]) -> bytes:
    n = len(items)
    if n < 16:
        head = _FIXARRAY[n]
    elif n < 0x10000:
        head = b"\xdc" + n.to_bytes(2, "big")
    else:
        head = b"\xdd" + n.to_bytes(4, "big")
    return head + b"".join(items)


def _json_array(items: list[bytes]) -> bytes:
    return b"[" + b",".join(items) + b"]"


# One Packer for every message (half the cost of msgpack.packb, which builds one per call);
# the reactor thread is its only user, and a failed pack leaves it empty for the next.
_packer = msgpack.Packer(use_bin_type=True)

CODECS: dict[str, Codec] = {
    "msgpack": Codec("msgpack", b"msgpack", _packer.pack, _msgpack_loads, _msgpack_array),
    "json": Codec("json", b"json", _codec.json_dumps, _codec.json_loads, _json_array),
}
"""The codecs, by name (``--codec`` chooses among them)."""

_BY_FRAME: dict[bytes, Codec] = {c.frame: c for c in CODECS.values()}


def get_codec(name: str | Codec) -> Codec:
    """The codec called ``name``; :class:`ValueError` naming the known ones otherwise."""
    if isinstance(name, Codec):
        return name
    found = CODECS.get(name)
    if found is None:
        raise ValueError(f"unknown codec {name!r} (known: {', '.join(CODECS)})")
    return found


def codec_of_frame(frame: bytes) -> Codec | None:
    """The codec a codec frame names, or ``None`` for anything else."""
    return _BY_FRAME.get(frame)


class FrameError(ValueError):
    """A message that does not follow the frames; ``rid`` is its request id when one could be
    read from it (the server then answers), else ``None`` (it drops the message)."""

    def __init__(self, text: str, rid: Any = None) -> None:
        super().__init__(text)
        self.rid = rid


def _elements(message: Any) -> list[Any]:
    """The requests (or replies) of a decoded body: the elements of a batch (an array whose
    first element is an array), else the body itself."""
    if type(message) is list and message and type(message[0]) is list:
        return message
    return [message]


def decode_requests(codec: Codec, body: bytes) -> list[tuple[str, str, Any] | FrameError]:
    """The requests of a body (one, or each of a batch), in order: ``(rid, key, payload)``,
    or a :class:`FrameError` for an element that is not a 3-array of a string rid, a string
    key and a payload (``rid`` set when it was readable). Raises :class:`FrameError` when the
    body does not decode."""
    try:
        message = codec.loads(body)
    except (ValueError, RecursionError) as e:
        raise FrameError(f"undecodable {codec.name} body: {e}") from None
    out: list[tuple[str, str, Any] | FrameError] = []
    for element in _elements(message):
        if type(element) is list and len(element) == 3:
            rid, key, payload = element
            if type(rid) is str and type(key) is str:
                out.append((rid, key, payload))
                continue
        rid = element[0] if isinstance(element, list) and element else None
        if not isinstance(rid, str):
            out.append(FrameError("a request is [rid, key, payload] with a string rid"))
        else:
            out.append(FrameError("a request is [rid, key, payload] with a string key", rid))
    return out


def recover_rids(body: bytes) -> list[str]:
    """The rids of a body in any known codec (for a request whose codec frame is unknown):
    its rid, or the string rids of a batch's elements."""
    for c in CODECS.values():
        try:
            message = c.loads(body)
        except (ValueError, RecursionError):
            continue
        rids = [
            e[0] for e in _elements(message) if isinstance(e, list) and e and isinstance(e[0], str)
        ]
        if rids:
            return rids
    return []


def decode_replies(frames: list[bytes]) -> list[list[Any] | FrameError]:
    """The replies of a message (one, or each of a batch), in the codec its first frame
    names: ``[rid, error, result]`` lists, or a :class:`FrameError` for an element that is not
    ``[rid, error, result]`` with a string rid. Raises :class:`FrameError` for a message that
    is not 2 frames, names an unknown codec or does not decode."""
    if len(frames) != 2:
        raise FrameError(f"a reply has 2 frames, not {len(frames)}")
    codec = _BY_FRAME.get(frames[0])
    if codec is None:
        raise FrameError(f"unknown codec frame {frames[0][:16]!r}")
    try:
        message = codec.loads(frames[1])
    except (ValueError, RecursionError) as e:
        raise FrameError(f"undecodable {codec.name} reply: {e}") from None
    replies: list[list[Any] | FrameError] = _elements(message)
    for i, element in enumerate(replies):
        # The decoded lists are handed out as they are: one reply is one list, no copy.
        if not (type(element) is list and len(element) == 3 and type(element[0]) is str):
            replies[i] = FrameError("a reply is [rid, error, result] with a string rid")
    return replies


# --- endpoints --------------------------------------------------------------------------------


def bind_address(where: ListenSpec, interface: str = "") -> str:
    """The ZeroMQ address to bind for ``where``: a port number (on ``interface``, all IPv4
    addresses when empty; 0 lets the OS choose) or a description ``tcp:PORT`` with an optional
    ``:interface=ADDR``. Anything else (other endpoint types, endpoint objects) is a
    :class:`ValueError`: ZeroMQ binds its own sockets."""
    wrong = f"the zmq transport listens on a port or 'tcp:PORT[:interface=ADDR]', not {where!r}"
    if isinstance(where, bool) or not isinstance(where, (int, str)):
        raise ValueError(wrong)
    if isinstance(where, str):
        kind, _, rest = where.partition(":")
        if where.isdigit():
            kind, rest = "tcp", where
        port_text, _, option = rest.partition(":")
        if kind != "tcp" or not port_text.isdigit():
            raise ValueError(wrong)
        port = int(port_text)
        if option:
            name, _, value = option.partition("=")
            if name != "interface" or not value:
                raise ValueError(f"unknown option {option!r} in {where!r} (only interface=)")
            interface = value.replace("\\:", ":")
    else:
        port = where
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range: {port}")
    host = interface or "0.0.0.0"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"tcp://{host}:{port if port else '*'}"


def connect_address(dest: str) -> str:
    """The ZeroMQ address of a ``host:port`` destination (``[v6]:port`` too)."""
    host, port = split_host_port(dest)
    if ":" in host:
        host = f"[{host}]"
    return f"tcp://{host}:{port}"


def needs_ipv6(address: str) -> bool:
    """Whether a ZeroMQ tcp address needs ``ZMQ_IPV6`` (an IPv6 literal or a host name that
    may resolve to one)."""
    host = address[len("tcp://") :].rpartition(":")[0]
    return host.startswith("[") or not (is_ip_literal(host) or host in ("*", "0.0.0.0"))


def bound_port(socket: zmq.Socket[Any]) -> int:
    """The TCP port a socket is bound to, read from ``ZMQ_LAST_ENDPOINT``."""
    last = socket.getsockopt(zmq.LAST_ENDPOINT)
    text = last.decode("ascii") if isinstance(last, bytes) else str(last)
    return int(text.rpartition(":")[2])


# --- sockets ----------------------------------------------------------------------------------


@attrs.frozen
class SocketOptions:
    """The bounds and intervals set on every socket (docs/zeromq.rst, *Limits*).

    ``hwm``: messages queued per peer each way; ``max_message_size``: bytes
    (``ZMQ_MAXMSGSIZE``); ``reconnect_ivl``/``reconnect_ivl_max``: seconds between reconnect
    attempts; ``heartbeat_ivl``/``heartbeat_timeout``: seconds between ZMTP pings and without
    an answer before the connection is dropped (libzmq >= 4.2: how a dead peer that did not
    close its TCP connection is noticed); ``0`` turns heartbeats off. ``batch_io``: run the
    context's I/O thread under ``SCHED_BATCH`` where possible (less CPU per message, less
    overlap between peers; see :func:`new_factory`). ``max_batch``: requests (client) or
    replies (server) sent together at most as one batch message (docs/protocol.rst, *RPC over
    ZeroMQ*); ``1`` sends each alone, as peers older than batches expect.
    """

    hwm: int = DEFAULT_HWM
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    reconnect_ivl: float = 0.1
    reconnect_ivl_max: float = 5.0
    heartbeat_ivl: float = 5.0
    heartbeat_timeout: float = 15.0
    batch_io: bool = False
    max_batch: int = DEFAULT_MAX_BATCH

    def __attrs_post_init__(self) -> None:
        if self.hwm < 1 or self.max_message_size < 1 or self.max_batch < 1:
            raise ValueError("hwm, max_message_size and max_batch must be positive")
        if not (self.reconnect_ivl > 0 and self.reconnect_ivl_max >= self.reconnect_ivl):
            raise ValueError("reconnect intervals must be positive, the maximum >= the first")
        if self.heartbeat_ivl < 0 or self.heartbeat_timeout < 0:
            raise ValueError("heartbeat intervals must not be negative")


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def new_factory(reactor: Any, options: SocketOptions | None = None) -> ZmqFactory:
    """A txzmq factory (one ZeroMQ context, one I/O thread) on ``reactor``, closing sockets
    with linger 0 so that a dead peer never holds up shutdown.

    With ``options.batch_io`` (off by default) and where :func:`batch_io_supported`, libzmq's
    I/O thread runs under ``SCHED_BATCH``: woken by a send, it does not preempt the reactor
    thread (it runs on another core if one is idle, else when the reactor waits), so the
    messages of one reactor turn leave together instead of costing a context switch each.
    Measured on a pair pinned one process per CPU, 64 requests in flight: CPU per request
    down 20-45 % (context switches per request 0.6 -> 0.05-0.3), but the two processes then
    alternate whole batches instead of overlapping, so throughput fell by a third when the CPUs
    were otherwise free for them and stayed equal when they were contended. Worth turning on
    where CPU, not latency, is what runs out.
    """
    factory = ZmqFactory()
    factory.reactor = reactor
    factory.lingerPeriod = 0
    if options is not None and options.batch_io and batch_io_supported():
        # Before the first socket: libzmq starts its I/O thread with it.
        factory.context.set(zmq.THREAD_SCHED_POLICY, os.SCHED_BATCH)
    return factory


_batch_io: bool | None = None


def batch_io_supported() -> bool:
    """Whether libzmq's I/O thread may be started under ``SCHED_BATCH`` here: Linux, a
    calling thread under the normal policy (the I/O thread inherits it; libzmq aborts the
    process if its own ``pthread_setschedparam`` fails), and a thread of this process
    allowed to switch (probed once, in a short-lived thread)."""
    global _batch_io
    if _batch_io is None:
        _batch_io = False
        if sys.platform.startswith("linux") and hasattr(os, "SCHED_BATCH"):
            try:
                normal = os.sched_getscheduler(0) == os.SCHED_OTHER
            except OSError:
                normal = False
            if normal:
                outcome: list[bool] = []

                def probe() -> None:
                    try:
                        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
                    except OSError:
                        outcome.append(False)
                    else:
                        outcome.append(True)

                thread = threading.Thread(target=probe, name="grenache-zmq-probe")
                thread.start()
                thread.join()
                _batch_io = outcome == [True]
    return _batch_io


_NOBLOCK = zmq.NOBLOCK
_SNDMORE_NOBLOCK = zmq.SNDMORE | zmq.NOBLOCK
_RCVMORE = zmq.RCVMORE
_EVENTS = zmq.EVENTS
_POLLIN = zmq.POLLIN

SendFailed = Callable[[list[Any], zmq.ZMQError], None]
"""``send_failed(tokens, error)``: a queued batch could not be sent; ``tokens`` are those given
to :meth:`ZmqSocket.batch` with each of its bodies, in order."""


class _Batch:
    """The bodies queued for one route in one codec."""

    __slots__ = ("bodies", "codec", "route", "size", "tokens")

    def __init__(self, route: bytes | None, codec: Codec) -> None:
        self.route = route
        self.codec = codec
        self.bodies: list[bytes] = []
        self.tokens: list[Any] = []
        self.size = 0


class ZmqSocket(ZmqConnection):  # type: ignore[misc]
    """A txzmq connection with this project's options, on the factory's reactor.

    Built unconnected: options (and CURVE, through ``configure``) are set first, then
    :meth:`bind` or :meth:`connect`. ``received(frames)`` is called for each message.
    Unlike txzmq's base class it reads each whole message (frame by frame, cheaper than
    ``recv_multipart``) and schedules its re-reads on the injected reactor, not the global
    one. ``copy_frames=False``
    hands ``zmq.Frame`` objects (for their metadata, e.g. ``User-Id``) instead of bytes.

    :meth:`batch` batches bodies (RPC requests or replies): what is queued for one route in
    one reactor turn leaves as one message at the end of the turn (``options.max_batch``
    bodies or :data:`BATCH_BYTES` at most each); ``send_failed`` hears of a batch that could
    not be sent.
    """

    socketType: int | None = None
    read_scheduled: Any

    def __init__(
        self,
        factory: ZmqFactory,
        socket_type: int,
        options: SocketOptions,
        received: Callable[[list[Any]], None],
        *,
        configure: Callable[[zmq.Socket[Any]], None] | None = None,
        copy_frames: bool = True,
        send_failed: SendFailed | None = None,
    ) -> None:
        self.socketType = socket_type
        self.highWaterMark = options.hwm
        self.reconnectInterval = _ms(options.reconnect_ivl)
        self.reconnectIntervalMax = _ms(options.reconnect_ivl_max)
        self.received = received
        self.copy_frames = copy_frames
        self.send_failed = send_failed
        self.max_batch = options.max_batch
        self.batch_bytes = min(BATCH_BYTES, options.max_message_size)
        self.closed = False
        self.paused = False
        self.reading = False
        self._batches: dict[tuple[bytes | None, bytes], _Batch] = {}
        self._flush_call: Any = None
        super().__init__(factory)
        s = self.socket
        s.setsockopt(zmq.MAXMSGSIZE, options.max_message_size)
        if options.heartbeat_ivl > 0 and socket_type in (zmq.DEALER, zmq.ROUTER, zmq.SUB, zmq.XPUB):
            s.setsockopt(zmq.HEARTBEAT_IVL, _ms(options.heartbeat_ivl))
            s.setsockopt(zmq.HEARTBEAT_TIMEOUT, _ms(options.heartbeat_timeout))
            s.setsockopt(zmq.HEARTBEAT_TTL, _ms(options.heartbeat_timeout))
        if configure is not None:
            configure(s)

    def bind(self, address: str) -> int:
        """Bind to ``address``; return the bound TCP port (0 for non-TCP addresses)."""
        if needs_ipv6(address):
            self.socket.setsockopt(zmq.IPV6, 1)
        self.socket.bind(address)
        self.doRead()
        return bound_port(self.socket) if address.startswith("tcp://") else 0

    def connect(self, address: str) -> None:
        """Connect to ``address`` (ZeroMQ connects, and reconnects, in the background)."""
        if address.startswith("tcp://") and needs_ipv6(address):
            self.socket.setsockopt(zmq.IPV6, 1)
        self.socket.connect(address)
        self.doRead()

    def doRead(self) -> None:
        """Read every message ZeroMQ has ready (the socket's descriptor became readable, or a
        read pass left more to do), then send the batches queued meanwhile, and read again if
        more arrived."""
        if self.read_scheduled is not None:
            if self.read_scheduled.active():
                self.read_scheduled.cancel()
            self.read_scheduled = None
        if self.paused and not self.closed:
            # Clears the descriptor's signal (it would stay readable and spin the reactor).
            self.socket.getsockopt(zmq.EVENTS)
            self.flush()
            return
        self.reading = True
        try:
            while self._read_all() and self._batches:
                self.flush()
                # The sends may have consumed the descriptor's signal: ask ZeroMQ itself.
                if self.closed or self.paused or not self.socket.get(_EVENTS) & _POLLIN:
                    return
        finally:
            self.reading = False
        if self._batches and not self.closed:
            self.flush()

    def _read_all(self) -> bool:
        """Handle every message ready; False when the socket closed or failed meanwhile."""
        copy = self.copy_frames
        socket = self.socket
        # Frame by frame: pyzmq's recv_multipart costs several times more (measured).
        recv, get = socket.recv, socket.get
        while not (self.closed or self.paused):
            try:
                if copy:
                    frames = [recv(_NOBLOCK)]
                    while get(_RCVMORE):
                        frames.append(recv(_NOBLOCK))
                else:
                    frame = recv(_NOBLOCK, copy=False)
                    frames = [frame]
                    while frame.more:
                        frame = recv(_NOBLOCK, copy=False)
                        frames.append(frame)
            except zmq.Again:
                return True
            except zmq.ZMQError:
                log.failure("ZeroMQ receive failed")
                return False
            try:
                self.received(frames)
            except Exception:
                log.failure("ZeroMQ message handler failed")
        return not self.closed

    def send(self, frames: list[bytes]) -> None:
        """Send one message now; :class:`zmq.Again` when the high-water mark is reached."""
        send = self.socket.send
        # Frame by frame: pyzmq's send_multipart costs twice as much (measured). The first
        # frame decides: past the high-water mark it raises, and nothing was queued.
        for frame in frames[:-1]:
            send(frame, _SNDMORE_NOBLOCK)
        send(frames[-1], _NOBLOCK)
        if self.read_scheduled is None:
            # ZeroMQ's descriptor may have been drained by the send: look again soon.
            self.read_scheduled = self.factory.reactor.callLater(0, self.doRead)

    def batch(
        self, route: bytes | None, codec: Codec, body: bytes, token: Any = None, alone: bool = False
    ) -> None:
        """Send ``body`` (encoded with ``codec``) in the batch of ``route`` (a ROUTER's peer
        identity; ``None`` on other sockets): ``[route, codec, body]`` alone, or the codec's
        array of the turn's bodies. The batch leaves at the end of this read pass or reactor
        turn, or at once when it is full; a failed send calls ``send_failed`` with the tokens
        of the whole batch (at once on a closed socket). A queued body is dropped if the
        socket closes first. ``alone`` sends it at once as a message of its own (for a peer
        that may not read batches)."""
        if self.closed:
            if self.send_failed is not None:
                self.send_failed([token], zmq.ZMQError(zmq.ENOTSOCK))
            return
        if alone:
            lone = _Batch(route, codec)
            lone.bodies.append(body)
            lone.tokens.append(token)
            self._send_batch(lone)
            if self._flush_call is None and not self.reading:
                # ZeroMQ's descriptor may have been drained by the send: look again.
                self._flush_call = self.factory.reactor.callLater(0, self._flush_due)
            return
        key = (route, codec.frame)
        batches = self._batches
        batch = batches.get(key)
        size = len(body)
        # A batch's array header (msgpack) or brackets and commas (JSON): n + 6 bytes at most.
        limit = self.batch_bytes - 6 - size
        while batch is not None and batch.size + len(batch.bodies) > limit:
            del batches[key]
            self._send_batch(batch)
            batch = batches.get(key)  # send_failed may have queued again
        if batch is None:
            batch = batches[key] = _Batch(route, codec)
            if self._flush_call is None and not self.reading:
                self._flush_call = self.factory.reactor.callLater(0, self._flush_due)
        bodies = batch.bodies
        bodies.append(body)
        batch.tokens.append(token)
        batch.size += size
        if len(bodies) >= self.max_batch:
            del batches[key]
            self._send_batch(batch)

    def flush(self) -> None:
        """Send every queued batch now."""
        while self._batches and not self.closed:
            batches, self._batches = self._batches, {}
            for batch in batches.values():
                self._send_batch(batch)

    def _flush_due(self) -> None:
        self._flush_call = None
        if self.closed:
            return
        self.flush()
        # The sends may have consumed the descriptor's signal: ask ZeroMQ itself.
        if not (self.closed or self.paused or self.reading) and self.socket.get(_EVENTS) & _POLLIN:
            self.doRead()

    def _send_batch(self, batch: _Batch) -> None:
        if self.closed:
            return
        bodies = batch.bodies
        codec = batch.codec
        body = bodies[0] if len(bodies) == 1 else codec.array(bodies)
        send = self.socket.send
        try:
            # The first frame decides: past the high-water mark it raises, nothing queued.
            if batch.route is not None:
                send(batch.route, _SNDMORE_NOBLOCK)
            send(codec.frame, _SNDMORE_NOBLOCK)
            send(body, _NOBLOCK)
        except zmq.ZMQError as e:
            if self.send_failed is not None:
                self.send_failed(batch.tokens, e)

    def pause(self) -> None:
        """Stop reading: messages wait in ZeroMQ's queues (up to the high-water mark), then
        the peers' TCP connections push back."""
        self.paused = True

    def resume(self) -> None:
        """Read again (at once: the descriptor will not signal what already waits)."""
        if self.paused:
            self.paused = False
            if self.read_scheduled is None and not self.closed:
                self.read_scheduled = self.factory.reactor.callLater(0, self.doRead)

    def close(self) -> None:
        """Close the socket at once (linger 0: queued messages and batches are dropped)."""
        if not self.closed:
            self.shutdown()

    def shutdown(self) -> None:
        self.closed = True
        self._batches = {}
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None
        if self.socket is not None:
            super().shutdown()

    def logPrefix(self) -> str:
        """The prefix of this socket's log lines."""
        return "ZMQ"


_monitor_ids = itertools.count(1)

MONITOR_EVENTS = (
    zmq.EVENT_CONNECTED
    | zmq.EVENT_CONNECT_RETRIED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_CLOSED
    | zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
"""The socket events a :class:`Monitor` reports by default."""

_EVENT = struct.Struct("=Hi")


class Monitor:
    """The events of one socket (libzmq's ``zmq_socket_monitor``), read on the reactor.

    ``on_event(event, value)`` is called with each event number (``zmq.EVENT_*``) and its
    value (an errno, a file descriptor, a ZAP status code...). Close it before the socket.
    """

    def __init__(
        self,
        factory: ZmqFactory,
        watched: ZmqSocket,
        on_event: Callable[[int, int], None],
        events: int = MONITOR_EVENTS,
    ) -> None:
        address = f"inproc://grenache-monitor-{id(factory):x}-{next(_monitor_ids)}"
        watched.socket.monitor(address, events)
        self.watched = watched
        self.on_event = on_event
        self.pair = ZmqSocket(factory, zmq.PAIR, SocketOptions(), self._received)
        self.pair.connect(address)

    def _received(self, frames: list[bytes]) -> None:
        if len(frames) == 2 and len(frames[0]) == 6:
            event, value = _EVENT.unpack(frames[0])
            self.on_event(event, value)

    def close(self) -> None:
        """Stop reporting and close the monitor's socket."""
        if not self.watched.closed:
            try:
                self.watched.socket.disable_monitor()
            except zmq.ZMQError:
                pass
        self.pair.close()


class RateLimitedLog:
    """Counts bad messages and logs at most one line per ``interval`` seconds about them
    (how many since the last line, and the latest reason): a peer sending garbage in a loop
    cannot flood the log."""

    def __init__(self, clock: Any, what: str, interval: float = 60.0) -> None:
        self._clock = clock
        self.what = what
        self.interval = interval
        self.count = 0
        self._unlogged = 0
        self._next_log = 0.0

    def __call__(self, reason: str) -> None:
        """Count one bad message; log when the last line is old enough."""
        self.count += 1
        self._unlogged += 1
        now = self._clock.seconds()
        if now >= self._next_log:
            log.warn(
                "{what}: {n} malformed message(s) dropped or answered; latest: {reason}",
                what=self.what,
                n=self._unlogged,
                reason=reason,
            )
            self._unlogged = 0
            self._next_log = now + self.interval
