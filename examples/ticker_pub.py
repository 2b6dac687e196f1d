"""A publisher: announces ``ticker`` and publishes ``{"tick": n}`` every ``--interval`` s.

::

    python examples/ticker_pub.py --grape http://127.0.0.1:30001 --interval 0.5

Subscribe with ``python examples/ticker_sub.py`` or ``grenache sub ticker``. Messages are
WebSocket text frames, as grenache-nodejs-ws publishes them, so a Node ``PeerSub`` receives
them too.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall, react

from grenache.codec import json_dumps
from grenache.link import DEFAULT_GRAPE, Link
from grenache.peer import PeerPub
from grenache.transports.ws import WSPubTransport


async def main(reactor: Any, argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description="Publish a tick as 'ticker'.")
    parser.add_argument("--grape", default=DEFAULT_GRAPE, help="grape API URL")
    parser.add_argument("--name", default="ticker", help="name to publish as")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: any)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between ticks")
    args = parser.parse_args(argv)

    link = Link(args.grape, reactor=reactor)
    pub = PeerPub(link, WSPubTransport(reactor))
    port = await pub.listen(args.port)
    await pub.announce(args.name)
    print(f"publishing {args.name} on port {port}", flush=True)

    ticks = 0

    def tick() -> None:
        nonlocal ticks
        ticks += 1
        pub.pub(json_dumps({"tick": ticks}).decode("utf-8"))

    loop = LoopingCall(tick)
    loop.clock = reactor
    loop.start(args.interval, now=False)

    async def shutdown() -> None:
        loop.stop()
        await pub.stop()
        await link.stop()

    reactor.addSystemEventTrigger("before", "shutdown", lambda: Deferred.fromCoroutine(shutdown()))
    await Deferred()  # publish until interrupted


if __name__ == "__main__":
    react(lambda reactor: Deferred.fromCoroutine(main(reactor, sys.argv[1:])))
