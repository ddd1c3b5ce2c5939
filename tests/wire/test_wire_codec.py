"""Unit tests of bkv.wire: every field kind, every declaration rule, every decoding error."""

from __future__ import annotations

import dataclasses
import sys
import textwrap
import types
from typing import Annotated, Any, ClassVar

import pytest
from wire_schemas import (
    MAX_BLOB,
    MAX_ITEMS,
    MAX_NOTE,
    MAX_WIDE,
    Blobs,
    Colour,
    Empty,
    Envelope,
    Ints,
    Item,
    ItemV2,
    Labels,
    Outer,
    Positive,
    Wide,
)

import bkv.wire
from bkv.errors import (
    CodecError,
    InvalidValueError,
    NonCanonicalError,
    SizeLimitError,
    TrailingBytesError,
    TruncatedError,
    UnknownTagError,
)
from bkv.wire import (
    MAX_MESSAGE_SIZE,
    U8,
    U16,
    U32,
    Bytes,
    EnumOf,
    Fixed,
    Header,
    ListOf,
    OneOf,
    Registry,
    Text,
    UInt,
    declared_messages,
    decode,
    decode_any,
    describe,
    encode,
    is_message,
    message,
    peek_tag,
    schema_of,
)

# --- helpers ------------------------------------------------------------------


def blobs(**changes: Any) -> Blobs:
    return dataclasses.replace(Blobs(b"kkkk", b"s", b"b", b""), **changes)


def labels(**changes: Any) -> Labels:
    return dataclasses.replace(Labels("note", "name", True, Colour.GREEN, Wide.LARGE), **changes)


def outer(**changes: Any) -> Outer:
    base = Outer(
        first=Item(1, "a"),
        items=(),
        numbers=(7,),
        maybe=None,
        maybe_n=None,
        either=Item(2, "b"),
        tags=(),
    )
    return dataclasses.replace(base, **changes)


# --- known-answer encodings (one per field kind) --------------------------------


def test_uints_are_big_endian_fixed_width() -> None:
    data = encode(Ints(1, 0x0203, 0x04050607, 0x08090A0B0C0D0E0F))
    assert data.hex() == "fe0101" + "01" + "0203" + "04050607" + "08090a0b0c0d0e0f"


def test_uint_extremes_round_trip() -> None:
    top = Ints(0xFF, 0xFFFF, 0xFFFF_FFFF, 0xFFFF_FFFF_FFFF_FFFF)
    assert decode(Ints, encode(top)) == top
    zero = Ints(0, 0, 0, 0)
    assert encode(zero) == bytes.fromhex("fe0101") + bytes(15)


def test_byte_fields_prefix_width_follows_the_maximum() -> None:
    # Fixed: no prefix; max 10 -> u8 length; max 300 -> u16; max 70000 -> u32 (RFC 8446 3.4).
    data = encode(Blobs(b"KKKK", b"ab", b"xyz", b"w"))
    expected = "fe0201" + "4b4b4b4b" + "02" + "6162" + "0003" + "78797a" + "00000001" + "77"
    assert data.hex() == expected


def test_text_bool_and_enums() -> None:
    data = encode(Labels("é", "n", True, Colour.BLUE, Wide.LARGE))
    assert data.hex() == "fe0301" + "02c3a9" + "016e" + "01" + "03" + "1234"
    back = decode(Labels, data)
    assert back.colour is Colour.BLUE
    assert back.wide is Wide.LARGE
    assert back.flag is True


def test_false_is_zero_byte() -> None:
    assert encode(labels(flag=False))[-4] == 0


def test_nested_message_carries_its_own_header() -> None:
    msg = outer(first=Item(0x0102, "x"), numbers=(5, 6))
    data = encode(msg)
    item_bytes = encode(Item(0x0102, "x"))
    assert data[3 : 3 + len(item_bytes)] == item_bytes
    expected = (
        "fe0501"
        + item_bytes.hex()  # first
        + "00"  # items: u8 count 0
        + "02" + "0005" + "0006"  # numbers
        + "00"  # maybe: absent
        + "00"  # maybe_n: absent
        + encode(Item(2, "b")).hex()  # either: an Item, told by its header
        + "00"  # tags: u8 count 0
    )  # fmt: skip
    assert data.hex() == expected


