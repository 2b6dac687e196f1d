"""Tests for grenache.testing: the in-memory network, its grapes, transports and faults.

The example of docs/testing.rst (examples/testing_example.py) runs here as it is written.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from examples.testing_example import GreeterTests, TickerTests
from grenache import errors
from grenache.dht.krpc import KRPCProtocol
from grenache.peer import PeerPub, PeerRPCClient, PeerRPCServer, PeerSub, Reply, Request
from grenache.peer.request import OutgoingRequest, new_rid
from grenache.testing import MemoryNetwork, MemoryUDPNetwork

__all__ = ["GreeterTests", "TickerTests"]  # the documented example, run as written


class Kit(SynchronousTestCase):
    """A network with a lone grape and a link to it."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.network = MemoryNetwork(self.clock)
        self.grape = self.network.grape()
        self.link = self.network.link(self.grape)

    def serve(self, handler: Any, name: str = "svc", **options: Any) -> PeerRPCServer:
        server = PeerRPCServer(self.link, self.network.server_transport(), handler, **options)
        self.successResultOf(server.listen())
        self.successResultOf(server.announce(name))
        return server

    def client(self, **options: Any) -> PeerRPCClient:
        options.setdefault("timeout", 5)
        transport = self.network.client_transport()
        return PeerRPCClient(self.link, transport, reactor=self.clock, **options)


class RPCEncodingTests(Kit):
    def test_request_as_the_handler_sees_it(self) -> None:
        seen: list[Request] = []
        server = self.serve(lambda r: seen.append(r) or "ok")
        transport = self.network.client_transport(peer_certificate="AA:BB")
        rid = new_rid()
        d = transport.request(server.transport.address, OutgoingRequest(rid, "svc", {1: (2,)}, 5))  # type: ignore[attr-defined]
        self.assertEqual(self.successResultOf(d), "ok")
        [request] = seen
        self.assertEqual((request.rid, request.key), (rid, "svc"))
        self.assertEqual(request.payload, {"1": [2]}, "the JSON round trip, as on the wire")
        self.assertEqual(request.peer_certificate, "AA:BB")
        self.assertEqual(dict(request.meta), {})
        self.assertEqual(transport.sent, [(server.transport.address, transport.sent[0][1])])  # type: ignore[attr-defined]

    def test_results_cross_as_json(self) -> None:
        self.serve(lambda r: {"float": 1.0, "tuple": (1, 2), "text": "é"})
        result = self.successResultOf(self.client().request("svc", None))
        self.assertEqual(result, {"float": 1, "tuple": [1, 2], "text": "é"})
        self.assertIsInstance(result["float"], int, "Node writes 1.0 as 1")

    def test_payload_that_cannot_travel(self) -> None:
        self.serve(lambda r: "unreached")
        client = self.client()
        self.failureResultOf(client.request("svc", object()), TypeError)
        self.assertEqual(self.network.listener(client.transport.sent[0][0]).requests, [])  # type: ignore[attr-defined,union-attr]

    def test_result_that_cannot_travel(self) -> None:
        """The server answers the encoding error's message, as the WebSocket server does."""
        self.serve(lambda r: {"set": {1}})
        f = self.failureResultOf(self.client().request("svc", None), errors.RemoteError)
        self.assertIn("not JSON serializable", f.value.message)
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)

    def test_errors_map_as_on_the_wire(self) -> None:
        def handler(request: Request) -> Any:
            if request.payload == "raise":
                raise errors.GrapeLookupInvalid()
            if request.payload == "reply":
                return Reply("ERR_PARTIAL", {"done": 3})
            if request.payload == "empty":
                raise RuntimeError("")
            return Reply(None, "fine")

        self.serve(handler)
        client = self.client()
        f = self.failureResultOf(client.request("svc", "raise"), errors.RemoteError)
        self.assertEqual((f.value.message, f.value.result), ("ERR_GRAPE_LOOKUP", None))
        f = self.failureResultOf(client.request("svc", "reply"), errors.RemoteError)
        self.assertEqual((f.value.message, f.value.result), ("ERR_PARTIAL", {"done": 3}))
        f = self.failureResultOf(client.request("svc", "empty"), errors.RemoteError)
        self.assertEqual(f.value.message, "RuntimeError")
        self.assertEqual(self.successResultOf(client.request("svc", "ok")), "fine")
        self.flushLoggedErrors()

    def test_request_too_large(self) -> None:
        self.serve(lambda r: 1)
        transport = self.network.client_transport(max_message_size=100)
        client = PeerRPCClient(self.link, transport, reactor=self.clock)
        self.failureResultOf(client.request("svc", "x" * 100), errors.RequestTooLarge)
        self.assertEqual(self.successResultOf(client.request("svc", "x")), 1)


