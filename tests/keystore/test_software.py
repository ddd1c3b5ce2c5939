"""Software Signer and Sealer: round trips and every failure path."""

from __future__ import annotations

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given
from hypothesis import strategies as st

from bkv.errors import SealingError
from bkv.hsm.sealing import SEAL_OVERHEAD
from bkv.keystore import Sealer, Signer, SoftwareSealer, SoftwareSigner, sealed
from bkv.keystore.sealed import SealAlgorithm


def test_signer_matches_rfc8032_test_1() -> None:
    # RFC 8032 section 7.1, TEST 1 (empty message).
    seed = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    signer = SoftwareSigner(seed)
    assert signer.public_key().hex() == (
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    )
    assert signer.sign(b"").hex() == (
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
        "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
    )
    assert isinstance(signer, Signer)


def test_signer_signature_verifies_and_binds_message() -> None:
    signer = SoftwareSigner.generate()
    public = Ed25519PublicKey.from_public_bytes(signer.public_key())
    signature = signer.sign(b"message")
    public.verify(signature, b"message")
    with pytest.raises(InvalidSignature):
        public.verify(signature, b"messagf")


def test_signer_seed_round_trip_and_repr_hides_seed() -> None:
    signer = SoftwareSigner.generate()
    again = SoftwareSigner(signer.seed_bytes())
    assert again.public_key() == signer.public_key()
    assert signer.seed_bytes().hex() not in repr(signer)
    assert signer.public_key().hex() in repr(signer)


@pytest.mark.parametrize("seed", [b"", bytes(31), bytes(33)])
def test_signer_rejects_wrong_seed_size(seed: bytes) -> None:
    with pytest.raises(ValueError):
        SoftwareSigner(seed)


def test_signer_rejects_non_bytes_message() -> None:
    with pytest.raises(TypeError):
        SoftwareSigner.generate().sign("text")  # type: ignore[arg-type]


# --- the sealer: a key per blob (bkv.keystore.sealed) ------------------------------

KEY = bytes(range(32))
RANDOM = bytes(range(100, 124))
"""What an injected rng returns for a seal: 12 random bytes per salt block."""
SALT = RANDOM[:12] + bytes(4) + RANDOM[12:] + bytes(4)


def _blob_key(key: bytes, salt: bytes) -> bytes:
    # CKM_AES_ECB_ENCRYPT_DATA, computed independently of the sealer.
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return encryptor.update(salt) + encryptor.finalize()


def test_sealer_round_trip_and_layout() -> None:
    sealer = SoftwareSealer.generate()
    assert isinstance(sealer, Sealer)
    blob = sealer.seal(b"state", b"context")
    # alg || salt || ciphertext || tag (not tag || nonce || ciphertext)
    assert blob[0] == SealAlgorithm.AES_256_GCM_BLOB_KEY == 0x03
    assert len(blob) == 1 + sealed.SALT_SIZE + len(b"state") + sealed.TAG_SIZE
    assert sealer.open(blob, b"context") == b"state"


def test_sealed_blob_matches_known_answer() -> None:
    # An injected rng makes the blob deterministic; checked against AES-ECB and
    # AESGCM directly, which pins the salt's form, the derivation, the fixed
    # nonce, the layout and ad = alg || aad.
    sealer = SoftwareSealer(KEY, rng=lambda n: RANDOM[:n])
    blob = sealer.seal(b"state", b"ctx")
    body = AESGCM(_blob_key(KEY, SALT)).encrypt(bytes(12), b"state", b"\x03ctx")
    assert blob == b"\x03" + SALT + body
    assert body[-sealed.TAG_SIZE :] == blob[-sealed.TAG_SIZE :]  # the tag comes last


def test_the_overhead_fits_the_room_the_hsm_leaves_for_it() -> None:
    blob = SoftwareSealer.generate().seal(b"s", b"")
    assert len(blob) - 1 == 1 + sealed.SALT_SIZE + sealed.TAG_SIZE <= SEAL_OVERHEAD


def test_every_seal_uses_its_own_key() -> None:
    sealer = SoftwareSealer(KEY)
    blobs = [sealer.seal(b"x", b"") for _ in range(8)]
    salts = {blob[1 : 1 + sealed.SALT_SIZE] for blob in blobs}
    assert len(salts) == len(blobs)
    assert len({_blob_key(KEY, salt) for salt in salts}) == len(blobs)


