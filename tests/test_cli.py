"""The ``grenache`` command: its options in-process, and every verb as a subprocess against
in-process grapes and services on loopback (the subprocesses run under the trial reactor, so
the grapes keep serving while a command runs).

The module also holds the subprocess helpers the other command-line tests use
(:func:`spawn`, :func:`run_cli`) and a few request handlers that ``grenache serve`` is pointed
at (``--handler tests.test_cli:echo``).
"""

from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
from twisted.internet import reactor as _global_reactor
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from grenache import cli
from grenache.dht import bep44
from grenache.link import Link
from grenache.peer import PeerRPCServer, Request
from grenache.transports.http import HTTPServerTransport
from grenache.transports.ws import WSServerTransport
from tests.interop.harness import free_port, grape_request, start_python_grape

REPO = Path(__file__).resolve().parent.parent
CLI = (sys.executable, "-m", "grenache.cli")
TWISTD = (
    sys.executable,
    "-c",
    "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()",
)
reactor: Any = _global_reactor


# --- handlers for ``grenache serve`` / ``twistd grenache-service`` in subprocesses ---------------


def echo(request: Request) -> dict[str, Any]:
    """Answers with what it was given."""
    return {
        "key": request.key,
        "payload": request.payload,
        "rid": request.rid,
        "peer_certificate": request.peer_certificate,
    }


async def coroutine_double(request: Request) -> Any:
    """A coroutine handler."""
    return request.payload * 2


def deferred_upper(request: Request) -> Deferred[str]:
    """A handler returning a Deferred."""
    return succeed(str(request.payload).upper())


def broken(request: Request) -> None:
    """A handler whose exception becomes the reply's error string."""
    raise ValueError("ERR_BROKEN: no can do")


# --- subprocesses -----------------------------------------------------------------------------


class ProcessTimeout(AssertionError):
    """A subprocess did not reach a condition (or end) in time."""


@attrs.frozen
class Result:
    """How a command ended and what it wrote."""

    argv: tuple[str, ...]
    code: int | None
    signal: int | None
    out: bytes
    err: bytes

    def json(self) -> Any:
        """stdout as one JSON document."""
        return json.loads(self.out)

    def describe(self) -> str:
        return (
            f"{' '.join(self.argv[2:])}\n exit {self.code} signal {self.signal}\n"
            f" stdout: {self.out.decode(errors='replace')!r}\n"
            f" stderr: {self.err.decode(errors='replace')!r}"
        )


