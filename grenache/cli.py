"""The ``grenache`` command: talk to a Grenache network from a shell.

::

    grenache lookup NAME                      peers announced as NAME
    grenache announce NAME PORT               announce NAME at PORT once
    grenache put VALUE [--key FILE --seq N --salt S --cas N]
    grenache get HASH [--salt S]
    grenache keygen [FILE]                    an ed25519 key file for mutable puts
    grenache request NAME JSON [--transport T --timeout S --compress]
    grenache map NAME JSON [--limit N]
    grenache serve NAME --handler pkg.module:function [--port P --transport T]
    grenache pub NAME [--port P]              publish each line of stdin
    grenache sub NAME [--count N]             print each message as a line

Every verb takes ``--grape URL`` (default ``http://127.0.0.1:30001``) and ``--timeout SECONDS``;
``grenache VERB --help`` shows its options and examples. Results are JSON on stdout (one
line); a failure is one line on stderr and exit status 1; a malformed command line is one line
on stderr and exit status 2.

Key files (``keygen``, ``put --key``) are JSON: ``{"publicKey": "<64 hex>", "secretKey":
"<64 hex>"}`` where ``secretKey`` is the 32-byte ed25519 seed of RFC 8032, written with mode
0600. A 128-hex ``secretKey`` (seed followed by public key, as libsodium and tweetnacl write
it) is read too. The 64-byte *expanded* keys of grenache-cli (``~/.grenache-cli/key``) are a
different thing and cannot be used.
"""

from __future__ import annotations

import getopt
import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import attrs
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.python import usage
from twisted.python.failure import Failure

from grenache import errors
from grenache.codec import json_dumps, json_loads
from grenache.dht import bep44
from grenache.handlers import HandlerError
from grenache.link import DEFAULT_GRAPE, Link
from grenache.peer import PeerPub, PeerRPCClient, PeerSub
from grenache.service_tap import (
    GrenacheService,
    ListenError,
    TransportUnavailable,
    client_transport,
    load_class,
)
from grenache.service_tap import Options as ServiceOptions

__all__ = [
    "DEFAULT_KEY_FILE",
    "CommandError",
    "Options",
    "main",
    "read_key_file",
    "run",
    "write_key_file",
]

PROG = "grenache"
DEFAULT_TIMEOUT = 10.0
DEFAULT_KEY_FILE = "~/.grenache/key.json"

#: Pub/sub transports: name -> (module, publisher class, subscriber class).
PUBSUB_TRANSPORTS: dict[str, tuple[str, str, str]] = {
    "ws": ("grenache.transports.ws", "WSPubTransport", "WSSubTransport"),
    "zmq": ("grenache.transports.zmq", "ZMQPubTransport", "ZMQSubTransport"),
}

_HASH = re.compile(r"[0-9a-fA-F]{40}\Z")


class CommandError(Exception):
    """A failure the command reports as one line on stderr, with exit status 1."""


# --- key files ----------------------------------------------------------------------------


def write_key_file(path: str | os.PathLike[str], *, force: bool = False) -> bytes:
    """Create a fresh ed25519 key at ``path`` (mode 0600); return its 32-byte seed.

    The parent directory is created (mode 0700) when missing. An existing file is replaced
    only with ``force``, atomically.
    """
    target = Path(path).expanduser()
    if target.exists() and not force:
        raise CommandError(f"{target} already exists (use --force to replace it)")
    try:
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        raise CommandError(f"cannot create {target.parent}: {error.strerror}") from None
    seed = bep44.generate_private_key()
    document = {"publicKey": bep44.public_key_of(seed).hex(), "secretKey": seed.hex()}
    text = json.dumps(document, indent=2) + "\n"
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as stream:
            stream.write(text)
        if not force and target.exists():
            raise CommandError(f"{target} already exists (use --force to replace it)")
        os.replace(temporary, target)
    except OSError as error:
        raise CommandError(f"cannot write {target}: {error.strerror}") from None
    finally:
        temporary.unlink(missing_ok=True)
    return seed


