"""Field kinds of the bkv wire codec: each one knows its own canonical encoding.

A field kind ("spec") compiles, once at message declaration, into two closures:

- an *encoder* ``(value, out: bytearray) -> None`` that checks the value
  (caller misuse -> ``TypeError``/``ValueError``) and appends its bytes;
- a *decoder* ``(data: bytes, pos: int) -> (value, new_pos)`` that reads strictly
  and raises only :class:`bkv.errors.CodecError` subclasses.

The encodings follow the TLS presentation language (RFC 8446 section 3):
big-endian fixed-width integers (3.3), fixed vectors ``opaque x[n]`` and
variable vectors ``opaque x<min..max>`` whose length prefix is as wide as needed
to hold ``max`` (3.4), here rounded up to 1, 2 or 4 bytes.
"""

from __future__ import annotations

import abc
import enum
import struct
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from bkv.errors import (
    InvalidValueError,
    NonCanonicalError,
    SizeLimitError,
    TruncatedError,
)

Encoder = Callable[[Any, bytearray], None]
Decoder = Callable[[bytes, int], tuple[Any, int]]

# Widths a length or count prefix may take (RFC 8446 section 3.4 derives the
# width from the declared maximum; we round 3 up to 4 to keep to u8/u16/u32).
PREFIX_WIDTHS = (1, 2, 4)
UINT_WIDTHS = (1, 2, 4, 8)
_UINT_STRUCTS = {
    1: struct.Struct(">B"),
    2: struct.Struct(">H"),
    4: struct.Struct(">I"),
    8: struct.Struct(">Q"),
}


def prefix_width(max_value: int) -> int:
    """Bytes of the smallest u8/u16/u32 that holds ``max_value`` (RFC 8446 section 3.4)."""
    for width in PREFIX_WIDTHS:
        if max_value < 1 << (8 * width):
            return width
    raise ValueError(f"maximum {max_value} does not fit a 4-byte length prefix")


def _read_uint(data: bytes, pos: int, width: int, where: str) -> tuple[int, int]:
    end = pos + width
    if end > len(data):
        raise TruncatedError(f"{where}: input ends inside a {width}-byte integer")
    return _UINT_STRUCTS[width].unpack_from(data, pos)[0], end


class Spec(abc.ABC):
    """Base of every field kind. Subclasses are immutable and compile to closures."""

    @abc.abstractmethod
    def compile(self, where: str) -> tuple[Encoder, Decoder]:
        """Return (encoder, decoder) for a field at ``where`` (used in error messages)."""

    @abc.abstractmethod
    def max_encoded_size(self) -> int:
        """Largest number of bytes a value of this field can encode to."""

    @abc.abstractmethod
    def min_encoded_size(self) -> int:
        """Smallest number of bytes a value of this field can encode to."""

    @abc.abstractmethod
    def describe(self) -> str:
        """This kind in TLS presentation-language style, for docs: ``opaque<0..64>``."""

    def python_type(self) -> type | None:
        """The Python type an ``Annotated[T, spec]`` must name, or None if not a scalar."""
        return None


@dataclass(frozen=True)
class UInt(Spec):
    """Unsigned big-endian integer of ``width`` bytes (RFC 8446 section 3.3): uint8..uint64."""

    width: int

    def __post_init__(self) -> None:
        if self.width not in UINT_WIDTHS:
            raise ValueError(f"UInt width must be one of {UINT_WIDTHS}, not {self.width}")

    def python_type(self) -> type:
        return int

    def describe(self) -> str:
        return f"uint{8 * self.width}"

    def max_encoded_size(self) -> int:
        return self.width

    def min_encoded_size(self) -> int:
        return self.width

    def compile(self, where: str) -> tuple[Encoder, Decoder]:
        width = self.width
        bound = 1 << (8 * width)
        packer = _UINT_STRUCTS[width]

        def encode(value: Any, out: bytearray) -> None:
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{where}: expected int, got {type(value).__name__}")
            if not 0 <= value < bound:
                raise ValueError(f"{where}: {value} is out of range for u{8 * width}")
            out += packer.pack(value)

        unpack_from = packer.unpack_from

        def decode(data: bytes, pos: int) -> tuple[Any, int]:
            # _read_uint, inlined: every message decodes its integers here.
            end = pos + width
            if end > len(data):
                raise TruncatedError(f"{where}: input ends inside a {width}-byte integer")
            return unpack_from(data, pos)[0], end

        return encode, decode


