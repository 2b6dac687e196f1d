"""The transport proxy on grenache.testing's in-memory network, on a Clock: the control protocol
of grenache-nodejs-proxy, static routes, errors carried through, failover, limits, bad payloads,
the pub/sub relay, the ProxyService and the command-line options."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from grenache import errors
from grenache.cli.proxy_verbs import ProxyOptions
from grenache.metrics import ALONE, HEALTHY, Metrics
from grenache.peer import OutgoingRequest, PeerPub, PeerRPCClient, PeerRPCServer, PeerSub, Reply
from grenache.peer import Request as PeerRequest
from grenache.proxy import (
    CONTROL,
    PUBSUB,
    STATIC,
    BadControlPayload,
    ForwardingClients,
    ProxyConfig,
    ProxyError,
    ProxyLimitReached,
    ProxyService,
    PubSubRelay,
    Route,
    RPCProxy,
    parse_control,
    parse_key,
    proxied_key,
)
from grenache.proxy.keys import MAX_KEY_LENGTH
from grenache.proxy_tap import Options as TapOptions
from grenache.testing import MemoryNetwork

TRANSPORTS = ("http", "ws")


def coffee(request: PeerRequest) -> Any:
    """The origin of grenache-nodejs-proxy's examples: answers ``KEY world``; a payload
    ``{"fail": m}`` fails with ``m``, ``{"reply": [e, r]}`` answers error and result."""
    payload = request.payload
    if isinstance(payload, dict) and "fail" in payload:
        raise ValueError(payload["fail"])
    if isinstance(payload, dict) and "reply" in payload:
        return Reply(*payload["reply"])
    if isinstance(payload, dict) and "hang" in payload:
        return Deferred()
    return f"{request.key} world" if payload == "Hello" else {"echo": payload}


class _Network(SynchronousTestCase):
    """A lone grape, an origin service ``coffee``, a proxy's link and a caller."""

    def setUp(self) -> None:
        self.clock: Any = Clock()
        self.network = MemoryNetwork(self.clock)
        self.grape = self.network.grape()
        self.origin_link = self.network.link(self.grape)
        self.origin = self.serve("coffee")
        self.proxy_link = self.network.link(self.grape)
        self.made: list[str] = []
        self.caller = PeerRPCClient(
            self.network.link(self.grape, lookup_cache_ttl=0),
            self.network.client_transport(),
            reactor=self.clock,
            timeout=30,
        )

    def serve(self, name: str, handler: Any = coffee) -> PeerRPCServer:
        server = PeerRPCServer(
            self.origin_link, self.network.server_transport(), handler, reactor=self.clock
        )
        self.successResultOf(server.listen())
        self.successResultOf(server.announce(name))
        return server

    def clients(self, **options: Any) -> ForwardingClients:
        def make(name: str) -> Any:
            self.made.append(name)
            return self.network.client_transport()

        options.setdefault("timeout", 5.0)
        return ForwardingClients(
            self.proxy_link, self.clock, transports=TRANSPORTS, make_transport=make, **options
        )

    def proxy(self, *, control: bool = True, **options: Any) -> RPCProxy:
        timeout = options.pop("timeout", 5.0)
        proxy = RPCProxy(
            self.proxy_link,
            self.network.server_transport(),
            self.clients(timeout=timeout),
            reactor=self.clock,
            control_key="rpc_proxy" if control else None,
            **options,
        )
        self.successResultOf(proxy.listen())
        if control:
            self.successResultOf(proxy.announce_control())
        return proxy

    def call(self, key: str, payload: Any) -> Deferred[Any]:
        return self.caller.request(key, payload)

    def direct(self, proxy: RPCProxy, key: str, payload: Any) -> Deferred[Any]:
        """A request sent to the proxy's address, without a lookup."""
        transport = self.network.client_transport()
        request = OutgoingRequest("rid-1", key, payload, 5.0)
        return transport.request(self.network.address(proxy.port), request)

    def remote_error(self, d: Deferred[Any]) -> errors.RemoteError:
        error = self.failureResultOf(d, errors.RemoteError).value
        assert isinstance(error, errors.RemoteError)
        return error


