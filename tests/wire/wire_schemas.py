"""Message schemas shared by the wire tests (tags 0xFE00-0xFEFF are the wire tests' block)."""

from __future__ import annotations

import enum
from dataclasses import field
from typing import Annotated

from bkv.wire import U8, U16, U32, U64, Bytes, EnumOf, Fixed, ListOf, Text, message

MAX_BLOB = 300  # needs a 2-byte length prefix
MAX_NOTE = 40
MAX_ITEMS = 5
MAX_WIDE = 70_000  # needs a 4-byte length prefix
MAX_TAGS = 3


class Colour(enum.IntEnum):
    RED = 1
    GREEN = 2
    BLUE = 3


class Wide(enum.IntEnum):
    SMALL = 1
    LARGE = 0x1234


@message(tag=0xFE01, version=1)
class Ints:
    a: U8
    b: U16
    c: U32
    d: U64


@message(tag=0xFE02, version=1)
class Blobs:
    key: Annotated[bytes, Fixed(4)] = field(repr=False)
    small: Annotated[bytes, Bytes(max_len=10)]
    blob: Annotated[bytes, Bytes(max_len=MAX_BLOB, min_len=1)]
    wide: Annotated[bytes, Bytes(max_len=MAX_WIDE)]


@message(tag=0xFE03, version=1)
class Labels:
    note: Annotated[str, Text(max_len=MAX_NOTE)]
    name: Annotated[str, Text(max_len=8, min_len=1, nfc=True)]
    flag: bool
    colour: Colour
    wide: Annotated[Wide, EnumOf(Wide, width=2)]


@message(tag=0xFE04, version=1)
class Item:
    id: U16
    label: Annotated[str, Text(max_len=MAX_NOTE)]


@message(tag=0xFE04, version=2)
class ItemV2:
    id: U32
    label: Annotated[str, Text(max_len=MAX_NOTE)]
    extra: Annotated[bytes, Bytes(max_len=10)]


@message(tag=0xFE05, version=1)
class Outer:
    first: Item
    items: Annotated[tuple[Item, ...], ListOf(max_count=MAX_ITEMS)]
    numbers: Annotated[tuple[U16, ...], ListOf(max_count=MAX_ITEMS, min_count=1)]
    maybe: Item | None
    maybe_n: U32 | None
    either: Item | ItemV2
    tags: Annotated[tuple[Annotated[str, Text(max_len=4)] | None, ...], ListOf(max_count=MAX_TAGS)]


@message(tag=0xFE06, version=1)
class Envelope:
    """Two levels of nesting, a list of nested lists and an optional nested message."""

    seq: U64
    outers: Annotated[tuple[Outer, ...], ListOf(max_count=2)]
    inner: Outer | None
    trailer: Annotated[bytes, Fixed(2)]


@message(tag=0xFE07, version=1)
class Empty:
    """No fields: the header alone."""


@message(tag=0xFE08, version=1)
class Positive:
    """Checks an invariant in __post_init__ (ValueError on construction)."""

    n: U8

    def __post_init__(self) -> None:
        if self.n == 0:
            raise ValueError("n must be positive")


ALL_SCHEMAS: tuple[type, ...] = (
    Ints,
    Blobs,
    Labels,
    Item,
    ItemV2,
    Outer,
    Envelope,
    Empty,
    Positive,
)