def test_optional_present_and_one_of_second_class() -> None:
    msg = outer(maybe=Item(3, "m"), maybe_n=9, either=ItemV2(4, "v", b"e"), tags=("ab", None))
    data = encode(msg)
    assert decode(Outer, data) == msg
    assert encode(Item(3, "m")).hex() in data.hex()
    assert "01" + "00000009" in data.hex()
    assert data.hex().endswith("02" + "01" + "02" + "6162" + "00")


def test_empty_message_is_the_header_alone() -> None:
    assert encode(Empty()) == bytes.fromhex("fe0701")
    assert decode(Empty, b"\xfe\x07\x01") == Empty()


def test_two_level_nesting_round_trips() -> None:
    env = Envelope(9, (outer(), outer(items=(Item(1, "q"),))), outer(maybe_n=1), b"zz")
    data = encode(env)
    assert decode(Envelope, data) == env
    assert encode(decode(Envelope, data)) == data


def test_decode_accepts_bytearray_and_memoryview() -> None:
    data = encode(blobs())
    assert decode(Blobs, bytearray(data)) == blobs()
    assert decode(Blobs, memoryview(data)) == blobs()
    assert decode_any(bytearray(data), Registry([Blobs])) == blobs()


def test_secret_field_hidden_from_repr() -> None:
    assert "kkkk" not in repr(blobs())


def test_schema_introspection() -> None:
    schema = schema_of(Ints)
    assert (schema.tag, schema.version) == (0xFE01, 1)
    assert [name for name, _ in schema.fields] == ["a", "b", "c", "d"]
    assert schema.size_limit == schema.min_size == 3 + 1 + 2 + 4 + 8
    assert schema_of(Blobs).size_limit == 3 + 4 + (1 + 10) + (2 + MAX_BLOB) + (4 + MAX_WIDE)
    assert declared_messages()[Header(0xFE01, 1)] is Ints
    assert is_message(Ints) and is_message(Ints(0, 0, 0, 0))
    assert not is_message(int) and not is_message(3)