@dataclass(frozen=True)
class Fixed(Spec):
    """Exactly ``length`` opaque bytes, no prefix (RFC 8446 ``opaque x[n]``)."""

    length: int

    def __post_init__(self) -> None:
        if self.length < 1:
            raise ValueError(f"Fixed length must be at least 1, not {self.length}")

    def python_type(self) -> type:
        return bytes

    def describe(self) -> str:
        return f"opaque[{self.length}]"

    def max_encoded_size(self) -> int:
        return self.length

    def min_encoded_size(self) -> int:
        return self.length

    def compile(self, where: str) -> tuple[Encoder, Decoder]:
        length = self.length

        def encode(value: Any, out: bytearray) -> None:
            if type(value) is not bytes:
                raise TypeError(f"{where}: expected bytes, got {type(value).__name__}")
            if len(value) != length:
                raise ValueError(f"{where}: expected {length} bytes, got {len(value)}")
            out += value

        def decode(data: bytes, pos: int) -> tuple[Any, int]:
            end = pos + length
            if end > len(data):
                raise TruncatedError(f"{where}: input ends inside a {length}-byte field")
            return data[pos:end], end

        return encode, decode


def _check_bounds(kind: str, min_len: int, max_len: int) -> None:
    if min_len < 0 or max_len < 1 or min_len > max_len:
        raise ValueError(f"{kind}: need 0 <= min ({min_len}) <= max ({max_len}) and max >= 1")
    prefix_width(max_len)


def _compile_length(
    where: str, unit: str, min_len: int, max_len: int
) -> Callable[[bytes, int], tuple[int, int]]:
    """Decoder of a length/count prefix that enforces [min_len, max_len] before anything else."""
    width = prefix_width(max_len)
    unpack_from = _UINT_STRUCTS[width].unpack_from

    def read_length(data: bytes, pos: int) -> tuple[int, int]:
        # _read_uint, inlined: every length and count prefix is read here.
        end = pos + width
        if end > len(data):
            raise TruncatedError(f"{where}: input ends inside a {width}-byte integer")
        n, pos = unpack_from(data, pos)[0], end
        if n > max_len:
            raise SizeLimitError(f"{where}: {n} {unit} over the maximum of {max_len}")
        if n < min_len:
            raise SizeLimitError(f"{where}: {n} {unit} under the minimum of {min_len}")
        return n, pos

    return read_length


@dataclass(frozen=True)
class Bytes(Spec):
    """Variable opaque bytes ``opaque x<min_len..max_len>`` with a 1/2/4-byte length prefix.

    The prefix width is the smallest that holds ``max_len`` (RFC 8446 section 3.4), so
    changing ``max_len`` across 255 or 65535 changes the wire format: bump the version.
    """

    max_len: int
    min_len: int = 0

    def __post_init__(self) -> None:
        _check_bounds("Bytes", self.min_len, self.max_len)

    def python_type(self) -> type:
        return bytes

    def describe(self) -> str:
        return f"opaque<{self.min_len}..{self.max_len}>"

    def max_encoded_size(self) -> int:
        return prefix_width(self.max_len) + self.max_len

    def min_encoded_size(self) -> int:
        return prefix_width(self.max_len) + self.min_len

    def compile(self, where: str) -> tuple[Encoder, Decoder]:
        min_len, max_len = self.min_len, self.max_len
        width = prefix_width(max_len)
        read_length = _compile_length(where, "bytes", min_len, max_len)

        def encode(value: Any, out: bytearray) -> None:
            if type(value) is not bytes:
                raise TypeError(f"{where}: expected bytes, got {type(value).__name__}")
            n = len(value)
            if not min_len <= n <= max_len:
                raise ValueError(f"{where}: length {n} outside [{min_len}, {max_len}]")
            out += n.to_bytes(width, "big")
            out += value

        def decode(data: bytes, pos: int) -> tuple[Any, int]:
            n, pos = read_length(data, pos)
            end = pos + n
            if end > len(data):
                raise TruncatedError(f"{where}: input ends inside a {n}-byte value")
            return data[pos:end], end

        return encode, decode