class ControlProtocolTests(_Network):
    """grenache-nodejs-proxy's examples/rpc_http_client.js, step by step."""

    def test_start_forward_stop(self) -> None:
        proxy = self.proxy()
        self.serve("tea")
        self.assertEqual(
            self.successResultOf(self.call("rpc_proxy", "ws:coffee")), "Started proxying ws:coffee"
        )
        self.assertEqual(
            self.successResultOf(self.call("rpc_proxy", "ws:tea")), "Started proxying ws:tea"
        )
        self.assertEqual(self.successResultOf(self.call("ws:coffee", "Hello")), "coffee world")
        self.assertEqual(self.successResultOf(self.call("ws:tea", "Hello")), "tea world")
        self.assertEqual(self.made, ["ws"])  # one WebSocket client for both
        self.assertEqual(sorted(proxy.routes), ["ws:coffee", "ws:tea"])
        self.assertEqual(
            self.successResultOf(self.call("rpc_proxy", "stop ws:tea")), "Stopped proxying ws:tea"
        )
        # Unannounced at once: a lookup finds no one.
        self.failureResultOf(self.call("ws:tea", "Hello"), errors.LookupEmpty)
        # A client that still has the address (a Node grape keeps announces until they expire)
        # hears the proxy's answer.
        error = self.remote_error(self.direct(proxy, "ws:tea", "Hello"))
        self.assertEqual(error.message, "ws:tea is not proxied")
        self.assertIsNone(error.result)
        self.assertEqual(self.successResultOf(self.call("ws:coffee", "Hello")), "coffee world")

    def test_the_prefix_chooses_the_transport(self) -> None:
        self.proxy()
        self.successResultOf(self.call("rpc_proxy", "http:coffee"))
        self.assertEqual(self.successResultOf(self.call("http:coffee", "Hello")), "coffee world")
        self.assertEqual(self.made, ["http"])

    def test_the_payload_is_forwarded_unchanged(self) -> None:
        self.proxy()
        self.successResultOf(self.call("rpc_proxy", "ws:coffee"))
        payloads: list[Any] = [{"a": [1, 2.5, None, True]}, "ünïcode ☕", [], 0, None, "ws:tea"]
        for payload in payloads:
            self.assertEqual(
                self.successResultOf(self.call("ws:coffee", payload)), {"echo": payload}
            )
        # The origin saw the service name, not the proxied key, and the payloads as sent.
        requests = self.origin.transport.requests  # type: ignore[attr-defined]
        self.assertEqual({r.key for r in requests}, {"coffee"})
        self.assertEqual(requests[-1].payload, "ws:tea")

    def test_announced_at_the_proxys_port(self) -> None:
        proxy = self.proxy()
        self.successResultOf(self.call("rpc_proxy", "ws:coffee"))
        dests = self.successResultOf(self.network.link(self.grape).lookup("ws:coffee"))
        self.assertEqual(dests, [self.network.address(proxy.port)])
        self.assertIn(("ws:coffee", proxy.port), self.proxy_link.announcing())

    def test_start_twice_is_one_key(self) -> None:
        proxy = self.proxy()
        for _ in range(2):
            self.assertEqual(
                self.successResultOf(self.call("rpc_proxy", "ws:coffee")),
                "Started proxying ws:coffee",
            )
        self.assertEqual(list(proxy.routes), ["ws:coffee"])
        self.assertEqual(self.proxy_link.announcing().count(("ws:coffee", proxy.port)), 1)

    def test_stopping_a_key_not_proxied_is_answered_as_node_does(self) -> None:
        self.proxy()
        self.assertEqual(
            self.successResultOf(self.call("rpc_proxy", "stop ws:nothing")),
            "Stopped proxying ws:nothing",
        )

    def test_a_key_not_proxied(self) -> None:
        proxy = self.proxy()
        error = self.remote_error(self.direct(proxy, "coffee", "Hello"))
        self.assertEqual(error.message, "coffee is not proxied")
        self.assertEqual(
            self.successResultOf(self.call("rpc_proxy", "ws:coffee")), "Started proxying ws:coffee"
        )

    def test_started_even_when_the_first_announce_fails(self) -> None:
        proxy = self.proxy()
        self.network.answer_error(self.grape.api_port, "grape trouble")
        d = self.direct(proxy, "rpc_proxy", "ws:coffee")
        self.network.run(30)
        self.assertEqual(self.successResultOf(d), "Started proxying ws:coffee")
        self.assertIn("ws:coffee", proxy.routes)
        self.flushLoggedErrors()


