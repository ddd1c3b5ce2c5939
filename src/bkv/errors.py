"""The one exception hierarchy of bkv.

Rules (docs/architecture.md, "Errors"):

- Every failure of a check raises a subclass of :class:`BkvError` that names
  what failed. Verification never returns ``False``.
- Misuse by a caller (wrong type, impossible argument) is ``TypeError`` or
  ``ValueError``, not a ``BkvError``: it is a bug, not an attack.
- Messages never contain secrets: no keys, passwords, seeds, session keys or
  plaintexts. They may contain public sizes, field names, epochs and digests.

Add new classes under the most specific existing parent, with a one-line
docstring saying what failed.
"""

from __future__ import annotations


class BkvError(Exception):
    """Base of every error bkv raises on purpose."""


# --- encoding ---------------------------------------------------------------


class CodecError(BkvError):
    """Bytes are not the one canonical encoding of a message."""


class TruncatedError(CodecError):
    """The input ended before the structure did."""


class TrailingBytesError(CodecError):
    """Bytes remain after a complete structure."""


class SizeLimitError(CodecError):
    """A field or message exceeds its named size limit (or is empty where it may not be)."""


class UnknownTagError(CodecError):
    """An unknown message type, version or domain tag."""


class NonCanonicalError(CodecError):
    """A value has more than one encoding and this is not the canonical one."""


class InvalidValueError(CodecError):
    """A decoded field holds a value its schema does not allow (e.g. not an enum member)."""


# --- cryptography -----------------------------------------------------------


class CryptoError(BkvError):
    """A cryptographic operation failed."""


class InvalidPointError(CryptoError):
    """Bytes are not the canonical encoding of a non-identity group element."""


class InvalidScalarError(CryptoError):
    """Bytes are not a canonical scalar, or the scalar is zero where it may not be."""


class DeriveKeyPairError(CryptoError):
    """RFC 9497 DeriveKeyPair exhausted its counter (section 3.2.1)."""


class InverseError(CryptoError):
    """A zero scalar has no inverse (RFC 9497 Finalize / Blind)."""


class EnvelopeRecoveryError(CryptoError):
    """OPAQUE: the envelope's auth tag did not verify (wrong password or tampered record)."""


class ServerAuthenticationError(CryptoError):
    """OPAQUE: the server's MAC in KE2 did not verify (RFC 9807 section 6.4.4)."""


class ClientAuthenticationError(CryptoError):
    """OPAQUE: the client's MAC in KE3 did not verify (RFC 9807 section 6.4.5)."""


class DecryptionError(CryptoError):
    """An AEAD or HPKE open failed: wrong key, wrong context or tampered ciphertext."""


# --- verification of signed evidence ----------------------------------------


class VerificationError(BkvError):
    """A signature, proof or binding did not verify."""


class SignatureError(VerificationError):
    """A signature did not verify under the expected key."""


class WitnessSignatureError(SignatureError):
    """The witness's signature over the SignatureMessage bytes did not verify."""


class CounterSignatureError(SignatureError):
    """The operator's counter-signature over the witness signature did not verify."""


class UnknownKeyError(VerificationError):
    """A signature names a key that is not pinned or not yet valid."""


class DigestMismatchError(VerificationError):
    """A digest does not match the bytes it claims to cover."""


class RecordMismatchError(DigestMismatchError):
    """A sealed record blob is not the one the record tree holds for its id (stale or swapped)."""


class NamespaceMismatchError(VerificationError):
    """A statement is for another namespace than the one expected."""


class EpochRollbackError(VerificationError):
    """An epoch is older than the newest one already accepted."""


class TimestampError(VerificationError):
    """A timestamp is in the future or too old for the policy."""


class ConsensusAuthError(VerificationError):
    """A consensus message or log entry is not authentic (wrong key, fleet, sender or receiver)."""


class ProofError(VerificationError):
    """A Merkle inclusion or consistency proof did not verify."""


class InclusionProofError(ProofError):
    """The inclusion proof does not lead to the checkpoint's root."""


class ConsistencyProofError(ProofError):
    """The consistency proof does not link the two tree heads."""


class RecordProofError(ProofError):
    """A record tree proof does not lead from the trusted tree head to its record id's answer."""


