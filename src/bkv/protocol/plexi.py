"""Cloudflare Plexi ``SignatureMessage``: byte-exact protobuf codec, sign and verify.

This module is sans-IO: it imports no I/O module and takes the signer as an argument.

What Plexi signs (read from cloudflare/plexi at commit 0108f7d2,
``plexi_core/src/proto/specs/types.proto``)::

    syntax = "proto2";
    message Epoch { required uint64 inner = 1; }
    message SignatureMessage {
        required uint32 ciphersuite = 1;
        required string namespace   = 2;
        required uint64 timestamp   = 3;   // milliseconds since the Unix epoch
        required Epoch  epoch       = 4;
        required bytes  digest      = 5;
    }

``plexi_core/src/lib.rs`` (``SignatureMessage::to_vec_proto``) serializes that message
with prost's ``encode_to_vec``. prost writes the fields of a message in field-number
order, and for proto2 ``required`` scalars it writes every field, zero values included
(unlike proto3 implicit presence). Each field is ``tag = (field_number << 3) | wire_type``
as a varint (Protocol Buffers encoding guide, "Message Structure"), so the bytes are
always::

    08 <varint ciphersuite>                 field 1, wire type 0 (VARINT)
    12 <varint len> <namespace UTF-8>       field 2, wire type 2 (LEN)
    18 <varint timestamp>                   field 3, wire type 0
    22 <varint len> 08 <varint epoch>       field 4, wire type 2, nested Epoch field 1
    2a <varint len> <digest>                field 5, wire type 2

Varints are little-endian base-128 with the high bit as continuation, minimal length
(prost never pads). The signature is Ed25519 over exactly these bytes
(``SignatureResponse::verify`` uses ``verify_strict`` on ``message.to_vec()``); the
key id is the last byte of the Ed25519 public key (``plexi_core/src/crypto.rs``,
``ed25519_public_key_to_key_id``). The encoder reproduces Plexi's own test vector
(``plexi_core/tests/test-vectors.json``, ciphersuite 1) byte for byte; see
``tests/witness/test_plexi.py``.

The decoder accepts only that one canonical encoding: known fields, in order, each
exactly once, minimal varints, lengths that match, and named size limits. Re-encoding a
decoded message gives back the input bytes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bkv.errors import (
    CodecError,
    NonCanonicalError,
    SizeLimitError,
    TrailingBytesError,
    TruncatedError,
    UnknownKeyError,
    UnknownTagError,
    WitnessSignatureError,
)
from bkv.protocol.keycheck import check_ed25519_public_key

__all__ = [
    "CIPHERSUITE_PROTOBUF_ED25519",
    "ED25519_PUBLIC_KEY_SIZE",
    "ED25519_SIGNATURE_SIZE",
    "MAX_DIGEST_BYTES",
    "MAX_NAMESPACE_BYTES",
    "MAX_SIGNATURE_MESSAGE_BYTES",
    "Ed25519Signer",
    "SignatureMessage",
    "SignedStatement",
    "WitnessKey",
    "decode_signature_message",
    "encode_signature_message",
    "key_id_for",
    "sign_statement",
    "verify_message_signature",
    "verify_statement",
]

#: Plexi ``Ciphersuite::ProtobufEd25519`` (lib.rs). 0x0002 is bincode, which we never speak.
CIPHERSUITE_PROTOBUF_ED25519 = 0x0001

ED25519_PUBLIC_KEY_SIZE = 32
ED25519_SIGNATURE_SIZE = 64

#: Our limits (Plexi sets none): a namespace is a short name, a digest a hash output.
MAX_NAMESPACE_BYTES = 255
MAX_DIGEST_BYTES = 64
#: Largest well-formed message: five tags, two length bytes for the namespace, 255 bytes
#: of namespace, 5+10+10 varint bytes, 3 bytes of Epoch framing, 1+64 bytes of digest.
MAX_SIGNATURE_MESSAGE_BYTES = 400

_UINT32_MAX = (1 << 32) - 1
_UINT64_MAX = (1 << 64) - 1
_MAX_VARINT_BYTES = 10  # ceil(64 / 7)
_ONE_BYTE = tuple(bytes((value,)) for value in range(0x80))

# Tags: (field_number << 3) | wire_type. Wire types: 0 = VARINT, 2 = LEN.
_TAG_CIPHERSUITE = 0x08
_TAG_NAMESPACE = 0x12
_TAG_TIMESTAMP = 0x18
_TAG_EPOCH = 0x22
_TAG_DIGEST = 0x2A
_TAG_EPOCH_INNER = 0x08

_FIELD_ORDER = (_TAG_CIPHERSUITE, _TAG_NAMESPACE, _TAG_TIMESTAMP, _TAG_EPOCH, _TAG_DIGEST)
_FIELD_NAMES = {
    _TAG_CIPHERSUITE: "ciphersuite",
    _TAG_NAMESPACE: "namespace",
    _TAG_TIMESTAMP: "timestamp",
    _TAG_EPOCH: "epoch",
    _TAG_DIGEST: "digest",
}


# --- varints ------------------------------------------------------------------


def _encode_varint(value: int) -> bytes:
    if 0 <= value < 0x80:
        return _ONE_BYTE[value]  # tags, lengths and small values: the common case
    if value < 0 or value > _UINT64_MAX:
        raise ValueError("varint out of uint64 range")
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _decode_varint(data: bytes, offset: int, field: str) -> tuple[int, int]:
    """Return (value, new offset); reject truncation, overlong and >64-bit encodings."""
    if offset < len(data) and data[offset] < 0x80:
        return data[offset], offset + 1  # one byte: minimal by construction
    value = 0
    for index in range(_MAX_VARINT_BYTES):
        position = offset + index
        if position >= len(data):
            raise TruncatedError(f"plexi: varint of {field} is truncated")
        byte = data[position]
        value |= (byte & 0x7F) << (7 * index)
        if not byte & 0x80:
            # A final 0x00 after at least one byte means the encoding is padded.
            if byte == 0 and index > 0:
                raise NonCanonicalError(f"plexi: varint of {field} is not minimal")
            if value > _UINT64_MAX:
                raise NonCanonicalError(f"plexi: varint of {field} exceeds 64 bits")
            return value, position + 1
    raise NonCanonicalError(f"plexi: varint of {field} is longer than 10 bytes")


# --- the message --------------------------------------------------------------


@dataclass(frozen=True)
class SignatureMessage:
    """Plexi's ``SignatureMessage`` with the values checked at construction."""

    namespace: str
    timestamp_ms: int
    epoch: int
    digest: bytes
    ciphersuite: int = CIPHERSUITE_PROTOBUF_ED25519

    #: The encoding, computed once (decoding, verifying and comparing each need it).
    _encoded: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_fields(self.ciphersuite, self.namespace, self.timestamp_ms, self.epoch, self.digest)

    def to_bytes(self) -> bytes:
        """The exact protobuf bytes Plexi signs."""
        if self._encoded is None:
            encoded = _encode(
                self.ciphersuite, self.namespace, self.timestamp_ms, self.epoch, self.digest
            )
            object.__setattr__(self, "_encoded", encoded)
            return encoded
        return self._encoded

    @classmethod
    def from_bytes(cls, data: bytes) -> SignatureMessage:
        """Strictly decode; raises a :class:`bkv.errors.CodecError` subclass."""
        return decode_signature_message(data)


