#!/usr/bin/env python3
"""Pub/sub fan-out over ZeroMQ, beside WebSocket, in one run.

    python bench/zmq_pubsub.py [--subscribers S] [--messages M] [--message-size B]
                               [--burst K] [--hwm H] [--repeat N] [--json PATH] [--quick]

One publisher process, one subscriber process holding S subscriber sockets, on 127.0.0.1 with
ports the OS picks. The publisher sends M text messages of B bytes, K per reactor turn; the
rate is messages delivered (at most M x S) per second, from the moment the publisher is told
to start to the last message received (wall clock; both processes on this machine). Pairings:

- ``zmq``: ``ZmqPubTransport`` (one XPUB socket, msgpack bodies) -> S ``ZmqSubTransport``
  (one SUB socket each); the publisher starts once all S subscriptions reached it (ZeroMQ's
  slow joiner), so every message published can be delivered;
- ``ws``: ``WSPubTransport`` -> S ``WSSubTransport`` sockets (as bench/ws.py measures it);
- ``ws node``: grenache-nodejs-ws's publisher and subscribers (bench/node/ws_pub.js and
  ws_sub.js), when Node is installed (the interop harness's install).

ZeroMQ's PUB drops what a subscriber has no room for (past H = ``--hwm`` queued messages per
subscriber, each way): the publisher's memory stays bounded and a slow subscriber loses
messages. Messages that did not arrive are reported (the WebSocket publisher queues instead,
up to its own bound). A subscriber process ends 1 s after its last message, or once all
arrived.

The publisher is pinned to CPU 0 and the subscribers to CPU 1 when the machine has two CPUs;
every process is its own process group, killed in a ``finally``, and every wait has a
deadline. ``--json PATH`` writes the bench JSON (bench/README.md); ``--quick`` is a smoke run
(a few seconds).
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

from bench.ws import NODE_DIR, Proc, emit, make_message  # noqa: E402

LOCALHOST = "127.0.0.1"
TOPIC = "bench_fanout"
IDLE = 1.0


# --- roles (each its own process and reactor) -------------------------------------------------


def role_pub(conf: dict[str, Any]) -> None:
    from twisted.internet import reactor, stdio, task
    from twisted.protocols.basic import LineReceiver

    if conf["transport"] == "zmq":
        from grenache.transports.zmq.frames import SocketOptions
        from grenache.transports.zmq.pub import ZmqPubTransport

        pub: Any = ZmqPubTransport(
            reactor, interface=LOCALHOST, options=SocketOptions(hwm=conf["hwm"])
        )
        pub.add_topic(TOPIC)
    else:
        from grenache.transports.ws import WSPubTransport

        pub = WSPubTransport(reactor, interface=LOCALHOST)
    messages = [make_message(i, conf["size"]) for i in range(conf["messages"])]

    def publish(start: int = 0) -> None:
        stop = min(len(messages), start + conf["burst"])
        for i in range(start, stop):
            pub.publish(messages[i])
        if stop < len(messages):
            task.deferLater(reactor, 0, publish, stop)
        else:
            emit({"published": len(messages), "subscribers": pub.subscribers})

    def go() -> None:
        if conf["transport"] == "zmq":
            # Publish once every subscription reached the publisher (the slow joiner).
            pub.when_subscribed(TOPIC, conf["subscribers"]).addCallback(lambda _: publish())
        else:
            publish()

    class Lines(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line: bytes) -> None:
            if line.strip() == b"go":
                go()

    pub.listen(0).addCallback(lambda port: emit({"port": port}))
    stdio.StandardIO(Lines())
    reactor.run()  # type: ignore[attr-defined,misc]


def role_sub(conf: dict[str, Any]) -> None:
    from twisted.internet import reactor, task

    clock: Any = reactor
    expected = conf["subscribers"] * conf["messages"]
    state: dict[str, Any] = {"connected": 0, "received": 0, "last": 0.0, "seen": 0.0}
    if conf["transport"] == "zmq":
        from grenache.transports.zmq.frames import SocketOptions
        from grenache.transports.zmq.sub import ZmqSubTransport

        options = SocketOptions(hwm=conf["hwm"])
        subs: list[Any] = [
            ZmqSubTransport(reactor, options=options) for _ in range(conf["subscribers"])
        ]
    else:
        from grenache.transports.ws import WSSubTransport

        one = WSSubTransport(reactor, heartbeat_interval=None)
        subs = [one] * conf["subscribers"]

    def done() -> None:
        emit({"received": state["received"], "last": state["last"]})
        for sub in set(subs):
            sub.stop()  # a ZeroMQ context with open sockets would block the exit
        clock.stop()

    def on_message(message: str | bytes) -> None:
        state["received"] += 1
        state["last"] = time.time()
        state["seen"] = clock.seconds()
        if state["received"] == expected:
            done()

    def idle() -> None:
        if state["received"] and clock.seconds() - state["seen"] >= IDLE:
            done()

    def connected(_: Any) -> None:
        state["connected"] += 1
        if state["connected"] == conf["subscribers"]:
            emit({"ready": True})
            task.LoopingCall(idle).start(0.2, now=False)

    for sub in subs:
        sub.connect(conf["dest"], on_message, lambda: None, topic=TOPIC).addCallback(connected)
    reactor.run()  # type: ignore[attr-defined,misc]


# --- orchestration ----------------------------------------------------------------------------


def node_env() -> tuple[str, dict[str, str]] | None:
    """The Node executable and environment for the Node pairing, or None without Node."""
    try:
        from tests.interop.harness import node_executable, node_modules_dir

        modules = node_modules_dir()
        node = node_executable()
    except BaseException as e:  # SkipTest when Node or npm is missing
        print(f"Node pairing skipped: {e}", file=sys.stderr)
        return None
    env = {k: v for k, v in os.environ.items() if k not in ("NODE_OPTIONS", "NODE_PATH")}
    env["NODE_PATH"] = str(modules)
    return node, env


def spawn(kind: str, role: str, conf: dict[str, Any], cpu: int | None, node: Any) -> Proc:
    if kind == "ws node":
        executable, env = node
        script = NODE_DIR / ("ws_pub.js" if role == "pub" else "ws_sub.js")
        return Proc([executable, str(script), json.dumps(conf)], cpu, env)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    argv = [sys.executable, str(Path(__file__).resolve()), "--role", role, json.dumps(conf)]
    return Proc(argv, cpu, env)


def fan_out(args: argparse.Namespace, kind: str, node: Any) -> dict[str, Any]:
    """One run of one pairing: ``{"rate", "received", "seconds"}``."""
    multi = (os.cpu_count() or 1) >= 2
    transport = "zmq" if kind == "zmq" else "ws"
    procs: list[Proc] = []
    try:
        pconf = {
            "transport": transport,
            "messages": args.messages,
            "burst": args.burst,
            "size": args.message_size,
            "subscribers": args.subscribers,
            "hwm": args.hwm,
        }
        pub = spawn(kind, "pub", pconf, 0 if multi else None, node)
        procs.append(pub)
        port = pub.line(30.0)["port"]
        sconf = {
            "transport": transport,
            "dest": f"{LOCALHOST}:{port}",
            "subscribers": args.subscribers,
            "messages": args.messages,
            "hwm": args.hwm,
            "timeout": 60.0,  # Node's subscriber: seconds after the first message
        }
        sub = spawn(kind, "sub", sconf, 1 if multi else None, node)
        procs.append(sub)
        sub.line(30.0)  # every subscriber socket is open
        go = time.time()
        pub.send("go")
        result = sub.line(120.0)
        result["seconds"] = max(result["last"] - go, 1e-9)
        result["rate"] = result["received"] / result["seconds"]
        return result
    finally:
        for p in procs:
            p.kill()


def bench_json(
    args: argparse.Namespace, runs: dict[str, list[dict[str, Any]]], notes: list[str]
) -> dict[str, Any]:
    """The results as bench JSON (bench/README.md)."""
    rows = []
    medians: dict[str, float] = {}
    for kind, results in runs.items():
        values = [r["rate"] for r in results]
        medians[kind] = statistics.median(values)
        rows.append(
            {
                "label": f"{kind} fan-out, {args.subscribers} subscribers",
                "impl": "node" if kind == "ws node" else "python",
                "values": values,
                "median": medians[kind],
            }
        )
    ratios = []
    if medians.get("ws"):
        ratios.append({"label": "zmq / ws (python)", "value": medians["zmq"] / medians["ws"]})
    if medians.get("ws node"):
        ratios.append(
            {"label": "zmq python / ws node", "value": medians["zmq"] / medians["ws node"]}
        )
    for ratio in ratios:
        ratio["target"] = None
    return {
        "family": "zmq_pubsub",
        "title": "Pub/sub fan-out: ZeroMQ and WebSocket",
        "unit": "msg/s",
        "rows": rows,
        "ratios": ratios,
        "notes": notes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", choices=("pub", "sub"), help=argparse.SUPPRESS)
    parser.add_argument("conf", nargs="?", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--subscribers", type=int, default=10)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--message-size", type=int, default=100)
    parser.add_argument("--burst", type=int, default=100)
    parser.add_argument("--hwm", type=int, default=10_000, help="ZeroMQ high-water mark")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-node", action="store_true", help="skip the Node WebSocket pairing")
    parser.add_argument("--json", metavar="PATH", help="also write the results as bench JSON")
    parser.add_argument("--quick", action="store_true", help="smoke run (a few seconds)")
    args = parser.parse_args()
    if args.role == "pub":
        role_pub(json.loads(args.conf))
        return
    if args.role == "sub":
        role_sub(json.loads(args.conf))
        return
    if args.quick:
        args.subscribers, args.messages, args.repeat, args.no_node = 4, 2000, 1, True
    node = None if args.no_node else node_env()
    kinds = ["zmq", "ws"] + (["ws node"] if node is not None else [])
    print(
        f"Pub/sub fan-out: {args.subscribers} subscribers, {args.messages} text messages of "
        f"{args.message_size} B, {args.burst} per reactor turn, ZeroMQ HWM {args.hwm}, "
        f"{args.repeat} run(s) each, alternating"
    )
    runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
    for _ in range(args.repeat):
        for kind in kinds:
            runs[kind].append(fan_out(args, kind, node))
    expected = args.messages * args.subscribers
    notes = [
        f"{args.subscribers} subscribers in one process, {args.messages} messages of "
        f"{args.message_size} B, {args.burst} per reactor turn; ZeroMQ high-water mark "
        f"{args.hwm}; rate = messages delivered per second (wall clock, go to last message)"
    ]
    for kind, results in runs.items():
        rates = [r["rate"] for r in results]
        lost = [expected - r["received"] for r in results]
        note = f"  ({', '.join(map(str, lost))} not delivered)" if any(lost) else ""
        print(
            f"  {kind:<8} {statistics.median(rates):12,.0f} msg/s delivered (median; "
            f"runs {', '.join(f'{r:,.0f}' for r in rates)}){note}"
        )
        if any(lost):
            notes.append(f"{kind}: messages not delivered per run: {lost} of {expected}")
    document = bench_json(args, runs, notes)
    for ratio in document["ratios"]:
        print(f"  {ratio['label']}: {ratio['value']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(document, indent=1) + "\n")


if __name__ == "__main__":
    main()