def test_the_blob_key_comes_from_the_drawn_salt() -> None:
    # The nonce is fixed, so the salt alone separates keys: two seals that drew
    # the same salt would reuse a GCM key and nonce. Pin that the salt is what
    # the key is derived from (and that it is drawn, not constant).
    same = SoftwareSealer(KEY, rng=lambda n: RANDOM[:n])
    assert same.seal(b"x", b"") == same.seal(b"x", b"")
    other = SoftwareSealer(KEY, rng=lambda n: bytes(reversed(RANDOM))[:n])
    assert other.seal(b"x", b"") != same.seal(b"x", b"")


@pytest.mark.parametrize("random", [bytes(24), bytes(12) + RANDOM[12:], RANDOM[:12] + bytes(12)])
def test_a_salt_with_an_all_zero_block_is_never_drawn(random: bytes) -> None:
    # AES(key, 0^128) is the legacy GCM hash key H: no blob key derives from it.
    with pytest.raises(ValueError, match="all-zero salt block"):
        SoftwareSealer(KEY, rng=lambda n: random[:n]).seal(b"x", b"")


def test_sealer_rejects_wrong_aad() -> None:
    sealer = SoftwareSealer.generate()
    blob = sealer.seal(b"state", b"context")
    with pytest.raises(SealingError):
        sealer.open(blob, b"contexT")


def test_sealer_rejects_wrong_key() -> None:
    blob = SoftwareSealer.generate().seal(b"state", b"ctx")
    with pytest.raises(SealingError):
        SoftwareSealer.generate().open(blob, b"ctx")


def test_sealer_rejects_every_single_bit_flip() -> None:
    # alg, salt, ciphertext and tag: each part is authenticated.
    sealer = SoftwareSealer.generate()
    blob = sealer.seal(b"state", b"ctx")
    for index in range(len(blob)):
        tampered = bytearray(blob)
        tampered[index] ^= 0x01
        with pytest.raises(SealingError):
            sealer.open(bytes(tampered), b"ctx")


@pytest.mark.parametrize("alg", [0x00, 0x02, 0x04, 0xFF])
def test_unknown_algorithm_bytes_are_refused(alg: int) -> None:
    sealer = SoftwareSealer(KEY)
    blob = sealer.seal(b"state", b"ctx")
    with pytest.raises(SealingError, match=f"0x{alg:02x} is unknown"):
        sealer.open(bytes([alg]) + blob[1:], b"ctx")


def test_legacy_blobs_open_and_are_never_written() -> None:
    # alg 0x01: AES-256-GCM under the sealing key itself, random nonce (the
    # format before per-blob keys). States written then must still open.
    nonce = bytes(range(12))
    legacy = b"\x01" + nonce + AESGCM(KEY).encrypt(nonce, b"old state", b"\x01ctx")
    sealer = SoftwareSealer(KEY)
    assert sealer.open(legacy, b"ctx") == b"old state"
    assert sealer.seal(b"new state", b"ctx")[0] == SealAlgorithm.AES_256_GCM_BLOB_KEY
    for index in range(len(legacy)):
        tampered = bytearray(legacy)
        tampered[index] ^= 0x01
        with pytest.raises(SealingError):
            sealer.open(bytes(tampered), b"ctx")


def test_a_blob_cannot_be_relabelled_as_the_other_format() -> None:
    sealer = SoftwareSealer(KEY)
    blob = sealer.seal(b"state-long-enough-for-both", b"ctx")
    with pytest.raises(SealingError):
        sealer.open(bytes([SealAlgorithm.AES_256_GCM]) + blob[1:], b"ctx")


@pytest.mark.parametrize("size", [0, 1, 1 + sealed.SALT_SIZE + sealed.TAG_SIZE])
def test_sealer_rejects_short_blobs(size: int) -> None:
    with pytest.raises(SealingError):
        SoftwareSealer.generate().open(bytes([3]) * size, b"")


def test_sealer_rejects_truncated_and_extended_blobs() -> None:
    sealer = SoftwareSealer.generate()
    blob = sealer.seal(b"some state", b"")
    with pytest.raises(SealingError):
        sealer.open(blob[:-1], b"")
    with pytest.raises(SealingError):
        sealer.open(blob + b"\x00", b"")


