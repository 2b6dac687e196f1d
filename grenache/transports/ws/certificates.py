"""Client certificates on WebSocket servers: who may open a socket.

A server with TLS asks every client for a certificate (Node forces ``requestCert``); whether a
client may open a socket is then the decision of the server's ``verify_client`` hook, called with
the certificate's fingerprint as Node's ``verifyClient`` reads ``getPeerCertificate().fingerprint``
(docs/protocol.rst, *TLS and fingerprints*). :func:`fingerprint_whitelist` builds such a hook.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

import attrs
from OpenSSL import SSL

from grenache.tls import ServerTLS

__all__ = ["VerifyClient", "fingerprint_whitelist", "server_tls"]

VerifyClient = Callable[[str | None], bool]
"""``verify_client(fingerprint)``: whether a client may open a socket (``True``) or not."""


def _normalise_fingerprint(fingerprint: str) -> str:
    hexdigits = re.sub(r"[^0-9A-Fa-f]", "", fingerprint).upper()
    return ":".join(hexdigits[i : i + 2] for i in range(0, len(hexdigits), 2))


def fingerprint_whitelist(fingerprints: Iterable[str]) -> VerifyClient:
    """A ``verify_client`` hook accepting exactly the clients whose certificate is listed.

    Fingerprints are in Node's format (``E1:63:C1:...``, SHA-1); case and separators do not
    matter (Ruby's lowercase colon-less form is accepted too). Anything that is not 20 bytes of
    hex (a SHA-256 ``fingerprint256``, say) raises ValueError. A client without a certificate
    (or on a plain ``ws`` server) is refused.
    """
    allowed = frozenset(_normalise_fingerprint(f) for f in fingerprints)
    for entry in allowed:
        if len(entry) != 59:
            raise ValueError(f"not a SHA-1 certificate fingerprint: {entry!r}")

    def verify_client(fingerprint: str | None) -> bool:
        return fingerprint is not None and _normalise_fingerprint(fingerprint) in allowed

    return verify_client


def _accept_any_certificate(*_args: Any) -> bool:
    return True


def server_tls(tls: Any) -> Any:
    """The context factory to listen with, set to ask clients for a certificate.

    A :class:`~grenache.tls.ServerTLS` gets ``request_cert`` forced on (Node forces
    ``requestCert: true``); any other context factory whose context does not verify peers gets
    ``VERIFY_PEER`` with a callback that accepts any certificate, leaving the decision to
    ``verify_client``.
    """
    if isinstance(tls, ServerTLS):
        if not tls.reject_unauthorized:
            tls = attrs.evolve(tls, request_cert=True)
        return tls.context_factory()
    get_context = getattr(tls, "getContext", None)
    if get_context is not None:
        context = get_context()
        if not context.get_verify_mode() & SSL.VERIFY_PEER:
            context.set_verify(SSL.VERIFY_PEER, _accept_any_certificate)
    return tls
