"""The grape operations, shared by the HTTP and the WebSocket API: Node's four (``announce``,
``lookup``, ``put``, ``get``) and ``unannounce``, the one grenache-grape's development branch
adds (docs/protocol.rst, *Grape HTTP API*).

``dispatch(node, operation, data)`` checks ``data`` the way grenache-grape 1.0.0 does, runs the
operation on the DHT node and answers the JSON-able result Node would send (docs/protocol.rst,
*Grape HTTP API*), ``None`` standing for the empty body of a get that found nothing.
The answer is the result itself when the operation completes at once (a lone grape's lookup,
the hot path of a development network), else a Deferred that fires with it; failures are
always a failed Deferred, typed (:mod:`grenache.errors`), and each API maps them to its wire
form in one place.

Where Node answers a malformed ``data`` with a JavaScript exception text (HTTP 500), this
grape answers :class:`~grenache.errors.GrapeDataInvalid` with a message that says what is wrong.
An invalid get hash is answered ``ERR_GRAPE_HASH_FORMAT`` instead of Node's silent "not found".
"""

from __future__ import annotations

import math
from collections.abc import Callable
from types import CoroutineType
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred, fail

from grenache.dht import bep44
from grenache.dht.node import DHTNode, GetResult
from grenache.errors import (
    GrapeAnnounceInvalid,
    GrapeDataInvalid,
    GrapeHashFormat,
    GrapeLookupInvalid,
    GrapeRequestNotFound,
    GrapeServicePortInvalid,
    InvalidPut,
)

#: What the APIs call: ``dispatch(operation, data)``, answering a value or a Deferred.
Dispatch = Callable[[str, Any], Any]


def make_dispatch(node: DHTNode) -> Dispatch:
    """Bind :func:`dispatch` to a node, in the shape the HTTP and WebSocket APIs take."""

    def bound(operation: str, data: Any) -> Any:
        return dispatch(node, operation, data)

    return bound


def dispatch(node: DHTNode, operation: str, data: Any) -> Any:
    """Run one grape API operation: its result, or a Deferred of it (see the module docstring)."""
    handler = _OPERATIONS.get(operation)
    try:
        if handler is None:
            raise GrapeRequestNotFound()
        result = handler(node, data)
    except Exception:
        return fail()
    # An operation answers a value when it completes at once (a lone grape's lookup), a
    # Deferred when it waits on the DHT, or a coroutine (put, get).
    if isinstance(result, CoroutineType):
        return ensureDeferred(result)
    return result


def _name_and_port(data: Any, operation: str) -> tuple[bytes, int]:
    """``[name, port]`` of an announce or unannounce, checked as Node checks an announce."""
    wire = f"ERR_GRAPE_{operation.upper()}"
    if not isinstance(data, list):
        raise GrapeAnnounceInvalid(wire)
    name = data[0] if data else None
    port = data[1] if len(data) > 1 else None
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise GrapeServicePortInvalid()
    if not isinstance(name, str):
        raise GrapeDataInvalid(f"{wire}: the service name must be a string")
    return name.encode("utf-8"), port


def announce(node: DHTNode, data: Any) -> Deferred[int]:
    """``[name, port]``: announce the service on the DHT; the number of nodes that stored it. Port 0
    announces the grape's own DHT port, as Node does.
    """
    return node.announce(*_name_and_port(data, "announce"))


def unannounce(node: DHTNode, data: Any) -> Deferred[int]:
    """``[name, port]``: withdraw the announce at once; the number of DHT nodes that
    confirmed (0 when none could, e.g. Node grapes, which keep it until it expires)."""
    return node.unannounce(*_name_and_port(data, "unannounce"))


def lookup(node: DHTNode, data: Any) -> list[str] | Deferred[list[str]]:
    """``name``: the ``"ip:port"`` peers announced under it (up to 100, in random order), answered
    at once, without a Deferred, when no walk is needed (a lone grape). A name that is empty or not
    a string is :class:`~grenache.errors.GrapeLookupInvalid`.
    """
    if not isinstance(data, str) or not data:
        raise GrapeLookupInvalid()
    key = data.encode("utf-8")
    peers = node.lookup_now(key)
    return node.lookup(key) if peers is None else peers


def _value_to_bencode(value: Any) -> Any:
    """A JSON value as bittorrent-dht would bencode it (strings as UTF-8, floats truncated)."""
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidPut("v must be a finite number")
        return int(value)
    if isinstance(value, list):
        return [_value_to_bencode(v) for v in value if v is not None]
    if isinstance(value, dict):
        return {k: _value_to_bencode(v) for k, v in value.items() if v is not None}
    return value