def _check_fields(
    ciphersuite: int, namespace: str, timestamp_ms: int, epoch: int, digest: bytes
) -> None:
    """Caller misuse is ValueError/TypeError (errors.py rules)."""
    if not isinstance(namespace, str) or not isinstance(digest, bytes):
        raise TypeError("namespace must be str and digest bytes")
    for name, value in (
        ("ciphersuite", ciphersuite),
        ("timestamp_ms", timestamp_ms),
        ("epoch", epoch),
    ):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be int")
    if ciphersuite != CIPHERSUITE_PROTOBUF_ED25519:
        raise ValueError("only ciphersuite 0x0001 (protobuf, Ed25519) is supported")
    encoded = namespace.encode("utf-8")
    if not 0 < len(encoded) <= MAX_NAMESPACE_BYTES:
        raise ValueError(f"namespace must be 1..{MAX_NAMESPACE_BYTES} UTF-8 bytes")
    if not 0 <= timestamp_ms <= _UINT64_MAX:
        raise ValueError("timestamp_ms out of uint64 range")
    # Plexi's FIRST_EPOCH is 1 (lib.rs); epoch 0 is never signed.
    if not 1 <= epoch <= _UINT64_MAX:
        raise ValueError("epoch must be in 1..2**64-1")
    if not 0 < len(digest) <= MAX_DIGEST_BYTES:
        raise ValueError(f"digest must be 1..{MAX_DIGEST_BYTES} bytes")


