"""Tests for grenache.tls: Node-format fingerprints, server and client TLS options.

Handshakes run in memory (iosim) between TLSMemoryBIOProtocol endpoints; certificates are
generated here with ``cryptography`` (:func:`make_pki`, also used by the transport tests).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import crypto
from twisted.internet import protocol
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from grenache.tls import ClientTLS, ServerTLS, fingerprint, peer_certificate
from tests.support import NODE_CLIENT1_FINGERPRINT, NODE_CLIENT1_PEM, make_pki

# --- in-memory handshakes ------------------------------------------------------------------


class _Recorder(protocol.Protocol):
    """Records what arrives and how the connection ended; the client side greets."""

    def __init__(self, greet: bytes = b"") -> None:
        self.greet = greet
        self.data = b""
        self.lost: Any = None

    def connectionMade(self) -> None:
        if self.greet:
            self.transport.write(self.greet)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if not self.greet:
            self.transport.write(b"pong:" + data)  # type: ignore[union-attr]

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = reason


def handshake(
    server: ServerTLS, client: ClientTLS, host: str = "127.0.0.1"
) -> tuple[_Recorder, _Recorder, Any]:
    """Connect a TLS client and server in memory; returns (client, server, server TLS proto)."""
    server_proto = _Recorder()
    client_proto = _Recorder(b"ping")
    clock = Clock()
    server_factory = TLSMemoryBIOFactory(
        server.context_factory(),
        False,
        protocol.Factory.forProtocol(lambda: server_proto),
        clock=clock,
    )
    client_factory = TLSMemoryBIOFactory(
        client.creator_for(host),
        True,
        protocol.Factory.forProtocol(lambda: client_proto),
        clock=clock,
    )
    server_tls = server_factory.buildProtocol(None)
    client_tls = client_factory.buildProtocol(None)
    pump = iosim.connect(
        server_tls,
        iosim.makeFakeServer(server_tls),
        client_tls,
        iosim.makeFakeClient(client_tls),
        greet=False,
        clock=clock,
    )
    for _ in range(20):
        pump.flush()
    return client_proto, server_proto, server_tls


class FingerprintTests(SynchronousTestCase):
    def test_node_client1(self) -> None:
        """The fingerprint of Node's shipped client1 certificate is the one Node prints."""
        cert = x509.load_pem_x509_certificate(NODE_CLIENT1_PEM)
        self.assertEqual(fingerprint(cert), NODE_CLIENT1_FINGERPRINT)

    def test_forms_agree(self) -> None:
        """DER bytes, a cryptography certificate and a pyOpenSSL X509 give the same string."""
        cert = x509.load_pem_x509_certificate(make_pki().client.cert)
        der = cert.public_bytes(serialization.Encoding.DER)
        expected = ":".join(f"{b:02X}" for b in hashlib.sha1(der).digest())
        self.assertEqual(fingerprint(der), expected)
        self.assertEqual(fingerprint(cert), expected)
        self.assertEqual(fingerprint(crypto.X509.from_cryptography(cert)), expected)
        self.assertRegex(expected, re.compile(r"^([0-9A-F]{2}:){19}[0-9A-F]{2}$"))

    def test_peer_certificate_without_tls(self) -> None:
        """A plain transport, or one whose peer sent nothing, has no certificate."""
        self.assertIsNone(peer_certificate(object()))

        class NoCert:
            def getPeerCertificate(self) -> None:
                return None

        self.assertIsNone(peer_certificate(NoCert()))


class HandshakeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.pki = make_pki()

    def server(self, **kwargs: Any) -> ServerTLS:
        return ServerTLS(self.pki.server.key, self.pki.server.cert, self.pki.ca.cert, **kwargs)

    def test_verified_with_client_certificate(self) -> None:
        """The client verifies the server (chain and IP); the server sees the client's cert."""
        pki = self.pki
        client = ClientTLS(pki.ca.cert, pki.client.cert, pki.client.key)
        c, s, server_tls = handshake(self.server(request_cert=True), client)
        self.assertEqual(s.data, b"ping")
        self.assertEqual(c.data, b"pong:ping")
        fp, der = peer_certificate(server_tls)  # type: ignore[misc]
        self.assertEqual(fp, pki.client.fingerprint)
        self.assertEqual(fingerprint(der), fp)

    def test_no_client_certificate(self) -> None:
        """Without one, a request_cert server still serves and sees no certificate."""
        c, _, server_tls = handshake(self.server(request_cert=True), ClientTLS(self.pki.ca.cert))
        self.assertEqual(c.data, b"pong:ping")
        self.assertIsNone(peer_certificate(server_tls))

    def test_unverified_client_certificate_accepted(self) -> None:
        """As Node with rejectUnauthorized false: any client certificate gets through."""
        pki = self.pki
        client = ClientTLS(pki.ca.cert, pki.rogue_client.cert, pki.rogue_client.key)
        c, _, server_tls = handshake(self.server(request_cert=True), client)
        self.assertEqual(c.data, b"pong:ping")
        self.assertEqual(peer_certificate(server_tls)[0], pki.rogue_client.fingerprint)  # type: ignore[index]

    def test_reject_unauthorized(self) -> None:
        """A rejecting server refuses a client without a certificate from its CA."""
        pki = self.pki
        server = self.server(request_cert=True, reject_unauthorized=True)
        for client in (
            ClientTLS(pki.ca.cert),
            ClientTLS(pki.ca.cert, pki.rogue_client.cert, pki.rogue_client.key),
        ):
            c, s, _ = handshake(server, client)
            self.assertEqual(s.data, b"")
            self.assertEqual(c.data, b"")
            self.assertIsNotNone(c.lost)
        c, _, _ = handshake(server, ClientTLS(pki.ca.cert, pki.client.cert, pki.client.key))
        self.assertEqual(c.data, b"pong:ping")

    def test_untrusted_server(self) -> None:
        """A client refuses a server whose chain does not lead to its CA."""
        c, s, _ = handshake(self.server(), ClientTLS(self.pki.rogue_ca.cert))
        self.assertEqual(s.data, b"")
        self.assertEqual(c.data, b"")
        self.assertIsNotNone(c.lost)

    def test_hostname_checked(self) -> None:
        """The destination IP must be in the certificate, unless check_hostname is off."""
        pki = self.pki
        server = ServerTLS(pki.server_no_san.key, pki.server_no_san.cert)
        c, _, _ = handshake(server, ClientTLS(pki.ca.cert))
        self.assertEqual(c.data, b"")
        c, _, _ = handshake(server, ClientTLS(pki.ca.cert, check_hostname=False))
        self.assertEqual(c.data, b"pong:ping")
        c, _, _ = handshake(self.server(), ClientTLS(pki.ca.cert), host="127.0.0.2")
        self.assertEqual(c.data, b"")
        c, _, _ = handshake(self.server(), ClientTLS(pki.ca.cert), host="localhost")
        self.assertEqual(c.data, b"pong:ping")
        c, _, _ = handshake(self.server(), ClientTLS(pki.ca.cert), host="example.com")
        self.assertEqual(c.data, b"")

    def test_platform_trust_without_ca(self) -> None:
        """With no CA, clients and rejecting servers trust the platform's roots: the test CA is
        not among them, so the handshake fails (it used to raise TypeError before it began)."""
        pki = self.pki
        c, _, _ = handshake(self.server(), ClientTLS())
        self.assertEqual(c.data, b"")
        self.assertIsNotNone(c.lost)
        client = ClientTLS(None, pki.client.cert, pki.client.key)
        c, _, _ = handshake(self.server(), client)
        self.assertEqual(c.data, b"")
        server = ServerTLS(pki.server.key, pki.server.cert, reject_unauthorized=True)
        c, s, _ = handshake(server, ClientTLS(pki.ca.cert, pki.client.cert, pki.client.key))
        self.assertEqual(s.data, b"")

    def test_no_verification(self) -> None:
        """verify=False (Node's rejectUnauthorized false) accepts any server."""
        c, _, _ = handshake(self.server(), ClientTLS(self.pki.rogue_ca.cert, verify=False))
        self.assertEqual(c.data, b"pong:ping")

    def test_creator_cached_per_host(self) -> None:
        client = ClientTLS(self.pki.ca.cert)
        self.assertIs(client.creator_for("127.0.0.1"), client.creator_for("127.0.0.1"))
        self.assertIs(client.creatorForNetloc(b"127.0.0.1", 1), client.creator_for("127.0.0.1"))

    def test_from_files(self) -> None:
        pki = self.pki
        paths = {}
        for name, data in [
            ("ca", pki.ca.cert),
            ("cert", pki.server.cert),
            ("key", pki.server.key),
        ]:
            path = self.mktemp()
            with open(path, "wb") as f:
                f.write(data)
            paths[name] = path
        server = ServerTLS.from_files(paths["key"], paths["cert"], paths["ca"], request_cert=True)
        self.assertEqual(server, self.server(request_cert=True))
        client = ClientTLS.from_files(paths["ca"])
        self.assertEqual(client.ca, pki.ca.cert)