def test_messages_are_frozen() -> None:
    msg = Ints(1, 2, 3, 4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        msg.a = 5  # type: ignore[misc]


# --- encoding misuse: ValueError / TypeError --------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [("a", 0x100), ("b", 0x1_0000), ("c", 1 << 32), ("d", 1 << 64), ("a", -1), ("d", -1)],
)
def test_uint_out_of_range_is_value_error(field: str, value: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        encode(dataclasses.replace(Ints(0, 0, 0, 0), **{field: value}))


@pytest.mark.parametrize("value", [True, "1", 1.0, None])
def test_uint_wrong_type_is_type_error(value: object) -> None:
    with pytest.raises(TypeError):
        encode(Ints(value, 0, 0, 0))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"key": b"kkk"}, ValueError),
        ({"key": b"kkkkk"}, ValueError),
        ({"key": bytearray(b"kkkk")}, TypeError),
        ({"small": b"x" * 11}, ValueError),
        ({"blob": b""}, ValueError),  # min_len=1
        ({"blob": b"x" * (MAX_BLOB + 1)}, ValueError),
        ({"wide": "text"}, TypeError),
    ],
)
def test_bytes_misuse(changes: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        encode(blobs(**changes))


def test_bytes_at_limits_encode() -> None:
    msg = blobs(small=b"x" * 10, blob=b"y" * MAX_BLOB, wide=b"z" * MAX_WIDE)
    assert decode(Blobs, encode(msg)) == msg


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"note": "x" * (MAX_NOTE + 1)}, ValueError),
        ({"note": "é" * (MAX_NOTE // 2 + 1)}, ValueError),  # limit counts UTF-8 bytes
        ({"note": "\ud800"}, ValueError),  # lone surrogate has no UTF-8 form
        ({"note": b"bytes"}, TypeError),
        ({"name": ""}, ValueError),  # min_len=1
        ({"name": "e\u0301"}, ValueError),  # not NFC
        ({"flag": 1}, TypeError),
        ({"colour": 2}, TypeError),
        ({"wide": Colour.RED}, TypeError),
    ],
)
def test_text_bool_enum_misuse(changes: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        encode(labels(**changes))


def test_text_limit_counts_bytes_exactly() -> None:
    msg = labels(note="é" * (MAX_NOTE // 2), name="\u00e9")
    assert decode(Labels, encode(msg)) == msg


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"items": [Item(1, "a")]}, TypeError),  # lists must be tuples
        ({"items": (Item(1, "a"),) * (MAX_ITEMS + 1)}, ValueError),
        ({"numbers": ()}, ValueError),  # min_count=1
        ({"numbers": (1 << 16,)}, ValueError),
        ({"first": ItemV2(1, "a", b"")}, TypeError),
        ({"maybe": "item"}, TypeError),
        ({"either": Ints(0, 0, 0, 0)}, TypeError),
        ({"tags": ("toolong",)}, ValueError),
    ],
)
def test_composite_misuse(changes: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        encode(outer(**changes))


def test_encode_of_non_message_is_type_error() -> None:
    with pytest.raises(TypeError, match="not a wire message"):
        encode(object())
    with pytest.raises(TypeError, match="not a wire message"):
        encode(b"\xfe\x01\x01")


def test_undeclared_subclass_is_not_encoded_as_its_parent() -> None:
    # A subclass would decode back as the parent class: refuse it.
    sub: Any = dataclasses.dataclass(frozen=True)(type("Sub", (Item,), {}))
    with pytest.raises(TypeError, match="not a wire message"):
        encode(sub(1, "a"))


# --- decoding: every error class ----------------------------------------------------


def test_every_proper_prefix_is_truncated() -> None:
    data = encode(Envelope(1, (outer(items=(Item(1, "a"),)),), outer(maybe=Item(2, "c")), b"zz"))
    for end in range(len(data)):
        with pytest.raises(TruncatedError):
            decode(Envelope, data[:end])


def test_empty_input_is_truncated() -> None:
    with pytest.raises(TruncatedError):
        decode(Empty, b"")
    with pytest.raises(TruncatedError):
        decode_any(b"", Registry([Empty]))
    with pytest.raises(TruncatedError):
        peek_tag(b"\xfe\x07")


def test_length_prefix_past_the_end_is_truncated() -> None:
    data = bytearray(encode(blobs()))
    # small: length says 5 but only the rest of the message follows... make it the last field.
    only_small = bytes(data[:7]) + b"\x05ab"
    with pytest.raises(TruncatedError):
        decode(Blobs, only_small)


def test_trailing_bytes() -> None:
    data = encode(blobs())
    with pytest.raises(TrailingBytesError):
        decode(Blobs, data + b"\x00")
    with pytest.raises(TrailingBytesError):
        decode_any(data + b"\x00", Registry([Blobs]))


def test_trailing_bytes_beyond_the_static_bound_are_a_size_error() -> None:
    # Ints can never be longer than 18 bytes: the length check runs before parsing.
    with pytest.raises(SizeLimitError):
        decode(Ints, encode(Ints(0, 0, 0, 0)) + b"\x00")
    with pytest.raises(SizeLimitError):
        decode(Empty, b"\xfe\x07\x01\x00")


def test_input_over_the_message_limit_is_rejected_before_parsing() -> None:
    limit = schema_of(Blobs).size_limit
    with pytest.raises(SizeLimitError):
        decode(Blobs, b"\x00" * (limit + 1))  # not even a valid header: size checked first
    with pytest.raises(SizeLimitError):
        decode_any(b"\x00" * (limit + 1), Registry([Blobs, Ints]))


def _with_byte(data: bytes, index: int, value: int) -> bytes:
    changed = bytearray(data)
    changed[index] = value
    return bytes(changed)


def test_length_over_max_is_size_error() -> None:
    data = encode(blobs())
    # small's u8 length is at offset 7: claim 11 > max 10 (and supply the bytes).
    with pytest.raises(SizeLimitError):
        decode(Blobs, data[:7] + b"\x0b" + b"x" * 11 + data[9:])


def test_length_under_min_is_size_error() -> None:
    data = encode(blobs())  # blob (min_len=1) u16 length at offset 9
    assert data[9:11] == b"\x00\x01"
    with pytest.raises(SizeLimitError):
        decode(Blobs, data[:9] + b"\x00\x00" + data[12:])


def test_text_under_min_is_size_error() -> None:
    data = encode(labels(name="n"))
    index = 3 + 1 + len("note")  # name's u8 length
    with pytest.raises(SizeLimitError):
        decode(Labels, data[:index] + b"\x00" + data[index + 2 :])


def test_list_count_over_max_is_size_error() -> None:
    data = encode(outer())
    index = 3 + len(encode(Item(1, "a")))  # items' u8 count
    with pytest.raises(SizeLimitError):
        decode(Outer, _with_byte(data, index, MAX_ITEMS + 1))


def test_list_count_under_min_is_size_error() -> None:
    data = encode(outer())
    index = 3 + len(encode(Item(1, "a"))) + 1  # numbers' u8 count (min 1)
    assert data[index] == 1
    with pytest.raises(SizeLimitError):
        decode(Outer, data[:index] + b"\x00" + data[index + 3 :])


def test_wrong_tag_and_wrong_version_are_unknown_tag() -> None:
    with pytest.raises(UnknownTagError, match="tag"):
        decode(Ints, b"\xfe\x09\x01" + bytes(15))
    with pytest.raises(UnknownTagError, match="version"):
        decode(Ints, b"\xfe\x01\x02" + bytes(15))
    with pytest.raises(UnknownTagError, match="version"):
        decode(Item, encode(ItemV2(1, "a", b"")))


def test_nested_header_mismatch_is_unknown_tag() -> None:
    data = encode(outer())
    with pytest.raises(UnknownTagError):
        decode(Outer, _with_byte(data, 4, 0x09))  # first: tag 0xfe09
    with pytest.raises(UnknownTagError):
        decode(Outer, _with_byte(data, 5, 0x02))  # first: version 2 (ItemV2) not allowed there


def test_one_of_with_unlisted_header_is_unknown_tag() -> None:
    msg = outer()
    data = encode(msg)
    either = data.rindex(encode(Item(2, "b")))
    with pytest.raises(UnknownTagError, match="not an allowed message"):
        decode(Outer, _with_byte(data, either + 1, 0x01))  # Ints header inside either


@pytest.mark.parametrize("byte", [2, 0x80, 0xFF])
def test_bool_other_than_0_or_1_is_non_canonical(byte: int) -> None:
    data = encode(labels())
    index = len(data) - 4
    assert data[index] == 1
    with pytest.raises(NonCanonicalError, match="bool"):
        decode(Labels, _with_byte(data, index, byte))


@pytest.mark.parametrize("byte", [2, 0xFF])
def test_presence_byte_other_than_0_or_1_is_non_canonical(byte: int) -> None:
    data = encode(outer())
    index = 3 + len(encode(Item(1, "a"))) + 1 + 3  # maybe's presence byte
    assert data[index] == 0
    with pytest.raises(NonCanonicalError, match="presence"):
        decode(Outer, _with_byte(data, index, byte))


@pytest.mark.parametrize(
    "raw",
    [
        b"\xc0\x80",  # overlong NUL
        b"\xe0\x80\xaf",  # overlong '/'
        b"\xed\xa0\x80",  # UTF-16 surrogate D800
        b"\xf4\x90\x80\x80",  # above U+10FFFF
        b"\xff",
        b"\x80",  # lone continuation byte
        b"a\xc3",  # cut inside a sequence
    ],
)
def test_invalid_utf8_is_non_canonical(raw: bytes) -> None:
    data = b"\xfe\x04\x01" + b"\x00\x01" + bytes([len(raw)]) + raw
    with pytest.raises(NonCanonicalError, match="UTF-8"):
        decode(Item, data)


def test_non_nfc_text_is_non_canonical_where_nfc_is_required() -> None:
    good = encode(labels(name="é"))
    bad = good.replace(b"\x02\xc3\xa9", b"\x03e\xcc\x81")  # same text, decomposed
    assert bad != good
    with pytest.raises(NonCanonicalError, match="NFC"):
        decode(Labels, bad)
    # The note field does not require NFC: decomposed text is kept as sent.
    decomposed = labels(note="e\u0301")
    assert decode(Labels, encode(decomposed)).note == "e\u0301"


@pytest.mark.parametrize(("offset", "value"), [(-4, 0), (-4, 4), (-2, 0), (-1, 0x35)])
def test_non_member_enum_value_is_invalid(offset: int, value: int) -> None:
    data = encode(labels())
    with pytest.raises(InvalidValueError):
        decode(Labels, _with_byte(data, len(data) + offset + (1 if offset == -4 else 0), value))


def test_post_init_rejection_is_invalid_value() -> None:
    assert decode(Positive, b"\xfe\x08\x01\x01") == Positive(1)
    with pytest.raises(ValueError, match="positive"):
        Positive(0)
    with pytest.raises(InvalidValueError, match="positive"):
        decode(Positive, b"\xfe\x08\x01\x00")


def test_decode_type_misuse() -> None:
    with pytest.raises(TypeError):
        decode(int, b"\x00\x00\x00")
    with pytest.raises(TypeError):
        decode(Ints, "fe0101")  # type: ignore[arg-type]


def test_all_decoding_errors_are_codec_errors() -> None:
    for error in (
        TruncatedError,
        TrailingBytesError,
        SizeLimitError,
        UnknownTagError,
        NonCanonicalError,
        InvalidValueError,
    ):
        assert issubclass(error, CodecError)


# --- registries, decode_any, peek_tag -----------------------------------------------------


def test_decode_any_dispatches_on_header() -> None:
    registry = Registry([Ints, Item, ItemV2, Outer])
    assert decode_any(encode(Ints(1, 2, 3, 4)), registry) == Ints(1, 2, 3, 4)
    assert decode_any(encode(Item(1, "a")), registry) == Item(1, "a")
    assert decode_any(encode(ItemV2(1, "a", b"")), registry) == ItemV2(1, "a", b"")
    assert decode_any(encode(outer()), registry) == outer()
    assert len(registry) == 4
    assert Item in registry and Blobs not in registry
    assert list(registry) == [Ints, Item, ItemV2, Outer]


def test_decode_any_unknown_tag_and_version() -> None:
    registry = Registry([Item])
    with pytest.raises(UnknownTagError, match="not accepted here"):
        decode_any(encode(Ints(1, 2, 3, 4)), registry)
    with pytest.raises(UnknownTagError, match="version 2"):
        decode_any(encode(ItemV2(1, "a", b"")), registry)


def test_decode_any_checks_the_chosen_message_limit() -> None:
    registry = Registry([Item, Blobs])
    padded = encode(Item(1, "a")) + bytes(schema_of(Item).size_limit)
    with pytest.raises(SizeLimitError):
        decode_any(padded, registry)


def test_empty_registry_accepts_nothing() -> None:
    with pytest.raises(UnknownTagError):
        decode_any(b"\xfe\x07\x01", Registry())
    with pytest.raises(SizeLimitError):
        decode_any(b"\xfe\x07\x01\x00", Registry())


def test_registry_refuses_a_duplicate() -> None:
    registry = Registry([Item])
    with pytest.raises(ValueError, match="already has tag"):
        registry.register(Item)
    registry.register(ItemV2)  # same tag, another version: allowed


def test_registry_refuses_non_messages() -> None:
    with pytest.raises(TypeError):
        Registry([int])


def test_peek_tag() -> None:
    assert peek_tag(encode(ItemV2(1, "a", b""))) == Header(0xFE04, 2)
    assert peek_tag(b"\x01\x02\x03garbage") == (0x0102, 3)


# --- declaration rules --------------------------------------------------------------


def test_message_needs_tag_and_version() -> None:
    with pytest.raises(TypeError):
        message()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        message(tag=0xFE7F)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("tag", "version", "max_size"),
    [
        (0, 1, MAX_MESSAGE_SIZE),  # tag 0 is reserved
        (0x1_0000, 1, MAX_MESSAGE_SIZE),
        (-1, 1, MAX_MESSAGE_SIZE),
        (True, 1, MAX_MESSAGE_SIZE),
        (0xFE70, 256, MAX_MESSAGE_SIZE),
        (0xFE70, -1, MAX_MESSAGE_SIZE),
        (0xFE70, 1, 2),
        (0xFE70, 1, 1 << 32),
    ],
)
def test_bad_header_parameters(tag: int, version: int, max_size: int) -> None:
    with pytest.raises(ValueError):
        message(tag=tag, version=version, max_size=max_size)


