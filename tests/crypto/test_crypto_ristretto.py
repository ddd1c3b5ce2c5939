"""ristretto255 over libsodium: RFC 9496 and RFC 9380 vectors, strict decoding."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bkv.crypto import hkdf, ristretto
from bkv.errors import InvalidPointError, InvalidScalarError

# RFC 9496 Appendix A.1: multiples of the generator B (B[0] is the identity).
MULTIPLES = {
    1: "e2f2ae0a6abc4e71a884a961c500515f58e30b6aa582dd8db6a65945e08d2d76",
    2: "6a493210f7499cd17fecb510ae0cea23a110e8d5b901f8acadd3095c73a3b919",
    15: "e0c418f7c8d9c4cdd7395b93ea124f3ad99021bb681dfc3302a9d99a2e53e64e",
}

# RFC 9496 Appendix A.2: encodings that must be rejected.
BAD_ENCODINGS = {
    "non-canonical-s=p": "ed" + "ff" * 30 + "7f",
    "non-canonical-high-bit": "00" + "ff" * 31,
    "negative-s=1": "01" + "00" * 31,
    "non-square-x2": "26948d35ca62e643e26a83177332e6b6afeb9d08e4268b650f1f5bbd8d81d371",
    "negative-xy": "3eb858e78f5a7254d8c9731174a94f76755fd3941c0ac93735c07ba14579630e",
    "s=-1-y=0": "ec" + "ff" * 30 + "7f",
    "identity": "00" * 32,
}

# RFC 9496 Appendix A.3, first entry: the one-way map from 64 uniform bytes.
FROM_HASH_INPUT = (
    "5d1be09e3d0c82fc538112490e35701979d99e06ca3e2b5b54bffe8b4dc772c1"
    "4d98b696a1bbfb5ca32c436cc61c16563790306c79eaca7705668b47dffe5bb6"
)
FROM_HASH_OUTPUT = "3066f82a1a747d45120d1740f14358531a8f04bbffe6a819f86dfe50f44a0a46"

# RFC 9380 Appendix K.3: expand_message_xmd(SHA-512).
XMD_DST = b"QUUX-V01-CS02-with-expander-SHA512-256"
XMD_VECTORS = [
    (b"", 0x20, "6b9a7312411d92f921c6f68ca0b6380730a1a4d982c507211a90964c394179ba"),
    (b"abc", 0x20, "0da749f12fbe5483eb066a5f595055679b976e93abe9be6f0f6318bce7aca8dc"),
    (
        b"abcdef0123456789",
        0x20,
        "087e45a86e2939ee8b91100af1583c4938e0f5fc6c9db4b107b83346bc967f58",
    ),
    (
        b"",
        0x80,
        "41b037d1734a5f8df225dd8c7de38f851efdb45c372887be655212d07251b921"
        "b052b62eaed99b46f72f2ef4cc96bfaf254ebbbec091e1a3b9e4fb5e5b619d2e"
        "0c5414800a1d882b62bb5cd1778f098b8eb6cb399d5d9d18f5d5842cf5d13d7e"
        "b00a7cff859b605da678b318bd0e65ebff70bec88c753b159a805d2c89c55961",
    ),
]


@pytest.mark.parametrize(("multiple", "encoding"), MULTIPLES.items(), ids=lambda x: str(x)[:8])
def test_rfc9496_generator_multiples(multiple: int, encoding: str) -> None:
    element = ristretto.scalar_mult_base(ristretto.scalar_from_int(multiple))
    assert element.hex() == encoding
    assert ristretto.decode_element(bytes.fromhex(encoding)) == element


@pytest.mark.parametrize("name", BAD_ENCODINGS)
def test_rfc9496_bad_encodings_are_rejected(name: str) -> None:
    with pytest.raises(InvalidPointError):
        ristretto.decode_element(bytes.fromhex(BAD_ENCODINGS[name]))


@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_element_of_wrong_length_is_rejected(size: int) -> None:
    with pytest.raises(InvalidPointError):
        ristretto.decode_element(bytes(size))


def test_rfc9496_one_way_map() -> None:
    element = ristretto.element_from_uniform_bytes(bytes.fromhex(FROM_HASH_INPUT))
    assert element.hex() == FROM_HASH_OUTPUT


@pytest.mark.parametrize(
    ("msg", "length", "expected"), XMD_VECTORS, ids=["empty", "abc", "abcdef", "empty-128"]
)
def test_rfc9380_expand_message_xmd_sha512(msg: bytes, length: int, expected: str) -> None:
    assert ristretto.expand_message_xmd(msg, XMD_DST, length).hex() == expected


def test_expand_message_xmd_a_changed_dst_changes_the_output() -> None:
    out = ristretto.expand_message_xmd(b"", XMD_DST + b"!", 0x20)
    assert out.hex() != XMD_VECTORS[0][2]


@pytest.mark.parametrize(
    ("dst", "length"), [(b"", 32), (b"x" * 256, 32), (b"d", 0), (b"d", 255 * 64 + 1)]
)
def test_expand_message_xmd_rejects_bad_parameters(dst: bytes, length: int) -> None:
    with pytest.raises(ValueError, match=r"DST|length"):
        ristretto.expand_message_xmd(b"", dst, length)


def test_scalar_decoding_is_canonical() -> None:
    assert ristretto.decode_scalar(ristretto.scalar_from_int(ristretto.ORDER - 1))
    for value in (ristretto.ORDER, ristretto.ORDER + 1, 2**255, 2**256 - 1):
        with pytest.raises(InvalidScalarError):
            ristretto.decode_scalar(value.to_bytes(32, "little"))
    for size in (0, 31, 33):
        with pytest.raises(InvalidScalarError):
            ristretto.decode_scalar(bytes(size))


def test_zero_scalar_is_rejected_where_it_must_be() -> None:
    assert ristretto.decode_scalar(bytes(32)) == bytes(32)
    with pytest.raises(InvalidScalarError):
        ristretto.decode_nonzero_scalar(bytes(32))
    with pytest.raises(InvalidScalarError):
        ristretto.scalar_invert(ristretto.scalar_from_int(0))
    with pytest.raises(InvalidScalarError):
        ristretto.scalar_mult_base(ristretto.scalar_from_int(0))


def test_random_scalar_is_nonzero_and_rejects_a_broken_rng() -> None:
    assert any(ristretto.random_scalar(lambda n: b"\x07" * n))
    with pytest.raises(ValueError, match="zero"):
        ristretto.random_scalar(bytes)
    with pytest.raises(ValueError, match="rng returned"):
        ristretto.random_scalar(lambda n: bytes(n - 1))


def test_reduce_wide_matches_integer_reduction() -> None:
    wide = hkdf.sha512(b"wide")
    assert ristretto.scalar_to_int(ristretto.scalar_reduce(wide)) == (
        int.from_bytes(wide, "little") % ristretto.ORDER
    )


def test_scalar_invert_refuses_non_canonical_zero() -> None:
    # L itself encodes zero unreduced; libsodium alone would "invert" it to zero.
    unreduced_zero = ristretto.ORDER.to_bytes(32, "little")
    with pytest.raises(InvalidScalarError):
        ristretto.scalar_invert(ristretto.Scalar(unreduced_zero))


@given(st.integers(min_value=1, max_value=ristretto.ORDER - 1))
def test_scalar_invert_undoes_scalar_mult(value: int) -> None:
    scalar = ristretto.scalar_from_int(value)
    base = ristretto.scalar_mult_base(ristretto.scalar_from_int(7))
    there = ristretto.scalar_mult(scalar, base)
    back = ristretto.scalar_mult(ristretto.scalar_invert(scalar), there)
    assert back == base


@given(st.binary(min_size=32, max_size=32))
def test_random_32_bytes_decode_or_raise_invalid_point(data: bytes) -> None:
    try:
        element = ristretto.decode_element(data)
    except InvalidPointError:
        return
    assert element == data


@pytest.mark.parametrize(
    "bad",
    [bytes(31), bytes(33), bytearray(32), "0" * 32],
    ids=["short", "long", "bytearray", "str"],
)
def test_libsodium_wrappers_check_operands_before_calling(bad: Any) -> None:
    # libsodium reads exactly 32 bytes from each operand and ctypes cannot check that.
    scalar = ristretto.scalar_from_int(7)
    point = ristretto.scalar_mult_base(scalar)
    with pytest.raises(TypeError, match="scalar"):
        ristretto.scalar_mult(bad, point)
    with pytest.raises(TypeError, match="element"):
        ristretto.scalar_mult(scalar, bad)
    with pytest.raises(TypeError, match="scalar"):
        ristretto.scalar_mult_base(bad)


@pytest.mark.parametrize("bad", [bytes(63), bytes(65), bytearray(64)])
def test_one_way_map_checks_its_input_before_calling(bad: bytes) -> None:
    with pytest.raises(ValueError, match="from_hash"):
        ristretto.element_from_uniform_bytes(bad)


def test_decode_element_takes_bytes_like_input() -> None:
    point = ristretto.scalar_mult_base(ristretto.scalar_from_int(7))
    assert ristretto.decode_element(bytearray(point)) == point
    assert type(ristretto.decode_element(memoryview(point))) is bytes


# --- decode_and_scalar_mult: DeserializeElement inside the multiplication ----------------

SCALAR_FIVE = ristretto.scalar_from_int(5)


@pytest.mark.parametrize("name", BAD_ENCODINGS)
def test_decode_and_scalar_mult_rejects_what_decode_element_rejects(name: str) -> None:
    """RFC 9496 A.2's bad encodings and the identity fail in the one libsodium call."""
    with pytest.raises(InvalidPointError, match="KE1 field is not a canonical"):
        ristretto.decode_and_scalar_mult(
            SCALAR_FIVE, bytes.fromhex(BAD_ENCODINGS[name]), "KE1 field"
        )


