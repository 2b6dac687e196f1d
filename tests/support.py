"""Scaffolding the test modules share: certificates, key files, test doubles, reactor helpers.

One place for what several test modules need, so that each test module holds only its tests.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Callable
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from grenache import errors
from grenache.peer import OutgoingRequest
from grenache.tls import fingerprint

# grenache-nodejs-http's shipped test client certificate (test/certs/client1-crt.pem, public)
# and the fingerprint Node prints for it (docs/protocol.rst, *TLS and fingerprints*).
NODE_CLIENT1_PEM = b"""-----BEGIN CERTIFICATE-----
MIICrDCCAZQCFD5pBgAtlO+Ns8UpidJa/4iWoS3aMA0GCSqGSIb3DQEBCwUAMBMx
ETAPBgNVBAMMCE15VGVzdENBMB4XDTI1MDMyODE2MzgwN1oXDTM1MDMyNjE2Mzgw
N1owEjEQMA4GA1UEAwwHY2xpZW50MTCCASIwDQYJKoZIhvcNAQEBBQADggEPADCC
AQoCggEBAKiXZsaFLcb4eubwGXELePbFL//uR8W7OD0NSaKUbe6G1leLCqWt3ljS
p8BFTr8B8R/2l3i+VuedIIuzX2wJbBsTrdSEIcOfQauRnkF6RqoWbvToo7fYWphe
ZGiHfyVmJlr6XQbVNyzOnutEGPdpe6bJMwFdG/UCAaZeAsvAcAGxVGhAp8cjSnwh
t/8QZJ8/FLcHBVwc0Zd5ELmtPeaMS7GDBiUvdDYRQBRTY8ls9wPvbAuBzo0f/ude
72iHwkJuDOnTVtffXuFXhloBAVnjaXK0b7PtJ8ByGZ/mZEp1a7Pysehy4w6cL3qg
9cq306m/jxXrmwlVM/QJd2yhVOQnSPkCAwEAATANBgkqhkiG9w0BAQsFAAOCAQEA
HM7J+3coTFZYGwYmfG8aObCjN/3gW56VG+5SOHT9NmdfIuzvWrPBIsYE+CYj1nrK
IFm7TP89R2Ka0U20V09+26C0L3SyE6DUTipOc0zhGQgdLTU1bneIZGg26LtYbKJc
PV0+Bt1JPT4PulIcuq4XDRFBKaoXC0lmIo1NbfWZbunz1AaBjiJWKS2YksgJJ2Ad
GhL8/PJO7Ro+8xxunVikcl1MWyeYiKyKFk1J6j8bQPJ940poqSwMObXFKlUMKsm4
/e6JwqiCFv+MMPL80puUv/Fue6wmjY3rpygwAU60dBPmjLpWNBbuSb/+wjPWYtgy
f9m+nQEyfflc7t6anZjPMg==
-----END CERTIFICATE-----
"""
NODE_CLIENT1_FINGERPRINT = "E1:63:C1:46:B3:B6:46:3B:5E:92:98:34:40:A1:AB:FB:0E:92:D0:76"


# --- certificates for tests ---------------------------------------------------------------


@attrs.frozen
class Identity:
    """A certificate and its key, as PEM."""

    cert: bytes
    key: bytes

    @property
    def fingerprint(self) -> str:
        return fingerprint(x509.load_pem_x509_certificate(self.cert))


@attrs.frozen
class PKI:
    """A CA, a server certificate for 127.0.0.1/localhost, two client certificates, and a
    server certificate without subjectAltName (like Node's shipped test certificates)."""

    ca: Identity
    server: Identity
    client: Identity
    other_client: Identity
    server_no_san: Identity
    rogue_ca: Identity
    rogue_client: Identity


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _issue(
    cn: str,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    san: list[x509.GeneralName] | None = None,
) -> tuple[Identity, x509.Name, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    issuer_name, issuer_key = issuer if issuer is not None else (name, key)
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    return Identity(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)), name, key


def tls_on_a_clock(test: Callable[..., Any]) -> Callable[..., Any]:
    """Mark an in-memory TLS test (iosim, a Clock) that needs Twisted >= 26.4: before it,
    ``wrapClientTLS`` takes no ``clock`` and TLS timers run on the global reactor, which a
    Clock-driven test never runs (real-socket TLS works on every supported Twisted)."""
    from grenache import endpoints

    if not endpoints._WRAP_TLS_TAKES_CLOCK:
        test.skip = "needs Twisted >= 26.4 (wrapClientTLS(clock=)) to run TLS on a Clock"  # type: ignore[attr-defined]
    return test


@cache
def make_pki() -> PKI:
    """Generate (once per test run) the certificates the TLS tests use."""
    ca, ca_name, ca_key = _issue("grenache test CA", None, ca=True)
    rogue_ca, rogue_name, rogue_key = _issue("rogue CA", None, ca=True)
    server, _, _ = _issue(
        "localhost",
        (ca_name, ca_key),
        san=[
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ],
    )
    server_no_san, _, _ = _issue("localhost", (ca_name, ca_key))
    client, _, _ = _issue("client1", (ca_name, ca_key))
    other_client, _, _ = _issue("client2", (ca_name, ca_key))
    rogue_client, _, _ = _issue("rogue", (rogue_name, rogue_key))
    return PKI(ca, server, client, other_client, server_no_san, rogue_ca, rogue_client)


def write_identity(identity: Identity, directory: Path, stem: str) -> tuple[Path, Path]:
    """Write ``identity`` as ``stem.crt`` and ``stem.key`` (mode 0600) under ``directory``."""
    cert_path = directory / f"{stem}.crt"
    key_path = directory / f"{stem}.key"
    cert_path.write_bytes(identity.cert)
    key_path.touch(mode=0o600)
    key_path.write_bytes(identity.key)
    return cert_path, key_path


# --- test doubles and reactor helpers -------------------------------------------------------


class HeldDispatch:
    """A grape dispatcher (``dispatch(operation, data)``) that records each call and answers
    with a Deferred the test fires: ``calls`` holds ``(operation, data, reply)``."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, Deferred[Any]]] = []
        self._waiting: list[Deferred[tuple[str, Any, Deferred[Any]]]] = []

    def __call__(self, operation: str, data: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.calls.append((operation, data, d))
        waiting, self._waiting = self._waiting, []
        for w in waiting:
            w.callback((operation, data, d))
        return d

    def next_call(self) -> Deferred[tuple[str, Any, Deferred[Any]]]:
        """Fires with ``(operation, data, reply)`` when the dispatcher is next called."""
        d: Deferred[tuple[str, Any, Deferred[Any]]] = Deferred()
        self._waiting.append(d)
        return d


class SyncPumper:
    """The pumper ``autobahn.twisted.testing.create_memory_agent`` wants, flushed when the test
    says so: ``rounds`` passes over every pump (a reply to a reply needs more than one)."""

    def __init__(self, rounds: int = 3) -> None:
        self.rounds = rounds
        self.pumps: list[iosim.IOPump] = []

    def add(self, pump: iosim.IOPump) -> None:
        self.pumps.append(pump)

    def flush(self) -> None:
        for _ in range(self.rounds):
            for pump in list(self.pumps):
                pump.flush()


def recording_log(case: SynchronousTestCase, module: ModuleType) -> list[dict[str, Any]]:
    """The events ``module``'s ``log`` emits from now on (patched for the test ``case``)."""
    events: list[dict[str, Any]] = []
    case.patch(module, "log", Logger(namespace="test", observer=events.append))
    return events


# --- scripted peer doubles ------------------------------------------------------------------
# Unit tests of the peers' algorithms that script each destination's answer per call (see
# tests/test_peer_client_options.py, tests/test_peer_sub_events.py); tests of a service's
# behaviour use grenache.testing's in-memory network instead.


class FakeLink:
    """Answers lookups from a dict and records announcing."""

    def __init__(self, services: dict[str, list[str]] | None = None) -> None:
        self.services = services or {}
        self.announcing: list[tuple[str, int]] = []
        self.stopped: list[tuple[str, int]] = []
        self.lookups = 0

    def lookup(self, name: str) -> Deferred[list[str]]:
        self.lookups += 1
        dests = self.services.get(name)
        if not dests:
            return fail(errors.LookupEmpty())
        return succeed(list(dests))

    def start_announcing(self, name: str, port: int) -> Deferred[int]:
        self.announcing.append((name, port))
        return succeed(1)

    def stop_announcing(self, name: str, port: int) -> None:
        self.stopped.append((name, port))

    def stop(self) -> None:
        pass


Behaviour = Callable[[OutgoingRequest], "Deferred[Any]"]


class FakeClientTransport:
    """Per-destination behaviour: a callable returning a Deferred, or a Deferred to hold."""

    def __init__(self, behaviours: dict[str, Behaviour] | None = None) -> None:
        self.behaviours = behaviours or {}
        self.sent: list[tuple[str, OutgoingRequest]] = []
        self.held: list[tuple[str, OutgoingRequest, Deferred[Any]]] = []
        self.stopped = False

    def request(self, dest: str, request: OutgoingRequest) -> Deferred[Any]:
        self.sent.append((dest, request))
        behaviour = self.behaviours.get(dest)
        if behaviour is None:
            d: Deferred[Any] = Deferred()
            self.held.append((dest, request, d))
            return d
        return behaviour(request)

    def stop(self) -> Deferred[None]:
        self.stopped = True
        return succeed(None)


def echo(dest: str) -> Behaviour:
    return lambda request: succeed([dest, request.payload])


def refuses(request: OutgoingRequest) -> Deferred[Any]:
    return fail(errors.DestinationUnreachable("ERR_REQUEST_GENERIC: refused"))


class FakeConnection:
    def __init__(
        self, transport: FakeSubTransport, dest: str, on_message: Any, on_close: Any
    ) -> None:
        self.transport = transport
        self.dest = dest
        self.on_message = on_message
        self.on_close = on_close
        self.open = True

    def close(self) -> None:
        if self.open:
            self.open = False
            self.on_close()


class FakeSubTransport:
    def __init__(self, refusing: set[str] | None = None) -> None:
        self.refusing = refusing if refusing is not None else set()
        self.connections: list[FakeConnection] = []
        self.attempts: list[str] = []
        self.stopped = False

    def connect(
        self, dest: str, on_message: Any, on_close: Any, *, topic: str | None = None
    ) -> Deferred[Any]:
        self.attempts.append(dest)
        if dest in self.refusing:
            return fail(errors.DestinationUnreachable("refused"))
        conn = FakeConnection(self, dest, on_message, on_close)
        self.connections.append(conn)
        return succeed(conn)

    def stop(self) -> Deferred[None]:
        self.stopped = True
        for conn in self.connections:
            conn.close()
        return succeed(None)
