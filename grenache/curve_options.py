"""CURVE from the command line: the ``--curve-*`` flags of the zmq transport, for ``grenache``
and ``twistd grenache-service``, read into the settings of :mod:`grenache.transports.zmq.curve`.

Servers (``grenache serve``, ``grenache pub``, ``twistd grenache-service``)::

    --curve-key FILE                   encrypt with this key pair (grenache keygen --curve)
    --curve-clients FILE|KEY[,KEY]     accept only clients with one of these public keys

Clients (``grenache request``, ``map``, ``sub``)::

    --curve-server-key Z85             the server's public key: turns CURVE on
    --curve-key FILE                   this client's key pair (a fresh one without it)

The flags go with ``--transport zmq`` only, and the ``--tls-*`` flags never do: either is a
one-line usage error naming the flags. ZeroMQ is imported only when a CURVE flag is given.
docs/zeromq.rst, *CURVE*, walks through a setup.
"""

from __future__ import annotations

from typing import Any

from twisted.python import usage

__all__ = ["CurveClientOptions", "CurveServerOptions", "curve_client", "curve_server"]


_TLS_FLAGS = ("tls-key", "tls-cert", "tls-ca", "tls-client-fingerprints", "tls-insecure")
_CURVE_FLAGS = ("curve-key", "curve-clients", "curve-server-key")


def curve_server(key_file: str | None, clients: str | None) -> Any:
    """The :class:`~grenache.transports.zmq.CurveServer` of ``--curve-key FILE`` and
    ``--curve-clients FILE-or-KEYS`` (``None`` without ``--curve-key``); a usage error naming
    the flag when one is wrong. Imports ZeroMQ only when a flag is given."""
    if key_file is None:
        if clients is not None:
            raise usage.UsageError("--curve-clients needs --curve-key (the server's key pair)")
        return None
    from grenache.transports.zmq import curve

    try:
        keypair = curve.read_keypair_file(key_file)
    except ValueError as error:
        raise usage.UsageError(f"--curve-key: {error}") from None
    allowed = None
    if clients is not None:
        try:
            allowed = curve.read_client_keys(clients)
        except (ValueError, OSError) as error:
            raise usage.UsageError(f"--curve-clients: {error}") from None
    return curve.CurveServer(keypair, allowed)


def curve_client(server_key: str | None, key_file: str | None) -> Any:
    """The :class:`~grenache.transports.zmq.CurveClient` of ``--curve-server-key Z85`` and
    ``--curve-key FILE`` (``None`` without ``--curve-server-key``); a usage error naming the
    flag when one is wrong."""
    if server_key is None:
        if key_file is not None:
            raise usage.UsageError("--curve-key needs --curve-server-key (the server's key)")
        return None
    from grenache.transports.zmq import curve

    try:
        key = curve.parse_key(server_key, "server key")
    except ValueError as error:
        raise usage.UsageError(f"--curve-server-key: {error}") from None
    keypair = None
    if key_file is not None:
        try:
            keypair = curve.read_keypair_file(key_file)
        except ValueError as error:
            raise usage.UsageError(f"--curve-key: {error}") from None
    return curve.CurveClient(key, keypair)


def _check_flags(options: usage.Options, transport: str) -> None:
    """TLS flags only off zmq, CURVE flags only on zmq."""
    if transport == "zmq":
        given = [f"--{flag}" for flag in _TLS_FLAGS if options.get(flag)]
        if given:
            raise usage.UsageError(
                f"{', '.join(given)}: the zmq transport has no TLS; it is secured with CURVE "
                "(--curve-key, --curve-server-key, --curve-clients)"
            )
    else:
        given = [f"--{flag}" for flag in _CURVE_FLAGS if options.get(flag) is not None]
        if given:
            raise usage.UsageError(f"{', '.join(given)}: CURVE needs --transport zmq")


class CurveServerOptions(usage.Options):
    """A server's (or publisher's) CURVE flags, mixed in beside :class:`ServerTLSOptions`:
    ``--curve-key FILE`` (the key pair ``grenache keygen --curve`` wrote: encrypt and
    authenticate the server) and ``--curve-clients`` (accept only these client keys).
    :meth:`read_security` fills ``self["tls"]``: CURVE settings with ``--transport zmq``,
    the TLS flags' settings otherwise."""

    optParameters: list[list[Any]] = [
        [
            "curve-key",
            None,
            None,
            "zmq transport: CURVE key file (grenache keygen --curve) to encrypt with.",
        ],
        [
            "curve-clients",
            None,
            None,
            "zmq transport: accept only these CURVE client public keys (a file with one Z85 "
            "key per line, or KEY[,KEY...]).",
        ],
    ]

    def read_security(self, transport: str) -> None:
        """Read the TLS or CURVE flags of ``transport``; a usage error for the other kind."""
        _check_flags(self, transport)
        if transport == "zmq":
            self["tls"] = curve_server(self["curve-key"], self["curve-clients"])
        else:
            self.read_tls()  # type: ignore[attr-defined]


class CurveClientOptions(usage.Options):
    """A client's (or subscriber's) CURVE flags, mixed in beside :class:`ClientTLSOptions`:
    ``--curve-server-key Z85`` (the server's public key: turns CURVE on) and ``--curve-key
    FILE`` (this client's key pair, for servers with ``--curve-clients``; a fresh key
    otherwise). :meth:`read_security` fills ``self["tls"]``."""

    optParameters: list[list[Any]] = [
        [
            "curve-server-key",
            None,
            None,
            "zmq transport: the server's CURVE public key (Z85): encrypt and check the server.",
        ],
        [
            "curve-key",
            None,
            None,
            "zmq transport: this client's CURVE key file (for servers with --curve-clients).",
        ],
    ]

    def read_security(self, transport: str) -> None:
        """Read the TLS or CURVE flags of ``transport``; a usage error for the other kind."""
        _check_flags(self, transport)
        if transport == "zmq":
            self["tls"] = curve_client(self["curve-server-key"], self["curve-key"])
        else:
            self.read_tls()  # type: ignore[attr-defined]