@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_decode_and_scalar_mult_rejects_wrong_lengths(size: int) -> None:
    with pytest.raises(InvalidPointError, match="must be 32 bytes"):
        ristretto.decode_and_scalar_mult(SCALAR_FIVE, b"\x01" * size)


@pytest.mark.parametrize(("multiple", "encoding"), MULTIPLES.items(), ids=lambda x: str(x)[:8])
def test_decode_and_scalar_mult_equals_decode_then_multiply(multiple: int, encoding: str) -> None:
    point = bytes.fromhex(encoding)
    expected = ristretto.scalar_mult(SCALAR_FIVE, ristretto.decode_element(point))
    assert ristretto.decode_and_scalar_mult(SCALAR_FIVE, point) == expected
    assert ristretto.decode_and_scalar_mult(SCALAR_FIVE, bytearray(point)) == expected  # type: ignore[arg-type]
    assert expected == ristretto.scalar_mult_base(ristretto.scalar_from_int(5 * multiple))


def test_decode_and_scalar_mult_rejects_misuse() -> None:
    point = bytes.fromhex(MULTIPLES[1])
    with pytest.raises(TypeError, match="element must be bytes"):
        ristretto.decode_and_scalar_mult(SCALAR_FIVE, point.hex())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="scalar must be 32 bytes"):
        ristretto.decode_and_scalar_mult(bytes(31), point)  # type: ignore[arg-type]
    # A zero scalar refuses even a valid point: never an invalid point accepted.
    with pytest.raises(InvalidPointError):
        ristretto.decode_and_scalar_mult(ristretto.scalar_from_int(0), point)


# --- ScalarHash: HashToScalar with its DST prepared once -------------------------------


@given(msg=st.binary(max_size=200), dst=st.binary(min_size=1, max_size=255))
def test_scalar_hash_equals_hash_to_scalar(msg: bytes, dst: bytes) -> None:
    assert ristretto.ScalarHash(dst)(msg) == ristretto.hash_to_scalar(msg, dst)


@pytest.mark.parametrize("dst", [b"", b"x" * 256])
def test_scalar_hash_rejects_bad_dsts(dst: bytes) -> None:
    with pytest.raises(ValueError, match="DST"):
        ristretto.ScalarHash(dst)


def test_is_zero_scalar() -> None:
    assert ristretto.is_zero_scalar(bytes(32))
    assert not ristretto.is_zero_scalar(ristretto.scalar_from_int(1))
    assert not ristretto.is_zero_scalar(b"\x00" * 31 + b"\x01")
