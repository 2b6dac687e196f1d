"""The publish/subscribe verbs: ``pub`` (publish each line of stdin) and ``sub`` (print each
message as a line)."""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python import usage

from grenache.announced_service import check_listen
from grenache.cli.options import (
    PROG,
    CurveClientOptions,
    CurveServerOptions,
    Verb,
    check_transport,
    port_number,
    positive_int,
)
from grenache.cli.session import Session, begin_logging, emit, stdin_lines
from grenache.peer import PeerPub, PeerSub
from grenache.tls_options import ClientTLSOptions, ServerTLSOptions
from grenache.transports import get_transport, transport_names

__all__ = ["PubOptions", "SubOptions", "pub", "sub"]

_PUBSUB = transport_names(pubsub=True)


class PubOptions(Verb, ServerTLSOptions, CurveServerOptions):
    """``grenache pub NAME``: the name to announce, where to listen (``--port`` or
    ``--listen``), the pub/sub transport and the publisher's TLS or CURVE flags."""

    synopsis = "NAME [--port P | --listen ENDPOINT] [options]"
    longdesc = (
        "Publish each line read from stdin to every subscriber of NAME (announced through the "
        "grape). Prints one JSON line once listening and announced; ends at the end of stdin. "
        "Subscribers get the lines published while they are connected. --tls-key and "
        "--tls-cert publish over TLS; --tls-ca and --tls-client-fingerprints restrict the "
        "subscribers. With --transport zmq, --curve-key encrypts with CURVE and "
        "--curve-clients restricts the subscribers."
    )
    examples = (
        "Example:\n"
        "  tail -f /var/log/app.log | grenache pub app_log --port 1338\n"
        '  => {"name":"app_log","port":1338,"transport":"ws","announced":1}\n'
    )
    arguments = ("NAME",)
    optParameters: list[list[Any]] = [
        ["port", "p", None, "TCP port to listen on; 0 = any free port (the default).", port_number],
        [
            "listen",
            "l",
            None,
            "Endpoint description to listen on instead of --port, e.g. tcp6:0.",
        ],
        ["transport", "t", "ws", f"Pub/sub transport: {' or '.join(_PUBSUB)}."],
    ]
    compData = usage.Completions(optActions={"transport": usage.CompleteList(_PUBSUB)})

    def parseArgs(self, *args: str) -> None:
        """The one argument is the name (a usage error for none or more)."""
        (self["name"],) = self._arguments(args)

    def postOptions(self) -> None:
        """Check the transport and the security flags, and settle where to listen
        (``--port`` or ``--listen``, not both)."""
        check_transport(self["transport"], pubsub=True)
        if self["listen"] is not None:
            if self["port"] is not None:
                raise usage.UsageError("give --port or --listen, not both")
            check_listen(self["listen"])
            self["where"] = self["listen"]
        else:
            self["where"] = self["port"] or 0
        self.read_security(self["transport"])


class SubOptions(Verb, ClientTLSOptions, CurveClientOptions):
    """``grenache sub NAME``: the name to follow, ``--count``, the pub/sub transport and the
    subscriber's TLS or CURVE flags."""

    synopsis = "NAME [--count N] [options]"
    longdesc = (
        "Subscribe to a publisher of NAME and print each message as one line; with --count, "
        "stop after N messages. Follows the name to another publisher when the connection is "
        "lost. --tls-ca, --tls-cert/--tls-key and --tls-insecure subscribe over TLS; "
        "--curve-server-key (and --curve-key) to a ZeroMQ publisher with CURVE."
    )
    examples = "Example:\n  grenache sub app_log --count 10\n"
    arguments = ("NAME",)
    optParameters: list[list[Any]] = [
        ["count", "c", None, "Exit after N messages.", positive_int],
        ["transport", "t", "ws", f"Pub/sub transport: {' or '.join(_PUBSUB)}."],
    ]
    compData = usage.Completions(optActions={"transport": usage.CompleteList(_PUBSUB)})

    def parseArgs(self, *args: str) -> None:
        """The one argument is the name (a usage error for none or more)."""
        (self["name"],) = self._arguments(args)

    def postOptions(self) -> None:
        """Check the transport and read the security flags it takes."""
        check_transport(self["transport"], pubsub=True)
        self.read_security(self["transport"])


# --- running ---------------------------------------------------------------------------------


async def pub(session: Session) -> None:
    """``grenache pub NAME``: listen, announce NAME and print one JSON line (name, port,
    transport, announce outcome), then publish each line of stdin (decoded as UTF-8) to the
    subscribers connected at that moment, until the end of stdin. A failed first announce is a
    warning, not an error: the publisher keeps announcing."""
    options = session.options
    begin_logging("warn")
    entry = get_transport(options["transport"], pubsub=True)
    transport = entry.pub_transport(session.reactor, tls=options["tls"])
    publisher = PeerPub(session.link(), transport)
    session.cleanups.append(publisher.stop)
    port = await publisher.listen(options["where"])
    try:
        announced: int | str = await publisher.announce(options["name"])
    except Exception as error:
        announced = session.describe(error)
        sys.stderr.write(f"{PROG} pub: announcing failed: {announced}; will retry\n")
    emit(
        {
            "name": options["name"],
            "port": port,
            "transport": options["transport"],
            "announced": announced,
        }
    )

    def publish(line: bytes) -> None:
        publisher.pub(line.decode("utf-8", "replace"))

    await stdin_lines(session.reactor, publish)


async def sub(session: Session) -> None:
    """``grenache sub NAME``: subscribe to a publisher announced as NAME and write each message
    as one line on stdout (until ``--count`` messages, or until interrupted); a lost
    publisher is a line on stderr while :class:`~grenache.peer.PeerSub` follows the name to
    another."""
    options = session.options
    begin_logging("warn")
    entry = get_transport(options["transport"], pubsub=True)
    transport = entry.sub_transport(session.reactor, tls=options["tls"])
    peer = PeerSub(session.link(), transport, reactor=session.reactor)
    session.cleanups.append(peer.stop)
    done: Deferred[None] = Deferred()
    wanted: int | None = options["count"]
    received = 0

    def on_message(message: str | bytes) -> None:
        nonlocal received
        if done.called:
            return
        data = message if isinstance(message, bytes) else message.encode("utf-8", "replace")
        sys.stdout.buffer.write(data + b"\n")
        sys.stdout.buffer.flush()
        received += 1
        if wanted is not None and received >= wanted:
            done.callback(None)

    def on_connected(name: str, dest: str) -> None:
        sys.stderr.write(f"{PROG} sub: connected to {name!r} at {dest}\n")
        sys.stderr.flush()

    def on_disconnected(name: str, dest: str) -> None:
        if done.called:
            return
        sys.stderr.write(f"{PROG} sub: lost {name!r} at {dest}; resubscribing\n")
        sys.stderr.flush()

    peer.on_message = on_message
    peer.on_connected = on_connected
    peer.on_disconnected = on_disconnected
    await peer.sub(options["name"])
    await done
