"""Tests for grenache.codec: JSON as Node's ``JSON.stringify`` writes it."""

from __future__ import annotations

import json
import math
import re
import shutil
import struct
import subprocess
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from grenache import codec
from grenache.speedups import json_encoder

# Number::toString's output: an integer part without leading zeros, a fraction without
# trailing zeros, an exponent with a sign and no leading zeros.
_ECMASCRIPT_NUMBER = re.compile(r"-?(0|[1-9]\d*)(\.\d*[1-9])?(e[+-][1-9]\d*)?")

_STRINGS = st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from('\ud800\udfff"\\\n'))
_SPELLINGS = st.sampled_from(["1.0,", ".0]", "e-05", "e+16", '\\"', "\\\\", "-0.0}"])

_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | _STRINGS
    | st.lists(_SPELLINGS | _STRINGS, max_size=3).map("".join),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(_STRINGS | _SPELLINGS | st.integers() | st.none(), inner, max_size=4)
    ),
    max_leaves=20,
)


def _string(text: str) -> str:
    encoded = json.dumps(text, ensure_ascii=False)
    return codec._LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", encoded)


def _key(key: Any) -> str:
    """A dictionary key as Python's ``json`` converts it (``None`` -> ``"null"``)."""
    return key if isinstance(key, str) else json.dumps(key)


def _reference(value: Any) -> str:
    """A plain recursive encoder with Node's rules, to compare the fast one with."""
    if isinstance(value, float):
        return codec.number_text(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, dict):
        members = (f"{_string(_key(k))}:{_reference(v)}" for k, v in value.items())
        return "{" + ",".join(members) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_reference(v) for v in value) + "]"
    return json.dumps(value)


def _significant_digits(text: str) -> str:
    mantissa = text.lstrip("-").partition("e")[0]
    return mantissa.replace(".", "").strip("0")


class NumberTextTests(unittest.TestCase):
    def test_node_spellings(self) -> None:
        cases = {
            1.0: "1",
            1e16: "10000000000000000",
            1e21: "1e+21",
            -0.0: "0",
            1.5e-7: "1.5e-7",
            0.1: "0.1",
            123456789012345680000.0: "123456789012345680000",
            1e-5: "0.00001",
            1e-6: "0.000001",
            1e-7: "1e-7",
            -2.5e-8: "-2.5e-8",
            1e20: "100000000000000000000",
            1.5e300: "1.5e+300",
            5e-324: "5e-324",
            123.456: "123.456",
            -100.0: "-100",
            2.0**53: "9007199254740992",
            math.nan: "null",
            math.inf: "null",
            -math.inf: "null",
        }
        for value, text in cases.items():
            self.assertEqual((value, codec.number_text(value)), (value, text))
            self.assertEqual(codec.number_text(abs(value)), text.lstrip("-"))
            self.assertEqual((value, codec.json_dumps(value)), (value, text.encode()))
            self.assertEqual(
                codec.json_dumps([value, {"k": value}]), f'[{text},{{"k":{text}}}]'.encode()
            )

    def test_integers_as_python_writes_them(self) -> None:
        self.assertEqual(
            codec.json_dumps([10**30, -(2**64), 0, True]),
            b"[1000000000000000000000000000000,-18446744073709551616,0,true]",
        )

    @given(st.floats(allow_nan=False, allow_infinity=False))
    @example(1e21)
    @example(1e-7)
    @example(999999999999999900000.0)
    @example(0.000001)
    @settings(max_examples=2000, deadline=None)
    def test_ecmascript_format(self, value: float) -> None:
        """The text reads back as the same number, with the fewest digits that do, laid out by
        the ECMAScript rules: an exponent exactly when the value is >= 1e21 or < 1e-6."""
        text = codec.number_text(value)
        self.assertIsNotNone(_ECMASCRIPT_NUMBER.fullmatch(text), text)
        self.assertEqual(float(text), value)
        if value == 0:
            self.assertEqual(text, "0")
            return
        self.assertEqual(_significant_digits(text), _significant_digits(repr(value)))
        magnitude = abs(value)
        self.assertEqual("e" in text, magnitude >= 1e21 or magnitude < 1e-6, text)
        if "e" in text:
            self.assertLess(len(text.lstrip("-").partition(".")[0].partition("e")[0]), 2)

    def test_same_text_as_node(self) -> None:
        """Node itself writes the same text for thousands of doubles of every magnitude."""
        node = shutil.which("node")
        if node is None:
            raise unittest.SkipTest("node is not installed")
        import random

        rng = random.Random(8)
        values = [
            struct.unpack(">d", rng.getrandbits(64).to_bytes(8, "big"))[0] for _ in range(3000)
        ]
        values += [rng.uniform(-1e6, 1e6) for _ in range(1000)]
        values += [float(rng.randint(-(10**22), 10**22)) for _ in range(1000)]
        values += [m * 10.0**e for m in (1.0, 1.5, 9.999, 2.5) for e in range(-30, 30)]
        values += [10.0**e for e in range(-323, 309)] + [-0.0, 5e-324, 1.7976931348623157e308]
        script = (
            "let d='';process.stdin.on('data',c=>d+=c).on('end',()=>{process.stdout.write("
            "JSON.stringify(JSON.parse(d).map(h=>Buffer.from(h,'hex').readDoubleBE(0))))})"
        )
        bits = json.dumps([struct.pack(">d", v).hex() for v in values]).encode()
        node_text = subprocess.run(
            [node, "-e", script], input=bits, capture_output=True, check=True, timeout=60
        ).stdout
        ours = codec.json_dumps(values)
        if node_text != ours:
            pairs = zip(
                node_text.decode()[1:-1].split(","), ours.decode()[1:-1].split(","), strict=True
            )
            self.fail(f"first differences (node, ours): {[p for p in pairs if p[0] != p[1]][:5]}")


