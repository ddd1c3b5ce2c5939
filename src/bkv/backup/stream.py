"""Streaming authenticated encryption of a backup (sans-IO: bytes in, bytes out).

The payload construction is age's (C2SP age.md, "Payload"), which is STREAM
from Hoang, Reyhanitabar, Rogaway and Vizár, "Online Authenticated-Encryption
and its Nonce-Reuse Misuse-Resistance" (CRYPTO 2015, ePrint 2015/189), with
ChaCha20-Poly1305 (RFC 8439) and HKDF-SHA-256 (RFC 5869). docs/backup.md has the
format byte by byte and why each attack fails; in short::

    header  = MAGIC || version (1) || chunk size (4, big endian) || salt (32)
              || HMAC-SHA-256(header key, everything before it) (32)
    payload = chunk 0 || chunk 1 || ... || final chunk
    chunk i = ChaCha20-Poly1305(payload key, nonce_i, plaintext_i), no associated data
    nonce_i = i as 11 bytes big endian || 0x01 for the final chunk, 0x00 for every other

    header key  = HKDF-SHA-256(ikm = backup key, salt = "",   info = HEADER_INFO)
    payload key = HKDF-SHA-256(ikm = backup key, salt = salt, info = PAYLOAD_INFO)

Every chunk but the final one holds exactly ``chunk size`` plaintext bytes; the
final chunk holds 1 to ``chunk size`` bytes, or 0 when the whole payload is
empty (age's rule, so each plaintext has one encryption per salt). A
:class:`Decryptor` releases a chunk's plaintext only once its tag verified
*and* it knows whether the chunk is the final one (the flag is in the nonce),
so it holds back at most one encrypted chunk: a stream cut at a chunk boundary,
chunks reordered or taken from another backup, bytes after the final chunk and
any flipped bit are all refused with a named :class:`bkv.errors.BackupError`.
A wrong key is refused at the header, before any plaintext.

Push pieces of about one chunk (``CHUNK_SIZE``) for throughput: a larger push
returns one joined object, and large fresh allocations cost page faults (see
``CHUNK_SIZE``; bench/backup.py measures both). Randomness (the salt) is
injected as ``rng``; nothing here does I/O.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from bkv.crypto.rng import Rng, default_rng, draw
from bkv.errors import (
    BackupFormatError,
    BackupKeyError,
    BackupTamperedError,
    BackupTrailingDataError,
    BackupTruncatedError,
)

MAGIC: Final = b"\x89BKV\r\n\x1a\n"
"""8 bytes: a non-ASCII first byte, CR LF, ^Z and LF, so that a text-mode transfer
(newline conversion) breaks the magic rather than the ciphertext (the PNG trick)."""
FORMAT_VERSION: Final = 1
KEY_SIZE: Final = 32
"""The backup key: 32 bytes."""
SALT_SIZE: Final = 32
"""The fresh random HKDF salt of each backup (its payload key's nonce)."""
MAC_SIZE: Final = 32
"""HMAC-SHA-256 over the header."""
TAG_SIZE: Final = 16
"""Poly1305 tag at the end of every chunk."""
CHUNK_SIZE_FIELD: Final = 4
HEADER_SIZE: Final = len(MAGIC) + 1 + CHUNK_SIZE_FIELD + SALT_SIZE + MAC_SIZE
"""77 bytes."""

CHUNK_SIZE: Final = 64 * 1024
"""Plaintext bytes per chunk written by default (age's size). Measured (bench/backup.py):
with chunks of 256 KiB or 1 MiB every AEAD output is a fresh allocation above glibc's
128 KiB mmap threshold, and page faults halve the throughput of the raw AEAD itself;
64 KiB chunks run at more than twice that, with the per-chunk Python work still small."""
MIN_CHUNK_SIZE: Final = 4 * 1024
MAX_CHUNK_SIZE: Final = 1024 * 1024
"""A header may name any power of two from MIN_CHUNK_SIZE to MAX_CHUNK_SIZE; a decryptor
holds at most one encrypted chunk plus the caller's current push."""
COUNTER_SIZE: Final = 11
MAX_CHUNKS: Final = 1 << (8 * COUNTER_SIZE)
"""The 11-byte counter's range: a stream may not have more chunks than this."""

HEADER_INFO: Final = b"bkv backup v1 header"
"""HKDF info of the header MAC key (no salt: one key per backup key)."""
PAYLOAD_INFO: Final = b"bkv backup v1 payload"
"""HKDF info of the payload key (salt: the header's salt)."""

_VERSION_BYTE: Final = FORMAT_VERSION.to_bytes(1, "big")
_NOT_FINAL: Final = b"\x00"
_FINAL: Final = b"\x01"
_MAC_OFFSET: Final = HEADER_SIZE - MAC_SIZE


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes):
        raise TypeError("the backup key must be bytes")
    if len(key) != KEY_SIZE:
        raise ValueError(f"the backup key must be {KEY_SIZE} bytes")


