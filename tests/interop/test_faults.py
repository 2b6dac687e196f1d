"""Faults with real processes: the applications keep running, the network heals.

- a grape killed and restarted on the same ports under a running service (``twistd
  grenache-service``, announcing through it) and a client (a link in this process): announces
  and lookups recover without restarting either;
- a network split in two and joined again (grapes, services and lookups in network
  namespaces, tests/netns.py): after the join, lookups on both sides find the services of both
  sides; skipped, with the reason, where namespaces cannot be made (not root, no ``ip``);
- a publisher (``grenache pub``) killed and started again: a subscriber (a WebSocket
  ``PeerSub`` in this process) resumes, following the name to the new publisher.

Every wait is for a condition with a deadline; failures print the subprocesses' log tails.
These tests need no Node.js.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from twisted.trial import unittest

from grenache.link import Link
from grenache.peer import PeerRPCClient, PeerSub, Request
from grenache.transports.http import HTTPClientTransport
from grenache.transports.ws import WSSubTransport
from tests import netns
from tests.interop import harness
from tests.interop.harness import (
    GRENACHE_ARGV,
    LOCALHOST,
    TWISTD_ARGV,
    NodeProcess,
    TwistdGrape,
    async_test,
    spawn_python,
    start_twistd_grape,
    wait_for_output,
    wait_until,
)

#: Seconds between a test service's announces (each jittered to 0.5-1.5 times this).
ANNOUNCE_INTERVAL = 0.5

#: Deadline for recovery after a fault (seconds): a few announce intervals and DHT timeouts.
RECOVERY = 60.0


def echo(request: Request) -> dict[str, Any]:
    """The test services' handler: the payload and the serving process's pid."""
    return {"payload": request.payload, "pid": os.getpid()}


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def start_service(
    case: unittest.TestCase,
    name: str,
    grape_url: str,
    *,
    host: str = LOCALHOST,
    prefix: tuple[str, ...] = (),
    label: str = "service",
) -> NodeProcess:
    """``twistd -n grenache-service`` answering ``name`` with :func:`echo`, announcing through
    ``grape_url`` every :data:`ANNOUNCE_INTERVAL` seconds."""
    argv = [
        *TWISTD_ARGV,
        "-n",
        "--pidfile=",
        "grenache-service",
        "--name",
        name,
        "--handler",
        "tests.interop.test_faults:echo",
        "--grape",
        grape_url,
        "--bind",
        host,
        "--announce-interval",
        str(ANNOUNCE_INTERVAL),
    ]
    return spawn_python(case, argv, name=label, prefix=prefix)


async def service_port(proc: NodeProcess) -> int:
    match = await wait_for_output(proc, r"over http on port (\d+)", 60.0)
    return int(match.group(1))


class GrapeRestartTests(unittest.TestCase):
    """A grape killed and restarted on its ports under a running service and client."""

    timeout = 240

    @async_test
    async def test_grape_restarted_under_service_and_link(self) -> None:
        reactor = _reactor()
        grape_a = await start_twistd_grape(self, name="grape-a")
        grape_b = await start_twistd_grape(self, [grape_a.dht_address], name="grape-b")
        service = start_service(self, "faults_restart", grape_a.url)
        port = await service_port(service)

        link = Link(grape_a.url, reactor=reactor)
        self.addCleanup(link.stop)
        transport = HTTPClientTransport(reactor)
        self.addCleanup(transport.stop)
        client = PeerRPCClient(link, transport, reactor=reactor, timeout=5.0)
        processes = [grape_a.process, grape_b.process, service]
        sent = iter(range(10**6))

        async def answered() -> Any:
            n = next(sent)
            reply = await client.request("faults_restart", n)
            return reply == {"payload": n, "pid": service.pid}

        async def lookup_via(url: str) -> Any:
            reply = await harness.grape_request(url, "lookup", "faults_restart")
            return isinstance(reply.json, list) and f"{LOCALHOST}:{port}" in reply.json

        await wait_until(answered, RECOVERY, "the client reaches the service", processes=processes)
        await wait_until(
            lambda: lookup_via(grape_b.url),
            RECOVERY,
            "grape B finds the service announced through grape A",
            processes=processes,
        )

        await grape_a.process.kill()  # a crash, not a shutdown
        # The survivor keeps answering lookups with what it stored.
        await wait_until(
            lambda: lookup_via(grape_b.url),
            RECOVERY,
            "grape B still finds the service while grape A is down",
            processes=processes,
        )

        # Same ports; the bootstrap list names the surviving grape, as a deployment's would.
        restarted = await start_twistd_grape(
            self,
            [grape_b.dht_address],
            dht_port=grape_a.dht_port,
            api_port=grape_a.api_port,
            name="grape-a-restarted",
        )
        processes = [restarted.process, grape_b.process, service]
        await wait_until(
            lambda: lookup_via(restarted.url),
            RECOVERY,
            "the restarted grape finds the service again (its announces resumed)",
            processes=processes,
        )
        await wait_until(
            answered,
            RECOVERY,
            "the client's link reaches the service through the restarted grape",
            processes=processes,
        )
        self.assertFalse(service.has_ended, service.logs())


class PublisherRestartTests(unittest.TestCase):
    """A publisher killed and started again: the subscriber resumes by itself."""

    timeout = 240

    @async_test
    async def test_subscriber_resumes(self) -> None:
        reactor = _reactor()
        grape = await start_twistd_grape(self, name="grape")
        link = Link(grape.url, reactor=reactor)
        self.addCleanup(link.stop)
        sub_transport = WSSubTransport(reactor)
        subscriber = PeerSub(link, sub_transport, reactor=reactor)
        self.addCleanup(subscriber.stop)
        received: list[str] = []
        connected: list[str] = []
        subscriber.add_listener(
            "message", lambda m: received.append(m if isinstance(m, str) else m.decode())
        )
        subscriber.add_listener("connected", lambda name, dest: connected.append(dest))

        async def start_publisher(label: str) -> tuple[NodeProcess, int]:
            proc = spawn_python(
                self, [*GRENACHE_ARGV, "pub", "faults_feed", "-g", grape.url], name=label
            )
            match = await wait_for_output(proc, r'\{"name":.*"port":(\d+).*\}', 60.0)
            line = json.loads(match.group(0))
            return proc, int(line["port"])

        def published(proc: NodeProcess, tag: str) -> Any:
            counter = iter(range(10**6))

            async def probe() -> bool:
                # Publish a fresh line on each poll until one arrives: a publisher only
                # reaches the subscribers connected at that moment.
                proc.transport.write(f"{tag}-{next(counter)}\n".encode())  # type: ignore[union-attr]
                return any(m.startswith(f"{tag}-") for m in received)

            return probe

        pub1, port1 = await start_publisher("pub-1")
        subscribing = subscriber.sub("faults_feed")
        await wait_until(
            published(pub1, "first"),
            RECOVERY,
            "the subscriber gets the first publisher's lines",
            processes=[grape.process, pub1],
        )
        await subscribing

        await pub1.kill()
        pub2, port2 = await start_publisher("pub-2")
        await wait_until(
            published(pub2, "second"),
            RECOVERY,
            "the subscriber resumes with the restarted publisher",
            processes=[grape.process, pub2],
        )
        self.assertEqual(len(connected), 2, connected)
        self.assertTrue(connected[1].endswith(f":{port2}"), (connected, port1, port2))


class NetworkSplitTests(unittest.TestCase):
    """Two halves of a grape network split apart and joined again (network namespaces)."""

    timeout = 600

    #: The grapes' announce max age (ms): short, so that a split visibly empties lookups.
    PEER_MAX_AGE_MS = 10_000

    def setUp(self) -> None:
        reason = netns.unavailable_reason()
        if reason is not None:
            raise unittest.SkipTest(f"network namespaces: {reason}")

    @async_test
    async def test_split_and_join(self) -> None:
        lab = netns.Lab(sides={"a": 2, "b": 2})
        self.addCleanup(lab.delete)
        lab.create()
        grapes: dict[str, TwistdGrape] = {}
        for host in lab.hosts:
            # Every namespace has its own ports, so fixed ones are free; each grape is given
            # all the others to bootstrap from, as a deployment's configuration would.
            others = [f"{h.address}:20001" for h in lab.hosts if h is not host]
            grapes[host.name] = await start_twistd_grape(
                self,
                others,
                host=host.address,
                dht_port=20001,
                api_port=30001,
                name=f"grape-{host.name}",
                prefix=host.exec_prefix,
                extra=("--dpa", str(self.PEER_MAX_AGE_MS)),
            )
        services = {
            side: start_service(
                self,
                f"split_{side}",
                grapes[lab.side(side)[0].name].url,
                host=lab.side(side)[0].address,
                prefix=lab.side(side)[0].exec_prefix,
                label=f"service-{side}",
            )
            for side in ("a", "b")
        }
        ports = {side: await service_port(proc) for side, proc in services.items()}
        processes = [g.process for g in grapes.values()] + list(services.values())
        # Lookups run on the hosts without a service, through their own grapes.
        lookers = {side: lab.side(side)[-1] for side in ("a", "b")}

        def expected(side: str) -> str:
            return f"{lab.side(side)[0].address}:{ports[side]}"

        async def lookup(host: netns.Host, name: str) -> list[str]:
            """``grenache lookup`` run in ``host``'s namespace; [] when it fails."""
            proc = spawn_python(
                None,
                [*GRENACHE_ARGV, "lookup", name, "-g", grapes[host.name].url, "--timeout", "5"],
                name=f"lookup-{host.name}",
                prefix=host.exec_prefix,
            )
            code = await proc.ended
            return (
                re.findall(r"\d+\.\d+\.\d+\.\d+:\d+", proc.stdout_log.tail()) if code == 0 else []
            )

        async def views() -> dict[str, bool]:
            """For each looking host and each service: whether the lookup finds it."""
            seen = {}
            for looker in lookers.values():
                for side in ("a", "b"):
                    found = await lookup(looker, f"split_{side}")
                    seen[f"{looker.name} finds split_{side}"] = expected(side) in found
            return seen

        await wait_until(
            views,
            RECOVERY,
            "before the split, both sides find both services",
            done=lambda seen: all(seen.values()),
            processes=processes,
        )

        lab.split()
        self.assertFalse(lab.reachable(lab.side("a")[0], lab.side("b")[0]))
        self.assertTrue(lab.reachable(lab.side("b")[0], lab.side("b")[1]))
        await wait_until(
            views,
            RECOVERY * 2,
            "during the split, each side finds only its own service (the other's expired)",
            done=lambda seen: (
                seen
                == {
                    "a1 finds split_a": True,
                    "a1 finds split_b": False,
                    "b1 finds split_a": False,
                    "b1 finds split_b": True,
                }
            ),
            processes=processes,
        )

        lab.join()
        await wait_until(
            views,
            RECOVERY * 3,
            "after the join, lookups on both sides find both services",
            done=lambda seen: all(seen.values()),
            processes=processes,
        )
        for proc in processes:
            self.assertFalse(proc.has_ended, proc.logs())