def read_key_file(path: str | os.PathLike[str]) -> bytes:
    """The 32-byte ed25519 seed in the key file at ``path`` (see the module docstring)."""
    source = Path(path).expanduser()
    try:
        document = json.loads(source.read_text("utf-8"))
    except OSError as error:
        raise CommandError(f"cannot read key file {source}: {error.strerror}") from None
    except ValueError:
        raise CommandError(f"key file {source} is not JSON") from None
    secret = document.get("secretKey") if isinstance(document, dict) else None
    public = document.get("publicKey") if isinstance(document, dict) else None
    try:
        raw = bytes.fromhex(secret) if isinstance(secret, str) else b""
    except ValueError:
        raw = b""
    if len(raw) not in (32, 64):
        raise CommandError(
            f"key file {source} has no secretKey of 64 hex digits "
            '(expected {"publicKey": hex, "secretKey": hex}, as grenache keygen writes)'
        )
    seed = raw[:32]
    derived = bep44.public_key_of(seed)
    if len(raw) == 64 and raw[32:] != derived:
        raise CommandError(f"key file {source}: the secretKey's second half is not its public key")
    if public is not None and (not isinstance(public, str) or public.lower() != derived.hex()):
        raise CommandError(f"key file {source}: publicKey does not belong to secretKey")
    return seed


# --- option parsing -------------------------------------------------------------------------


