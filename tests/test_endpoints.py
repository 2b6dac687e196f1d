"""grenache.endpoints: what a listen spec and a host:port may be, and what each becomes."""

from __future__ import annotations

from twisted.internet import endpoints as twisted_endpoints
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from grenache import endpoints
from grenache.tls import ClientTLS


class ServerEndpointTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()

    def test_port_number_listens_on_tcp4(self) -> None:
        endpoint = endpoints.server_endpoint(self.reactor, 1337, interface="127.0.0.1")
        self.assertIsInstance(endpoint, twisted_endpoints.TCP4ServerEndpoint)
        endpoint.listen(object())  # type: ignore[arg-type]
        port, _factory, _backlog, interface = self.reactor.tcpServers[0]
        self.assertEqual((port, interface), (1337, "127.0.0.1"))

    def test_digits_from_a_command_line_are_a_port(self) -> None:
        endpoint = endpoints.server_endpoint(self.reactor, " 8080 ")
        self.assertIsInstance(endpoint, twisted_endpoints.TCP4ServerEndpoint)

    def test_ipv6_interface_listens_on_tcp6(self) -> None:
        endpoint = endpoints.server_endpoint(self.reactor, 0, interface="[::1]")
        self.assertIsInstance(endpoint, twisted_endpoints.TCP6ServerEndpoint)
        endpoint.listen(object())  # type: ignore[arg-type]
        self.assertEqual(self.reactor.tcpServers[0][3], "::1")

    def test_description(self) -> None:
        endpoint = endpoints.server_endpoint(self.reactor, "tcp6:0:interface=\\:\\:1")
        self.assertIsInstance(endpoint, twisted_endpoints.TCP6ServerEndpoint)

    def test_endpoint_object_is_used_as_it_is(self) -> None:
        given = twisted_endpoints.TCP4ServerEndpoint(self.reactor, 0)
        self.assertIs(endpoints.server_endpoint(self.reactor, given), given)

    def test_bad_description_names_it(self) -> None:
        with self.assertRaises(ValueError) as caught:
            endpoints.server_endpoint(self.reactor, "bogus:1")
        self.assertIn("'bogus:1'", str(caught.exception))

    def test_out_of_range_port(self) -> None:
        self.assertRaises(ValueError, endpoints.server_endpoint, self.reactor, 70000)

    def test_other_types_are_refused(self) -> None:
        self.assertRaises(TypeError, endpoints.server_endpoint, self.reactor, True)
        self.assertRaises(TypeError, endpoints.server_endpoint, self.reactor, 1.5)

    def test_listen_fails_the_deferred_for_a_bad_spec(self) -> None:
        failure = self.failureResultOf(
            endpoints.listen(self.reactor, "bogus:1", object()),  # type: ignore[arg-type]
            ValueError,
        )
        self.assertIn("bogus", str(failure.value))

    def test_describe(self) -> None:
        self.assertEqual(endpoints.describe_listen_spec(5), "port 5")
        self.assertEqual(endpoints.describe_listen_spec("5"), "port 5")
        self.assertEqual(endpoints.describe_listen_spec("tcp6:0"), "tcp6:0")


class AddressTests(SynchronousTestCase):
    def test_split(self) -> None:
        cases = {
            "10.0.0.1:1337": ("10.0.0.1", 1337),
            "[::1]:1337": ("::1", 1337),
            "::1:1337": ("::1", 1337),
            "grape.internal:30001": ("grape.internal", 30001),
        }
        for text, expected in cases.items():
            self.assertEqual(endpoints.split_host_port(text), expected, text)

    def test_split_refuses_what_is_not_an_address(self) -> None:
        for text in [
            "1337",
            "host:",
            ":80",
            "host:0",
            "host:65536",
            "host:x",
            "[::1]1337",
            "a:b:80",
        ]:
            with self.assertRaises(ValueError, msg=text) as caught:
                endpoints.split_host_port(text)
            self.assertIn(repr(text), str(caught.exception))

    def test_join(self) -> None:
        self.assertEqual(endpoints.join_host_port("127.0.0.1", 5), "127.0.0.1:5")
        self.assertEqual(endpoints.join_host_port("::1", 5), "[::1]:5")
        self.assertEqual(endpoints.join_host_port("[0:0::1]", 5), "[::1]:5")
        self.assertEqual(endpoints.join_host_port("localhost", 5), "localhost:5")

    def test_ip_literal(self) -> None:
        self.assertTrue(endpoints.is_ip_literal("127.0.0.1"))
        self.assertTrue(endpoints.is_ip_literal("[::1]"))
        self.assertFalse(endpoints.is_ip_literal("localhost"))


class ClientEndpointTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()

    def test_literals_connect_directly_and_names_resolve(self) -> None:
        self.assertIsInstance(
            endpoints.client_endpoint(self.reactor, "127.0.0.1", 1),
            twisted_endpoints.TCP4ClientEndpoint,
        )
        self.assertIsInstance(
            endpoints.client_endpoint(self.reactor, "[::1]", 1),
            twisted_endpoints.TCP6ClientEndpoint,
        )
        self.assertIsInstance(
            endpoints.client_endpoint(self.reactor, "localhost", 1),
            twisted_endpoints.HostnameEndpoint,
        )

    def test_connect_goes_to_the_address_with_the_timeout(self) -> None:
        endpoints.client_endpoint(self.reactor, "::1", 1337, timeout=3).connect(
            object()  # type: ignore[arg-type]
        )
        host, port, _factory, timeout, _bind = self.reactor.tcpClients[0]
        self.assertEqual((host, port, timeout), ("::1", 1337, 3))

    def test_tls_wraps_the_endpoint(self) -> None:
        creator = ClientTLS(verify=False).creator_for("localhost")
        endpoint = endpoints.client_endpoint(self.reactor, "127.0.0.1", 1, tls=creator)
        self.assertNotIsInstance(endpoint, twisted_endpoints.TCP4ClientEndpoint)
