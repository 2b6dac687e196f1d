"""
Harness for interop tests against the real Node.js Grenache packages.

It installs the pinned Node packages (``tests/interop/node/package-lock.json``) once into
``<repo>/.cache/interop-node/``, starts Node grapes and scripts as subprocesses in their own
process groups, talks to grape APIs with treq, and polls for conditions with deadlines.

Tests skip when ``node``/``npm`` are missing or the install fails, unless the environment
variable ``GRENACHE_INTEROP=required`` is set (CI), in which case they fail.

Everything listens on, and talks to, 127.0.0.1 on ports the OS picked.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, NoReturn, TypeVar

import treq
from twisted.internet import defer, protocol
from twisted.internet.interfaces import IReactorProcess, IReactorTime
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web.client import HTTPConnectionPool

T = TypeVar("T")

LOCALHOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parents[2]
NODE_SCRIPTS_DIR = Path(__file__).resolve().parent / "node"
CACHE_ROOT = REPO_ROOT / ".cache"
NODE_CACHE_DIR = CACHE_ROOT / "interop-node"
_LOCK_FILE = CACHE_ROOT / "interop-node.lock"
_STAMP_NAME = ".installed-lock-sha256"
_INSTALL_TIMEOUT = 900.0

#: Bytes of each subprocess stream kept in memory (older output is dropped).
LOG_LIMIT = 256 * 1024

# Run in the child after fork, before node: a new session (and process group) whose id is
# the child's pid, so the whole group can be signalled. Twisted's spawnProcess has no
# setsid option for non-PTY processes.
_SETSID_TRAMPOLINE = "import os,sys;os.setsid();os.execv(sys.argv[1],sys.argv[1:])"


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


# --------------------------------------------------------------------------------------
# Availability and installation
# --------------------------------------------------------------------------------------


def interop_required() -> bool:
    """True when interop tests must run (``GRENACHE_INTEROP=required``): no skipping."""
    return os.environ.get("GRENACHE_INTEROP", "").strip().lower() == "required"


def unavailable(reason: str) -> NoReturn:
    """Skip the current test, or fail it when interop tests are required."""
    if interop_required():
        raise unittest.FailTest(f"GRENACHE_INTEROP=required but {reason}")
    raise unittest.SkipTest(reason)


def node_executable() -> str:
    """Path of ``node``; skips (or fails when required) if it is missing."""
    path = shutil.which("node")
    if path is None:
        unavailable("node (Node.js) is not installed or not on PATH")
    return path


def npm_executable() -> str:
    """Path of ``npm``; skips (or fails when required) if it is missing."""
    path = shutil.which("npm")
    if path is None:
        unavailable("npm is not installed or not on PATH")
    return path


def _lock_digest() -> str:
    digest = hashlib.sha256()
    for name in ("package.json", "package-lock.json"):
        digest.update(name.encode())
        digest.update(b"\0")
        digest.update((NODE_SCRIPTS_DIR / name).read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


class InstallError(Exception):
    """``npm ci`` failed."""


_install_result: Path | str | None = None


def _installed(target: Path, digest: str) -> bool:
    stamp = target / _STAMP_NAME
    return (
        stamp.is_file()
        and stamp.read_text().strip() == digest
        and (target / "node_modules" / "grenache-grape" / "package.json").is_file()
    )


def _install(npm: str) -> Path:
    digest = _lock_digest()
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    with open(_LOCK_FILE, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if _installed(NODE_CACHE_DIR, digest):
                return NODE_CACHE_DIR / "node_modules"
            NODE_CACHE_DIR.mkdir(parents=True, exist_ok=True)
            (NODE_CACHE_DIR / _STAMP_NAME).unlink(missing_ok=True)
            for name in ("package.json", "package-lock.json"):
                shutil.copyfile(NODE_SCRIPTS_DIR / name, NODE_CACHE_DIR / name)
            env = dict(os.environ)
            env.setdefault("npm_config_update_notifier", "false")
            try:
                done = subprocess.run(
                    [npm, "ci", "--no-audit", "--no-fund"],
                    cwd=NODE_CACHE_DIR,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    timeout=_INSTALL_TIMEOUT,
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                raise InstallError(f"npm ci timed out after {_INSTALL_TIMEOUT:.0f} s") from exc
            output = done.stdout.decode("utf-8", "replace")
            if done.returncode != 0:
                raise InstallError(
                    f"npm ci exited with {done.returncode} in {NODE_CACHE_DIR}:\n{output[-3000:]}"
                )
            if not (NODE_CACHE_DIR / "node_modules" / "grenache-grape").is_dir():
                raise InstallError(f"npm ci did not install grenache-grape:\n{output[-3000:]}")
            (NODE_CACHE_DIR / _STAMP_NAME).write_text(digest + "\n")
            return NODE_CACHE_DIR / "node_modules"
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def node_modules_dir() -> Path:
    """
    The ``node_modules`` directory holding the pinned Node packages.

    On first use, runs ``npm ci --no-audit --no-fund`` from ``tests/interop/node``'s
    package.json and package-lock.json in ``<repo>/.cache/interop-node/``, under a file lock
    (several test processes may start at once). Skipped when an install of the same lock
    contents is already there. The outcome, including a failure, is remembered for the
    rest of the process. Skips the calling test (or fails it under
    ``GRENACHE_INTEROP=required``) when node/npm are missing or the install fails.
    """
    global _install_result
    node_executable()
    if _install_result is None:
        try:
            _install_result = _install(npm_executable())
        except (InstallError, OSError) as exc:
            _install_result = f"installing the Node interop packages failed: {exc}"
    if isinstance(_install_result, str):
        unavailable(_install_result)
    return _install_result


# --------------------------------------------------------------------------------------
# Subprocesses
# --------------------------------------------------------------------------------------


class RingLog:
    """The last ``limit`` bytes written to a stream."""

    def __init__(self, limit: int = LOG_LIMIT) -> None:
        self.limit = limit
        self._buf = bytearray()
        self.dropped = 0

    def append(self, data: bytes) -> None:
        """Add output, dropping the oldest bytes beyond the limit."""
        self._buf += data
        excess = len(self._buf) - self.limit
        if excess > 0:
            del self._buf[:excess]
            self.dropped += excess

    def tail(self, chars: int = 3000) -> str:
        """The last ``chars`` characters, decoded leniently."""
        text = bytes(self._buf[-chars:]).decode("utf-8", "replace")
        if self.dropped or len(self._buf) > chars:
            text = "..." + text
        return text


_LIVE: set[NodeProcess] = set()


class ProcessFailed(Exception):
    """A subprocess exited, or did not get ready in time."""


class NodeProcess(protocol.ProcessProtocol):
    """
    A Node.js subprocess in its own process group, with bounded stdout/stderr logs.

    ``ready`` fires with the first JSON line the process prints on stdout (or errbacks when
    the process exits first or the ready timeout passes). Later JSON lines are queued and
    read with ``next_message``. ``stop()`` sends SIGTERM to the process group, then SIGKILL
    after a deadline.
    """

    def __init__(self, name: str, reactor: Any | None = None) -> None:
        self.name = name
        self.reactor = reactor if reactor is not None else _reactor()
        self.stdout_log = RingLog()
        self.stderr_log = RingLog()
        self.ready: defer.Deferred[Any] = defer.Deferred()
        self.ended: defer.Deferred[int | None] = defer.Deferred()
        self.exit_code: int | None = None
        self.exit_signal: int | None = None
        self.has_ended = False
        self.pid: int | None = None
        self._partial = bytearray()
        self._messages: defer.DeferredQueue[Any] = defer.DeferredQueue()
        self._ready_timer: Any = None

    # ProcessProtocol -------------------------------------------------------------------

    def connectionMade(self) -> None:
        self.pid = self.transport.pid  # type: ignore[union-attr]
        _LIVE.add(self)

    def outReceived(self, data: bytes) -> None:
        self.stdout_log.append(data)
        self._partial += data
        while True:
            nl = self._partial.find(b"\n")
            if nl < 0:
                break
            line = bytes(self._partial[:nl])
            del self._partial[: nl + 1]
            self._line(line)
        if len(self._partial) > LOG_LIMIT:
            del self._partial[:]

    def errReceived(self, data: bytes) -> None:
        self.stderr_log.append(data)

    def processEnded(self, reason: Failure) -> None:
        self.has_ended = True
        _LIVE.discard(self)
        value = reason.value
        self.exit_code = getattr(value, "exitCode", None)
        self.exit_signal = getattr(value, "signal", None)
        if self._partial:
            self._line(bytes(self._partial))
            del self._partial[:]
        if not self.ready.called:
            self._cancel_ready_timer()
            self.ready.errback(
                ProcessFailed(
                    f"{self.name} exited before it was ready ({self.describe_exit()})\n"
                    + self.logs()
                )
            )
        self.ended.callback(self.exit_code)

    # Output ----------------------------------------------------------------------------

    def _line(self, line: bytes) -> None:
        text = line.strip()
        if not text.startswith((b"{", b"[")):
            return
        try:
            message = json.loads(text)
        except ValueError:
            return
        if not self.ready.called:
            self._cancel_ready_timer()
            self.ready.callback(message)
        else:
            self._messages.put(message)

    def _cancel_ready_timer(self) -> None:
        if self._ready_timer is not None and self._ready_timer.active():
            self._ready_timer.cancel()
        self._ready_timer = None

    def set_ready_timeout(self, seconds: float) -> None:
        """Errback ``ready`` if no JSON line arrived within ``seconds``."""

        def expire() -> None:
            self._ready_timer = None
            if not self.ready.called:
                self.ready.errback(
                    ProcessFailed(
                        f"{self.name} printed no ready line within {seconds} s\n" + self.logs()
                    )
                )

        self._ready_timer = self.reactor.callLater(seconds, expire)

    def next_message(self, timeout: float = 30.0) -> defer.Deferred[Any]:
        """The next JSON line printed after the ready line."""
        d = self._messages.get()

        def on_timeout(failure: Failure) -> Failure:
            if failure.check(defer.TimeoutError, defer.CancelledError):
                raise ProcessFailed(
                    f"{self.name} printed no JSON line within {timeout} s "
                    f"({'exited: ' + self.describe_exit() if self.has_ended else 'running'})\n"
                    + self.logs()
                )
            return failure

        d.addTimeout(timeout, self.reactor)
        d.addErrback(on_timeout)
        return d

    def pending_messages(self) -> list[Any]:
        """JSON lines already received and not yet read, consumed."""
        out: list[Any] = []
        while self._messages.pending:
            out.append(self._messages.pending.pop(0))
        return out

    def write_json(self, obj: Any) -> None:
        """Write one JSON line to the process's stdin."""
        self.transport.write(_dumps(obj) + b"\n")  # type: ignore[union-attr]

    def close_stdin(self) -> None:
        """Close the process's stdin."""
        self.transport.closeStdin()  # type: ignore[union-attr]

    def describe_exit(self) -> str:
        """How the process ended, or ``running``."""
        if not self.has_ended:
            return "running"
        if self.exit_signal is not None:
            return f"killed by signal {self.exit_signal}"
        return f"exit code {self.exit_code}"

    def logs(self, chars: int = 2000) -> str:
        """The tails of stdout and stderr, labelled."""
        return (
            f"--- {self.name} (pid {self.pid}, {self.describe_exit()}) stdout tail ---\n"
            f"{self.stdout_log.tail(chars)}\n"
            f"--- {self.name} stderr tail ---\n"
            f"{self.stderr_log.tail(chars)}\n"
        )

    # Lifetime --------------------------------------------------------------------------

    def _signal_group(self, sig: int) -> None:
        if self.pid is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    async def _stop(self, timeout: float) -> None:
        if not self.has_ended:
            self._signal_group(signal.SIGTERM)
            try:
                await _with_timeout(self.ended, timeout, self.reactor)
            except defer.TimeoutError:
                pass
        # Whatever is left of the group (including a process that ignored SIGTERM).
        self._signal_group(signal.SIGKILL)
        if not self.has_ended:
            try:
                await _with_timeout(self.ended, 5.0, self.reactor)
            except defer.TimeoutError as exc:
                raise ProcessFailed(f"{self.name} (pid {self.pid}) survived SIGKILL") from exc

    def kill(self) -> defer.Deferred[None]:
        """SIGKILL the process group (a crash, not a shutdown); fires when the process is gone."""
        self._cancel_ready_timer()
        if not self.ready.called:
            self.ready.addErrback(lambda _: None)
        self._signal_group(signal.SIGKILL)
        return defer.ensureDeferred(self._stop(0.0))

    def stop(self, timeout: float = 5.0) -> defer.Deferred[None]:
        """SIGTERM the process group, SIGKILL it after ``timeout`` seconds; fires when gone."""
        self._cancel_ready_timer()
        if not self.ready.called:
            # Nobody will consume this anymore; avoid an unhandled-error report.
            self.ready.addErrback(lambda _: None)
        return defer.ensureDeferred(self._stop(timeout))


