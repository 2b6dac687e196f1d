#!/usr/bin/env python3
"""ZeroMQ RPC benchmark: this project's ZeroMQ pair beside the Node.js WebSocket pair.

    python bench/zmq_rpc.py [--seconds N] [--concurrency C] [--payload-size B] [--codec C]
                            [--repeats R] [--json PATH] [--quick]

A client keeps C requests in flight (64 by default; each worker sends its next request when the
previous one is answered) against an echo server, for N seconds after a 1 s warm-up, on
127.0.0.1 with ports the OS picks; the payload is one object of about B bytes. Python is
``PeerRPCClient`` + ``ZmqClientTransport`` (msgpack unless ``--codec json``) against
``PeerRPCServer`` + ``ZmqServerTransport``, the client with a stub link that answers the lookup
at once, so only peer and transport are measured. In the same run, the Node.js pair of
grenache-nodejs-ws 1.0.0 (bench/ws.py's Node roles) is measured the same way, and the ratio
ZeroMQ / Node WebSocket is reported (the goal of issue 10: at least 2). Node is skipped when
missing.

Servers are pinned to CPU 0 and clients to CPU 1 (with two CPUs or more), each process in its
own process group, killed in a ``finally``. ``--json PATH`` writes bench JSON (family
``zmq_rpc``; bench/README.md); ``--quick`` is a smoke run (1 s runs, one repeat).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.ws import WARMUP, Bench, Proc, make_payload  # noqa: E402

LOCALHOST = "127.0.0.1"


def _emit(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class _StubLink:
    """A link whose lookup answers one destination at once."""

    def __init__(self, dest: str) -> None:
        from twisted.internet.defer import succeed

        self.dest = dest
        self._succeed = succeed

    def lookup(self, name: str) -> Any:
        return self._succeed([self.dest])


def role_server(args: argparse.Namespace) -> None:
    from twisted.internet import reactor

    from grenache.peer import PeerRPCServer
    from grenache.transports.zmq import ZmqServerTransport

    transport = ZmqServerTransport(reactor, interface=LOCALHOST)
    server = PeerRPCServer(None, transport, lambda request: request.payload)
    server.listen(0).addCallback(lambda port: _emit({"port": port}))
    reactor.run()  # type: ignore[attr-defined,misc]


def role_client(args: argparse.Namespace) -> None:
    from twisted.internet import reactor, task
    from twisted.internet.defer import ensureDeferred, gatherResults

    from grenache.peer import PeerRPCClient
    from grenache.transports.zmq import ZmqClientTransport

    clock: Any = reactor
    conf = json.loads(args.conf)
    transport = ZmqClientTransport(reactor, codec=conf["codec"])
    link: Any = _StubLink(conf["dest"])
    client = PeerRPCClient(link, transport, timeout=10.0, reactor=reactor)
    payload = conf["payload"]
    start = clock.seconds()
    measure_from = start + conf["warmup"]
    end = measure_from + conf["seconds"]
    state = {"count": 0, "errors": 0}

    async def worker() -> None:
        while True:
            try:
                await client.request("bench", payload)
            except Exception:
                state["errors"] += 1
            now = clock.seconds()
            if now >= measure_from:
                state["count"] += 1
            if now >= end:
                return

    async def main(_: Any) -> None:
        await gatherResults([ensureDeferred(worker()) for _ in range(conf["concurrency"])])
        seconds = conf["seconds"]
        _emit({**state, "seconds": seconds, "rate": state["count"] / seconds})
        await client.stop()

    task.react(lambda r: ensureDeferred(main(r)))


def run_zmq(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    """One ZeroMQ run: the client's result line."""
    procs: list[Proc] = []
    me = str(Path(__file__).resolve())
    try:
        server = Proc([sys.executable, me, "server"], bench.server_cpu)
        procs.append(server)
        port = server.line(30.0)["port"]
        conf = {
            "dest": f"{LOCALHOST}:{port}",
            "seconds": args.seconds,
            "warmup": WARMUP,
            "concurrency": args.concurrency,
            "payload": make_payload(args.payload_size),
            "codec": args.codec,
        }
        client = Proc([sys.executable, me, "client", json.dumps(conf)], bench.client_cpu)
        procs.append(client)
        return client.line(args.seconds + WARMUP + 30.0)
    finally:
        for p in procs:
            p.kill()


def run(args: argparse.Namespace) -> dict[str, Any]:
    bench = Bench(args)
    print(
        f"RPC, {args.concurrency} requests in flight, payload ~{args.payload_size} B, "
        f"{args.seconds:g} s after a {WARMUP:g} s warm-up; servers on CPU {bench.server_cpu}, "
        f"clients on CPU {bench.client_cpu}"
    )
    zmq_rates: list[float] = []
    node_rates: list[float] = []
    errors = 0
    for _ in range(args.repeats):
        result = run_zmq(bench, args)
        zmq_rates.append(result["rate"])
        errors += result.get("errors", 0)
        print(f"  python ZeroMQ ({args.codec}) pair   {result['rate']:10,.0f} req/s")
        if bench.node_env is not None:
            result = bench.rpc("node", "node")
            node_rates.append(result["rate"])
            print(f"  node WebSocket pair            {result['rate']:10,.0f} req/s")
    rows = [
        {
            "label": f"ZeroMQ client + server ({args.codec})",
            "impl": "python",
            "values": [round(v, 1) for v in zmq_rates],
            "median": round(statistics.median(zmq_rates), 1),
        }
    ]
    ratios = []
    if node_rates:
        rows.append(
            {
                "label": "WebSocket client + server (grenache-nodejs-ws)",
                "impl": "node",
                "values": [round(v, 1) for v in node_rates],
                "median": round(statistics.median(node_rates), 1),
            }
        )
        value = statistics.median(zmq_rates) / statistics.median(node_rates)
        print(f"  ZeroMQ / Node WebSocket ratio: {value:.2f} (goal >= 2)")
        ratios.append(
            {"label": "python ZeroMQ / node WebSocket", "value": round(value, 3), "target": 2.0}
        )
    notes = [
        f"{args.concurrency} requests in flight, payload ~{args.payload_size} B, "
        f"{args.seconds:g} s per run after a {WARMUP:g} s warm-up; servers on one CPU, clients "
        f"on the other; the clients are the full peer with a lookup answered at once; "
        f"{errors} errors"
    ]
    if not node_rates:
        notes.append("Node.js missing: the WebSocket pair was not measured")
    return {
        "family": "zmq_rpc",
        "title": "ZeroMQ RPC (echo) beside the Node.js WebSocket pair",
        "unit": "req/s",
        "rows": rows,
        "ratios": ratios,
        "notes": notes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    for role in ("server", "client"):
        p = sub.add_parser(role, help=f"(internal) run the Python {role}")
        p.add_argument("conf", nargs="?", default="{}")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--payload-size", type=int, default=100)
    parser.add_argument("--codec", choices=["msgpack", "json"], default="msgpack")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each pair (medians)")
    parser.add_argument("--json", metavar="PATH", help="write bench JSON to PATH")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 s runs, one repeat")
    args = parser.parse_args()
    if args.command == "server":
        role_server(args)
        return
    if args.command == "client":
        role_client(args)
        return
    if args.quick:
        args.seconds, args.repeats = 1.0, 1
    result = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