def test_tag_collision_between_classes_is_refused() -> None:
    with pytest.raises(ValueError, match=r"already declared by wire_schemas\.Ints"):

        @message(tag=0xFE01, version=1)
        class Impostor:
            a: U8

    # The failed declaration left the table as it was.
    assert declared_messages()[Header(0xFE01, 1)] is Ints


def test_same_tag_new_version_is_allowed() -> None:
    assert schema_of(ItemV2).tag == schema_of(Item).tag


def test_redeclaring_the_same_class_is_not_a_collision() -> None:
    def declare() -> type:
        @message(tag=0xFE71, version=1)
        class Again:
            a: U8

        return Again

    first, second = declare(), declare()
    assert first is not second
    assert decode(second, encode(second(1))) == second(1)


def _declare(tag: int, namespace: dict[str, Any], max_size: int = MAX_MESSAGE_SIZE) -> type:
    cls = type("Probe", (), {"__annotations__": namespace, "__module__": __name__})
    return message(tag=tag, version=1, max_size=max_size)(cls)


@pytest.mark.parametrize(
    ("annotations", "match"),
    [
        ({"x": int}, "no wire encoding"),
        ({"x": bytes}, "no wire encoding"),
        ({"x": str}, "no wire encoding"),
        ({"x": float}, "no wire encoding"),
        ({"x": Annotated[int, Fixed(3)]}, "Fixed annotates"),
        ({"x": Annotated[bytes, UInt(2)]}, "UInt annotates"),
        ({"x": Annotated[str, Bytes(max_len=3)]}, "Bytes annotates"),
        ({"x": Annotated[int, UInt(1), UInt(2)]}, "more than one"),
        ({"x": Annotated[list[U8], ListOf(max_count=3)]}, "tuple"),
        ({"x": Annotated[tuple[U8, U8], ListOf(max_count=3)]}, "tuple"),
        ({"x": Annotated[tuple[U8, ...], ListOf(max_count=3, element=UInt(1))]}, "element"),
        ({"x": Annotated[tuple[int, ...], ListOf(max_count=3)]}, "no wire encoding"),
        ({"x": Annotated[Colour, EnumOf(Wide, width=2)]}, "annotates"),
        ({"x": Item | int}, "no wire encoding"),
    ],
)
def test_field_without_a_wire_encoding_is_refused(annotations: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _declare(0xFE72, annotations)


def test_schema_larger_than_max_size_is_refused() -> None:
    big = {"x": Annotated[bytes, Bytes(max_len=MAX_MESSAGE_SIZE)]}
    with pytest.raises(ValueError, match="over max_size"):
        _declare(0xFE73, big)
    cls = _declare(0xFE73, big, max_size=MAX_MESSAGE_SIZE + 8)
    assert schema_of(cls).size_limit == 3 + 4 + MAX_MESSAGE_SIZE


def test_nested_limits_multiply_into_the_bound() -> None:
    many = {"x": Annotated[tuple[Item, ...], ListOf(max_count=30_000)]}
    with pytest.raises(ValueError, match="over max_size"):
        _declare(0xFE74, many)


def test_non_frozen_dataclass_is_refused() -> None:
    with pytest.raises(ValueError, match="frozen"):

        @message(tag=0xFE75, version=1)
        @dataclasses.dataclass
        class Mutable:
            a: U8


def test_explicit_frozen_dataclass_is_accepted() -> None:
    @message(tag=0xFE76, version=1)
    @dataclasses.dataclass(frozen=True)
    class Explicit:
        a: U8

    assert encode(Explicit(5)) == b"\xfe\x76\x01\x05"


def test_double_declaration_is_refused() -> None:
    @message(tag=0xFE77, version=1)
    class Once:
        a: U16

    with pytest.raises(ValueError, match="twice"):
        message(tag=0xFE78, version=1)(Once)


def test_non_init_field_is_refused() -> None:
    with pytest.raises(ValueError, match="init field"):

        @message(tag=0xFE79, version=1)
        class Derived:
            a: U8
            b: U8 = dataclasses.field(init=False, default=0)


def test_unresolvable_annotation_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot resolve"):

        @message(tag=0xFE7A, version=1)
        class Forward:
            a: NotDefinedAnywhere  # type: ignore[name-defined]  # noqa: F821


@pytest.mark.parametrize(
    "make",
    [
        lambda: UInt(3),
        lambda: Fixed(0),
        lambda: Bytes(max_len=0),
        lambda: Bytes(max_len=3, min_len=4),
        lambda: Bytes(max_len=1 << 32),
        lambda: Text(max_len=4, min_len=-1),
        lambda: ListOf(max_count=0),
        lambda: EnumOf(Wide, width=1),  # LARGE = 0x1234 does not fit a u8
        lambda: EnumOf(Colour, width=3),
        lambda: OneOf((Item,)),
        lambda: OneOf((Item, Item)),
    ],
)
def test_impossible_field_kinds_are_refused(make: Any) -> None:
    with pytest.raises(ValueError):
        make()


def test_bare_wide_enum_is_refused() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        _declare(0xFE7B, {"w": Wide})


def test_optional_of_union_of_messages() -> None:
    @message(tag=0xFE7C, version=1)
    class MaybeEither:
        x: Item | ItemV2 | None
        n: U32

    for value in (None, Item(1, "a"), ItemV2(2, "b", b"c")):
        msg = MaybeEither(value, 7)
        assert decode(MaybeEither, encode(msg)) == msg


def test_describe_renders_the_layout() -> None:
    assert describe(Outer) == "\n".join(
        [
            "struct {",
            "    uint16 tag = 0xFE05;",
            "    uint8 version = 1;",
            "    Item first;",
            "    Item<0..5 items> items;",
            "    uint16<1..5 items> numbers;",
            "    optional<Item> maybe;",
            "    optional<uint32> maybe_n;",
            "    (Item | ItemV2) either;",
            "    optional<utf8<0..4>><0..3 items> tags;",
            "} Outer;  /* 22..421 bytes */",
        ]
    )
    labels_layout = describe(Labels)
    assert "utf8-nfc<1..8> name;" in labels_layout
    assert "Colour(uint8) colour;" in labels_layout and "Wide(uint16) wide;" in labels_layout
    blobs_layout = describe(Blobs)
    assert "opaque[4] key;" in blobs_layout and "opaque<1..300> blob;" in blobs_layout
    assert "bool flag;" in labels_layout
    assert describe(Ints).count("uint") == 6
    with pytest.raises(TypeError):
        describe(int)


def test_the_package_docstring_example_runs(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = bkv.wire.__doc__ or ""
    start = doc.index("    from __future__ import annotations")
    end = doc.index("``@message`` makes the class")
    example = textwrap.dedent(doc[start:end]).replace("\\\\", "\\")
    # Run it under test-block tags so that it cannot collide with real messages.
    example = example.replace("0x01F0", "0xFEF0").replace("0x01F1", "0xFEF1")
    module = types.ModuleType("wire_docstring_example")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(example, "bkv.wire docstring", "exec"), module.__dict__)
    namespace = module.__dict__
    assert namespace["request"].attempts == 10
    assert namespace["any_msg"] == namespace["request"]
    assert namespace["header"] == Header(0xFEF1, 1)
    assert "struct {" in capsys.readouterr().out


def test_class_variables_are_not_fields() -> None:
    @message(tag=0xFE7D, version=1)
    class WithConstant:
        LIMIT: ClassVar[int] = 9
        a: U8

    assert [name for name, _ in schema_of(WithConstant).fields] == ["a"]
    assert encode(WithConstant(1)) == b"\xfe\x7d\x01\x01"
