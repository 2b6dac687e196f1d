"""A subscriber: prints each message published as ``ticker``, one per line.

::

    python examples/ticker_sub.py --grape http://127.0.0.1:30001 --count 3
    {"tick":4}
    {"tick":5}
    {"tick":6}

Without ``--count`` it runs until interrupted, following the name to another publisher when
its publisher goes away.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import react

from grenache.errors import GrenacheError
from grenache.link import DEFAULT_GRAPE, Link
from grenache.peer import PeerSub
from grenache.transports.ws import WSSubTransport


async def main(reactor: Any, argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description="Print what 'ticker' publishes.")
    parser.add_argument("--grape", default=DEFAULT_GRAPE, help="grape API URL")
    parser.add_argument("--name", default="ticker", help="name to subscribe to")
    parser.add_argument("--count", type=int, default=None, help="exit after N messages")
    args = parser.parse_args(argv)

    link = Link(args.grape, reactor=reactor)
    sub = PeerSub(link, WSSubTransport(reactor), reactor=reactor)
    done: Deferred[None] = Deferred()
    received = 0

    def on_message(message: str | bytes) -> None:
        nonlocal received
        if done.called:
            return
        text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
        print(text, flush=True)
        received += 1
        if args.count is not None and received >= args.count:
            done.callback(None)

    sub.on_message = on_message
    try:
        await sub.sub(args.name)
        await done
    except GrenacheError as error:
        print(f"ticker_sub: {error.message}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        await sub.stop()
        await link.stop()


if __name__ == "__main__":
    react(lambda reactor: Deferred.fromCoroutine(main(reactor, sys.argv[1:])))
