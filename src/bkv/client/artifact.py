"""The fleet-key artifact (re-export of :mod:`bkv.witness.artifact`).

The parser lives with the witness, which runs it before signing a digest, so
that the witness package does not import the client package. Clients keep
importing it from here; see :mod:`bkv.witness.artifact` for the format.
"""

from __future__ import annotations

from bkv.witness.artifact import (
    ARTIFACT_TYPE,
    ARTIFACT_VERSION,
    DIGEST_SIZE,
    KEY_LENGTHS,
    MAX_ARTIFACT_BYTES,
    MAX_ARTIFACT_SIZE,
    MAX_GUESS_LIMIT,
    MAX_ID_LENGTH,
    MAX_JSON_INT,
    MAX_KEYS,
    MAX_MEMBERS,
    REQUIRED_ROLES,
    ROLE_CHANNEL,
    ROLE_HSM_ATTESTATION,
    ROLE_OPAQUE_AKE,
    FleetKeyArtifact,
    FleetPolicy,
    PublicKey,
    artifact_digest,
    parse_artifact,
)

__all__ = [
    "ARTIFACT_TYPE",
    "ARTIFACT_VERSION",
    "DIGEST_SIZE",
    "KEY_LENGTHS",
    "MAX_ARTIFACT_BYTES",
    "MAX_ARTIFACT_SIZE",
    "MAX_GUESS_LIMIT",
    "MAX_ID_LENGTH",
    "MAX_JSON_INT",
    "MAX_KEYS",
    "MAX_MEMBERS",
    "REQUIRED_ROLES",
    "ROLE_CHANNEL",
    "ROLE_HSM_ATTESTATION",
    "ROLE_OPAQUE_AKE",
    "FleetKeyArtifact",
    "FleetPolicy",
    "PublicKey",
    "artifact_digest",
    "parse_artifact",
]