class BadPayloadTests(_Network):
    def test_bad_payloads_get_clear_errors_and_the_proxy_keeps_serving(self) -> None:
        proxy = self.proxy()
        forms = '"TRANSPORT:NAME" or "stop TRANSPORT:NAME" (TRANSPORT: http or ws)'
        cases: list[tuple[Any, str]] = [
            (42, f"rpc_proxy: the payload must be a string, {forms}; not a number"),
            (None, f"rpc_proxy: the payload must be a string, {forms}; not null"),
            (True, f"rpc_proxy: the payload must be a string, {forms}; not a boolean"),
            ({"ws": "x"}, f"rpc_proxy: the payload must be a string, {forms}; not an object"),
            ("hello", f"rpc_proxy: 'hello' is not {forms}"),
            ("", f"rpc_proxy: '' is not {forms}"),
            ("stop ", f"rpc_proxy: '' is not {forms}"),
            (
                "smtp:coffee",
                "rpc_proxy: unknown transport 'smtp' in 'smtp:coffee' (available: http, ws)",
            ),
            (
                "stop zmq:coffee",
                "rpc_proxy: unknown transport 'zmq' in 'zmq:coffee' (available: http, ws)",
            ),
            ("ws:", f"rpc_proxy: 'ws:' names no service: expected {forms}"),
            (
                "ws:" + "x" * MAX_KEY_LENGTH,
                f"rpc_proxy: a proxied key is at most {MAX_KEY_LENGTH} characters",
            ),
        ]
        for payload, message in cases:
            error = self.remote_error(self.direct(proxy, "rpc_proxy", payload))
            self.assertEqual(error.message, message, repr(payload))
        self.assertEqual(proxy.routes, {})
        self.assertEqual(
            self.successResultOf(self.call("rpc_proxy", "ws:coffee")), "Started proxying ws:coffee"
        )
        self.assertEqual(self.flushLoggedErrors(), [])  # callers' mistakes log no traceback

    def test_parse(self) -> None:
        command = parse_control("stop ws:http:x", TRANSPORTS)
        self.assertEqual((command.start, command.key), (False, "ws:http:x"))
        self.assertEqual(command.route, Route("ws", "http:x"))
        self.assertEqual(parse_key("http:a b", TRANSPORTS), Route("http", "a b"))
        self.assertEqual(proxied_key("ws", "coffee"), "ws:coffee")
        with self.assertRaises(BadControlPayload):
            parse_key("ws", TRANSPORTS)


class LimitTests(_Network):
    def test_the_number_of_keys_is_bounded(self) -> None:
        proxy = self.proxy(max_keys=2)
        for key in ("ws:a", "ws:b", "ws:a"):
            self.assertEqual(
                self.successResultOf(self.call("rpc_proxy", key)), f"Started proxying {key}"
            )
        error = self.remote_error(self.call("rpc_proxy", "ws:c"))
        self.assertEqual(
            error.message, "rpc_proxy: cannot proxy ws:c: 2 keys are proxied already (the limit)"
        )
        self.assertNotIn(("ws:c", proxy.port), self.proxy_link.announcing())
        self.successResultOf(self.call("rpc_proxy", "stop ws:a"))
        self.assertEqual(
            self.successResultOf(self.call("rpc_proxy", "ws:c")), "Started proxying ws:c"
        )
        with self.assertRaises(ProxyLimitReached):
            proxy.add("ws:d", Route("ws", "d"))

    def test_arguments(self) -> None:
        for bad in ({"max_keys": 0}, {"max_keys": True}, {"retry": 0}):
            with self.assertRaises(ValueError):
                RPCProxy(self.proxy_link, self.network.server_transport(), self.clients(), **bad)
        proxy = self.proxy(control=False)
        with self.assertRaises(ValueError):
            proxy.add("", Route("ws", "x"))
        with self.assertRaises(ValueError):
            proxy.add("k", Route("zmq", "x"))