class Proc(ProcessProtocol):
    """A subprocess whose output is collected, with waits on conditions over it."""

    def __init__(self, argv: Sequence[str], clock: Any) -> None:
        self.argv = tuple(argv)
        self.clock = clock
        self.out = bytearray()
        self.err = bytearray()
        self.code: int | None = None
        self.signal: int | None = None
        self.has_ended = False
        self.ended: Deferred[Result] = Deferred()
        self._waits: list[tuple[Callable[[Proc], Any], Deferred[Any]]] = []

    # ProcessProtocol

    def outReceived(self, data: bytes) -> None:
        self.out += data
        self._check()

    def errReceived(self, data: bytes) -> None:
        self.err += data
        self._check()

    def processEnded(self, reason: Failure) -> None:
        self.has_ended = True
        self.code = getattr(reason.value, "exitCode", None)
        self.signal = getattr(reason.value, "signal", None)
        self._check()
        for _, d in self._waits:
            d.errback(ProcessTimeout(f"the process ended first\n{self.result().describe()}"))
        self._waits.clear()
        self.ended.callback(self.result())

    # use

    def result(self) -> Result:
        return Result(self.argv, self.code, self.signal, bytes(self.out), bytes(self.err))

    def lines(self) -> list[str]:
        """Complete stdout lines so far."""
        text = bytes(self.out).decode("utf-8", "replace")
        return text.split("\n")[:-1]

    def _check(self) -> None:
        for wait in list(self._waits):
            predicate, d = wait
            value = predicate(self)
            if value:
                self._waits.remove(wait)
                d.callback(value)

    def wait_for(self, predicate: Callable[[Proc], Any], what: str, timeout: float = 30.0) -> Any:
        """A Deferred firing with ``predicate(self)`` once it is true (checked on each output
        chunk); fails when the process ends first or ``timeout`` seconds pass."""
        value = predicate(self)
        if value:
            return succeed(value)
        if self.has_ended:
            return _failed(ProcessTimeout(f"ended before {what}\n{self.result().describe()}"))
        d: Deferred[Any] = Deferred()
        entry = (predicate, d)
        self._waits.append(entry)

        def expire() -> None:
            if entry in self._waits:
                self._waits.remove(entry)
                d.errback(
                    ProcessTimeout(f"no {what} within {timeout} s\n{self.result().describe()}")
                )

        timer = self.clock.callLater(timeout, expire)
        d.addBoth(lambda r: (timer.cancel() if timer.active() else None, r)[1])
        return d

    def line(self, index: int = 0, timeout: float = 30.0) -> Deferred[str]:
        """stdout line ``index`` once it is complete."""

        def got(p: Proc) -> str | None:
            lines = p.lines()
            return lines[index] if len(lines) > index else None

        return self.wait_for(got, f"stdout line {index}", timeout)  # type: ignore[no-any-return]

    def stderr_contains(self, text: str, timeout: float = 30.0) -> Deferred[Any]:
        return self.wait_for(  # type: ignore[no-any-return]
            lambda p: text.encode() in p.err, f"{text!r} on stderr", timeout
        )

    def write(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]

    def close_stdin(self) -> None:
        self.transport.closeStdin()  # type: ignore[union-attr]

    def kill(self, sig: str = "TERM") -> None:
        if not self.has_ended:
            try:
                self.transport.signalProcess(sig)  # type: ignore[union-attr]
            except Exception:
                pass

    async def finish(self, timeout: float = 30.0) -> Result:
        """Wait for the end (SIGKILL after ``timeout`` s, then fail)."""
        if not self.has_ended:
            try:
                await self.wait_for(lambda p: p.has_ended, "exit", timeout)
            except ProcessTimeout:
                self.kill("KILL")
                await self.ended
                raise
        return self.result()

    async def stop(self) -> Result:
        """SIGTERM, then wait for the end."""
        self.kill("TERM")
        return await self.finish(15.0)


def _failed(error: Exception) -> Deferred[Any]:
    d: Deferred[Any] = Deferred()
    d.errback(error)
    return d


