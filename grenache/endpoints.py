"""Where Grenache listens and where it connects: Twisted endpoints, with a port number still
accepted everywhere.

Every listening socket of the project (the grape's APIs, RPC servers, publishers) is opened
through :func:`server_endpoint`, and every outgoing connection (RPC clients, subscribers, the
link) through :func:`client_endpoint`. So a program may pass

- a port number (``1337``, or ``"1337"`` from a command line): TCP on that port, bound to
  ``interface`` (all IPv4 addresses by default; an IPv6 literal interface listens on IPv6);
- an endpoint description, as ``twistd`` and :func:`twisted.internet.endpoints.serverFromString`
  read them: ``"tcp:0:interface=127.0.0.1"``, ``"tcp6:8080"``,
  ``"ssl:8443:privateKey=key.pem:certKey=cert.pem"``, ``"unix:/run/grenache.sock"``;
- an :class:`~twisted.internet.interfaces.IStreamServerEndpoint` built by the program.

Addresses as Grenache passes them around (lookup results, announces, ``--bn``) are
``host:port`` text; an IPv6 literal is written in brackets, ``[::1]:1337``
(:func:`split_host_port`, :func:`join_host_port`).
"""

from __future__ import annotations

import inspect
import ipaddress
from typing import Any, Union

from twisted.internet import endpoints
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import (
    IListeningPort,
    IOpenSSLClientConnectionCreator,
    IProtocolFactory,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "ListenSpec",
    "bound_port",
    "check_description",
    "check_listen_spec",
    "client_endpoint",
    "describe_listen_spec",
    "is_ip_literal",
    "join_host_port",
    "listen",
    "server_endpoint",
    "split_host_port",
]

# zope interfaces do not support ``|``, so Union it is.
ListenSpec = Union[int, str, IStreamServerEndpoint]  # noqa: UP007
"""A port number, an endpoint description, or an endpoint: what every ``listen`` accepts."""

# Twisted 26.4 added ``clock=`` (TLS timers on the given reactor); older ones use the global one.
_WRAP_TLS_TAKES_CLOCK = "clock" in inspect.signature(endpoints.wrapClientTLS).parameters

DEFAULT_CONNECT_TIMEOUT = 10.0
"""Seconds a TCP connect may take before it fails (Twisted's own default is 30)."""


def server_endpoint(
    reactor: Any, where: ListenSpec, *, interface: str = ""
) -> IStreamServerEndpoint:
    """The server endpoint for ``where`` (see the module docstring for what it may be).

    ``interface`` applies to a port number only: an endpoint description names its own
    interface. Anything else raises :class:`TypeError`; a malformed description raises
    :class:`ValueError` naming it.
    """
    endpoint: Any
    if IStreamServerEndpoint.providedBy(where):
        return where  # type: ignore[return-value]
    if isinstance(where, bool):
        raise TypeError(f"a port number or an endpoint description is needed, not {where!r}")
    if isinstance(where, str) and where.strip().isdigit():
        where = int(where.strip())
    if isinstance(where, int):
        if not 0 <= where <= 65535:
            raise ValueError(f"port {where} is not between 0 and 65535")
        if interface and isIPv6Address(interface.strip("[]")):
            endpoint = endpoints.TCP6ServerEndpoint(reactor, where, interface=interface.strip("[]"))
        else:
            endpoint = endpoints.TCP4ServerEndpoint(reactor, where, interface=interface)
        return endpoint  # type: ignore[no-any-return]
    if isinstance(where, str):
        try:
            return endpoints.serverFromString(reactor, where)
        except (ValueError, TypeError, KeyError) as e:
            raise ValueError(
                f"not a port number or an endpoint description: {where!r} ({e})"
            ) from e
    raise TypeError(
        "a port number, an endpoint description or an IStreamServerEndpoint is needed,"
        f" not {where!r}"
    )


def check_listen_spec(value: str) -> ListenSpec:
    """A command line's port or endpoint description, checked now without binding anything, so
    that a typo or an unreadable TLS key is a usage error rather than a failure at startup.

    Digits are a port number (0-65535), anything else must be a description
    :func:`server_endpoint` accepts; returns the port number or the description. Raises
    :class:`ValueError` naming what is wrong.
    """
    text = value.strip()
    if text.isdigit():
        port = int(text)
        if not 0 <= port <= 65535:
            raise ValueError(f"{value} is not a port number (0-65535)")
        return port
    try:
        check_description(text)
    except ValueError:
        raise
    except Exception as error:  # serverFromString raises many kinds (ssl: files and keys)
        raise ValueError(f"cannot listen on {text!r}: {error}") from None
    return text


