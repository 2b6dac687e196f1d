"""Soak: mixed traffic against a local grape pair for a set time, then requests, errors and
memory.

Starts, as subprocesses on loopback and OS-chosen ports:

- two grapes (``twistd -n grape``; B bootstraps from A),
- an HTTP and a WebSocket RPC service (``twistd -n grenache-service``, the fibonacci example
  handler) announcing through grape A,
- a WebSocket publisher (``grenache pub``) announcing through grape A, fed lines on stdin;

and drives them from this process, through a link on grape B, for ``--seconds``:

- RPC over HTTP and over WebSocket (``--rpc-workers`` loops each, one request in flight per
  loop, every reply checked),
- announces of a few names and lookups of the services (one loop each, no cache),
- publishing ``--pub-rate`` lines a second, received by a WebSocket ``PeerSub``.

Every loop waits for its operation before the next, so the load is bounded. At the end it
prints, per kind of operation, the number done and the errors by message, and the resident
memory (VmRSS) of every process right after start-up and at the end; ``--json`` prints the
same as one JSON object. Exits 1 if a process died or nothing succeeded.

    python bench/soak.py [--seconds 60] [--rpc-workers 4] [--pub-rate 200] [--json]

Linux only (memory is read from /proc).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import defer, protocol, task
from twisted.python.failure import Failure

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from grenache.link import Link  # noqa: E402
from grenache.peer import PeerRPCClient, PeerSub, error_message  # noqa: E402
from grenache.transports.http import HTTPClientTransport  # noqa: E402
from grenache.transports.ws import WSClientTransport, WSSubTransport  # noqa: E402

LOCALHOST = "127.0.0.1"
TWISTD = [
    sys.executable,
    "-c",
    "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()",
]
GRENACHE = [sys.executable, "-m", "grenache.cli"]
HANDLER = "examples.fibonacci_service:fibonacci"
FIB10 = [1, 1, 2, 3, 5, 8, 13, 21, 34, 55]
START_TIMEOUT = 60.0


def rss_kib(pid: int) -> int | None:
    """Resident memory of ``pid`` in KiB (``None`` when it is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) if match else None


