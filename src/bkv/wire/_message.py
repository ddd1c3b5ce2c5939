"""Message declaration, the process-wide tag table, encode/decode and registries.

A message's encoding is ``tag (u16) || version (u8) || fields in declaration
order`` (docs/protocol.md, "Wire codec"). The (tag, version) header is the
domain tag of every signed or hashed structure, so the only way to make a
message class is :func:`message`, which requires both and refuses to give the
same pair to two classes.
"""

from __future__ import annotations

import dataclasses
import enum
import struct
import types
import typing
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any, NamedTuple, TypeVar, dataclass_transform

from bkv.errors import (
    InvalidValueError,
    SizeLimitError,
    TrailingBytesError,
    TruncatedError,
    UnknownTagError,
)
from bkv.wire._fields import (
    Bool,
    Decoder,
    Encoder,
    EnumOf,
    ListOf,
    OptionalOf,
    Spec,
)

T = TypeVar("T")

#: Default ceiling on one encoded message, checked before any parsing. A message
#: whose schema can encode to more must say so with ``@message(max_size=...)``.
MAX_MESSAGE_SIZE = 1 << 20
#: u16 tag + u8 version.
HEADER_SIZE = 3
#: Tags are u16; 0x0000 is reserved so that a zeroed buffer never parses as a message.
MIN_TAG, MAX_TAG = 0x0001, 0xFFFF
MAX_VERSION = 0xFF

_HEADER = struct.Struct(">HB")

#: What decoders accept; anything but ``bytes`` is copied once into ``bytes``.
Buffer = bytes | bytearray | memoryview
_SCHEMA_ATTR = "__bkv_wire_schema__"


class Header(NamedTuple):
    """The (tag, version) pair that starts every message."""

    tag: int
    version: int


@dataclass(frozen=True, eq=False)
class MessageSchema:
    """The compiled codec of one message class (built once, at declaration)."""

    cls: type
    tag: int
    version: int
    #: (field name, field kind) in declaration order, for introspection and docs.
    fields: tuple[tuple[str, Spec], ...]
    #: The largest encoding the field limits allow (never over the declared
    #: ``max_size``); longer input is rejected before parsing.
    size_limit: int
    min_size: int
    header: bytes = dataclasses.field(repr=False)
    encoders: tuple[tuple[str, Encoder], ...] = dataclasses.field(repr=False)
    decoders: tuple[Decoder, ...] = dataclasses.field(repr=False)

    def encode_body(self, msg: object, out: bytearray) -> None:
        out += self.header
        for name, encode_field in self.encoders:
            encode_field(getattr(msg, name), out)

    def decode_body(self, data: bytes, pos: int) -> tuple[Any, int]:
        """Decode the fields after a header already checked; return (message, new_pos)."""
        values = []
        for decode_field in self.decoders:
            value, pos = decode_field(data, pos)
            values.append(value)
        try:
            return self.cls(*values), pos
        except (ValueError, TypeError) as exc:
            # A class's own __post_init__ checks (caller misuse when constructing)
            # are a property of the bytes when decoding: report them as a codec error.
            raise InvalidValueError(f"{self.cls.__name__}: {exc}") from None


# Every declared (tag, version) in the process, so that two modules cannot give
# the same domain tag to different structures.
_DECLARED: dict[Header, type] = {}


def _qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _claim(header: Header, cls: type) -> None:
    owner = _DECLARED.get(header)
    # Re-declaring the very same class (module reload, re-run of a test module)
    # is not a collision; anything else is.
    if owner is not None and _qualified_name(owner) != _qualified_name(cls):
        raise ValueError(
            f"wire tag {header.tag:#06x} version {header.version} is already declared by "
            f"{_qualified_name(owner)}; {_qualified_name(cls)} needs its own tag"
        )
    _DECLARED[header] = cls


def declared_messages() -> dict[Header, type]:
    """A copy of the process-wide table of declared message classes, by (tag, version)."""
    return dict(_DECLARED)


def schema_of(cls: type) -> MessageSchema:
    """The compiled schema of a message class; ``TypeError`` if it was not declared."""
    schema = cls.__dict__.get(_SCHEMA_ATTR) if isinstance(cls, type) else None
    if not isinstance(schema, MessageSchema):
        raise TypeError(f"{cls!r} is not a wire message (declare it with @message)")
    return schema


def is_message(obj: object) -> bool:
    """True if ``obj`` is a declared message class or an instance of one."""
    cls = obj if isinstance(obj, type) else type(obj)
    return isinstance(cls.__dict__.get(_SCHEMA_ATTR), MessageSchema)


