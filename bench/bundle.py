"""Client validation of a validation bundle, against the raw cost of its signature checks.

What is timed: :func:`bkv.client.validation.validate_bundle` on the bytes a host ships
(decode, digest, namespace, witness key lookup and signature, operator counter-signature,
strict artifact parse, epoch and time checks, C2SP checkpoint note, inclusion proof in a
log of 1000 entries, consistency proof from the client's last tree size).

Baseline, measured in the same run: the Ed25519 verifications that validation cannot avoid,
done with pyca/cryptography directly on the same bytes (witness signature over the
SignatureMessage, operator counter-signature, the operator submission signature logged in
the audit entry, log checkpoint signature; plus the two
cosignatures in the 2-of-3 cosigner case). The ratio says what our parsing and checking
cost on top of the cryptography. Samples are interleaved round-robin; GC paused; medians.
"""

from __future__ import annotations

import gc
import hashlib
import statistics
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bkv.client.state import ClientState
from bkv.client.trust import TrustRoots
from bkv.client.validation import validate_bundle
from bkv.keystore import SoftwareSigner
from bkv.protocol.artifact import FleetKeyArtifact, FleetPolicy, PublicKey
from bkv.protocol.bundle import build_bundle, encode_bundle, with_consistency_proof
from bkv.protocol.countersign import countersign, countersignature_message
from bkv.protocol.plexi import WitnessKey, sign_statement
from bkv.protocol.submission import AuditEntry, sign_submission, submission_signing_bytes
from bkv.tlog.checkpoint import Checkpoint
from bkv.tlog.cosignature import CosignatureSigner, CosignerPolicy, cosigned_message
from bkv.tlog.log import MemoryHashStore, MerkleLog
from bkv.tlog.note import Ed25519Signer as NoteSigner
from bkv.tlog.note import NoteSignature, format_note

SAMPLES = 300
LOG_SIZE = 1000
CLIENT_SIZE = 500
NOW_MS = 1_790_000_000_000
NAMESPACE = "bkv.fleet_keys.v1"
ORIGIN = "bench.example/log"


def _signer(label: str) -> SoftwareSigner:
    return SoftwareSigner(hashlib.sha256(label.encode()).digest())


def _artifact() -> bytes:
    key = hashlib.sha256(b"bench key").digest()
    return FleetKeyArtifact(
        fleet_id="fleet-bench",
        keys=(
            PublicKey("channel", "x25519", key),
            PublicKey("hsm_attestation", "ed25519", key),
            PublicKey("opaque_ake", "ristretto255", key),
        ),
        members=tuple(f"hsm-{i}" for i in range(5)),
        policy=FleetPolicy(guess_limit=10, quorum=3),
        not_before_ms=NOW_MS - 1000,
        not_after_ms=NOW_MS + 10**10,
    ).to_bytes()


