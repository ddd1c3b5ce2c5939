"""The witness service (adapter): configuration, keys, clock and store around the core.

This is the edge where time is read and keys are opened; the rules live in
:mod:`bkv.witness.core` and the SQL in :mod:`bkv.witness.store`.

Configuration (``witness.json``, written by ``bkv witness init``; paths relative to it)::

    {
      "name": "example",
      "origin": "bkv-witness/example",
      "db": "witness.db",
      "keys": {
        "statement": {"backend": "software", "seed_file": "keys/statement.seed"},
        "log":       {"backend": "software", "seed_file": "keys/log.seed"},
        "cosigner":  {"backend": "pkcs11", "pkcs11_config": "pkcs11.json",
                      "label": "witness-cosigner", "pin_env": "BKV_WITNESS_PIN"}
      }
    }
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bkv.errors import (
    CheckpointError,
    ConfigError,
    MalformedAddCheckpointError,
    NoteError,
    StorageError,
)
from bkv.keystore import Signer
from bkv.protocol import submission
from bkv.tlog import witness_protocol
from bkv.tlog.checkpoint import MAX_ORIGIN_SIZE, Checkpoint, open_checkpoint, parse_checkpoint
from bkv.tlog.cosignature import CosignatureSigner
from bkv.tlog.merkle import EMPTY_ROOT
from bkv.tlog.note import Ed25519Signer as NoteEd25519Signer
from bkv.tlog.note import NoteVerifier, parse_note, parse_verifier_key
from bkv.witness import core
from bkv.witness.keys import KEY_ROLES, KeySpec
from bkv.witness.store import WitnessStore

CONFIG_VERSION = 1


def wall_clock_ms() -> int:
    """Milliseconds since the Unix epoch (the only clock of the witness)."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class WitnessConfig:
    """Parsed ``witness.json``."""

    name: str
    origin: str
    db: Path
    keys: dict[str, KeySpec]

    @classmethod
    def load(cls, path: Path) -> WitnessConfig:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read witness config {path}: {type(exc).__name__}") from None
        want = {"version", "name", "origin", "db", "keys"}
        if not isinstance(data, dict) or set(data) != want:
            raise ConfigError(f"witness config {path} must have exactly {sorted(want)}")
        if data["version"] != CONFIG_VERSION:
            raise ConfigError(f"witness config version must be {CONFIG_VERSION}")
        for key in ("name", "origin", "db"):
            if not isinstance(data[key], str) or not data[key]:
                raise ConfigError(f"witness config: {key} must be a non-empty string")
        keys = data["keys"]
        if not isinstance(keys, dict) or set(keys) != set(KEY_ROLES):
            raise ConfigError(f"witness config: keys must be exactly {list(KEY_ROLES)}")
        base = path.parent
        return cls(
            name=data["name"],
            origin=data["origin"],
            db=base / data["db"],
            keys={role: KeySpec.from_json(keys[role], base, role) for role in KEY_ROLES},
        )

    def save(self, path: Path) -> None:
        base = path.parent
        data = {
            "version": CONFIG_VERSION,
            "name": self.name,
            "origin": self.origin,
            "db": str(self.db.relative_to(base)) if self.db.is_relative_to(base) else str(self.db),
            "keys": {role: spec.to_json(base) for role, spec in self.keys.items()},
        }
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def check_origin(origin: str) -> str:
    """A C2SP log origin: non-empty printable single line (ValueError)."""
    if (
        not isinstance(origin, str)
        or not origin
        or len(origin.encode()) > MAX_ORIGIN_SIZE
        or any(ord(c) < 0x21 or c == "+" for c in origin)
    ):
        raise ValueError("origin must be printable, without spaces or '+', at most 256 bytes")
    return origin


