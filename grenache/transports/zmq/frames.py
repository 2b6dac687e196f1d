"""What every ZeroMQ transport module shares: codecs, frames, endpoints, sockets.

The frames are docs/protocol.rst, *RPC over ZeroMQ* and *Pub/sub over ZeroMQ*. Every message
names its codec in a frame of its own (ASCII ``msgpack`` or ``json``), so that a peer speaking
another codec gets a clear error instead of garbage:

- RPC request (DEALER -> ROUTER): ``[codec, body]``, body = ``[rid, key, payload]``;
- RPC reply (ROUTER -> DEALER): ``[codec, body]``, body = ``[rid, error|null, result]``, in the
  codec of the request;
- pub/sub message (PUB -> SUB): ``[topic, codec, body]``, topic = the service name in UTF-8.

Sockets are txzmq connections (:class:`ZmqSocket`) on a :class:`~txzmq.ZmqFactory` whose
``reactor`` is the injected one; :func:`new_factory` builds it. Listening takes what
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
    "decode_reply",
    "decode_request",
    "encode_reply",
    "encode_request",
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


@attrs.frozen
class Codec:
    """A body codec: its name as it travels in the codec frame, and its two functions.

    ``loads`` raises :class:`ValueError` (or a subclass) on malformed input.
    """

    name: str
    frame: bytes
    dumps: Callable[[Any], bytes]
    loads: Callable[[bytes], Any]


def _msgpack_loads(data: bytes) -> Any:
    try:
        return _codec.msgpack_loads(data)
    except ValueError:
        raise
    except Exception as e:  # msgpack's ExtraData, FormatError, StackError...
        raise ValueError(f"bad msgpack: {e}") from None


# One Packer for every message (half the cost of msgpack.packb, which builds one per call);
# the reactor thread is its only user, and a failed pack leaves it empty for the next.
_packer = msgpack.Packer(use_bin_type=True)

CODECS: dict[str, Codec] = {
    "msgpack": Codec("msgpack", b"msgpack", _packer.pack, _msgpack_loads),
    "json": Codec("json", b"json", _codec.json_dumps, _codec.json_loads),
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


def encode_request(codec: Codec, rid: str, key: str, payload: Any) -> list[bytes]:
    """The frames of a request: ``[codec, body]``. Raises the codec's error for a payload it
    cannot carry."""
    return [codec.frame, codec.dumps([rid, key, payload])]


def decode_request(codec: Codec, body: bytes) -> tuple[Any, str, Any]:
    """``(rid, key, payload)`` of a request body; :class:`FrameError` when it is not a
    3-array of a string rid, a string key and a payload (``rid`` set when it was readable)."""
    try:
        message = codec.loads(body)
    except (ValueError, RecursionError) as e:
        raise FrameError(f"undecodable {codec.name} body: {e}") from None
    if type(message) is list and len(message) == 3:
        rid, key, payload = message
        if type(rid) is str and type(key) is str:
            return rid, key, payload
    rid = message[0] if isinstance(message, list) and message else None
    if not isinstance(rid, str):
        raise FrameError("a request is [rid, key, payload] with a string rid")
    raise FrameError("a request is [rid, key, payload] with a string key", rid)


def recover_rid(body: bytes) -> str | None:
    """The rid of a body in any known codec (for a request whose codec frame is unknown)."""
    for c in CODECS.values():
        try:
            message = c.loads(body)
        except (ValueError, RecursionError):
            continue
        if isinstance(message, list) and message and isinstance(message[0], str):
            return message[0]
    return None


def encode_reply(codec: Codec, rid: Any, error: str | None, result: Any) -> list[bytes]:
    """The frames of a reply: ``[codec, body]`` with body ``[rid, error, result]``."""
    return [codec.frame, codec.dumps([rid, error, result])]


def decode_reply(frames: list[bytes]) -> tuple[str, Any, Any]:
    """``(rid, error, result)`` of reply frames (in the codec they name); :class:`FrameError`
    for anything else."""
    if len(frames) != 2:
        raise FrameError(f"a reply has 2 frames, not {len(frames)}")
    codec = _BY_FRAME.get(frames[0])
    if codec is None:
        raise FrameError(f"unknown codec frame {frames[0][:16]!r}")
    try:
        message = codec.loads(frames[1])
    except (ValueError, RecursionError) as e:
        raise FrameError(f"undecodable {codec.name} reply: {e}") from None
    if type(message) is not list or len(message) != 3 or type(message[0]) is not str:
        raise FrameError("a reply is [rid, error, result] with a string rid")
    return message[0], message[1], message[2]


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
    overlap between peers; see :func:`new_factory`).
    """

    hwm: int = DEFAULT_HWM
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    reconnect_ivl: float = 0.1
    reconnect_ivl_max: float = 5.0
    heartbeat_ivl: float = 5.0
    heartbeat_timeout: float = 15.0
    batch_io: bool = False

    def __attrs_post_init__(self) -> None:
        if self.hwm < 1 or self.max_message_size < 1:
            raise ValueError("hwm and max_message_size must be positive")
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


class ZmqSocket(ZmqConnection):  # type: ignore[misc]
    """A txzmq connection with this project's options, on the factory's reactor.

    Built unconnected: options (and CURVE, through ``configure``) are set first, then
    :meth:`bind` or :meth:`connect`. ``received(frames)`` is called for each message.
    Unlike txzmq's base class it reads a whole message with one ``recv_multipart`` and
    schedules its re-read on the injected reactor, not the global one. ``copy_frames=False``
    hands ``zmq.Frame`` objects (for their metadata, e.g. ``User-Id``) instead of bytes.
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
    ) -> None:
        self.socketType = socket_type
        self.highWaterMark = options.hwm
        self.reconnectInterval = _ms(options.reconnect_ivl)
        self.reconnectIntervalMax = _ms(options.reconnect_ivl_max)
        self.received = received
        self.copy_frames = copy_frames
        self.closed = False
        self.paused = False
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
        read pass left more to do)."""
        if self.read_scheduled is not None:
            if self.read_scheduled.active():
                self.read_scheduled.cancel()
            self.read_scheduled = None
        if self.paused and not self.closed:
            # Clears the descriptor's signal (it would stay readable and spin the reactor).
            self.socket.getsockopt(zmq.EVENTS)
            return
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
                return
            except zmq.ZMQError:
                log.failure("ZeroMQ receive failed")
                return
            try:
                self.received(frames)
            except Exception:
                log.failure("ZeroMQ message handler failed")

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
        """Close the socket at once (linger 0: queued messages are dropped)."""
        if not self.closed:
            self.shutdown()

    def shutdown(self) -> None:
        self.closed = True
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