class Child(protocol.ProcessProtocol):
    """A subprocess in its own process group; its output goes to a log file."""

    def __init__(self, name: str, log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.output = bytearray()
        self.ended: defer.Deferred[None] = defer.Deferred()
        self.has_ended = False
        self.pid = 0

    def connectionMade(self) -> None:
        self.pid = self.transport.pid  # type: ignore[union-attr]

    def outReceived(self, data: bytes) -> None:
        self._log.write(data)
        self.output += data
        if len(self.output) > 1 << 20:
            del self.output[: len(self.output) - (1 << 19)]

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.has_ended = True
        self._log.close()
        self.ended.callback(None)

    def tail(self, chars: int = 2000) -> str:
        return self.output[-chars:].decode("utf-8", "replace")

    def stop(self) -> defer.Deferred[None]:
        if not self.has_ended:
            try:
                os.killpg(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        return self.ended


class Soak:
    def __init__(self, reactor: Any, args: argparse.Namespace, log_dir: Path) -> None:
        self.reactor = reactor
        self.args = args
        self.log_dir = log_dir
        self.children: list[Child] = []
        self.done: collections.Counter[str] = collections.Counter()
        self.errors: dict[str, collections.Counter[str]] = collections.defaultdict(
            collections.Counter
        )
        self.received = 0
        self.end = 0.0

    # --- processes -------------------------------------------------------------------------

    def spawn(self, name: str, argv: list[str]) -> Child:
        child = Child(name, self.log_dir)
        trampoline = "import os,sys;os.setsid();os.execv(sys.argv[1],sys.argv[1:])"
        full = [sys.executable, "-S", "-c", trampoline, *argv]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        self.reactor.spawnProcess(child, full[0], full, env=env, path=str(REPO))
        self.children.append(child)
        return child

    async def wait_for(self, child: Child, pattern: str) -> re.Match[str]:
        regex = re.compile(pattern)
        deadline = self.reactor.seconds() + START_TIMEOUT
        while True:
            match = regex.search(child.output.decode("utf-8", "replace"))
            if match:
                return match
            if child.has_ended or self.reactor.seconds() > deadline:
                raise RuntimeError(
                    f"{child.name} did not print {pattern!r} "
                    f"({'exited' if child.has_ended else 'timed out'}):\n{child.tail()}"
                )
            await task.deferLater(self.reactor, 0.05, lambda: None)

    async def start_grape(self, name: str, bootstrap: str | None) -> tuple[int, int]:
        argv = [*TWISTD, "-n", "--pidfile=", "grape", "--dp", "0", "--aph", "0", "-b", LOCALHOST]
        if bootstrap:
            argv += ["--bn", bootstrap]
        child = self.spawn(name, argv)
        match = await self.wait_for(
            child, r"listening: DHT udp [^,\s]*:(\d+), HTTP API tcp [^,\s]*:(\d+)"
        )
        return int(match.group(1)), int(match.group(2))

    async def start_service(self, name: str, transport: str, grape: str) -> None:
        argv = [*TWISTD, "-n", "--pidfile=", "grenache-service", "--name", name]
        argv += ["--transport", transport, "--handler", HANDLER, "--grape", grape]
        argv += ["--bind", LOCALHOST]
        child = self.spawn(name, argv)
        await self.wait_for(child, r"Announced .*\(stored by")

    # --- load --------------------------------------------------------------------------------

    def failed(self, kind: str, error: BaseException | Failure) -> None:
        self.errors[kind][error_message(error)[:120]] += 1

    async def loop(self, kind: str, operation: Any) -> None:
        """Run ``operation`` (a coroutine function, fails on a wrong answer) until the end."""
        while self.reactor.seconds() < self.end:
            try:
                await operation()
            except Exception as error:
                self.failed(kind, error)
                # After an error, pause a little so a dead peer does not spin the loop.
                await task.deferLater(self.reactor, 0.05, lambda: None)
            else:
                self.done[kind] += 1

    async def run(self) -> dict[str, Any]:
        reactor = self.reactor
        args = self.args
        dht_a, api_a = await self.start_grape("grape-a", None)
        _, api_b = await self.start_grape("grape-b", f"{LOCALHOST}:{dht_a}")
        grape_a = f"http://{LOCALHOST}:{api_a}"
        grape_b = f"http://{LOCALHOST}:{api_b}"
        await defer.gatherResults(
            [
                defer.ensureDeferred(self.start_service("soak_http", "http", grape_a)),
                defer.ensureDeferred(self.start_service("soak_ws", "ws", grape_a)),
            ]
        )
        publisher = self.spawn("publisher", [*GRENACHE, "pub", "soak_feed", "-g", grape_a])
        await self.wait_for(publisher, r'"announced":\s*[1-9]')

        link = Link(grape_b, reactor=reactor)
        http = PeerRPCClient(link, HTTPClientTransport(reactor), reactor=reactor, timeout=10.0)
        ws = PeerRPCClient(link, WSClientTransport(reactor), reactor=reactor, timeout=10.0)
        sub = PeerSub(link, WSSubTransport(reactor), reactor=reactor)

        def on_message(message: Any) -> None:
            self.received += 1

        sub.add_listener("message", on_message)
        await self.until(lambda: link.lookup("soak_http", cache=False), "soak_http is found")
        await self.until(lambda: link.lookup("soak_ws", cache=False), "soak_ws is found")
        await sub.sub("soak_feed")

        rss_start = self.memory()
        start = reactor.seconds()
        self.end = start + args.seconds

        async def rpc(client: PeerRPCClient, name: str) -> None:
            result = await client.request(name, {"length": 10})
            if result != FIB10:
                raise ValueError(f"wrong answer {result!r}")

        names = [f"soak_announced_{i}" for i in range(8)]
        announced = iter(range(10**9))

        async def announce() -> None:
            n = next(announced)
            await link.announce(names[n % len(names)], 10000 + n % 1000)

        async def lookup() -> None:
            await link.lookup("soak_http", cache=False)
            await link.lookup(names[0], cache=False)

        published = 0

        def publish() -> None:
            nonlocal published
            if not publisher.has_ended:
                publisher.transport.write(f"soak {published}\n".encode())  # type: ignore[union-attr]
                published += 1

        pub_loop = task.LoopingCall(publish)
        pub_loop.clock = reactor
        pub_done = pub_loop.start(1.0 / args.pub_rate)

        loops = [defer.ensureDeferred(self.loop("announce", announce))]
        loops.append(defer.ensureDeferred(self.loop("lookup", lookup)))
        for _ in range(args.rpc_workers):
            loops.append(
                defer.ensureDeferred(self.loop("rpc_http", lambda: rpc(http, "soak_http")))
            )
            loops.append(defer.ensureDeferred(self.loop("rpc_ws", lambda: rpc(ws, "soak_ws"))))
        await defer.gatherResults(loops)
        pub_loop.stop()
        await pub_done
        elapsed = reactor.seconds() - start
        # Let the last published lines arrive (bounded: at most 5 s).
        wait_end = reactor.seconds() + 5
        while self.received < published and reactor.seconds() < wait_end:
            await task.deferLater(reactor, 0.05, lambda: None)
        rss_end = self.memory()

        await sub.stop()
        for client in (http, ws):
            await client.transport.stop()  # type: ignore[attr-defined]
        await link.stop()
        self.done["pub_sent"] = published
        self.done["pub_received"] = self.received
        dead = [c.name for c in self.children if c.has_ended]
        return {
            "seconds": round(elapsed, 1),
            "done": dict(self.done),
            "per_second": {k: round(v / elapsed, 1) for k, v in self.done.items()},
            "errors": {k: dict(v) for k, v in self.errors.items()},
            "rss_kib": {
                name: {"start": rss_start[name], "end": rss_end[name]} for name in rss_start
            },
            "died": dead,
        }

    async def until(self, probe: Any, what: str) -> None:
        deadline = self.reactor.seconds() + START_TIMEOUT
        while True:
            try:
                await probe()
                return
            except Exception as error:
                if self.reactor.seconds() > deadline:
                    raise RuntimeError(f"not before the deadline: {what} ({error})") from None
            await task.deferLater(self.reactor, 0.1, lambda: None)

    def memory(self) -> dict[str, int | None]:
        sizes = {child.name: rss_kib(child.pid) for child in self.children}
        sizes["driver"] = rss_kib(os.getpid())
        return sizes

    async def stop(self) -> None:
        await defer.gatherResults([c.stop() for c in self.children])


def report(result: dict[str, Any]) -> str:
    lines = [f"soak: {result['seconds']} s"]
    for kind, count in sorted(result["done"].items()):
        lines.append(f"  {kind:<13} {count:>9}  ({result['per_second'][kind]}/s)")
    if result["errors"]:
        lines.append("errors:")
        for kind, messages in sorted(result["errors"].items()):
            for message, count in sorted(messages.items(), key=lambda kv: -kv[1]):
                lines.append(f"  {kind:<13} {count:>9}  {message}")
    else:
        lines.append("errors: none")
    lines.append("RSS (MiB)      start      end")
    for name, sizes in result["rss_kib"].items():
        start = "-" if sizes["start"] is None else f"{sizes['start'] / 1024:.1f}"
        end = "gone" if sizes["end"] is None else f"{sizes['end'] / 1024:.1f}"
        lines.append(f"  {name:<11} {start:>8} {end:>8}")
    if result["died"]:
        lines.append(f"DIED: {', '.join(result['died'])}")
    return "\n".join(lines)


async def main(reactor: Any, args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="grenache-soak-") as tmp:
        soak = Soak(reactor, args, Path(tmp))
        try:
            result = await soak.run()
        except Exception:
            for child in soak.children:
                sys.stderr.write(f"--- {child.name} ---\n{child.tail()}\n")
            raise
        finally:
            await soak.stop()
    print(json.dumps(result) if args.json else report(result))
    ok = sum(v for k, v in result["done"].items() if k.startswith("rpc")) > 0
    if result["died"] or not ok:
        raise SystemExit(1)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="load duration (60)")
    parser.add_argument(
        "--rpc-workers", type=int, default=4, help="request loops per RPC transport (4)"
    )
    parser.add_argument("--pub-rate", type=float, default=200.0, help="lines published per s")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if not args.seconds > 0 or args.rpc_workers < 1 or not args.pub_rate > 0:
        parser.error("--seconds, --rpc-workers and --pub-rate must be positive")
    return args


if __name__ == "__main__":
    arguments = parse(sys.argv[1:])
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, arguments)))