class ForwardingTests(_Network):
    """Static routes: errors carried through unchanged, timeouts, failover."""

    def setUp(self) -> None:
        super().setUp()
        self.rpc = self.proxy(control=False, timeout=2.0)
        self.successResultOf(self.rpc.add("ws:coffee", Route("http", "coffee")))

    def test_forwards(self) -> None:
        self.assertEqual(self.successResultOf(self.call("ws:coffee", "Hello")), "coffee world")
        self.assertEqual(self.made, ["http"])

    def test_no_control_key(self) -> None:
        error = self.remote_error(self.direct(self.rpc, "rpc_proxy", "ws:tea"))
        self.assertEqual(error.message, "rpc_proxy is not proxied")

    def test_an_error_reaches_the_caller_as_the_origin_sent_it(self) -> None:
        error = self.remote_error(self.call("ws:coffee", {"fail": "ERR_NO_MILK: sorry"}))
        self.assertEqual((error.message, error.result), ("ERR_NO_MILK: sorry", None))
        error = self.remote_error(self.call("ws:coffee", {"reply": ["ERR_PARTIAL", {"done": 2}]}))
        self.assertEqual((error.message, error.result), ("ERR_PARTIAL", {"done": 2}))
        self.flushLoggedErrors(ValueError)  # the origin's handler failure, logged there

    def test_a_timeout_is_the_callers_error(self) -> None:
        d = self.call("ws:coffee", {"hang": True})
        self.clock.advance(1.9)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        error = self.remote_error(d)
        self.assertEqual(error.message, "ERR_TIMEOUT")
        self.flushLoggedErrors(errors.RequestTimeout)

    def test_no_origin(self) -> None:
        self.successResultOf(self.origin.stop())
        error = self.remote_error(self.call("ws:coffee", "Hello"))
        self.assertEqual(error.message, "ERR_GRAPE_LOOKUP_EMPTY")
        self.flushLoggedErrors(errors.LookupEmpty)

    def test_failover_past_a_refused_origin(self) -> None:
        second = self.serve("coffee")
        self.network.refuse(self.origin.port)
        for _ in range(8):
            self.assertEqual(self.successResultOf(self.call("ws:coffee", "Hello")), "coffee world")
        served = second.transport.requests  # type: ignore[attr-defined]
        self.assertEqual(len(served), 8)

    def test_retry(self) -> None:
        rpc = RPCProxy(
            self.proxy_link,
            self.network.server_transport(),
            self.clients(timeout=1.0),
            reactor=self.clock,
            retry=2,
        )
        self.successResultOf(rpc.listen())
        self.successResultOf(rpc.add("retry:coffee", Route("ws", "coffee")))
        second = self.serve("coffee")
        self.network.blackhole(self.origin.port)
        self.network.blackhole(second.port)
        d = self.call("retry:coffee", "Hello")
        self.clock.advance(1.5)
        self.assertNoResult(d)  # the second attempt runs
        self.network.restore(self.origin.port)
        self.network.restore(second.port)
        self.clock.advance(1.0)
        self.assertEqual(self.remote_error(d).message, "ERR_TIMEOUT")
        self.flushLoggedErrors(errors.RequestTimeout)

    def test_remove(self) -> None:
        self.successResultOf(self.rpc.remove("ws:coffee"))
        self.successResultOf(self.rpc.remove("ws:coffee"))
        self.assertEqual(self.rpc.routes, {})
        self.assertEqual(self.proxy_link.announcing(), [])

    def test_stop(self) -> None:
        d = self.call("ws:coffee", {"hang": True})
        self.successResultOf(self.rpc.stop())
        self.failureResultOf(d, errors.TransportClosed)
        self.assertEqual(self.proxy_link.announcing(), [])
        with self.assertRaises(RuntimeError):
            self.rpc.add("ws:tea", Route("ws", "tea"))
        self.successResultOf(self.rpc.stop())

    def test_metrics(self) -> None:
        metrics = Metrics()
        rpc = RPCProxy(
            self.proxy_link,
            self.network.server_transport(),
            self.clients(metrics=metrics),
            reactor=self.clock,
            metrics=metrics,
        )
        self.successResultOf(rpc.listen())
        self.successResultOf(rpc.add("m:coffee", Route("ws", "coffee")))
        self.successResultOf(self.call("m:coffee", "Hello"))
        text = metrics.exposition().decode()
        self.assertIn('key="m:coffee",outcome="ok"} 1.0', text)
        dest = self.network.address(self.origin.port)
        self.assertIn(f'dest="{dest}",outcome="ok"}} 1.0', text)
        self.assertIn('name="m:coffee",outcome="ok"} 1.0', text)


class RelayTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock: Any = Clock()
        self.network = MemoryNetwork(self.clock)
        self.grape = self.network.grape()
        self.link = self.network.link(self.grape, lookup_cache_ttl=0)

    def publisher(self) -> PeerPub:
        pub = PeerPub(self.link, self.network.pub_transport())
        self.successResultOf(pub.listen())
        self.successResultOf(pub.announce("ticker"))
        return pub

    def subscriber(self, key: str) -> list[Any]:
        received: list[Any] = []
        sub = PeerSub(self.link, self.network.sub_transport(), reactor=self.clock)
        sub.add_listener("message", received.append)
        self.successResultOf(sub.sub(key))
        return received

    def test_relays_and_waits_for_a_publisher(self) -> None:
        relay = PubSubRelay(
            self.link,
            self.network.sub_transport(),
            self.network.pub_transport(),
            "ticker",
            "zmq:ticker",
            reactor=self.clock,
        )
        self.successResultOf(relay.listen())
        self.successResultOf(relay.start())
        self.assertFalse(relay.connected)  # no publisher yet: tried again later
        received = self.subscriber("zmq:ticker")
        pub = self.publisher()
        self.network.run(5)
        self.assertTrue(relay.connected)
        pub.pub("one")
        pub.pub("☕ two")
        self.assertEqual(received, ["one", "☕ two"])
        # The publisher restarts elsewhere: the relay follows it.
        self.successResultOf(pub.stop())
        self.assertFalse(relay.connected)
        pub = self.publisher()
        self.network.run(5)
        pub.pub("three")
        self.assertEqual(received[-1], "three")
        self.successResultOf(relay.stop())
        self.assertEqual(self.link.announcing(), [("ticker", pub.port)])
        self.successResultOf(relay.stop())

    def test_arguments(self) -> None:
        for name, key, initial, most in (("", "k", 1, 2), ("n", "", 1, 2), ("n", "k", 3, 2)):
            with self.assertRaises(ValueError):
                PubSubRelay(
                    self.link,
                    self.network.sub_transport(),
                    self.network.pub_transport(),
                    name,
                    key,
                    reactor=self.clock,
                    retry_initial=initial,
                    retry_max=most,
                )


