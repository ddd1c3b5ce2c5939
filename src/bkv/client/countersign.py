"""The operator's counter-signature (re-export of :mod:`bkv.witness.countersign`).

The format is defined once, in :mod:`bkv.witness.countersign`, because the
witness verifies counter-signatures before it stores and serves them and must
not import the client package. This module keeps the client-side name.
"""

from __future__ import annotations

from bkv.witness.countersign import (
    COUNTERSIGNATURE_CONTEXT,
    ED25519_PUBLIC_KEY_SIZE,
    ED25519_SIGNATURE_SIZE,
    Ed25519Signer,
    countersign,
    countersignature_message,
    verify_countersignature,
)

__all__ = [
    "COUNTERSIGNATURE_CONTEXT",
    "ED25519_PUBLIC_KEY_SIZE",
    "ED25519_SIGNATURE_SIZE",
    "Ed25519Signer",
    "countersign",
    "countersignature_message",
    "verify_countersignature",
]
