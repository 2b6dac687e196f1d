"""Streaming over HTTP, as grenache-nodejs-http's ``peer.stream`` and ``'stream'`` event.

One program runs both sides: a service ``files`` whose stream handler echoes each request body
back as it arrives, and a client that streams a file to it and counts the echoed bytes.
Nothing is buffered whole on either side; the upload follows the socket's backpressure::

    python examples/stream_echo.py --grape http://127.0.0.1:30001 --size 10000000
    streamed 10000000 bytes, 10000000 echoed

The wire format is in docs/protocol.rst, *HTTP streaming*.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Any

from twisted.internet import protocol
from twisted.internet.defer import Deferred
from twisted.internet.task import react
from twisted.protocols.basic import FileSender

from grenache.link import DEFAULT_GRAPE, Link
from grenache.peer import PeerRPCClient, PeerRPCServer
from grenache.transports.http import HTTPClientTransport, HTTPServerTransport, read_body


class Echo(protocol.Protocol):  # the request body, as it arrives
    def __init__(self, response):
        self.response = response

    def connectionMade(self):  # the upload pauses while the client does not read
        self.response.registerProducer(self.transport, True)

    def dataReceived(self, data):
        self.response.write(data)

    def connectionLost(self, reason):  # ConnectionDone: the body is complete
        self.response.unregisterProducer()
        self.response.finish()


def on_stream(request, response):  # request.meta: info_headers [rid, key], action, args
    request.deliverBody(Echo(response))  # or response.reply(request.rid, None, result)


def handler(request):  # buffered (non-streamed) requests
    return "send me a stream"


async def main(reactor: Any, argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description="Stream a file to an echo service.")
    parser.add_argument("--grape", default=DEFAULT_GRAPE, help="grape API URL")
    parser.add_argument("--size", type=int, default=1_000_000, help="bytes to stream")
    args = parser.parse_args(argv)

    link = Link(args.grape, reactor=reactor)
    transport = HTTPServerTransport(reactor, stream_handler=on_stream)
    server = PeerRPCServer(link, transport, handler)  # buffered requests still go to handler
    await server.listen(0)
    await server.announce("files")
    client = PeerRPCClient(link, HTTPClientTransport(reactor), reactor=reactor)
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "big.bin")
        with open(path, "wb") as f:
            f.write(os.urandom(args.size))

        stream = await client.stream("files", headers={"_a": "upload", "_ar": {"name": "big.bin"}})
        echoed = stream.response().addCallback(read_body)  # read while writing (it is an echo)
        with open(path, "rb") as f:
            await FileSender().beginFileTransfer(f, stream)  # follows the socket's backpressure
        stream.finish()
        print(f"streamed {args.size} bytes, {len(await echoed)} echoed")
    await client.stop()
    await server.stop()
    await link.stop()


if __name__ == "__main__":
    react(lambda reactor: Deferred.fromCoroutine(main(reactor, sys.argv[1:])))