def _positive(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise ValueError(f"{value} is not a positive number")
    return number


def _positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise ValueError(f"{value} is not a positive integer")
    return number


def _non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError(f"{value} must not be negative")
    return number


def _port(value: str) -> int:
    port = int(value)
    if not 0 <= port <= 65535:
        raise ValueError(f"{value} is not a port number (0-65535)")
    return port


def _permute(argv: Sequence[str], short: str, long: Sequence[str]) -> list[str]:
    """``argv`` with its options first, so that options may follow the arguments (GNU style:
    ``grenache request NAME JSON --timeout 5``); ``--`` ends the options."""
    try:
        opts, args = getopt.gnu_getopt(list(argv), short, list(long))
    except getopt.GetoptError:
        return list(argv)  # the real parser reports the error
    flat: list[str] = []
    for name, value in opts:
        if name.startswith("--"):
            flat.append(f"{name}={value}" if f"{name[2:]}=" in long else name)
        else:
            flat.append(name + value)
    return [*flat, "--", *args]


class _GnuOptions(usage.Options):
    """Options that may come after the positional arguments."""

    examples = ""

    def opt_version(self) -> NoReturn:
        """Print the version and exit."""
        print(f"{PROG} {_version()}")
        sys.exit(0)

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        argv = list(sys.argv[1:] if options is None else options)
        if "--_shell-completion" not in argv:
            argv = _permute(argv, self.shortOpt, self.longOpt)
        super().parseOptions(argv)

    def getUsage(self, width: int | None = None) -> str:
        text = super().getUsage(width)
        return text + ("\n" + self.examples if self.examples else "")


def _parse_json(text: str, what: str = "JSON") -> Any:
    if text == "-":
        text = sys.stdin.read()
    try:
        return json_loads(text)
    except ValueError as error:
        raise usage.UsageError(f"{what} {text!r} is not JSON ({error})") from None


class _Verb(_GnuOptions):
    """Options every verb has."""

    #: Positional argument names, for error messages.
    arguments: tuple[str, ...] = ()

    optParameters = [
        ["grape", "g", DEFAULT_GRAPE, "URL of the grape's API (http:// or ws://)."],
        [
            "timeout",
            None,
            DEFAULT_TIMEOUT,
            "Seconds to wait for each reply (from the grape or a service).",
            _positive,
        ],
    ]
    compData = usage.Completions(
        optActions={"grape": usage.CompleteList([DEFAULT_GRAPE], descr="grape URL")}
    )

    def _arguments(self, args: Sequence[str], optional: int = 0) -> list[str]:
        expected = self.arguments
        if not len(expected) - optional <= len(args) <= len(expected):
            wanted = " ".join(expected)
            raise usage.UsageError(f"expected {wanted}, got {len(args)} argument(s)")
        return list(args)


class LookupOptions(_Verb):
    synopsis = "NAME [options]"
    longdesc = "Print the peers (ip:port) announced as NAME, as a JSON list."
    examples = 'Example:\n  grenache lookup fibonacci_worker\n  => ["127.0.0.1:1337"]\n'
    arguments = ("NAME",)

    def parseArgs(self, *args: str) -> None:
        (self["name"],) = self._arguments(args)


class AnnounceOptions(_Verb):
    synopsis = "NAME PORT [options]"
    longdesc = (
        "Announce NAME at PORT once, through the grape (which records the address it sees); "
        "print the number of DHT nodes that stored it. A service re-announces itself; see "
        "grenache serve."
    )
    examples = "Example:\n  grenache announce fibonacci_worker 1337\n  => 1\n"
    arguments = ("NAME", "PORT")

    def parseArgs(self, *args: str) -> None:
        name, port = self._arguments(args)
        try:
            self["port"] = _port(port)
        except ValueError as error:
            raise usage.UsageError(str(error)) from None
        self["name"] = name


class PutOptions(_Verb):
    synopsis = "VALUE [--key FILE [--seq N] [--salt S] [--cas N]] [options]"
    longdesc = (
        "Store VALUE (a string of at most 1000 bytes; - reads stdin) in the DHT and print its "
        "key as a JSON string. Without --key the item is immutable and its key is the SHA-1 of "
        "the bencoded value (BEP 44); with --key it is mutable, signed with that key file (see "
        "grenache keygen), keyed by the public key and salt, and replaced by puts with a "
        "higher --seq (--cas: only if the stored seq is N)."
    )
    examples = (
        "Examples:\n"
        "  grenache put 'hello world'\n"
        '  => "6d33adc2b6b2c14c3036feefb7fedbca1a880527"\n'
        "  grenache put 'config v2' --key ~/.grenache/key.json --salt config --seq 2 --cas 1\n"
    )
    arguments = ("VALUE",)
    optParameters = [
        ["key", "k", None, "Key file for a mutable put (from grenache keygen)."],
        [
            "seq",
            "s",
            None,
            "Sequence number of a mutable put (default: the time in microseconds).",
            _non_negative_int,
        ],
        ["salt", None, None, "Salt of a mutable put (at most 64 bytes)."],
        ["cas", None, None, "Only replace the stored item if its seq is this.", int],
    ]
    compData = usage.Completions(optActions={"key": usage.CompleteFiles("*.json")})

    def parseArgs(self, *args: str) -> None:
        (value,) = self._arguments(args)
        self["value"] = sys.stdin.read().rstrip("\n") if value == "-" else value

    def postOptions(self) -> None:
        if self["key"] is None:
            given = [f"--{o}" for o in ("seq", "salt", "cas") if self[o] is not None]
            if given:
                raise usage.UsageError(f"{', '.join(given)} need --key (a mutable put)")
        salt = self["salt"]
        if salt is not None and len(salt.encode("utf-8")) > bep44.MAX_SALT_SIZE:
            raise usage.UsageError(f"--salt is longer than {bep44.MAX_SALT_SIZE} bytes")
        if bep44.too_large(self["value"]):
            raise usage.UsageError(f"VALUE is longer than {bep44.MAX_VALUE_SIZE} bytes")


class GetOptions(_Verb):
    synopsis = "HASH [--salt S] [options]"
    longdesc = (
        "Print the item stored under HASH (40 hex digits, as put prints it) as a JSON object: "
        "v (the value), id (the node that answered), and for a mutable item k, sig and seq. "
        "The item is checked against HASH (and its signature) before it is printed."
    )
    examples = (
        "Examples:\n"
        "  grenache get 6d33adc2b6b2c14c3036feefb7fedbca1a880527\n"
        '  => {"v":"hello world","id":"84844b6bf57e032f29b8bc37e3c9d364d50343bd"}\n'
        "  grenache get 03ebddfbef4d04f0ba8d7927a2ca8fed62f12ee2 --salt config\n"
        "  grenache get --value $(grenache put 'hello world' | jq -r .)\n"
    )
    arguments = ("HASH",)
    optParameters = [["salt", None, None, "Salt the mutable item was put with."]]
    optFlags = [["value", "v", "Print only the value, as a JSON string."]]

    def parseArgs(self, *args: str) -> None:
        (key,) = self._arguments(args)
        key = key.strip().strip('"')
        if not _HASH.match(key):
            raise usage.UsageError(f"HASH {key!r} is not 40 hex digits")
        self["hash"] = key.lower()


class KeygenOptions(_Verb):
    synopsis = "[FILE] [--force]"
    longdesc = (
        f"Write a new ed25519 key to FILE (default {DEFAULT_KEY_FILE}) with mode 0600, as JSON "
        '{"publicKey": hex, "secretKey": hex} (the secret is the 32-byte RFC 8032 seed), and '
        "print the file name and public key. grenache put --key FILE signs with it."
    )
    examples = (
        "Examples:\n"
        "  grenache keygen\n"
        '  => {"file":"/home/me/.grenache/key.json","publicKey":"77ff84905a91936367c0..."}\n'
        "  grenache keygen ./service.key.json --force\n"
    )
    arguments = ("FILE",)
    optFlags = [["force", "f", "Replace FILE if it exists."]]

    def parseArgs(self, *args: str) -> None:
        args = tuple(self._arguments(args, optional=1))
        self["file"] = args[0] if args else DEFAULT_KEY_FILE


class _RPCOptions(_Verb):
    arguments = ("NAME", "JSON")
    optParameters = [
        ["transport", "t", "http", "RPC transport: http or ws."],
    ]
    optFlags = [["compress", "z", "gzip the request and reply bodies (http transport)."]]
    compData = usage.Completions(optActions={"transport": usage.CompleteList(["http", "ws"])})

    def parseArgs(self, *args: str) -> None:
        name, payload = self._arguments(args)
        self["name"] = name
        self["payload"] = _parse_json(payload, "payload")


class RequestOptions(_RPCOptions):
    synopsis = "NAME JSON [options]"
    longdesc = (
        "Send the JSON payload (- reads stdin) to one peer announced as NAME (chosen at "
        "random) and print its reply as JSON."
    )
    examples = (
        "Examples:\n"
        "  grenache request fibonacci_worker '{\"length\": 10}'\n"
        "  => [1,1,2,3,5,8,13,21,34,55]\n"
        "  grenache request rpc_ws '\"hello\"' --transport ws --timeout 2\n"
    )
    optParameters = [
        ["retry", "r", 1, "Attempts (each to a peer chosen afresh).", _positive_int],
    ]


class MapOptions(_RPCOptions):
    synopsis = "NAME JSON [--limit N] [options]"
    longdesc = (
        "Send the JSON payload to every peer announced as NAME (or --limit of them, chosen at "
        "random) and print their replies as a JSON list. One failure fails the whole map."
    )
    examples = (
        "Example:\n"
        "  grenache map fibonacci_worker '{\"length\": 3}' --limit 2\n"
        "  => [[1,1,2],[1,1,2]]\n"
    )
    optParameters = [["limit", "l", None, "Ask at most N peers.", _positive_int]]


class ServeOptions(_GnuOptions, ServiceOptions):
    """``grenache serve``: the options of ``twistd grenache-service``, names as arguments."""

    synopsis = "NAME [NAME...] --handler pkg.module:function [options]"
    longdesc = (
        "Run a service, exactly as twistd -n grenache-service does: listen on --port with "
        "--transport, announce each NAME through --grape until interrupted, and answer each "
        "request with the handler (called with one request object: rid, key, payload, "
        "peer_certificate; it returns a value, a Deferred or a coroutine, and an exception it "
        "raises becomes the reply's error). Prints one JSON line once listening and "
        "announced; logs go to stderr. Modules are imported from the current directory first."
    )
    examples = (
        "Examples:\n"
        "  grenache serve fibonacci_worker --port 1337 "
        "--handler examples.fibonacci_service:fibonacci\n"
        '  => {"name":["fibonacci_worker"],"port":1337,"transport":"http",...}\n'
        "  grenache serve echo --transport ws --handler mypkg.handlers:echo\n"
    )

    def getUsage(self, width: int | None = None) -> str:
        return usage.Options.getUsage(self, width) + "\n" + self.examples

    def parseArgs(self, *names: str) -> None:
        self["names"].extend(names)


class PubOptions(_Verb):
    synopsis = "NAME [--port P] [options]"
    longdesc = (
        "Publish each line read from stdin to every subscriber of NAME (announced through the "
        "grape). Prints one JSON line once listening and announced; ends at the end of stdin. "
        "Subscribers get the lines published while they are connected."
    )
    examples = (
        "Example:\n"
        "  tail -f /var/log/app.log | grenache pub app_log --port 1338\n"
        '  => {"name":"app_log","port":1338,"transport":"ws","announced":1}\n'
    )
    arguments = ("NAME",)
    optParameters = [
        ["port", "p", 0, "TCP port to listen on; 0 = any free port.", _port],
        ["transport", "t", "ws", "Pub/sub transport: ws."],
    ]
    compData = usage.Completions(optActions={"transport": usage.CompleteList(["ws"])})

    def parseArgs(self, *args: str) -> None:
        (self["name"],) = self._arguments(args)


class SubOptions(_Verb):
    synopsis = "NAME [--count N] [options]"
    longdesc = (
        "Subscribe to a publisher of NAME and print each message as one line; with --count, "
        "stop after N messages. Follows the name to another publisher when the connection is "
        "lost."
    )
    examples = "Example:\n  grenache sub app_log --count 10\n"
    arguments = ("NAME",)
    optParameters = [
        ["count", "c", None, "Exit after N messages.", _positive_int],
        ["transport", "t", "ws", "Pub/sub transport: ws."],
    ]
    compData = usage.Completions(optActions={"transport": usage.CompleteList(["ws"])})

    def parseArgs(self, *args: str) -> None:
        (self["name"],) = self._arguments(args)


VERBS: list[tuple[str, type[usage.Options], str]] = [
    ("lookup", LookupOptions, "Print the peers announced as NAME."),
    ("announce", AnnounceOptions, "Announce NAME at PORT once."),
    ("put", PutOptions, "Store a value in the DHT (mutable with --key)."),
    ("get", GetOptions, "Print the item stored under HASH."),
    ("keygen", KeygenOptions, "Write an ed25519 key file for mutable puts."),
    ("request", RequestOptions, "Send a JSON request to one peer of NAME."),
    ("map", MapOptions, "Send a JSON request to every peer of NAME."),
    ("serve", ServeOptions, "Run a handler as an announced service."),
    ("pub", PubOptions, "Publish each line of stdin as NAME."),
    ("sub", SubOptions, "Print each message published as NAME."),
]


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("grenache-twisted")
    except Exception:
        return "unknown"


class Options(usage.Options):
    """The ``grenache`` command line: a verb and its options."""

    longdesc = (
        "Talk to a Grenache network: look services up, announce them, store and fetch DHT "
        "values, call services, run a handler as a service, publish and subscribe. Output is "
        "JSON on stdout; errors are one line on stderr with exit status 1 (2 for a bad "
        "command line)."
    )
    examples = (
        "Examples:\n"
        "  grenache lookup fibonacci_worker --grape http://127.0.0.1:30001\n"
        "  grenache request fibonacci_worker '{\"length\": 10}' --timeout 5\n"
        "  grenache get $(grenache put 'hello world' | jq -r .)\n"
        "Run grenache VERB --help for a verb's options.\n"
    )
    subCommands = [(name, None, options, doc) for name, options, doc in VERBS]

    opt_version = _GnuOptions.opt_version

    def getSynopsis(self) -> str:
        if getattr(self, "subCommand", None):
            return f"Usage: {PROG}"
        return f"Usage: {PROG} VERB [options] [arguments]"

    def getUsage(self, width: int | None = None) -> str:
        text = super().getUsage(width)
        if hasattr(self, "subOptions"):
            return text
        return text + "\n" + self.examples

    def postOptions(self) -> None:
        if getattr(self, "subCommand", None) is None:
            raise usage.UsageError(f"no verb given (one of {', '.join(n for n, _, _ in VERBS)})")


# --- running ----------------------------------------------------------------------------------


def _emit(value: Any) -> None:
    """Write ``value`` as one line of JSON on stdout."""
    sys.stdout.buffer.write(json_dumps(value) + b"\n")
    sys.stdout.buffer.flush()


_FACTORY_NOISE = frozenset({"Starting factory {factory!r}", "Stopping factory {factory!r}"})


def _begin_logging(level: str = "info") -> None:
    """Send log events of ``level`` and above to stderr (long-running verbs), without the
    factory start/stop chatter of every pooled connection."""
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        PredicateResult,
        globalLogBeginner,
        textFileLogObserver,
    )

    def quiet_(event: dict[str, Any]) -> Any:
        if event.get("log_format") in _FACTORY_NOISE:
            return PredicateResult.no
        return PredicateResult.maybe

    quiet: Any = quiet_
    # Any: the zope interfaces are invisible to mypy.
    by_level: Any = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level))
    text: Any = textFileLogObserver(sys.stderr)
    observer: Any = FilteringLogObserver(text, [by_level, quiet])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


