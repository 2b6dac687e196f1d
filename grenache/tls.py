"""TLS for peers: certificate fingerprints in Node's format and server/client options.

Node's RPC servers hand handlers ``req.socket.getPeerCertificate()`` and the documented way to
authorise a client is by ``cert.fingerprint``: the SHA-1 of the certificate's DER, as uppercase
hex pairs joined by ``:`` (reference §6.2). :func:`fingerprint` computes exactly that.

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
from typing import Any, cast

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
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
            kwargs["verify"] = True
            kwargs["requireCertificate"] = True
            if self.ca:
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


@implementer(IOpenSSLClientConnectionCreator)
class _ClientCreator:
    """Builds client connections with a fixed context: no hostname check."""

    def __init__(self, context: SSL.Context) -> None:
        self._context = context

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        conn = SSL.Connection(self._context, None)
        conn.set_app_data(tlsProtocol)
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

    def _client_certificate(self) -> ssl.PrivateCertificate | None:
        if self.cert is None:
            return None
        if self.key is None:
            raise ValueError("ClientTLS: cert given without key")
        return ssl.PrivateCertificate.loadPEM(self.cert + b"\n" + self.key)

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
            options["verify"] = True
            if self.ca:
                options["caCerts"] = _load_chain(self.ca)
            else:
                options["trustRoot"] = ssl.platformTrust()
        return ssl.CertificateOptions(**options).getContext()

    def creator_for(self, host: str) -> IOpenSSLClientConnectionCreator:
        """The connection creator for a connection to ``host`` (cached per host)."""
        creator: Any = self._creators.get(host)
        if creator is None:
            if self.verify and self.check_hostname:
                trust = (
                    ssl.trustRootFromCertificates(
                        [ssl.Certificate(c) for c in _load_chain(self.ca)]
                    )
                    if self.ca
                    else ssl.platformTrust()
                )
                client_cert = self._client_certificate()
                creator = ssl.optionsForClientTLS(
                    host, trustRoot=trust, clientCertificate=client_cert
                )
            else:
                creator = _ClientCreator(self._context())
            self._creators[host] = creator
        return cast(IOpenSSLClientConnectionCreator, creator)

    def creatorForNetloc(self, hostname: bytes, port: int) -> IOpenSSLClientConnectionCreator:
        """``IPolicyForHTTPS``: the creator for ``hostname``."""
        return self.creator_for(hostname.decode("ascii"))


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()