class _Setup:
    """One witnessed epoch in a log of LOG_SIZE entries, and the client's pins."""

    def __init__(self, cosigned: int) -> None:
        witness, operator, log_key = _signer("witness"), _signer("operator"), _signer("log")
        cosigners = [CosignatureSigner(f"c{i}.example", _signer(f"c{i}")) for i in range(3)]
        log = MerkleLog(MemoryHashStore())
        log.append_many(hashlib.sha256(b"%d" % i).digest() for i in range(LOG_SIZE - 1))
        artifact = _artifact()
        digest = hashlib.sha256(artifact).digest()
        statement = sign_statement(witness, NAMESPACE, NOW_MS, 1, digest)
        submission = sign_submission(operator, NAMESPACE, 1, artifact, submitted_at_ms=NOW_MS)
        entry = AuditEntry(
            namespace=NAMESPACE,
            epoch=1,
            timestamp_ms=NOW_MS,
            digest=digest,
            key_id=statement.key_id,
            witness_signature=statement.signature,
            evidence_digest=b"",
            submitted_at_ms=NOW_MS,
            operator_signature=submission.operator_signature,
        ).to_bytes()
        index = log.append(entry)
        note_signer = NoteSigner(ORIGIN, log_key)
        body = Checkpoint(ORIGIN, log.size, log.root())
        text = body.text()
        signatures = [NoteSignature(ORIGIN, note_signer.key_id, note_signer.sign(text.encode()))]
        signatures += [c.cosign(body, NOW_MS // 1000) for c in cosigners[:cosigned]]
        checkpoint = format_note(text, signatures)
        bundle = build_bundle(
            artifact=artifact,
            namespace=NAMESPACE,
            epoch=1,
            statement=statement,
            counter_signature=countersign(operator, statement.signature),
            log_entry=entry,
            log_index=index,
            inclusion_proof=log.inclusion_proof(index),
            checkpoint=checkpoint,
        )
        bundle = with_consistency_proof(
            bundle, CLIENT_SIZE, log.consistency_proof(CLIENT_SIZE, log.size)
        )
        self.data = encode_bundle(bundle)
        self.state = ClientState(checkpoint_size=CLIENT_SIZE, checkpoint_root=log.root(CLIENT_SIZE))
        self.roots = TrustRoots(
            witness_keys=(WitnessKey(witness.public_key(), 0),),
            operator_keys=(operator.public_key(),),
            namespace=NAMESPACE,
            log_origin=ORIGIN,
            log_verifier_key=note_signer.verifier().verifier_key(),
            cosigner_policy=(
                CosignerPolicy(required=cosigned, cosigners=[c.verifier() for c in cosigners])
                if cosigned
                else None
            ),
        )
        # The raw signature checks, on the same bytes.
        checks = [
            (witness.public_key(), statement.signature, statement.message_bytes),
            (
                operator.public_key(),
                bundle.counter_signature,
                countersignature_message(statement.signature),
            ),
            (
                operator.public_key(),
                submission.operator_signature,
                submission_signing_bytes(NAMESPACE, 1, digest, b"", NOW_MS),
            ),
            (log_key.public_key(), signatures[0].signature, text.encode()),
        ]
        for cosigner, sig in zip(cosigners, signatures[1:], strict=False):
            checks.append(
                (
                    cosigner.verifier().public_key,
                    sig.signature[8:],
                    cosigned_message(text, NOW_MS // 1000),
                )
            )
        self.raw_checks = checks

    def validate(self) -> None:
        validate_bundle(self.data, self.roots, self.state, NOW_MS)

    def raw(self) -> None:
        # Key loading is part of the raw cost: a client holds raw 32-byte keys.
        for public_key, signature, message in self.raw_checks:
            Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)


def _medians(functions: dict[str, Callable[[], None]]) -> dict[str, float]:
    samples: dict[str, list[float]] = {name: [] for name in functions}
    gc.disable()
    try:
        for _ in range(SAMPLES):
            for name, function in functions.items():
                start = time.perf_counter_ns()
                function()
                samples[name].append((time.perf_counter_ns() - start) / 1000)
    finally:
        gc.enable()
    return {name: statistics.median(values) for name, values in samples.items()}


def run() -> list[str]:
    plain, cosigned = _Setup(cosigned=0), _Setup(cosigned=2)
    plain.validate()  # warm up and make sure both setups are valid
    cosigned.validate()
    medians = _medians(
        {
            "validate": plain.validate,
            "raw": plain.raw,
            "validate_cosigned": cosigned.validate,
            "raw_cosigned": cosigned.raw,
        }
    )
    return [
        f"bundle: {len(plain.data)} bytes, log of {LOG_SIZE} entries, client at size {CLIENT_SIZE}",
        f"validate_bundle: median {medians['validate']:.0f} us; "
        f"{len(plain.raw_checks)} raw Ed25519 verifies: {medians['raw']:.0f} us; "
        f"ratio {medians['validate'] / medians['raw']:.2f}x",
        f"validate_bundle with 2-of-3 cosigners: median {medians['validate_cosigned']:.0f} us; "
        f"{len(cosigned.raw_checks)} raw Ed25519 verifies: {medians['raw_cosigned']:.0f} us; "
        f"ratio {medians['validate_cosigned'] / medians['raw_cosigned']:.2f}x",
    ]


if __name__ == "__main__":
    for line in run():
        print(line)