def spawn(
    case: TestCase,
    argv: Sequence[str],
    cwd: Path = REPO,
    env: Mapping[str, str] | None = None,
) -> Proc:
    """Start ``argv`` in ``cwd`` on the trial reactor, with ``env`` added to the environment
    and this checkout importable from any ``cwd``; killed in ``case``'s cleanups."""
    proc = Proc(argv, reactor)
    full = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    full.update(env or {})
    full["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), full.get("PYTHONPATH")]))
    reactor.spawnProcess(proc, argv[0], list(argv), env=full, path=str(cwd))

    async def cleanup() -> None:
        if not proc.has_ended:
            proc.kill("KILL")
            await proc.ended

    case.addCleanup(lambda: ensureDeferred(cleanup()))
    return proc


def grenache(case: TestCase, *args: str, cwd: Path = REPO) -> Proc:
    """Start ``grenache ARGS...`` (as ``python -m grenache.cli``)."""
    return spawn(case, (*CLI, *args), cwd)


async def run_cli(
    case: TestCase, *args: str, stdin: bytes = b"", timeout: float = 60.0, cwd: Path = REPO
) -> Result:
    """Run ``grenache ARGS...`` to its end with ``stdin`` as input."""
    proc = grenache(case, *args, cwd=cwd)
    if stdin:
        proc.write(stdin)
    proc.close_stdin()
    return await proc.finish(timeout)


# --- in-process services ------------------------------------------------------------------------


async def start_server(
    case: TestCase,
    grape_url: str,
    name: str,
    handler: Callable[[Request], Any],
    transport: str = "http",
) -> int:
    """Serve ``handler`` on loopback, announced as ``name`` through the grape; its port."""
    link = Link(grape_url, reactor=reactor)
    kind = HTTPServerTransport if transport == "http" else WSServerTransport
    server = PeerRPCServer(link, kind(reactor, interface="127.0.0.1"), handler)

    async def stop() -> None:
        await server.stop()
        await link.stop()

    case.addCleanup(lambda: ensureDeferred(stop()))
    port = await server.listen(0)
    await server.announce(name)
    return port


class _Silent(Protocol):
    """Accepts a connection and never answers."""

    def connectionMade(self) -> None:
        self.factory.connections.add(self)  # type: ignore[attr-defined]

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.connections.discard(self)  # type: ignore[attr-defined]


def silent_server(case: TestCase) -> int:
    """A TCP port on loopback that accepts connections and never answers; its number."""
    factory = Factory.forProtocol(_Silent)
    factory.connections = set()  # type: ignore[attr-defined]
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")

    def stop() -> Deferred[Any]:
        for connection in list(factory.connections):  # type: ignore[attr-defined]
            connection.transport.abortConnection()
        return port.stopListening()  # type: ignore[no-any-return]

    case.addCleanup(stop)
    return int(port.getHost().port)


async def announce(grape_url: str, name: str, port: int) -> None:
    reply = await grape_request(grape_url, "announce", [name, port])
    assert reply.json == 1, reply


# --- options, in-process ------------------------------------------------------------------------


def parse(*argv: str) -> Any:
    options = cli.Options()
    options.parseOptions(list(argv))
    return options.subOptions


class OptionsTests(TestCase):
    def test_options_may_follow_the_arguments(self) -> None:
        options = parse("request", "svc", '{"a": [1, 2]}', "--timeout", "2.5", "-t", "ws")
        self.assertEqual(options["name"], "svc")
        self.assertEqual(options["payload"], {"a": [1, 2]})
        self.assertEqual((options["timeout"], options["transport"]), (2.5, "ws"))
        self.assertEqual(options["grape"], "http://127.0.0.1:30001")

    def test_double_dash_ends_the_options(self) -> None:
        options = parse("request", "--compress", "svc", "--", "-1")
        self.assertEqual(options["payload"], -1)
        self.assertTrue(options["compress"])

    def test_defaults(self) -> None:
        options = parse("map", "svc", "null")
        self.assertEqual((options["limit"], options["transport"]), (None, "http"))
        self.assertEqual(options["timeout"], 10.0)
        self.assertEqual(parse("keygen")["file"], cli.DEFAULT_KEY_FILE)
        self.assertEqual(parse("pub", "x")["where"], 0)
        self.assertIsNone(parse("sub", "x")["count"])

    def test_serve_takes_the_service_options(self) -> None:
        options = parse(
            "serve", "a", "--handler", "m:f", "--port", "1337", "b", "--name", "c", "-t", "ws"
        )
        config = options.config()
        self.assertEqual(config.names, ("c", "a", "b"))
        self.assertEqual((config.port, config.transport, config.handler), (1337, "ws", "m:f"))

    def test_usage_errors(self) -> None:
        bad = [
            ("lookup",),
            ("lookup", "a", "b", "--first", "--random"),  # several NAMEs are fine, not picks
            ("announce", "svc", "70000"),
            ("announce", "svc", "port"),
            ("put", "v", "--seq", "3"),
            ("put", "v", "--salt", "s"),
            ("put", "x" * 1001),
            ("put", "v", "--key", "k", "--salt", "s" * 65),
            ("get", "not-a-hash"),
            ("request", "svc", "{not json"),
            ("request", "svc", "1", "--timeout", "0"),
            ("map", "svc", "1", "--limit", "0"),
            ("sub", "x", "--count", "-1"),
            ("serve", "x"),
            ("serve", "--handler", "m:f"),
            ("serve", "x", "--handler", "m:f", "--transport", "carrier-pigeon"),
            ("nosuchverb",),
            (),
        ]
        for argv in bad:
            with self.subTest(argv=argv):
                self.assertRaises(usage.UsageError, parse, *argv)

    def test_get_accepts_what_put_prints(self) -> None:
        key = "2AAE6C35C94FCFB415DBE95F408B9CE91EE846ED"
        self.assertEqual(parse("get", f'"{key}"')["hash"], key.lower())

    def test_every_verb_shows_an_example(self) -> None:
        for verb, options, _ in cli.VERBS:
            with self.subTest(verb=verb):
                parent = cli.Options()
                parent.subCommand = verb
                sub = options()
                sub.parent = parent
                text = str(sub)
                self.assertIn(f"Usage: grenache {verb} ", text)
                self.assertIn("Example", text)
                self.assertIn(f"grenache {verb} ", text.split("Example", 1)[1])
        self.assertIn("Examples:", str(cli.Options()))

    def test_usage_error_is_one_line_and_exit_2(self) -> None:
        written: list[str] = []
        self.patch(sys, "stderr", _Writer(written))
        error = self.assertRaises(SystemExit, cli.main, ["request", "svc"])
        self.assertEqual(error.code, 2)
        text = "".join(written)
        self.assertEqual(text.count("\n"), 1, text)
        self.assertTrue(text.startswith("grenache request: expected NAME JSON"), text)


class _Writer:
    def __init__(self, into: list[str]) -> None:
        self.into = into

    def write(self, text: str) -> None:
        self.into.append(text)

    def flush(self) -> None:
        pass


# --- key files ------------------------------------------------------------------------------


class KeyFileTests(TestCase):
    def test_written_0600_and_read_back(self) -> None:
        path = Path(self.mktemp()).resolve() / "sub" / "key.json"
        seed = cli.write_key_file(path)
        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(path.parent.stat().st_mode), 0o700)
        document = json.loads(path.read_text())
        self.assertEqual(set(document), {"publicKey", "secretKey"})
        self.assertEqual(document["secretKey"], seed.hex())
        self.assertEqual(document["publicKey"], bep44.public_key_of(seed).hex())
        self.assertEqual(cli.read_key_file(path), seed)

    def test_not_replaced_without_force(self) -> None:
        path = Path(self.mktemp()).resolve()
        first = cli.write_key_file(path)
        error = self.assertRaises(cli.CommandError, cli.write_key_file, path)
        self.assertIn("--force", str(error))
        self.assertEqual(cli.read_key_file(path), first)
        second = cli.write_key_file(path, force=True)
        self.assertNotEqual(first, second)
        self.assertEqual(cli.read_key_file(path), second)
        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)

    def test_seed_and_public_key_format_is_read(self) -> None:
        # libsodium / tweetnacl write the secret key as seed || public key (64 bytes).
        seed = bytes(range(32))
        path = Path(self.mktemp()).resolve()
        public = bep44.public_key_of(seed)
        path.write_text(json.dumps({"secretKey": (seed + public).hex()}))
        self.assertEqual(cli.read_key_file(path), seed)

    def test_bad_key_files(self) -> None:
        seed = bytes(range(32))
        other = bep44.public_key_of(bytes(32))
        cases = {
            "missing": None,
            "not json": "{",
            "no secret": json.dumps({"publicKey": other.hex()}),
            "short": json.dumps({"secretKey": "ab" * 31}),
            "not hex": json.dumps({"secretKey": "zz" * 32}),
            "wrong public": json.dumps({"secretKey": seed.hex(), "publicKey": other.hex()}),
            "wrong half": json.dumps({"secretKey": (seed + other).hex()}),
            "expanded": json.dumps({"secretKey": "ab" * 64}),
        }
        for label, text in cases.items():
            with self.subTest(label):
                path = Path(self.mktemp()).resolve()
                if text is not None:
                    path.write_text(text)
                error = self.assertRaises(cli.CommandError, cli.read_key_file, path)
                self.assertIn(str(path), str(error))


