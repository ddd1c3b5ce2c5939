"""The witness stores and serves operator counter-signatures (verified, immutable)."""

from __future__ import annotations

import ctypes
import hashlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pysodium
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st
from witness_helpers import (
    NS,
    ORIGIN,
    T0,
    Clock,
    db_dump,
    fixed_signer,
    running_server,
    submission,
)

from bkv.cli.operator import WitnessClient, countersign_epoch
from bkv.client.trust import TrustRoots
from bkv.errors import (
    CodecError,
    CounterSignatureError,
    CountersignatureExistsError,
    TimestampError,
    UnknownEpochError,
    UnknownNamespaceError,
)
from bkv.keystore import SoftwareSigner
from bkv.protocol import submission as submission_format
from bkv.protocol import witness_api
from bkv.protocol.countersign import (
    COUNTERSIGNATURE_CONTEXT,
    countersign,
    countersignature_message,
    verify_countersignature,
)
from bkv.protocol.plexi import WitnessKey
from bkv.tlog.note import Ed25519Signer as NoteSigner
from bkv.witness.service import WitnessService


@pytest.fixture
def client(service: WitnessService) -> Iterator[httpx.Client]:
    with running_server(service) as url, httpx.Client(base_url=url, timeout=10) as c:
        yield c


def _witnessed(client: httpx.Client, operator: SoftwareSigner, clock: Clock, epoch: int) -> bytes:
    sub = submission(operator, epoch, clock)
    response = client.post(
        f"/namespaces/{NS}/submissions", json=witness_api.submission_to_json(sub)
    )
    assert response.status_code == 201, response.text
    return bytes.fromhex(response.json()["signature"])


def _post(client: httpx.Client, epoch: object, body: object, ns: str = NS) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(f"/namespaces/{ns}/audits/{epoch}/countersignature", content=content)


def test_format_is_context_then_witness_signature() -> None:
    witness_signature = bytes(range(64))
    assert countersignature_message(witness_signature) == COUNTERSIGNATURE_CONTEXT + bytes(
        range(64)
    )
    assert COUNTERSIGNATURE_CONTEXT == b"bkv operator countersignature v1\x00"
    assert not submission_format.SUBMISSION_CONTEXT.startswith(COUNTERSIGNATURE_CONTEXT)
    assert not COUNTERSIGNATURE_CONTEXT.startswith(submission_format.SUBMISSION_CONTEXT)
    with pytest.raises(ValueError):
        countersignature_message(bytes(63))


def test_client_module_is_the_same_format() -> None:
    from bkv.protocol import countersign as client_side  # noqa: PLC0415

    assert client_side.countersignature_message is countersignature_message
    assert client_side.verify_countersignature is verify_countersignature


def test_operator_posts_counter_signature_and_auditors_read_it(
    client: httpx.Client, operator: SoftwareSigner, clock: Clock
) -> None:
    witness_signature = _witnessed(client, operator, clock, 1)
    assert client.get(f"/namespaces/{NS}/audits/1").json()["counter_signature"] is None
    counter = countersign(operator, witness_signature)
    response = _post(client, 1, witness_api.countersignature_to_json(counter))
    assert response.status_code == 201, response.text
    served = client.get(f"/namespaces/{NS}/audits/1").json()["counter_signature"]
    assert bytes.fromhex(served) == counter
    verify_countersignature(operator.public_key(), witness_signature, bytes.fromhex(served))
    # A retried post of the same bytes is accepted and changes nothing.
    again = _post(client, 1, witness_api.countersignature_to_json(counter))
    assert again.status_code == 200


def test_bad_counter_signatures_are_refused_and_change_nothing(
    client: httpx.Client, operator: SoftwareSigner, clock: Clock, db_path: Path
) -> None:
    witness_signature = _witnessed(client, operator, clock, 1)
    _witnessed(client, operator, clock, 2)
    good = countersign(operator, witness_signature)
    before = db_dump(db_path)
    mallory = countersign(fixed_signer(0x66), witness_signature)
    cases: list[tuple[object, object, str, int, str]] = [
        (1, {"counter_signature": mallory.hex()}, NS, 403, "CounterSignatureError"),
        # the right key, but over epoch 1's witness signature, posted for epoch 2
        (2, {"counter_signature": good.hex()}, NS, 403, "CounterSignatureError"),
        (3, {"counter_signature": good.hex()}, NS, 404, "UnknownEpochError"),
        (1, {"counter_signature": good.hex()}, "other.ns", 404, "UnknownNamespaceError"),
        (1, {"counter_signature": good.hex().upper()}, NS, 400, "NonCanonicalError"),
        (1, {"counter_signature": good[:63].hex()}, NS, 400, "SizeLimitError"),
        (1, {"counter_signature": good.hex(), "x": 1}, NS, 400, "CodecError"),
        (1, {}, NS, 400, "CodecError"),
        (1, b"not json", NS, 400, "CodecError"),
        ("01", {"counter_signature": good.hex()}, NS, 400, "CodecError"),
    ]
    for epoch, body, ns, status, error in cases:
        response = _post(client, epoch, body, ns)
        assert (response.status_code, response.json()["error"]) == (status, error), body
    big = _post(client, 1, b"x" * (witness_api.MAX_COUNTERSIGNATURE_BODY + 1))
    assert big.status_code == 413
    assert db_dump(db_path) == before
    assert _post(client, 1, witness_api.countersignature_to_json(good)).status_code == 201


