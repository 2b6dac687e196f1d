"""TLS from the command line: the ``--tls-*`` flags of ``grenache`` and ``twistd
grenache-service``, read into :class:`~grenache.tls.ServerTLS` / :class:`~grenache.tls.ClientTLS`.

Servers (``grenache serve``, ``grenache pub``, ``twistd grenache-service``)::

    --tls-key FILE --tls-cert FILE     serve over TLS with this key and certificate (chain)
    --tls-ca FILE                      clients must present a certificate this CA signed
    --tls-client-fingerprints FP[,FP]  clients must present a certificate with one of these
                                       SHA-1 fingerprints (Node's ``cert.fingerprint``)

Clients (``grenache request``, ``map``, ``sub``)::

    --tls-ca FILE                      the CA the service's certificate must lead to
    --tls-cert FILE --tls-key FILE     the client certificate to present
    --tls-insecure                     TLS without checking the service's certificate

Each file is read and parsed when the command line is read, so a missing or malformed file is
a one-line error naming it before anything listens or connects. A fingerprint is written as
Node prints ``cert.fingerprint`` and as ``openssl x509 -noout -fingerprint -sha1 -in FILE``
prints it (20 hex pairs joined by ``:``, any case; the ``SHA1 Fingerprint=`` prefix openssl
writes is accepted). docs/protocol.rst, *TLS and fingerprints*, describes the format; the
server refuses, during the TLS handshake, a client whose certificate is not listed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLContextFactory
from twisted.logger import Logger
from twisted.python import usage
from zope.interface import implementer

from grenache.tls import ClientTLS, ServerTLS, fingerprint

__all__ = [
    "CLIENT_TLS_FLAGS",
    "CLIENT_TLS_PARAMETERS",
    "SERVER_TLS_PARAMETERS",
    "ClientTLSOptions",
    "ClientWhitelistContextFactory",
    "ServerTLSOptions",
    "TLSFlagError",
    "client_tls",
    "parse_fingerprints",
    "server_tls",
]

log = Logger()

SERVER_TLS_PARAMETERS: list[list[Any]] = [
    ["tls-key", None, None, "PEM private key: serve over TLS (with --tls-cert)."],
    ["tls-cert", None, None, "PEM certificate (chain, leaf first) to serve with."],
    ["tls-ca", None, None, "PEM CA bundle: accept only clients with a certificate it signed."],
    [
        "tls-client-fingerprints",
        None,
        None,
        "FP[,FP...]: accept only clients whose certificate has one of these SHA-1 "
        "fingerprints (AA:BB:..., as openssl x509 -noout -fingerprint -sha1 prints).",
    ],
]
"""usage.Options ``optParameters`` rows of a server's TLS flags."""

CLIENT_TLS_PARAMETERS: list[list[Any]] = [
    ["tls-ca", None, None, "PEM CA bundle the service's certificate must lead to (TLS on)."],
    ["tls-cert", None, None, "PEM client certificate to present (with --tls-key)."],
    ["tls-key", None, None, "PEM private key of --tls-cert."],
]
"""usage.Options ``optParameters`` rows of a client's TLS flags."""

CLIENT_TLS_FLAGS: list[list[Any]] = [
    ["tls-insecure", None, "Use TLS without checking the service's certificate."],
]
"""usage.Options ``optFlags`` rows of a client's TLS flags."""


class TLSFlagError(ValueError):
    """A ``--tls-*`` flag is missing its partner, or its file cannot be read or parsed; the
    message is one line and names the flag and the file."""


_FINGERPRINT = re.compile(r"[0-9A-Fa-f]{2}(?::?[0-9A-Fa-f]{2}){19}\Z")


def parse_fingerprints(text: str) -> frozenset[str]:
    """The fingerprints in ``FP[,FP...]``, in Node's form (uppercase pairs joined by ``:``)."""
    found = set()
    for raw in text.split(","):
        entry = raw.strip()
        if "=" in entry and entry.lower().partition("=")[0].endswith("fingerprint"):
            entry = entry.partition("=")[2].strip()  # openssl's "SHA1 Fingerprint=" prefix
        if not _FINGERPRINT.match(entry):
            raise TLSFlagError(
                f"--tls-client-fingerprints: not a SHA-1 certificate fingerprint: {raw.strip()!r} "
                "(expected 20 hex pairs joined by ':', as openssl x509 -noout -fingerprint "
                "-sha1 -in FILE prints)"
            )
        digits = entry.replace(":", "").upper()
        found.add(":".join(digits[i : i + 2] for i in range(0, 40, 2)))
    return frozenset(found)


def _read(flag: str, path: str) -> bytes:
    try:
        with open(path, "rb") as stream:
            return stream.read()
    except OSError as error:
        raise TLSFlagError(f"{flag}: cannot read {path}: {error.strerror}") from None


def _certificates(flag: str, path: str) -> tuple[bytes, x509.Certificate]:
    """The PEM in ``path`` and its first (leaf) certificate."""
    pem = _read(flag, path)
    try:
        leaf = x509.load_pem_x509_certificates(pem)[0]
    except ValueError:
        raise TLSFlagError(f"{flag}: {path} holds no PEM certificate") from None
    return pem, leaf


def _private_key(flag: str, path: str) -> tuple[bytes, Any]:
    """The PEM in ``path`` and the private key it holds."""
    pem = _read(flag, path)
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise TLSFlagError(f"{flag}: {path} holds no unencrypted PEM private key") from None
    except Exception as error:  # an unsupported key type
        raise TLSFlagError(f"{flag}: {path}: {error}") from None
    return pem, key