class ServiceTests(_Network):
    """ProxyService with the network's transports."""

    def service(self, config: ProxyConfig, **more: Any) -> ProxyService:
        service = ProxyService(
            config,
            self.clock,
            link=self.proxy_link,
            server_transport=self.network.server_transport(),
            make_client_transport=lambda name: self.network.client_transport(),
            **more,
        )
        service.startService()
        assert service.started is not None
        self.announced = self.successResultOf(service.started)
        return service

    def test_static(self) -> None:
        config = ProxyConfig("ws", names=("coffee",), to_transport="http")
        service = self.service(config)
        self.assertEqual(config.mode, STATIC)
        self.assertEqual(list(self.announced), ["ws:coffee"])
        self.assertEqual(service.keys(), ["ws:coffee"])
        self.assertEqual(self.successResultOf(self.call("ws:coffee", "Hello")), "coffee world")
        self.successResultOf(service.stopService())
        self.assertEqual(self.proxy_link.announcing(), [])

    def test_the_handler_deadline_outlasts_the_forwarding(self) -> None:
        for timeout, retry, deadline in ((10.0, 1, 60.0), (30.0, 3, 91.0)):
            config = ProxyConfig(
                "ws", names=("coffee",), to_transport="http", timeout=timeout, retry=retry
            )
            service = ProxyService(
                config,
                self.clock,
                link=self.proxy_link,
                server_transport=self.network.server_transport(),
                make_client_transport=lambda name: self.network.client_transport(),
            )
            assert service.rpc is not None
            self.assertEqual(service.rpc.server.handler_timeout, deadline)

    def test_static_as(self) -> None:
        self.service(ProxyConfig("ws", names=("coffee",), to_transport="http", key="java"))
        self.assertEqual(self.successResultOf(self.call("java", "Hello")), "coffee world")

    def test_control(self) -> None:
        config = ProxyConfig("http")
        service = self.service(config)
        self.assertEqual(config.mode, CONTROL)
        self.assertEqual(list(self.announced), ["rpc_proxy"])
        self.successResultOf(self.call("rpc_proxy", "ws:coffee"))
        self.assertEqual(service.keys(), ["rpc_proxy", "ws:coffee"])
        self.assertEqual(self.successResultOf(self.call("ws:coffee", "Hello")), "coffee world")
        self.successResultOf(service.stopService())

    def test_pubsub(self) -> None:
        config = ProxyConfig("ws", names=("ticker",), to_transport="ws", pubsub=True)
        self.assertEqual(config.mode, PUBSUB)
        service = self.service(
            config,
            pub_transport=self.network.pub_transport(),
            sub_transport=self.network.sub_transport(),
        )
        self.assertEqual(list(self.announced), ["ws:ticker"])
        assert service.relay is not None
        origin = PeerPub(self.origin_link, self.network.pub_transport())
        self.successResultOf(origin.listen())
        self.successResultOf(origin.announce("ticker"))
        self.network.run(3)
        self.assertEqual(service._health()[0], HEALTHY)
        received: list[Any] = []
        sub = PeerSub(
            self.network.link(self.grape), self.network.sub_transport(), reactor=self.clock
        )
        sub.add_listener("message", received.append)
        self.successResultOf(sub.sub("ws:ticker"))
        origin.pub("tick")
        self.assertEqual(received, ["tick"])
        self.successResultOf(service.stopService())

    def test_health(self) -> None:
        service = ProxyService(
            ProxyConfig("ws", names=("coffee",), to_transport="http", metrics=0),
            self.clock,
            link=self.proxy_link,
            server_transport=self.network.server_transport(),
            make_client_transport=lambda name: self.network.client_transport(),
        )
        self.successResultOf(service._listen())
        service.port = service.rpc.port if service.rpc else None
        self.network.answer_error(self.grape.api_port, "grape trouble")
        d = service.announce()
        self.network.run(30)
        self.assertEqual(self.successResultOf(d)["ws:coffee"], "grape trouble")
        state, details = service._health()
        self.assertEqual(state, ALONE)
        self.assertEqual(details["announce_failed"], {"ws:coffee": "grape trouble"})
        self.network.restore(self.grape.api_port)
        self.network.run(60)
        self.assertEqual(service._health()[0], HEALTHY)
        assert service.rpc is not None
        self.successResultOf(service.rpc.stop())
        self.flushLoggedErrors()

    def test_config_errors(self) -> None:
        cases = [
            (ProxyConfig("smtp"), "unknown transport 'smtp'"),
            (ProxyConfig("http", to_transport="ws"), "--to is for proxying NAMEs"),
            (ProxyConfig("http", pubsub=True), "--pubsub relays one NAME"),
            (ProxyConfig("http", names=("a",)), "give --to TRANSPORT"),
            (ProxyConfig("http", names=("a", "b"), to_transport="ws", key="k"), "--as names"),
            (ProxyConfig("ws", names=("a", "b"), to_transport="ws", pubsub=True), "one NAME"),
            (ProxyConfig("http", names=("a",), to_transport="ws", pubsub=True), "no publish"),
            (ProxyConfig("http", names=("",), to_transport="ws"), "must not be empty"),
            (ProxyConfig("http", names=("a", "b"), to_transport="ws", max_keys=1), "--max-keys"),
        ]
        for config, message in cases:
            with self.assertRaises(ProxyError) as caught:
                config.check()
            self.assertIn(message, str(caught.exception))


