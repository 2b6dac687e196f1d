"""The RPC verbs: ``request`` (one peer), ``map`` (every peer) and ``serve`` (run a handler
as an announced service, exactly as ``twistd grenache-service`` does)."""

from __future__ import annotations

from typing import Any

from twisted.application.reactors import getReactorTypes
from twisted.internet.defer import Deferred
from twisted.python import usage

from grenache.cli.options import (
    CurveClientOptions,
    GnuOptions,
    GrapePortOption,
    Verb,
    check_transport,
    parse_json,
    positive_int,
)
from grenache.cli.session import Session, emit
from grenache.logs import FORMATS, begin_logging
from grenache.peer import PeerRPCClient
from grenache.service_tap import GrenacheService
from grenache.service_tap import Options as ServiceOptions
from grenache.tls_options import ClientTLSOptions
from grenache.transports import get_transport, transport_names

__all__ = [
    "MapOptions",
    "RequestOptions",
    "ServeOptions",
    "map_",
    "request",
    "serve",
]


class _RPCOptions(Verb, GrapePortOption, ClientTLSOptions, CurveClientOptions):
    arguments = ("NAME", "JSON")
    optParameters: list[list[Any]] = [
        ["transport", "t", "http", f"RPC transport: {' or '.join(transport_names())}."],
    ]
    optFlags: list[list[Any]] = [
        ["compress", "z", "gzip the request and reply bodies (http transport)."]
    ]
    compData = usage.Completions(optActions={"transport": usage.CompleteList(transport_names())})

    def parseArgs(self, *args: str) -> None:
        name, payload = self._arguments(args)
        self["name"] = name
        self["payload"] = parse_json(payload, "payload")

    def postOptions(self) -> None:
        check_transport(self["transport"])
        self.read_security(self["transport"])


class RequestOptions(_RPCOptions):
    """``grenache request NAME JSON``: the service name, the JSON payload, ``--retry`` and the
    transport, compression and security flags every RPC verb has."""

    synopsis = "NAME JSON [options]"
    longdesc = (
        "Send the JSON payload (- reads stdin) to one peer announced as NAME (chosen at "
        "random) and print its reply as JSON. --tls-ca, --tls-cert/--tls-key and "
        "--tls-insecure call a service served over TLS; --curve-server-key (and --curve-key) "
        "one served over ZeroMQ with CURVE."
    )
    examples = (
        "Examples:\n"
        "  grenache request fibonacci_worker '{\"length\": 10}'\n"
        "  => [1,1,2,3,5,8,13,21,34,55]\n"
        "  grenache request rpc_ws '\"hello\"' --transport ws --timeout 2\n"
        "  jq -c .query job.json | grenache request reports - -g 10.0.0.5 -p 30002\n"
        "  grenache request secure_svc '{}' --tls-ca ca.crt --tls-cert client.crt "
        "--tls-key client.key\n"
        "  grenache request rpc_zmq '\"hello\"' --transport zmq \\\n"
        '      --curve-server-key "$(jq -r .public server.curve.json)"\n'
    )
    optParameters: list[list[Any]] = [
        ["retry", "r", 1, "Attempts (each to a peer chosen afresh).", positive_int],
    ]


class MapOptions(_RPCOptions):
    """``grenache map NAME JSON``: as :class:`RequestOptions`, with ``--limit`` (the most peers
    asked) instead of ``--retry``."""

    synopsis = "NAME JSON [--limit N] [options]"
    longdesc = (
        "Send the JSON payload (- reads stdin) to every peer announced as NAME (or --limit of "
        "them, chosen at random) and print their replies as a JSON list. One failure fails the "
        "whole map."
    )
    examples = (
        "Example:\n"
        "  grenache map fibonacci_worker '{\"length\": 3}' --limit 2\n"
        "  => [[1,1,2],[1,1,2]]\n"
        "  echo '{\"length\": 3}' | grenache map fibonacci_worker - -g 10.0.0.5 -p 30002\n"
    )
    optParameters: list[list[Any]] = [["limit", "l", None, "Ask at most N peers.", positive_int]]


def _log_format(name: str) -> str:
    if name not in FORMATS:
        raise ValueError(f"unknown log format {name!r} (one of {', '.join(FORMATS)})")
    return name


def _reactor_name(name: str) -> str:
    known = sorted(r.shortName for r in getReactorTypes())
    if name not in known:
        raise ValueError(f"unknown reactor {name!r} (one of {', '.join(known)})")
    return name