# --- every verb as a subprocess ----------------------------------------------------------------


class CommandTests(TestCase):
    """Verbs against one in-process grape."""

    timeout = 240

    async def grape_url(self) -> str:
        grape = await start_python_grape(self)
        return str(grape.url)

    def assertFailed(self, result: Result, verb: str, *fragments: str) -> None:
        """Exit 1, nothing on stdout, one line on stderr naming the verb and ``fragments``."""
        self.assertEqual(result.code, 1, result.describe())
        self.assertEqual(result.out, b"", result.describe())
        text = result.err.decode()
        self.assertEqual(text.count("\n"), 1, result.describe())
        self.assertTrue(text.startswith(f"grenache {verb}: "), result.describe())
        for fragment in fragments:
            self.assertIn(fragment, text)

    def assertSucceeded(self, result: Result) -> Any:
        self.assertEqual(result.code, 0, result.describe())
        self.assertEqual(result.out.count(b"\n"), 1, result.describe())
        return result.json()

    async def test_announce_then_lookup(self) -> None:
        url = await self.grape_url()
        count = self.assertSucceeded(await run_cli(self, "announce", "cli_svc", "4321", "-g", url))
        self.assertEqual(count, 1)
        peers = self.assertSucceeded(await run_cli(self, "lookup", "cli_svc", "--grape", url))
        self.assertEqual(peers, ["127.0.0.1:4321"])

    async def test_lookup_empty(self) -> None:
        url = await self.grape_url()
        result = await run_cli(self, "lookup", "nobody_here", "-g", url)
        self.assertFailed(result, "lookup", "no peer is announced as 'nobody_here'")
        self.assertIn("ERR_GRAPE_LOOKUP_EMPTY", result.err.decode())

    async def test_grape_down(self) -> None:
        url = f"http://127.0.0.1:{free_port()}"
        for argv in (
            ("lookup", "x"),
            ("announce", "x", "1"),
            ("put", "v"),
            ("get", "a" * 40),
            ("request", "x", "1"),
            ("map", "x", "1"),
            ("sub", "x"),
        ):
            with self.subTest(argv=argv):
                result = await run_cli(self, *argv, "--grape", url)
                self.assertFailed(
                    result, argv[0], f"cannot reach the grape at {url}", "ERR_GRAPE_UNREACHABLE"
                )

    async def test_grape_silent(self) -> None:
        url = f"http://127.0.0.1:{silent_server(self)}"
        result = await run_cli(self, "lookup", "x", "--grape", url, "--timeout", "0.2")
        self.assertFailed(
            result, "lookup", f"the grape at {url} did not answer within 0.2 s", "ERR_TIMEOUT"
        )
        result = await run_cli(self, "request", "x", "1", "--grape", url, "--timeout", "0.2")
        self.assertFailed(result, "request", f"the grape at {url} did not answer")

    async def test_request(self) -> None:
        url = await self.grape_url()
        await start_server(self, url, "cli_echo", echo)
        result = await run_cli(self, "request", "cli_echo", '{"n": [1, "ü"]}', "-g", url)
        reply = self.assertSucceeded(result)
        self.assertEqual(reply["payload"], {"n": [1, "ü"]})
        self.assertEqual((reply["key"], reply["peer_certificate"]), ("cli_echo", None))
        self.assertIn('"ü"'.encode(), result.out)  # raw UTF-8, as Node writes JSON
        reply = self.assertSucceeded(
            await run_cli(self, "request", "cli_echo", "[1]", "-g", url, "--compress")
        )
        self.assertEqual(reply["payload"], [1])

    async def test_request_over_websocket(self) -> None:
        url = await self.grape_url()
        await start_server(self, url, "cli_ws", echo, transport="ws")
        reply = self.assertSucceeded(
            await run_cli(self, "request", "cli_ws", '"hi"', "-g", url, "--transport", "ws")
        )
        self.assertEqual(reply["payload"], "hi")

    async def test_request_payload_from_stdin(self) -> None:
        url = await self.grape_url()
        await start_server(self, url, "cli_stdin", echo)
        result = await run_cli(self, "request", "cli_stdin", "-", "-g", url, stdin=b'{"a":1}\n')
        self.assertEqual(self.assertSucceeded(result)["payload"], {"a": 1})

    async def test_request_remote_error(self) -> None:
        url = await self.grape_url()
        await start_server(self, url, "cli_broken", broken)
        result = await run_cli(self, "request", "cli_broken", "1", "-g", url)
        self.assertFailed(
            result, "request", "'cli_broken' answered an error: ERR_BROKEN: no can do"
        )
        # The in-process service logs the handler's traceback as well.
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    async def test_request_timeout(self) -> None:
        url = await self.grape_url()
        await announce(url, "cli_silent", silent_server(self))
        result = await run_cli(self, "request", "cli_silent", "1", "-g", url, "--timeout", "0.3")
        self.assertFailed(
            result, "request", "'cli_silent' did not answer within 0.3 s", "ERR_TIMEOUT"
        )

    async def test_request_unreachable_service(self) -> None:
        url = await self.grape_url()
        await announce(url, "cli_gone", free_port())
        result = await run_cli(self, "request", "cli_gone", "1", "-g", url)
        self.assertFailed(result, "request", "cannot connect to 'cli_gone'")

    async def test_request_empty_lookup(self) -> None:
        url = await self.grape_url()
        result = await run_cli(self, "request", "cli_nobody", "1", "-g", url)
        self.assertFailed(result, "request", "no peer is announced as 'cli_nobody'")

    async def test_map(self) -> None:
        url = await self.grape_url()
        for _ in range(3):
            await start_server(self, url, "cli_many", coroutine_double)
        replies = self.assertSucceeded(await run_cli(self, "map", "cli_many", "21", "-g", url))
        self.assertEqual(replies, [42, 42, 42])
        replies = self.assertSucceeded(
            await run_cli(self, "map", "cli_many", '"ab"', "-g", url, "--limit", "2")
        )
        self.assertEqual(replies, ["abab", "abab"])

    async def test_map_failure(self) -> None:
        url = await self.grape_url()
        await start_server(self, url, "cli_mixed", echo)
        await start_server(self, url, "cli_mixed", broken)
        result = await run_cli(self, "map", "cli_mixed", "1", "-g", url)
        self.assertFailed(result, "map", "answered an error: ERR_BROKEN")
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    async def test_put_and_get_immutable(self) -> None:
        url = await self.grape_url()
        key = self.assertSucceeded(await run_cli(self, "put", "hello world", "-g", url))
        self.assertEqual(key, bep44.immutable_key(b"hello world").hex())
        item = self.assertSucceeded(await run_cli(self, "get", key, "-g", url))
        self.assertEqual(item["v"], "hello world")
        self.assertNotIn("k", item)
        value = self.assertSucceeded(await run_cli(self, "get", f'"{key}"', "--value", "-g", url))
        self.assertEqual(value, "hello world")
        stdin_key = self.assertSucceeded(
            await run_cli(self, "put", "-", "-g", url, stdin=b"from stdin\n")
        )
        self.assertEqual(stdin_key, bep44.immutable_key(b"from stdin").hex())

    async def test_get_missing(self) -> None:
        url = await self.grape_url()
        result = await run_cli(self, "get", "b" * 40, "-g", url)
        self.assertFailed(result, "get", f"nothing is stored under {'b' * 40}")

    async def test_keygen_put_get_mutable(self) -> None:
        # Two grapes, so the put travels over KRPC and the other grape checks seq and cas.
        first = await start_python_grape(self)
        second = await start_python_grape(self, [first.dht_address])
        home = Path(self.mktemp()).resolve()
        home.mkdir()
        key_file = str(home / "k.json")
        made = self.assertSucceeded(await run_cli(self, "keygen", key_file))
        self.assertEqual(made["file"], key_file)
        self.assertEqual(stat.S_IMODE(os.stat(key_file).st_mode), 0o600)
        again = await run_cli(self, "keygen", key_file)
        self.assertFailed(again, "keygen", "already exists")
        put = ("put", "--key", key_file, "--salt", "cfg", "-g", second.url)
        key = self.assertSucceeded(await run_cli(self, *put[:1], "v1", *put[1:], "--seq", "1"))
        public = bytes.fromhex(made["publicKey"])
        self.assertEqual(key, bep44.mutable_key(public, b"cfg").hex())
        item = self.assertSucceeded(
            await run_cli(self, "get", key, "--salt", "cfg", "-g", first.url)
        )
        self.assertEqual((item["v"], item["seq"], item["k"]), ("v1", 1, made["publicKey"]))
        self.assertSucceeded(await run_cli(self, "put", "v2", *put[1:], "--seq", "2", "--cas", "1"))
        stale = await run_cli(self, "put", "v3", *put[1:], "--seq", "3", "--cas", "1")
        self.assertFailed(stale, "put", "answered an error (HTTP 301)", "CAS mismatch")
        old = await run_cli(self, "put", "v0", *put[1:], "--seq", "1")
        self.assertFailed(old, "put", "(HTTP 302)", "sequence number less than current")
        item = self.assertSucceeded(
            await run_cli(self, "get", key, "--salt", "cfg", "-g", first.url)
        )
        self.assertEqual((item["v"], item["seq"]), ("v2", 2))
        # Without the salt the item cannot be checked against its key.
        unsalted = await run_cli(self, "get", key, "-g", first.url)
        self.assertFailed(unsalted, "get", "was it put with a --salt?")

    async def test_put_default_seq_is_the_time(self) -> None:
        url = await self.grape_url()
        key_file = Path(self.mktemp()).resolve()
        cli.write_key_file(key_file)
        key = self.assertSucceeded(
            await run_cli(self, "put", "now", "--key", str(key_file), "-g", url)
        )
        item = self.assertSucceeded(await run_cli(self, "get", key, "-g", url))
        self.assertGreater(item["seq"], 1_600_000_000 * 1_000_000)

    async def test_put_bad_key_file(self) -> None:
        url = await self.grape_url()
        missing = Path(self.mktemp()).resolve()
        result = await run_cli(self, "put", "v", "--key", str(missing), "-g", url)
        self.assertFailed(result, "put", f"cannot read key file {missing}")

    async def test_usage_error_exit_2(self) -> None:
        result = await run_cli(self, "lookup")
        self.assertEqual(result.code, 2, result.describe())
        self.assertEqual(result.out, b"")
        self.assertEqual(result.err.count(b"\n"), 1, result.describe())

    async def test_help(self) -> None:
        result = await run_cli(self, "request", "--help")
        self.assertEqual(result.code, 0)
        self.assertIn(b"Usage: grenache request NAME JSON", result.out)
        self.assertIn(b"grenache request fibonacci_worker", result.out)