class _WatchedLink:
    """The link, as peers see it, noting whether a lookup failed (so a timeout can be blamed
    on the grape or on the service)."""

    def __init__(self, link: Any) -> None:
        self.link = link
        self.lookup_failed = False

    def lookup(self, name: str) -> Deferred[list[str]]:
        def failed(failure: Failure) -> Failure:
            self.lookup_failed = True
            return failure

        d: Deferred[list[str]] = self.link.lookup(name)
        return d.addErrback(failed)

    def start_announcing(self, name: str, port: int) -> Deferred[int]:
        return self.link.start_announcing(name, port)  # type: ignore[no-any-return]

    def stop_announcing(self, name: str, port: int) -> None:
        self.link.stop_announcing(name, port)


@attrs.define
class _Session:
    """What one run of a verb holds: its options, the reactor, and what to stop at the end."""

    verb: str
    options: Any
    reactor: Any
    cleanups: list[Callable[[], Any]] = attrs.Factory(list)
    watched: _WatchedLink | None = None

    @property
    def grape(self) -> str:
        return str(self.options["grape"])

    @property
    def timeout(self) -> float:
        return float(self.options.get("timeout") or DEFAULT_TIMEOUT)

    def link(self) -> _WatchedLink:
        """The link to ``--grape`` (one per run, stopped at the end)."""
        if self.watched is None:
            try:
                link = Link(self.grape, reactor=self.reactor, request_timeout=self.timeout)
            except ValueError as error:
                raise CommandError(str(error)) from None
            self.cleanups.append(link.stop)
            self.watched = _WatchedLink(link)
        return self.watched

    async def close(self) -> None:
        while self.cleanups:
            try:
                await self.cleanups.pop()()
            except Exception:
                pass

    def describe(self, error: BaseException) -> str:
        """The one-line message for ``error``."""
        name = self.options.get("name")
        target = f"{name!r}" if isinstance(name, str) else "the service"
        grape = self.grape
        if isinstance(error, errors.LookupEmpty):
            return f"no peer is announced as {target} on the grape at {grape} ({error.wire})"
        if isinstance(error, errors.GrapeUnreachable):
            return f"cannot reach the grape at {grape}: is it running? ({error.message})"
        if isinstance(error, errors.RequestTimeout):
            seconds = f"{self.timeout:g} s"
            watched = self.watched if self.verb in ("request", "map", "sub") else None
            if watched is None or watched.lookup_failed:
                return f"the grape at {grape} did not answer within {seconds} ({error.wire})"
            return f"{target} did not answer within {seconds} ({error.wire})"
        if isinstance(error, errors.GrapeReplyError):
            status = f" (HTTP {error.status})" if error.status not in (None, 200) else ""
            return f"the grape at {grape} answered an error{status}: {error.message}"
        if isinstance(error, errors.RemoteError):
            return f"{target} answered an error: {error.message}"
        if isinstance(error, errors.DestinationUnreachable):
            return f"cannot connect to {target}: {error.message}"
        if isinstance(error, errors.TransportClosed):
            return f"the connection to {target} closed before its reply ({error.message})"
        if isinstance(error, errors.GrenacheError):
            return error.message
        if isinstance(error, CommandError):
            return str(error)
        return f"{type(error).__name__}: {error}"