def encode_signature_message(namespace: str, timestamp_ms: int, epoch: int, digest: bytes) -> bytes:
    """Encode a ciphersuite-0x0001 ``SignatureMessage`` exactly as Plexi does."""
    ciphersuite = CIPHERSUITE_PROTOBUF_ED25519
    _check_fields(ciphersuite, namespace, timestamp_ms, epoch, digest)
    return _encode(ciphersuite, namespace, timestamp_ms, epoch, digest)


def _encode(
    ciphersuite: int, namespace: str, timestamp_ms: int, epoch: int, digest: bytes
) -> bytes:
    """The field layout of the module docstring, for values :func:`_check_fields` accepted."""
    namespace_bytes = namespace.encode("utf-8")
    epoch_body = _ONE_BYTE[_TAG_EPOCH_INNER] + _encode_varint(epoch)
    return b"".join(
        (
            _ONE_BYTE[_TAG_CIPHERSUITE],
            _encode_varint(ciphersuite),
            _ONE_BYTE[_TAG_NAMESPACE],
            _encode_varint(len(namespace_bytes)),
            namespace_bytes,
            _ONE_BYTE[_TAG_TIMESTAMP],
            _encode_varint(timestamp_ms),
            _ONE_BYTE[_TAG_EPOCH],
            _encode_varint(len(epoch_body)),
            epoch_body,
            _ONE_BYTE[_TAG_DIGEST],
            _encode_varint(len(digest)),
            digest,
        )
    )