class ServeOptions(GnuOptions, ServiceOptions):
    """``grenache serve``: the options of ``twistd grenache-service``, names as arguments,
    and ``--reactor`` (twistd's ``-r``)."""

    synopsis = "NAME [NAME...] --handler pkg.module:function [options]"
    longdesc = (
        "Run a service, exactly as twistd -n grenache-service does: listen on --port (or "
        "--listen, an endpoint description) with --transport, announce each NAME through "
        "--grape until interrupted, and answer each request with the handler (called with one "
        "request object: rid, key, payload, peer_certificate; it returns a value, a Deferred "
        "or a coroutine, and an exception it raises becomes the reply's error). --tls-key and "
        "--tls-cert serve over TLS; --tls-ca and --tls-client-fingerprints restrict the "
        "clients. --reactor asyncio runs handlers written with asyncio. Prints one JSON line "
        "once listening and announced; logs go to stderr. Modules are imported from the "
        "current directory first."
    )
    examples = (
        "Examples:\n"
        "  grenache serve fibonacci_worker --port 1337 "
        "--handler examples.fibonacci_service:fibonacci\n"
        '  => {"name":["fibonacci_worker"],"port":1337,"transport":"http",...}\n'
        "  grenache serve echo --transport ws --handler mypkg.handlers:echo\n"
        "  grenache serve echo --listen tcp6:0 --handler mypkg.handlers:echo\n"
        "  grenache serve secure_svc --handler mypkg.handlers:echo --tls-key server.key \\\n"
        "      --tls-cert server.crt --tls-client-fingerprints 5B:1D:...:9E\n"
        "  grenache serve aio --reactor asyncio --handler mypkg.handlers:async_echo\n"
        "  grenache serve echo --handler mypkg.handlers:echo --metrics 9100 --log-format json\n"
    )
    optParameters: list[list[Any]] = [
        [
            "reactor",
            "r",
            None,
            "Reactor to run on, as twistd -r names it (e.g. asyncio); installed before "
            "anything else runs.",
            _reactor_name,
        ],
        [
            "log-format",
            None,
            "text",
            "Logs on stderr as text or json (one JSON object per line, with the event's fields).",
            _log_format,
        ],
    ]

    def getUsage(self, width: int | None = None) -> str:
        """The usage text followed by this verb's examples (not ``twistd grenache-service``'s)."""
        return usage.Options.getUsage(self, width) + "\n" + self.examples

    def parseArgs(self, *names: str) -> None:
        """Each argument is a service name to announce, as ``--name`` gives one."""
        self["names"].extend(names)


# --- running ---------------------------------------------------------------------------------


def _rpc_client(session: Session) -> Any:
    options = session.options
    entry = get_transport(options["transport"])
    transport = entry.client_transport(session.reactor, tls=options["tls"])
    client = PeerRPCClient(
        session.link(), transport, timeout=session.timeout, reactor=session.reactor
    )
    session.cleanups.append(client.stop)
    return client


async def request(session: Session) -> None:
    """``grenache request NAME JSON``: send the payload to one peer announced as NAME (up to
    ``--retry`` attempts, each to a peer chosen afresh) and print its reply as JSON. A
    failure (nobody announced, no answer in time, the service's error) is raised for
    :func:`~grenache.cli.main.run` to print as one line."""
    options = session.options
    client = _rpc_client(session)
    result = await client.request(
        options["name"],
        options["payload"],
        timeout=session.timeout,
        retry=options["retry"],
        compress=bool(options["compress"]),
    )
    emit(result)


async def map_(session: Session) -> None:
    """``grenache map NAME JSON``: send the payload to every peer announced as NAME (at most
    ``--limit`` of them) and print their replies as one JSON list; one failure fails the map.
    (``map_``: ``map`` is a builtin.)"""
    options = session.options
    client = _rpc_client(session)
    results = await client.map(
        options["name"],
        options["payload"],
        limit=options["limit"],
        timeout=session.timeout,
        compress=bool(options["compress"]),
    )
    emit(results)


async def serve(session: Session) -> None:
    """``grenache serve NAME... --handler MODULE:FUNCTION``: run a
    :class:`~grenache.service_tap.GrenacheService`, as ``twistd grenache-service`` does; print
    one JSON line (names, port, transport, grape, announce outcome) once it listens and has
    announced, then serve until SIGINT or SIGTERM stops the reactor."""
    options = session.options
    service = GrenacheService(options.config(), session.reactor)
    port = await service.listen()
    begin_logging(options["log-format"])  # events logged so far are replayed
    service.startService()
    assert service.started is not None
    announced = await service.started
    session.reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    ready: dict[str, Any] = {
        "name": list(options["names"]),
        "port": port,
        "transport": options["transport"],
        "grape": options["grape"],
        "announced": announced,
    }
    if service.metrics_port is not None:
        ready["metrics"] = service.metrics_port
    emit(ready)
    await Deferred()  # until SIGINT or SIGTERM stops the reactor
