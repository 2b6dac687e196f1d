"""JSON exactly as Node's ``JSON.stringify`` writes it, and the msgpack codec.

Node writes compact JSON, raw UTF-8 (no ``\\uXXXX`` for non-ASCII), ``null`` for NaN and
infinities, and numbers as ECMAScript's ``Number::toString`` spells them (``1`` for ``1.0``,
``10000000000000000`` for ``1e16``, ``1e-7`` for ``1e-07``); Python's defaults differ on all of
these. The rules are in docs/protocol.rst, *JSON*.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import msgpack

from grenache.speedups import json_encoder

__all__ = ["json_dumps", "json_loads", "msgpack_dumps", "msgpack_loads", "number_text"]

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")

#: The JSON encoder (see grenache.speedups.json_encoder); floats come out as ``repr`` writes them.
_encode = json_encoder.encode


def number_text(value: float) -> str:
    """``value`` as ECMAScript's ``Number::toString`` writes it (``JSON.stringify``'s numbers).

    The digits are the shortest that read back as ``value`` (what ``repr`` gives); the layout
    follows the ECMAScript rules: plain digits while the decimal exponent is below 21, ``0.00…``
    down to 1e-6, and ``d.ddde±n`` beyond, with no ``.0`` and no padded exponent. NaN and the
    infinities are ``null``, as ``JSON.stringify`` writes them; both zeros are ``0``.
    """
    if not math.isfinite(value):
        return "null"
    if value == 0:
        return "0"
    text = repr(float(value))
    sign = ""
    if text[0] == "-":
        sign, text = "-", text[1:]
    mantissa, _, exponent = text.partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = whole + fraction
    significant = digits.lstrip("0")
    # value = 0.<significant> * 10**n, as in the ECMAScript algorithm.
    n = len(whole) - (len(digits) - len(significant)) + (int(exponent) if exponent else 0)
    s = significant.rstrip("0")
    k = len(s)
    if k <= n <= 21:
        body = s + "0" * (n - k)
    elif 0 < n <= 21:
        body = s[:n] + "." + s[n:]
    elif -6 < n <= 0:
        body = "0." + "0" * -n + s
    else:
        e = n - 1
        body = (s if k == 1 else s[0] + "." + s[1:]) + ("e+" if e > 0 else "e-") + str(abs(e))
    return sign + body


_NEGATIVE_ZERO = re.compile(r"-0\.0(?=[,\]}]|$)")
_DOT_ZERO = re.compile(r"\.0(?=[,\]}]|$)")
_EXPONENT = re.compile(r"-?\d+(?:\.\d+)?e[-+]\d+")
# On long texts re's literal search is about twice as fast as ``in`` (CPython 3.11).
_E_MINUS_0 = re.compile("e-0").search


def _exponent_text(match: re.Match[str]) -> str:
    return number_text(float(match.group()))


def _rewrite_floats(text: str) -> str:
    """Rewrite the floats of the encoder's output (Python's ``repr``) in Node's spelling.

    The encoder escapes every ``"`` and ``\\`` inside a string and never writes a raw control
    character, so once the two escapes are masked with control characters, the ``"`` split
    the text into strings (odd pieces) and JSON structure (even pieces).
    """
    masked = "\\" in text
    if masked:
        text = text.replace("\\\\", "\x01\x01").replace('\\"', "\x02\x02")
    pieces = text.split('"')
    structure = '"'.join(pieces[0::2])
    fixed = structure
    if "e-0" in fixed or "e+" in fixed:
        fixed = _EXPONENT.sub(_exponent_text, fixed)
    if "-0.0" in fixed:
        fixed = _NEGATIVE_ZERO.sub("0", fixed)
    fixed = _DOT_ZERO.sub("", fixed)
    if fixed != structure:
        pieces[0::2] = fixed.split('"')
        text = '"'.join(pieces)
    if masked:
        text = text.replace("\x02\x02", '\\"').replace("\x01\x01", "\\\\")
    return text


def _replace_non_finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _replace_non_finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_replace_non_finite(v) for v in value]
    return value


def json_dumps(value: Any) -> bytes:
    """Encode ``value`` as Node's ``JSON.stringify`` would, as UTF-8 bytes.

    Dictionary keys that are not strings are converted as Python's ``json`` converts them
    (``True`` -> ``"true"``); Node's keys are always strings. Raises ``TypeError`` for a value
    JSON cannot hold and ``ValueError`` for a circular reference.
    """
    try:
        text = _encode(value)
    except ValueError:
        text = _encode(_replace_non_finite(value))
    # A float's repr differs from Node's spelling only when it ends in ".0" (then followed by
    # ",", "]", "}" or the end) or has the exponent e-05 to e-09 or e+16 to e+20. Most
    # messages hold no float: one-character searches first, then at most a short substring
    # search; a false alarm (the same spelling inside a string) only costs the rewrite.
    if (
        ("-" in text and ("e-0" in text if len(text) < 512 else _E_MINUS_0(text) is not None))
        or ("+" in text and ("e+1" in text or "e+20" in text))
        or ("." in text and ".0" in text and _DOT_ZERO.search(text) is not None)
    ):
        text = _rewrite_floats(text)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # A Python str holds a surrogate only when it is lone; Node escapes those as \udXXX.
        return _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text).encode("utf-8")


def _refuse_constant(token: str) -> Any:
    raise ValueError(f"invalid JSON token {token}")


_decoder = json.JSONDecoder(parse_constant=_refuse_constant)
_raw_decode = _decoder.raw_decode


def json_loads(data: bytes | str) -> Any:
    """Decode JSON text; raises ``ValueError`` (as ``json`` does) when it is not JSON.

    Python's ``NaN``/``Infinity`` extensions are refused, since ``JSON.parse`` refuses them.
    Nesting too deep for the decoder (a "JSON bomb" of ``[[[[...``) is a ``ValueError`` too,
    not a ``RecursionError``.
    """
    if type(data) is not str and isinstance(data, (bytes, bytearray, memoryview)):
        data = bytes(data).decode("utf-8")
    # raw_decode alone is the common case (a message with no surrounding whitespace); anything
    # else goes through decode, which skips whitespace and words the errors.
    try:
        value, end = _raw_decode(data)
        if end == len(data):
            return value
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    except ValueError:
        pass
    try:
        return _decoder.decode(data)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def msgpack_dumps(value: Any) -> bytes:
    """Encode ``value`` as msgpack (binary type for bytes, str type for text)."""
    return msgpack.packb(value, use_bin_type=True)


def msgpack_loads(data: bytes) -> Any:
    """Decode msgpack; raises ``ValueError`` subclasses on malformed input."""
    return msgpack.unpackb(data, raw=False, strict_map_key=False)