def _pubsub_class(transport: str, which: int) -> Any:
    try:
        module_name, *classes = PUBSUB_TRANSPORTS[transport]
    except KeyError:
        raise TransportUnavailable(f"unknown pub/sub transport {transport!r} (use ws)") from None
    return load_class(transport, module_name, classes[which])


# --- verbs --------------------------------------------------------------------------------------


async def _lookup(session: _Session) -> None:
    link = session.link().link
    _emit(await link.lookup(session.options["name"], cache=False))


async def _announce(session: _Session) -> None:
    options = session.options
    _emit(await session.link().link.announce(options["name"], options["port"]))


async def _put(session: _Session) -> None:
    options = session.options
    link = session.link().link
    if options["key"] is None:
        _emit(await link.put(options["value"]))
        return
    seed = read_key_file(options["key"])
    seq = options["seq"] if options["seq"] is not None else int(time.time() * 1_000_000)
    key = await link.put(
        options["value"],
        private_key=seed,
        seq=seq,
        salt=options["salt"],
        cas=options["cas"],
    )
    _emit(key)


def _check_item(item: Any, key: str, salt: str | None) -> None:
    """Raise CommandError unless ``item`` is what ``key`` (and ``salt``) name."""
    value = item.v.encode("utf-8")
    if item.k is None:
        if bep44.immutable_key(value).hex() != key:
            raise CommandError(f"the item the grape returned for {key} does not hash to it")
        return
    salt_bytes = (salt or item.salt or "").encode("utf-8") or None
    try:
        public = bytes.fromhex(item.k)
        signature = bytes.fromhex(item.sig or "")
    except ValueError:
        raise CommandError(f"the item the grape returned for {key} is malformed") from None
    if bep44.mutable_key(public, salt_bytes).hex() != key:
        hint = "" if salt else " (was it put with a --salt?)"
        raise CommandError(f"the item the grape returned is not keyed {key}{hint}")
    message = bep44.signature_buffer(value, item.seq or 0, salt_bytes)
    if not bep44.verify(signature, message, public):
        raise CommandError(f"the item the grape returned for {key} has a bad signature")