@dataclass(frozen=True)
class Nested(Spec):
    """Another message, embedded with its own header (tag, version) and no length prefix.

    The embedded bytes are exactly ``encode(inner)``, so a signature over an inner
    statement covers the same bytes wherever it is carried. Written in annotations
    as the bare message class.
    """

    message_type: type

    def python_type(self) -> type:
        return self.message_type

    def describe(self) -> str:
        return self.message_type.__name__

    def max_encoded_size(self) -> int:
        return schema_of(self.message_type).size_limit

    def min_encoded_size(self) -> int:
        return schema_of(self.message_type).min_size

    def compile(self, where: str) -> tuple[Encoder, Decoder]:
        schema = schema_of(self.message_type)
        cls = self.message_type
        tag, version = schema.tag, schema.version

        def encode(value: Any, out: bytearray) -> None:
            if type(value) is not cls:
                raise TypeError(f"{where}: expected {cls.__name__}, got {type(value).__name__}")
            schema.encode_body(value, out)

        def decode(data: bytes, pos: int) -> tuple[Any, int]:
            header = _read_header(data, pos, where)
            if header != (tag, version):
                raise UnknownTagError(
                    f"{where}: expected {cls.__name__} ({tag:#06x} v{version}), got "
                    f"{header.tag:#06x} v{header.version}"
                )
            return schema.decode_body(data, pos + HEADER_SIZE)

        return encode, decode


@dataclass(frozen=True)
class OneOf(Spec):
    """One of several message classes, told apart by its own header.

    Written in annotations as a union of message classes: ``A | B``.
    """

    message_types: tuple[type, ...]

    def __post_init__(self) -> None:
        headers = [_header_of(cls) for cls in self.message_types]
        if len(set(headers)) != len(headers) or len(headers) < 2:
            raise ValueError("OneOf needs at least two message classes with distinct headers")

    def describe(self) -> str:
        return "(" + " | ".join(cls.__name__ for cls in self.message_types) + ")"

    def max_encoded_size(self) -> int:
        return max(schema_of(cls).size_limit for cls in self.message_types)

    def min_encoded_size(self) -> int:
        return min(schema_of(cls).min_size for cls in self.message_types)

    def compile(self, where: str) -> tuple[Encoder, Decoder]:
        by_class = {cls: schema_of(cls) for cls in self.message_types}
        by_header = {Header(s.tag, s.version): s for s in by_class.values()}

        def encode(value: Any, out: bytearray) -> None:
            schema = by_class.get(type(value))
            if schema is None:
                names = ", ".join(cls.__name__ for cls in by_class)
                raise TypeError(f"{where}: expected one of {names}, got {type(value).__name__}")
            schema.encode_body(value, out)

        def decode(data: bytes, pos: int) -> tuple[Any, int]:
            header = _read_header(data, pos, where)
            schema = by_header.get(header)
            if schema is None:
                raise UnknownTagError(
                    f"{where}: {header.tag:#06x} v{header.version} is not an allowed message here"
                )
            return schema.decode_body(data, pos + HEADER_SIZE)

        return encode, decode


def _header_of(cls: type) -> Header:
    schema = schema_of(cls)
    return Header(schema.tag, schema.version)


def _read_header(data: bytes, pos: int, where: str) -> Header:
    if pos + HEADER_SIZE > len(data):
        raise TruncatedError(f"{where}: input ends inside a message header")
    tag, version = _HEADER.unpack_from(data, pos)
    return Header(tag, version)


def _strip_annotated(hint: Any) -> tuple[Any, list[Spec]]:
    if typing.get_origin(hint) is Annotated:
        specs = [m for m in hint.__metadata__ if isinstance(m, Spec)]
        return hint.__origin__, specs
    return hint, []


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def spec_for(hint: Any, where: str) -> Spec:
    """The field kind an annotation declares (see the package docstring for the rules)."""
    base, specs = _strip_annotated(hint)
    if len(specs) > 1:
        raise ValueError(f"{where}: more than one wire field kind in Annotated[...]")
    if specs:
        return _spec_from_annotated(base, specs[0], where)
    if base is bool:
        return Bool()
    if isinstance(base, type) and is_message(base):
        return Nested(base)
    if isinstance(base, type) and issubclass(base, enum.IntEnum):
        return EnumOf(base)
    if _is_union(base):
        args = typing.get_args(base)
        present = [a for a in args if a is not type(None)]
        if len(present) < len(args):
            inner_hint = present[0] if len(present) == 1 else typing.Union[tuple(present)]  # noqa: UP007
            return OptionalOf(spec_for(inner_hint, where))
        if all(isinstance(a, type) and is_message(a) for a in args):
            return OneOf(tuple(args))
    raise ValueError(
        f"{where}: {hint!r} has no wire encoding; use U8/U16/U32/U64, "
        "Annotated[bytes, Fixed(n) | Bytes(max_len=...)], Annotated[str, Text(max_len=...)], "
        "bool, an IntEnum, a message class, T | None, or Annotated[tuple[T, ...], ListOf(...)]"
    )


