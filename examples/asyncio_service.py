"""An ``async def`` handler that awaits asyncio code, under Twisted's asyncio reactor.

Run it from the repository root (it starts its own grape, in-process, on ports the OS picks)::

    python examples/asyncio_service.py

It installs :class:`~twisted.internet.asyncioreactor.AsyncioSelectorReactor`, serves
``shout`` (whose handler awaits ``asyncio.sleep`` and an ``asyncio.Queue``, as it would await
aiohttp or asyncpg), calls it from an asyncio coroutine and prints the reply:
``["HELLO", "ASYNCIO"]``. The same handler runs as a service with
``grenache serve shout --reactor asyncio --handler examples.asyncio_service:shout`` or
``twistd -r asyncio -n grenache-service --name shout --handler examples.asyncio_service:shout``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from grenache.peer import Request, as_future


async def shout(request: Request) -> list[str]:
    """The handler: ``{"words": [...]}`` -> the words in capitals, one at a time."""
    words = request.payload.get("words") if isinstance(request.payload, dict) else None
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise ValueError('ERR_BAD_PAYLOAD: send {"words": ["..."]}')
    queue: asyncio.Queue[str] = asyncio.Queue()
    for word in words:
        await queue.put(word)
    shouted = []
    while not queue.empty():
        await asyncio.sleep(0.01)  # stands for an asyncio library call
        shouted.append((await queue.get()).upper())
    return shouted


async def amain(reactor: Any) -> None:
    """Plain asyncio code: it awaits the peers' Deferreds through ``as_future``."""
    from grenache.grape.service import Grape, GrapeConfig
    from grenache.link import Link
    from grenache.peer import PeerRPCClient, PeerRPCServer
    from grenache.transports.http import HTTPClientTransport, HTTPServerTransport

    grape = Grape(GrapeConfig(dht_port=0, api_port=0), reactor)
    await as_future(grape.start())
    link = Link(grape.api_url, reactor=reactor)
    server = PeerRPCServer(link, HTTPServerTransport(reactor), shout, reactor=reactor)
    client = PeerRPCClient(link, HTTPClientTransport(reactor), reactor=reactor)
    try:
        await as_future(server.listen("tcp:0:interface=127.0.0.1"))
        await as_future(server.announce("shout"))
        reply = await as_future(client.request("shout", {"words": ["hello", "asyncio"]}))
        print(json.dumps(reply), flush=True)
    finally:
        for stopping in (client.stop, server.stop, link.stop, grape.stop):
            await as_future(stopping())


def main(reactor: Any) -> Any:
    """Run ``amain`` as an asyncio Task on the reactor's event loop."""
    from twisted.internet.defer import Deferred

    return Deferred.fromFuture(asyncio.get_event_loop().create_task(amain(reactor)))


if __name__ == "__main__":
    from twisted.internet import asyncioreactor

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)  # the loop asyncio code started before reactor.run() gets
    asyncioreactor.install(loop)  # before anything imports the reactor

    from twisted.internet.task import react

    react(main)
