"""PKCS#11 backends against a real SoftHSM2 token created per test."""

from __future__ import annotations

import json
from pathlib import Path

import pkcs11
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pkcs11 import Attribute, KeyType, ObjectClass
from pkcs11.exceptions import AttributeReadOnly, AttributeSensitive, KeyUnextractable

from bkv.errors import (
    ConfigError,
    CounterSignatureError,
    KeyExistsError,
    KeyNotFoundError,
    KeystoreError,
    SealingError,
)
from bkv.keystore import Sealer, Signer, SoftwareSealer, sealed
from bkv.keystore.pkcs11 import (
    Pkcs11Config,
    generate_sealing_key,
    generate_signing_key,
    init_token,
    load_sealing_key,
    load_signing_key,
)
from bkv.protocol.countersign import countersign, verify_countersignature

pytestmark = pytest.mark.softhsm

SO_PIN = "so-pin-5678"
USER_PIN = "user-pin-1234"


@pytest.fixture
def token(tmp_path: Path) -> Pkcs11Config:
    """A fresh SoftHSM2 token in this test's own directory."""
    return init_token(tmp_path / "token", "bkv-test", SO_PIN, USER_PIN)


def _raw_session(config: Pkcs11Config) -> pkcs11.Session:
    # A second, independent view of the token (read-only, logged in) to inspect
    # attributes as any PKCS#11 client would. Opened through the same library
    # object, so it must be closed before the backend's session logs out.
    library = pkcs11.lib(config.module_path)
    token = library.get_token(token_label=config.token_label)
    return token.open(rw=True)


def test_init_token_writes_conf_and_config(tmp_path: Path) -> None:
    config = init_token(tmp_path / "t", "label-1", SO_PIN, USER_PIN)
    conf = Path(config.conf_path)
    assert conf.is_file()
    assert str(tmp_path / "t" / "tokens") in conf.read_text()
    assert config.token_label == "label-1"
    assert USER_PIN not in repr(config)


def test_config_save_load_round_trip_without_pin(token: Pkcs11Config, tmp_path: Path) -> None:
    path = tmp_path / "pkcs11.json"
    token.save(path)
    assert USER_PIN not in path.read_text()
    assert Pkcs11Config.load(path, USER_PIN) == token


def test_config_load_rejects_bad_files(tmp_path: Path) -> None:
    path = tmp_path / "pkcs11.json"
    with pytest.raises(ConfigError):
        Pkcs11Config.load(path, USER_PIN)
    path.write_text(json.dumps({"module_path": "m", "conf_path": "c"}))
    with pytest.raises(ConfigError):
        Pkcs11Config.load(path, USER_PIN)
    path.write_text(json.dumps({"module_path": "m", "conf_path": "c", "token_label": 3}))
    with pytest.raises(ConfigError):
        Pkcs11Config.load(path, USER_PIN)


@pytest.mark.parametrize(
    ("label", "so_pin", "user_pin"),
    [("", SO_PIN, USER_PIN), ("x" * 33, SO_PIN, USER_PIN), ("ok", "123", USER_PIN),
     ("ok", SO_PIN, "1")],
)  # fmt: skip
def test_init_token_rejects_bad_arguments(
    tmp_path: Path, label: str, so_pin: str, user_pin: str
) -> None:
    with pytest.raises(ValueError):
        init_token(tmp_path / "t", label, so_pin, user_pin)


def test_signer_round_trip_verifies_with_cryptography(token: Pkcs11Config) -> None:
    with generate_signing_key(token, "operator") as signer:
        assert isinstance(signer, Signer)
        public = Ed25519PublicKey.from_public_bytes(signer.public_key())
        signature = signer.sign(b"witness signature bytes")
        assert len(signature) == 64
        public.verify(signature, b"witness signature bytes")
        with pytest.raises(InvalidSignature):
            public.verify(signature, b"witness signature bytez")
        assert signer.public_key().hex() in repr(signer)


def test_signer_is_deterministic_pure_eddsa(token: Pkcs11Config) -> None:
    # Ed25519 signatures are deterministic (RFC 8032 section 5.1.6): the token
    # must give the same bytes twice, which also shows no pre-hash variant is used.
    with generate_signing_key(token, "k") as signer:
        assert signer.sign(b"m") == signer.sign(b"m")


def test_signing_key_persists_and_reloads(token: Pkcs11Config) -> None:
    with generate_signing_key(token, "operator") as signer:
        public = signer.public_key()
    with load_signing_key(token, "operator") as again:
        assert again.public_key() == public
        Ed25519PublicKey.from_public_bytes(public).verify(again.sign(b"x"), b"x")


def test_signing_private_key_is_sensitive_and_unextractable(token: Pkcs11Config) -> None:
    with generate_signing_key(token, "operator"):
        session = _raw_session(token)
        try:
            key = session.get_key(ObjectClass.PRIVATE_KEY, KeyType.EC_EDWARDS, "operator")
            assert key[Attribute.SENSITIVE] is True
            assert key[Attribute.EXTRACTABLE] is False
            assert key[Attribute.NEVER_EXTRACTABLE] is True
            with pytest.raises(AttributeSensitive):
                key[Attribute.VALUE]
        finally:
            session.close()


