"""What a grape's answer means for each operation (docs/protocol.rst, *Link*).

A result of the wrong type for the operation (announce: a number, put: a 40-hex key, lookup: a
list of addresses, get: an object or nothing) is the grape's error string, raised as
:class:`~grenache.errors.GrapeReplyError` with ``status`` (the HTTP status, ``None`` over the
WebSocket API).
"""

from __future__ import annotations

import re
from typing import Any

from grenache.codec import json_dumps
from grenache.errors import GrapeReplyError, LookupEmpty
from grenache.link.item import Item

__all__ = [
    "announce_result",
    "copy_result",
    "get_result",
    "is_int",
    "lookup_result",
    "put_result",
    "text_of",
]

_KEY_RE = re.compile(r"[0-9a-f]{40}\Z")


def is_int(value: object) -> bool:
    """An integer that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def text_of(result: Any) -> str:
    """The grape's string for an unexpected result: a string as is, anything else as JSON."""
    if isinstance(result, str):
        return result
    try:
        return json_dumps(result).decode("utf-8")
    except (TypeError, ValueError):
        return repr(result)


def copy_result(result: Any) -> Any:
    """A private copy of a shared result for one caller (results are JSON values)."""
    if isinstance(result, list):
        return [copy_result(x) for x in result]
    if isinstance(result, dict):
        return {k: copy_result(v) for k, v in result.items()}
    return result


def _unexpected(result: Any, status: int | None) -> GrapeReplyError:
    return GrapeReplyError(text_of(result), status)


def lookup_result(result: Any, status: int | None) -> list[str]:
    """The addresses of a lookup; LookupEmpty for ``[]``."""
    if isinstance(result, list):
        if not result:
            raise LookupEmpty()
        if all(isinstance(peer, str) for peer in result):
            return result
    raise _unexpected(result, status)


def announce_result(result: Any, status: int | None) -> int:
    """The number of DHT nodes an announce reached."""
    if is_int(result):
        return int(result)
    raise _unexpected(result, status)


def put_result(result: Any, status: int | None) -> str:
    """The 40-hex key of a put."""
    if isinstance(result, str) and _KEY_RE.match(result):
        return result
    raise _unexpected(result, status)


def get_result(result: Any, status: int | None) -> Item | None:
    """The item of a get, or None when the grape found none."""
    if result is None or result == "":
        return None
    if isinstance(result, dict):
        try:
            return Item.from_json(result)
        except ValueError:
            pass
    raise _unexpected(result, status)
