"""bkv.wire — the one canonical binary codec of every bkv protocol message.

Every HSM request and response, vault message, validation-bundle part and
replication message is a *wire message*: a frozen dataclass declared with
:func:`message`. Its encoding (TLS presentation language style, RFC 8446
section 3; full spec in docs/protocol.md, "Wire codec") is::

    tag (u16, big-endian) || version (u8) || each field, in declaration order

The (tag, version) header is the domain tag of anything signed or hashed: you
cannot declare a message without one, and two classes can never share one
(``ValueError`` at import time). Decoding is strict: exactly one encoding is
accepted for every value, so ``encode(decode(cls, b)) == b`` for every ``b``
that decodes. Sign and verify the exact bytes; ship the bytes.

Declaring a message
-------------------
::

    from __future__ import annotations

    from typing import Annotated

    from bkv.wire import (
        U8, U32, Bytes, Fixed, ListOf, Registry, Text,
        decode, decode_any, describe, encode, message, peek_tag,
    )

    MAX_CONTEXT = 1024      # every variable field has a named limit
    MAX_LABEL = 64
    MAX_SHARES = 16

    @message(tag=0x01F0, version=1)
    class Share:
        index: U8
        value: Annotated[bytes, Fixed(32)]

    @message(tag=0x01F1, version=1)
    class StoreRequest:
        record_id: Annotated[bytes, Fixed(32)]           # exactly 32 bytes
        attempts: U32                                    # u32, range-checked
        context: Annotated[bytes, Bytes(max_len=MAX_CONTEXT)]          # u16 length + bytes
        label: Annotated[str, Text(max_len=MAX_LABEL, min_len=1)]     # u8 length + UTF-8
        shares: Annotated[tuple[Share, ...], ListOf(max_count=MAX_SHARES, min_count=1)]
        hint: Share | None = None                        # presence byte 0/1, then Share
        destroy: bool = False                            # one byte 0/1

    data = encode(StoreRequest(b"\\x01" * 32, 10, b"", "me", (Share(1, bytes(32)),)))
    request = decode(StoreRequest, data)                 # strict; CodecError subclasses

    registry = Registry([StoreRequest, Share])           # what one endpoint accepts
    any_msg = decode_any(data, registry)                 # dispatch on the header
    header = peek_tag(data)                              # Header(tag=0x01F1, version=1)
    print(describe(StoreRequest))                        # the layout, TLS-style, for docs

``@message`` makes the class a frozen dataclass (do not add ``@dataclass``
yourself; if you do, it must be ``frozen=True``). Use ``dataclasses.field(repr=False)``
for anything secret. A ``__post_init__`` may check invariants by raising
``ValueError``; decoding reports that as ``InvalidValueError``.

Field kinds (annotation -> encoding)
------------------------------------
- ``U8``, ``U16``, ``U32``, ``U64``: unsigned big-endian integer (``UInt(width)``).
- ``Annotated[bytes, Fixed(n)]``: exactly n bytes (n >= 1), no prefix.
- ``Annotated[bytes, Bytes(max_len=M, min_len=0)]``: length prefix, then bytes.
- ``Annotated[str, Text(max_len=M, min_len=0, nfc=False)]``: length prefix, then
  UTF-8 (limits in bytes). Invalid UTF-8 is rejected; text is never normalized,
  ``nfc=True`` rejects non-NFC text.
- ``bool``: one byte, 0x00 or 0x01.
- an ``enum.IntEnum`` subclass: its value as u8 (``Annotated[E, EnumOf(E, width=2)]`` for
  wider); non-members are rejected.
- ``Annotated[tuple[T, ...], ListOf(max_count=M, min_count=0)]``: count prefix, then
  the elements, each encoded as T. Values must be tuples.
- ``T | None``: presence byte 0x00 (absent) or 0x01 (present), then T.
- a message class ``M``: ``encode(m)`` embedded as is, header included, no length prefix.
- ``A | B`` (message classes): one of them, told apart by the embedded header.

A length or count prefix is the smallest of u8/u16/u32 that holds the declared
maximum (RFC 8446 section 3.4), so the limit is part of the format: changing
it across 255 or 65535 needs a new version.

Size limits
-----------
Each message's largest possible encoding is computed at declaration; it must
not exceed ``max_size`` (default :data:`MAX_MESSAGE_SIZE`, 1 MiB), so raise the
ceiling explicitly with a named constant for big messages. Decoding checks the
input length against that limit before reading anything.

Errors
------
Encoding a value that does not fit its declaration is caller misuse:
``TypeError`` / ``ValueError``. Decoding bad bytes raises only subclasses of
:class:`bkv.errors.CodecError`: ``TruncatedError``, ``TrailingBytesError``,
``SizeLimitError`` (over a max or under a min, and over the message limit),
``UnknownTagError`` (tag or version not expected), ``NonCanonicalError``
(bool/presence byte not 0/1, invalid UTF-8, non-NFC text where NFC is
required) and ``InvalidValueError`` (not an enum member, or rejected by the
class's ``__post_init__``).

Tag allocation (u16; see docs/protocol.md)
------------------------------------------
``0x0000`` reserved; ``0x01xx`` HSM application requests/responses;
``0x02xx`` client <-> vault; ``0x03xx`` fleet keys, validation bundles,
deployment evidence; ``0x04xx`` HSM replication/consensus; ``0x05xx`` witness;
``0x06xx`` log and audit; ``0x07xx`` sealed/persisted state; ``0xF000``-``0xFFFF``
tests only. Bump ``version`` (keeping the tag) when a message's layout changes.

Artifacts that people and other tools read are canonical JSON instead:
:mod:`bkv.wire.canonical_json`.
"""

from __future__ import annotations

from bkv.wire._fields import (
    U8,
    U16,
    U32,
    U64,
    Bool,
    Bytes,
    EnumOf,
    Fixed,
    ListOf,
    OptionalOf,
    Spec,
    Text,
    UInt,
)
from bkv.wire._message import (
    HEADER_SIZE,
    MAX_MESSAGE_SIZE,
    Header,
    MessageSchema,
    Nested,
    OneOf,
    Registry,
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

__all__ = [
    "HEADER_SIZE",
    "MAX_MESSAGE_SIZE",
    "U8",
    "U16",
    "U32",
    "U64",
    "Bool",
    "Bytes",
    "EnumOf",
    "Fixed",
    "Header",
    "ListOf",
    "MessageSchema",
    "Nested",
    "OneOf",
    "OptionalOf",
    "Registry",
    "Spec",
    "Text",
    "UInt",
    "declared_messages",
    "decode",
    "decode_any",
    "describe",
    "encode",
    "is_message",
    "message",
    "peek_tag",
    "schema_of",
]