@dataclass(frozen=True)
class Text(Spec):
    """UTF-8 text, length-prefixed like :class:`Bytes`; ``max_len``/``min_len`` count bytes.

    Decoding rejects invalid UTF-8 (overlong forms, surrogates, code points over
    U+10FFFF: RFC 3629 section 3) as non-canonical. The codec does not normalize:
    with ``nfc=True`` a value that is not in Unicode NFC is rejected (never
    silently changed), for identifiers that are compared.
    """

    max_len: int
    min_len: int = 0
    nfc: bool = False

    def __post_init__(self) -> None:
        _check_bounds("Text", self.min_len, self.max_len)

    def python_type(self) -> type:
        return str

    def describe(self) -> str:
        return f"utf8{'-nfc' if self.nfc else ''}<{self.min_len}..{self.max_len}>"

    def max_encoded_size(self) -> int:
        return prefix_width(self.max_len) + self.max_len

    def min_encoded_size(self) -> int:
        return prefix_width(self.max_len) + self.min_len

    def compile(self, where: str) -> tuple[Encoder, Decoder]:
        min_len, max_len, nfc = self.min_len, self.max_len, self.nfc
        width = prefix_width(max_len)
        read_length = _compile_length(where, "bytes", min_len, max_len)

        def encode(value: Any, out: bytearray) -> None:
            if type(value) is not str:
                raise TypeError(f"{where}: expected str, got {type(value).__name__}")
            try:
                raw = value.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"{where}: text is not encodable as UTF-8") from None
            n = len(raw)
            if not min_len <= n <= max_len:
                raise ValueError(f"{where}: UTF-8 length {n} outside [{min_len}, {max_len}]")
            if nfc and not unicodedata.is_normalized("NFC", value):
                raise ValueError(f"{where}: text is not in Unicode NFC")
            out += n.to_bytes(width, "big")
            out += raw

        def decode(data: bytes, pos: int) -> tuple[Any, int]:
            n, pos = read_length(data, pos)
            end = pos + n
            if end > len(data):
                raise TruncatedError(f"{where}: input ends inside {n} bytes of text")
            try:
                value = data[pos:end].decode("utf-8")
            except UnicodeDecodeError:
                raise NonCanonicalError(f"{where}: text is not valid UTF-8") from None
            if nfc and not unicodedata.is_normalized("NFC", value):
                raise NonCanonicalError(f"{where}: text is not in Unicode NFC")
            return value, end

        return encode, decode


@dataclass(frozen=True)
class Bool(Spec):
    """One byte, 0x00 (False) or 0x01 (True); any other byte is non-canonical."""

    def python_type(self) -> type:
        return bool

    def describe(self) -> str:
        return "bool"

    def max_encoded_size(self) -> int:
        return 1

    def min_encoded_size(self) -> int:
        return 1

    def compile(self, where: str) -> tuple[Encoder, Decoder]:
        def encode(value: Any, out: bytearray) -> None:
            if type(value) is not bool:
                raise TypeError(f"{where}: expected bool, got {type(value).__name__}")
            out.append(1 if value else 0)

        def decode(data: bytes, pos: int) -> tuple[Any, int]:
            if pos >= len(data):
                raise TruncatedError(f"{where}: input ends before a bool")
            byte = data[pos]
            if byte > 1:
                raise NonCanonicalError(f"{where}: bool byte is {byte:#04x}, not 0x00 or 0x01")
            return byte == 1, pos + 1

        return encode, decode


@dataclass(frozen=True)
class EnumOf(Spec):
    """An ``enum.IntEnum`` member as an unsigned integer of ``width`` bytes.

    Decoding a number that is not a member raises ``InvalidValueError``.
    A bare ``IntEnum`` annotation means ``EnumOf(that_enum, width=1)``.
    """

    enum_type: type[enum.IntEnum]
    width: int = 1

    def __post_init__(self) -> None:
        if self.width not in UINT_WIDTHS:
            raise ValueError(f"EnumOf width must be one of {UINT_WIDTHS}, not {self.width}")
        bound = 1 << (8 * self.width)
        for member in self.enum_type:
            if not 0 <= member.value < bound:
                raise ValueError(
                    f"{self.enum_type.__name__}.{member.name} = {member.value} does not fit "
                    f"u{8 * self.width}"
                )

    def python_type(self) -> type:
        return self.enum_type

    def describe(self) -> str:
        return f"{self.enum_type.__name__}(uint{8 * self.width})"

    def max_encoded_size(self) -> int:
        return self.width

    def min_encoded_size(self) -> int:
        return self.width

    def compile(self, where: str) -> tuple[Encoder, Decoder]:
        enum_type, width = self.enum_type, self.width
        members = {int(m.value): m for m in enum_type}
        packer = _UINT_STRUCTS[width]

        def encode(value: Any, out: bytearray) -> None:
            if not isinstance(value, enum_type):
                raise TypeError(
                    f"{where}: expected {enum_type.__name__}, got {type(value).__name__}"
                )
            out += packer.pack(int(value))

        def decode(data: bytes, pos: int) -> tuple[Any, int]:
            number, pos = _read_uint(data, pos, width, where)
            member = members.get(number)
            if member is None:
                raise InvalidValueError(f"{where}: {number} is not a {enum_type.__name__}")
            return member, pos

        return encode, decode