def _with_timeout(d: defer.Deferred[T], timeout: float, reactor: Any) -> defer.Deferred[T]:
    """A Deferred that follows ``d`` but fails with TimeoutError after ``timeout`` s,
    without cancelling ``d`` itself."""
    out: defer.Deferred[T] = defer.Deferred()

    def fire(result: Any) -> Any:
        if not out.called:
            if timer.active():
                timer.cancel()
            if isinstance(result, Failure):
                out.errback(result)
            else:
                out.callback(result)
        return result

    def expire() -> None:
        if not out.called:
            out.errback(defer.TimeoutError(f"timed out after {timeout} s"))

    timer = reactor.callLater(timeout, expire)
    d.addBoth(fire)
    return out


def _setsid_argv(argv: Sequence[str]) -> list[str]:
    return [sys.executable, "-S", "-c", _SETSID_TRAMPOLINE, *argv]


def spawn_node(
    case: unittest.TestCase | None,
    script: str | Path,
    args: Sequence[str] = (),
    *,
    name: str | None = None,
    ready_timeout: float | None = 30.0,
    reactor: Any | None = None,
) -> NodeProcess:
    """
    Start ``node <script> <args...>`` in its own process group.

    ``script`` is a file name in tests/interop/node/ or a path. Modules resolve from the
    harness's node_modules (``NODE_PATH``). The process is stopped in ``case``'s cleanups.
    """
    modules = node_modules_dir()
    node = node_executable()
    script_path = Path(script)
    if not script_path.is_absolute():
        script_path = NODE_SCRIPTS_DIR / script_path
    reactor = reactor if reactor is not None else _reactor()
    proc = NodeProcess(name or script_path.stem, reactor)
    env = {k: v for k, v in os.environ.items() if k not in ("NODE_OPTIONS", "DEBUG", "NODE_PATH")}
    env["NODE_PATH"] = str(modules)
    argv = _setsid_argv([node, str(script_path), *args])
    IReactorProcess(reactor).spawnProcess(proc, argv[0], argv, env=env, path=str(NODE_CACHE_DIR))
    if case is not None:
        case.addCleanup(proc.stop)
    if ready_timeout is not None:
        proc.set_ready_timeout(ready_timeout)
    return proc