def _pair(key_path: str, cert_path: str) -> tuple[bytes, bytes]:
    """The PEM of the key and certificate files, checked to belong together."""
    key_pem, key = _private_key("--tls-key", key_path)
    cert_pem, leaf = _certificates("--tls-cert", cert_path)
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        raise TLSFlagError(
            f"--tls-key: the key in {key_path} does not belong to the certificate in {cert_path}"
        )
    return key_pem, cert_pem


def _unpaired(key: str | None) -> str:
    if key is None:
        return "--tls-cert needs --tls-key too"
    return "--tls-key needs --tls-cert too"


def server_tls(
    key: str | None,
    cert: str | None,
    ca: str | None = None,
    client_fingerprints: str | None = None,
) -> ServerTLS | ClientWhitelistContextFactory | None:
    """What a server's transport gets as ``tls=``, from its ``--tls-*`` flags (``None``: no
    TLS). Raises :class:`TLSFlagError`."""
    if key is None and cert is None:
        restrictions = (("--tls-ca", ca), ("--tls-client-fingerprints", client_fingerprints))
        given = [flag for flag, value in restrictions if value is not None]
        if given:
            raise TLSFlagError(f"{' and '.join(given)} need --tls-key and --tls-cert")
        return None
    if key is None or cert is None:
        raise TLSFlagError(_unpaired(key))
    key_pem, cert_pem = _pair(key, cert)
    tls = ServerTLS(
        key_pem,
        cert_pem,
        _certificates("--tls-ca", ca)[0] if ca is not None else None,
        reject_unauthorized=ca is not None,
    )
    if client_fingerprints is not None:
        return ClientWhitelistContextFactory(tls, parse_fingerprints(client_fingerprints))
    return tls


def client_tls(
    ca: str | None,
    cert: str | None,
    key: str | None,
    insecure: bool = False,
) -> ClientTLS | None:
    """What a client's transport gets as ``tls=``, from its ``--tls-*`` flags (``None``: no
    TLS). Raises :class:`TLSFlagError`."""
    if ca is None and cert is None and key is None and not insecure:
        return None
    if (cert is None) != (key is None):
        raise TLSFlagError(_unpaired(key))
    key_pem, cert_pem = _pair(key, cert) if key is not None and cert is not None else (None, None)
    return ClientTLS(
        _certificates("--tls-ca", ca)[0] if ca is not None else None,
        cert_pem,
        key_pem,
        verify=not insecure,
    )


@implementer(IOpenSSLContextFactory)
class ClientWhitelistContextFactory:
    """Server TLS that accepts only clients presenting a certificate whose fingerprint is in
    ``fingerprints`` (Node's form, see :func:`parse_fingerprints`).

    The check runs in the TLS handshake, so it covers every server transport alike (HTTP,
    WebSocket RPC, WebSocket publisher): a client with no certificate or an unlisted one never
    gets a request through. With ``tls.reject_unauthorized`` (``--tls-ca``) the certificate
    must also verify against ``tls.ca``; otherwise a self-signed client certificate is fine,
    the fingerprint pinning it.
    """

    def __init__(self, tls: ServerTLS, fingerprints: Iterable[str]) -> None:
        self.tls = tls
        self.fingerprints = frozenset(fingerprints)
        self._context: SSL.Context | None = None

    def _verify(self, conn: Any, cert: crypto.X509, errno: int, depth: int, ok: int) -> bool:
        if self.tls.reject_unauthorized and not ok:
            return False
        if depth != 0:
            return True
        seen = fingerprint(cert)
        if seen in self.fingerprints:
            return True
        log.warn(
            "Refused a TLS client: certificate fingerprint {fingerprint} is not listed",
            fingerprint=seen,
        )
        return False

    def getContext(self) -> SSL.Context:
        """The server context, asking every client for a certificate and checking it."""
        if self._context is None:
            factory: Any = attrs.evolve(self.tls, request_cert=True).context_factory()
            context = factory.getContext()
            context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, self._verify)
            self._context = context
        return self._context


class ClientTLSOptions(usage.Options):
    """A client's TLS flags, mixed into a command's options: ``--tls-ca``, ``--tls-cert``,
    ``--tls-key``, ``--tls-insecure``. :meth:`read_tls` (called from ``postOptions``) puts the
    :class:`~grenache.tls.ClientTLS`, or ``None``, in ``self["tls"]``."""

    optParameters = CLIENT_TLS_PARAMETERS
    optFlags = CLIENT_TLS_FLAGS

    def read_tls(self) -> None:
        """Read the flags' files; a usage error naming the flag and file if one is bad."""
        try:
            self["tls"] = client_tls(
                self["tls-ca"], self["tls-cert"], self["tls-key"], bool(self["tls-insecure"])
            )
        except TLSFlagError as error:
            raise usage.UsageError(str(error)) from None


class ServerTLSOptions(usage.Options):
    """A server's TLS flags, mixed into a command's options: ``--tls-key``, ``--tls-cert``,
    ``--tls-ca``, ``--tls-client-fingerprints``. :meth:`read_tls` (called from
    ``postOptions``) puts what the server transport gets as ``tls=``, or ``None``, in
    ``self["tls"]``."""

    optParameters = SERVER_TLS_PARAMETERS

    def read_tls(self) -> None:
        """Read the flags' files; a usage error naming the flag and file if one is bad."""
        try:
            self["tls"] = server_tls(
                self["tls-key"],
                self["tls-cert"],
                self["tls-ca"],
                self["tls-client-fingerprints"],
            )
        except TLSFlagError as error:
            raise usage.UsageError(str(error)) from None
