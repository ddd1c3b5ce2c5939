"""Weak Ed25519 keys (identity, small-order, mixed-order) are refused wherever keys are pinned."""

from __future__ import annotations

import ctypes

import pysodium
import pytest

from bkv.audit.verify import AuditPins
from bkv.client.trust import TrustRoots
from bkv.errors import NoteError, UnknownLogOriginError, WitnessSignatureError
from bkv.keystore import SoftwareSigner
from bkv.protocol import plexi
from bkv.protocol.countersign import verify_countersignature
from bkv.protocol.keycheck import check_ed25519_public_key, is_strong_ed25519_key
from bkv.tlog.checkpoint import Checkpoint
from bkv.tlog.cosignature import CosignatureVerifier
from bkv.tlog.note import ALG_ED25519, NoteSignature, format_note, format_verifier_key, key_id
from bkv.tlog.note import Ed25519Signer as NoteSigner
from bkv.witness.service import WitnessService

IDENTITY = bytes([1]) + bytes(31)
#: The eight points of small order (canonical and non-canonical encodings; libsodium's list).
SMALL_ORDER = [
    IDENTITY,
    bytes(32),
    bytes(31) + b"\x80",
    bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),
    bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85"),
    bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),
    bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa"),
]
GOOD = SoftwareSigner(bytes([3]) * 32).public_key()


def mixed_order_key() -> bytes:
    """A good key plus a point of order 8: on the curve, but not in the prime-order group."""
    out = ctypes.create_string_buffer(32)
    assert pysodium.sodium.crypto_core_ed25519_add(out, GOOD, SMALL_ORDER[4]) == 0
    return out.raw


def test_the_identity_as_a_witness_key_is_refused() -> None:
    # With the identity as the key, R = identity, S = 0 verifies for every message.
    with pytest.raises(ValueError, match="prime-order"):
        plexi.WitnessKey(IDENTITY)


@pytest.mark.parametrize("key", [*SMALL_ORDER, b"\xff" * 32])
def test_small_order_and_invalid_points_are_refused(key: bytes) -> None:
    assert not is_strong_ed25519_key(key)
    with pytest.raises(ValueError):
        check_ed25519_public_key(key)


def test_mixed_order_point_is_refused_and_good_keys_pass() -> None:
    assert is_strong_ed25519_key(GOOD)
    assert not is_strong_ed25519_key(mixed_order_key())
    assert check_ed25519_public_key(GOOD) == GOOD
    for bad in (b"", GOOD[:31], "00" * 32):
        assert not is_strong_ed25519_key(bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            check_ed25519_public_key(bad)  # type: ignore[arg-type]


def _roots(**changes: object) -> TrustRoots:
    values: dict[str, object] = {
        "witness_keys": (plexi.WitnessKey(GOOD),),
        "operator_keys": (GOOD,),
        "namespace": "bkv.fleet_keys.v1",
        "log_origin": "log.test",
        "log_verifier_key": NoteSigner("log.test", SoftwareSigner(bytes(32)))
        .verifier()
        .verifier_key(),
    }
    values.update(changes)
    return TrustRoots(**values)  # type: ignore[arg-type]


def test_trust_roots_refuse_weak_operator_keys() -> None:
    _roots()
    with pytest.raises(ValueError, match="operator key"):
        _roots(operator_keys=(IDENTITY,))
    with pytest.raises(ValueError, match="operator key"):
        _roots(operator_keys=(GOOD, mixed_order_key()))


def test_countersignature_under_a_weak_key_is_refused() -> None:
    with pytest.raises(ValueError):
        verify_countersignature(IDENTITY, bytes(64), IDENTITY + bytes(32))


def test_ed25519_verify_raises_instead_of_returning_false() -> None:
    message = plexi.encode_signature_message("bkv.fleet_keys.v1", 1, 1, b"\x01" * 32)
    with pytest.raises(WitnessSignatureError):
        plexi._ed25519_verify(GOOD, bytes(64), message)
    with pytest.raises(WitnessSignatureError):
        plexi._ed25519_verify(GOOD, bytes(63), message)


def test_weak_log_and_cosigner_keys_are_refused() -> None:
    weak_log = format_verifier_key("log.test", ALG_ED25519, IDENTITY)
    with pytest.raises(ValueError, match=r"log_verifier_key.*prime-order"):
        _roots(log_verifier_key=weak_log)
    # The note layer itself refuses weak cosigner keys, so no policy can hold one.
    with pytest.raises(NoteError, match="prime-order"):
        CosignatureVerifier("cosigner.test", SMALL_ORDER[5])
    with pytest.raises(NoteError, match="prime-order"):
        CosignatureVerifier("cosigner.test", mixed_order_key())


def test_the_witness_refuses_to_cosign_a_log_with_a_weak_key(service: WitnessService) -> None:
    # A log configured with the identity
    # as its key let anyone get forged checkpoints cosigned (R = identity, S = 0).
    for weak in (IDENTITY, SMALL_ORDER[6], mixed_order_key()):
        with pytest.raises(NoteError, match="prime-order"):
            service.add_cosigned_log(
                "other.example/log", [format_verifier_key("other.example/log", ALG_ED25519, weak)]
            )
    forged = Checkpoint("other.example/log", 5, b"\x11" * 32).text()
    note = format_note(
        forged,
        [
            NoteSignature(
                "other.example/log", key_id("other.example/log", 1, IDENTITY), IDENTITY + bytes(32)
            )
        ],
    )
    with pytest.raises(UnknownLogOriginError):
        service.add_checkpoint(b"old 0\n\n" + note)


def test_audit_pins_and_witness_refuse_weak_operator_keys(service: WitnessService) -> None:
    with pytest.raises(ValueError, match="operator key"):
        AuditPins(
            witness_keys=(plexi.WitnessKey(GOOD),),
            operator_keys=(IDENTITY,),
            log_origin="log.test",
            log_verifier_key=_roots().log_verifier_key,
        )
    with pytest.raises(ValueError, match="operator public key"):
        service.register_namespace("weak.v1", SMALL_ORDER[6])
    assert service.store.namespace("weak.v1") is None


class _PoseAsGood(bytes):
    """A bytes subclass that compares and hashes as GOOD whatever its content."""

    def __eq__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        return hash(GOOD)


def test_the_remembered_answer_is_for_the_bytes_checked() -> None:
    # The check is remembered per key; the key it is remembered under must be the very
    # bytes libsodium checks, not whatever an object claims to equal.
    assert is_strong_ed25519_key(GOOD)
    assert not is_strong_ed25519_key(_PoseAsGood(IDENTITY))
    with pytest.raises(ValueError):
        check_ed25519_public_key(_PoseAsGood(SMALL_ORDER[4]))
