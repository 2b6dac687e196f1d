"""Subclassing the HTTP transport's server protocol: an allow-list, a request counter and a
response header, then one request to itself.

The override points (see :mod:`grenache.http.server`):

- ``accept_client(peer)``: ``False`` drops a client before anything is read;
- ``before_dispatch(request)``: called before each request's handler (count, log, or answer
  it yourself by returning an ``HTTPResponse``);
- ``prepare_response(request, response)``: the response to send (here with a header added);
- the factory's ``protocol`` attribute names the protocol class, and the transport's
  ``factory_class`` (a class attribute, or the ``factory_class=`` keyword) the factory.

Run it: ``python examples/custom_http_protocol.py``. It serves on a port the OS picks on
127.0.0.1, calls itself once and prints the reply, the counter and the header it saw.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import attrs
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IAddress
from twisted.internet.task import react

from grenache.http.messages import HTTPRequest, HTTPResponse
from grenache.peer import OutgoingRequest, PeerRPCServer, Request
from grenache.transports.http import (
    HTTPClientTransport,
    HTTPServerTransport,
    RPCServerFactory,
    RPCServerProtocol,
)

ALLOWED = ipaddress.ip_network("127.0.0.0/8")


class GuardedProtocol(RPCServerProtocol):
    """Serves only clients from ``ALLOWED``, counts requests, names itself in every reply."""

    factory: GuardedFactory

    def accept_client(self, peer: IAddress) -> bool:
        host = getattr(peer, "host", None)
        return host is not None and ipaddress.ip_address(host) in ALLOWED

    def before_dispatch(self, request: HTTPRequest) -> HTTPResponse | None:
        self.factory.requests += 1
        return None  # go on to the RPC handler

    def prepare_response(self, request: HTTPRequest, response: HTTPResponse) -> HTTPResponse:
        return attrs.evolve(response, headers=(*response.headers, (b"x-served-by", b"guarded")))


class GuardedFactory(RPCServerFactory):
    protocol = GuardedProtocol
    requests = 0


def handler(request: Request) -> Any:
    return {"hello": request.payload}


async def run(reactor: Any) -> dict[str, Any]:
    """Serve with the custom protocol, call it once, and say what happened."""
    transport = HTTPServerTransport(reactor, factory_class=GuardedFactory)
    server = PeerRPCServer(None, transport, handler)
    port = await server.listen("tcp:0:interface=127.0.0.1")
    client = HTTPClientTransport(reactor)
    try:
        reply = await client.request(
            f"127.0.0.1:{port}", OutgoingRequest("rid-1", "greeter", "world", 5.0)
        )
    finally:
        await client.stop()
        await server.stop()
    factory: Any = transport.factory
    return {"reply": reply, "requests": factory.requests}


def main(reactor: Any) -> Deferred[None]:
    async def show() -> None:
        outcome = await run(reactor)
        print(f"reply: {outcome['reply']}; requests served: {outcome['requests']}")

    return ensureDeferred(show())


if __name__ == "__main__":
    react(main)
