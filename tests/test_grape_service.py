"""The grape as a Twisted service: children, endpoint descriptions (TCP, IPv6, TLS), a taken
port, bootstrap by host name (resolved at start and on every retry) and the operator's logs.

Deterministic tests run whole grapes on :class:`tests.dhtnet.GrapeReactor` (a Clock, UDP on a
fake network, a scripted resolver); the others use real sockets on ports the OS picks.
"""

from __future__ import annotations

import json
import socket
from io import BytesIO
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import DNSLookupError
from twisted.internet.ssl import Certificate
from twisted.internet.task import deferLater
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    FileBodyProducer,
    HTTPConnectionPool,
    readBody,
)
from twisted.web.http_headers import Headers

from grenache.grape.service import Grape, GrapeConfig, ListenError
from tests.dhtnet import GrapeReactor
from tests.support import make_pki, write_identity


def capture_logs(case: SynchronousTestCase, namespace: str = "grenache") -> list[str]:
    """The text of every event logged from ``namespace`` modules while the test runs."""
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if str(event.get("log_namespace", "")).startswith(namespace):
            lines.append(str(formatEvent(event)))

    globalLogPublisher.addObserver(observe)
    case.addCleanup(globalLogPublisher.removeObserver, observe)
    return lines


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


# --- deterministic: a Clock, a fake network and a scripted resolver ---------------------------


class Network:
    """Grapes on one :class:`GrapeReactor`, stopped at cleanup."""

    def __init__(self, case: SynchronousTestCase) -> None:
        self.reactor = GrapeReactor()
        self.grapes: list[Grape] = []
        case.addCleanup(self.stop)

    def grape(self, **config: Any) -> Grape:
        grape = Grape(GrapeConfig(**{"dht_port": 0, "api_port": 0, **config}), self.reactor)
        self.grapes.append(grape)
        return grape

    def settle(self) -> None:
        self.reactor.network.settle()

    def stop(self) -> None:
        for grape in self.grapes:
            if grape.running:
                grape.stop()
        self.settle()


class BootstrapByNameTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.net = Network(self)
        self.logs = capture_logs(self)
        self.first = self.net.grape()
        self.successResultOf(self.first.start())

    def test_resolved_at_start_and_ready_after_the_walk(self) -> None:
        second = self.net.grape(bootstrap=[("grape-1", self.first.dht_port)])
        started = second.start()
        [(name, resolution)] = self.net.reactor.resolutions
        self.assertEqual(name, "grape-1")
        self.assertNoResult(started)
        resolution.callback("127.0.0.1")
        self.net.settle()
        self.successResultOf(started)
        self.assertEqual([c.port for c in second.node.routing.to_list()], [self.first.dht_port])
        self.assertIn(
            f"bootstrap succeeded: grape-1:{self.first.dht_port} "
            f"(127.0.0.1:{self.first.dht_port}) answered; 1 DHT neighbours",
            self.logs,
        )

    def test_unresolvable_name_is_a_warning_and_retried(self) -> None:
        second = self.net.grape(bootstrap=[("grape-1", self.first.dht_port)], bootstrap_retry=30)
        started = second.start()
        self.net.reactor.resolutions.pop()[1].errback(DNSLookupError("address 'grape-1' not found"))
        self.net.settle()
        self.successResultOf(started)  # the grape runs alone, it did not crash
        self.assertTrue(second.running)
        self.assertEqual(len(second.node.routing), 0)
        warnings = [line for line in self.logs if "grape-1" in line]
        self.assertEqual(len(warnings), 1, warnings)
        self.assertIn("not resolved", warnings[0])
        self.assertNotIn("\n", warnings[0])

        # The maintenance timer: still alone after 30 s, so a warning and a new resolution.
        self.net.reactor.advance(29)
        self.assertEqual(self.net.reactor.resolutions, [])
        self.net.reactor.advance(1)
        self.assertIn(
            f"no DHT neighbours although bootstrap nodes were given "
            f"(grape-1:{self.first.dht_port}): retrying bootstrap",
            self.logs,
        )
        [(name, resolution)] = self.net.reactor.resolutions
        self.assertEqual(name, "grape-1")
        resolution.callback("127.0.0.1")
        self.net.settle()
        self.assertEqual(len(second.node.routing), 1)

        # Not alone any more: the timer neither warns nor resolves.
        self.net.reactor.resolutions.clear()
        before = len(self.logs)
        self.net.reactor.advance(30)
        self.assertEqual(self.net.reactor.resolutions, [])
        self.assertFalse(any("retrying" in line for line in self.logs[before:]))

    def test_bootstrap_node_that_does_not_answer(self) -> None:
        second = self.net.grape(bootstrap=[("127.0.0.1", 9)])
        started = second.start()
        self.net.settle()
        self.net.reactor.advance(3)  # the KRPC timeout
        self.net.settle()
        self.successResultOf(started)
        self.assertIn("bootstrap failed: no answer from 127.0.0.1:9", self.logs)
        self.assertEqual(self.net.reactor.resolutions, [])  # an address needs no lookup

    def test_silent_bootstrap_node_while_a_neighbour_found_us(self) -> None:
        """The other grape bootstrapped from this one meanwhile: not a failure, not alone."""
        second = self.net.grape(bootstrap=[("127.0.0.1", 9)])
        started = second.start()
        self.net.settle()
        third = self.net.grape(bootstrap=[("127.0.0.1", second.dht_port)])
        third_started = third.start()
        self.net.settle()
        self.successResultOf(third_started)
        self.net.reactor.advance(3)  # the KRPC timeout of second's own bootstrap
        self.net.settle()
        self.successResultOf(started)
        self.assertFalse(any("bootstrap failed" in line for line in self.logs), self.logs)
        self.assertIn(
            "bootstrap: no answer from 127.0.0.1:9, but 1 DHT neighbours known", self.logs
        )

    def test_ipv6_bootstrap_node_is_a_warning(self) -> None:
        second = self.net.grape(bootstrap=[("::1", 20001)])
        self.successResultOf(second.start())
        self.assertIn(
            "bootstrap node [::1]:20001 is IPv6 but the DHT is IPv4-only: not used", self.logs
        )
        self.net.settle()
        self.assertEqual(self.net.reactor.network.sent, [])

    def test_maintenance_failure_is_logged_and_the_timer_goes_on(self) -> None:
        second = self.net.grape(bootstrap=[("127.0.0.1", 9)], bootstrap_retry=10)
        started = second.start()
        self.net.settle()
        self.net.reactor.advance(3)  # the KRPC timeout
        self.successResultOf(started)
        calls: list[int] = []

        def broken() -> bool:
            calls.append(1)
            raise ZeroDivisionError()

        second.node.check_alone = broken  # type: ignore[method-assign]
        self.net.reactor.advance(10)
        self.net.reactor.advance(10)
        self.assertEqual(len(calls), 2)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 2)
        self.assertTrue(second.getServiceNamed("maintenance").running)

    def test_listening_log_line(self) -> None:
        grape = self.net.grape(api_port="tcp:7000:interface=127.0.0.1", ws_port=7001)
        self.successResultOf(grape.start())
        [line] = [
            line for line in self.logs if line.startswith(f"grape {grape.node.node_id.hex()}")
        ]
        self.assertEqual(
            line,
            f"grape {grape.node.node_id.hex()} listening: DHT udp 127.0.0.1:{grape.dht_port}, "
            "HTTP API tcp 0.0.0.0:7000, WebSocket API tcp 0.0.0.0:7001",
        )