def live_processes() -> list[NodeProcess]:
    """Node subprocesses currently running."""
    return sorted(_LIVE, key=lambda p: p.pid or 0)


def logs_of(processes: Iterable[NodeProcess] | None = None) -> str:
    """Log tails of ``processes`` (default: every running subprocess)."""
    procs = live_processes() if processes is None else list(processes)
    return "".join(p.logs() for p in procs)


# --------------------------------------------------------------------------------------
# Ports and grape API calls
# --------------------------------------------------------------------------------------


def free_port(kind: int = socket.SOCK_STREAM, host: str = "") -> int:
    """A port the OS reports free (bind to port 0, read it, close). Racy by nature:
    only for programs that cannot be told to use port 0 (the ``grape`` CLI)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _dumps(obj: Any) -> bytes:
    """Compact JSON with raw UTF-8, as Node's JSON.stringify writes it."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class GrapeReply(NamedTuple):
    """A grape API answer: status, raw body, body parsed as JSON (None if empty/invalid)."""

    status: int
    body: bytes
    json: Any


async def grape_request(
    url: str,
    op: str,
    data: Any,
    *,
    rid: str | None = None,
    timeout: float = 15.0,
    pool: HTTPConnectionPool | None = None,
    reactor: Any | None = None,
) -> GrapeReply:
    """
    POST ``{"rid": ..., "data": data}`` to ``<url>/<op>`` with treq.

    Uses a non-persistent connection unless ``pool`` is given, so nothing is left open.
    """
    reactor = reactor if reactor is not None else _reactor()
    if pool is None:
        pool = HTTPConnectionPool(reactor, persistent=False)
    body = _dumps({"rid": rid or str(uuid.uuid4()), "data": data})
    response = await treq.post(
        f"{url.rstrip('/')}/{op}",
        data=body,
        headers={b"Content-Type": [b"application/json"]},
        allow_redirects=False,
        pool=pool,
        timeout=timeout,
        reactor=reactor,
    )
    raw = await treq.content(response)
    parsed: Any = None
    if raw:
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
    return GrapeReply(response.code, raw, parsed)


