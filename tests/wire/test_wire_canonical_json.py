"""Tests of bkv.wire.canonical_json: RFC 8785 (JCS) vectors, strictness, properties."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bkv.errors import (
    CodecError,
    InvalidValueError,
    NonCanonicalError,
    SizeLimitError,
    TrailingBytesError,
    TruncatedError,
)
from bkv.wire.canonical_json import (
    MAX_JSON_DEPTH,
    MAX_SAFE_INTEGER,
    MIN_SAFE_INTEGER,
    dumps,
    loads,
)

JCS = Path(__file__).resolve().parent.parent / "vectors" / "jcs"
# JCS reference vectors without floating point (values.json has floats; structures.json's
# input has 56.0, so only its output is an integer-only document).
INTEGER_VECTORS = ("arrays", "french", "unicode", "weird")


# --- RFC 8785 reference vectors (cyberphone/json-canonicalization testdata) ---------------


@pytest.mark.parametrize("name", (*INTEGER_VECTORS, "structures"))
def test_jcs_output_vectors_are_accepted_and_reproduced(name: str) -> None:
    canonical = (JCS / "output" / f"{name}.json").read_bytes()
    assert dumps(loads(canonical)) == canonical


@pytest.mark.parametrize("name", INTEGER_VECTORS)
def test_jcs_inputs_canonicalize_to_the_outputs(name: str) -> None:
    source = (JCS / "input" / f"{name}.json").read_bytes()
    canonical = (JCS / "output" / f"{name}.json").read_bytes()
    assert dumps(json.loads(source)) == canonical


@pytest.mark.parametrize("name", INTEGER_VECTORS)
def test_jcs_inputs_with_whitespace_are_not_canonical(name: str) -> None:
    with pytest.raises(NonCanonicalError):
        loads((JCS / "input" / f"{name}.json").read_bytes())


def test_jcs_structures_input_is_refused_for_its_float() -> None:
    with pytest.raises(InvalidValueError):
        loads((JCS / "input" / "structures.json").read_bytes())


def test_jcs_values_vector_with_floats_is_refused() -> None:
    with pytest.raises(InvalidValueError, match="integers only"):
        loads((JCS / "output" / "values.json").read_bytes())


def test_a_corrupted_vector_fails() -> None:
    canonical = (JCS / "output" / "weird.json").read_bytes()
    corrupted = canonical.replace(b'"1":"One"', b'"1":"Two"')
    assert corrupted != canonical
    assert dumps(loads(corrupted)) != canonical


# --- encoding -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, b"null"),
        (True, b"true"),
        (False, b"false"),
        (0, b"0"),
        (-7, b"-7"),
        (MAX_SAFE_INTEGER, b"9007199254740991"),
        (MIN_SAFE_INTEGER, b"-9007199254740991"),
        ("", b'""'),
        ('a"b\\c', b'"a\\"b\\\\c"'),
        ("\b\f\n\r\t", b'"\\b\\f\\n\\r\\t"'),
        ("\x00\x1f\x7f", b'"\\u0000\\u001f\x7f"'),
        ("é€😀\u2028", '"é€😀\u2028"'.encode()),
        ("</script>", b'"</script>"'),
        ([], b"[]"),
        ((1, "a"), b'[1,"a"]'),
        ({}, b"{}"),
        ({"b": 1, "a": [True, None]}, b'{"a":[true,null],"b":1}'),
    ],
)
def test_known_encodings(value: Any, expected: bytes) -> None:
    assert dumps(value) == expected


def test_member_names_sort_by_utf16_code_units() -> None:
    # U+1F600 is D83D DE00 in UTF-16: before U+E000 by code unit, after it by code point.
    data = dumps({"\ue000": 1, "\U0001f600": 2, "a": 3, "B": 4, "": 5})
    assert data == '{"":5,"B":4,"a":3,"😀":2,"\ue000":1}'.encode()
    assert loads(data) == {"\ue000": 1, "\U0001f600": 2, "a": 3, "B": 4, "": 5}


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (1.0, TypeError),
        (float("nan"), TypeError),
        (b"bytes", TypeError),
        ({1: "a"}, TypeError),
        ({("a",): 1}, TypeError),
        ({"a"}, TypeError),
        (MAX_SAFE_INTEGER + 1, ValueError),
        (MIN_SAFE_INTEGER - 1, ValueError),
        ("\ud800", ValueError),
        ({"\udc00": 1}, ValueError),
    ],
)
def test_values_outside_the_subset_are_refused(value: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        dumps(value)


def test_encoding_limits() -> None:
    deep: Any = []
    for _ in range(MAX_JSON_DEPTH - 1):
        deep = [deep]
    assert loads(dumps(deep)) == deep
    with pytest.raises(ValueError, match="deeper"):
        dumps([deep])
    with pytest.raises(ValueError, match="deeper"):
        dumps({"a": {"b": 1}}, max_depth=1)
    with pytest.raises(ValueError, match="max_size"):
        dumps("x" * 10, max_size=11)
    assert dumps("x" * 10, max_size=12) == b'"' + b"x" * 10 + b'"'


# --- strict decoding --------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b' {"a":1}',
        b'{"a":1} ',
        b'{"a": 1}',
        b'{"a":1,"b":2 }',
        b"[1, 2]",
        b'{"b":1,"a":2}',
        b"-0",
        b"+1",
        b'"\\u0041"',  # A escaped needlessly
        b'"\\/"',  # solidus escaped needlessly
        b'"\\u000A"',  # upper-case hex and a short form exists
        b'"\\u001F"',  # upper-case hex
        b'"\x01"',  # raw control character
        b'"\\ud83d\\ude00"',  # escaped pair: JCS writes the character itself
        b"\xef\xbb\xbf{}",  # byte order mark
        b"TRUE",
        b"[1,]",
        b"{,}",
        b"'a'",
    ],
)
def test_non_canonical_spellings_are_refused(data: bytes) -> None:
    with pytest.raises(NonCanonicalError):
        loads(data)


def test_duplicate_member_names_are_refused() -> None:
    with pytest.raises(NonCanonicalError, match="duplicate"):
        loads(b'{"a":1,"a":1}')
    with pytest.raises(NonCanonicalError, match="duplicate"):
        loads(b'{"a":{"x":1,"x":2}}')


@pytest.mark.parametrize(
    "data",
    [b"1.0", b"1e2", b"1E2", b"-1.5", b"0.0", b"[NaN]", b"Infinity", b"-Infinity"],
)
def test_non_integers_are_refused(data: bytes) -> None:
    with pytest.raises(InvalidValueError):
        loads(data)


@pytest.mark.parametrize(
    "data",
    [b"9007199254740992", b"-9007199254740992", b"1" * 5000, b"[" + b"9" * 30 + b"]"],
)
def test_integers_outside_the_safe_range_are_refused(data: bytes) -> None:
    with pytest.raises(InvalidValueError, match="safe range"):
        loads(data)


def test_safe_integer_limits_are_accepted() -> None:
    assert loads(b"9007199254740991") == MAX_SAFE_INTEGER
    assert loads(b"-9007199254740991") == MIN_SAFE_INTEGER


@pytest.mark.parametrize("data", [b'"\\ud800"', b'"\\udc00x"', b'{"\\ud800":1}'])
def test_lone_surrogate_escapes_are_refused(data: bytes) -> None:
    with pytest.raises(NonCanonicalError, match="surrogate"):
        loads(data)


@pytest.mark.parametrize("data", [b"\xff", b'"\xc0\x80"', b'"\xed\xa0\x80"', b'"a\xc3"'])
def test_invalid_utf8_is_refused(data: bytes) -> None:
    with pytest.raises(NonCanonicalError, match="UTF-8"):
        loads(data)


@pytest.mark.parametrize("data", [b"[1", b'{"a":', b'"abc', b'["a', b"[[]"])
def test_truncated_documents(data: bytes) -> None:
    with pytest.raises(TruncatedError):
        loads(data)


def test_empty_input_is_truncated() -> None:
    with pytest.raises(TruncatedError):
        loads(b"")


@pytest.mark.parametrize("data", [b"[1]x", b"{}{}", b"1 2", b"null\x00", b"01"])
def test_trailing_bytes(data: bytes) -> None:
    with pytest.raises(TrailingBytesError):
        loads(data)


def test_size_limit_is_checked_first() -> None:
    with pytest.raises(SizeLimitError):
        loads(b"\xff" * 11, max_size=10)  # invalid too, but the size is checked first
    assert loads(b'"' + b"x" * 8 + b'"', max_size=10) == "x" * 8


def test_depth_limit_is_checked_before_parsing() -> None:
    ok = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
    assert loads(ok) is not None
    with pytest.raises(SizeLimitError, match="deeper"):
        loads(b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1))
    # Far deeper than Python's recursion limit: still a SizeLimitError, never RecursionError.
    with pytest.raises(SizeLimitError):
        loads(b"[" * 100_000)
    with pytest.raises(SizeLimitError):
        loads(b'{"a":' * 40 + b"1" + b"}" * 40)
    # An unmatched closer does not buy extra depth.
    with pytest.raises(SizeLimitError):
        loads(b"]" * 10 + b"[" * (MAX_JSON_DEPTH + 1))
    # Brackets inside strings do not count.
    assert loads(dumps(["[" * 100, "\\[{"])) == ["[" * 100, "\\[{"]


def test_loads_type_misuse() -> None:
    with pytest.raises(TypeError):
        loads("{}")  # type: ignore[arg-type]


def test_loads_accepts_bytearray_and_memoryview() -> None:
    assert loads(bytearray(b"[1]")) == [1]
    assert loads(memoryview(b"[1]")) == [1]


# --- properties ---------------------------------------------------------------------------

safe_text = st.text(st.characters(codec="utf-8"), max_size=20)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(MIN_SAFE_INTEGER, MAX_SAFE_INTEGER) | safe_text,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(safe_text, children, max_size=5)
    ),
    max_leaves=25,
)


@given(json_values)
def test_round_trip(value: Any) -> None:
    data = dumps(value)
    assert loads(data) == value
    assert dumps(loads(data)) == data
    # Canonical JSON is JSON: the standard parser reads the same value.
    assert json.loads(data) == value


@given(
    st.dictionaries(
        st.text("abcdefghijklmnopqrstuvwxyzABCXYZ0189_", max_size=6), st.integers(0, 99)
    )
)
def test_ascii_names_sort_like_the_standard_library(value: dict[str, int]) -> None:
    expected = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    assert dumps(value) == expected


@given(st.binary(max_size=200))
def test_random_bytes_raise_only_codec_errors(data: bytes) -> None:
    try:
        value = loads(data)
    except CodecError:
        return
    assert dumps(value) == data


@given(value=json_values, data=st.data())
def test_single_byte_mutation_is_refused_or_canonical(value: Any, data: st.DataObject) -> None:
    encoded = dumps(value)
    index = data.draw(st.integers(0, len(encoded) - 1))
    byte = data.draw(st.integers(0, 255).filter(lambda b: b != encoded[index]))
    mutated = encoded[:index] + bytes([byte]) + encoded[index + 1 :]
    try:
        again = loads(mutated)
    except CodecError:
        return
    assert dumps(again) == mutated


@given(json_values)
def test_whitespace_anywhere_is_refused(value: Any) -> None:
    pretty = json.dumps(value, indent=1, ensure_ascii=False).encode()
    if pretty != dumps(value):
        with pytest.raises(NonCanonicalError):
            loads(pretty)