class NeighbourLogTests(SynchronousTestCase):
    def test_logged_when_it_changes_materially(self) -> None:
        net = Network(self)
        logs = capture_logs(self, "grenache.dht")
        hub = net.grape()
        self.successResultOf(hub.start())
        for _ in range(9):
            grape = net.grape(bootstrap=[("127.0.0.1", hub.dht_port)])
            grape.start()
            net.settle()
        self.assertEqual(len(hub.node.routing), 9)
        counts = [line for line in logs if "DHT neighbours (was" in line]
        # Each grape logs its own count; counts only ever grow one node at a time, so a line
        # at each doubling and none in between.
        self.assertIn("1 DHT neighbours (was 0)", counts)
        self.assertIn("2 DHT neighbours (was 1)", counts)
        self.assertIn("4 DHT neighbours (was 2)", counts)
        self.assertIn("8 DHT neighbours (was 4)", counts)
        self.assertFalse(any(line.startswith(("3 ", "5 ", "6 ", "7 ", "9 ")) for line in counts))

        # Every neighbour vanishes: the liveness sweep finds them dead, down to none.
        for grape in net.grapes[1:]:
            net.reactor.network.detach(("127.0.0.1", grape.dht_port))
        net.reactor.network.run(hub.config.node_liveness + 1200, step=5)
        self.assertEqual(len(hub.node.routing), 0)
        self.assertIn("no DHT neighbours left (had 1)", logs)
        self.assertIn("4 DHT neighbours (was 8)", logs)  # 9 was no doubling of 8: not logged


# --- real sockets ------------------------------------------------------------------------------