# --------------------------------------------------------------------------------------
# Waiting for conditions
# --------------------------------------------------------------------------------------


class WaitTimeout(AssertionError):
    """A polled condition did not hold before its deadline."""


async def wait_until(
    probe: Callable[[], Awaitable[T]],
    timeout: float,
    describe: str,
    *,
    done: Callable[[T], bool] = bool,
    interval: float = 0.05,
    processes: Iterable[NodeProcess] | None = None,
    reactor: Any | None = None,
) -> T:
    """
    Call ``probe`` until ``done(value)`` holds; return that value.

    ``timeout`` is in seconds from now. A probe that raises counts as not done (its error
    is the observed value). ``interval`` only paces the polls. On the deadline, fails
    with ``describe``, the last observed value and the log tails of ``processes``
    (default: all running Node subprocesses).
    """
    reactor = reactor if reactor is not None else _reactor()
    clock = IReactorTime(reactor)
    start = clock.seconds()
    deadline = start + timeout
    polls = 0
    last: Any = "<never observed>"
    while True:
        polls += 1
        try:
            value = await probe()
        except Exception as exc:
            last = f"<{type(exc).__name__}: {exc}>"
        else:
            last = value
            if done(value):
                return value
        if clock.seconds() >= deadline:
            raise WaitTimeout(
                f"timed out after {clock.seconds() - start:.2f} s ({polls} polls) waiting until "
                f"{describe}; last observed: {last!r}\n" + logs_of(processes)
            )
        await deferLater(reactor, interval, lambda: None)


