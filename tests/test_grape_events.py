"""The grape's events (Node's ``ready``, ``listening``, ``announce``, ``peer``, ``node``,
``warning``, and ``unannounce``): when each fires and with what, on whole grapes on a
:class:`tests.dhtnet.GrapeReactor` (a Clock and an in-memory UDP network)."""

from __future__ import annotations

from typing import Any

from twisted.internet.protocol import DatagramProtocol
from twisted.trial.unittest import SynchronousTestCase

from grenache.dht.events import EVENTS, Events
from grenache.grape.service import Grape, GrapeConfig
from tests.dhtnet import GrapeReactor, result_of
from tests.test_grape_service import capture_logs


class Recorder:
    """Listens to every event of a grape and keeps ``(event, args)`` in order."""

    def __init__(self, grape: Grape) -> None:
        self.seen: list[tuple[str, tuple[Any, ...]]] = []
        for event in EVENTS:
            grape.add_listener(event, self._listener(event))

    def _listener(self, event: str) -> Any:
        def listener(*args: Any) -> None:
            self.seen.append((event, args))

        return listener

    def of(self, event: str) -> list[tuple[Any, ...]]:
        return [args for name, args in self.seen if name == event]

    def clear(self) -> None:
        self.seen.clear()


class Grapes:
    def __init__(self, case: SynchronousTestCase) -> None:
        self.reactor = GrapeReactor()
        self.grapes: list[Grape] = []
        case.addCleanup(self.stop)

    def grape(self, **config: Any) -> Grape:
        grape = Grape(GrapeConfig(**{"dht_port": 0, "api_port": 0, **config}), self.reactor)
        self.grapes.append(grape)
        return grape

    def start(self, grape: Grape) -> None:
        result_of(self.reactor.network, grape.start())

    def run(self, d: Any) -> Any:
        return result_of(self.reactor.network, d)

    def stop(self) -> None:
        for grape in self.grapes:
            if grape.running:
                grape.stop()
        self.reactor.network.settle()


class EventTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.net = Grapes(self)
        self.first = self.net.grape()
        self.first_events = Recorder(self.first)
        self.net.start(self.first)

    def second(self, **config: Any) -> tuple[Grape, Recorder]:
        grape = self.net.grape(bootstrap=[("127.0.0.1", self.first.dht_port)], **config)
        events = Recorder(grape)
        self.net.start(grape)
        return grape, events

    def test_listening_then_ready_with_no_arguments(self) -> None:
        self.assertEqual(self.first_events.seen, [("listening", ()), ("ready", ())])

    def test_ready_fires_once_even_when_alone(self) -> None:
        self.first.node.bootstrap()
        self.net.reactor.network.settle()
        self.assertEqual(self.first_events.of("ready"), [()])

    def test_node_when_a_node_joins_the_routing_table(self) -> None:
        second, events = self.second()
        self.assertEqual(self.first_events.of("node"), [(f"127.0.0.1:{second.dht_port}",)])
        self.assertEqual(events.of("node"), [(f"127.0.0.1:{self.first.dht_port}",)])
        # A node already known does not fire again.
        self.net.run(second.node.bootstrap())
        self.assertEqual(len(self.first_events.of("node")), 1)

    def test_announce_on_the_storing_grape_with_the_service_name(self) -> None:
        second, events = self.second()
        self.first_events.clear()
        self.assertEqual(self.net.run(second.node.announce("sérvice:ü".encode(), 1337)), 1)
        self.assertEqual(self.first_events.of("announce"), [("sérvice:ü",)])
        self.assertEqual(events.of("announce"), [])  # no host: the announcer stores nothing

    def test_announce_on_the_announcing_grape_with_host(self) -> None:
        _, events = self.second(host="127.0.0.1")
        events.clear()
        self.net.run(self.net.grapes[1].node.announce(b"svc", 1337))
        self.assertEqual(events.of("announce"), [("svc",)])

    def test_announce_on_a_lone_grape(self) -> None:
        self.first_events.clear()
        self.net.run(self.first.node.announce(b"svc", 1337))
        self.assertEqual(self.first_events.of("announce"), [("svc",)])

    def test_peer_for_each_peer_a_lookup_learns(self) -> None:
        second, events = self.second()
        self.net.run(second.node.announce(b"svc", 1337))
        self.net.run(second.node.announce(b"svc", 1338))
        events.clear()
        self.assertEqual(
            sorted(self.net.run(second.node.lookup(b"svc"))), ["127.0.0.1:1337", "127.0.0.1:1338"]
        )
        self.assertEqual(sorted(events.of("peer")), [("127.0.0.1:1337",), ("127.0.0.1:1338",)])
        self.first_events.clear()
        self.net.run(self.first.node.lookup(b"svc"))  # from its own store
        self.assertEqual(
            sorted(self.first_events.of("peer")), [("127.0.0.1:1337",), ("127.0.0.1:1338",)]
        )

    def test_warning_for_a_dropped_datagram(self) -> None:
        probe = DatagramProtocol()
        self.net.reactor.network.attach(probe)
        transport: Any = probe.transport
        transport.write(b"not bencode", ("127.0.0.1", self.first.dht_port))
        self.net.reactor.network.settle()
        self.assertEqual(self.first_events.of("warning"), [("undecodable",)])

    def test_unannounce_on_the_storing_grape(self) -> None:
        second, _ = self.second()
        self.net.run(second.node.announce(b"svc", 1337))
        self.first_events.clear()
        self.assertEqual(self.net.run(second.node.unannounce(b"svc", 1337)), 1)
        self.assertEqual(self.first_events.of("unannounce"), [("svc",)])
        # Nothing left to drop: no second event.
        self.net.run(second.node.unannounce(b"svc", 1337))
        self.assertEqual(self.first_events.of("unannounce"), [("svc",)])

    def test_failing_listener_is_logged_and_the_others_still_run(self) -> None:
        logs = capture_logs(self)
        calls: list[str] = []

        def broken(name: str) -> None:
            raise RuntimeError("listener bug")

        self.first.add_listener("announce", broken)
        self.first.add_listener("announce", calls.append)
        self.assertEqual(self.net.run(self.first.node.announce(b"svc", 1337)), 1)
        self.assertEqual(calls, ["svc"])
        self.assertTrue(any("announce listener" in line for line in logs), logs)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        # The grape still serves.
        self.assertEqual(self.net.run(self.first.node.lookup(b"svc")), ["127.0.0.1:1337"])

    def test_remove_listener(self) -> None:
        calls: list[str] = []
        self.first.add_listener("announce", calls.append)
        self.first.remove_listener("announce", calls.append)
        self.net.run(self.first.node.announce(b"svc", 1337))
        self.assertEqual(calls, [])
        self.assertRaises(ValueError, self.first.remove_listener, "announce", calls.append)

    def test_unknown_event_and_non_callable(self) -> None:
        error = self.assertRaises(ValueError, self.first.add_listener, "peers", print)
        self.assertIn("'peers'", str(error))
        self.assertIn("ready", str(error))
        self.assertRaises(TypeError, self.first.add_listener, "peer", "not a function")


class EventsTests(SynchronousTestCase):
    def test_only_events_with_listeners_are_active(self) -> None:
        events = Events()
        self.assertEqual(events.active, {})
        events.add_listener("peer", print)
        self.assertEqual(list(events.active), ["peer"])
        events.remove_listener("peer", print)
        self.assertEqual(events.active, {})
        events.emit("peer", "127.0.0.1:1")  # no listener: nothing happens

    def test_listeners_called_in_order_and_may_remove_themselves(self) -> None:
        events = Events()
        calls: list[str] = []

        def once(value: str) -> None:
            calls.append("once " + value)
            events.remove_listener("node", once)

        events.add_listener("node", once)
        events.add_listener("node", lambda value: calls.append("always " + value))
        events.emit("node", "a")
        events.emit("node", "b")
        self.assertEqual(calls, ["once a", "always a", "always b"])
