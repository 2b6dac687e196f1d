#!/usr/bin/env python3
"""ZeroMQ RPC benchmark: this project's ZeroMQ pair beside the Node.js WebSocket pair.

    python bench/zmq_rpc.py [--seconds N] [--concurrency C] [--payload-size B] [--codec C]
                            [--repeats R] [--sessions shared|own] [--batch-io]
                            [--max-batch N]
                            [--json PATH] [--quick]

A client keeps C requests in flight (64 by default; each worker sends its next request when the
previous one is answered) against an echo server, for N seconds after a 1 s warm-up, on
127.0.0.1 with ports the OS picks; the payload is one object of about B bytes. Python is
``PeerRPCClient`` + ``ZmqClientTransport`` (msgpack unless ``--codec json``) against
``PeerRPCServer`` + ``ZmqServerTransport``, the client with a stub link that answers the lookup
at once, so only peer and transport are measured. In the same run, the Node.js pair of
grenache-nodejs-ws 1.0.0 (bench/ws.py's Node roles) is measured the same way, and the ratio
ZeroMQ / Node WebSocket is reported (the goal of issue 10: at least 2). Node is skipped when
missing.

Fairness: both pairs run the same way, one after the other in each repeat (medians over
``--repeats``): same payload, same depth, same warm-up; servers pinned to CPU 0 and clients to
CPU 1 (with two CPUs or more); every process in its own process group, killed in a
``finally``. ``--sessions`` says whether each process also gets a session of its own
(``own``: ``setsid``, as bench/ws.py does) or all stay in the bench's session (``shared``, the
default). Where the kernel groups processes by session for scheduling (Linux's autogroup,
``/proc/sys/kernel/sched_autogroup_enabled``), ``own`` makes each bench process compete with
every other session on its CPU as a group of its own; on a busy machine that costs a process
whose I/O thread and Python thread hand every message to each other (libzmq) far more than a
single-threaded event loop (Node): on a machine shared with other busy sessions, the ZeroMQ
pair measured 3-4x slower with ``own`` while Node did not change. ``shared`` measures the
implementations rather than the machine's other sessions; ``own`` shows that sensitivity.

``--batch-io`` runs both Python processes with ``SocketOptions(batch_io=True)`` (libzmq's I/O
thread under ``SCHED_BATCH``): less CPU per request, less overlap between client and server.
``--max-batch N`` sets ``SocketOptions(max_batch=N)`` on both (the transport's default, 32,
unless given; 1 sends every request and reply as a message of its own, as before batches).

Besides rates, each run samples the CPU time (user + system, all threads) of its server and
client inside the measured window (``/proc``, Linux) and reports microseconds of CPU per
request: a figure far less sensitive to the machine's load than throughput.

``--json PATH`` writes bench JSON (family ``zmq_rpc``; bench/README.md); ``--quick`` is a smoke
run (1 s runs, one repeat).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.ws import (  # noqa: E402
    NODE_DIR,
    WARMUP,
    Bench,
    Proc,
    StubLink,
    emit,
    make_payload,
    run_rpc_client,
)

LOCALHOST = "127.0.0.1"


def _options(conf: dict[str, Any]) -> Any:
    from grenache.transports.zmq import SocketOptions

    return SocketOptions(batch_io=conf.get("batch_io", False), max_batch=conf["max_batch"])


def role_server(args: argparse.Namespace) -> None:
    from twisted.internet import reactor

    from grenache.peer import PeerRPCServer
    from grenache.transports.zmq import ZmqServerTransport

    conf = json.loads(args.conf)
    options = _options(conf)
    transport = ZmqServerTransport(reactor, interface=LOCALHOST, options=options)
    server = PeerRPCServer(None, transport, lambda request: request.payload)
    server.listen(0).addCallback(lambda port: emit({"port": port}))
    reactor.run()  # type: ignore[attr-defined,misc]


def role_client(args: argparse.Namespace) -> None:
    from twisted.internet import reactor

    from grenache.peer import PeerRPCClient
    from grenache.transports.zmq import ZmqClientTransport

    conf = json.loads(args.conf)
    transport = ZmqClientTransport(reactor, codec=conf["codec"], options=_options(conf))
    client = PeerRPCClient(StubLink(conf["dest"]), transport, timeout=10.0, reactor=reactor)
    run_rpc_client(client, conf)


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` (every thread), or None without /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK


def run_pair(bench: Bench, args: argparse.Namespace, impl: str) -> dict[str, Any]:
    """One run of a pair (``python`` ZeroMQ or ``node`` WebSocket): the client's result line,
    plus ``server_cpu_us``/``client_cpu_us`` (CPU per request in the measured window) when
    /proc can be read."""
    me = str(Path(__file__).resolve())
    own = args.sessions == "own"
    if impl == "node":
        assert bench.node_env is not None
        env: dict[str, str] | None = bench.node_env
        server_argv = [bench.node, str(NODE_DIR / "ws_rpc_server.js"), "{}"]
    else:
        env = None
        server_conf = {"batch_io": args.batch_io, "max_batch": args.max_batch}
        server_argv = [sys.executable, me, "server", json.dumps(server_conf)]
    procs: list[Proc] = []
    try:
        server = Proc(server_argv, bench.server_cpu, env, own_session=own)
        procs.append(server)
        port = server.line(30.0)["port"]
        conf = {
            "dest": f"{LOCALHOST}:{port}",
            "seconds": args.seconds,
            "warmup": WARMUP,
            "concurrency": args.concurrency,
            "payload": make_payload(args.payload_size),
            "codec": args.codec,
            "batch_io": args.batch_io,
            "max_batch": args.max_batch,
        }
        if impl == "node":
            client_argv = [bench.node, str(NODE_DIR / "ws_rpc_client.js"), json.dumps(conf)]
        else:
            client_argv = [sys.executable, me, "client", json.dumps(conf)]
        started = time.monotonic()
        client = Proc(client_argv, bench.client_cpu, env, own_session=own)
        procs.append(client)
        # CPU samples well inside the measured window (after the warm-up, before the end).
        window = (started + WARMUP + 0.3, started + WARMUP + args.seconds - 0.2)
        samples = []
        for at in window:
            time.sleep(max(0.0, at - time.monotonic()))
            samples.append(
                (time.monotonic(), _cpu_seconds(server.popen.pid), _cpu_seconds(client.popen.pid))
            )
        result = client.line(args.seconds + WARMUP + 30.0)
        (t0, s0, c0), (t1, s1, c1) = samples
        requests = result["rate"] * (t1 - t0)
        if None not in (s0, s1, c0, c1) and requests > 0 and t1 > t0:
            result["server_cpu_us"] = (s1 - s0) / requests * 1e6  # type: ignore[operator]
            result["client_cpu_us"] = (c1 - c0) / requests * 1e6  # type: ignore[operator]
        return result
    finally:
        for p in procs:
            p.kill()


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 1) if values else float("nan")


def run(args: argparse.Namespace) -> dict[str, Any]:
    bench = Bench(args)
    print(
        f"RPC, {args.concurrency} requests in flight, payload ~{args.payload_size} B, "
        f"{args.seconds:g} s after a {WARMUP:g} s warm-up; servers on CPU {bench.server_cpu}, "
        f"clients on CPU {bench.client_cpu}; sessions: {args.sessions}; "
        f"batch I/O: {args.batch_io}; max batch: {args.max_batch}"
    )
    impls = ["python"] + (["node"] if bench.node_env is not None else [])
    names = {
        "python": f"python ZeroMQ ({args.codec}) pair",
        "node": "node WebSocket pair",
    }
    rates: dict[str, list[float]] = {i: [] for i in impls}
    cpu: dict[str, dict[str, list[float]]] = {i: {"server": [], "client": []} for i in impls}
    errors = 0
    for _ in range(args.repeats):
        for impl in impls:
            result = run_pair(bench, args, impl)
            rates[impl].append(result["rate"])
            errors += result.get("errors", 0)
            shown = ""
            if "server_cpu_us" in result:
                for side in ("server", "client"):
                    cpu[impl][side].append(result[f"{side}_cpu_us"])
                shown = (
                    f"   CPU/request: server {result['server_cpu_us']:5.1f} us, "
                    f"client {result['client_cpu_us']:5.1f} us"
                )
            print(f"  {names[impl]:<30} {result['rate']:10,.0f} req/s{shown}")
    labels = {
        "python": f"ZeroMQ client + server ({args.codec})",
        "node": "WebSocket client + server (grenache-nodejs-ws)",
    }
    rows = [
        {
            "label": labels[impl],
            "impl": impl,
            "values": [round(v, 1) for v in rates[impl]],
            "median": _median(rates[impl]),
        }
        for impl in impls
    ]
    ratios = []
    notes = [
        f"{args.concurrency} requests in flight, payload ~{args.payload_size} B, "
        f"{args.seconds:g} s per run after a {WARMUP:g} s warm-up; servers on one CPU, clients "
        f"on the other; sessions: {args.sessions}; batch I/O: {args.batch_io}; max batch: "
        f"{args.max_batch}; the clients are "
        f"the full peer with a lookup answered at once; {errors} errors"
    ]
    for impl in impls:
        if cpu[impl]["server"]:
            server_us, client_us = _median(cpu[impl]["server"]), _median(cpu[impl]["client"])
            notes.append(
                f"{names[impl]}: median CPU per request {server_us:g} us (server) + "
                f"{client_us:g} us (client) = {server_us + client_us:.1f} us"
            )
    if "node" in impls:
        value = statistics.median(rates["python"]) / statistics.median(rates["node"])
        print(f"  ZeroMQ / Node WebSocket ratio: {value:.2f} (goal >= 2)")
        ratios.append(
            {"label": "python ZeroMQ / node WebSocket", "value": round(value, 3), "target": 2.0}
        )
        if cpu["python"]["server"] and cpu["node"]["server"]:
            py = _median(cpu["python"]["server"]) + _median(cpu["python"]["client"])
            node = _median(cpu["node"]["server"]) + _median(cpu["node"]["client"])
            print(f"  CPU per request, node / python: {node / py:.2f}")
            notes.append(f"CPU per request of the pair, node / python: {node / py:.2f}")
    else:
        notes.append("Node.js missing: the WebSocket pair was not measured")
    for note in notes[1:]:
        print(f"  {note}")
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
    parser.add_argument("--repeats", type=int, default=3, help="runs of each pair (medians)")
    parser.add_argument(
        "--sessions",
        choices=["shared", "own"],
        default="shared",
        help="every process in the bench's session (default) or in a session of its own",
    )
    parser.add_argument(
        "--batch-io",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="libzmq's I/O threads under SCHED_BATCH (SocketOptions.batch_io; default off)",
    )
    parser.add_argument(
        "--max-batch",
        type=int,
        default=None,
        help="requests (replies) per ZeroMQ message at most (SocketOptions.max_batch)",
    )
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
    if args.max_batch is None:
        from grenache.transports.zmq.frames import DEFAULT_MAX_BATCH

        args.max_batch = DEFAULT_MAX_BATCH
    result = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
