"""The fibonacci service of the Grenache examples, in Python.

Run it as a script (it announces itself as ``fibonacci_worker`` through a grape)::

    python examples/fibonacci_service.py --grape http://127.0.0.1:30001 --port 1337

or serve its handler with the command line, which does the same::

    grenache serve fibonacci_worker --port 1337 --handler examples.fibonacci_service:fibonacci
    twistd -n grenache-service --name fibonacci_worker --port 1337 \\
        --handler examples.fibonacci_service:fibonacci

A request's payload is ``{"length": N}``; the reply is the first N numbers of the sequence,
as the Node.js example answers: ``{"length": 10}`` -> ``[1,1,2,3,5,8,13,21,34,55]``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import react

from grenache.link import DEFAULT_GRAPE, Link
from grenache.peer import PeerRPCServer, Request
from grenache.transports.http import HTTPServerTransport

#: Longest sequence served (the numbers stay exact in JSON up to 2**53 anyway).
MAX_LENGTH = 1000


def fibonacci(request: Request) -> list[int]:
    """The handler: ``{"length": N}`` -> the first N fibonacci numbers (1, 1, 2, ...)."""
    payload: Any = request.payload
    length = payload.get("length") if isinstance(payload, dict) else None
    if not isinstance(length, int) or isinstance(length, bool) or not 0 <= length <= MAX_LENGTH:
        raise ValueError(f"ERR_BAD_LENGTH: length must be an integer from 0 to {MAX_LENGTH}")
    numbers: list[int] = []
    a, b = 1, 1
    for _ in range(length):
        numbers.append(a)
        a, b = b, a + b
    return numbers


async def main(reactor: Any, argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description="Serve fibonacci_worker over HTTP.")
    parser.add_argument("--grape", default=DEFAULT_GRAPE, help="grape API URL")
    parser.add_argument("--port", type=int, default=1337, help="port to listen on (0: any)")
    parser.add_argument("--name", default="fibonacci_worker", help="service name")
    args = parser.parse_args(argv)

    link = Link(args.grape, reactor=reactor)
    server = PeerRPCServer(link, HTTPServerTransport(reactor), fibonacci)
    port = await server.listen(args.port)
    await server.announce(args.name)
    print(f"{args.name} listening on port {port}", flush=True)

    async def shutdown() -> None:
        await server.stop()
        await link.stop()

    reactor.addSystemEventTrigger("before", "shutdown", lambda: Deferred.fromCoroutine(shutdown()))
    await Deferred()  # serve until interrupted


if __name__ == "__main__":
    react(lambda reactor: Deferred.fromCoroutine(main(reactor, sys.argv[1:])))