class RealGrapeTests(TestCase):
    async def grape(self, **config: Any) -> Grape:
        grape = Grape(GrapeConfig(**{"dht_port": 0, "api_port": 0, **config}), reactor)
        await grape.start()
        self.addCleanup(grape.stop)
        return grape

    def pool(self) -> HTTPConnectionPool:
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        return pool

    async def post(self, url: str, data: Any, agent: Any = None) -> Any:
        """POST a grape API request (with an Agent: treq does not take ``[::1]`` URLs)."""
        agent = agent if agent is not None else Agent(reactor, pool=self.pool())
        body = FileBodyProducer(BytesIO(json.dumps({"rid": "r", "data": data}).encode()))
        response = await agent.request(b"POST", url.encode("ascii"), Headers(), body)
        self.assertEqual(response.code, 200)
        return json.loads(await readBody(response))

    def test_children(self) -> None:
        grape = Grape(GrapeConfig(dht_port=0, api_port=0, ws_port=0), reactor)
        self.assertEqual([s.name for s in grape], ["dht", "http-api", "ws-api", "maintenance"])  # type: ignore[attr-defined]
        self.assertIs(grape.getServiceNamed("maintenance").clock, reactor)  # type: ignore[attr-defined]

    async def test_description_on_loopback(self) -> None:
        logs = capture_logs(self, "grenache.grape")
        grape = await self.grape(
            api_port="tcp:0:interface=127.0.0.1", ws_port="tcp:0:interface=127.0.0.1"
        )
        self.assertEqual(grape.api_url, f"http://127.0.0.1:{grape.api_port}")
        self.assertEqual(grape.ws_url, f"ws://127.0.0.1:{grape.ws_port}")
        self.assertEqual(await self.post(grape.api_url + "/announce", ["svc", 1337]), 1)
        self.assertEqual(await self.post(grape.api_url + "/lookup", "svc"), ["127.0.0.1:1337"])
        self.assertTrue(
            any(
                f"HTTP API tcp 127.0.0.1:{grape.api_port}, WebSocket API tcp 127.0.0.1:"
                f"{grape.ws_port}" in line
                for line in logs
            ),
            logs,
        )

    async def test_endpoint_object(self) -> None:
        grape = await self.grape(api_port=TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"))
        self.assertEqual(await self.post(grape.api_url + "/lookup", "svc"), [])

    async def test_ipv6_bind_stores_announces_as_bracketed_text(self) -> None:
        if not ipv6_loopback():
            raise SkipTest("no IPv6 loopback (::1) on this machine")
        grape = await self.grape(host="::1", ws_port="tcp6:0:interface=\\:\\:1")
        self.assertEqual(grape.api_url, f"http://[::1]:{grape.api_port}")
        self.assertEqual(grape.ws_url, f"ws://[::1]:{grape.ws_port}")
        self.assertEqual(await self.post(grape.api_url + "/announce", ["svc", 1337]), 1)
        self.assertEqual(await self.post(grape.api_url + "/lookup", "svc"), ["[::1]:1337"])

    async def test_tcp6_description(self) -> None:
        if not ipv6_loopback():
            raise SkipTest("no IPv6 loopback (::1) on this machine")
        grape = await self.grape(api_port="tcp6:0:interface=\\:\\:1")
        self.assertEqual(grape.api_url, f"http://[::1]:{grape.api_port}")
        self.assertEqual(await self.post(grape.api_url + "/lookup", "svc"), [])

    async def test_tls_description(self) -> None:
        pki = make_pki()
        directory = Path(self.mktemp())
        directory.mkdir()
        cert, key = write_identity(pki.server, directory, "grape")
        logs = capture_logs(self, "grenache.grape")
        grape = await self.grape(
            api_port=f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
        )
        self.assertEqual(grape.api_url, f"https://127.0.0.1:{grape.api_port}")
        self.assertTrue(any(f"HTTP API tls 127.0.0.1:{grape.api_port}" in x for x in logs), logs)
        policy = BrowserLikePolicyForHTTPS(trustRoot=Certificate.loadPEM(pki.ca.cert))
        agent = Agent(reactor, contextFactory=policy, pool=self.pool())
        self.assertEqual(await self.post(grape.api_url + "/announce", ["svc", 1337], agent), 1)
        self.assertEqual(
            await self.post(grape.api_url + "/lookup", "svc", agent), ["127.0.0.1:1337"]
        )

    async def test_taken_port_fails_start_and_leaves_nothing_bound(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("", 0))
            dht = probe.getsockname()[1]
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            port = taken.getsockname()[1]
            grape = Grape(GrapeConfig(dht_port=dht, api_port=port, host="127.0.0.1"), reactor)
            error = await self.assertFailure(grape.start(), ListenError)
        self.assertEqual(
            str(error), f"cannot listen on HTTP API port {port}: Address already in use"
        )
        self.assertFalse(grape.running)
        await deferLater(reactor, 0, lambda: None)  # UDP ports close on the next reactor turn
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
            again.bind(("", dht))

    async def test_bootstrap_by_localhost(self) -> None:
        first = await self.grape(host="127.0.0.1")
        second = await self.grape(host="127.0.0.1", bootstrap=[("localhost", first.dht_port)])
        self.assertEqual(
            [(c.host, c.port) for c in second.node.routing.to_list()],
            [("127.0.0.1", first.dht_port)],
        )
