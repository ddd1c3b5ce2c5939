"""C2SP tlog-cosignature (https://c2sp.org/tlog-cosignature), cosignature/v1, Ed25519.

A cosignature is a signed-note signature line on a checkpoint:

- key ID = ``SHA-256(name || 0x0A || 0x04 || 32-byte public key)[:4]``
  (signature type 0x04, so a cosigner's vkey is ``name+hex8+base64(0x04||pk)``);
- signed message = ``"cosignature/v1\\ntime <T>\\n" || checkpoint note text``
  with ``T`` the POSIX time in *seconds*, ASCII decimal without leading zeros;
- signature bytes = ``uint64be(T) || Ed25519 signature`` (72 bytes).

:class:`CosignatureVerifier` plugs into :func:`bkv.tlog.note.open_note`;
:class:`CosignatureSigner` into :func:`bkv.tlog.note.sign_note` (but use
:meth:`CosignatureSigner.cosign` to get a line for an existing checkpoint).

:class:`CosignerPolicy` is the client rule "at least k of these n cosigners
signed this checkpoint", raising :class:`bkv.errors.CosignerPolicyError`.
A cosignature from a configured cosigner that fails to verify is an error
(NoteError), not a silent skip.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from bkv.errors import CosignerPolicyError, NoteError, SignatureError
from bkv.tlog.checkpoint import Checkpoint
from bkv.tlog.note import (
    NamedEd25519Key,
    Note,
    NoteSignature,
    ed25519_verify,
    format_verifier_key,
    key_id,
    load_ed25519_public_key,
    split_verifier_key,
)

ALG_COSIGNATURE_V1 = 0x04
"""signed-note signature type of timestamped Ed25519 cosignatures."""

COSIGNATURE_V1_HEADER = "cosignature/v1\n"

COSIGNATURE_SIZE = 8 + 64
"""uint64 timestamp + Ed25519 signature."""

MAX_TIMESTAMP = (1 << 63) - 1
"""tlog-cosignature: the timestamp MUST NOT exceed 2**63 - 1."""

MAX_COSIGNERS = 64
"""Most cosigners a policy may list."""


def cosigned_message(checkpoint_text: str, timestamp: int) -> bytes:
    """The bytes a cosignature/v1 signs: header, time line, checkpoint text."""
    if not 0 <= timestamp <= MAX_TIMESTAMP:
        raise ValueError("timestamp out of range")
    return (COSIGNATURE_V1_HEADER + f"time {timestamp}\n" + checkpoint_text).encode()


@dataclass(frozen=True)
class CosignatureVerifier:
    """Verifies cosignature/v1 lines of one cosigner; a :class:`bkv.tlog.note.NoteVerifier`."""

    name: str
    public_key: bytes
    key_id: int = field(init=False)

    def __post_init__(self) -> None:
        load_ed25519_public_key(self.public_key)
        object.__setattr__(self, "key_id", key_id(self.name, ALG_COSIGNATURE_V1, self.public_key))

    def verify(self, text: bytes, signature: bytes) -> None:
        """Raise SignatureError unless ``signature`` = time || sig cosigns checkpoint ``text``."""
        self.verify_timestamped(text, signature)

    def verify_timestamped(self, text: bytes, signature: bytes) -> int:
        """Like :meth:`verify`, returning the cosignature's timestamp (seconds)."""
        if len(signature) != COSIGNATURE_SIZE:
            raise SignatureError("cosignature is not 72 bytes")
        timestamp = int.from_bytes(signature[:8], "big")
        if timestamp > MAX_TIMESTAMP:
            raise SignatureError("cosignature timestamp exceeds 2**63 - 1")
        try:
            checkpoint_text = text.decode("utf-8", errors="strict")
        except UnicodeDecodeError:
            raise SignatureError("cosigned text is not UTF-8") from None
        message = cosigned_message(checkpoint_text, timestamp)
        ed25519_verify(load_ed25519_public_key(self.public_key), message, signature[8:])
        return timestamp

    def verifier_key(self) -> str:
        """The vkey string ``name+hex8+base64(0x04 || public key)``."""
        return format_verifier_key(self.name, ALG_COSIGNATURE_V1, self.public_key)


def parse_cosigner_key(vkey: str) -> CosignatureVerifier:
    """Parse a cosigner vkey (signature type 0x04); NoteError."""
    name, _, alg, public_key = split_verifier_key(vkey)
    if alg != ALG_COSIGNATURE_V1:
        raise NoteError(f"verifier key type 0x{alg:02x} is not cosignature/v1 (0x04)")
    return CosignatureVerifier(name, public_key)


class CosignatureSigner(NamedEd25519Key):
    """Makes cosignature/v1 signatures with any :class:`RawEd25519Signer`."""

    ALG = ALG_COSIGNATURE_V1

    def verifier(self) -> CosignatureVerifier:
        """The matching verifier."""
        return CosignatureVerifier(self._name, self._public_key)

    def cosign(self, checkpoint: Checkpoint, timestamp: int) -> NoteSignature:
        """Cosign ``checkpoint`` at POSIX time ``timestamp`` (seconds); return the signature."""
        text = checkpoint.text()
        sig = self._key.sign(cosigned_message(text, timestamp))
        return NoteSignature(self._name, self._key_id, timestamp.to_bytes(8, "big") + sig)


@dataclass(frozen=True)
class VerifiedCosignature:
    """A cosignature that verified: who and when (seconds)."""

    name: str
    key_id: int
    timestamp: int


@dataclass(frozen=True)
class CosignerPolicy:
    """Require at least ``required`` distinct cosigners out of ``cosigners`` on a checkpoint."""

    required: int
    cosigners: Sequence[CosignatureVerifier]

    def __post_init__(self) -> None:
        if not 0 <= self.required <= len(self.cosigners):
            raise ValueError("required must be between 0 and the number of cosigners")
        if len(self.cosigners) > MAX_COSIGNERS:
            raise ValueError(f"at most {MAX_COSIGNERS} cosigners")
        ids = {(c.name, c.key_id) for c in self.cosigners}
        keys = {c.public_key for c in self.cosigners}
        if len(ids) != len(self.cosigners) or len(keys) != len(self.cosigners):
            raise ValueError("cosigners must be distinct (name, key ID) and distinct keys")

    def verify_note(self, note: Note) -> list[VerifiedCosignature]:
        """Check the cosignatures among ``note``'s signatures; return the verified ones.

        Raises NoteError if a configured cosigner's signature is bad, and
        CosignerPolicyError if fewer than ``required`` distinct cosigners verified.
        """
        known = {(c.name, c.key_id): c for c in self.cosigners}
        text = note.text_bytes
        verified: list[VerifiedCosignature] = []
        for sig in note.signatures + note.unverified:
            cosigner = known.get((sig.name, sig.key_id))
            if cosigner is None:
                continue
            try:
                ts = cosigner.verify_timestamped(text, sig.signature)
            except SignatureError:
                raise NoteError(f"cosignature by {sig.name} does not verify") from None
            verified.append(VerifiedCosignature(sig.name, sig.key_id, ts))
        # Distinctness: note parsing already rejects a repeated (name, key ID).
        if len(verified) < self.required:
            raise CosignerPolicyError(
                f"{len(verified)} of the required {self.required} cosigners signed the checkpoint"
            )
        return verified

    def verify_checkpoint(self, checkpoint: Checkpoint) -> list[VerifiedCosignature]:
        """Like :meth:`verify_note` for a checkpoint returned by ``open_checkpoint``."""
        if checkpoint.note is None:
            raise ValueError("checkpoint carries no note; use open_checkpoint")
        return self.verify_note(checkpoint.note)
