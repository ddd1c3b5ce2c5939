"""The one parser for untrusted JSON (bkv.wire.strict_json; docs/protocol.md, "JSON")."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bkv.errors import CodecError, NonCanonicalError, SizeLimitError
from bkv.wire.strict_json import (
    MAX_QUOTED_TEXT,
    UINT64_MAX,
    parse_hex,
    parse_json_object,
    parse_uint64,
    quote_untrusted,
)


def test_an_object_parses() -> None:
    assert parse_json_object(b'{"a": [1, "x"], "b": null}', 100) == {"a": [1, "x"], "b": None}


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"", SizeLimitError),
        (b'{"a": 1}', SizeLimitError),  # over the 5-byte limit below
        (b"[1]", CodecError),
        (b'"text"', CodecError),
        (b"\xff\xfe", CodecError),
        (b'{"a": NaN}', NonCanonicalError),
        (b'{"a": Infinity}', NonCanonicalError),
        (b'{"a": 1, "a": 2}', NonCanonicalError),
        (b"[" * 4000 + b"]" * 4000, CodecError),
        (b'{"a": ' + b"9" * 5000 + b"}", CodecError),
    ],
)
def test_a_hostile_body_is_a_codec_error(body: bytes, error: type[Exception]) -> None:
    limit = 5 if body == b'{"a": 1}' else 100_000
    with pytest.raises(error):
        parse_json_object(body, limit)


def test_a_nested_object_is_a_codec_error_not_a_recursion_error() -> None:
    body = b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(CodecError):
        parse_json_object(body, len(body))


@given(st.binary(max_size=300))
def test_random_bytes_raise_only_codec_errors(body: bytes) -> None:
    with contextlib.suppress(CodecError):
        parse_json_object(body, 1000)


def test_hex_accepts_one_spelling() -> None:
    assert parse_hex("00ff", "f", max_bytes=2) == b"\x00\xff"
    assert parse_hex("00ff", "f", max_bytes=2, exact=2) == b"\x00\xff"


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (None, CodecError),
        (12, CodecError),
        ("00FF", NonCanonicalError),
        ("0", NonCanonicalError),
        ("0g", NonCanonicalError),
        ("000000", SizeLimitError),
        ("", SizeLimitError),
    ],
)
def test_hex_refuses_other_spellings(value: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        parse_hex(value, "f", max_bytes=2)


def test_hex_refuses_a_wrong_exact_size() -> None:
    with pytest.raises(SizeLimitError):
        parse_hex("00", "f", max_bytes=2, exact=2)


@pytest.mark.parametrize("value", [0, 1, UINT64_MAX])
def test_uint64_accepts_its_range(value: int) -> None:
    assert parse_uint64(value, "n") == value


@pytest.mark.parametrize("value", [-1, UINT64_MAX + 1, True, 1.0, "1", None])
def test_uint64_refuses_the_rest(value: object) -> None:
    with pytest.raises(CodecError):
        parse_uint64(value, "n")


def test_quoted_text_is_cut_and_has_no_control_characters() -> None:
    hostile = "line\nforged: ok\x1b[2J" + "x" * 10_000
    quoted = quote_untrusted(hostile)
    assert len(quoted) == MAX_QUOTED_TEXT
    assert quoted.startswith("line?forged: ok?[2J")
    assert all(c.isprintable() for c in quoted)


def test_only_strings_are_quoted() -> None:
    assert quote_untrusted(["a"]) == ""
    assert quote_untrusted(None) == ""
    assert quote_untrusted("short", 3) == "sho"
