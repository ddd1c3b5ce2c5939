"""The witness over real HTTP on 127.0.0.1: Plexi API, submissions, tiles, tlog-witness."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import independent_plexi_verifier as indep
import pytest
from witness_helpers import (
    NS,
    ORIGIN,
    Clock,
    artifact_for,
    db_dump,
    fixed_signer,
    running_server,
    submission,
)

from bkv.keystore import SoftwareSigner
from bkv.protocol import plexi, witness_api
from bkv.protocol import submission as submission_format
from bkv.tlog import tiles
from bkv.tlog.checkpoint import Checkpoint, open_checkpoint
from bkv.tlog.cosignature import CosignatureVerifier
from bkv.tlog.log import MemoryHashStore, MerkleLog
from bkv.tlog.merkle import leaf_hash, verify_inclusion
from bkv.tlog.note import Ed25519Signer, Ed25519Verifier, open_note
from bkv.tlog.witness_protocol import SIZE_CONTENT_TYPE, format_add_checkpoint
from bkv.witness.service import WitnessService

HERE = Path(__file__).parent


@pytest.fixture
def base_url(service: WitnessService) -> Iterator[str]:
    with running_server(service) as url:
        yield url


@pytest.fixture
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=10) as c:
        yield c


def post_submission(client: httpx.Client, sub: submission_format.Submission) -> httpx.Response:
    return client.post(
        f"/namespaces/{sub.namespace}/submissions", json=witness_api.submission_to_json(sub)
    )


def test_submission_and_plexi_api(
    client: httpx.Client, operator: SoftwareSigner, clock: Clock
) -> None:
    for epoch in (1, 2):
        response = post_submission(client, submission(operator, epoch, clock))
        assert response.status_code == 201, response.text
        clock.advance(10)
    receipt = response.json()
    assert list(receipt)[:9] == [
        "version",
        "ciphersuite",
        "namespace",
        "timestamp",
        "epoch",
        "digest",
        "signature",
        "key_id",
        "serialized_message",
    ]
    info = client.get("/info").json()
    witness_key = fixed_signer(0x51).public_key()
    assert info["keys"] == [{"public_key": witness_key.hex(), "not_before": clock.now - 20}]
    assert info["origin"] == ORIGIN

    audit = client.get(f"/namespaces/{NS}/audits/2").json()
    assert audit["epoch"] == 2 and audit["namespace"] == NS
    assert audit["ciphersuite"] == audit["version"] == 1
    assert audit["key_id"] == witness_key[-1]
    assert bytes.fromhex(audit["artifact"]) == artifact_for(2)
    plexi.verify_statement(
        bytes.fromhex(audit["serialized_message"]),
        bytes.fromhex(audit["signature"]),
        audit["key_id"],
        [plexi.WitnessKey(witness_key)],
    )
    checkpoint = open_checkpoint(
        audit["checkpoint"].encode(),
        ORIGIN,
        [Ed25519Verifier(ORIGIN, fixed_signer(0x52).public_key())],
    )
    verify_inclusion(
        leaf_hash(bytes.fromhex(audit["log_entry"])),
        audit["log_index"],
        checkpoint.size,
        [bytes.fromhex(h) for h in audit["inclusion_proof"]],
        checkpoint.root_hash,
    )
    raw = client.get(audit["artifact_uri"])
    assert raw.content == artifact_for(2)
    assert audit["evidence_uri"] is None

    namespaces = client.get("/namespaces").json()["namespaces"]
    assert [n["name"] for n in namespaces] == [NS]
    one = client.get(f"/namespaces/{NS}").json()
    assert one["last_verified_epoch"] == 2
    assert one["status"] == "Online"
    assert one["root"] == f"1/{hashlib.sha256(artifact_for(1)).hexdigest()}"
    assert one["operator_public_key"] == operator.public_key().hex()
    last = client.get(f"/namespaces/{NS}/last-verified-epoch").json()
    assert last["epoch"] == 2
    assert last["end_hash"] == audit["digest"]
    assert last["start_hash"] == hashlib.sha256(artifact_for(1)).hexdigest()


def test_unknown_things_are_404(client: httpx.Client) -> None:
    assert client.get("/namespaces/nope").status_code == 404
    assert client.get("/namespaces/nope/audits/1").json()["error"] == "UnknownNamespaceError"
    assert client.get(f"/namespaces/{NS}/audits/1").status_code == 404
    assert client.get(f"/namespaces/{NS}/last-verified-epoch").status_code == 404
    assert client.get(f"/namespaces/{NS}/audits/01").status_code == 400
    assert client.get(f"/namespaces/{NS}/audits/-1").status_code == 400
    ns_info = client.get(f"/namespaces/{NS}").json()
    assert ns_info["status"] == "Initialization" and "last_verified_epoch" not in ns_info


def _body(sub: submission_format.Submission, **changes: Any) -> dict[str, Any]:
    body = witness_api.submission_to_json(sub)
    body.update(changes)
    return body


def test_bad_submissions_get_clear_errors_and_change_nothing(
    client: httpx.Client, operator: SoftwareSigner, clock: Clock, db_path: Path
) -> None:
    assert post_submission(client, submission(operator, 1, clock)).status_code == 201
    good = submission(operator, 2, clock)
    url = f"/namespaces/{NS}/submissions"
    before = db_dump(db_path)
    cases: list[tuple[Any, int, str]] = [
        (b"not json", 400, "CodecError"),
        (b'{"epoch": 2, "epoch": 2}', 400, "NonCanonicalError"),
        (b"[]", 400, "CodecError"),
        (b"[" * 100_000, 400, "CodecError"),
        (b'{"epoch": ' + b"9" * 5000 + b"}", 400, "CodecError"),
        (b'{"epoch": NaN}', 400, "NonCanonicalError"),
        (b"\xff{}", 400, "CodecError"),
        (b"", 400, "SizeLimitError"),
        ({k: v for k, v in _body(good).items() if k != "digest"}, 400, "CodecError"),
        (_body(good, extra=1), 400, "CodecError"),
        (_body(good, digest=good.digest.hex().upper()), 400, "NonCanonicalError"),
        (_body(good, digest=good.digest.hex()[:-2]), 400, "SizeLimitError"),
        (_body(good, epoch=True), 400, "CodecError"),
        (_body(good, epoch=2.0), 400, "CodecError"),
        (_body(good, epoch=-2), 400, "CodecError"),
        (_body(good, operator_signature="00" * 64), 403, "SubmissionSignatureError"),
        (_body(good, artifact=b"tampered".hex()), 422, "DigestMismatchError"),
        (witness_api.submission_to_json(submission(operator, 3, clock)), 409, "EpochConflictError"),
        (
            witness_api.submission_to_json(
                submission(operator, 1, clock, artifact=artifact_for("x"))
            ),
            409,
            "EpochConflictError",
        ),
        (
            witness_api.submission_to_json(
                submission(operator, 2, clock, artifact=artifact_for(1))
            ),
            409,
            "DigestReusedError",
        ),
        (
            witness_api.submission_to_json(submission(fixed_signer(0x0B), 2, clock)),
            403,
            "SubmissionSignatureError",
        ),
        (
            witness_api.submission_to_json(
                submission_format.sign_submission(
                    operator, NS, 2, artifact_for(2), submitted_at_ms=1
                )
            ),
            422,
            "TimestampError",
        ),
    ]
    for body, status, error in cases:
        if isinstance(body, bytes):
            response = client.post(url, content=body)
        else:
            response = client.post(url, json=body)
        assert response.status_code == status, (body, response.text)
        assert response.json()["error"] == error, response.text
        assert response.json()["message"]
    unknown = client.post("/namespaces/other.ns/submissions", json=_body(good))
    assert unknown.status_code == 404 and unknown.json()["error"] == "UnknownNamespaceError"
    assert db_dump(db_path) == before
    assert post_submission(client, good).status_code == 201


def test_oversized_bodies_get_413(client: httpx.Client, db_path: Path) -> None:
    before = db_dump(db_path)
    url = f"/namespaces/{NS}/submissions"
    big = b"x" * (witness_api.MAX_SUBMISSION_BODY + 1)
    response = client.post(url, content=big)
    assert response.status_code == 413 and response.json()["error"] == "SizeLimitError"

    def chunks() -> Iterator[bytes]:
        for _ in range(witness_api.MAX_SUBMISSION_BODY // 65536 + 2):
            yield b"y" * 65536

    streamed = client.post(url, content=chunks())
    assert streamed.status_code == 413
    assert client.request("GET", "/info", content=b"body").status_code == 413
    assert client.post("/add-checkpoint", content=b"z" * 200_000).status_code == 413
    assert db_dump(db_path) == before


def test_tiles_and_checkpoint(client: httpx.Client, operator: SoftwareSigner, clock: Clock) -> None:
    receipts = [post_submission(client, submission(operator, e, clock)).json() for e in (1, 2, 3)]
    response = client.get("/checkpoint")
    assert response.headers["cache-control"] == "no-cache"
    checkpoint = open_checkpoint(
        response.content, ORIGIN, [Ed25519Verifier(ORIGIN, fixed_signer(0x52).public_key())]
    )
    assert checkpoint.size == 3

    def reader(tile: tiles.Tile) -> bytes:
        r = client.get("/" + tile.path())
        assert r.status_code == 200, tile.path()
        return r.content

    for receipt in receipts:
        entry = bytes.fromhex(receipt["log_entry"])
        tiles.verify_inclusion_with_tiles(
            leaf_hash(entry), receipt["log_index"], 3, checkpoint.root_hash, reader
        )
    bundle = client.get("/tile/entries/000.p/3")
    assert bundle.headers["cache-control"] == "public, max-age=60"
    entries = tiles.decode_entry_bundle(bundle.content, 3)
    assert [e.hex() for e in entries] == [r["log_entry"] for r in receipts]
    assert client.get("/tile/0/000.p/4").status_code == 404  # beyond the tree
    assert client.get("/tile/0/000").status_code == 404  # not full yet
    assert client.get("/tile/0/x000/000.p/1").status_code == 400  # non-canonical path
    proof = client.get("/log/inclusion", params={"index": 0, "size": 3}).json()["proof"]
    verify_inclusion(
        leaf_hash(bytes.fromhex(receipts[0]["log_entry"])),
        0,
        3,
        [bytes.fromhex(h) for h in proof],
        checkpoint.root_hash,
    )
    assert client.get("/log/inclusion", params={"index": 3, "size": 3}).status_code == 400
    assert client.get("/log/consistency", params={"old": 1, "size": 3}).status_code == 200
    assert client.get("/log/consistency", params={"old": 1}).status_code == 400


@pytest.mark.slow
def test_full_tiles_are_immutable(
    service: WitnessService, operator: SoftwareSigner, clock: Clock
) -> None:
    for epoch in range(1, tiles.TILE_WIDTH + 2):
        service.submit(submission(operator, epoch, clock))
    with running_server(service) as url, httpx.Client(base_url=url, timeout=10) as client:
        full = client.get("/tile/0/000")
        assert full.status_code == 200
        assert full.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert len(full.content) == 32 * tiles.TILE_WIDTH
        assert client.get("/tile/entries/001.p/1").status_code == 200
        assert client.get("/tile/1/000.p/1").status_code == 200


def test_independent_verifier_in_process(
    base_url: str, client: httpx.Client, operator: SoftwareSigner, clock: Clock
) -> None:
    for epoch in (1, 2, 3):
        assert post_submission(client, submission(operator, epoch, clock)).status_code == 201
    for epoch in (1, 2, 3):
        assert indep.verify_epoch(base_url, NS, epoch)["epoch"] == epoch
    info = client.get("/info").json()
    audit = client.get(f"/namespaces/{NS}/audits/2").json()
    tampered = [
        audit | {"digest": "00" * 32},
        audit | {"timestamp": audit["timestamp"] + 1, "serialized_message": None},
        audit | {"signature": "11" * 64},
        audit | {"key_id": (audit["key_id"] + 1) % 256},
        audit | {"ciphersuite": 2, "version": 2},
    ]
    for bad in tampered:
        with pytest.raises(indep.VerificationFailedError):
            indep.verify_response(info, bad)
    late_key = {"keys": [dict(info["keys"][0], not_before=audit["timestamp"] + 1)]}
    with pytest.raises(indep.VerificationFailedError):
        indep.verify_response(late_key, audit)


def test_independent_verifier_as_separate_process(
    base_url: str, client: httpx.Client, operator: SoftwareSigner, clock: Clock
) -> None:
    for epoch in (1, 2):
        assert post_submission(client, submission(operator, epoch, clock)).status_code == 201
    result = subprocess.run(
        [sys.executable, str(HERE / "independent_plexi_verifier.py"), base_url, NS, "1", "2"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "epoch 2: witness signature OK" in result.stdout
    assert "bkv modules loaded: []" in result.stdout


def test_independent_encoder_matches_plexi_vector() -> None:
    vectors = json.loads((HERE.parent / "vectors" / "plexi" / "test-vectors.json").read_text())
    v = next(v for v in vectors if v["ciphersuite"] == 1)
    message = indep.signature_message(
        1, v["namespace"], v["timestamp"], v["epoch"], bytes.fromhex(v["digest"])
    )
    indep.verify_response(
        {"keys": [{"public_key": v["verifying_key"], "not_before": 0}]},
        {
            "ciphersuite": 1,
            "namespace": v["namespace"],
            "timestamp": v["timestamp"],
            "epoch": v["epoch"],
            "digest": v["digest"],
            "signature": v["signature"],
            "key_id": v["key_id"],
            "serialized_message": message.hex(),
        },
    )


# --- tlog-witness add-checkpoint ------------------------------------------------------

LOG_ORIGIN = "example.test/log"


class ToyLog:
    """Another log (in memory) asking our witness to cosign its checkpoints."""

    def __init__(self) -> None:
        self.log = MerkleLog(MemoryHashStore())
        self.signer = Ed25519Signer(LOG_ORIGIN, fixed_signer(0x71))

    def grow(self, n: int) -> bytes:
        for i in range(n):
            self.log.append(b"entry %d" % (self.log.size + i))
        return Checkpoint(LOG_ORIGIN, self.log.size, self.log.root()).sign([self.signer])

    def request(self, old: int, note: bytes) -> bytes:
        proof = self.log.consistency_proof(old) if old else []
        return format_add_checkpoint(old, proof, note)


def test_add_checkpoint_cosigns_other_logs(
    service: WitnessService, client: httpx.Client, clock: Clock
) -> None:
    toy = ToyLog()
    service.add_cosigned_log(LOG_ORIGIN, [toy.signer.verifier().verifier_key()])
    note = toy.grow(3)
    response = client.post("/add-checkpoint", content=toy.request(0, note))
    assert response.status_code == 200, response.text
    cosigner = CosignatureVerifier(ORIGIN, fixed_signer(0x53).public_key())
    opened = open_note(note + response.content, [toy.signer.verifier(), cosigner])
    assert len(opened.signatures) == 2 and not opened.unverified

    stale = client.post("/add-checkpoint", content=toy.request(0, toy.grow(2)))
    assert stale.status_code == 409
    assert stale.headers["content-type"].startswith(SIZE_CONTENT_TYPE)
    assert stale.text == "3\n"
    assert client.post("/add-checkpoint", content=toy.request(3, toy.grow(1))).status_code == 200

    other = Ed25519Signer("unknown.test/log", fixed_signer(0x72))
    unknown_note = Checkpoint("unknown.test/log", 1, toy.log.root(1)).sign([other])
    unknown = client.post("/add-checkpoint", content=format_add_checkpoint(0, [], unknown_note))
    assert unknown.status_code == 404
    forged = Checkpoint(LOG_ORIGIN, 9, toy.log.root()).sign(
        [Ed25519Signer(LOG_ORIGIN, fixed_signer(0x73))]
    )
    assert (
        client.post("/add-checkpoint", content=format_add_checkpoint(6, [], forged)).status_code
        == 403
    )
    assert client.post("/add-checkpoint", content=b"garbage").status_code == 400