class ServeTests(TestCase):
    """``grenache serve`` as a subprocess."""

    timeout = 180

    async def test_serve_request_and_shutdown(self) -> None:
        grape = await start_python_grape(self)
        serve = grenache(
            self,
            "serve",
            "cli_served",
            "cli_served_too",
            "--handler",
            "tests.test_cli:echo",
            "--grape",
            grape.url,
        )
        ready = json.loads(await serve.line(0))
        self.assertEqual(ready["name"], ["cli_served", "cli_served_too"])
        self.assertEqual(ready["announced"], {"cli_served": 1, "cli_served_too": 1})
        self.assertEqual((ready["transport"], ready["grape"]), ("http", grape.url))
        port = ready["port"]
        peers = self.successResultOf_json(
            await run_cli(self, "lookup", "cli_served_too", "-g", grape.url)
        )
        self.assertEqual(peers, [f"127.0.0.1:{port}"])
        result = await run_cli(self, "request", "cli_served", '{"x":1}', "-g", grape.url)
        self.assertEqual(result.code, 0, result.describe())
        self.assertEqual(result.json()["payload"], {"x": 1})
        ended = await serve.stop()
        self.assertIn(ended.code, (0, None), ended.describe())
        self.assertIn(b"Serving 'cli_served', 'cli_served_too'", ended.err)
        self.assertIn(b"Stopped announcing 'cli_served', 'cli_served_too'", ended.err)
        # Stopping unannounced it: the grape no longer lists it (and its port is closed).
        gone = await run_cli(self, "request", "cli_served", "1", "-g", grape.url)
        self.assertEqual(gone.code, 1, gone.describe())
        self.assertIn(b"no peer is announced as 'cli_served'", gone.err)

    def successResultOf_json(self, result: Result) -> Any:
        self.assertEqual(result.code, 0, result.describe())
        return result.json()

    async def test_serve_handler_kinds_over_websocket(self) -> None:
        grape = await start_python_grape(self)
        for handler, payload, expected in (
            ("coroutine_double", "21", 42),
            ("deferred_upper", '"abc"', "ABC"),
        ):
            with self.subTest(handler=handler):
                name = f"cli_{handler}"
                serve = grenache(
                    self,
                    "serve",
                    name,
                    "--handler",
                    f"tests.test_cli:{handler}",
                    "-t",
                    "ws",
                    "-g",
                    grape.url,
                )
                await serve.line(0)
                result = await run_cli(self, "request", name, payload, "-t", "ws", "-g", grape.url)
                self.assertEqual(result.code, 0, result.describe())
                self.assertEqual(result.json(), expected)
                await serve.stop()

    async def test_serve_errors(self) -> None:
        grape = await start_python_grape(self)
        taken = silent_server(self)
        for argv, fragment in (
            (("--handler", "tests.no_such_module:f"), "no module named 'tests.no_such_module'"),
            (
                ("--handler", "tests.test_cli:nothing"),
                "'tests.test_cli' has no attribute 'nothing'",
            ),
            (("--handler", "tests.test_cli:REPO"), "is not callable"),
            (
                ("--handler", "tests.test_cli:echo", "--port", str(taken)),
                f"cannot listen on TCP port {taken}",
            ),
        ):
            with self.subTest(argv=argv):
                result = await run_cli(self, "serve", "cli_bad", *argv, "-g", grape.url)
                self.assertEqual(result.code, 1, result.describe())
                self.assertEqual(result.out, b"")
                self.assertTrue(result.err.startswith(b"grenache serve: "), result.describe())
                self.assertIn(fragment.encode(), result.err)
                self.assertEqual(result.err.count(b"\n"), 1, result.describe())


