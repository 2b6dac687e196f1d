"""Tests for grenache.codec: the prebuilt JSON encoder writes what ``JSONEncoder.encode`` does."""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from grenache import codec

_reference = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _reference_text(value: Any) -> str:
    try:
        return _reference.encode(value)
    except ValueError:
        return _reference.encode(codec._replace_non_finite(value))


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from('\ud800\udfff"\\\n')),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=5) | st.integers() | st.none(), inner, max_size=4)
    ),
    max_leaves=20,
)


class JSONDumpsTests(unittest.TestCase):
    @given(_JSON)
    @settings(max_examples=500, deadline=None)
    def test_same_text_as_json_encoder(self, value: Any) -> None:
        text = _reference_text(value)
        expected = codec._LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
        self.assertEqual(codec.json_dumps(value), expected.encode("utf-8"))

    def test_node_spellings(self) -> None:
        self.assertEqual(
            codec.json_dumps([1.0, math.inf, -math.nan, "é", "\ud800", {"k": None}]),
            '[1.0,null,null,"é","\\ud800",{"k":null}]'.encode(),
        )

    def test_errors_leave_the_encoder_usable(self) -> None:
        """A failure in the middle of a container (markers left behind) does not taint the
        next call: a value seen in the failed call is not taken for a circular reference."""
        shared: list[Any] = [1]
        self.assertRaises(TypeError, codec.json_dumps, [shared, [object()]])
        self.assertEqual(codec.json_dumps([shared, shared]), b"[[1],[1]]")
        deep: list[Any] = []
        for _ in range(100000):
            deep = [deep]
        self.assertRaises(RecursionError, codec.json_dumps, [shared, deep])
        self.assertEqual(codec.json_dumps({"a": shared}), b'{"a":[1]}')
        circular: list[Any] = []
        circular.append(circular)
        self.assertRaises((ValueError, RecursionError), codec.json_dumps, circular)
        self.assertEqual(codec.json_dumps(shared), b"[1]")
        self.assertEqual(codec._markers, {})
