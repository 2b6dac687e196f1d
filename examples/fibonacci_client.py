"""The fibonacci client of the Grenache examples, in Python.

Asks one ``fibonacci_worker`` (found through the grape) for the first N numbers and prints
the reply as JSON::

    python examples/fibonacci_client.py --grape http://127.0.0.1:30001 10
    [1,1,2,3,5,8,13,21,34,55]

The command line does the same: ``grenache request fibonacci_worker '{"length": 10}'``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import react

from grenache.codec import json_dumps
from grenache.errors import GrenacheError
from grenache.link import DEFAULT_GRAPE, Link
from grenache.peer import PeerRPCClient
from grenache.transports.http import HTTPClientTransport


async def main(reactor: Any, argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description="Call fibonacci_worker over HTTP.")
    parser.add_argument("length", type=int, nargs="?", default=10, help="how many numbers")
    parser.add_argument("--grape", default=DEFAULT_GRAPE, help="grape API URL")
    parser.add_argument("--name", default="fibonacci_worker", help="service name")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait")
    args = parser.parse_args(argv)

    link = Link(args.grape, reactor=reactor)
    client = PeerRPCClient(link, HTTPClientTransport(reactor), reactor=reactor)
    try:
        result = await client.request(args.name, {"length": args.length}, timeout=args.timeout)
    except GrenacheError as error:
        print(f"fibonacci_client: {error.message}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        await client.stop()
        await link.stop()
    print(json_dumps(result).decode("utf-8"), flush=True)


if __name__ == "__main__":
    react(lambda reactor: Deferred.fromCoroutine(main(reactor, sys.argv[1:])))
