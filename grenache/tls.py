"""TLS for peers: certificate fingerprints in Node's format and server/client options.

Node's RPC servers hand handlers ``req.socket.getPeerCertificate()`` and the documented way to
authorise a client is by ``cert.fingerprint``: the SHA-1 of the certificate's DER, as uppercase
hex pairs joined by ``:`` (docs/protocol.rst, *TLS and fingerprints*). :func:`fingerprint`
computes exactly that.

:class:`ServerTLS` and :class:`ClientTLS` take PEM bytes and Node's option names (``key``,
``cert``, ``ca``, ``requestCert``, ``rejectUnauthorized``), so a Node peer's configuration
translates one to one. The defaults differ where Node's are unsafe:

- a server that asks for client certificates (``request_cert``) without
  ``reject_unauthorized`` accepts any certificate (as Node does), and the handler sees its
  fingerprint, which is safe to authorise on because the client proved it holds the key;
- a client **verifies** the server's chain against ``ca`` and the destination IP or hostname by
  default. Node examples turn this off (``rejectUnauthorized: false``) because the shipped test
  certificates have no subjectAltName; ``verify=False`` does the same, and
  ``check_hostname=False`` keeps the chain check but skips the name check.
"""

from __future__ import annotations

import hashlib
import ipaddress
from typing import Any, cast

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from service_identity import CertificateError, VerificationError
from service_identity.cryptography import extract_patterns
from service_identity.hazmat import DNS_ID, IPAddress_ID, verify_service_identity
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IOpenSSLContextFactory
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

__all__ = [
    "ClientTLS",
    "ServerTLS",
    "fingerprint",
    "peer_certificate",
]


def fingerprint(certificate: bytes | x509.Certificate | crypto.X509) -> str:
    """Node's ``cert.fingerprint``: SHA-1 of the DER, uppercase hex pairs joined by ``:``.

    ``certificate`` is DER bytes, a ``cryptography`` certificate or a pyOpenSSL ``X509``.
    """
    der = _der(certificate)
    return ":".join(f"{b:02X}" for b in hashlib.sha1(der).digest())


def _der(certificate: bytes | x509.Certificate | crypto.X509) -> bytes:
    if isinstance(certificate, bytes):
        return certificate
    if isinstance(certificate, crypto.X509):
        certificate = certificate.to_cryptography()
    return certificate.public_bytes(serialization.Encoding.DER)


def peer_certificate(transport: Any) -> tuple[str, bytes] | None:
    """``(fingerprint, der)`` of the certificate the other end of ``transport`` presented.

    ``None`` when the transport is not TLS or no certificate was presented. Call it once the
    handshake is complete (e.g. when the first request arrives).
    """
    get = getattr(transport, "getPeerCertificate", None)
    if get is None:
        return None
    try:
        cert = get()
    except Exception:
        return None
    if cert is None:
        return None
    der = _der(cert)
    return fingerprint(der), der


def _load_chain(pem: bytes) -> list[crypto.X509]:
    return [crypto.X509.from_cryptography(c) for c in x509.load_pem_x509_certificates(pem)]


def _load_key(pem: bytes) -> crypto.PKey:
    key = serialization.load_pem_private_key(pem, password=None)
    return crypto.PKey.from_cryptography_key(key)  # type: ignore[arg-type]


def _accept_any(conn: Any, cert: Any, errno: int, depth: int, ok: int) -> bool:
    """Verification callback that accepts any certificate (Node's ``rejectUnauthorized: false``)."""
    return True


@implementer(IOpenSSLContextFactory)
class _ServerContextFactory:
    """Wraps CertificateOptions to ask for a client certificate without requiring a valid one."""

    def __init__(self, options: ssl.CertificateOptions, request_cert: bool) -> None:
        self._options = options
        self._request_cert = request_cert
        self._context: SSL.Context | None = None

    def getContext(self) -> SSL.Context:
        if self._context is None:
            ctx = self._options.getContext()
            if self._request_cert:
                ctx.set_verify(SSL.VERIFY_PEER, _accept_any)
            self._context = ctx
        return self._context