def test_core_rules(service: WitnessService, operator: SoftwareSigner, clock: Clock) -> None:
    receipt = service.submit(submission(operator, 1, clock))
    good = countersign(operator, receipt.statement.signature)
    with pytest.raises(UnknownNamespaceError):
        service.add_countersignature("other.ns", 1, good)
    with pytest.raises(UnknownEpochError):
        service.add_countersignature(NS, 2, good)
    with pytest.raises(CounterSignatureError):
        service.add_countersignature(NS, 1, good[:-1] + bytes([good[-1] ^ 1]))
    assert service.add_countersignature(NS, 1, good) is True
    assert service.add_countersignature(NS, 1, good) is False
    assert service.store.countersignature(NS, 1) == good


def test_stored_counter_signatures_are_immutable(
    service: WitnessService, operator: SoftwareSigner, clock: Clock, db_path: Path
) -> None:
    receipt = service.submit(submission(operator, 1, clock))
    good = countersign(operator, receipt.statement.signature)
    service.add_countersignature(NS, 1, good)
    # Even below the core's checks, the store refuses a second one for the epoch ...
    with pytest.raises(CountersignatureExistsError), service.store.transaction() as tx:
        tx.add_countersignature(NS, 1, bytes(64))
    # ... and SQLite refuses to change or delete the stored one, or to store one for an
    # epoch that was never signed.
    conn = sqlite3.connect(db_path)
    try:
        conn.execute("PRAGMA foreign_keys = ON")
        for statement, refusal in (
            ("UPDATE countersignatures SET counter_signature = zeroblob(64)", "immutable"),
            ("DELETE FROM countersignatures", "immutable"),
            (f"INSERT INTO countersignatures VALUES ('{NS}', 9, zeroblob(64))", "FOREIGN KEY"),
        ):
            # IntegrityError, not any DatabaseError: a typo in the SQL must not pass.
            with pytest.raises(sqlite3.IntegrityError, match=refusal):
                conn.execute(statement)
    finally:
        conn.close()
    assert service.store.countersignature(NS, 1) == good


@given(st.binary(max_size=300))
def test_random_bodies_raise_only_codec_errors(body: bytes) -> None:
    try:
        signature = witness_api.countersignature_from_json(body)
    except CodecError:
        return
    assert len(signature) == 64
    assert (
        witness_api.countersignature_from_json(
            json.dumps(witness_api.countersignature_to_json(signature)).encode()
        )
        == signature
    )


_GROUP_ORDER = 2**252 + 27742317777372353535851937790883648493  # RFC 8032 §5.1, L


def _another_valid_signature(seed: bytes, message: bytes, nonce: int) -> bytes:
    """An RFC 8032 signature with a chosen nonce: valid, but not the deterministic one."""
    digest = hashlib.sha512(seed).digest()
    scalar = bytearray(digest[:32])
    scalar[0] &= 248
    scalar[31] &= 127
    scalar[31] |= 64
    secret = int.from_bytes(scalar, "little")
    public = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
    r = nonce % _GROUP_ORDER
    out = ctypes.create_string_buffer(32)
    base_noclamp = pysodium.sodium.crypto_scalarmult_ed25519_base_noclamp
    assert base_noclamp(out, r.to_bytes(32, "little")) == 0
    big_r = out.raw
    k = int.from_bytes(hashlib.sha512(big_r + public + message).digest(), "little")
    s = (r + k * secret) % _GROUP_ORDER
    return big_r + s.to_bytes(32, "little")


def test_a_different_valid_second_counter_signature_is_a_409(
    client: httpx.Client, operator: SoftwareSigner, clock: Clock
) -> None:
    witness_signature = _witnessed(client, operator, clock, 1)
    first = countersign(operator, witness_signature)
    assert _post(client, 1, witness_api.countersignature_to_json(first)).status_code == 201
    seed = bytes([0x0A]) * 32
    assert SoftwareSigner(seed).public_key() == operator.public_key()
    second = _another_valid_signature(seed, countersignature_message(witness_signature), 12345)
    assert second != first
    verify_countersignature(operator.public_key(), witness_signature, second)  # valid, yet...
    response = _post(client, 1, witness_api.countersignature_to_json(second))
    assert response.status_code == 409
    assert response.json()["error"] == "CountersignatureExistsError"
    served = client.get(f"/namespaces/{NS}/audits/1").json()["counter_signature"]
    assert bytes.fromhex(served) == first


def test_operator_cli_posts_no_counter_signature_for_a_bundle_clients_refuse(
    service: WitnessService, operator: SoftwareSigner, clock: Clock
) -> None:
    # The epoch's artifact expires at T0 * 2: counter-signing it later builds a bundle
    # every client refuses, so the full client validation runs before anything is posted.
    service.submit(submission(operator, 1, clock))
    roots = TrustRoots(
        witness_keys=(WitnessKey(fixed_signer(0x51).public_key(), 0),),
        operator_keys=(operator.public_key(),),
        namespace=NS,
        log_origin=ORIGIN,
        log_verifier_key=NoteSigner(ORIGIN, fixed_signer(0x52)).verifier().verifier_key(),
    )
    with running_server(service) as url:
        witness = WitnessClient(url)
        try:
            with pytest.raises(TimestampError, match="expired"):
                countersign_epoch(roots, 1, operator, witness, T0 * 2 + 1)
            assert service.store.countersignature(NS, 1) is None
            countersign_epoch(roots, 1, operator, witness, clock())
        finally:
            witness.close()
    assert service.store.countersignature(NS, 1) is not None
