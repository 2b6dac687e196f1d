"""CPython's C JSON encoder, built once (``json.encoder.c_make_encoder`` is private).

``json.JSONEncoder.encode`` builds a new C encoder for every call, about a third of a small
message's encoding time. :func:`encode` uses one built at import with the same options: compact
separators, raw UTF-8 (no ``\\uXXXX`` for non-ASCII), NaN and infinities refused, circular
references detected. When the private constructor is missing or no longer takes these arguments
(:data:`AVAILABLE` is false), :func:`encode` is :func:`encode_public`, the public
``JSONEncoder`` path, which writes the same text.

Both write floats as Python's ``repr`` does; ``grenache.codec`` turns that into Node's spelling.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["AVAILABLE", "encode", "encode_public"]

_public = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def encode_public(value: Any) -> str:
    """Compact JSON text of ``value`` through the public ``json.JSONEncoder``.

    Raises ``ValueError`` for NaN, infinities and circular references, ``TypeError`` for a
    value JSON cannot hold.
    """
    return _public.encode(value)


# The markers dict is how the C encoder detects circular references; it is emptied after a
# failed call, which can leave entries behind. The C encoder runs no Python code on JSON
# values, so calls never interleave.
_markers: dict[int, Any] = {}


def _build() -> Any:
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return None
    try:
        iterencode = make(
            _markers,
            _public.default,
            json.encoder.encode_basestring,  # type: ignore[attr-defined]
            None,  # indent
            ":",
            ",",
            False,  # sort_keys
            False,  # skipkeys
            False,  # allow_nan
        )
        probe: Any = [1, 2.5, "é\n", {"k": None, "t": True}]
        if "".join(iterencode(probe, 0)) != '[1,2.5,"é\\n",{"k":null,"t":true}]':
            return None
    except Exception:
        _markers.clear()
        return None
    return iterencode


_iterencode = _build()

AVAILABLE: bool = _iterencode is not None
"""True when the prebuilt C encoder is in use."""


def _encode_c(value: Any) -> str:
    """Compact JSON text of ``value`` through the C encoder built at import (what
    :func:`encode` is while :data:`AVAILABLE`)."""
    try:
        return "".join(_iterencode(value, 0))
    except BaseException:
        _markers.clear()
        raise


encode = _encode_c if AVAILABLE else encode_public
"""Compact JSON text of ``value`` (same contract as :func:`encode_public`)."""