@attrs.frozen
class ServerTLS:
    """Server TLS settings, in Node's terms (all certificates and keys are PEM bytes).

    ``cert`` may hold a chain (leaf first). ``ca`` is the CA bundle client certificates are
    verified against when ``reject_unauthorized`` is set. ``request_cert`` asks clients for a
    certificate; ``reject_unauthorized`` refuses handshakes without one that verifies.
    """

    key: bytes
    cert: bytes
    ca: bytes | None = None
    request_cert: bool = False
    reject_unauthorized: bool = False

    @classmethod
    def from_files(
        cls,
        key: str,
        cert: str,
        ca: str | None = None,
        *,
        request_cert: bool = False,
        reject_unauthorized: bool = False,
    ) -> ServerTLS:
        """Read the PEM files at the given paths."""
        return cls(
            _read(key),
            _read(cert),
            _read(ca) if ca else None,
            request_cert=request_cert,
            reject_unauthorized=reject_unauthorized,
        )

    def context_factory(self) -> IOpenSSLContextFactory:
        """An OpenSSL context factory for a TLS server endpoint or ``TLSMemoryBIOFactory``."""
        chain = _load_chain(self.cert)
        kwargs: dict[str, Any] = {}
        if self.reject_unauthorized:
            # Twisted takes either verify+caCerts (+requireCertificate) or a trustRoot, which
            # implies both, never the two together.
            if self.ca:
                kwargs["verify"] = True
                kwargs["requireCertificate"] = True
                kwargs["caCerts"] = _load_chain(self.ca)
            else:
                kwargs["trustRoot"] = ssl.platformTrust()
        options = ssl.CertificateOptions(
            privateKey=_load_key(self.key),
            certificate=chain[0],
            extraCertChain=chain[1:],
            **kwargs,
        )
        factory = _ServerContextFactory(options, self.request_cert and not self.reject_unauthorized)
        return cast(IOpenSSLContextFactory, factory)


def _name_checker(host: str) -> Any:
    """An OpenSSL verify callback: the chain must verify and the leaf must name ``host``.

    Written here rather than taken from ``optionsForClientTLS`` because Twisted's callback
    only catches ``VerificationError``: a certificate without any subjectAltName raises
    ``CertificateError`` there, which is logged and the connection is **accepted**.
    """
    ip = _is_ip(host)
    svcid: Any = IPAddress_ID(host) if ip else DNS_ID(host)

    def verify(conn: Any, cert: crypto.X509, err: int, depth: int, ok: int) -> bool:
        if not ok:
            return False
        if depth != 0:
            return True
        try:
            verify_service_identity(extract_patterns(cert.to_cryptography()), [svcid], [])
        except (VerificationError, CertificateError):
            return False
        return True

    return verify


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@implementer(IOpenSSLClientConnectionCreator)
class _ClientCreator:
    """Builds client connections from a fixed context, checking the name when asked."""

    def __init__(self, context: SSL.Context, host: str, check_hostname: bool) -> None:
        self._context = context
        self._host = host
        self._check = check_hostname
        self._sni = None if _is_ip(host) else host.encode("idna")

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        conn = SSL.Connection(self._context, None)
        conn.set_app_data(tlsProtocol)
        if self._sni is not None:
            conn.set_tlsext_host_name(self._sni)
        if self._check:
            conn.set_verify(
                SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _name_checker(self._host)
            )
        return conn


@implementer(IPolicyForHTTPS)
@attrs.frozen
class ClientTLS:
    """Client TLS settings (PEM bytes): trust anchors, an optional client certificate.

    ``ca`` is the CA bundle the server's chain must lead to (the platform's trust store when
    ``None``). ``verify=False`` accepts any server certificate (Node's
    ``rejectUnauthorized: false``); ``check_hostname=False`` verifies the chain but not that
    it names the destination (IP address or hostname). Also usable as a treq/Agent
    ``IPolicyForHTTPS``.
    """

    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None
    verify: bool = True
    check_hostname: bool = True
    _creators: dict[str, Any] = attrs.field(factory=dict, init=False, eq=False, repr=False)

    @classmethod
    def from_files(
        cls,
        ca: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        *,
        verify: bool = True,
        check_hostname: bool = True,
    ) -> ClientTLS:
        """Read the PEM files at the given paths."""
        return cls(
            _read(ca) if ca else None,
            _read(cert) if cert else None,
            _read(key) if key else None,
            verify=verify,
            check_hostname=check_hostname,
        )

    def _context(self) -> SSL.Context:
        options: dict[str, Any] = {}
        if self.cert is not None:
            if self.key is None:
                raise ValueError("ClientTLS: cert given without key")
            chain = _load_chain(self.cert)
            options["certificate"] = chain[0]
            options["extraCertChain"] = chain[1:]
            options["privateKey"] = _load_key(self.key)
        if self.verify:
            # Twisted takes either verify+caCerts or a trustRoot, never both.
            if self.ca:
                options["verify"] = True
                options["caCerts"] = _load_chain(self.ca)
            else:
                options["trustRoot"] = ssl.platformTrust()
        return ssl.CertificateOptions(**options).getContext()

    def creator_for(self, host: str) -> IOpenSSLClientConnectionCreator:
        """The connection creator for a connection to ``host`` (cached per host)."""
        creator: Any = self._creators.get(host)
        if creator is None:
            context = self._creators.get("")
            if context is None:
                context = self._creators[""] = self._context()
            creator = _ClientCreator(context, host, self.verify and self.check_hostname)
            self._creators[host] = creator
        return cast(IOpenSSLClientConnectionCreator, creator)

    def creatorForNetloc(self, hostname: bytes, port: int) -> IOpenSSLClientConnectionCreator:
        """``IPolicyForHTTPS``: the creator for ``hostname``."""
        return self.creator_for(hostname.decode("ascii"))


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()
