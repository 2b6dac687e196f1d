"""The link's grape clients: one interface, one class per grape API, chosen once from the URL.

:class:`GrapeClient` is what the :class:`~grenache.link.Link` needs from a grape API: send one
operation, fire with its result (the raw JSON value, judged by the link), and close.
:func:`grape_client` picks :class:`~grenache.link.http.HTTPGrapeClient` for an ``http://`` or
``https://`` URL and :class:`~grenache.link.ws.WSGrapeClient` for a ``ws://`` or ``wss://`` one.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.defer import Deferred

__all__ = ["GrapeClient", "grape_client", "other_api_url", "scheme_of"]


class GrapeClient(Protocol):
    """One grape API as the link uses it."""

    def request(self, type_: str, payload: Any) -> Deferred[Any]:
        """Send operation ``type_`` (``lookup``, ``announce``, ``put``, ``get``) with its data.

        Fires with the grape's result as a JSON value. Fails with
        :class:`~grenache.errors.GrapeReplyError` (the grape answered an error),
        :class:`~grenache.errors.GrapeUnreachable` (no answer: connection refused, reset...;
        :class:`~grenache.errors.GrapeWrongAPI` when the port is the grape's other API) or
        :class:`~grenache.errors.TransportClosed` (the connection closed with the request in
        flight). Cancelling the Deferred abandons the request.
        """
        ...

    def close(self) -> Deferred[None]:
        """Close the connections; requests still in flight fail. Fires once they are closed."""
        ...


def scheme_of(url: str) -> str:
    """The lowercase scheme of a grape URL; ValueError unless it is http(s) or ws(s)."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in ("http", "https", "ws", "wss"):
        raise ValueError(f"grape URL {url!r} must start with http://, https://, ws:// or wss://")
    return scheme


_OTHER = {"http": "ws", "https": "wss", "ws": "http", "wss": "https"}


def other_api_url(url: str) -> str:
    """The same address with the other API's scheme (``http://h:1`` -> ``ws://h:1``)."""
    scheme, rest = url.split("://", 1)
    return f"{_OTHER[scheme.lower()]}://{rest.rstrip('/')}"


def grape_client(
    url: str,
    reactor: Any,
    *,
    attempt_timeout: float,
    http_agent: Any = None,
    ws_agent: Any = None,
) -> GrapeClient:
    """The client for the grape API at ``url``.

    ``http_agent`` replaces the ``IAgent`` of an HTTP API (see
    :class:`~grenache.link.http.HTTPGrapeClient`); ``ws_agent`` the connecting agent of a
    WebSocket API and ``attempt_timeout`` how long its connection attempt may take (see
    :class:`~grenache.link.ws.WSGrapeClient`).
    """
    if scheme_of(url) in ("http", "https"):
        from grenache.link.http import HTTPGrapeClient

        return HTTPGrapeClient(url, reactor, agent=http_agent)
    from grenache.link.ws import WSGrapeClient

    return WSGrapeClient(url, reactor, attempt_timeout=attempt_timeout, agent=ws_agent)