class StaleProofError(RecordProofError):
    """A record tree proof was read at another version of the tree than the trusted head."""


class ProofKeyMismatchError(RecordProofError):
    """A record tree proof is for another record id than the one asked for or changed."""


class NoteError(VerificationError):
    """A C2SP signed note is malformed or its signatures do not satisfy the policy."""


class CheckpointError(VerificationError):
    """A C2SP checkpoint is malformed or for the wrong origin."""


class CosignerPolicyError(VerificationError):
    """Fewer cosigners than the policy requires signed the checkpoint."""


class AttestationError(VerificationError):
    """Deployment evidence or an HSM attestation did not verify."""


class EvidenceError(AttestationError):
    """Deployment evidence did not verify (bkv.protocol.evidence; docs/audit.md §7)."""


class EvidenceFormatError(EvidenceError):
    """The bytes are not the one canonical encoding of a v1 evidence document within limits."""


class DeviceChainError(EvidenceError):
    """A device certificate chain does not verify to the vendor root, or is not the member's key."""


class AttestationSignatureError(EvidenceError):
    """A member's statement signature does not verify under its device attestation key."""


class StatementMismatchError(EvidenceError):
    """A signed statement binds another fleet, keys, measurement, members, policy or transcript."""


class DuplicateDeviceError(EvidenceError):
    """Two members are one device (same attestation key, certificate serial or subject)."""


class DatacenterError(EvidenceError):
    """Two members of the fleet are in the same datacenter."""


class QuorumError(EvidenceError):
    """Fewer members signed the evidence than the policy's quorum or a strict majority."""


class MeasurementMismatchError(EvidenceError):
    """The attested code measurement is not the one expected (rebuilt from the source)."""


class FleetKeyMismatchError(EvidenceError):
    """Published fleet keys (an artifact, the witness's log) are not the attested ones."""


class ArtifactError(VerificationError):
    """A fleet-key artifact is malformed or lacks a required key role."""


class BundleError(VerificationError):
    """A validation bundle is malformed or inconsistent."""


class AuditError(VerificationError):
    """The witness's public record breaks an audit rule (gap, repeated digest, hidden entry)."""


class FetchError(BkvError):
    """A remote service gave no usable response (HTTP error, timeout, oversized body)."""


# --- the vault ---------------------------------------------------------------


class VaultError(BkvError):
    """The vault refused or could not complete a request."""


class WrongPasswordError(VaultError):
    """The password was wrong; ``attempts_left`` says how many tries remain."""

    def __init__(self, attempts_left: int) -> None:
        super().__init__(f"wrong password, {attempts_left} attempts left")
        self.attempts_left = attempts_left


class RecordDestroyedError(VaultError):
    """The record no longer exists: destroyed at the guess limit, deleted, or never made."""


class RecordExistsError(VaultError):
    """A registration would replace a record whose counter is in use."""


class FleetUnreachableError(VaultError):
    """No quorum of the fleet could be reached in time."""


class RateLimitedError(VaultError):
    """The host refused the request under its rate limit; try again later."""


class RetryAfterError(RateLimitedError):
    """Rate limited; ``retry_after_seconds`` is the host's suggested wait (None if not given)."""

    def __init__(self, message: str, retry_after_seconds: int | None) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class ProtocolStateError(VaultError):
    """A message arrived out of order, was replayed, or belongs to no open session."""


class UnauthorizedError(VaultError):
    """The caller is not authenticated for this account or operation."""


class VaultFullError(VaultError):
    """The HSM holds its maximum number of accounts and cannot register another."""


class UnauthenticatedRejectionError(VaultError):
    """The host sent in the clear a refusal the HSM only ever sends sealed: it is forged."""


# --- the witness ---------------------------------------------------------------


class WitnessError(BkvError):
    """The witness refused a submission."""


class EpochConflictError(WitnessError):
    """The epoch is not the last signed epoch plus one."""


class DigestReusedError(WitnessError):
    """This digest was already signed in this namespace."""


class UnknownNamespaceError(WitnessError):
    """The namespace is not registered with the witness."""


class AddCheckpointError(WitnessError):
    """A tlog-witness add-checkpoint request was refused; ``http_status`` is the spec's status."""

    http_status = 400