async def announce_until_acknowledged(
    url: str, name: str, port: int, timeout: float = 20.0
) -> GrapeReply:
    """POST /announce until the grape reports at least one storing node (a number > 0)."""

    async def probe() -> GrapeReply:
        return await grape_request(url, "announce", [name, port])

    return await wait_until(
        probe,
        timeout,
        f"announce {name!r}:{port} via {url} is acknowledged by >= 1 node",
        done=lambda r: r.status == 200 and _is_int(r.json) and r.json > 0,
    )


async def lookup_until(
    url: str,
    name: str,
    done: Callable[[list[str]], bool],
    describe: str,
    timeout: float = 20.0,
    interval: float = 0.05,
) -> list[str]:
    """POST /lookup until ``done(result)`` holds for the returned list; return it."""

    async def probe() -> Any:
        reply = await grape_request(url, "lookup", name)
        if reply.status != 200 or not isinstance(reply.json, list):
            raise AssertionError(f"unexpected lookup reply {reply!r}")
        return reply.json

    return await wait_until(
        probe, timeout, f"lookup {name!r} via {url} {describe}", done=done, interval=interval
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --------------------------------------------------------------------------------------
# Node grapes
# --------------------------------------------------------------------------------------


BootstrapSpec = int | str | tuple[str, int]


def bootstrap_list(bootstrap: Iterable[BootstrapSpec]) -> list[str]:
    """Normalise ports / ``"host:port"`` / ``(host, port)`` to ``"host:port"`` strings."""
    out = []
    for entry in bootstrap:
        if isinstance(entry, int):
            out.append(f"{LOCALHOST}:{entry}")
        elif isinstance(entry, tuple):
            out.append(f"{entry[0]}:{entry[1]}")
        else:
            out.append(entry)
    return out


@dataclass
class NodeGrape:
    """A running Node.js grape (grenache-grape 1.0.0)."""

    process: NodeProcess
    dht_port: int
    api_port: int
    node_id: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """Base URL of the HTTP API."""
        return f"http://{LOCALHOST}:{self.api_port}"

    @property
    def dht_address(self) -> tuple[str, int]:
        """(host, port) of the DHT socket, for bootstrap lists."""
        return (LOCALHOST, self.dht_port)

    def stop(self) -> defer.Deferred[None]:
        """Stop the grape process."""
        return self.process.stop()


async def start_node_grape(
    case: unittest.TestCase | None,
    bootstrap: Iterable[BootstrapSpec] = (),
    *,
    verify: bool = False,
    name: str | None = None,
    ready_timeout: float = 30.0,
    **options: Any,
) -> NodeGrape:
    """
    Start a Node grape from code (``node/grape.js``) on OS-picked ports.

    ``options`` are Grape constructor options (``dht_peer_maxAge``, ``host``,
    ``dht_nodeLiveness``, ...). ``verify=True`` gives it tweetnacl ed25519 verification
    for BEP 44 mutable items. Returns once the grape listens and bootstrapped.
    """
    conf: dict[str, Any] = {"dht_port": 0, "api_port": 0, **options}
    conf["dht_bootstrap"] = bootstrap_list(bootstrap)
    if verify:
        conf["verify"] = True
    proc = spawn_node(
        case,
        "grape.js",
        [json.dumps(conf)],
        name=name or "node-grape",
        ready_timeout=ready_timeout,
    )
    info = await proc.ready
    proc.name = f"{name or 'node-grape'}:{info['dht_port']}"
    return NodeGrape(proc, int(info["dht_port"]), int(info["api_port"]), info.get("id"), conf)


async def start_node_grape_cli(
    case: unittest.TestCase | None,
    bootstrap: Iterable[BootstrapSpec] = (),
    *,
    bind: str | None = None,
    extra_args: Sequence[str] = (),
    name: str | None = None,
    ready_timeout: float = 30.0,
) -> NodeGrape:
    """
    Start the ``grape`` CLI of grenache-grape 1.0.0 on free ports (picked by binding port
    0 first), and wait until its HTTP API answers a lookup.
    """
    modules = node_modules_dir()
    cli = modules / "grenache-grape" / "bin" / "grape.js"
    dht_port = free_port(socket.SOCK_DGRAM)
    api_port = free_port(socket.SOCK_STREAM)
    args = ["--dp", str(dht_port), "--aph", str(api_port)]
    args += ["--bn", ",".join(bootstrap_list(bootstrap))]
    if bind is not None:
        args += ["--b", bind]
    args += list(extra_args)
    label = f"{name or 'node-grape-cli'}:{dht_port}"
    proc = spawn_node(case, cli, args, name=label, ready_timeout=None)
    grape = NodeGrape(proc, dht_port, api_port, None, {"cli_args": args})

    async def probe() -> GrapeReply:
        if proc.has_ended:
            raise ProcessFailed(f"{label} exited ({proc.describe_exit()})\n" + proc.logs())
        return await grape_request(grape.url, "lookup", "interop:harness:probe", timeout=5.0)

    await wait_until(
        probe,
        ready_timeout,
        f"the grape CLI answers /lookup on {grape.url}",
        done=lambda r: r.status == 200,
        interval=0.1,
        processes=[proc],
    )
    return grape


# --------------------------------------------------------------------------------------
# Python grapes (in-process) and helpers common to both kinds
# --------------------------------------------------------------------------------------


def _address(entry: BootstrapSpec) -> tuple[str, int]:
    if isinstance(entry, int):
        return (LOCALHOST, entry)
    if isinstance(entry, tuple):
        return (entry[0], int(entry[1]))
    host, _, port = entry.rpartition(":")
    return (host, int(port))


@dataclass
class PyGrape:
    """A Python grape (grenache.grape.service.Grape) running in this process."""

    grape: Any
    kind: str = "py"

    @property
    def dht_port(self) -> int:
        """The DHT (UDP) port."""
        return int(self.grape.dht_port)

    @property
    def api_port(self) -> int:
        """The HTTP API port."""
        return int(self.grape.api_port)

    @property
    def url(self) -> str:
        """Base URL of the HTTP API."""
        return f"http://{LOCALHOST}:{self.api_port}"

    @property
    def node_id(self) -> str:
        """The DHT node id, hex."""
        return str(self.grape.node.node_id.hex())

    @property
    def dht_address(self) -> tuple[str, int]:
        """(host, port) of the DHT socket, for bootstrap lists."""
        return (LOCALHOST, self.dht_port)

    def stop(self) -> defer.Deferred[Any]:
        """Stop the grape (idempotent)."""
        if not self.grape.running:
            return defer.succeed(None)
        return defer.maybeDeferred(self.grape.stop)


async def start_python_grape(
    case: unittest.TestCase | None,
    bootstrap: Iterable[BootstrapSpec] = (),
    *,
    reactor: Any | None = None,
    **config: Any,
) -> PyGrape:
    """
    Start an in-process Python grape on OS-picked ports (``dht_port=0``, ``api_port=0``),
    bootstrapping to ``bootstrap``; returns once its bootstrap walk ended. ``config`` are
    further :class:`grenache.grape.service.GrapeConfig` fields (``peer_max_age``, ``host``...).
    The grape is stopped in ``case``'s cleanups.
    """
    from grenache.grape.service import Grape, GrapeConfig

    reactor = reactor if reactor is not None else _reactor()
    cfg = GrapeConfig(
        **{
            "dht_port": 0,
            "api_port": 0,
            "ws_port": None,
            "bootstrap": tuple(_address(b) for b in bootstrap),
            **config,
        }
    )
    grape = PyGrape(Grape(cfg, reactor=reactor))
    started = grape.grape.start()
    if case is not None:
        case.addCleanup(grape.stop)
    await started
    return grape


def http_pool(case: unittest.TestCase, reactor: Any | None = None) -> HTTPConnectionPool:
    """A persistent treq/Agent connection pool, closed in ``case``'s cleanups."""
    pool = HTTPConnectionPool(reactor if reactor is not None else _reactor(), persistent=True)
    case.addCleanup(pool.closeCachedConnections)
    return pool


class Reannouncer:
    """
    Announce ``name``:``port`` through a grape API every ``interval`` seconds (a
    ``LoopingCall`` that waits for each announce to finish), like the Node suite's
    ``startAnnouncing`` helper. Replies are counted; the last one is kept.
    """

    def __init__(
        self,
        url: str,
        name: str,
        port: int,
        interval: float = 0.02,
        pool: HTTPConnectionPool | None = None,
        reactor: Any | None = None,
    ) -> None:
        from twisted.internet.task import LoopingCall

        self.url = url
        self.name = name
        self.port = port
        self.pool = pool
        self.replies = 0
        self.last: Any = None
        self._loop = LoopingCall(self._announce)
        self._loop.clock = reactor if reactor is not None else _reactor()
        self._interval = interval
        self._done: defer.Deferred[Any] | None = None

    async def _announce_async(self) -> None:
        try:
            self.last = await grape_request(
                self.url, "announce", [self.name, self.port], pool=self.pool
            )
        except Exception as exc:
            self.last = f"<{type(exc).__name__}: {exc}>"
        self.replies += 1

    def _announce(self) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._announce_async())

    def start(self, case: unittest.TestCase | None = None) -> Reannouncer:
        """Start announcing (first announce now); stopped in ``case``'s cleanups."""
        self._done = self._loop.start(self._interval, now=True)
        if case is not None:
            case.addCleanup(self.stop)
        return self

    def stop(self) -> defer.Deferred[Any]:
        """Stop; fires once the announce in flight (if any) finished."""
        if self._loop.running:
            self._loop.stop()
        return self._done if self._done is not None else defer.succeed(None)


