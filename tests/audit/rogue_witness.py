"""A witness made of the real parts (plexi, AuditEntry, MerkleLog, tiles, notes) that can lie.

It serves the same paths as the HTTP witness through the audit's WitnessSource interface,
so the audit core can be fed records an honest witness would never produce: repeated
digests, gaps, hidden entries, backwards timestamps, misplaced log entries.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from bkv.audit.verify import AuditPins
from bkv.errors import FetchError
from bkv.keystore import SoftwareSigner
from bkv.protocol.artifact import FleetKeyArtifact, FleetPolicy, PublicKey
from bkv.protocol.plexi import SignedStatement, WitnessKey, sign_statement
from bkv.protocol.submission import AuditEntry, sign_submission
from bkv.tlog import tiles
from bkv.tlog.checkpoint import Checkpoint
from bkv.tlog.cosignature import CosignatureSigner
from bkv.tlog.log import MemoryHashStore, MerkleLog
from bkv.tlog.note import Ed25519Signer as NoteSigner
from bkv.tlog.note import format_note, parse_note

NAMESPACE = "bkv.fleet_keys.v1"
ORIGIN = "rogue.test/log"
T0 = 1_790_000_000_000


def key(label: str) -> SoftwareSigner:
    return SoftwareSigner(hashlib.sha256(label.encode()).digest())


def artifact(seed: str, *, not_before_ms: int = 0) -> bytes:
    k = hashlib.sha256(seed.encode()).digest()
    return FleetKeyArtifact(
        fleet_id="fleet-r",
        keys=(PublicKey("channel", "x25519", k), PublicKey("opaque_ake", "ristretto255", k)),
        members=("hsm-1",),
        policy=FleetPolicy(guess_limit=10, quorum=1),
        not_before_ms=not_before_ms,
        not_after_ms=T0 * 2,
    ).to_bytes()


@dataclass
class Served:
    statement: SignedStatement
    artifact: bytes
    index: int
    entry: bytes


@dataclass
class RogueWitness:
    witness: SoftwareSigner = field(default_factory=lambda: key("rogue-witness"))
    operator: SoftwareSigner = field(default_factory=lambda: key("rogue-operator"))
    log_key: SoftwareSigner = field(default_factory=lambda: key("rogue-log"))
    log: MerkleLog = field(default_factory=lambda: MerkleLog(MemoryHashStore()))
    served: dict[int, Served] = field(default_factory=dict)
    last_epoch: int | None = None
    #: Counter-signatures served per epoch (hex; what an operator posted, or a lie).
    counter_signatures: dict[int, str] = field(default_factory=dict)
    #: Checkpoints signed after each append, by tree size (``/checkpoints/<size>``).
    history: dict[int, bytes] = field(default_factory=dict)
    #: Cosigners (cosignature/v1) that sign every served checkpoint.
    cosigners: list[CosignatureSigner] = field(default_factory=list)

    def sign(
        self,
        data: bytes,
        epoch: int,
        *,
        timestamp_ms: int | None = None,
        namespace: str = NAMESPACE,
        operator: SoftwareSigner | None = None,
        serve_as: int | None = None,
        log: bool = True,
    ) -> Served:
        timestamp_ms = T0 + epoch if timestamp_ms is None else timestamp_ms
        digest = hashlib.sha256(data).digest()
        statement = sign_statement(self.witness, namespace, timestamp_ms, epoch, digest)
        submission = sign_submission(
            operator or self.operator, namespace, epoch, data, submitted_at_ms=timestamp_ms
        )
        entry = AuditEntry(
            namespace=namespace,
            epoch=epoch,
            timestamp_ms=timestamp_ms,
            digest=digest,
            key_id=statement.key_id,
            witness_signature=statement.signature,
            evidence_digest=b"",
            submitted_at_ms=timestamp_ms,
            operator_signature=submission.operator_signature,
        ).to_bytes()
        index = self.log.append(entry) if log else self.log.size
        if log:
            self.history[self.log.size] = self.checkpoint()
        served = Served(statement, data, index, entry)
        if namespace == NAMESPACE and serve_as != 0:
            self.served[serve_as or epoch] = served
        return served

    # --- pins -----------------------------------------------------------------------

    def pins(self, **overrides: Any) -> AuditPins:
        values: dict[str, Any] = {
            "witness_keys": (WitnessKey(self.witness.public_key(), 0),),
            "operator_keys": (self.operator.public_key(),),
            "log_origin": ORIGIN,
            "log_verifier_key": NoteSigner(ORIGIN, self.log_key).verifier().verifier_key(),
        }
        values.update(overrides)
        return AuditPins(**values)

    # --- WitnessSource ------------------------------------------------------------------

    def get_json(self, path: str) -> Any:
        if path == f"/namespaces/{NAMESPACE}":
            last = max(self.served, default=0) if self.last_epoch is None else self.last_epoch
            return {"name": NAMESPACE, "last_verified_epoch": last}
        prefix = f"/namespaces/{NAMESPACE}/audits/"
        if path.startswith(prefix):
            served = self.served.get(int(path[len(prefix) :]))
            if served is None:
                raise FetchError(f"GET {path}: HTTP 404")
            message = served.statement.message
            return {
                "namespace": message.namespace,
                "timestamp": message.timestamp_ms,
                "epoch": message.epoch,
                "digest": message.digest.hex(),
                "signature": served.statement.signature.hex(),
                "key_id": served.statement.key_id,
                "serialized_message": served.statement.message_bytes.hex(),
                "log_index": served.index,
                "log_entry": served.entry.hex(),
                "inclusion_proof": [],
                "checkpoint": self.checkpoint().decode(),
                "artifact": served.artifact.hex(),
                "counter_signature": self.counter_signatures.get(message.epoch),
            }
        raise FetchError(f"GET {path}: HTTP 404")

    def checkpoint(self) -> bytes:
        body = Checkpoint(ORIGIN, self.log.size, self.log.root())
        note = body.sign([NoteSigner(ORIGIN, self.log_key)])
        if not self.cosigners:
            return note
        text = body.text()
        signatures = [*parse_note(note)[1]]
        signatures += [c.cosign(body, T0 // 1000) for c in self.cosigners]
        return format_note(text, signatures)

    def get_bytes(self, path: str, max_size: int) -> bytes:
        if path == "/checkpoint":
            data = self.checkpoint()
        elif path.startswith("/checkpoints/"):
            note = self.history.get(int(path.removeprefix("/checkpoints/")))
            if note is None:
                raise FetchError(f"GET {path}: HTTP 404")
            data = note
        else:
            tile = tiles.parse_tile_path(path.lstrip("/"))
            if tile.level == tiles.ENTRIES_LEVEL:
                data = tiles.read_entry_bundle(self.log, tile)
            else:
                data = tiles.read_tile(self.log, tile)
        if len(data) > max_size:
            raise FetchError(f"GET {path}: response over {max_size} bytes")
        return data
