"""grenache.speedups.reactor_poll: the lean epoll loop does what Twisted's loop does.

Each behaviour is observed in a fresh interpreter on a real epoll reactor, once on Twisted's
own loop and once on the lean one, and the two must agree: data flows both ways, a legacy log
event made while a socket is handled carries that socket's ``logPrefix()`` as its system, and
an exception raised by a protocol is logged and drops that connection only.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial import unittest

from grenache.speedups import reactor_poll

PROGRAM = textwrap.dedent(
    """
    import json, sys
    from twisted.internet import epollreactor
    epollreactor.install()
    from twisted.internet import reactor, protocol
    from twisted.python import log
    from grenache.speedups import reactor_poll

    lean = sys.argv[1] == "lean"
    seen = {"installed": reactor_poll.install(reactor) if lean else False, "systems": [],
            "errors": 0, "echoed": b"", "lost": 0}
    seen["is_installed"] = reactor_poll.installed(reactor)

    def observe(event):
        if event.get("isError"):
            seen["errors"] += 1
            seen["systems"].append("error:" + str(event.get("system")))
        elif event.get("message") == ("in dataReceived",):
            seen["systems"].append(str(event.get("system")))
    log.addObserver(observe)

    class Server(protocol.Protocol):
        def logPrefix(self):
            return "EchoServer"
        def dataReceived(self, data):
            log.msg("in dataReceived")
            if data == b"boom":
                raise ValueError("boom")
            self.transport.write(data)

    class Client(protocol.Protocol):
        def connectionMade(self):
            self.transport.write(b"hello")
        def dataReceived(self, data):
            seen["echoed"] += data
            if seen["echoed"] == b"hello":
                protocol.ClientCreator(reactor, Boom).connectTCP("127.0.0.1", port.getHost().port)
    class Boom(protocol.Protocol):
        def connectionMade(self):
            self.transport.write(b"boom")
        def connectionLost(self, reason):
            seen["lost"] += 1
            reactor.stop()

    f = protocol.Factory.forProtocol(Server)
    port = reactor.listenTCP(0, f, interface="127.0.0.1")
    protocol.ClientCreator(reactor, Client).connectTCP("127.0.0.1", port.getHost().port)
    reactor.callLater(20, reactor.stop)
    reactor.run(installSignalHandlers=False)
    seen["echoed"] = seen["echoed"].decode()
    print(json.dumps(seen))
    """
)


def observe(mode: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        raise AssertionError(f"the program failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


class BothLoopsTests(unittest.TestCase):
    def test_lean_loop_behaves_as_twisted_loop(self) -> None:
        stock, lean = observe("stock"), observe("lean")
        self.assertEqual((stock["installed"], stock["is_installed"]), (False, False))
        self.assertEqual((lean["installed"], lean["is_installed"]), (True, True))
        expected = {
            # the transport's prefix: the protocol's, connection number, peer
            "systems": [
                "EchoServer,0,127.0.0.1",
                "EchoServer,1,127.0.0.1",
                "error:EchoServer,1,127.0.0.1",
            ],
            "errors": 1,
            "echoed": "hello",
            "lost": 1,
        }
        for result in (stock, lean):
            self.assertEqual({k: result[k] for k in expected}, expected, result)


class AvailabilityTests(unittest.TestCase):
    def test_other_reactors_keep_their_loop(self) -> None:
        for fake in (Clock(), MemoryReactorClock()):
            self.assertFalse(reactor_poll.available(fake))
            self.assertFalse(reactor_poll.install(fake))
            self.assertFalse(reactor_poll.installed(fake))
            self.assertNotIn("doIteration", vars(fake))

    def test_install_is_idempotent_and_undone(self) -> None:
        from twisted.internet.epollreactor import EPollReactor

        reactor = EPollReactor()
        self.addCleanup(reactor._poller.close)
        self.assertTrue(reactor_poll.available(reactor))
        self.assertTrue(reactor_poll.install(reactor))
        first = reactor.doIteration
        self.assertTrue(reactor_poll.install(reactor))
        self.assertIs(reactor.doIteration, first)
        reactor_poll.uninstall(reactor)
        self.assertFalse(reactor_poll.installed(reactor))
        self.assertEqual(reactor.doIteration, reactor.doPoll)

    def test_missing_internals_fall_back(self) -> None:
        from twisted.internet.epollreactor import EPollReactor

        reactor = EPollReactor()
        self.addCleanup(reactor._poller.close)
        reactor._doReadOrWrite = None  # as a Twisted without it would look
        self.assertFalse(reactor_poll.available(reactor))
        self.assertFalse(reactor_poll.install(reactor))


class UnderTwistdTests(unittest.TestCase):
    def test_only_options_parsed_by_twistd_install(self) -> None:
        from twisted.internet.epollreactor import EPollReactor

        from grenache.grape.tap import Options

        reactor = EPollReactor()
        self.addCleanup(reactor._poller.close)
        options = Options()
        options.parseOptions([])
        self.assertFalse(reactor_poll.install_under_twistd(options, reactor))
        self.assertFalse(reactor_poll.installed(reactor))
        options.parent = object()  # what twistd's ServerOptions does for its subcommand
        self.assertTrue(reactor_poll.install_under_twistd(options, reactor))
        self.assertTrue(reactor_poll.installed(reactor))

    def test_twistd_grape_runs_on_the_lean_loop(self) -> None:
        """The plugin as twistd runs it: the reactor's poll loop is replaced."""
        program = textwrap.dedent(
            """
            import sys
            from twisted.scripts import twistd
            from twisted.application import app
            config = twistd.ServerOptions()
            config.parseOptions(["-n", "--pidfile=", "grape", "--dp", "0", "--aph", "0"])
            plugin = config.loadedPlugins[config.subCommand]
            plugin.makeService(config.subOptions)
            from twisted.internet import reactor
            from grenache.speedups import reactor_poll
            print(reactor_poll.installed(reactor))
            """
        )
        done = subprocess.run(
            [sys.executable, "-c", program], capture_output=True, text=True, timeout=120
        )
        self.assertEqual(done.stdout.split()[-1:], ["True"], done.stderr[-2000:])
