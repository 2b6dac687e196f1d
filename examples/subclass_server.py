"""A PeerRPCServer subclass that answers requests with a method instead of a handler function.

Run it from the repository root (it starts its own grape, in-process, on ports the OS picks)::

    python examples/subclass_server.py

It serves ``Counter`` under the name ``counter``, calls it once through a ``PeerRPCClient`` and
prints the reply: ``{"count": 1, "name": "world"}``.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.task import react

from grenache.grape.service import Grape, GrapeConfig
from grenache.link import Link
from grenache.peer import PeerRPCClient, PeerRPCServer, Request
from grenache.transports.http import HTTPClientTransport, HTTPServerTransport


class Counter(PeerRPCServer):
    """Counts the requests it answers; state lives on the server object."""

    count = 0

    def handle(self, request: Request) -> dict[str, Any]:
        # A value, a Deferred or a coroutine (``async def handle``); raising sends the
        # error's message to the caller.
        payload = request.payload
        if not isinstance(payload, dict) or not isinstance(payload.get("name"), str):
            raise ValueError('ERR_BAD_PAYLOAD: send {"name": "..."}')
        self.count += 1
        return {"count": self.count, "name": payload["name"]}


async def main(reactor: Any) -> None:
    grape = Grape(GrapeConfig(dht_port=0, api_port=0), reactor)
    await grape.start()
    link = Link(grape.api_url, reactor=reactor)
    server = Counter(link, HTTPServerTransport(reactor), reactor=reactor)
    client = PeerRPCClient(link, HTTPClientTransport(reactor), reactor=reactor)
    try:
        await server.listen("tcp:0:interface=127.0.0.1")  # or a port number; 0: any
        await server.announce("counter")
        reply = await client.request("counter", {"name": "world"}, timeout=10)
        print(json.dumps(reply, sort_keys=True), flush=True)
    finally:
        await client.stop()
        await server.stop()
        await link.stop()
        await grape.stop()


if __name__ == "__main__":
    react(main)
