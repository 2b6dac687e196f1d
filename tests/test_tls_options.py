"""The ``--tls-*`` flags (grenache.tls_options) and the transport registry (grenache.transports):
flag errors, fingerprint parsing, and the client-certificate whitelist enforced on loopback by
every server transport the registry builds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import reactor as _global_reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.trial.unittest import TestCase

from grenache import errors
from grenache.peer import OutgoingRequest, PeerPub, PeerRPCServer, Request, new_rid
from grenache.tls import ClientTLS, ServerTLS
from grenache.tls_options import (
    ClientWhitelistContextFactory,
    TLSFlagError,
    client_tls,
    parse_fingerprints,
    server_tls,
)
from grenache.transports import TRANSPORTS, UnknownTransport, get_transport, transport_names
from tests.support import NODE_CLIENT1_FINGERPRINT, make_pki, write_identity

reactor: Any = _global_reactor


def pki_files(case: TestCase) -> dict[str, str]:
    """The test PKI written to files: ca, server/client/other/rogue crt and key paths."""
    pki = make_pki()
    directory = Path(case.mktemp()).resolve()
    directory.mkdir()
    files: dict[str, str] = {}
    (directory / "ca.crt").write_bytes(pki.ca.cert)
    files["ca"] = str(directory / "ca.crt")
    for stem, identity in (
        ("server", pki.server),
        ("client", pki.client),
        ("other", pki.other_client),
        ("rogue", pki.rogue_client),
    ):
        cert, key = write_identity(identity, directory, stem)
        files[f"{stem}.crt"], files[f"{stem}.key"] = str(cert), str(key)
    return files


class RegistryTests(TestCase):
    def test_only_existing_transports(self) -> None:
        self.assertEqual(list(TRANSPORTS), ["http", "ws", "zmq"])
        self.assertEqual(transport_names(pubsub=True), ["ws", "zmq"])
        error = self.assertRaises(UnknownTransport, get_transport, "nope")
        self.assertEqual(str(error), "unknown transport 'nope' (available: http, ws, zmq)")
        error = self.assertRaises(UnknownTransport, get_transport, "nope", pubsub=True)
        self.assertEqual(str(error), "unknown transport 'nope' (available: ws, zmq)")
        error = self.assertRaises(UnknownTransport, get_transport, "http", pubsub=True)
        self.assertIn("the http transport has no publish/subscribe", str(error))

    def test_every_class_exists_and_is_built_with_the_reactor(self) -> None:
        from grenache.transports.http import HTTPClientTransport, HTTPServerTransport
        from grenache.transports.ws import (
            WSClientTransport,
            WSPubTransport,
            WSServerTransport,
            WSSubTransport,
        )

        http, ws = TRANSPORTS["http"], TRANSPORTS["ws"]
        built = [
            (http.server_transport(reactor, interface="127.0.0.1"), HTTPServerTransport),
            (http.client_transport(reactor), HTTPClientTransport),
            (ws.server_transport(reactor), WSServerTransport),
            (ws.client_transport(reactor), WSClientTransport),
            (ws.pub_transport(reactor), WSPubTransport),
            (ws.sub_transport(reactor), WSSubTransport),
        ]
        for transport, kind in built:
            self.assertIsInstance(transport, kind)
        self.assertRaises(UnknownTransport, http.pub_transport, reactor)


class FingerprintTests(TestCase):
    def test_node_and_openssl_spellings(self) -> None:
        lower = NODE_CLIENT1_FINGERPRINT.lower()
        bare = NODE_CLIENT1_FINGERPRINT.replace(":", "")
        for text in (
            NODE_CLIENT1_FINGERPRINT,
            lower,
            bare,
            f"SHA1 Fingerprint={NODE_CLIENT1_FINGERPRINT}",  # openssl 1.1
            f"sha1 Fingerprint={NODE_CLIENT1_FINGERPRINT}",  # openssl 3
        ):
            with self.subTest(text=text):
                self.assertEqual(parse_fingerprints(text), {NODE_CLIENT1_FINGERPRINT})
        two = parse_fingerprints(f"{NODE_CLIENT1_FINGERPRINT}, {'AB:' * 19}CD")
        self.assertEqual(len(two), 2)

    def test_bad_fingerprints(self) -> None:
        for text in ("", "AB:CD", "ZZ" * 20, f"{NODE_CLIENT1_FINGERPRINT}:00", "AB" * 32):
            with self.subTest(text=text):
                error = self.assertRaises(TLSFlagError, parse_fingerprints, text)
                self.assertIn("not a SHA-1 certificate fingerprint", str(error))


class FlagErrorTests(TestCase):
    def test_server_flags(self) -> None:
        files = pki_files(self)
        missing = str(Path(self.mktemp()).resolve())
        garbage = Path(self.mktemp()).resolve()
        garbage.write_text("not PEM at all\n")
        for args, fragment in (
            ((files["server.key"], None), "--tls-key needs --tls-cert too"),
            ((None, files["server.crt"]), "--tls-cert needs --tls-key too"),
            ((None, None, files["ca"]), "--tls-ca need --tls-key and --tls-cert"),
            ((None, None, None, NODE_CLIENT1_FINGERPRINT), "--tls-client-fingerprints need"),
            ((missing, files["server.crt"]), f"--tls-key: cannot read {missing}: No such file"),
            ((files["server.key"], str(garbage)), f"--tls-cert: {garbage} holds no PEM cert"),
            ((str(garbage), files["server.crt"]), f"--tls-key: {garbage} holds no unencrypted"),
            ((files["server.crt"], files["server.crt"]), "holds no unencrypted PEM private key"),
            ((files["server.key"], files["server.crt"], str(garbage)), f"--tls-ca: {garbage}"),
            (
                (files["client.key"], files["server.crt"]),
                f"the key in {files['client.key']} does not belong to the certificate in "
                f"{files['server.crt']}",
            ),
            (
                (files["client.key"], files["server.crt"], None, NODE_CLIENT1_FINGERPRINT),
                "does not belong to the certificate",
            ),
            (
                (files["server.key"], files["server.crt"], None, "AB:CD"),
                "--tls-client-fingerprints: not a SHA-1",
            ),
        ):
            with self.subTest(args=args):
                error = self.assertRaises(TLSFlagError, server_tls, *args)
                self.assertIn(fragment, str(error))
                self.assertNotIn("\n", str(error))

    def test_client_flags(self) -> None:
        files = pki_files(self)
        missing = str(Path(self.mktemp()).resolve())
        for args, fragment in (
            ((None, files["client.crt"], None), "--tls-cert needs --tls-key too"),
            ((None, None, files["client.key"]), "--tls-key needs --tls-cert too"),
            ((missing, None, None), f"--tls-ca: cannot read {missing}"),
            ((None, files["client.crt"], files["other.key"]), "does not belong"),
        ):
            with self.subTest(args=args):
                error = self.assertRaises(TLSFlagError, client_tls, *args)
                self.assertIn(fragment, str(error))

    def test_what_the_flags_build(self) -> None:
        files = pki_files(self)
        pki = make_pki()
        self.assertIsNone(server_tls(None, None))
        plain = server_tls(files["server.key"], files["server.crt"])
        self.assertEqual(plain, ServerTLS(pki.server.key, pki.server.cert))
        with_ca = server_tls(files["server.key"], files["server.crt"], files["ca"])
        assert isinstance(with_ca, ServerTLS)
        self.assertTrue(with_ca.reject_unauthorized)
        self.assertEqual(with_ca.ca, pki.ca.cert)
        pinned = server_tls(
            files["server.key"], files["server.crt"], None, pki.client.fingerprint.lower()
        )
        assert isinstance(pinned, ClientWhitelistContextFactory)
        self.assertEqual(pinned.fingerprints, {pki.client.fingerprint})
        self.assertIsNone(client_tls(None, None, None))
        self.assertEqual(client_tls(None, None, None, insecure=True), ClientTLS(verify=False))
        self.assertEqual(
            client_tls(files["ca"], files["client.crt"], files["client.key"]),
            ClientTLS(pki.ca.cert, pki.client.cert, pki.client.key),
        )


def _echo(request: Request) -> Any:
    return {"payload": request.payload, "fingerprint": request.peer_certificate}


class WhitelistTests(TestCase):
    """``--tls-client-fingerprints`` on every server transport of the registry, on loopback."""

    timeout = 30

    async def serve(self, transport: str, tls: Any) -> int:
        entry = get_transport(transport)
        server = PeerRPCServer(
            None, entry.server_transport(reactor, tls=tls, interface="127.0.0.1"), _echo
        )
        self.addCleanup(server.stop)
        return await server.listen(0)

    def call(self, transport: str, port: int, tls: ClientTLS) -> Deferred[Any]:
        client = get_transport(transport).client_transport(reactor, tls=tls)
        self.addCleanup(client.stop)
        outgoing = OutgoingRequest(new_rid(), "svc", {"n": 1}, 5.0)
        return ensureDeferred(client.request(f"127.0.0.1:{port}", outgoing))

    async def test_listed_client_is_served_others_refused(self) -> None:
        files = pki_files(self)
        pki = make_pki()
        for transport in ("http", "ws"):
            for ca in (None, files["ca"]):
                with self.subTest(transport=transport, ca=ca):
                    tls = server_tls(
                        files["server.key"], files["server.crt"], ca, pki.client.fingerprint
                    )
                    port = await self.serve(transport, tls)
                    listed = ClientTLS(pki.ca.cert, pki.client.cert, pki.client.key)
                    reply = await self.call(transport, port, listed)
                    self.assertEqual(
                        reply, {"payload": {"n": 1}, "fingerprint": pki.client.fingerprint}
                    )
                    for label, client in (
                        (
                            "unlisted",
                            ClientTLS(pki.ca.cert, pki.other_client.cert, pki.other_client.key),
                        ),
                        ("no certificate", ClientTLS(pki.ca.cert)),
                    ):
                        with self.subTest(client=label):
                            await self.assertFailure(
                                self.call(transport, port, client),
                                errors.DestinationUnreachable,
                                errors.TransportClosed,
                            )

    async def test_ca_alone_refuses_a_foreign_certificate(self) -> None:
        files = pki_files(self)
        pki = make_pki()
        tls = server_tls(files["server.key"], files["server.crt"], files["ca"])
        port = await self.serve("http", tls)
        good = ClientTLS(pki.ca.cert, pki.other_client.cert, pki.other_client.key)
        self.assertEqual((await self.call("http", port, good))["payload"], {"n": 1})
        rogue = ClientTLS(pki.ca.cert, pki.rogue_client.cert, pki.rogue_client.key)
        await self.assertFailure(
            self.call("http", port, rogue), errors.DestinationUnreachable, errors.TransportClosed
        )

    async def test_listed_but_not_signed_by_the_ca_is_refused(self) -> None:
        files = pki_files(self)
        pki = make_pki()
        listed = f"{pki.client.fingerprint},{pki.rogue_client.fingerprint}"
        port = await self.serve(
            "http", server_tls(files["server.key"], files["server.crt"], files["ca"], listed)
        )
        good = ClientTLS(pki.ca.cert, pki.client.cert, pki.client.key)
        self.assertEqual((await self.call("http", port, good))["payload"], {"n": 1})
        rogue = ClientTLS(pki.ca.cert, pki.rogue_client.cert, pki.rogue_client.key)
        await self.assertFailure(
            self.call("http", port, rogue), errors.DestinationUnreachable, errors.TransportClosed
        )

    async def test_publisher_refuses_an_unlisted_subscriber(self) -> None:
        files = pki_files(self)
        pki = make_pki()
        tls = server_tls(files["server.key"], files["server.crt"], None, pki.client.fingerprint)
        entry = get_transport("ws", pubsub=True)
        publisher = PeerPub(None, entry.pub_transport(reactor, tls=tls, interface="127.0.0.1"))
        self.addCleanup(publisher.stop)
        port = await publisher.listen(0)

        def subscribe(client: ClientTLS) -> Deferred[Any]:
            sub = entry.sub_transport(reactor, tls=client)
            self.addCleanup(sub.stop)
            return ensureDeferred(
                sub.connect(f"127.0.0.1:{port}", lambda message: None, lambda: None)
            )

        listed = ClientTLS(pki.ca.cert, pki.client.cert, pki.client.key)
        connection = await subscribe(listed)
        self.assertIsNotNone(connection)
        other = ClientTLS(pki.ca.cert, pki.other_client.cert, pki.other_client.key)
        await self.assertFailure(subscribe(other), errors.DestinationUnreachable)