class OptionsTests(SynchronousTestCase):
    def parse(self, *argv: str) -> ProxyOptions:
        options = ProxyOptions()
        options.parseOptions(list(argv))
        return options

    def test_static(self) -> None:
        config = self.parse("coffee", "--from", "ws", "--to", "http", "--port", "1340").config()
        self.assertEqual((config.mode, config.names, config.port), (STATIC, ("coffee",), 1340))
        self.assertEqual(config.static_keys(), {"ws:coffee": Route("http", "coffee")})
        self.assertEqual((config.timeout, config.retry, config.max_keys), (10.0, 1, 100))

    def test_control(self) -> None:
        config = self.parse("--from", "http", "--max-keys", "5", "--timeout", "2").config()
        self.assertEqual((config.mode, config.max_keys, config.timeout), (CONTROL, 5, 2.0))
        self.assertIsNone(config.to_transport)

    def test_forwarding_security(self) -> None:
        options = self.parse("--from", "http", "--to-tls-insecure")
        security = options.config().to_security
        self.assertEqual(set(security), {"http", "ws", "zmq"})
        self.assertFalse(security["ws"].verify)
        self.assertIs(security["http"], security["ws"])
        self.assertIsNone(security["zmq"])
        config = self.parse("x", "--from", "ws", "--to", "http").config()
        self.assertEqual(config.to_security, {"http": None})

    def test_twistd_names(self) -> None:
        options = TapOptions()
        options.parseOptions(["--name", "a", "--name", "b", "--from", "ws", "--to", "http"])
        self.assertEqual(list(options.config().static_keys()), ["ws:a", "ws:b"])

    def test_usage_errors(self) -> None:
        cases = [
            ((), "give --from TRANSPORT"),
            (("--from", "smtp"), "unknown transport 'smtp'"),
            (("x", "--from", "ws"), "give --to TRANSPORT"),
            (("--from", "ws", "--to", "http"), "--to is for proxying NAMEs"),
            (("x", "--from", "ws", "--to", "ws", "--port", "1", "--listen", "tcp:0"), "not both"),
            (("--from", "ws", "--max-keys", "0"), "0 must be an integer of at least 1"),
            (("--from", "ws", "--to-tls-cert", "c.pem"), "--to-tls-cert needs --to-tls-key"),
            (("--from", "ws", "--to-tls-ca", "/no/such.pem"), "--to-tls-ca: cannot read"),
            (("x", "--from", "ws", "--to", "zmq", "--to-tls-insecure"), "zmq transport has no TLS"),
            (("x", "--from", "ws", "--to", "http", "--to-curve-key", "k"), "CURVE needs --to zmq"),
            (("--from", "ws", "--to-curve-server-key", "abc"), "--to-curve-server-key: server key"),
            (("x", "--from", "zmq", "--to", "ws", "--tls-key", "k"), "zmq transport has no TLS"),
        ]
        for argv, message in cases:
            with self.assertRaises(usage.UsageError, msg=argv) as caught:
                self.parse(*argv)
            self.assertIn(message, str(caught.exception), argv)
