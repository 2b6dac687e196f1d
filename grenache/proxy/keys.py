"""The proxy's key convention and control payloads, as grenache-nodejs-proxy spells them.

A lookup gives addresses, not the transport they speak, so a proxy announces what it serves
under keys that carry a transport name: ``TRANSPORT:NAME`` (``ws:coffee``). A proxy in control
mode answers requests to :data:`CONTROL_KEY` (``rpc_proxy``) whose payload is ``ws:coffee``
(start proxying that key) or ``stop ws:coffee`` (stop); docs/proxy.rst describes the protocol.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import attrs

__all__ = [
    "CONTROL_KEY",
    "MAX_KEY_LENGTH",
    "STOP_PREFIX",
    "BadControlPayload",
    "ControlCommand",
    "Route",
    "parse_control",
    "parse_key",
    "proxied_key",
]

CONTROL_KEY = "rpc_proxy"
"""The key a control-mode proxy announces and takes commands under (grenache-nodejs-proxy's)."""

STOP_PREFIX = "stop "
"""What a control payload starts with to stop proxying a key."""

MAX_KEY_LENGTH = 1024
"""Longest proxied key (characters) a control payload may name."""


class BadControlPayload(ValueError):
    """A control payload is not ``TRANSPORT:NAME`` or ``stop TRANSPORT:NAME``; the message,
    sent to the caller as the reply's error, says what was expected."""


@attrs.frozen
class Route:
    """Where a proxied key's requests go: the service ``name`` over the ``transport`` named
    in the registry (:mod:`grenache.transports`)."""

    transport: str
    name: str


@attrs.frozen
class ControlCommand:
    """One parsed control payload: ``start`` (``True``) or stop ``key``, which is ``route``'s
    ``TRANSPORT:NAME``."""

    start: bool
    key: str
    route: Route


def proxied_key(transport: str, name: str) -> str:
    """The key ``TRANSPORT:NAME`` (``proxied_key("ws", "coffee") == "ws:coffee"``)."""
    return f"{transport}:{name}"


def parse_key(key: str, transports: Collection[str]) -> Route:
    """The route of a key ``TRANSPORT:NAME``: ``NAME`` over ``TRANSPORT``, which must be one
    of ``transports``; :class:`BadControlPayload` otherwise. ``NAME`` may hold ``:`` itself
    (``ws:http:x`` is ``http:x`` over WebSocket: a proxy behind a proxy)."""
    expected = _expected(transports)
    transport, colon, name = key.partition(":")
    if not colon:
        raise BadControlPayload(f"{key!r} is not {expected}")
    if transport not in transports:
        raise BadControlPayload(
            f"unknown transport {transport!r} in {key!r} (available: {', '.join(transports)})"
        )
    if not name:
        raise BadControlPayload(f"{key!r} names no service: expected {expected}")
    if len(key) > MAX_KEY_LENGTH:
        raise BadControlPayload(f"a proxied key is at most {MAX_KEY_LENGTH} characters")
    return Route(transport, name)


def parse_control(payload: Any, transports: Collection[str]) -> ControlCommand:
    """The command in a control payload: ``TRANSPORT:NAME`` starts proxying that key,
    ``stop TRANSPORT:NAME`` stops it. ``transports`` are the transport names a proxied key
    may carry. Anything else raises :class:`BadControlPayload`."""
    if not isinstance(payload, str):
        raise BadControlPayload(
            f"the payload must be a string, {_expected(transports)}; not {_json_kind(payload)}"
        )
    start = not payload.startswith(STOP_PREFIX)
    key = payload if start else payload[len(STOP_PREFIX) :]
    return ControlCommand(start, key, parse_key(key, transports))


def _expected(transports: Collection[str]) -> str:
    names = " or ".join(transports)
    return f'"TRANSPORT:NAME" or "{STOP_PREFIX}TRANSPORT:NAME" (TRANSPORT: {names})'


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