class JSONDumpsTests(unittest.TestCase):
    @given(_JSON)
    @example(['a\\"b\\', 1.0, {'k"1.0,': -0.0, "x": [1e16, 1e-7, "1.0,", 2.5]}, "\\", 3.0])
    @example({"1.0]": "e+16,", "\\\\": ['"e-05"', 1e-5]})
    @settings(max_examples=500, deadline=None)
    def test_same_text_as_a_plain_encoder(self, value: Any) -> None:
        """Floats in Node's spelling wherever they are, strings left alone even when they hold
        a float's Python spelling or escapes, on the fast encoder and the public one alike."""
        expected = _reference(value).encode("utf-8")
        self.assertEqual(codec.json_dumps(value), expected)
        self.patch(codec, "_encode", json_encoder.encode_public)
        self.assertEqual(codec.json_dumps(value), expected)

    def test_node_spellings(self) -> None:
        self.assertEqual(
            codec.json_dumps([1.0, math.inf, -math.nan, "é", "\ud800", {"k": None}, "1.0"]),
            '[1,null,null,"é","\\ud800",{"k":null},"1.0"]'.encode(),
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
        self.assertEqual(json_encoder._markers, {})


class JSONLoadsTests(unittest.TestCase):
    def test_refuses_python_extensions(self) -> None:
        for text in (b"NaN", b"[Infinity]", b"-Infinity"):
            self.assertRaises(ValueError, codec.json_loads, text)
        self.assertEqual(codec.json_loads(b'{"a":[1,2.5,"\xc3\xa9"]}'), {"a": [1, 2.5, "é"]})


class DeepNestingTests(unittest.TestCase):
    def test_json_bomb_is_a_value_error(self) -> None:
        with self.assertRaises(ValueError) as caught:
            codec.json_loads(b"[" * 100_000)
        self.assertIn("nested too deeply", str(caught.exception))
