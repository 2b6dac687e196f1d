#!/usr/bin/env python3
"""WebSocket transport benchmark: this project's peers side by side with grenache-nodejs-ws 1.0.0.

    python bench/ws.py [--seconds N] [--concurrency C] [--payload-size B]
                       [--subscribers S] [--messages M] [--message-size B] [--burst K]
                       [--phase rpc|pubsub] [--repeats R] [--json PATH] [--quick]

Two phases, each one run per pairing, all on 127.0.0.1 with ports the OS picks:

- **RPC**: a client keeps C requests in flight (each worker sends its next request when the
  previous one is answered) against an echo server, for N seconds after a 1 s warm-up; the
  payload is one JSON object of about B bytes. Python is ``PeerRPCClient`` +
  ``WSClientTransport`` against ``PeerRPCServer`` + ``WSServerTransport`` (one socket,
  multiplexed); Node is ``PeerRPCClient``/``PeerRPCServer`` of grenache-nodejs-ws (its pool opens
  up to 3 sockets). Both clients use a stub link that answers the lookup at once, so only peer
  and transport are measured. Pairings: node->node, python->python, and the two crossings
  (which show which side limits a Python pairing).
- **Pub/sub fan-out**: S subscriber sockets in one process; the publisher sends M text
  messages of B bytes, K per reactor turn; the rate is messages delivered (M x S) per second,
  from the moment the publisher is told to start to the last message received (wall clock,
  both processes on this machine). Pairings as above.

Fairness: servers and publishers are pinned to CPU 0, clients and subscribers to CPU 1 (when
the machine has two CPUs or more), every process is its own process group, killed in a
``finally``. Every run has a hard deadline, so the whole benchmark ends in bounded time
(about 2 x (N + 1) x 4 seconds plus start-up). Node packages come from the interop harness's
install (``.cache/interop-node``, installed on first use); Node pairings are skipped when Node
is missing.

The roles (``rpc-server``, ``rpc-client``, ``pub``, ``sub``) are subcommands of this file; the
default command runs everything and prints a table with rates and Python/Node ratios.
``--phase`` runs one phase only; ``--repeats R`` runs every pairing R times (medians);
``--json PATH`` (with one ``--phase``) writes that phase's results as bench JSON (family
``ws_rpc`` or ``ws_pubsub``; bench/README.md), what ``python -m bench`` reads; ``--quick`` is a
smoke run (1 s RPC runs, 2,000 messages to 4 subscribers, python-python and node-node only).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
NODE_DIR = REPO / "bench" / "node"
LOCALHOST = "127.0.0.1"
SERVER_CPU = 0
CLIENT_CPU = 1
WARMUP = 1.0


def make_payload(size: int) -> dict[str, Any]:
    """A JSON object of about ``size`` bytes once encoded."""
    return {"op": "echo", "n": 12345, "pad": "x" * max(0, size - 30)}


def make_message(i: int, size: int) -> str:
    """The i-th published message: the same text the Node publisher sends."""
    head = f'{{"seq":{i},"pad":"'
    return head + "x" * max(0, size - len(head) - 2) + '"}'


def emit(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# --- Python roles (each runs its own reactor) -----------------------------------------------


class StubLink:
    """A link whose lookup answers one destination at once."""

    def __init__(self, dest: str) -> None:
        from twisted.internet.defer import succeed

        self.dest = dest
        self._succeed = succeed  # imported once: an import per call was ~4 % of the client

    def lookup(self, name: str) -> Any:
        return self._succeed([self.dest])


def role_rpc_server(args: argparse.Namespace) -> None:
    from twisted.internet import reactor

    from grenache.peer import PeerRPCServer
    from grenache.transports.ws import WSServerTransport

    server = PeerRPCServer(None, WSServerTransport(reactor), lambda request: request.payload)
    server.listen(0).addCallback(lambda port: emit({"port": port}))
    reactor.run()  # type: ignore[attr-defined,misc]


def role_rpc_client(args: argparse.Namespace) -> None:
    from twisted.internet import reactor

    from grenache.peer import PeerRPCClient
    from grenache.transports.ws import WSClientTransport

    conf = json.loads(args.conf)
    run_rpc_client(
        PeerRPCClient(
            StubLink(conf["dest"]), WSClientTransport(reactor), timeout=10.0, reactor=reactor
        ),
        conf,
    )


def latency_percentiles(latencies: list[float]) -> dict[str, float]:
    """``p50_ms`` and ``p99_ms`` of latencies in seconds (nearest rank), or nothing."""
    if not latencies:
        return {}
    ordered = sorted(latencies)
    rank = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50_ms": rank(0.50) * 1000, "p99_ms": rank(0.99) * 1000}


def run_rpc_client(client: Any, conf: dict[str, Any]) -> None:
    """Run ``client`` (a PeerRPCClient on the global reactor) for a measured window, with
    ``conf["concurrency"]`` requests in flight, and print the count and rate of the answers in
    the window, the errors, and the latency percentiles (ms) of the requests sent in it.

    A callback loop per in-flight slot, the shape of Node's bench client
    (bench/node/ws_rpc_client.js), so that every client measured pays for the same loop.
    """
    from twisted.internet import reactor, task
    from twisted.internet.defer import Deferred, ensureDeferred

    clock: Any = reactor
    payload = conf["payload"]
    start = clock.seconds()
    measure_from = start + conf["warmup"]
    end = measure_from + conf["seconds"]
    state = {"count": 0, "errors": 0}
    latencies: list[float] = []
    finished: Deferred[None] = Deferred()
    running = [conf["concurrency"]]

    def send() -> None:
        sent = clock.seconds()
        client.request("bench", payload).addCallbacks(
            answered, failed, callbackArgs=(sent,), errbackArgs=(sent,)
        )

    def answered(_: Any, sent: float) -> None:
        now = clock.seconds()
        if now >= measure_from:
            state["count"] += 1
            if sent >= measure_from:
                latencies.append(now - sent)
        next_or_stop(now)

    def failed(_: Any, sent: float) -> None:
        state["errors"] += 1
        next_or_stop(clock.seconds())

    def next_or_stop(now: float) -> None:
        if now < end:
            send()
            return
        running[0] -= 1
        if running[0] == 0:
            finished.callback(None)

    async def main(_: Any) -> None:
        for _slot in range(conf["concurrency"]):
            send()
        await finished
        seconds = conf["seconds"]
        emit(
            {
                **state,
                "seconds": seconds,
                "rate": state["count"] / seconds,
                **latency_percentiles(latencies),
            }
        )
        await client.stop()

    task.react(lambda r: ensureDeferred(main(r)))


def role_pub(args: argparse.Namespace) -> None:
    from twisted.internet import reactor, task

    from grenache.transports.ws import WSPubTransport

    conf = json.loads(args.conf)
    pub = WSPubTransport(reactor)
    messages = [make_message(i, conf["size"]) for i in range(conf["messages"])]

    def publish(start: int = 0) -> None:
        stop = min(len(messages), start + conf["burst"])
        for i in range(start, stop):
            pub.publish(messages[i])
        if stop < len(messages):
            task.deferLater(reactor, 0, publish, stop)
        else:
            emit({"published": len(messages), "subscribers": pub.subscribers})

    class Stdin:
        def __init__(self) -> None:
            from twisted.internet import stdio
            from twisted.protocols.basic import LineReceiver

            outer = self

            class Lines(LineReceiver):
                delimiter = b"\n"

                def lineReceived(self, line: bytes) -> None:
                    if line.strip() == b"go":
                        outer.go()

            stdio.StandardIO(Lines())

        def go(self) -> None:
            publish()

    pub.listen(0).addCallback(lambda port: emit({"port": port}))
    Stdin()
    reactor.run()  # type: ignore[attr-defined,misc]


def role_sub(args: argparse.Namespace) -> None:
    from twisted.internet import reactor

    from grenache.transports.ws import WSSubTransport

    clock: Any = reactor
    conf = json.loads(args.conf)
    sub = WSSubTransport(reactor, heartbeat_interval=None)
    expected = conf["subscribers"] * conf["messages"]
    state: dict[str, Any] = {"connected": 0, "received": 0, "last": 0.0, "timer": None}

    def done() -> None:
        emit({"received": state["received"], "last": state["last"]})
        clock.stop()

    def on_message(message: str | bytes) -> None:
        state["received"] += 1
        state["last"] = time.time()
        if state["received"] == 1:
            state["timer"] = clock.callLater(conf["timeout"], done)
        if state["received"] == expected:
            state["timer"].cancel()
            done()

    def connected(_: Any) -> None:
        state["connected"] += 1
        if state["connected"] == conf["subscribers"]:
            emit({"ready": True})

    for _ in range(conf["subscribers"]):
        sub.connect(conf["dest"], on_message, lambda: None).addCallback(connected)
    reactor.run()  # type: ignore[attr-defined,misc]


# --- orchestration --------------------------------------------------------------------------------


class Proc:
    """A benchmark process in its own process group, pinned to one CPU, read line by line.

    A process group, not a session: Linux's autogroup scheduler gives each session its own
    share of the CPUs, which would favour whichever implementation runs fewer threads.
    """

    def __init__(
        self,
        argv: list[str],
        cpu: int | None,
        env: dict[str, str] | None = None,
        own_session: bool = False,
    ) -> None:
        """``own_session`` puts the process in a session of its own instead (``setsid``), for
        measuring what that scheduling costs (bench/zmq_rpc.py ``--sessions own``)."""

        def setup() -> None:
            if own_session:
                os.setsid()
            else:
                os.setpgid(0, 0)
            if cpu is not None:
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(0, {cpu})

        self.argv = argv
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=setup,
            env=env,
            cwd=REPO,
        )

    def line(self, timeout: float) -> dict[str, Any]:
        """The next JSON line on stdout, or RuntimeError after ``timeout`` seconds."""
        import selectors

        assert self.popen.stdout is not None
        selector = selectors.DefaultSelector()
        selector.register(self.popen.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        buffer = b""
        fd = self.popen.stdout.fileno()
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                raise RuntimeError(f"{self.argv[:3]} gave no output within {timeout} s")
            byte = os.read(fd, 1)
            if not byte:
                err = self.popen.stderr.read().decode(errors="replace") if self.popen.stderr else ""
                raise RuntimeError(f"{self.argv[:3]} exited: {err[-2000:]}")
            if byte == b"\n":
                text = buffer.strip()
                buffer = b""
                if text.startswith(b"{"):
                    return dict(json.loads(text))
            else:
                buffer += byte

    def send(self, text: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(text.encode() + b"\n")
        self.popen.stdin.flush()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        multi = (os.cpu_count() or 1) >= 2
        self.server_cpu = SERVER_CPU if multi else None
        self.client_cpu = CLIENT_CPU if multi else None
        self.node_env = self._node_env()

    def _node_env(self) -> dict[str, str] | None:
        try:
            from tests.interop.harness import node_executable, node_modules_dir

            modules = node_modules_dir()
            self.node = node_executable()
        except BaseException as e:  # SkipTest when Node or npm is missing
            print(f"Node pairings skipped: {e}", file=sys.stderr)
            return None
        env = {k: v for k, v in os.environ.items() if k not in ("NODE_OPTIONS", "NODE_PATH")}
        env["NODE_PATH"] = str(modules)
        return env

    def spawn(self, kind: str, role: str, conf: dict[str, Any], cpu: int | None) -> Proc:
        if kind == "node":
            script = {
                "rpc-server": "ws_rpc_server.js",
                "rpc-client": "ws_rpc_client.js",
                "pub": "ws_pub.js",
                "sub": "ws_sub.js",
            }[role]
            return Proc([self.node, str(NODE_DIR / script), json.dumps(conf)], cpu, self.node_env)
        argv = [sys.executable, str(Path(__file__).resolve()), role, json.dumps(conf)]
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        return Proc(argv, cpu, env)

    def kinds(self) -> list[tuple[str, str]]:
        pairs = [("python", "python")]
        if self.node_env is not None:
            pairs = [("node", "node"), ("python", "python"), ("python", "node"), ("node", "python")]
        if self.args.quick:
            pairs = [p for p in pairs if p[0] == p[1]]
        return pairs

    def rpc(self, client: str, server: str) -> dict[str, Any]:
        a = self.args
        procs: list[Proc] = []
        try:
            srv = self.spawn(server, "rpc-server", {}, self.server_cpu)
            procs.append(srv)
            port = srv.line(30.0)["port"]
            conf = {
                "dest": f"{LOCALHOST}:{port}",
                "seconds": a.seconds,
                "warmup": WARMUP,
                "concurrency": a.concurrency,
                "payload": make_payload(a.payload_size),
            }
            cli = self.spawn(client, "rpc-client", conf, self.client_cpu)
            procs.append(cli)
            return cli.line(a.seconds + WARMUP + 30.0)
        finally:
            for p in procs:
                p.kill()

    def pubsub(self, pub_kind: str, sub_kind: str) -> dict[str, Any]:
        a = self.args
        procs: list[Proc] = []
        try:
            pconf = {"messages": a.messages, "burst": a.burst, "size": a.message_size}
            pub = self.spawn(pub_kind, "pub", pconf, self.server_cpu)
            procs.append(pub)
            port = pub.line(30.0)["port"]
            sconf = {
                "dest": f"{LOCALHOST}:{port}",
                "subscribers": a.subscribers,
                "messages": a.messages,
                "timeout": 60.0,
            }
            sub = self.spawn(sub_kind, "sub", sconf, self.client_cpu)
            procs.append(sub)
            sub.line(30.0)  # every subscriber socket is open
            go = time.time()
            pub.send("go")
            result = sub.line(90.0)
            result["seconds"] = result["last"] - go
            result["rate"] = result["received"] / result["seconds"]
            return result
        finally:
            for p in procs:
                p.kill()

    def run(self) -> dict[str, Any] | None:
        """Run the phases asked for; the bench JSON of the one phase run, if only one ran."""
        a = self.args
        result: dict[str, Any] | None = None
        if a.phase in (None, "rpc"):
            result = self.run_rpc()
        if a.phase in (None, "pubsub"):
            result = self.run_pubsub()
        return result

    def run_rpc(self) -> dict[str, Any]:
        a = self.args
        print(
            f"WebSocket RPC: {a.concurrency} requests in flight, payload ~{a.payload_size} B, "
            f"{a.seconds:g} s after a {WARMUP:g} s warm-up; servers on CPU {self.server_cpu}, "
            f"clients on CPU {self.client_cpu}"
        )
        rpc: dict[tuple[str, str], list[float]] = {}
        latency: dict[tuple[str, str], list[tuple[float, float]]] = {}
        errors = 0
        for round_ in range(a.repeats):
            for client, server in self.kinds():
                result = self.rpc(client, server)
                rpc.setdefault((client, server), []).append(result["rate"])
                errors += result.get("errors", 0)
                shown = f"  ({result['errors']} errors)" if result.get("errors") else ""
                if "p99_ms" in result:
                    latency.setdefault((client, server), []).append(
                        (result["p50_ms"], result["p99_ms"])
                    )
                    shown += f"  p50 {result['p50_ms']:.2f} ms  p99 {result['p99_ms']:.2f} ms"
                label = f" (round {round_ + 1})" if a.repeats > 1 else ""
                print(
                    f"  {client:>6} client -> {server:<6} server  {result['rate']:10,.0f} req/s"
                    f"{shown}{label}"
                )
        self._ratio(rpc)
        notes = [
            f"{a.concurrency} requests in flight, payload ~{a.payload_size} B, {a.seconds:g} s "
            f"per run after a {WARMUP:g} s warm-up; servers on one CPU, clients on the other; "
            f"the clients are the full peer with a lookup answered at once; {errors} errors"
        ]
        for (client, server), values in latency.items():
            p50 = statistics.median(v[0] for v in values)
            p99 = statistics.median(v[1] for v in values)
            line = f"{client} client -> {server} server: latency p50 {p50:.2f} ms, p99 {p99:.2f} ms"
            print(f"  {line} (medians)")
            notes.append(line + " (medians of the runs)")
        return self._json("ws_rpc", "WebSocket RPC (echo)", "req/s", rpc, "client", notes)

    def run_pubsub(self) -> dict[str, Any]:
        a = self.args
        print(
            f"\nPub/sub fan-out: {a.subscribers} subscribers, {a.messages} text messages of "
            f"{a.message_size} B, {a.burst} per reactor turn"
        )
        fan: dict[tuple[str, str], list[float]] = {}
        short_runs = 0
        for round_ in range(a.repeats):
            for sub, pub in self.kinds():
                result = self.pubsub(pub, sub)
                fan.setdefault((sub, pub), []).append(result["rate"])
                short = result["received"] < a.messages * a.subscribers
                short_runs += short
                note = f"  (only {result['received']} received)" if short else ""
                label = f" (round {round_ + 1})" if a.repeats > 1 else ""
                rate = result["rate"]
                print(
                    f"  {pub:>6} pub    -> {sub:<6} subs    {rate:10,.0f} msg/s delivered"
                    f"{note}{label}"
                )
        self._ratio(fan)
        notes = [
            f"{a.subscribers} subscriber sockets in one process, {a.messages} text messages of "
            f"{a.message_size} B, {a.burst} per reactor turn; rate = messages delivered "
            "(messages x subscribers) per second of wall clock; publisher on one CPU, "
            f"subscribers on the other; {short_runs} run(s) lost messages"
        ]
        # Keys are (subscriber, publisher): the rows are listed by the subscribing side.
        flipped = {(pub, sub): v for (sub, pub), v in fan.items()}
        return self._json(
            "ws_pubsub", "Pub/sub over WebSocket (fan-out)", "msg/s", flipped, "pub", notes
        )

    @staticmethod
    def _json(
        family: str,
        title: str,
        unit: str,
        rates: dict[tuple[str, str], list[float]],
        side: str,
        notes: list[str],
    ) -> dict[str, Any]:
        """Bench JSON (bench/README.md): python-python and node-node share one label (a row per
        implementation); a crossing is labelled by its two sides, under its first one's."""
        other = {"client": "server", "pub": "subs"}[side]
        same = {"client": "client + server", "pub": "publisher + subscribers"}[side]
        rows = []
        for (first, second), values in rates.items():
            label = same if first == second else f"{first} {side} -> {second} {other}"
            rows.append(
                {
                    "label": label,
                    "impl": first,
                    "values": [round(v, 1) for v in values],
                    "median": round(statistics.median(values), 1),
                }
            )
        ratios = []
        py, node = rates.get(("python", "python")), rates.get(("node", "node"))
        if py and node:
            value = statistics.median(py) / statistics.median(node)
            target = 1.0 if family == "ws_rpc" else None
            ratios.append({"label": same, "value": round(value, 3), "target": target})
        return {
            "family": family,
            "title": title,
            "unit": unit,
            "rows": rows,
            "ratios": ratios,
            "notes": notes,
        }

    @staticmethod
    def _ratio(rates: dict[tuple[str, str], list[float]]) -> None:
        py, node = rates.get(("python", "python")), rates.get(("node", "node"))
        if py and node:
            print(f"  python/node ratio: {statistics.median(py) / statistics.median(node):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    for role in ("rpc-server", "rpc-client", "pub", "sub"):
        p = sub.add_parser(role, help=f"(internal) run the Python {role}")
        p.add_argument("conf", nargs="?", default="{}")
    roles = {
        "rpc-server": role_rpc_server,
        "rpc-client": role_rpc_client,
        "pub": role_pub,
        "sub": role_sub,
    }
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--payload-size", type=int, default=100)
    parser.add_argument("--subscribers", type=int, default=10)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--message-size", type=int, default=100)
    parser.add_argument("--burst", type=int, default=100)
    parser.add_argument("--phase", choices=["rpc", "pubsub"], help="run one phase only")
    parser.add_argument("--repeats", type=int, default=1, help="runs per pairing (medians)")
    parser.add_argument("--json", metavar="PATH", help="write bench JSON (needs --phase)")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 1 s RPC runs, 2,000 messages to 4 subs"
    )
    args = parser.parse_args()
    if args.command not in roles and args.json and args.phase is None:
        parser.error("--json writes one phase: give --phase rpc or --phase pubsub")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.quick:
        args.seconds, args.messages, args.subscribers = 1.0, 2000, 4
    if args.command in roles:
        roles[args.command](args)
        return
    sys.path.insert(0, str(REPO))
    result = Bench(args).run()
    if args.json and result is not None:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