def test_sealer_round_trip_and_format(token: Pkcs11Config) -> None:
    with generate_sealing_key(token, "state") as sealer:
        assert isinstance(sealer, Sealer)
        blob = sealer.seal(b"hsm state", b"node-1")
        assert blob[0] == sealed.SealAlgorithm.AES_256_GCM_BLOB_KEY
        assert len(blob) == 1 + sealed.SALT_SIZE + len(b"hsm state") + sealed.TAG_SIZE
        assert sealer.open(blob, b"node-1") == b"hsm state"
        assert sealer.seal(b"hsm state", b"node-1") != blob


def test_sealer_rejects_wrong_aad_tamper_and_truncation(token: Pkcs11Config) -> None:
    with generate_sealing_key(token, "state") as sealer:
        blob = sealer.seal(b"hsm state", b"node-1")
        with pytest.raises(SealingError):
            sealer.open(blob, b"node-2")
        salt, ciphertext, tag = 1, 1 + sealed.SALT_SIZE, len(blob) - 1
        for index in (salt, salt + 31, ciphertext, tag):
            tampered = bytearray(blob)
            tampered[index] ^= 0x80
            with pytest.raises(SealingError):
                sealer.open(bytes(tampered), b"node-1")
        with pytest.raises(SealingError):
            sealer.open(blob[:-1], b"node-1")
        for alg in (b"\x01", b"\x02", b"\x04"):  # legacy (this key has no CKA_DECRYPT), unknown
            with pytest.raises(SealingError):
                sealer.open(alg + blob[1:], b"node-1")


def test_sealer_rejects_blob_from_other_key(token: Pkcs11Config) -> None:
    with generate_sealing_key(token, "a") as first, generate_sealing_key(token, "b") as second:
        blob = first.seal(b"secret", b"")
        with pytest.raises(SealingError):
            second.open(blob, b"")
        with pytest.raises(SealingError):
            SoftwareSealer.generate().open(blob, b"")


def test_software_blob_opens_in_token_under_same_key(token: Pkcs11Config) -> None:
    # Format compatibility: a key imported into the token (test only; bkv never
    # imports keys) opens what the software backend sealed, and vice versa.
    key = bytes(range(32))
    with generate_sealing_key(token, "unused"):
        session = _raw_session(token)
        try:
            session.create_object(
                {
                    Attribute.CLASS: ObjectClass.SECRET_KEY,
                    Attribute.KEY_TYPE: KeyType.AES,
                    Attribute.VALUE: key,
                    Attribute.LABEL: "imported",
                    Attribute.TOKEN: True,
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: False,
                    Attribute.DERIVE: True,
                    Attribute.DECRYPT: True,  # for the legacy blob below
                }
            )
        finally:
            session.close()
        with load_sealing_key(token, "imported") as in_token:
            software = SoftwareSealer(key)
            assert in_token.open(software.seal(b"x", b"ad"), b"ad") == b"x"
            assert software.open(in_token.seal(b"y", b"ad"), b"ad") == b"y"
            # A legacy blob (alg 0x01: GCM under the key itself) opens in the token too.
            nonce = bytes(12)
            legacy = b"\x01" + nonce + AESGCM(key).encrypt(nonce, b"old", b"\x01ad")
            assert in_token.open(legacy, b"ad") == b"old"
            with pytest.raises(SealingError):
                in_token.open(legacy[:-1] + bytes([legacy[-1] ^ 1]), b"ad")
            # Its keystream, named as a salt, is a blob key the host would know:
            # the token must never derive from it (bkv.keystore.sealed).
            known = bytes(32)
            old = AESGCM(key).encrypt(nonce, known, b"\x01ad")[:32]
            leaked_key = bytes(c ^ p for c, p in zip(old, known, strict=True))
            salt = nonce + (2).to_bytes(4, "big") + nonce + (3).to_bytes(4, "big")
            forged = AESGCM(leaked_key).encrypt(bytes(12), b"forged", b"\x03ad")
            with pytest.raises(SealingError, match="salt"):
                in_token.open(b"\x03" + salt + forged, b"ad")


def test_sealing_key_is_sensitive_unextractable_and_cannot_be_exported(
    token: Pkcs11Config,
) -> None:
    with generate_sealing_key(token, "state"):
        session = _raw_session(token)
        try:
            key = session.get_key(ObjectClass.SECRET_KEY, KeyType.AES, "state")
            assert key[Attribute.SENSITIVE] is True
            assert key[Attribute.EXTRACTABLE] is False
            assert key[Attribute.NEVER_EXTRACTABLE] is True
            assert key[Attribute.ALWAYS_SENSITIVE] is True
            assert key[Attribute.VALUE_LEN] == 32
            # It derives blob keys and does nothing else with data itself.
            assert key[Attribute.DERIVE] is True
            assert key[Attribute.ENCRYPT] is False and key[Attribute.DECRYPT] is False
            with pytest.raises(AttributeSensitive):
                key[Attribute.VALUE]
            with pytest.raises(AttributeReadOnly):
                key[Attribute.EXTRACTABLE] = True
            wrapping = session.generate_key(KeyType.AES, 256, template={Attribute.WRAP: True})
            assert isinstance(wrapping, pkcs11.WrapMixin)  # an AES key can wrap
            with pytest.raises(KeyUnextractable):
                wrapping.wrap_key(key)
        finally:
            session.close()