class MalformedAddCheckpointError(AddCheckpointError):
    """The add-checkpoint body or its checkpoint is malformed (HTTP 400)."""

    http_status = 400


class CheckpointSignatureRejectedError(AddCheckpointError):
    """No trusted log key verified the checkpoint, or one failed to (HTTP 403)."""

    http_status = 403


class UnknownLogOriginError(AddCheckpointError):
    """The checkpoint's origin is not a log this witness knows (HTTP 404)."""

    http_status = 404


class CheckpointSizeConflictError(AddCheckpointError):
    """The old size is not the latest cosigned size; ``current_size`` says what is (HTTP 409)."""

    http_status = 409

    def __init__(self, current_size: int) -> None:
        super().__init__(f"old size does not match the latest cosigned size {current_size}")
        self.current_size = current_size


class CheckpointConsistencyError(AddCheckpointError):
    """The consistency proof or the empty-tree root hash is wrong (HTTP 422)."""

    http_status = 422


class NamespaceExistsError(WitnessError):
    """The namespace is already registered with the witness."""


class UnknownEpochError(WitnessError):
    """The witness never signed this epoch of the namespace."""


class CountersignatureExistsError(WitnessError):
    """Another counter-signature is already stored for this epoch (they are immutable)."""


class SubmissionSignatureError(SignatureError):
    """The operator's signature over a witness submission did not verify."""


# --- storage and configuration ----------------------------------------------


class StorageError(BkvError):
    """Persistent state is missing, corrupt or failed to authenticate."""


class SealingError(StorageError):
    """Sealed state failed to open: wrong sealing key, tampered or rolled back."""


class KeystoreError(StorageError):
    """A key store (PKCS#11 token or key file) is missing, locked or refused an operation."""


class StateRollbackError(SealingError):
    """Sealed state is older than (or forked from) the HSM's monotonic NV counter."""


class NvCounterError(KeystoreError):
    """The HSM's monotonic NV counter is missing, malformed or could not be advanced."""


class NvCounterConflictError(NvCounterError):
    """The NV counter no longer holds the value the advance expected: another writer moved it."""


class HsmFailedError(StorageError):
    """The HSM stopped serving after a persistence failure; restart it to re-check its state."""


class KeyNotFoundError(KeystoreError):
    """No key with the requested label is in the key store."""


class KeyExistsError(KeystoreError):
    """A key with that label already exists; keys are never overwritten."""


class ConfigError(BkvError):
    """A configuration file is missing, malformed or inconsistent."""


class DirectoryLockedError(ConfigError):
    """Another process holds the HSM's private directory (or token counter) lock."""


# --- encrypted backups (docs/backup.md) ----------------------------------------


class BackupError(BkvError):
    """An encrypted backup could not be read, or a recovery key could not be accepted."""


class BackupFormatError(BackupError):
    """The bytes are not a bkv backup this version reads (magic, version, chunk size, archive)."""


class BackupKeyError(BackupError):
    """The header MAC did not verify: the key is wrong (or the header was modified)."""


class BackupTamperedError(BackupError):
    """A chunk did not authenticate: modified, reordered, spliced from another backup or cut."""


class BackupTruncatedError(BackupTamperedError):
    """The backup ends before its final chunk (cut at a chunk boundary or inside the header)."""


class BackupTrailingDataError(BackupTamperedError):
    """Bytes follow the final chunk of the backup."""


class BackupUnsafeEntryError(BackupError):
    """An authenticated archive entry would land outside the restore directory, or is a device."""


class RecoveryKeyError(BackupError):
    """A typed recovery key is malformed or fails its checksum; ``group`` says where, if known."""

    def __init__(self, message: str, group: int | None = None) -> None:
        super().__init__(message)
        self.group = group


class ConsensusError(BkvError):
    """The fleet cannot take a change now (no leader here, or too much in flight)."""


class NotLeaderError(ConsensusError):
    """This member is not the fleet's leader; ``leader`` names the one it knows of, if any."""

    def __init__(self, leader: str | None) -> None:
        super().__init__("not the leader" if leader is None else f"not the leader ({leader} is)")
        self.leader = leader
