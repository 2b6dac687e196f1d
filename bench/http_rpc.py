"""HTTP RPC throughput: this project's client and server against grenache-nodejs-http 1.0.2.

Runs, one after the other on loopback, a server process and a client process for each pair:

    py client -> py server      node client -> node server      (the headline ratio)
    py client -> node server    node client -> py server        (which side costs what)

Each client keeps ``--concurrency`` requests in flight for ``--duration`` seconds (after a
``--warmup``) through the peer layer (PeerRPCClient with a fixed destination), sending the same
payload, and reports completed requests per second. Servers echo the payload. Servers are
pinned to CPU 0 and clients to CPU 1 when the machine has two.

    python bench/http_rpc.py [--duration 5] [--concurrency 32] [--payload-bytes 64]
                             [--compress] [--pairs py-py,node-node,py-node,node-py]
                             [--repeat N] [--metrics] [--json PATH] [--quick]

``--metrics`` gives the Python server and client a ``grenache.metrics.Metrics`` (what
``--metrics`` on ``grenache serve`` does), to measure what recording costs.

``--json PATH`` also writes the results as bench JSON (bench/README.md; what ``python -m
bench`` reads): the rate of every round per pairing and the Python/Node ratio of the medians.
``--quick`` is a smoke run (1 s per run after a 0.3 s warm-up, the py-py and node-node pairs
unless ``--pairs`` is given). ``--repeats N`` is ``--repeat N``.

The Node packages come from the interop test install (``.cache/interop-node``); it is
created on first use when ``node`` and ``npm`` are available.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NODE_DIR = Path(__file__).resolve().parent / "node"


# --- roles run in child processes -------------------------------------------------------------


def run_py_server(port: int, metered: bool = False) -> None:
    """Echo server: PeerRPCServer on HTTPServerTransport; prints {"ready":true,"port":P}.

    ``metered``: with a :class:`grenache.metrics.Metrics` recording every request."""
    from twisted.internet import reactor

    from grenache.peer import PeerRPCServer
    from grenache.transports.http import HTTPServerTransport

    options: dict[str, Any] = {}
    if metered:
        from grenache.metrics import Metrics

        options["metrics"] = Metrics()
    server = PeerRPCServer(
        None, HTTPServerTransport(reactor, interface="127.0.0.1"), lambda r: r.payload, **options
    )

    def ready(bound: int) -> None:
        print(json.dumps({"ready": True, "port": bound}), flush=True)

    server.listen(port).addCallback(ready)
    reactor.run()  # type: ignore[attr-defined]


def run_py_client(conf: dict[str, Any]) -> None:
    """Request loops through PeerRPCClient; prints the same JSON as bench/node/http_client.js."""
    from twisted.internet import defer, reactor, task

    from grenache.peer import PeerRPCClient
    from grenache.transports.http import HTTPClientTransport

    class FixedLink:
        def lookup(self, name: str) -> defer.Deferred[list[str]]:
            return defer.succeed([conf["dest"]])

    options: dict[str, Any] = {}
    if conf.get("metrics"):
        from grenache.metrics import Metrics

        options["metrics"] = Metrics()
    client = PeerRPCClient(
        FixedLink(),
        HTTPClientTransport(reactor, pool_size_per_dest=max(1, conf["concurrency"])),
        reactor=reactor,
        **options,
    )
    state = {"counting": False, "stopped": False, "requests": 0, "errors": 0, "first": None}

    async def loop() -> None:
        while not state["stopped"]:
            try:
                await client.request("bench", conf["payload"], compress=conf["compress"])
            except Exception as e:
                if state["counting"]:
                    state["errors"] += 1
                    state["first"] = state["first"] or repr(e)
            else:
                if state["counting"]:
                    state["requests"] += 1

    async def main(_: Any) -> None:
        loops = [defer.Deferred.fromCoroutine(loop()) for _ in range(conf["concurrency"])]
        await task.deferLater(reactor, conf["warmup"], lambda: None)
        state["counting"] = True
        start = time.perf_counter()
        await task.deferLater(reactor, conf["duration"], lambda: None)
        state["counting"] = False
        seconds = time.perf_counter() - start
        state["stopped"] = True
        await defer.gatherResults(loops)
        await client.stop()
        print(
            json.dumps(
                {
                    "requests": state["requests"],
                    "errors": state["errors"],
                    "firstError": state["first"],
                    "seconds": seconds,
                    "rps": state["requests"] / seconds,
                }
            ),
            flush=True,
        )

    task.react(lambda r: defer.Deferred.fromCoroutine(main(r)))


# --- orchestration -------------------------------------------------------------------------------


def node_env() -> dict[str, str]:
    sys.path.insert(0, str(ROOT))
    try:
        from tests.interop.harness import node_modules_dir

        modules = node_modules_dir()
    except BaseException as e:  # SkipTest when node/npm are missing
        sys.exit(f"Node packages unavailable ({e}); install node and npm")
    env = {k: v for k, v in os.environ.items() if k not in ("NODE_OPTIONS", "NODE_PATH")}
    env["NODE_PATH"] = str(modules)
    return env


def pinned(cpu: int) -> Any:
    """A preexec_fn pinning the child to ``cpu`` (servers on 0, clients on 1), if possible."""
    if not hasattr(os, "sched_setaffinity") or (os.cpu_count() or 1) < 2:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


def start_server(
    kind: str, env: dict[str, str], metered: bool = False
) -> tuple[subprocess.Popen[bytes], int]:
    if kind == "py":
        argv = [sys.executable, __file__, "--role", "py-server"]
        if metered:
            argv.append("--metrics")
    else:
        argv = ["node", str(NODE_DIR / "http_server.js"), json.dumps({"port": 0})]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, env=env, cwd=ROOT, preexec_fn=pinned(0))
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise RuntimeError(f"{kind} server did not start")
    return proc, int(json.loads(line)["port"])


def run_client(kind: str, conf: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    if kind == "py":
        argv = [sys.executable, __file__, "--role", "py-client", "--conf", json.dumps(conf)]
    else:
        argv = ["node", str(NODE_DIR / "http_client.js"), json.dumps(conf)]
    limit = conf["warmup"] + conf["duration"] + 60
    out = subprocess.run(
        argv,
        stdout=subprocess.PIPE,
        env=env,
        cwd=ROOT,
        timeout=limit,
        check=True,
        preexec_fn=pinned(1),
    )
    result: dict[str, Any] = json.loads(out.stdout.decode().strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", choices=["py-server", "py-client"])
    parser.add_argument("--conf")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--payload-bytes", type=int, default=64)
    parser.add_argument("--compress", action="store_true")
    parser.add_argument(
        "--metrics", action="store_true", help="Python peers record grenache.metrics.Metrics"
    )
    parser.add_argument("--pairs", default=None, help="default py-py,node-node,py-node,node-py")
    parser.add_argument(
        "--repeat", type=int, default=1, help="run the pairs this many times, report medians"
    )
    parser.add_argument(
        "--repeats", type=int, dest="repeat", default=argparse.SUPPRESS, help="same as --repeat"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as bench JSON")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 1 s runs, py-py and node-node"
    )
    args = parser.parse_args()
    if args.quick:
        args.duration, args.warmup = 1.0, 0.3
        args.pairs = args.pairs or "py-py,node-node"
    args.pairs = args.pairs or "py-py,node-node,py-node,node-py"
    if args.role == "py-server":
        run_py_server(0, metered=args.metrics)
        return
    if args.role == "py-client":
        run_py_client(json.loads(args.conf))
        return

    env = node_env()
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    payload = {"data": "x" * max(0, args.payload_bytes - 12)}
    print(
        f"HTTP RPC, loopback, {args.concurrency} in flight, {args.duration:g} s per run, "
        f"payload {len(json.dumps(payload))} B JSON, compress={args.compress}, "
        f"{os.cpu_count()} CPUs, python {sys.version.split()[0]}"
    )
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    pairs = args.pairs.split(",")
    runs: dict[str, list[float]] = {pair: [] for pair in pairs}
    for round_ in range(max(1, args.repeat)):
        for pair in pairs:
            client_kind, server_kind = pair.split("-")
            server, port = start_server(server_kind, env, metered=args.metrics)
            try:
                conf = {
                    "dest": f"127.0.0.1:{port}",
                    "duration": args.duration,
                    "warmup": args.warmup,
                    "concurrency": args.concurrency,
                    "payload": payload,
                    "compress": args.compress,
                    "metrics": args.metrics,
                }
                result = run_client(client_kind, conf, env)
            finally:
                server.terminate()
                try:
                    server.wait(10)
                except subprocess.TimeoutExpired:
                    server.kill()
                    server.wait()
            runs[pair].append(result["rps"])
            errors = (
                f", {result['errors']} errors ({result['firstError']})" if result["errors"] else ""
            )
            label = f" (round {round_ + 1})" if args.repeat > 1 else ""
            print(
                f"  {client_kind:>4} client -> {server_kind:<4} server: "
                f"{result['rps']:9.0f} req/s{errors}{label}",
                flush=True,
            )
    results = {pair: statistics.median(values) for pair, values in runs.items()}
    if args.repeat > 1:
        print("medians:")
        for pair, value in results.items():
            client_kind, server_kind = pair.split("-")
            print(f"  {client_kind:>4} client -> {server_kind:<4} server: {value:9.0f} req/s")
    if "py-py" in results and "node-node" in results:
        ratio = results["py-py"] / results["node-node"]
        print(f"  python/node (client+server): {ratio:.2f}x")
    if args.json:
        note = (
            f"{args.concurrency} requests in flight, {args.duration:g} s per run after a "
            f"{args.warmup:g} s warm-up, payload {len(json.dumps(payload))} B JSON, "
            f"compress={args.compress}, metrics={args.metrics}; servers on one CPU, clients on "
            "the other; each client is the full peer with a lookup answered at once"
        )
        Path(args.json).write_text(json.dumps(bench_json(runs, [note]), indent=1) + "\n")


IMPL = {"py": "python", "node": "node"}


def bench_json(runs: dict[str, list[float]], notes: list[str]) -> dict[str, Any]:
    """Rates per pairing in the bench JSON convention (bench/README.md). py-py and node-node
    share the label "client + server" (one row per implementation); a crossing is labelled by
    its two sides and listed under its client's implementation."""
    rows = []
    for pair, values in runs.items():
        client, server = pair.split("-")
        if client == server:
            label = "client + server"
        else:
            label = f"{IMPL[client]} client -> {IMPL[server]} server"
        rows.append(
            {
                "label": label,
                "impl": IMPL[client],
                "values": [round(v, 1) for v in values],
                "median": round(statistics.median(values), 1),
            }
        )
    ratios = []
    if runs.get("py-py") and runs.get("node-node"):
        value = statistics.median(runs["py-py"]) / statistics.median(runs["node-node"])
        ratios.append({"label": "client + server", "value": round(value, 3), "target": 1.0})
    return {
        "family": "http_rpc",
        "title": "HTTP RPC (PeerRPCClient -> PeerRPCServer, echo)",
        "unit": "req/s",
        "rows": rows,
        "ratios": ratios,
        "notes": notes,
    }


if __name__ == "__main__":
    main()