@dataclass(frozen=True)
class ListOf(Spec):
    """A count-prefixed sequence ``T x<min_count..max_count>`` of one element kind, as a tuple.

    The count (not the byte length) is prefixed, in the smallest u8/u16/u32 that
    holds ``max_count``. In an annotation the element kind comes from the tuple:
    ``Annotated[tuple[U16, ...], ListOf(max_count=MAX_IDS)]``.
    """

    max_count: int
    min_count: int = 0
    element: Spec | None = None

    def __post_init__(self) -> None:
        _check_bounds("ListOf", self.min_count, self.max_count)

    def _element(self) -> Spec:
        if self.element is None:
            raise ValueError("ListOf has no element kind (annotate as tuple[T, ...])")
        return self.element

    def describe(self) -> str:
        return f"{self._element().describe()}<{self.min_count}..{self.max_count} items>"

    def max_encoded_size(self) -> int:
        return prefix_width(self.max_count) + self.max_count * self._element().max_encoded_size()

    def min_encoded_size(self) -> int:
        return prefix_width(self.max_count) + self.min_count * self._element().min_encoded_size()

    def compile(self, where: str) -> tuple[Encoder, Decoder]:
        min_count, max_count = self.min_count, self.max_count
        width = prefix_width(max_count)
        read_count = _compile_length(where, "items", min_count, max_count)
        encode_item, decode_item = self._element().compile(f"{where}[]")

        def encode(value: Any, out: bytearray) -> None:
            # Tuples only: a frozen message must not hold a mutable list, and a list
            # would not compare equal to the tuple that decoding gives back.
            if type(value) is not tuple:
                raise TypeError(f"{where}: expected tuple, got {type(value).__name__}")
            n = len(value)
            if not min_count <= n <= max_count:
                raise ValueError(f"{where}: {n} items outside [{min_count}, {max_count}]")
            out += n.to_bytes(width, "big")
            for item in value:
                encode_item(item, out)

        def decode(data: bytes, pos: int) -> tuple[Any, int]:
            n, pos = read_count(data, pos)
            items = []
            for _ in range(n):
                item, pos = decode_item(data, pos)
                items.append(item)
            return tuple(items), pos

        element = self._element()
        if not isinstance(element, Fixed):
            return encode, decode
        size = element.length

        def decode_fixed(data: bytes, pos: int) -> tuple[Any, int]:
            # Items of one fixed size (e.g. the hashes of a proof) are sliced out at once.
            n, pos = read_count(data, pos)
            end = pos + n * size
            if end > len(data):
                raise TruncatedError(f"{where}[]: input ends inside a {size}-byte field")
            return tuple([data[i : i + size] for i in range(pos, end, size)]), end

        return encode, decode_fixed


@dataclass(frozen=True)
class OptionalOf(Spec):
    """A presence byte (0x00 absent, 0x01 present; others non-canonical), then the value.

    Written in annotations as ``T | None``.
    """

    inner: Spec

    def describe(self) -> str:
        return f"optional<{self.inner.describe()}>"

    def max_encoded_size(self) -> int:
        return 1 + self.inner.max_encoded_size()

    def min_encoded_size(self) -> int:
        return 1

    def compile(self, where: str) -> tuple[Encoder, Decoder]:
        encode_inner, decode_inner = self.inner.compile(where)

        def encode(value: Any, out: bytearray) -> None:
            if value is None:
                out.append(0)
            else:
                out.append(1)
                encode_inner(value, out)

        def decode(data: bytes, pos: int) -> tuple[Any, int]:
            if pos >= len(data):
                raise TruncatedError(f"{where}: input ends before a presence byte")
            flag = data[pos]
            if flag == 0:
                return None, pos + 1
            if flag == 1:
                return decode_inner(data, pos + 1)
            raise NonCanonicalError(f"{where}: presence byte is {flag:#04x}, not 0x00 or 0x01")

        return encode, decode


# Unsigned integers, to be written as bare annotations: ``counter: U32``.
U8 = Annotated[int, UInt(1)]
U16 = Annotated[int, UInt(2)]
U32 = Annotated[int, UInt(4)]
U64 = Annotated[int, UInt(8)]