async def _get(session: _Session) -> None:
    options = session.options
    key = options["hash"]
    item = await session.link().link.get(key, salt=options["salt"])
    if item is None:
        salted = f" with salt {options['salt']!r}" if options["salt"] else ""
        raise CommandError(f"nothing is stored under {key}{salted}")
    _check_item(item, key, options["salt"])
    if options["value"]:
        _emit(item.v)
    else:
        _emit({k: v for k, v in attrs.asdict(item).items() if v is not None})


async def _keygen(session: _Session) -> None:
    path = Path(session.options["file"]).expanduser()
    seed = write_key_file(path, force=bool(session.options["force"]))
    _emit({"file": str(path.resolve()), "publicKey": bep44.public_key_of(seed).hex()})


def _rpc_client(session: _Session) -> Any:
    transport = client_transport(session.options["transport"], session.reactor)
    client = PeerRPCClient(
        session.link(), transport, timeout=session.timeout, reactor=session.reactor
    )
    session.cleanups.append(client.stop)
    return client


async def _request(session: _Session) -> None:
    options = session.options
    client = _rpc_client(session)
    result = await client.request(
        options["name"],
        options["payload"],
        timeout=session.timeout,
        retry=options["retry"],
        compress=bool(options["compress"]),
    )
    _emit(result)


