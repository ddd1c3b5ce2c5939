"""Test fixtures for the client tests: artifacts, keys and (later) a whole witnessed world.

Imported by basename (tests are rootdir-relative without packages), hence the unique name.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from bkv.client.trust import TrustRoots
from bkv.keystore import SoftwareSigner
from bkv.protocol.artifact import FleetKeyArtifact, FleetPolicy, PublicKey
from bkv.protocol.bundle import ValidationBundle, build_bundle, with_consistency_proof
from bkv.protocol.countersign import Ed25519Signer, countersign
from bkv.protocol.plexi import SignedStatement, WitnessKey, sign_statement
from bkv.protocol.submission import AuditEntry, sign_submission
from bkv.tlog.checkpoint import Checkpoint
from bkv.tlog.cosignature import CosignatureSigner, CosignerPolicy
from bkv.tlog.log import MemoryHashStore, MerkleLog
from bkv.tlog.note import Ed25519Signer as NoteEd25519Signer
from bkv.tlog.note import NoteSignature, format_note

NOW_MS = 1_790_000_000_000
DAY_MS = 24 * 3600 * 1000


def det_bytes(label: str, size: int = 32) -> bytes:
    """Deterministic test bytes (not secret material of anything real)."""
    out = b""
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{label}/{counter}".encode()).digest()
        counter += 1
    return out[:size]


def make_artifact(
    fleet_id: str = "fleet-a",
    *,
    seed: str = "a",
    members: tuple[str, ...] = ("hsm-1", "hsm-2", "hsm-3"),
    quorum: int = 2,
    guess_limit: int = 10,
    not_before_ms: int = NOW_MS - DAY_MS,
    not_after_ms: int = NOW_MS + 365 * DAY_MS,
    evidence_digest: bytes | None = None,
    extra_roles: tuple[str, ...] = ("hsm_attestation",),
) -> FleetKeyArtifact:
    keys = [
        PublicKey("channel", "x25519", det_bytes(f"{seed}/channel")),
        PublicKey("opaque_ake", "ristretto255", det_bytes(f"{seed}/ake")),
    ]
    keys += [PublicKey(role, "ed25519", det_bytes(f"{seed}/{role}")) for role in extra_roles]
    keys.sort(key=lambda k: k.role)
    return FleetKeyArtifact(
        fleet_id=fleet_id,
        keys=tuple(keys),
        members=members,
        policy=FleetPolicy(guess_limit=guess_limit, quorum=quorum),
        not_before_ms=not_before_ms,
        not_after_ms=not_after_ms,
        evidence_digest=evidence_digest,
    )


def signer(label: str) -> SoftwareSigner:
    """A deterministic software Ed25519 signer (bkv.keystore's software backend)."""
    return SoftwareSigner(det_bytes(f"ed25519/{label}"))


# --- a witnessed world built from the real parts -------------------------------------
#
# The witness side is assembled from bkv.protocol.plexi (statements), bkv.witness.core
# (AuditEntry, operator submission signatures) and bkv.tlog (Merkle log, checkpoints,
# cosignatures) directly, so tests can also make what an honest witness would refuse
# (future timestamps, a rotated-out key, forks) and check that the client refuses it.

NAMESPACE = "bkv.fleet_keys.v1"
ORIGIN = "witness.test/bkv-log"


@dataclass
class Published:
    """One witnessed epoch: what the witness returned and where it sits in the log."""

    artifact: bytes
    statement: SignedStatement
    entry: bytes
    index: int


@dataclass
class World:
    """A witness (statement, log and cosigner keys), an operator and a log in memory."""

    namespace: str = NAMESPACE
    witness: SoftwareSigner = field(default_factory=lambda: signer("witness"))
    operator: Ed25519Signer = field(default_factory=lambda: signer("operator"))
    log_key: SoftwareSigner = field(default_factory=lambda: signer("log"))
    cosigners: list[CosignatureSigner] = field(
        default_factory=lambda: [
            CosignatureSigner(f"cosigner{i}.test", signer(f"cosigner{i}")) for i in range(3)
        ]
    )
    log: MerkleLog = field(default_factory=lambda: MerkleLog(MemoryHashStore()))
    published: list[Published] = field(default_factory=list)

    @property
    def log_signer(self) -> NoteEd25519Signer:
        return NoteEd25519Signer(ORIGIN, self.log_key)

    def roots(self, **overrides: Any) -> TrustRoots:
        values: dict[str, Any] = {
            "witness_keys": (WitnessKey(self.witness.public_key(), 0),),
            "operator_keys": (self.operator.public_key(),),
            "namespace": NAMESPACE,
            "log_origin": ORIGIN,
            "log_verifier_key": self.log_signer.verifier().verifier_key(),
        }
        values.update(overrides)
        return TrustRoots(**values)

    def policy(self, required: int) -> CosignerPolicy:
        return CosignerPolicy(required=required, cosigners=[c.verifier() for c in self.cosigners])

    def publish(
        self,
        artifact: bytes,
        epoch: int | None = None,
        *,
        timestamp_ms: int = NOW_MS,
        witness: SoftwareSigner | None = None,
        namespace: str | None = None,
        evidence: bytes | None = None,
    ) -> Published:
        """Witness ``artifact`` as the next epoch and append its AuditEntry to the log."""
        epoch = len(self.published) + 1 if epoch is None else epoch
        namespace = self.namespace if namespace is None else namespace
        digest = hashlib.sha256(artifact).digest()
        statement = sign_statement(witness or self.witness, namespace, timestamp_ms, epoch, digest)
        submission = sign_submission(
            self.operator,
            namespace,
            epoch,
            artifact,
            submitted_at_ms=timestamp_ms,
            evidence=evidence,
        )
        entry = AuditEntry(
            namespace=namespace,
            epoch=epoch,
            timestamp_ms=timestamp_ms,
            digest=digest,
            key_id=statement.key_id,
            witness_signature=statement.signature,
            evidence_digest=submission.evidence_digest,
            submitted_at_ms=timestamp_ms,
            operator_signature=submission.operator_signature,
        ).to_bytes()
        index = self.log.append(entry)
        published = Published(artifact, statement, entry, index)
        self.published.append(published)
        return published

    def checkpoint(self, size: int | None = None, cosigned_by: int = 0) -> bytes:
        size = self.log.size if size is None else size
        body = Checkpoint(ORIGIN, size, self.log.root(size))
        text = body.text()
        signatures = [
            NoteSignature(
                self.log_signer.name, self.log_signer.key_id, self.log_signer.sign(text.encode())
            )
        ]
        for cosigner in self.cosigners[:cosigned_by]:
            signatures.append(cosigner.cosign(body, NOW_MS // 1000))
        return format_note(text, signatures)

    def bundle(
        self,
        published: Published,
        *,
        size: int | None = None,
        cosigned_by: int = 0,
        client_size: int = 0,
        counter_signer: Ed25519Signer | None = None,
    ) -> ValidationBundle:
        size = self.log.size if size is None else size
        bundle = build_bundle(
            artifact=published.artifact,
            namespace=self.namespace,
            epoch=published.statement.message.epoch,
            statement=published.statement,
            counter_signature=countersign(
                counter_signer or self.operator, published.statement.signature
            ),
            log_entry=published.entry,
            log_index=published.index,
            inclusion_proof=self.log.inclusion_proof(published.index, size),
            checkpoint=self.checkpoint(size, cosigned_by),
        )
        if client_size and client_size != size:
            lo, hi = sorted((client_size, size))
            bundle = with_consistency_proof(bundle, client_size, self.log.consistency_proof(lo, hi))
        return bundle
