"""Tests for the ZeroMQ transports' throughput measures (grenache.transports.zmq.frames):
the I/O thread's scheduling policy (``SocketOptions.batch_io``) and batches (requests and
replies of one reactor turn in one message)."""

from __future__ import annotations

import os
import sys
from typing import Any

import zmq
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, succeed
from twisted.trial import unittest

from grenache.peer import OutgoingRequest, PeerRPCClient, new_rid
from grenache.transports.zmq import SocketOptions, ZmqClientTransport, ZmqServerTransport
from grenache.transports.zmq.frames import batch_io_supported, new_factory

global_reactor: Any = _reactor
_DEFAULT_POLICY = -1  # ZMQ_THREAD_SCHED_POLICY_DFLT: libzmq leaves the thread as it is


def _thread_policies(pid: int) -> dict[str, int]:
    """Each thread's name and scheduling policy (field 41 of /proc/PID/task/TID/stat)."""
    policies = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                text = f.read()
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that ended meanwhile (an earlier test's ZeroMQ context closing)
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text.rsplit(")", 1)[1].split()
        policies[f"{name}/{tid}"] = int(fields[38])
    return policies


def _policy(context: zmq.Context[Any]) -> int:
    # libzmq answers the unset value, -1, as a failed call (pyzmq raises with a stale errno).
    try:
        return int(context.get(zmq.THREAD_SCHED_POLICY))
    except zmq.ZMQError:
        return _DEFAULT_POLICY


class BatchIOTests(unittest.TestCase):
    def test_supported_on_linux(self) -> None:
        """On Linux, under the normal policy, the probe finds SCHED_BATCH allowed."""
        if not sys.platform.startswith("linux"):
            self.assertFalse(batch_io_supported())
            return
        if os.sched_getscheduler(0) != os.SCHED_OTHER:
            raise unittest.SkipTest("the test process does not run under SCHED_OTHER")
        self.assertTrue(batch_io_supported())

    def test_context_option(self) -> None:
        """A factory's context asks for SCHED_BATCH with ``batch_io=True`` where supported,
        and for nothing by default."""
        batched = new_factory(global_reactor, SocketOptions(batch_io=True))
        plain = new_factory(global_reactor, SocketOptions())
        bare = new_factory(global_reactor)
        try:
            expected = os.SCHED_BATCH if batch_io_supported() else _DEFAULT_POLICY
            self.assertEqual(_policy(batched.context), expected)
            self.assertEqual(_policy(plain.context), _DEFAULT_POLICY)
            self.assertEqual(_policy(bare.context), _DEFAULT_POLICY)
        finally:
            for factory in (batched, plain, bare):
                factory.shutdown()

    async def test_io_thread_runs_batched_and_serves(self) -> None:
        """With ``batch_io=True`` a server and a client answer requests, and the new ZeroMQ
        I/O threads of this process run under SCHED_BATCH (Linux)."""
        if not batch_io_supported():
            raise unittest.SkipTest("SCHED_BATCH is not available here")
        before = set(_thread_policies(os.getpid()))
        options = SocketOptions(batch_io=True)
        server = ZmqServerTransport(global_reactor, interface="127.0.0.1", options=options)
        client = ZmqClientTransport(global_reactor, options=options)
        self.addCleanup(server.stop)
        self.addCleanup(client.stop)
        port = await server.listen(0, lambda request: succeed({"echo": request.payload}))
        reply = await client.request(
            f"127.0.0.1:{port}", OutgoingRequest(new_rid(), "k", [1, "x"], 5.0)
        )
        self.assertEqual(reply, {"echo": [1, "x"]})
        new = {k: v for k, v in _thread_policies(os.getpid()).items() if k not in before}
        io_threads = {k: v for k, v in new.items() if k.startswith("ZMQbg/IO")}
        self.assertEqual(len(io_threads), 2, new)  # one context each: server and client
        self.assertEqual(set(io_threads.values()), {os.SCHED_BATCH}, new)


class Counting(ZmqServerTransport):
    """A server transport counting the messages its socket delivers."""

    messages = 0

    def _received(self, frames: list[Any]) -> None:
        self.messages += 1
        super()._received(frames)


class _Link:
    def __init__(self, dest: str) -> None:
        self.dest = dest

    def lookup(self, name: str) -> Any:
        return succeed([self.dest])


class BatchTests(unittest.TestCase):
    async def loop(self, max_batch: int, total: int = 640, depth: int = 64) -> int:
        """``total`` requests through a peer keeping ``depth`` in flight (each answer sends
        the next, as the bench's client does); every one answered; returns how many messages
        the server read."""
        options = SocketOptions(max_batch=max_batch)
        server = Counting(global_reactor, interface="127.0.0.1", options=options)
        self.addCleanup(server.stop)
        port = await server.listen(0, lambda request: succeed(request.payload))
        transport = ZmqClientTransport(global_reactor, options=options)
        self.addCleanup(transport.stop)
        client = PeerRPCClient(_Link(f"127.0.0.1:{port}"), transport, reactor=global_reactor)
        left = [total]
        answers: list[Any] = []
        done: Deferred[None] = Deferred()

        def answered(result: Any) -> None:
            answers.append(result)
            if left[0]:
                send()
            elif len(answers) == total:
                done.callback(None)

        def send() -> None:
            left[0] -= 1
            client.request("k", left[0], timeout=10.0).addCallback(answered)

        for _ in range(depth):
            send()
        await done
        self.assertEqual(sorted(answers), list(range(total)))
        return server.messages

    async def test_requests_in_flight_share_messages(self) -> None:
        """With batches, 640 requests 64 in flight take far fewer messages than requests;
        with ``max_batch=1`` each request is a message."""
        self.assertLessEqual(await self.loop(32), 640 // 4)
        self.assertEqual(await self.loop(1), 640)