class _Reader:
    """Cursor over the message bytes that enforces tag order and lengths."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0
        self.expected = 0  # index into _FIELD_ORDER

    def tag(self) -> int:
        if self.offset >= len(self.data):
            name = _FIELD_NAMES[_FIELD_ORDER[self.expected]]
            raise TruncatedError(f"plexi: required field {name} is missing")
        # Every known tag is a one-byte varint; a multi-byte tag is either an unknown
        # field (>= 16) or a non-minimal encoding of a known one.
        tag, self.offset = _decode_varint(self.data, self.offset, "tag")
        want = _FIELD_ORDER[self.expected]
        if tag == want:
            self.expected += 1
            return tag
        if tag in _FIELD_ORDER:
            raise NonCanonicalError(
                f"plexi: field {_FIELD_NAMES[tag]} is repeated, out of order, "
                "or a required field before it is missing"
            )
        raise UnknownTagError(f"plexi: unknown field tag 0x{tag:x}")

    def varint(self, field: str) -> int:
        value, self.offset = _decode_varint(self.data, self.offset, field)
        return value

    def length_delimited(self, field: str, max_len: int) -> bytes:
        length = self.varint(field + " length")
        if length == 0 or length > max_len:
            raise SizeLimitError(f"plexi: {field} must be 1..{max_len} bytes, got {length}")
        end = self.offset + length
        if end > len(self.data):
            raise TruncatedError(f"plexi: {field} is truncated")
        value = self.data[self.offset : end]
        self.offset = end
        return value


def _decode_epoch(body: bytes) -> int:
    # Epoch { required uint64 inner = 1; } -- exactly one field, tag 0x08.
    if not body or body[0] != _TAG_EPOCH_INNER:
        raise UnknownTagError("plexi: Epoch must hold exactly field 1 (inner)")
    value, end = _decode_varint(body, 1, "epoch")
    if end != len(body):
        raise TrailingBytesError("plexi: bytes after Epoch.inner")
    return value


def decode_signature_message(data: bytes) -> SignatureMessage:
    """Decode the one canonical encoding of a ciphersuite-0x0001 ``SignatureMessage``."""
    if not isinstance(data, bytes):
        raise TypeError("data must be bytes")
    if not data:
        raise SizeLimitError("plexi: empty SignatureMessage")
    if len(data) > MAX_SIGNATURE_MESSAGE_BYTES:
        raise SizeLimitError(
            f"plexi: SignatureMessage is {len(data)} bytes, limit {MAX_SIGNATURE_MESSAGE_BYTES}"
        )
    message = _decode_common_layout(data)
    if message is not None:
        return message
    # Anything else is read field by field, so that the error names what is wrong.
    return _decode_field_by_field(data)


def _decode_common_layout(data: bytes) -> SignatureMessage | None:
    """The message if it is in the layout every honest signer writes, else None.

    Every client decodes statements, so the usual shape (ciphersuite 1, one-byte
    namespace, Epoch and digest lengths) is read directly at fixed offsets, each
    length checked against the bytes it covers and each varint minimal: what this
    returns encodes to exactly ``data``, and :func:`_decode_field_by_field` returns
    the same for it (a test compares the two on every edit of valid messages).
    """
    try:
        if data[:3] != b"\x08\x01\x12" or data[3] >= 0x80:
            return None
        end = 4 + data[3]
        namespace = data[4:end].decode("utf-8")
        if data[end] != _TAG_TIMESTAMP:
            return None
        timestamp_ms, offset = _decode_varint(data, end + 1, "timestamp")
        if data[offset] != _TAG_EPOCH or data[offset + 2] != _TAG_EPOCH_INNER:
            return None
        epoch_length = data[offset + 1]
        epoch, digest_tag = _decode_varint(data, offset + 3, "epoch")
        digest_length = data[digest_tag + 1]
        # Each length is read as one byte, so each must be a one-byte varint (< 0x80): a
        # larger byte starts a longer varint, which the field reader (and prost) reads as
        # another length. Not left to the size limits to refuse.
        if (
            epoch_length >= 0x80
            or digest_length >= 0x80
            or digest_tag != offset + 2 + epoch_length
            or data[digest_tag] != _TAG_DIGEST
            or digest_length != len(data) - digest_tag - 2
        ):
            return None
        message = SignatureMessage(namespace, timestamp_ms, epoch, data[digest_tag + 2 :])
    except (IndexError, UnicodeDecodeError, ValueError, CodecError):
        return None
    object.__setattr__(message, "_encoded", data)
    return message


def _decode_field_by_field(data: bytes) -> SignatureMessage:
    reader = _Reader(data)
    reader.tag()
    ciphersuite = reader.varint("ciphersuite")
    if ciphersuite > _UINT32_MAX:
        raise NonCanonicalError("plexi: ciphersuite exceeds uint32")
    if ciphersuite != CIPHERSUITE_PROTOBUF_ED25519:
        raise UnknownTagError(f"plexi: unsupported ciphersuite 0x{ciphersuite:04x}")
    reader.tag()
    namespace_bytes = reader.length_delimited("namespace", MAX_NAMESPACE_BYTES)
    try:
        namespace = namespace_bytes.decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        raise CodecError("plexi: namespace is not valid UTF-8") from None
    reader.tag()
    timestamp_ms = reader.varint("timestamp")
    reader.tag()
    # The Epoch body is a tag plus a varint: 2..11 bytes.
    epoch = _decode_epoch(reader.length_delimited("epoch", 1 + _MAX_VARINT_BYTES))
    if epoch == 0:
        raise CodecError("plexi: epoch 0 is not a valid epoch (the first is 1)")
    reader.tag()
    digest = reader.length_delimited("digest", MAX_DIGEST_BYTES)
    if reader.offset != len(data):
        raise TrailingBytesError("plexi: bytes after the digest field")
    message = SignatureMessage(namespace, timestamp_ms, epoch, digest)
    # Defence in depth: the one canonical encoding must give back the input.
    if message.to_bytes() != data:
        raise NonCanonicalError("plexi: SignatureMessage does not re-encode to its input")
    return message


# --- keys, signing, verifying ---------------------------------------------------


class Ed25519Signer(Protocol):
    """What we need of a signer; ``bkv.keystore.Signer`` (software or PKCS#11) fits."""

    def public_key(self) -> bytes:
        """The 32-byte Ed25519 public key."""
        ...

    def sign(self, message: bytes) -> bytes:
        """An Ed25519 signature (64 bytes) over ``message``."""
        ...


def key_id_for(public_key: bytes) -> int:
    """Plexi key id: the last byte of the Ed25519 public key (crypto.rs)."""
    if not isinstance(public_key, bytes) or len(public_key) != ED25519_PUBLIC_KEY_SIZE:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return public_key[-1]


@dataclass(frozen=True)
class WitnessKey:
    """A pinned witness public key, as Plexi's ``/info`` lists it (``KeyInfo``).

    ``not_before_ms``: statements whose timestamp is earlier than this were not made
    with this key (key rotation); they are refused with :class:`UnknownKeyError`.
    """

    public_key: bytes
    not_before_ms: int = 0
    #: The key loaded once for verification (pinned keys verify every statement).
    loaded: Ed25519PublicKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        key_id_for(self.public_key)
        # A small-order key makes one signature valid for every message (keycheck).
        check_ed25519_public_key(self.public_key, "witness key")
        if not 0 <= self.not_before_ms <= _UINT64_MAX:
            raise ValueError("not_before_ms out of uint64 range")
        object.__setattr__(self, "loaded", Ed25519PublicKey.from_public_bytes(self.public_key))

    @property
    def key_id(self) -> int:
        return self.public_key[-1]


@dataclass(frozen=True)
class SignedStatement:
    """A witness signature together with the exact bytes it covers (ship the bytes)."""

    message_bytes: bytes
    signature: bytes
    key_id: int

    @property
    def message(self) -> SignatureMessage:
        return decode_signature_message(self.message_bytes)


def _ed25519_verify(public_key: bytes | Ed25519PublicKey, signature: bytes, message: bytes) -> None:
    """Raise :class:`WitnessSignatureError` unless ``signature`` verifies (never a bool)."""
    if len(signature) != ED25519_SIGNATURE_SIZE:
        raise WitnessSignatureError("witness signature is not 64 bytes")
    if isinstance(public_key, bytes):
        public_key = Ed25519PublicKey.from_public_bytes(public_key)
    try:
        public_key.verify(signature, message)
    except InvalidSignature:
        raise WitnessSignatureError("witness signature does not verify") from None


def sign_statement(
    signer: Ed25519Signer, namespace: str, timestamp_ms: int, epoch: int, digest: bytes
) -> SignedStatement:
    """Sign the Plexi ``SignatureMessage`` for (namespace, timestamp, epoch, digest).

    The signature is checked before it is returned, so a faulty signer (or a PKCS#11
    token holding another key than it reports) never produces a statement we publish.
    """
    message_bytes = encode_signature_message(namespace, timestamp_ms, epoch, digest)
    public_key = signer.public_key()
    key_id = key_id_for(public_key)
    signature = signer.sign(message_bytes)
    try:
        _ed25519_verify(public_key, signature, message_bytes)
    except WitnessSignatureError:
        raise WitnessSignatureError(
            "witness signer produced a signature that does not verify"
        ) from None
    return SignedStatement(message_bytes=message_bytes, signature=signature, key_id=key_id)


def verify_statement(
    message_bytes: bytes,
    signature: bytes,
    key_id: int,
    keys: Iterable[WitnessKey],
) -> SignatureMessage:
    """Verify a witness signature over exact ``SignatureMessage`` bytes; return the message.

    Raises :class:`CodecError` subclasses for malformed bytes, :class:`UnknownKeyError`
    when no pinned key has ``key_id`` (or none is valid at the statement's timestamp),
    and :class:`WitnessSignatureError` when the signature does not verify. Namespace,
    epoch and digest policy are the caller's to check on the returned message.
    """
    message = decode_signature_message(message_bytes)
    verify_message_signature(message, signature, key_id, keys)
    return message


def verify_message_signature(
    message: SignatureMessage, signature: bytes, key_id: int, keys: Iterable[WitnessKey]
) -> None:
    """:func:`verify_statement` for a message already decoded (errors as there).

    The signature is checked over ``message.to_bytes()``, the one encoding of the
    message: for a decoded message these are exactly the bytes it was decoded from.
    """
    if not isinstance(signature, bytes) or len(signature) != ED25519_SIGNATURE_SIZE:
        raise WitnessSignatureError("witness signature is not 64 bytes")
    if isinstance(key_id, bool) or not isinstance(key_id, int) or not 0 <= key_id <= 0xFF:
        raise UnknownKeyError("witness key id is not a byte")
    candidates = [key for key in keys if key.key_id == key_id]
    if not candidates:
        raise UnknownKeyError(f"no pinned witness key has key id {key_id}")
    valid = [key for key in candidates if key.not_before_ms <= message.timestamp_ms]
    if not valid:
        raise UnknownKeyError(
            f"witness key {key_id} is not valid before its not_before (statement too early)"
        )
    # Key ids are one byte, so two pinned keys may share one: try each that matches.
    message_bytes = message.to_bytes()
    for key in valid:
        try:
            _ed25519_verify(key.loaded, signature, message_bytes)
        except WitnessSignatureError:
            continue
        return
    raise WitnessSignatureError(
        f"witness signature over the SignatureMessage does not verify under key id {key_id}"
    )