async def _map(session: _Session) -> None:
    options = session.options
    client = _rpc_client(session)
    results = await client.map(
        options["name"],
        options["payload"],
        limit=options["limit"],
        timeout=session.timeout,
        compress=bool(options["compress"]),
    )
    _emit(results)


async def _serve(session: _Session) -> None:
    options = session.options
    service = GrenacheService(options.config(), session.reactor)
    port = await service.listen()
    _begin_logging()  # events logged so far are replayed
    service.startService()
    assert service.started is not None
    announced = await service.started
    session.reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    _emit(
        {
            "name": list(options["names"]),
            "port": port,
            "transport": options["transport"],
            "grape": options["grape"],
            "announced": announced,
        }
    )
    await Deferred()  # until SIGINT or SIGTERM stops the reactor


async def _pub(session: _Session) -> None:
    from twisted.internet import stdio
    from twisted.protocols.basic import LineReceiver

    options = session.options
    _begin_logging("warn")
    transport = _pubsub_class(options["transport"], 0)(session.reactor)
    pub = PeerPub(session.link(), transport)
    session.cleanups.append(pub.stop)
    port = await pub.listen(options["port"])
    try:
        announced: int | str = await pub.announce(options["name"])
    except Exception as error:
        announced = session.describe(error)
        sys.stderr.write(f"{PROG} pub: announcing failed: {announced}; will retry\n")
    _emit(
        {
            "name": options["name"],
            "port": port,
            "transport": options["transport"],
            "announced": announced,
        }
    )
    ended: Deferred[None] = Deferred()

    class Lines(LineReceiver):
        delimiter = b"\n"
        MAX_LENGTH = 16 * 1024 * 1024

        def lineReceived(self, line: bytes) -> None:
            pub.pub(line.removesuffix(b"\r").decode("utf-8", "replace"))

        def connectionLost(self, reason: Any = None) -> None:
            if self._buffer:  # a last line without a newline
                self.lineReceived(self._buffer)
                self._buffer = b""
            if not ended.called:
                ended.callback(None)

    stdio.StandardIO(Lines(), reactor=session.reactor)
    await ended