def test_sealer_refuses_empty_and_oversized_inputs() -> None:
    sealer = SoftwareSealer.generate()
    with pytest.raises(ValueError):
        sealer.seal(b"", b"ctx")
    with pytest.raises(ValueError):
        sealer.seal(b"x", bytes(sealed.MAX_AAD_SIZE + 1))
    with pytest.raises(TypeError):
        sealer.seal("x", b"")  # type: ignore[arg-type]


@pytest.mark.parametrize("key", [b"", bytes(16), bytes(31), bytes(33)])
def test_sealer_rejects_wrong_key_size(key: bytes) -> None:
    with pytest.raises(ValueError):
        SoftwareSealer(key)


def test_sealer_repr_hides_key() -> None:
    sealer = SoftwareSealer.generate()
    assert sealer.key_bytes().hex() not in repr(sealer)


def test_sealer_checks_rng_output_length() -> None:
    sealer = SoftwareSealer(bytes(32), rng=lambda n: bytes(n - 1))
    with pytest.raises(ValueError):
        sealer.seal(b"x", b"")


@given(st.binary(max_size=200))
def test_random_bytes_never_raise_anything_but_sealing_error(data: bytes) -> None:
    sealer = SoftwareSealer(bytes(32))
    with pytest.raises(SealingError):
        sealer.open(data, b"")


def _keystream_salt_and_key(key: bytes, plaintext: bytes) -> tuple[bytes, bytes, bytes]:
    """A legacy (0x01) blob of ``plaintext``, and the blob key its keystream gives away.

    GCM with a 96-bit nonce enciphers ``nonce || u32(i)`` for i >= 2 to make its
    keystream; whoever knows a legacy blob's plaintext learns those blocks of
    AES(sealing key). Named as a salt, two of them are a blob key (AES-ECB of the
    salt) that this outsider knows.
    """
    nonce = bytes(range(12))
    legacy = b"\x01" + nonce + AESGCM(key).encrypt(nonce, plaintext, b"\x01ctx")
    ciphertext = legacy[13:-16]
    keystream = bytes(c ^ p for c, p in zip(ciphertext, plaintext, strict=True))
    salt = nonce + (2).to_bytes(4, "big") + nonce + (3).to_bytes(4, "big")
    return legacy, salt, keystream[:32]


def test_a_legacy_blobs_keystream_never_yields_a_blob_key() -> None:
    # Known plaintext of an old blob (the host chooses account ids, so it can
    # know whole blocks of a state it stores) must not let it forge a new one.
    known = b"an account id the host chose...." * 2
    legacy, salt, leaked_key = _keystream_salt_and_key(KEY, known)
    sealer = SoftwareSealer(KEY)
    assert sealer.open(legacy, b"ctx") == known  # a real legacy blob of this key
    assert _blob_key(KEY, salt) == leaked_key  # the derivation the salt would name
    forged = b"\x03" + salt + AESGCM(leaked_key).encrypt(bytes(12), b"forged", b"\x03ctx")
    with pytest.raises(SealingError, match="salt"):
        sealer.open(forged, b"ctx")


@pytest.mark.parametrize(
    "salt",
    [
        bytes(range(1, 33)),  # blocks that do not end in four zero bytes
        bytes(range(1, 13)) + bytes(4) + bytes(range(1, 17)),
        bytes(16) + bytes(range(1, 13)) + bytes(4),  # an all-zero block: AES(key, 0) is GCM's H
        bytes(range(1, 13)) + bytes(4) + bytes(16),
    ],
)
def test_salts_outside_the_blob_key_domain_are_refused(salt: bytes) -> None:
    sealer = SoftwareSealer(KEY)
    body = sealer.seal(b"state", b"ctx")[1 + sealed.SALT_SIZE :]
    with pytest.raises(SealingError, match="salt"):
        sealer.open(b"\x03" + salt + body, b"ctx")


def test_encoding_a_blob_with_a_salt_not_from_new_salt_is_a_caller_error() -> None:
    body = b"\x00" * (sealed.TAG_SIZE + 1)
    with pytest.raises(ValueError, match="new_salt"):
        sealed.encode(SealAlgorithm.AES_256_GCM_BLOB_KEY, bytes(range(32)), body)
    assert sealed.encode(SealAlgorithm.AES_256_GCM_BLOB_KEY, SALT, body)[1:33] == SALT