def _spec_from_annotated(base: Any, spec: Spec, where: str) -> Spec:
    if isinstance(spec, ListOf):
        if spec.element is not None:
            raise ValueError(f"{where}: give ListOf's element kind as tuple[T, ...], not element=")
        args = typing.get_args(base)
        if typing.get_origin(base) is not tuple or len(args) != 2 or args[1] is not Ellipsis:
            raise ValueError(f"{where}: ListOf needs the annotation tuple[T, ...], not {base!r}")
        element = spec_for(args[0], f"{where}[]")
        return dataclasses.replace(spec, element=element)
    expected = spec.python_type()
    if expected is None or base is not expected:
        raise ValueError(f"{where}: {type(spec).__name__} annotates {expected!r}, not {base!r}")
    return spec


def _resolve_hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls, include_extras=True)
    except NameError as exc:
        raise ValueError(
            f"{cls.__qualname__}: cannot resolve an annotation ({exc}); message classes and "
            "the limits they use must be defined at module level, before use"
        ) from None


def _compile_schema(cls: type, tag: int, version: int, max_size: int) -> MessageSchema:
    hints = _resolve_hints(cls)
    fields: list[tuple[str, Spec]] = []
    encoders: list[tuple[str, Encoder]] = []
    decoders: list[Decoder] = []
    biggest = smallest = HEADER_SIZE
    for field in dataclasses.fields(cls):
        where = f"{cls.__name__}.{field.name}"
        if not field.init:
            raise ValueError(f"{where}: every field of a wire message must be an init field")
        spec = spec_for(hints[field.name], where)
        encode_field, decode_field = spec.compile(where)
        fields.append((field.name, spec))
        encoders.append((field.name, encode_field))
        decoders.append(decode_field)
        biggest += spec.max_encoded_size()
        smallest += spec.min_encoded_size()
    if biggest > max_size:
        raise ValueError(
            f"{cls.__name__}: its fields can encode to {biggest} bytes, over max_size={max_size}; "
            "lower the field limits or declare a larger named max_size"
        )
    return MessageSchema(
        cls=cls,
        tag=tag,
        version=version,
        fields=tuple(fields),
        size_limit=biggest,
        min_size=smallest,
        header=_HEADER.pack(tag, version),
        encoders=tuple(encoders),
        decoders=tuple(decoders),
    )


@dataclass_transform(frozen_default=True, field_specifiers=(dataclasses.field,))
def message(
    *, tag: int, version: int, max_size: int = MAX_MESSAGE_SIZE
) -> Callable[[type[T]], type[T]]:
    """Declare a wire message: make ``cls`` a frozen dataclass and compile its codec.

    ``tag`` (u16, not 0) and ``version`` (u8) form the header and domain tag;
    the pair must be unique in the process (``ValueError`` otherwise).
    ``max_size`` is a ceiling on the encoded size: the declaration fails if the
    field limits allow more, so every encodable message is decodable.
    """
    if type(tag) is not int or not MIN_TAG <= tag <= MAX_TAG:
        raise ValueError(
            f"wire tag must be an int in [{MIN_TAG:#06x}, {MAX_TAG:#06x}], not {tag!r}"
        )
    if type(version) is not int or not 0 <= version <= MAX_VERSION:
        raise ValueError(f"wire version must be an int in [0, {MAX_VERSION}], not {version!r}")
    if type(max_size) is not int or not HEADER_SIZE <= max_size < 1 << 32:
        raise ValueError(f"max_size must be an int in [{HEADER_SIZE}, 2**32), not {max_size!r}")

    def declare(cls: type[T]) -> type[T]:
        if "__dataclass_fields__" in cls.__dict__:
            params = cls.__dict__["__dataclass_params__"]
            if not params.frozen:
                raise ValueError(f"{cls.__qualname__}: a wire message must be a frozen dataclass")
            data_cls = cls
        else:
            data_cls = dataclasses.dataclass(frozen=True)(cls)
        if _SCHEMA_ATTR in data_cls.__dict__:
            raise ValueError(f"{cls.__qualname__}: @message applied twice")
        schema = _compile_schema(data_cls, tag, version, max_size)
        _claim(Header(tag, version), data_cls)
        setattr(data_cls, _SCHEMA_ATTR, schema)
        return data_cls

    return declare