class WitnessService:
    """The running witness: store + keys + clock (+ optional evidence checker)."""

    def __init__(
        self,
        store: WitnessStore,
        *,
        origin: str,
        statement_signer: Signer,
        log_signer: Signer,
        cosigner_signer: Signer,
        clock: Callable[[], int] = wall_clock_ms,
        evidence_checker: core.EvidenceChecker | None = None,
    ) -> None:
        self.store = store
        self.origin = check_origin(origin)
        self.statement_signer = statement_signer
        self._log_signer = log_signer
        self._cosigner_signer = cosigner_signer
        self._log_note_signer = NoteEd25519Signer(origin, log_signer)
        self._cosigner = CosignatureSigner(origin, cosigner_signer)
        self.clock = clock
        self.evidence_checker = evidence_checker
        now = clock()
        store.ensure_witness_key(statement_signer.public_key(), now)
        if store.latest_checkpoint() is None:
            with store.transaction() as tx:
                tx.record_checkpoint(0, self.sign_checkpoint(0, EMPTY_ROOT))
        self.check_log_matches_checkpoint()

    def check_log_matches_checkpoint(self) -> None:
        """Refuse to run on a database whose log is not what its latest checkpoint signed.

        The checkpoint is written in the same transaction as the log entries, so any
        difference means the file was edited or restored from mismatched parts.
        """
        latest = self.store.latest_checkpoint()
        if latest is None:
            raise StorageError("the witness database has no checkpoint")
        size, note = latest
        try:
            checkpoint = open_checkpoint(note, self.origin, [self._log_note_signer.verifier()])
        except (NoteError, CheckpointError) as exc:
            raise StorageError(f"stored checkpoint does not verify: {exc}") from None
        with self.store.reading_log() as log:
            if (
                checkpoint.size != size
                or log.size != size
                or log.root(size) != checkpoint.root_hash
            ):
                raise StorageError("the audit log does not match its latest signed checkpoint")

    @classmethod
    def from_config(
        cls, config: WitnessConfig, clock: Callable[[], int] = wall_clock_ms
    ) -> WitnessService:
        if not config.db.exists():
            raise ConfigError(f"witness database {config.db} does not exist (run bkv witness init)")
        signers = {role: spec.load() for role, spec in config.keys.items()}
        return cls(
            WitnessStore(config.db),
            origin=config.origin,
            statement_signer=signers["statement"],
            log_signer=signers["log"],
            cosigner_signer=signers["cosigner"],
            clock=clock,
        )

    def close(self) -> None:
        """Close the store and any signer that holds a resource (PKCS#11 sessions)."""
        self.store.close()
        for signer in (self.statement_signer, self._log_signer, self._cosigner_signer):
            close = getattr(signer, "close", None)
            if callable(close):
                close()

    # --- keys as others pin them ------------------------------------------------------

    @property
    def log_verifier_key(self) -> str:
        """C2SP vkey of the audit log's checkpoint key (name = origin)."""
        return self._log_note_signer.verifier().verifier_key()

    @property
    def cosigner_verifier_key(self) -> str:
        """C2SP vkey (cosignature/v1) of the key this witness cosigns other logs with."""
        return self._cosigner.verifier().verifier_key()

    # --- the core operations --------------------------------------------------------------

    def sign_checkpoint(self, size: int, root: bytes) -> bytes:
        return Checkpoint(self.origin, size, root).sign([self._log_note_signer])

    def register_namespace(self, name: str, operator_public_key: bytes) -> core.NamespaceRecord:
        with self.store.transaction() as tx:
            return core.register_namespace(tx, name, operator_public_key, self.clock())

    def submit(self, submission: submission.Submission) -> core.Receipt:
        """Witness a submission, all or nothing (:func:`bkv.witness.core.process_submission`)."""
        now = self.clock()
        with self.store.transaction() as tx:
            return core.process_submission(
                tx,
                submission,
                statement_signer=self.statement_signer,
                sign_checkpoint=self.sign_checkpoint,
                now_ms=now,
                evidence_checker=self.evidence_checker,
            )

    def add_countersignature(self, namespace: str, epoch: int, counter_signature: bytes) -> bool:
        """Verify and store the operator's counter-signature of an epoch (True if new).

        See :func:`bkv.witness.core.record_countersignature`; one transaction.
        """
        with self.store.transaction() as tx:
            return core.record_countersignature(tx, namespace, epoch, counter_signature)

    def add_cosigned_log(self, origin: str, verifier_keys: Sequence[str]) -> None:
        for vkey in verifier_keys:
            parse_verifier_key(vkey)  # refuse a malformed key now, not at first use
        self.store.add_cosigned_log(check_origin(origin), list(verifier_keys))

    def add_checkpoint(self, body: bytes) -> bytes:
        """C2SP tlog-witness add-checkpoint: cosign a log's checkpoint; return the lines.

        Raises :class:`bkv.errors.AddCheckpointError` subclasses (``http_status``).
        """
        request = witness_protocol.parse_add_checkpoint(body)
        logs: dict[str, Sequence[NoteVerifier]] = {
            origin: [parse_verifier_key(v) for v in vkeys]
            for origin, vkeys in self.store.cosigned_logs().items()
        }
        now = self.clock()
        # Read latest, check, persist: one transaction (tlog-witness: the race between
        # two requests for one origin must not roll the cosigned size back).
        with self.store.cosigning() as state:
            origin = _origin_of(request.checkpoint)
            result = witness_protocol.add_checkpoint(
                request, logs, state.latest(origin), [self._cosigner], now
            )
            state.persist(origin, result.state)
        return result.body


def _origin_of(note: bytes) -> str:
    """The origin of a checkpoint note, parsed strictly (MalformedAddCheckpointError)."""
    try:
        text, _ = parse_note(note)
        return parse_checkpoint(text).origin
    except (NoteError, CheckpointError) as exc:
        raise MalformedAddCheckpointError(f"malformed checkpoint: {exc}") from None
