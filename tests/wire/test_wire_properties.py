"""Hypothesis properties of bkv.wire over the test schemas (nesting, lists, optionals, unions)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wire_schemas import ALL_SCHEMAS, Envelope, Outer
from wire_strategies import messages

from bkv.errors import CodecError, TruncatedError
from bkv.wire import Registry, decode, decode_any, encode, schema_of

REGISTRY = Registry(ALL_SCHEMAS)
# Schemas whose every value the strategy can draw (Positive rejects n == 0 itself).
GENERATED = tuple(cls for cls in ALL_SCHEMAS if cls.__name__ != "Positive")


def any_message() -> st.SearchStrategy[Any]:
    return st.one_of([messages(cls) for cls in GENERATED])


# Envelope nests lists of nested lists: drawing 200 of them takes several seconds.
ROUND_TRIP_CASES = [
    pytest.param(cls, id=cls.__name__, marks=[pytest.mark.slow] if cls is Envelope else [])
    for cls in GENERATED
]


@pytest.mark.parametrize("cls", ROUND_TRIP_CASES)
@given(data=st.data())
def test_round_trip(cls: type, data: st.DataObject) -> None:
    msg = data.draw(messages(cls))
    encoded = encode(msg)
    assert len(encoded) <= schema_of(cls).size_limit
    assert len(encoded) >= schema_of(cls).min_size
    decoded: object = decode(cls, encoded)
    assert decoded == msg
    assert type(decoded) is cls
    assert encode(decoded) == encoded


@given(any_message())
def test_decode_any_round_trip(msg: Any) -> None:
    assert decode_any(encode(msg), REGISTRY) == msg


def _decodes_canonically(cls: type | None, data: bytes) -> None:
    """Either ``data`` decodes and re-encodes to itself, or a CodecError is raised."""
    try:
        msg = decode_any(data, REGISTRY) if cls is None else decode(cls, data)
    except CodecError:
        return
    assert encode(msg) == data


@given(st.binary(max_size=300))
def test_random_bytes_raise_only_codec_errors(data: bytes) -> None:
    _decodes_canonically(None, data)
    for cls in ALL_SCHEMAS:
        _decodes_canonically(cls, data)


@pytest.mark.parametrize("cls", ALL_SCHEMAS, ids=lambda cls: cls.__name__)
@given(body=st.binary(max_size=200))
def test_random_bodies_after_a_valid_header_raise_only_codec_errors(cls: type, body: bytes) -> None:
    # Random bytes rarely start with a known header; this reaches the field decoders.
    data = schema_of(cls).header + body
    _decodes_canonically(cls, data)
    _decodes_canonically(None, data)


@given(msg=any_message(), data=st.data())
def test_single_byte_mutation_decodes_canonically_or_fails(msg: Any, data: st.DataObject) -> None:
    encoded = encode(msg)
    index = data.draw(st.integers(0, len(encoded) - 1), label="index")
    value = data.draw(st.integers(0, 255).filter(lambda v: v != encoded[index]), label="value")
    mutated = bytearray(encoded)
    mutated[index] = value
    _decodes_canonically(type(msg), bytes(mutated))
    _decodes_canonically(None, bytes(mutated))


@given(msg=any_message(), data=st.data())
def test_byte_insertion_or_deletion_decodes_canonically_or_fails(
    msg: Any, data: st.DataObject
) -> None:
    encoded = encode(msg)
    index = data.draw(st.integers(0, len(encoded)), label="index")
    inserted = encoded[:index] + bytes([data.draw(st.integers(0, 255))]) + encoded[index:]
    _decodes_canonically(type(msg), inserted)
    if index < len(encoded):
        _decodes_canonically(type(msg), encoded[:index] + encoded[index + 1 :])


@given(msg=st.one_of(messages(Outer), messages(Envelope)), data=st.data())
def test_every_proper_prefix_is_truncated(msg: Any, data: st.DataObject) -> None:
    encoded = encode(msg)
    end = data.draw(st.integers(0, len(encoded) - 1))
    with pytest.raises(TruncatedError):
        decode(type(msg), encoded[:end])


@given(first=any_message(), second=any_message())
def test_distinct_messages_have_distinct_encodings(first: Any, second: Any) -> None:
    # Injectivity across classes too: the header is a domain separator.
    if first != second or type(first) is not type(second):
        assert encode(first) != encode(second)