# --------------------------------------------------------------------------------------
# The Node link (grenache-nodejs-link) as a client
# --------------------------------------------------------------------------------------


async def run_link_ops(
    case: unittest.TestCase | None,
    url: str,
    ops: Sequence[dict[str, Any]],
    timeout: float = 60.0,
) -> list[dict[str, Any]]:
    """
    Run ``ops`` with grenache-nodejs-link against the grape at ``url`` (``link_client.js``
    batch mode); return one result dict per operation, in order.
    """
    proc = spawn_node(case, "link_client.js", [url, json.dumps(list(ops))], name="node-link")
    await proc.ready
    try:
        await _with_timeout(proc.ended, timeout, proc.reactor)
    except defer.TimeoutError as exc:
        raise ProcessFailed(
            f"link_client.js did not finish {len(ops)} ops within {timeout} s\n" + proc.logs()
        ) from exc
    results = proc.pending_messages()
    if proc.exit_code != 0 or len(results) != len(ops):
        raise ProcessFailed(
            f"link_client.js {proc.describe_exit()} with {len(results)}/{len(ops)} results\n"
            + proc.logs()
        )
    return results


class LinkSession:
    """An interactive grenache-nodejs-link client (``link_client.js`` reading stdin)."""

    def __init__(self, process: NodeProcess, url: str) -> None:
        self.process = process
        self.url = url

    async def call(self, op: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        """Run one operation and return its result line."""
        self.process.write_json(op)
        result: dict[str, Any] = await self.process.next_message(timeout)
        return result

    def stop(self) -> defer.Deferred[None]:
        """Stop the link process."""
        return self.process.stop()


async def start_link_session(case: unittest.TestCase | None, url: str) -> LinkSession:
    """Start ``link_client.js`` in interactive mode against the grape at ``url``."""
    proc = spawn_node(case, "link_client.js", [url], name="node-link")
    await proc.ready
    return LinkSession(proc, url)


# --------------------------------------------------------------------------------------
# Python processes: twistd grapes, services, CLI verbs
# --------------------------------------------------------------------------------------

#: ``twistd`` run by this interpreter (``sys.argv[0]`` set so that its usage names it).
TWISTD_ARGV = (
    sys.executable,
    "-c",
    "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()",
)

#: ``grenache`` (the CLI) run by this interpreter.
GRENACHE_ARGV = (sys.executable, "-m", "grenache.cli")


def spawn_python(
    case: unittest.TestCase | None,
    argv: Sequence[str],
    *,
    name: str,
    prefix: Sequence[str] = (),
    reactor: Any | None = None,
) -> NodeProcess:
    """
    Start ``argv`` (a Python command line, e.g. :data:`TWISTD_ARGV` + arguments) in its own
    process group, in the repository root (so ``tests.*`` handlers import), with bounded
    logs; ``ready`` fires with the first JSON line it prints, or ``None`` if it ends
    without one. ``prefix`` runs it through another command first (for
    example ``ip netns exec NS``). Stopped in ``case``'s cleanups.
    """
    reactor = reactor if reactor is not None else _reactor()
    proc = NodeProcess(name, reactor)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS",)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    full = _setsid_argv([*prefix, *argv]) if prefix else _setsid_argv(list(argv))
    if prefix:  # the trampoline execs prefix[0], which needs a path
        full[4] = shutil.which(prefix[0]) or prefix[0]
    IReactorProcess(reactor).spawnProcess(proc, full[0], full, env=env, path=str(REPO_ROOT))
    # ``ready`` fires with the first JSON line, or None when the process ends without one.
    proc.ready.addErrback(_none_if_ended)
    if case is not None:
        case.addCleanup(proc.stop)
    return proc


def _none_if_ended(failure: Failure) -> None:
    failure.trap(ProcessFailed)
    return None


def output_of(proc: NodeProcess) -> str:
    """Everything ``proc`` printed that is still kept, stdout then stderr."""
    return proc.stdout_log.tail(LOG_LIMIT) + proc.stderr_log.tail(LOG_LIMIT)


async def wait_for_output(
    proc: NodeProcess, pattern: str, timeout: float = 30.0, *, start: int = 0
) -> Any:
    """The first match of the regular expression ``pattern`` in ``proc``'s output (from
    character ``start`` of :func:`output_of`), polled until ``timeout``; fails with the
    process's log tails, at once if it exits first."""
    import re

    regex = re.compile(pattern)

    async def probe() -> Any:
        match = regex.search(output_of(proc), start)
        if match is None and proc.has_ended:
            raise ProcessFailed(f"{proc.name} exited ({proc.describe_exit()})\n" + proc.logs())
        return match

    return await _wait_or_fail(probe, timeout, f"{proc.name} prints {pattern!r}", proc)


async def _wait_or_fail(
    probe: Callable[[], Awaitable[T]], timeout: float, describe: str, proc: NodeProcess
) -> T:
    """Like :func:`wait_until`, but a probe raising :class:`ProcessFailed` ends the wait."""
    failed: list[ProcessFailed] = []

    async def guarded() -> Any:
        try:
            return await probe()
        except ProcessFailed as exc:
            failed.append(exc)
            return exc

    value = await wait_until(
        guarded, timeout, describe, done=lambda v: bool(v) or bool(failed), processes=[proc]
    )
    if failed:
        raise failed[0]
    return value


@dataclass
class TwistdGrape:
    """A Python grape run as ``twistd -n grape`` in a subprocess."""

    process: NodeProcess
    host: str
    dht_port: int
    api_port: int
    argv: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        """Base URL of the HTTP API."""
        return f"http://{self.host}:{self.api_port}"

    @property
    def dht_address(self) -> str:
        """``host:port`` of the DHT socket, for bootstrap lists."""
        return f"{self.host}:{self.dht_port}"

    def stop(self) -> defer.Deferred[None]:
        """SIGTERM (then SIGKILL) the grape."""
        return self.process.stop()


def twistd_grape_argv(
    host: str, dht_port: int, api_port: int, bootstrap: Iterable[str] = (), *extra: str
) -> list[str]:
    """``twistd -n grape`` bound to ``host`` on the given ports (0: the OS picks)."""
    argv = [*TWISTD_ARGV, "-n", "--pidfile=", "grape", "--dp", str(dht_port)]
    argv += ["--aph", str(api_port), "-b", host]
    bootstrap = list(bootstrap)
    if bootstrap:
        argv += ["--bn", ",".join(bootstrap)]
    return [*argv, *extra]


async def start_twistd_grape(
    case: unittest.TestCase | None,
    bootstrap: Iterable[str] = (),
    *,
    host: str = LOCALHOST,
    dht_port: int = 0,
    api_port: int = 0,
    name: str = "grape",
    prefix: Sequence[str] = (),
    extra: Sequence[str] = (),
) -> TwistdGrape:
    """
    Start ``twistd -n grape`` (ports 0: the OS picks them) and return once it printed the
    ports it listens on. ``prefix`` as in :func:`spawn_python`. Stopped in ``case``'s
    cleanups.
    """
    argv = twistd_grape_argv(host, dht_port, api_port, bootstrap, *extra)
    proc = spawn_python(case, argv, name=name, prefix=prefix)
    match = await wait_for_output(
        proc, r"listening: DHT udp [^,\s]*:(\d+), HTTP API tcp [^,\s]*:(\d+)", 60.0
    )
    return TwistdGrape(proc, host, int(match.group(1)), int(match.group(2)), argv)


# --------------------------------------------------------------------------------------
# Helpers for trial
# --------------------------------------------------------------------------------------


def async_test(
    f: Callable[..., Awaitable[T]],
) -> Callable[..., defer.Deferred[T]]:
    """Decorator: run an ``async def`` test method as a Deferred (``ensureDeferred``)."""

    def wrapper(*args: Any, **kwargs: Any) -> defer.Deferred[T]:
        return defer.ensureDeferred(f(*args, **kwargs))  # type: ignore[arg-type]

    wrapper.__name__ = f.__name__
    wrapper.__doc__ = f.__doc__
    wrapper.__qualname__ = f.__qualname__
    return wrapper


__all__ = [
    "GRENACHE_ARGV",
    "LOCALHOST",
    "TWISTD_ARGV",
    "GrapeReply",
    "InstallError",
    "LinkSession",
    "NodeGrape",
    "NodeProcess",
    "ProcessFailed",
    "PyGrape",
    "Reannouncer",
    "TwistdGrape",
    "WaitTimeout",
    "announce_until_acknowledged",
    "async_test",
    "bootstrap_list",
    "free_port",
    "grape_request",
    "http_pool",
    "interop_required",
    "live_processes",
    "logs_of",
    "lookup_until",
    "node_executable",
    "node_modules_dir",
    "output_of",
    "run_link_ops",
    "spawn_node",
    "spawn_python",
    "start_link_session",
    "start_node_grape",
    "start_node_grape_cli",
    "start_python_grape",
    "start_twistd_grape",
    "twistd_grape_argv",
    "unavailable",
    "wait_for_output",
    "wait_until",
]
