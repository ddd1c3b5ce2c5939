"""bkv.backup.stream: the streaming AEAD of backups (docs/backup.md, "Format").

Round trips over every size class and push split, the format checked byte by
byte against an independent computation, and one negative test per attack:
each is a named error, and no plaintext of an unauthenticated chunk is released.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import random

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given
from hypothesis import strategies as st

from bkv.backup.stream import (
    CHUNK_SIZE,
    HEADER_INFO,
    HEADER_SIZE,
    MAGIC,
    MAX_CHUNK_SIZE,
    MIN_CHUNK_SIZE,
    PAYLOAD_INFO,
    SALT_SIZE,
    TAG_SIZE,
    Decryptor,
    Encryptor,
    Header,
    decrypt,
    encrypt,
    open_header,
)
from bkv.errors import (
    BackupError,
    BackupFormatError,
    BackupKeyError,
    BackupTamperedError,
    BackupTrailingDataError,
    BackupTruncatedError,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
CS = MIN_CHUNK_SIZE  # small chunks: many of them in little data
ENC = CS + TAG_SIZE


def _rng(seed: int) -> object:
    generator = random.Random(seed)
    return generator.randbytes


def _data(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def _backup(size: int, *, key: bytes = KEY, seed: int = 0) -> tuple[bytes, bytes]:
    data = _data(size, seed)
    return data, encrypt(key, data, rng=_rng(seed), chunk_size=CS)  # type: ignore[arg-type]


def _chunks(backup: bytes) -> list[bytes]:
    body = backup[HEADER_SIZE:]
    return [body[i : i + ENC] for i in range(0, len(body), ENC)]


def _expected_chunks(size: int) -> int:
    return max(1, -(-size // CS))


# --- round trips ---------------------------------------------------------------


@pytest.mark.parametrize(
    "size",
    [0, 1, CS - 1, CS, CS + 1, 2 * CS - 1, 2 * CS, 2 * CS + 1, 7 * CS + 123, 100 * CS],
)
def test_round_trip_at_and_around_chunk_boundaries(size: int) -> None:
    data, backup = _backup(size)
    assert len(backup) == HEADER_SIZE + size + TAG_SIZE * _expected_chunks(size)
    assert decrypt(KEY, backup) == data


def test_round_trip_with_the_default_chunk_size() -> None:
    data = _data(3 * CHUNK_SIZE + 5)
    backup = encrypt(KEY, data)
    assert int.from_bytes(backup[9:13], "big") == CHUNK_SIZE
    assert decrypt(KEY, backup) == data


def test_the_final_chunk_is_full_when_the_payload_fills_its_chunks() -> None:
    # age's rule (C2SP age.md, "Payload"): the final chunk is empty only for an empty payload.
    _, backup = _backup(2 * CS)
    assert [len(chunk) for chunk in _chunks(backup)] == [ENC, ENC]
    _, empty = _backup(0)
    assert [len(chunk) for chunk in _chunks(empty)] == [TAG_SIZE]


def test_each_backup_has_a_fresh_salt() -> None:
    data = _data(100)
    first, second = encrypt(KEY, data), encrypt(KEY, data)
    assert first[13:45] != second[13:45]
    assert first[HEADER_SIZE:] != second[HEADER_SIZE:]


def _splits(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(cut, len(data)) for cut in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


@given(
    size=st.integers(0, 5 * CS + 40),
    cuts=st.lists(st.integers(0, 5 * CS + 200), max_size=8),
    decrypt_cuts=st.lists(st.integers(0, 5 * CS + 200), max_size=8),
    kind=st.sampled_from(["bytes", "bytearray", "memoryview"]),
)
def test_round_trip_with_any_push_split(
    size: int, cuts: list[int], decrypt_cuts: list[int], kind: str
) -> None:
    data = _data(size, seed=size)
    convert = {"bytes": bytes, "bytearray": bytearray, "memoryview": memoryview}[kind]
    encryptor = Encryptor(KEY, chunk_size=CS)
    backup = b"".join(encryptor.push(convert(piece)) for piece in _splits(data, cuts))
    backup += encryptor.finish()
    assert len(backup) == HEADER_SIZE + size + TAG_SIZE * _expected_chunks(size)

    decryptor = Decryptor(KEY)
    released = b""
    for piece in _splits(backup, decrypt_cuts):
        released += decryptor.push(convert(piece))
        assert decryptor._holder.size() <= ENC  # bounded: at most one chunk held back
        assert data.startswith(released)
    assert released + decryptor.finish() == data


def test_plaintext_is_released_only_for_authenticated_chunks_known_not_final() -> None:
    data, backup = _backup(3 * CS)
    decryptor = Decryptor(KEY)
    assert decryptor.push(backup[:HEADER_SIZE]) == b""
    chunks = _chunks(backup)
    # A whole chunk is held back until a byte after it shows it is not the final one.
    assert decryptor.push(chunks[0]) == b""
    assert decryptor.push(chunks[1][:1]) == data[:CS]
    assert decryptor.push(chunks[1][1:]) == b""
    assert decryptor.push(chunks[2]) == data[CS : 2 * CS]
    assert decryptor.finish() == data[2 * CS :]


def test_held_bytes_survive_the_caller_reusing_a_mutable_buffer() -> None:
    # Immutable bytes may be held by reference; a bytearray or memoryview is copied.
    data = _data(3 * CS + 7)
    buffer = bytearray(CS // 2)
    encryptor = Encryptor(KEY, chunk_size=CS)
    backup = b""
    for start in range(0, len(data), len(buffer)):
        piece = data[start : start + len(buffer)]
        buffer[: len(piece)] = piece
        backup += encryptor.push(memoryview(buffer)[: len(piece)])
        buffer[:] = bytes(len(buffer))  # the caller reuses its buffer
    backup += encryptor.finish()
    decryptor = Decryptor(KEY)
    released = b""
    scratch = bytearray(ENC // 3)
    for start in range(0, len(backup), len(scratch)):
        piece = backup[start : start + len(scratch)]
        scratch[: len(piece)] = piece
        released += decryptor.push(scratch[: len(piece)])
        scratch[:] = bytes(len(scratch))
    assert released + decryptor.finish() == data


# --- the format, computed independently (docs/backup.md) -------------------------


def _hkdf(key: bytes, salt: bytes | None, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(key)


def test_header_and_chunks_byte_by_byte() -> None:
    salt = bytes(range(100, 100 + SALT_SIZE))
    data = _data(CS + 10)
    backup = encrypt(KEY, data, rng=lambda n: salt[:n], chunk_size=CS)

    assert HEADER_SIZE == 77
    assert backup[:8] == MAGIC == b"\x89BKV\r\n\x1a\n"
    assert backup[8] == 1
    assert backup[9:13] == CS.to_bytes(4, "big")
    assert backup[13:45] == salt
    header_key = _hkdf(KEY, None, HEADER_INFO)
    assert backup[45:77] == hmac.digest(header_key, backup[:45], hashlib.sha256)

    aead = ChaCha20Poly1305(_hkdf(KEY, salt, PAYLOAD_INFO))
    first, last = backup[77 : 77 + ENC], backup[77 + ENC :]
    assert aead.decrypt(bytes(11) + b"\x00", first, None) == data[:CS]
    assert aead.decrypt((1).to_bytes(11, "big") + b"\x01", last, None) == data[CS:]

    header = open_header(KEY, backup)
    assert header == Header(1, CS, salt, backup[45:77])
    assert header.to_bytes() == backup[:HEADER_SIZE]


# --- attacks: each a named error -------------------------------------------------


def _decrypt_streaming(key: bytes, backup: bytes) -> bytes:
    """Push in small pieces, collecting what is released, so a late failure is seen too."""
    decryptor = Decryptor(key)
    released = b""
    for start in range(0, len(backup), 1000):
        released += decryptor.push(backup[start : start + 1000])
    return released + decryptor.finish()


def _refused(backup: bytes, error: type[BackupError], key: bytes = KEY) -> BackupError:
    with pytest.raises(error) as caught:
        decrypt(key, backup)
    with pytest.raises(error):
        _decrypt_streaming(key, backup)
    return caught.value


@pytest.mark.parametrize("kept_chunks", [1, 2])
def test_truncated_at_a_chunk_boundary(kept_chunks: int) -> None:
    _, backup = _backup(3 * CS + 10)  # chunks: 3 full, 1 final
    error = _refused(backup[: HEADER_SIZE + kept_chunks * ENC], BackupTruncatedError)
    assert f"after chunk {kept_chunks - 1}" in str(error)


def test_truncated_by_dropping_a_full_final_chunk() -> None:
    _, backup = _backup(3 * CS)  # the final chunk is full
    _refused(backup[:-ENC], BackupTruncatedError)


@pytest.mark.parametrize("cut", [1, TAG_SIZE, ENC // 2, ENC - 1])
def test_truncated_inside_a_chunk(cut: int) -> None:
    _, backup = _backup(3 * CS + 10)
    truncated = backup[: HEADER_SIZE + ENC + cut]
    # A cut inside a chunk cannot be told from a modified chunk: both fail its tag.
    error = type(_refused(truncated, BackupTamperedError))
    assert error in (BackupTamperedError, BackupTruncatedError)
    if cut < TAG_SIZE:
        _refused(truncated, BackupTruncatedError)


@pytest.mark.parametrize("length", [0, 1, 8, 20, HEADER_SIZE - 1, HEADER_SIZE])
def test_truncated_in_or_right_after_the_header(length: int) -> None:
    _, backup = _backup(100)
    _refused(backup[:length], BackupTruncatedError)


def test_truncated_inside_the_final_chunk() -> None:
    _, backup = _backup(CS + 100)
    assert type(_refused(backup[:-1], BackupTamperedError)) is BackupTamperedError


def test_reordered_chunks() -> None:
    _, backup = _backup(3 * CS + 10)
    chunks = _chunks(backup)
    swapped = backup[:HEADER_SIZE] + chunks[1] + chunks[0] + b"".join(chunks[2:])
    assert type(_refused(swapped, BackupTamperedError)) is BackupTamperedError
    final_first = backup[:HEADER_SIZE] + chunks[0] + chunks[1] + chunks[3] + chunks[2]
    assert isinstance(_refused(final_first, BackupTamperedError), BackupTamperedError)


def test_chunks_spliced_from_another_backup_under_the_same_key() -> None:
    _, first = _backup(3 * CS + 10, seed=1)
    _, second = _backup(3 * CS + 10, seed=2)
    a, b = _chunks(first), _chunks(second)
    spliced = first[:HEADER_SIZE] + a[0] + b[1] + a[2] + a[3]
    assert "chunk 1" in str(_refused(spliced, BackupTamperedError))
    other_header = second[:HEADER_SIZE] + b"".join(a)
    assert "chunk 0" in str(_refused(other_header, BackupTamperedError))
    # The same chunk position from another backup, as the final chunk.
    swapped_final = first[:HEADER_SIZE] + a[0] + a[1] + a[2] + b[3]
    _refused(swapped_final, BackupTamperedError)


def test_extended_after_a_full_final_chunk() -> None:
    _, backup = _backup(2 * CS)
    for extra in (b"\x00", b"x" * 100, _chunks(backup)[0]):
        error = _refused(backup + extra, BackupTrailingDataError)
        assert "follow the final chunk" in str(error)


def test_extended_after_a_short_final_chunk() -> None:
    _, backup = _backup(CS + 100)
    _, other = _backup(CS + 100, seed=3)
    for extra in (b"\x00", bytes(ENC), _chunks(other)[1], _chunks(backup)[1]):
        _refused(backup + extra, BackupTamperedError)


def test_extended_empty_payload() -> None:
    _, backup = _backup(0)
    _refused(backup + b"\x01", BackupTamperedError)


@pytest.mark.parametrize(
    ("offset", "error"),
    [
        (0, BackupFormatError),  # magic
        (7, BackupFormatError),
        (8, BackupFormatError),  # version
        (12, BackupFormatError),  # chunk size: no longer a power of two
        (13, BackupKeyError),  # salt: the MAC no longer verifies
        (44, BackupKeyError),
        (45, BackupKeyError),  # the MAC itself
        (76, BackupKeyError),
    ],
)
def test_flipped_header_byte(offset: int, error: type[BackupError]) -> None:
    _, backup = _backup(3 * CS)
    flipped = bytearray(backup)
    flipped[offset] ^= 0x01
    _refused(bytes(flipped), error)


def test_chunk_size_changed_to_another_allowed_value_fails_the_mac() -> None:
    _, backup = _backup(3 * CS)
    changed = backup[:9] + (2 * CS).to_bytes(4, "big") + backup[13:]
    _refused(changed, BackupKeyError)


@pytest.mark.parametrize(
    "where",
    [
        HEADER_SIZE,  # first byte of chunk 0's ciphertext
        HEADER_SIZE + CS // 2,
        HEADER_SIZE + ENC - 1,  # chunk 0's tag
        HEADER_SIZE + ENC - TAG_SIZE,
        HEADER_SIZE + 2 * ENC + 5,  # the final chunk's body
        -1,  # the final chunk's tag
    ],
)
def test_flipped_chunk_byte(where: int) -> None:
    _, backup = _backup(2 * CS + 10)
    flipped = bytearray(backup)
    flipped[where] ^= 0x80
    assert type(_refused(bytes(flipped), BackupTamperedError)) is BackupTamperedError


def test_every_bit_flip_of_a_small_backup_is_refused() -> None:
    _, backup = _backup(40)
    for index in range(len(backup)):
        for bit in (0x01, 0x80):
            flipped = bytearray(backup)
            flipped[index] ^= bit
            with pytest.raises(BackupError):
                decrypt(KEY, bytes(flipped))


def test_wrong_key_is_refused_at_the_header_before_any_output() -> None:
    _, backup = _backup(3 * CS)
    decryptor = Decryptor(OTHER_KEY)
    assert decryptor.push(backup[: HEADER_SIZE - 1]) == b""
    with pytest.raises(BackupKeyError, match="wrong key"):
        decryptor.push(backup[HEADER_SIZE - 1 : HEADER_SIZE])
    _refused(backup, BackupKeyError, key=OTHER_KEY)


def test_not_a_backup_is_refused_at_its_first_byte() -> None:
    decryptor = Decryptor(KEY)
    with pytest.raises(BackupFormatError, match="not a bkv backup"):
        decryptor.push(b"PK\x03\x04")


def test_unknown_version_and_chunk_sizes_are_refused() -> None:
    _, backup = _backup(10)
    for version in (0, 2, 255):
        _refused(backup[:8] + bytes([version]) + backup[9:], BackupFormatError)
    for size in (0, 1, MIN_CHUNK_SIZE // 2, MAX_CHUNK_SIZE * 2, MIN_CHUNK_SIZE + 1, 2**32 - 1):
        _refused(backup[:9] + size.to_bytes(4, "big") + backup[13:], BackupFormatError)


@given(st.binary(max_size=3 * ENC))
def test_random_bytes_only_ever_raise_backup_errors(data: bytes) -> None:
    with pytest.raises(BackupError):
        decrypt(KEY, data)


@given(st.binary(max_size=3 * ENC))
def test_random_payload_after_a_valid_header_only_ever_raises_backup_errors(data: bytes) -> None:
    _, backup = _backup(0)
    with pytest.raises(BackupError):
        decrypt(KEY, backup[:HEADER_SIZE] + data)
    with pytest.raises(BackupError):
        decrypt(KEY, MAGIC + data)


# --- misuse and hygiene ------------------------------------------------------------


def test_misuse_is_type_or_value_error() -> None:
    with pytest.raises(TypeError):
        Encryptor("k" * 32)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="32 bytes"):
        Encryptor(KEY[:31])
    with pytest.raises(ValueError, match="32 bytes"):
        Decryptor(KEY + b"x")
    for size in (MIN_CHUNK_SIZE - 1, MIN_CHUNK_SIZE + 1, MAX_CHUNK_SIZE * 2, 0):
        with pytest.raises(ValueError, match="power of two"):
            Encryptor(KEY, chunk_size=size)
    with pytest.raises(ValueError, match="rng returned"):
        Encryptor(KEY, rng=lambda n: bytes(n - 1))
    encryptor = Encryptor(KEY)
    with pytest.raises(TypeError):
        encryptor.push("text")  # type: ignore[arg-type]
    encryptor.finish()
    with pytest.raises(ValueError, match="after finish"):
        encryptor.push(b"x")
    with pytest.raises(ValueError, match="twice"):
        encryptor.finish()


def test_a_decryptor_is_spent_after_an_error_or_the_end() -> None:
    _, backup = _backup(10)
    failed = Decryptor(OTHER_KEY)
    with pytest.raises(BackupKeyError):
        failed.push(backup)
    with pytest.raises(ValueError, match="failed"):
        failed.push(b"")
    with pytest.raises(ValueError, match="failed"):
        failed.finish()
    done = Decryptor(KEY)
    done.push(backup)
    done.finish()
    with pytest.raises(ValueError, match="finished"):
        done.push(b"")


def test_no_key_material_in_reprs_or_errors() -> None:
    encryptor, decryptor = Encryptor(KEY), Decryptor(KEY)
    assert repr(encryptor) == "Encryptor(...)"
    assert repr(decryptor) == "Decryptor(...)"
    _, backup = _backup(10)
    with pytest.raises(BackupKeyError) as caught:
        decrypt(OTHER_KEY, backup)
    assert KEY.hex() not in str(caught.value)
    assert OTHER_KEY.hex() not in str(caught.value)