def describe(cls: type) -> str:
    """The layout of a message class in TLS presentation-language style, for docs.

    ``opaque<m..M>`` and ``utf8<m..M>`` count bytes, ``T<m..M items>`` counts
    elements; each prefix is as wide as its maximum needs (see the package docs).
    """
    schema = schema_of(cls)
    lines = [
        "struct {",
        f"    uint16 tag = 0x{schema.tag:04X};",
        f"    uint8 version = {schema.version};",
    ]
    lines += [f"    {spec.describe()} {name};" for name, spec in schema.fields]
    lines.append(f"}} {cls.__name__};  /* {schema.min_size}..{schema.size_limit} bytes */")
    return "\n".join(lines)


def _as_bytes(data: object) -> bytes:
    if type(data) is bytes:
        return data
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    raise TypeError(f"expected bytes, got {type(data).__name__}")


def encode(msg: object) -> bytes:
    """The canonical encoding of a declared message (header, then fields).

    Raises ``TypeError``/``ValueError`` (caller misuse) if a field does not fit
    its declaration: wrong type, out of range, over its limit.
    """
    schema = schema_of(type(msg))
    out = bytearray()
    schema.encode_body(msg, out)
    return bytes(out)


def peek_tag(data: Buffer) -> Header:
    """The (tag, version) header at the start of ``data``, without decoding the rest."""
    return _read_header(_as_bytes(data), 0, "message")


def _check_size(data: bytes, limit: int, name: str) -> None:
    if len(data) > limit:
        raise SizeLimitError(f"{name}: {len(data)} bytes over the limit of {limit}")


def _decode_with(schema: MessageSchema, data: bytes) -> Any:
    if len(data) < schema.min_size:
        raise TruncatedError(
            f"{schema.cls.__name__}: {len(data)} bytes, under the minimum of {schema.min_size}"
        )
    msg, pos = schema.decode_body(data, HEADER_SIZE)
    if pos != len(data):
        raise TrailingBytesError(f"{schema.cls.__name__}: {len(data) - pos} bytes after the end")
    return msg


def decode(cls: type[T], data: Buffer) -> T:
    """Decode exactly one ``cls`` message from ``data``, strictly.

    Raises only :class:`bkv.errors.CodecError` subclasses for bad bytes (and
    ``TypeError`` if ``cls`` is not a message class or ``data`` not bytes).
    """
    schema = schema_of(cls)
    raw = _as_bytes(data)
    _check_size(raw, schema.size_limit, cls.__name__)
    header = _read_header(raw, 0, cls.__name__)
    if header.tag != schema.tag:
        raise UnknownTagError(
            f"{cls.__name__}: tag is {header.tag:#06x}, expected {schema.tag:#06x}"
        )
    if header.version != schema.version:
        raise UnknownTagError(
            f"{cls.__name__}: version is {header.version}, expected {schema.version}"
        )
    result: T = _decode_with(schema, raw)
    return result


class Registry:
    """The set of messages one endpoint accepts, for :func:`decode_any`.

    Several versions of one tag may be registered; a (tag, version) pair only once.
    """

    def __init__(self, classes: Iterable[type] = ()) -> None:
        self._by_header: dict[Header, MessageSchema] = {}
        for cls in classes:
            self.register(cls)

    def register(self, cls: type) -> None:
        """Accept ``cls``; ``ValueError`` if its (tag, version) is already registered."""
        schema = schema_of(cls)
        header = Header(schema.tag, schema.version)
        if header in self._by_header:
            raise ValueError(
                f"registry already has tag {header.tag:#06x} version {header.version} "
                f"({self._by_header[header].cls.__name__})"
            )
        self._by_header[header] = schema

    def __contains__(self, cls: object) -> bool:
        return any(s.cls is cls for s in self._by_header.values())

    def __iter__(self) -> Iterator[type]:
        return iter([s.cls for s in self._by_header.values()])

    def __len__(self) -> int:
        return len(self._by_header)

    @property
    def size_limit(self) -> int:
        """The largest size limit of any registered message (checked before peeking)."""
        return max((s.size_limit for s in self._by_header.values()), default=HEADER_SIZE)

    def schema_for(self, header: Header) -> MessageSchema:
        """The registered schema for ``header``; ``UnknownTagError`` if there is none."""
        schema = self._by_header.get(header)
        if schema is not None:
            return schema
        if any(h.tag == header.tag for h in self._by_header):
            raise UnknownTagError(
                f"message tag {header.tag:#06x}: version {header.version} is not accepted"
            )
        raise UnknownTagError(f"message tag {header.tag:#06x} is not accepted here")


def decode_any(data: Buffer, registry: Registry) -> object:
    """Decode one message of any class in ``registry``, chosen by its header."""
    raw = _as_bytes(data)
    _check_size(raw, registry.size_limit, "message")
    schema = registry.schema_for(_read_header(raw, 0, "message"))
    _check_size(raw, schema.size_limit, schema.cls.__name__)
    return _decode_with(schema, raw)