class RPCTimeTests(Kit):
    def test_reply_waits_for_the_handler(self) -> None:
        gate: Deferred[str] = Deferred()
        self.serve(lambda r: gate)
        d = self.client().request("svc", None)
        self.assertNoResult(d)
        gate.callback("late")
        self.assertEqual(self.successResultOf(d), "late")

    def test_timeout_and_retries_on_the_clock(self) -> None:
        server = self.serve(lambda r: "ok")
        self.network.blackhole(server.port)
        client = self.client()
        d = client.request("svc", None, retry=2)
        self.clock.advance(4.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertNoResult(d)  # the second attempt
        self.assertEqual(len(client.transport.sent), 2)  # type: ignore[attr-defined]
        self.clock.advance(5)
        self.failureResultOf(d, errors.RequestTimeout)
        self.assertEqual(server.transport.requests, [])  # type: ignore[attr-defined]
        self.network.restore(server.port)
        self.assertEqual(self.successResultOf(client.request("svc", None)), "ok")

    def test_late_reply_after_timeout_is_dropped(self) -> None:
        gate: Deferred[str] = Deferred()
        self.serve(lambda r: gate, handler_timeout=None)
        client = self.client()
        d = client.request("svc", None)
        self.clock.advance(5)
        self.failureResultOf(d, errors.RequestTimeout)
        gate.callback("too late")
        self.assertEqual(client.transport.pending, 0)  # type: ignore[attr-defined]

    def test_handler_deadline_runs_on_the_clock(self) -> None:
        self.serve(lambda r: Deferred(), handler_timeout=3)
        d = self.client(timeout=10).request("svc", None)
        self.clock.advance(3)
        f = self.failureResultOf(d, errors.RemoteError)
        self.assertEqual(f.value.message, "ERR_HANDLER_TIMEOUT")
        self.flushLoggedErrors(errors.HandlerTimeout)

    def test_cancel(self) -> None:
        gate: Deferred[str] = Deferred()
        self.serve(lambda r: gate, handler_timeout=None)
        client = self.client()
        d = client.request("svc", None)
        d.cancel()
        self.failureResultOf(d)
        gate.callback("nobody listens")
        self.assertEqual(self.clock.getDelayedCalls()[-1].getTime() > 5, True)  # announce loop only
        self.assertEqual(client.transport.pending, 0)  # type: ignore[attr-defined]


class RPCFaultTests(Kit):
    def test_refused_and_nobody_there(self) -> None:
        transport = self.network.client_transport()
        for dest in ("127.0.0.1:45000", "10.0.0.1:1", "not an address"):
            f = self.failureResultOf(
                transport.request(dest, OutgoingRequest("r", "k", None, 1)),
                errors.DestinationUnreachable,
            )
            self.assertIn("refused", f.value.message)
        server = self.serve(lambda r: 1)
        self.network.refuse(server.port)
        self.failureResultOf(self.client().request("svc", None), errors.DestinationUnreachable)
        self.network.restore(f"localhost:{server.port}")
        self.assertEqual(self.successResultOf(self.client().request("svc", None)), 1)

    def test_refused_destination_is_set_aside(self) -> None:
        first = self.serve(lambda r: "first")
        self.serve(lambda r: "second")
        self.network.refuse(first.port)
        client = self.client(rng=random.Random(0))
        answers = {self.successResultOf(client.request("svc", None)) for _ in range(10)}
        self.assertEqual(answers, {"second"})
        self.assertTrue(client.is_set_aside(first.transport.address))  # type: ignore[attr-defined]

    def test_answer_error(self) -> None:
        server = self.serve(lambda r: "never")
        self.network.answer_error(server.port, "ERR_BUSY", {"retry_in": 3})
        f = self.failureResultOf(self.client().request("svc", None), errors.RemoteError)
        self.assertEqual((f.value.message, f.value.result), ("ERR_BUSY", {"retry_in": 3}))
        self.assertEqual(server.transport.requests, [])  # type: ignore[attr-defined]
        self.assertIsNotNone(self.network.fault(server.port))

    def test_drop_connections_and_stop(self) -> None:
        gate: Deferred[str] = Deferred()
        server = self.serve(lambda r: gate, handler_timeout=None)
        client = self.client()
        d = client.request("svc", None)
        self.network.drop_connections(server.port)
        self.failureResultOf(d, errors.TransportClosed)
        d = client.request("svc", None)
        self.successResultOf(server.stop())
        self.failureResultOf(d, errors.TransportClosed)
        self.failureResultOf(client.request("svc", None), errors.DestinationUnreachable)

    def test_blackholed_requests_dropped(self) -> None:
        server = self.serve(lambda r: 1)
        self.network.blackhole(server.port)
        d = self.client().request("svc", None)
        self.network.drop_connections(server.port)
        self.failureResultOf(d, errors.TransportClosed)

    def test_client_stop(self) -> None:
        self.serve(lambda r: Deferred(), handler_timeout=None)
        client = self.client()
        d = client.request("svc", None)
        self.successResultOf(client.stop())
        self.failureResultOf(d, errors.TransportClosed)
        self.failureResultOf(
            client.transport.request("x:1", OutgoingRequest("r", "k", None, 1)),
            errors.TransportClosed,
        )


class ListenTests(Kit):
    def test_ports(self) -> None:
        transport = self.network.server_transport()
        self.assertEqual(self.successResultOf(transport.listen("tcp:41000", lambda r: r)), 41000)
        self.assertEqual(transport.address, "127.0.0.1:41000")
        self.failureResultOf(transport.listen(0, lambda r: r), RuntimeError)
        taken = self.network.server_transport()
        self.failureResultOf(taken.listen(41000, lambda r: r), CannotListenError)
        self.failureResultOf(self.network.pub_transport().listen("41000"), CannotListenError)
        self.failureResultOf(taken.listen("unix:/tmp/x.sock", lambda r: r), ValueError)
        self.successResultOf(transport.stop())
        self.assertEqual(self.successResultOf(taken.listen(41000, lambda r: r)), 41000)
        self.assertEqual(self.grape.api_port, 30001)
        self.assertEqual(self.network.server_transport().listen(0, print).result, 40001)


class GrapeTests(Kit):
    def test_real_grape_api(self) -> None:
        """The link's requests reach the grape API as bytes: its answers are the real ones."""
        self.assertEqual(self.successResultOf(self.link.announce("svc", 5000)), 1)
        self.assertEqual(self.successResultOf(self.link.lookup("svc")), ["127.0.0.1:5000"])
        f = self.failureResultOf(self.link.announce("svc", 70000), errors.GrapeReplyError)
        self.assertEqual(f.value.message, "ERR_GRAPE_SERVICE_PORT")
        key = self.successResultOf(self.link.put("stored"))
        item = self.successResultOf(self.link.get(key))
        self.assertEqual(item.v if item else None, "stored")  # type: ignore[union-attr]
        self.assertEqual(
            [op for op, _ in self.grape.requests], ["announce", "lookup", "announce", "put", "get"]
        )

    def test_grape_down_and_back(self) -> None:
        self.successResultOf(self.link.start_announcing("svc", 5000))
        self.grape.stop()
        self.assertFalse(self.grape.running)
        f = self.failureResultOf(self.link.lookup("svc", cache=False), errors.GrapeUnreachable)
        self.assertIn(self.grape.url, f.value.message)
        self.grape.start()
        # A restarted grape has forgotten everything; the announcing loop puts it back.
        self.failureResultOf(self.link.lookup("svc", cache=False), errors.LookupEmpty)
        self.network.run(60)
        self.assertEqual(
            self.successResultOf(self.link.lookup("svc", cache=False)), ["127.0.0.1:5000"]
        )

    def test_grape_faults(self) -> None:
        self.network.blackhole(self.grape.address)
        d = self.link.lookup("svc")
        self.clock.pump([2.5, 2.5, 2.4])  # three attempts of request_timeout each
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.failureResultOf(d, errors.RequestTimeout)
        self.network.answer_error(self.grape.address, "ERR_OVERLOADED")
        f = self.failureResultOf(self.link.lookup("svc"), errors.GrapeReplyError)
        self.assertEqual((f.value.message, f.value.status), ("ERR_OVERLOADED", 500))
        self.network.refuse(self.grape.address)
        self.failureResultOf(self.link.lookup("svc"), errors.GrapeUnreachable)
        self.network.restore(self.grape.address)
        self.failureResultOf(self.link.lookup("svc"), errors.LookupEmpty)

    def test_announce_expiry_follows_peer_max_age(self) -> None:
        """A grape keeps a peer 2/3 to 4/3 of peer_max_age after its last announce (the
        record cache's two generations, as Node's grape)."""
        grape = self.network.grape(peer_max_age=30)
        link = self.network.link(grape, lookup_cache_ttl=0)
        self.successResultOf(link.announce("svc", 5000))
        self.network.run(19)
        self.assertEqual(self.successResultOf(link.lookup("svc")), ["127.0.0.1:5000"])
        self.network.run(41 - 19)
        self.failureResultOf(link.lookup("svc"), errors.LookupEmpty)

    def test_default_link_makes_a_grape(self) -> None:
        network = MemoryNetwork(Clock())
        link = network.link()
        self.assertEqual(len(network.grape_list), 1)
        self.assertEqual(link.grape, network.grape_list[0].url)
        self.assertEqual(network.link().grape, link.grape)


class DHTTests(SynchronousTestCase):
    def test_grapes_share_announces(self) -> None:
        clock = Clock()
        network = MemoryNetwork(clock)
        grapes = network.grapes(3)
        self.assertEqual([len(g.node.routing) for g in grapes], [2, 2, 2])  # type: ignore[union-attr]
        first, last = network.link(grapes[0]), network.link(grapes[2])
        d = first.announce("svc", 5000)
        network.settle()
        self.assertEqual(self.successResultOf(d), 2)
        d = last.lookup("svc")
        network.settle()
        self.assertEqual(self.successResultOf(d), ["127.0.0.1:5000"])
        grapes[0].stop()
        # The walk waits for the stopped grape's KRPC timeout: longer than a link's default
        # request timeout, as it would be on a real network.
        d = network.link(grapes[1], request_timeout=10).lookup("svc")
        network.run(10)
        self.assertEqual(self.successResultOf(d), ["127.0.0.1:5000"])

    def test_udp_network(self) -> None:
        clock = Clock()
        udp = MemoryUDPNetwork(clock)
        a = KRPCProtocol(b"a" * 20, clock, lambda *a: None, lambda *a: None)
        b = KRPCProtocol(b"b" * 20, clock, lambda *a: {}, lambda *a: None)
        port_a = udp.attach(a)
        port_b = udp.attach(b, port=20500)
        self.assertRaises(CannotListenError, udp.attach, a, port=20500)
        d = a.query(("127.0.0.1", port_b), "ping", {})
        self.assertNoResult(d)  # delivered on the clock's next turn
        udp.settle()
        self.successResultOf(d)
        self.assertEqual([(s[1], s[0][1]) for s in udp.sent[:1]], [(("127.0.0.1", 20500), port_a)])
        d = a.query(("127.0.0.1", port_b), "ping", {})
        a.transport.stopListening()  # type: ignore[union-attr]
        self.failureResultOf(d, errors.KRPCClosed)
        self.assertNotIn(("127.0.0.1", port_a), udp.protocols)


class PubSubTests(Kit):
    def publisher(self, name: str = "feed", port: int = 0) -> PeerPub:
        pub = PeerPub(self.link, self.network.pub_transport())
        self.successResultOf(pub.listen(port))
        self.successResultOf(pub.announce(name))
        return pub

    def subscriber(self, received: list[Any], **options: Any) -> PeerSub:
        sub = PeerSub(self.link, self.network.sub_transport(**options), reactor=self.clock, **{})
        sub.on_message = received.append
        return sub

    def test_messages_as_frames_carry_them(self) -> None:
        pub = self.publisher()
        received: list[Any] = []
        self.successResultOf(self.subscriber(received).sub("feed"))
        self.successResultOf(self.subscriber(received).sub("feed"))
        self.assertEqual(pub.transport.subscribers, 2)  # type: ignore[attr-defined]
        self.assertEqual(pub.pub("a\ud800"), 2)
        self.assertEqual(pub.pub(b"\x00"), 2)
        self.assertEqual(received, ["a\ufffd", "a\ufffd", b"\x00", b"\x00"])
        self.assertRaises(TypeError, pub.pub, 3)  # type: ignore[arg-type]

    def test_publisher_drops_connections(self) -> None:
        pub = self.publisher()
        received: list[Any] = []
        sub = self.subscriber(received)
        events: list[Any] = []
        sub.add_listener("disconnected", lambda *a: events.append(("disconnected", *a)))
        sub.add_listener("connected", lambda *a: events.append(("connected", *a)))
        self.successResultOf(sub.sub("feed"))
        dest = pub.transport.address  # type: ignore[attr-defined]
        self.network.drop_connections(dest)
        self.assertEqual(events[-1], ("disconnected", "feed", dest))
        self.assertEqual(pub.pub("lost"), 0)
        self.clock.advance(0.1)  # PeerSub's first backoff
        self.assertEqual(events[-1], ("connected", "feed", dest))
        pub.pub("back")
        self.assertEqual(received, ["back"])

    def test_subscriber_moves_to_another_publisher(self) -> None:
        first = self.publisher()
        second = self.publisher()
        received: list[Any] = []
        sub = self.subscriber(received)
        self.successResultOf(sub.sub("feed"))
        current = sub.subscriptions["feed"]
        lost, other = (first, second) if current == first.transport.address else (second, first)  # type: ignore[attr-defined]
        self.successResultOf(lost.stop())
        self.network.run(1)
        self.assertEqual(sub.subscriptions["feed"], other.transport.address)  # type: ignore[attr-defined]

    def test_connect_faults(self) -> None:
        pub = self.publisher()
        dest = pub.transport.address  # type: ignore[attr-defined]
        transport = self.network.sub_transport(connect_timeout=4)
        self.network.refuse(dest)
        self.failureResultOf(transport.connect(dest, print, print), errors.DestinationUnreachable)
        self.network.blackhole(dest)
        d = transport.connect(dest, print, print)
        self.clock.advance(3.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.failureResultOf(d, errors.DestinationUnreachable)
        self.network.answer_error(dest, "ERR_NO")
        self.failureResultOf(transport.connect(dest, print, print), errors.DestinationUnreachable)
        self.network.restore(dest)
        self.failureResultOf(
            transport.connect("127.0.0.1:30001", print, print), errors.DestinationUnreachable
        )  # a grape is no publisher
        connection = self.successResultOf(transport.connect(dest, print, print))
        self.assertEqual(transport.connections, [connection])
        self.successResultOf(transport.stop())
        self.assertEqual(pub.transport.subscribers, 0)  # type: ignore[attr-defined]
        self.failureResultOf(transport.connect(dest, print, print), errors.TransportClosed)
        self.assertEqual(transport.attempts, [dest] * 3 + ["127.0.0.1:30001", dest, dest])
