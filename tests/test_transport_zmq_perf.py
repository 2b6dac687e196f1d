"""Tests for the ZeroMQ transports' throughput measures (grenache.transports.zmq.frames):
the I/O thread's scheduling policy (``SocketOptions.batch_io``)."""

from __future__ import annotations

import os
import sys
from typing import Any

import zmq
from twisted.internet import reactor as _reactor
from twisted.internet.defer import succeed
from twisted.trial import unittest

from grenache.peer import OutgoingRequest, new_rid
from grenache.transports.zmq import SocketOptions, ZmqClientTransport, ZmqServerTransport
from grenache.transports.zmq.frames import batch_io_supported, new_factory

global_reactor: Any = _reactor
_DEFAULT_POLICY = -1  # ZMQ_THREAD_SCHED_POLICY_DFLT: libzmq leaves the thread as it is


def _thread_policies(pid: int) -> dict[str, int]:
    """Each thread's name and scheduling policy (field 41 of /proc/PID/task/TID/stat)."""
    policies = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            text = f.read()
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