def _hex_field(data: dict[str, Any], name: str, message: str) -> bytes | None:
    value = data.get(name)
    if value is None:
        return None
    try:
        return bytes.fromhex(value)
    except (TypeError, ValueError):
        raise InvalidPut(message) from None


def _int_field(data: dict[str, Any], name: str, message: str) -> int | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise InvalidPut(message)
    return int(value)


async def put(node: DHTNode, data: Any) -> str:
    """A BEP 44 item, ``{"v", "k", "sig", "seq", "salt", "cas"}`` with the binary fields in hex (or
    a bare string ``v``): store it on the DHT; its key in hex. ``v`` is bencoded as bittorrent-dht
    does (floats truncated, nulls dropped); a bad field is :class:`~grenache.errors.InvalidPut` with
    Node's message.
    """
    if isinstance(data, str):
        data = {"v": data}
    if not isinstance(data, dict):
        raise GrapeDataInvalid("ERR_GRAPE_PUT: data must be an object or a string")
    v = data.get("v")
    if v is None:
        raise InvalidPut("opts.v not given")
    k = _hex_field(data, "k", "opts.k ed25519 public key must be 32 bytes")
    cas = None
    if k is None:
        item = bep44.Item(v=_value_to_bencode(v))
    else:
        sig = _hex_field(
            data, "sig", "opts.sign function or options.sig signature is required for mutable put"
        )
        salt = data.get("salt")
        if salt is not None and not isinstance(salt, str):
            raise InvalidPut("opts.salt must be a string")
        seq = _int_field(data, "seq", "opts.seq not an integer")
        cas = _int_field(data, "cas", "opts.cas must be an integer if provided")
        item = bep44.Item(
            v=_value_to_bencode(v),
            k=k,
            sig=sig,
            seq=seq,
            salt=salt.encode("utf-8") if salt else None,
        )
    result = await node.put(item, cas=cas)
    return result.key.hex()


async def get(node: DHTNode, data: Any) -> dict[str, Any] | None:
    """A hash (40 hex digits) or ``{"hash", "salt", "cache"}``: the item stored under it as
    grenache-grape answers it (:func:`get_result_json`), or ``None`` when nobody has a valid one. A
    malformed hash is :class:`~grenache.errors.GrapeHashFormat`; ``"cache": false`` skips the
    grape's own store.
    """
    salt: bytes | None = None
    cache = True
    if isinstance(data, dict):
        key_hex = data.get("hash")
        if isinstance(data.get("salt"), str) and data["salt"]:
            salt = data["salt"].encode("utf-8")
        cache = data.get("cache") is not False
    elif isinstance(data, str):
        key_hex = data
    else:
        raise GrapeDataInvalid("ERR_GRAPE_GET: data must be a hash string or an object with a hash")
    if not isinstance(key_hex, str) or len(key_hex) != 40:
        raise GrapeHashFormat()
    try:
        key = bytes.fromhex(key_hex)
    except ValueError:
        raise GrapeHashFormat() from None
    found = await node.get(key, salt=salt, cache=cache)
    if found is None:
        return None
    return get_result_json(found, salt, local=found.token is None)


def _value_to_json(value: Any) -> Any:
    """Node's ``v.toString()``: UTF-8 text for bytes, decimal text for an integer."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return [_value_to_json(v) for v in value]
    if isinstance(value, dict):
        return {
            (k.decode("utf-8", "replace") if isinstance(k, bytes) else k): _value_to_json(v)
            for k, v in value.items()
        }
    return value


def get_result_json(found: GetResult, salt: bytes | None, local: bool) -> dict[str, Any]:
    """The JSON object grenache-grape answers a get with, in Node's key order for each path."""
    item = found.item
    result: dict[str, Any] = {"id": found.responder.hex()}
    if local:
        result["token"] = None
        result["v"] = _value_to_json(item.v)
        if item.mutable:
            assert item.k is not None and item.sig is not None
            result.update(sig=item.sig.hex(), k=item.k.hex(), seq=item.seq)
        return result
    if item.mutable:
        assert item.k is not None and item.sig is not None
        result.update(k=item.k.hex(), seq=item.seq, sig=item.sig.hex())
    result["token"] = found.token.hex() if found.token is not None else None
    result["v"] = _value_to_json(item.v)
    if item.mutable and salt is not None:
        result["salt"] = salt.decode("utf-8", errors="replace")
    return result


_OPERATIONS = {
    "announce": announce,
    "unannounce": unannounce,
    "lookup": lookup,
    "put": put,
    "get": get,
}