async def _sub(session: _Session) -> None:
    options = session.options
    _begin_logging("warn")
    transport = _pubsub_class(options["transport"], 1)(session.reactor)
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


ACTIONS: dict[str, Callable[[_Session], Any]] = {
    "lookup": _lookup,
    "announce": _announce,
    "put": _put,
    "get": _get,
    "keygen": _keygen,
    "request": _request,
    "map": _map,
    "serve": _serve,
    "pub": _pub,
    "sub": _sub,
}


async def run(reactor: Any, options: Options) -> None:
    """Run the parsed command on ``reactor``; a failure is one line on stderr and
    ``SystemExit(1)``."""
    verb = options.subCommand
    assert verb is not None
    session = _Session(verb, options.subOptions, reactor)
    try:
        await ACTIONS[verb](session)
    except (SystemExit, KeyboardInterrupt):
        raise
    except Exception as error:
        message = _one_line(session.describe(_unwrap(error)))
        sys.stderr.write(f"{PROG} {verb}: {message}\n")
        sys.stderr.flush()
        await session.close()
        raise SystemExit(1) from None
    await session.close()


def _unwrap(error: BaseException) -> BaseException:
    if isinstance(error, HandlerError | ListenError | TransportUnavailable):
        return CommandError(str(error))
    return error


def _one_line(text: str) -> str:
    return " ".join(text.split())


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The ``grenache`` console script."""
    from twisted.internet.task import react

    options = Options()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else list(argv))
    except usage.UsageError as error:
        verb = getattr(options, "subCommand", None)
        prog = f"{PROG} {verb}" if verb else PROG
        sys.stderr.write(f"{prog}: {_one_line(str(error))} (see {prog} --help)\n")
        sys.exit(2)
    react(lambda reactor: ensureDeferred(run(reactor, options)))
    raise AssertionError("react() returned")  # pragma: no cover


if __name__ == "__main__":
    main()