def _check_chunk_size(chunk_size: int) -> None:
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool):
        raise TypeError("chunk_size must be an int")
    if not _chunk_size_allowed(chunk_size):
        raise ValueError(
            f"chunk_size must be a power of two from {MIN_CHUNK_SIZE} to {MAX_CHUNK_SIZE}"
        )


def _chunk_size_allowed(chunk_size: int) -> bool:
    return MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE and chunk_size & (chunk_size - 1) == 0


def _hkdf(key: bytes, salt: bytes | None, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(key)


def _header_mac(key: bytes, body: bytes) -> bytes:
    return hmac.digest(_hkdf(key, None, HEADER_INFO), body, hashlib.sha256)


def _view(data: bytes | bytearray | memoryview) -> memoryview:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError("push takes bytes, bytearray or memoryview")
    view = memoryview(data)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


@dataclass(frozen=True)
class Header:
    """The decoded fields of a backup's header (all public)."""

    version: int
    chunk_size: int
    salt: bytes
    mac: bytes

    def body(self) -> bytes:
        """The bytes the MAC covers: everything before it."""
        return MAGIC + _VERSION_BYTE + self.chunk_size.to_bytes(4, "big") + self.salt

    def to_bytes(self) -> bytes:
        return self.body() + self.mac

    @classmethod
    def from_bytes(cls, data: bytes) -> Header:
        """Decode the first HEADER_SIZE bytes of ``data``; :func:`open_header` checks the MAC."""
        if data[: len(MAGIC)] != MAGIC[: len(data)]:
            raise BackupFormatError("not a bkv backup (wrong magic)")
        if len(data) < HEADER_SIZE:
            raise BackupTruncatedError(f"the backup ends inside its {HEADER_SIZE}-byte header")
        offset = len(MAGIC)
        version = data[offset]
        if version != FORMAT_VERSION:
            raise BackupFormatError(
                f"backup format version {version} is not supported (this bkv reads "
                f"{FORMAT_VERSION})"
            )
        offset += 1
        chunk_size = int.from_bytes(data[offset : offset + CHUNK_SIZE_FIELD], "big")
        if not _chunk_size_allowed(chunk_size):
            raise BackupFormatError(f"chunk size {chunk_size} is not allowed")
        offset += CHUNK_SIZE_FIELD
        salt = bytes(data[offset : offset + SALT_SIZE])
        mac = bytes(data[_MAC_OFFSET:HEADER_SIZE])
        return cls(version, chunk_size, salt, mac)


def open_header(key: bytes, data: bytes) -> Header:
    """Decode the header at the start of ``data`` and verify its MAC under ``key``.

    Raises :class:`BackupFormatError` (not a backup, unknown version or chunk size),
    :class:`BackupTruncatedError` (fewer than HEADER_SIZE bytes) or :class:`BackupKeyError`.
    """
    _check_key(key)
    header = Header.from_bytes(data)
    if not hmac.compare_digest(_header_mac(key, header.body()), header.mac):
        raise BackupKeyError(
            "the backup's header MAC does not verify: wrong key (or a modified header)"
        )
    return header


class _Holder:
    """One chunk's worth of bytes held back, without needless copies or allocations.

    Large short-lived allocations are what a streaming AEAD in Python pays for most
    (each fresh block above malloc's mmap threshold costs page faults), and copies
    come next. So the held bytes are either a view of the caller's immutable
    ``bytes`` (borrowed, when that object is small: at most ``2 * capacity``), or
    copied into one buffer allocated once.
    """

    __slots__ = ("borrowed", "buffer", "fill")

    def __init__(self, capacity: int) -> None:
        self.buffer = memoryview(bytearray(capacity))
        self.fill = 0
        self.borrowed: memoryview | None = None

    def size(self) -> int:
        return len(self.borrowed) if self.borrowed is not None else self.fill

    def held(self) -> memoryview:
        return self.borrowed if self.borrowed is not None else self.buffer[: self.fill]

    def take(self, data: memoryview) -> None:
        """Append ``data`` by copying (the held bytes and ``data`` must fit)."""
        if self.borrowed is not None:
            self.fill = len(self.borrowed)
            self.buffer[: self.fill] = self.borrowed
            self.borrowed = None
        end = self.fill + len(data)
        self.buffer[self.fill : end] = data
        self.fill = end

    def replace(self, data: memoryview, may_borrow: bool) -> None:
        """Hold exactly ``data``, borrowing it if allowed."""
        self.fill = 0
        self.borrowed = None
        if may_borrow:
            self.borrowed = data
        else:
            self.take(data)


def _chunks(
    holder: _Holder,
    data: bytes | bytearray | memoryview,
    size: int,
    handle: Callable[[memoryview], bytes],
) -> list[bytes]:
    """Hand every chunk of ``size`` bytes known not to be the last one to ``handle``.

    A full chunk is handled only once a byte after it has arrived (the final chunk may
    be full); what is left, 1 to ``size`` bytes, stays in ``holder``.
    """
    view = _view(data)
    length = len(view)
    # Only a small immutable object may be borrowed: a view keeps all of it alive.
    borrow = type(data) is bytes and length <= 2 * size
    held = holder.size()
    if held + length <= size:  # nothing after the held chunk yet
        if held == 0:
            holder.replace(view, borrow)
        else:
            holder.take(view)
        return []
    out = []
    start = 0
    if held:
        start = size - held
        if start:
            holder.take(view[:start])
        out.append(handle(holder.held()))
    while length - start > size:
        out.append(handle(view[start : start + size]))
        start += size
    holder.replace(view[start:], borrow)
    return out


def _joined(parts: list[bytes]) -> bytes:
    if not parts:
        return b""
    return parts[0] if len(parts) == 1 else b"".join(parts)


class Encryptor:
    """Encrypt one backup: ``push`` plaintext as it comes, then ``finish`` once.

    The first bytes returned (by ``push`` or ``finish``) start with the header.
    Holds at most one chunk of plaintext between calls. Holds key material: no
    repr beyond the class name.
    """

    __slots__ = ("_aead", "_chunk_size", "_counter", "_finished", "_header", "_holder")

    def __init__(self, key: bytes, *, rng: Rng = default_rng, chunk_size: int = CHUNK_SIZE) -> None:
        _check_key(key)
        _check_chunk_size(chunk_size)
        salt = draw(rng, SALT_SIZE)
        body = MAGIC + _VERSION_BYTE + chunk_size.to_bytes(CHUNK_SIZE_FIELD, "big") + salt
        self._header: bytes | None = body + _header_mac(key, body)
        self._aead = ChaCha20Poly1305(_hkdf(key, salt, PAYLOAD_INFO))
        self._chunk_size = chunk_size
        self._holder = _Holder(chunk_size)
        self._counter = 0
        self._finished = False

    def __repr__(self) -> str:
        return "Encryptor(...)"

    def _seal(self, plaintext: memoryview, flag: bytes) -> bytes:
        counter = self._counter
        if counter >= MAX_CHUNKS:
            raise ValueError("the stream has reached its maximum number of chunks")
        self._counter = counter + 1
        return self._aead.encrypt(counter.to_bytes(COUNTER_SIZE, "big") + flag, plaintext, None)

    def _seal_inner(self, plaintext: memoryview) -> bytes:
        return self._seal(plaintext, _NOT_FINAL)

    def push(self, data: bytes | bytearray | memoryview) -> bytes:
        """Take more plaintext; return the ciphertext that is ready (possibly empty)."""
        if self._finished:
            raise ValueError("push after finish")
        out = _chunks(self._holder, data, self._chunk_size, self._seal_inner)
        if self._header is not None:
            out.insert(0, self._header)
            self._header = None
        return _joined(out)

    def finish(self) -> bytes:
        """Seal the final chunk (empty only if the whole payload is); return the last bytes."""
        if self._finished:
            raise ValueError("finish called twice")
        self._finished = True
        last = self._seal(self._holder.held(), _FINAL)
        self._holder = _Holder(0)
        if self._header is not None:
            last = self._header + last
            self._header = None
        return last


class Decryptor:
    """Decrypt and authenticate one backup: ``push`` ciphertext as it comes, then ``finish``.

    ``push`` returns plaintext only for chunks that authenticated and are known not
    to be the final one; ``finish`` authenticates the final chunk and returns its
    plaintext, or raises if the stream ended anywhere else. After any error the
    decryptor is spent (further calls are ``ValueError``). Holds key material: no
    repr beyond the class name.
    """

    __slots__ = ("_aead", "_chunk_size", "_counter", "_holder", "_key", "_state", "header")

    def __init__(self, key: bytes) -> None:
        _check_key(key)
        self._key: bytes | None = key
        self._aead: ChaCha20Poly1305 | None = None
        self._holder = _Holder(HEADER_SIZE)  # the header, then one encrypted chunk
        self._chunk_size = 0  # encrypted chunk size, once the header is read
        self._counter = 0
        self._state = "header"  # header -> body -> finished | failed
        self.header: Header | None = None
        """The header, once it verified."""

    def __repr__(self) -> str:
        return "Decryptor(...)"

    def push(self, data: bytes | bytearray | memoryview) -> bytes:
        """Take more ciphertext; return the plaintext of the chunks that authenticated."""
        view = _view(data)
        if self._state not in ("header", "body"):
            raise ValueError(f"push on a {self._state} decryptor")
        try:
            if self._state == "header":
                view = self._read_header(view)
                if self._state == "header":
                    return b""
                data = view  # the rest of the push, as a view of the caller's object
            return _joined(_chunks(self._holder, data, self._chunk_size, self._open_inner))
        except BaseException:
            self._fail()
            raise

    def finish(self) -> bytes:
        """The plaintext of the final chunk; raise if the stream did not end right after it."""
        if self._state not in ("header", "body"):
            raise ValueError(f"finish on a {self._state} decryptor")
        try:
            return self._finish()
        except BaseException:
            self._fail()
            raise

    def _fail(self) -> None:
        self._state = "failed"
        self._key = self._aead = None
        self._holder = _Holder(0)

    def _read_header(self, view: memoryview) -> memoryview:
        holder = self._holder
        need = HEADER_SIZE - holder.fill
        holder.take(view[:need])
        held = holder.held()
        if held[: len(MAGIC)] != MAGIC[: holder.fill]:
            raise BackupFormatError("not a bkv backup (wrong magic)")
        if holder.fill < HEADER_SIZE:
            return view[:0]
        assert self._key is not None
        self.header = open_header(self._key, held.tobytes())
        self._aead = ChaCha20Poly1305(_hkdf(self._key, self.header.salt, PAYLOAD_INFO))
        self._key = None
        self._chunk_size = self.header.chunk_size + TAG_SIZE
        self._holder = _Holder(self._chunk_size)
        self._state = "body"
        return view[need:]

    def _open(self, chunk: memoryview, flag: bytes) -> bytes:
        assert self._aead is not None
        nonce = self._counter.to_bytes(COUNTER_SIZE, "big") + flag
        plaintext = self._aead.decrypt(nonce, chunk, None)  # raises InvalidTag
        self._counter += 1
        return plaintext

    def _open_inner(self, chunk: memoryview) -> bytes:
        """A full chunk followed by more bytes: it must be a non-final chunk."""
        if self._counter >= MAX_CHUNKS:
            raise BackupTamperedError("the backup has more chunks than its counter allows")
        try:
            return self._open(chunk, _NOT_FINAL)
        except InvalidTag:
            pass
        index = self._counter
        try:  # only to name the failure: a final chunk with bytes after it
            self._open(chunk, _FINAL)
        except InvalidTag:
            raise BackupTamperedError(
                f"chunk {index} does not authenticate: the backup was modified, reordered "
                "or spliced"
            ) from None
        raise BackupTrailingDataError(f"bytes follow the final chunk (chunk {index})")

    def _finish(self) -> bytes:
        held = self._holder.held()
        if self._state == "header":
            if not held:
                raise BackupTruncatedError("the backup is empty")
            raise BackupTruncatedError(f"the backup ends inside its {HEADER_SIZE}-byte header")
        index = self._counter
        if not held:
            raise BackupTruncatedError("the backup ends after its header: no chunk")
        if len(held) < TAG_SIZE:
            raise BackupTruncatedError(f"the backup ends inside chunk {index}")
        try:
            plaintext = self._open(held, _FINAL)
        except InvalidTag:
            pass
        else:
            if not plaintext and index > 0:
                raise BackupFormatError("an empty final chunk follows full chunks")
            self._state = "finished"
            self._aead = None
            self._holder = _Holder(0)
            return plaintext
        if len(held) == self._chunk_size:
            try:  # only to name the failure: a whole non-final chunk, then the end
                self._open(held, _NOT_FINAL)
            except InvalidTag:
                pass
            else:
                raise BackupTruncatedError(
                    f"the backup ends after chunk {index}, which is not its final chunk"
                )
        raise BackupTamperedError(
            f"the final chunk (chunk {index}) does not authenticate: the backup was "
            "modified or cut inside a chunk"
        )


def encrypt(
    key: bytes, plaintext: bytes, *, rng: Rng = default_rng, chunk_size: int = CHUNK_SIZE
) -> bytes:
    """The whole backup of ``plaintext`` at once (for small payloads and tests)."""
    encryptor = Encryptor(key, rng=rng, chunk_size=chunk_size)
    return encryptor.push(plaintext) + encryptor.finish()


def decrypt(key: bytes, backup: bytes) -> bytes:
    """The plaintext of a whole backup at once; raises a :class:`BackupError` on any failure."""
    decryptor = Decryptor(key)
    return decryptor.push(backup) + decryptor.finish()
