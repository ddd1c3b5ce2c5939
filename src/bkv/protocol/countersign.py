"""The operator's counter-signature over the witness's signature (sans-IO).

Format (byte-exact)::

    message            = COUNTERSIGNATURE_CONTEXT || witness_signature
    COUNTERSIGNATURE_CONTEXT = b"bkv operator countersignature v1\\x00"   (33 bytes)
    witness_signature  = the witness's 64-byte Ed25519 signature over the
                         serialized Plexi SignatureMessage
    counter_signature  = Ed25519(operator key, message)                    (64 bytes)

The operator signs the witness's signature bytes (docs/protocol.md). We sign
those bytes behind a fixed, NUL-terminated context string, for one reason: the
operator's key also signs other things (its submissions to the witness, and
whatever else an operator key ends up signing), and without a context any
64-byte message it ever signs elsewhere would also be a valid
counter-signature over a "witness signature" equal to those 64 bytes. The
prefix makes the two uses disjoint (the same practice as C2SP signed-note's
and cosignature/v1's signed-message prefixes). The NUL cannot occur in the
ASCII context, so no other context string in bkv is a prefix of this one
(the submission context is ``b"bkv witness submission v1\\x00"``,
:data:`bkv.protocol.submission.SUBMISSION_CONTEXT`).

Signing the witness signature (not the statement) binds the counter-signature
to the statement: the client verifies the witness signature under a *pinned*
witness key, and every pinned key is checked to be a prime-order point
(:mod:`bkv.protocol.keycheck`; small-order and identity keys are refused). For
such a key ``A``, a signature ``(R, S)`` valid for two messages would need
``H(R, A, M) = H(R, A, M')`` modulo the group order, a SHA-512 collision; and
RFC 8032 §5.1.7 rejects ``S >= L``. So the 64 signature bytes name exactly one
``SignatureMessage`` (namespace, epoch, timestamp, digest), and the operator
endorses exactly this witnessed statement. (Without the key check, an identity
witness key makes ``R`` = identity, ``S`` = 0 valid for every message, and one
counter-signature would endorse them all.) We therefore keep the documented
format rather than also hashing the message and the witness key into it.

This module lives with the witness because both sides check the format: the
witness verifies a counter-signature before it stores and serves it
(``POST /namespaces/{ns}/audits/{epoch}/countersignature``), clients and
auditors verify it again (:mod:`bkv.client.validation`, :mod:`bkv.audit`).
The client package re-exports it as :mod:`bkv.protocol.countersign`; the witness
never imports the client package.
"""

from __future__ import annotations

from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bkv.errors import CounterSignatureError
from bkv.protocol.keycheck import check_ed25519_public_key
from bkv.protocol.plexi import Ed25519Signer

COUNTERSIGNATURE_CONTEXT: Final = b"bkv operator countersignature v1\x00"
ED25519_SIGNATURE_SIZE: Final = 64
ED25519_PUBLIC_KEY_SIZE: Final = 32

__all__ = [
    "COUNTERSIGNATURE_CONTEXT",
    "ED25519_PUBLIC_KEY_SIZE",
    "ED25519_SIGNATURE_SIZE",
    "Ed25519Signer",
    "countersign",
    "countersignature_message",
    "verify_countersignature",
]


def countersignature_message(witness_signature: bytes) -> bytes:
    """The exact bytes the operator signs: context || witness signature."""
    if len(witness_signature) != ED25519_SIGNATURE_SIZE:
        raise ValueError("witness signature must be 64 bytes")
    return COUNTERSIGNATURE_CONTEXT + bytes(witness_signature)


def countersign(signer: Ed25519Signer, witness_signature: bytes) -> bytes:
    """Counter-sign a witness signature with the operator's key (software or PKCS#11)."""
    signature = signer.sign(countersignature_message(witness_signature))
    if len(signature) != ED25519_SIGNATURE_SIZE:
        raise ValueError("signer did not return a 64-byte Ed25519 signature")
    return signature


def verify_countersignature(
    operator_public_key: bytes, witness_signature: bytes, counter_signature: bytes
) -> None:
    """Raise :class:`CounterSignatureError` unless the counter-signature verifies."""
    check_ed25519_public_key(operator_public_key, "operator public key")
    if len(counter_signature) != ED25519_SIGNATURE_SIZE:
        raise CounterSignatureError("counter-signature must be 64 bytes")
    key = Ed25519PublicKey.from_public_bytes(operator_public_key)
    try:
        key.verify(counter_signature, countersignature_message(witness_signature))
    except InvalidSignature:
        raise CounterSignatureError(
            "operator counter-signature does not verify under the operator key"
        ) from None
