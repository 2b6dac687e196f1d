"""JSON exactly as Node's ``JSON.stringify`` writes it, and the msgpack codec.

Node writes compact JSON, raw UTF-8 (no ``\\uXXXX`` for non-ASCII) and ``null`` for NaN and
infinities; Python's defaults differ on all three.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import msgpack

_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")

# JSONEncoder.encode builds a new C encoder for every call, a third of a small message's
# encoding time; this one is built once, with the same options (compact, raw UTF-8, no NaN,
# circular references detected). Its markers dict is emptied after a failed call, which can
# leave entries behind; the C encoder runs no Python code on JSON values, so calls never
# interleave.
_markers: dict[int, Any] = {}
_c_encode: Any = (
    None
    if json.encoder.c_make_encoder is None  # type: ignore[attr-defined]
    else json.encoder.c_make_encoder(  # type: ignore[attr-defined]
        _markers,
        _encoder.default,
        json.encoder.encode_basestring,  # type: ignore[attr-defined]
        None,
        ":",
        ",",
        False,
        False,
        False,
    )
)


def _encode(value: Any) -> str:
    if _c_encode is None:
        return _encoder.encode(value)
    try:
        return "".join(_c_encode(value, 0))
    except BaseException:
        _markers.clear()
        raise


def _replace_non_finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _replace_non_finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_replace_non_finite(v) for v in value]
    return value


def json_dumps(value: Any) -> bytes:
    """Encode ``value`` as Node's ``JSON.stringify`` would, as UTF-8 bytes."""
    try:
        text = _encode(value)
    except ValueError:
        text = _encode(_replace_non_finite(value))
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # A Python str holds a surrogate only when it is lone; Node escapes those as \udXXX.
        return _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text).encode("utf-8")


def _refuse_constant(token: str) -> Any:
    raise ValueError(f"invalid JSON token {token}")


_decoder = json.JSONDecoder(parse_constant=_refuse_constant)


def json_loads(data: bytes | str) -> Any:
    """Decode JSON text; raises ``ValueError`` (as ``json`` does) when it is not JSON.

    Python's ``NaN``/``Infinity`` extensions are refused, since ``JSON.parse`` refuses them.
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = bytes(data).decode("utf-8")
    return _decoder.decode(data)


def msgpack_dumps(value: Any) -> bytes:
    """Encode ``value`` as msgpack (binary type for bytes, str type for text)."""
    return msgpack.packb(value, use_bin_type=True)


def msgpack_loads(data: bytes) -> Any:
    """Decode msgpack; raises ``ValueError`` subclasses on malformed input."""
    return msgpack.unpackb(data, raw=False, strict_map_key=False)