class PubSubTests(TestCase):
    timeout = 120

    async def test_pub_sub(self) -> None:
        grape = await start_python_grape(self)
        pub = grenache(self, "pub", "cli_news", "-g", grape.url)
        ready = json.loads(await pub.line(0))
        self.assertEqual(
            (ready["name"], ready["transport"], ready["announced"]), ("cli_news", "ws", 1)
        )
        sub = grenache(self, "sub", "cli_news", "--count", "3", "-g", grape.url)
        await sub.stderr_contains(f"connected to 'cli_news' at 127.0.0.1:{ready['port']}")
        pub.write("première ligne\r\nsecond\n".encode())
        await sub.line(1)
        pub.write(b"third, without a newline")
        pub.close_stdin()  # the last line is published at the end of input
        result = await sub.finish()
        self.assertEqual(result.code, 0, result.describe())
        self.assertEqual(result.out.decode(), "première ligne\nsecond\nthird, without a newline\n")
        ended = await pub.finish()
        self.assertEqual(ended.code, 0, ended.describe())
        self.assertEqual(len(pub.lines()), 1)

    async def test_sub_nobody(self) -> None:
        grape = await start_python_grape(self)
        result = await run_cli(self, "sub", "cli_nobody", "-g", grape.url)
        self.assertEqual(result.code, 1, result.describe())
        self.assertEqual(result.out, b"")
        self.assertIn(b"grenache sub: no peer is announced as 'cli_nobody'", result.err)
