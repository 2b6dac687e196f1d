"""Tests for grenache.speedups.json_encoder: the prebuilt C encoder and its public fallback."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from grenache.speedups import json_encoder

_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from('\ud800"\\\n\x00')),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=5) | st.integers() | st.none(), inner, max_size=4)
    ),
    max_leaves=20,
)


class EncoderTests(unittest.TestCase):
    def test_c_encoder_in_use_on_cpython(self) -> None:
        self.assertTrue(json_encoder.AVAILABLE)
        self.assertIs(json_encoder.encode, json_encoder._encode_c)

    @given(_JSON)
    @settings(max_examples=500, deadline=None)
    def test_both_paths_write_the_same_text(self, value: Any) -> None:
        """The prebuilt C encoder writes what ``JSONEncoder`` writes, here on its pure-Python
        path (as on an interpreter without ``c_make_encoder``)."""
        expected = json_encoder._encode_c(value)
        json.loads(expected)
        self.patch(json.encoder, "c_make_encoder", None)
        self.assertEqual(json_encoder.encode_public(value), expected)

    def test_both_paths_refuse_the_same_values(self) -> None:
        circular: list[Any] = []
        circular.append(circular)
        for bad, error in (
            (float("nan"), ValueError),
            ([object()], TypeError),
            (circular, ValueError),
        ):
            self.assertRaises(error, json_encoder.encode_public, bad)
            self.assertRaises(error, json_encoder._encode_c, bad)
        self.assertEqual(json_encoder._markers, {})

    def test_falls_back_when_the_internals_are_gone(self) -> None:
        """No ``c_make_encoder``, one whose arguments changed, or one that writes other text:
        the module builds nothing, and ``encode`` would be the public path."""
        self.patch(json.encoder, "c_make_encoder", None)
        self.assertIsNone(json_encoder._build())

        def changed_signature(*args: Any) -> Any:
            raise TypeError("c_make_encoder() takes 10 arguments")

        self.patch(json.encoder, "c_make_encoder", changed_signature)
        self.assertIsNone(json_encoder._build())
        self.patch(json.encoder, "c_make_encoder", lambda *args: lambda value, level: ["[]"])
        self.assertIsNone(json_encoder._build())