def test_blob_keys_are_not_left_in_the_token(token: Pkcs11Config) -> None:
    with generate_sealing_key(token, "state") as sealer:
        session = _raw_session(token)
        try:
            before = len(list(session.get_objects()))
            blobs = [sealer.seal(b"state %d" % i, b"") for i in range(3)]
            assert len({blob[1 : 1 + sealed.SALT_SIZE] for blob in blobs}) == 3
            assert [sealer.open(blob, b"") for blob in blobs] == [
                b"state 0",
                b"state 1",
                b"state 2",
            ]
            with pytest.raises(SealingError):
                sealer.open(blobs[0][:-1] + bytes([blobs[0][-1] ^ 1]), b"")
            assert len(list(session.get_objects())) == before  # each blob key destroyed
        finally:
            session.close()


def test_a_sealing_key_that_cannot_derive_is_refused(token: Pkcs11Config) -> None:
    # What bkv generated before per-blob keys: encrypt/decrypt, no CKA_DERIVE.
    with generate_sealing_key(token, "unused"):
        session = _raw_session(token)
        try:
            session.generate_key(
                KeyType.AES,
                256,
                label="old",
                store=True,
                template={
                    Attribute.DERIVE: False,
                    Attribute.ENCRYPT: True,
                    Attribute.DECRYPT: True,
                },
            )
        finally:
            session.close()
        with pytest.raises(KeystoreError, match="CKA_DERIVE"):
            load_sealing_key(token, "old")


def test_sealing_key_persists_across_reload(token: Pkcs11Config) -> None:
    with generate_sealing_key(token, "state") as sealer:
        blob = sealer.seal(b"durable", b"")
    with load_sealing_key(token, "state") as again:
        assert again.open(blob, b"") == b"durable"


def test_generate_refuses_existing_label(token: Pkcs11Config) -> None:
    with generate_sealing_key(token, "k"):
        with pytest.raises(KeyExistsError):
            generate_sealing_key(token, "k")
        with pytest.raises(KeyExistsError):
            generate_signing_key(token, "k")


def test_load_missing_key_raises(token: Pkcs11Config) -> None:
    with pytest.raises(KeyNotFoundError):
        load_sealing_key(token, "absent")
    with pytest.raises(KeyNotFoundError):
        load_signing_key(token, "absent")


def test_load_with_wrong_type_raises(token: Pkcs11Config) -> None:
    with generate_signing_key(token, "sig"), pytest.raises(KeyNotFoundError):
        load_sealing_key(token, "sig")


def test_wrong_pin_is_refused(token: Pkcs11Config) -> None:
    wrong = Pkcs11Config(token.module_path, token.conf_path, token.token_label, "not-the-pin")
    with pytest.raises(KeystoreError):
        load_sealing_key(wrong, "any")
    # Also while the token is open (logged in) in this process under the right PIN.
    with generate_sealing_key(token, "k"), pytest.raises(KeystoreError):
        load_sealing_key(wrong, "k")


def test_unknown_token_label_is_refused(token: Pkcs11Config) -> None:
    wrong = Pkcs11Config(token.module_path, token.conf_path, "no-such-token", USER_PIN)
    with pytest.raises(KeystoreError):
        load_sealing_key(wrong, "any")


def test_switching_configuration_with_open_keys_is_refused(
    token: Pkcs11Config, tmp_path: Path
) -> None:
    other = init_token(tmp_path / "other", "other", SO_PIN, USER_PIN)
    with generate_sealing_key(token, "k"), pytest.raises(KeystoreError):
        generate_sealing_key(other, "k")
    # Once everything from the first token is closed, the switch works and
    # the second token really is a different object store.
    with generate_sealing_key(other, "k") as sealer:
        blob = sealer.seal(b"x", b"")
    with load_sealing_key(token, "k") as first, pytest.raises(SealingError):
        first.open(blob, b"")


def test_closed_handle_refuses_use(token: Pkcs11Config) -> None:
    sealer = generate_sealing_key(token, "k")
    sealer.close()
    sealer.close()  # idempotent
    with pytest.raises(ValueError):
        sealer.seal(b"x", b"")


def test_token_signer_makes_operator_countersignatures(token: Pkcs11Config) -> None:
    # The operator's counter-signature made with the key in the token (docs/threat-model.md §12).
    witness_signature = bytes(range(64))
    with generate_signing_key(token, "operator") as signer:
        counter = countersign(signer, witness_signature)
        verify_countersignature(signer.public_key(), witness_signature, counter)
        with pytest.raises(CounterSignatureError):
            verify_countersignature(signer.public_key(), bytes(64), counter)