def check_description(description: str) -> None:
    """Build, never listen on, the server endpoint ``description`` names: raises what
    :func:`server_endpoint` raises for it (:class:`ValueError` when malformed) and, for an
    ``ssl:`` description, :class:`OSError` or pyOpenSSL's errors when its files cannot be read
    or parsed."""
    server_endpoint(_Unstarted(), description)


class _Unstarted:
    """Stands in for the reactor while an endpoint description is only checked."""


def listen(
    reactor: Any, where: ListenSpec, factory: IProtocolFactory, *, interface: str = ""
) -> Deferred[IListeningPort]:
    """Listen with ``factory`` on ``where``; fires with the listening port.

    A taken port fails the Deferred with :class:`~twisted.internet.error.CannotListenError`.
    An invalid ``where`` fails it with :class:`ValueError` or :class:`TypeError`.
    """
    try:
        endpoint: Any = server_endpoint(reactor, where, interface=interface)
    except (TypeError, ValueError) as e:
        return fail(e)
    return endpoint.listen(factory)  # type: ignore[no-any-return]


def bound_port(listening_port: IListeningPort) -> int:
    """The TCP port a listening port is bound to (0 for one with no port, e.g. a UNIX socket)."""
    host: Any = listening_port.getHost()  # type: ignore[misc]
    return int(getattr(host, "port", 0) or 0)


def describe_listen_spec(where: ListenSpec) -> str:
    """A short text for logs and errors: ``port 1337``, ``tcp6:0``, or the endpoint's repr."""
    if isinstance(where, int) or (isinstance(where, str) and where.strip().isdigit()):
        return f"port {int(where)}"
    if isinstance(where, str):
        return where
    return repr(where)


def is_ip_literal(host: str) -> bool:
    """Whether ``host`` is an IPv4 or IPv6 address (brackets allowed), not a name to resolve."""
    return isIPAddress(host) or isIPv6Address(host.strip("[]"))


def split_host_port(address: str) -> tuple[str, int]:
    """``"10.0.0.1:1337"`` -> ``("10.0.0.1", 1337)``; ``"[::1]:1337"`` -> ``("::1", 1337)``.

    A host name is returned as it is. An unbracketed IPv6 literal followed by a port
    (``"::1:1337"``) is read as address and port, the last colon separating them. Anything
    else raises :class:`ValueError` that quotes it.
    """
    text = address.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"address must be 'host:port' or '[ipv6]:port', got {address!r}")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"address must be 'host:port', got {address!r}")
    if not host or not port_text.isdigit() or not 0 < int(port_text) <= 65535:
        raise ValueError(
            f"address must be 'host:port' with a port from 1 to 65535, got {address!r}"
        )
    if ":" in host and not isIPv6Address(host):
        raise ValueError(f"not an IPv6 address in {address!r}")
    return host, int(port_text)


def join_host_port(host: str, port: int) -> str:
    """``host:port``, with an IPv6 literal in brackets (``[::1]:1337``)."""
    if ":" in host:
        return f"[{ipaddress.IPv6Address(host.strip('[]'))}]:{port}"
    return f"{host}:{port}"


def client_endpoint(
    reactor: Any,
    host: str,
    port: int,
    *,
    tls: IOpenSSLClientConnectionCreator | None = None,
    timeout: float = DEFAULT_CONNECT_TIMEOUT,
) -> IStreamClientEndpoint:
    """The endpoint to connect to ``host:port``, over TLS when ``tls`` is given.

    An IPv4 or IPv6 literal connects directly (no resolver on the hot path); a host name goes
    through :class:`~twisted.internet.endpoints.HostnameEndpoint`, which resolves it with the
    reactor's resolver and tries every address it gets, IPv6 and IPv4.
    """
    bare = host.strip("[]")
    endpoint: Any
    if isIPAddress(bare):
        endpoint = endpoints.TCP4ClientEndpoint(reactor, bare, port, timeout=timeout)
    elif isIPv6Address(bare):
        endpoint = endpoints.TCP6ClientEndpoint(reactor, bare, port, timeout=timeout)
    else:
        endpoint = endpoints.HostnameEndpoint(reactor, bare.encode("idna"), port, timeout=timeout)
    if tls is not None:
        if _WRAP_TLS_TAKES_CLOCK:
            endpoint = endpoints.wrapClientTLS(tls, endpoint, clock=reactor)
        else:  # pragma: no cover - Twisted before 26.4
            endpoint = endpoints.wrapClientTLS(tls, endpoint)
    return endpoint  # type: ignore[no-any-return]
