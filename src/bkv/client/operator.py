"""Operator/host side: build the fleet-key artifact, turn the witness's receipt into a bundle.

:func:`artifact_from_public_keys` makes the fleet-key artifact from the
``public-keys.json`` that ``bkv hsm init`` writes (keys by role) plus the fleet
metadata the operator declares (members, guess limit, quorum, validity).
:func:`next_epoch` reads the witness's Plexi ``last-verified-epoch`` answer.
``bkv operator publish`` (:mod:`bkv.cli.operator`) is the I/O around these.

The operator submits an artifact to the witness (:func:`bkv.witness.core.sign_submission`,
``POST /namespaces/{ns}/submissions``), receives a receipt (the Plexi
``SignatureResponse`` JSON plus ``log_index``, ``log_entry``, ``inclusion_proof``
and ``checkpoint``), counter-signs the witness signature with its operator key
(software or PKCS#11 :class:`bkv.keystore.Signer`) and builds the bundle the
host attaches to vault responses. Nothing here is trusted by clients: a wrong
receipt only yields a bundle that fails validation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from bkv.client.artifact import (
    DIGEST_SIZE,
    FleetKeyArtifact,
    FleetPolicy,
    PublicKey,
)
from bkv.client.bundle import (
    MAX_CHECKPOINT_SIZE,
    MAX_LOG_ENTRY_SIZE,
    ValidationBundle,
    build_bundle,
)
from bkv.client.countersign import Ed25519Signer, countersign
from bkv.errors import ArtifactError, CodecError, SizeLimitError
from bkv.tlog.merkle import HASH_SIZE, MAX_PROOF_HASHES
from bkv.wire import canonical_json
from bkv.witness import plexi
from bkv.witness.api import parse_hex, parse_uint64

#: Fields of the witness receipt this module reads (others are ignored, as serde does).
RECEIPT_FIELDS: Final = frozenset(
    {
        "serialized_message",
        "signature",
        "key_id",
        "log_index",
        "log_entry",
        "inclusion_proof",
        "checkpoint",
    }
)


def statement_from_json(data: Mapping[str, Any]) -> plexi.SignedStatement:
    """The witness statement from a Plexi ``SignatureResponse`` JSON object (CodecError)."""
    _require(data, {"serialized_message", "signature", "key_id"})
    message = parse_hex(
        data["serialized_message"],
        "serialized_message",
        max_bytes=plexi.MAX_SIGNATURE_MESSAGE_BYTES,
    )
    signature = parse_hex(
        data["signature"], "signature", max_bytes=64, exact=plexi.ED25519_SIGNATURE_SIZE
    )
    key_id = parse_uint64(data["key_id"], "key_id")
    if key_id > 0xFF:
        raise CodecError("key_id must be one byte")
    return plexi.SignedStatement(message_bytes=message, signature=signature, key_id=key_id)


def proof_from_json(data: Mapping[str, Any]) -> tuple[bytes, int, tuple[bytes, ...], bytes]:
    """(log entry, log index, inclusion proof, checkpoint note) from receipt/audit JSON."""
    _require(data, {"log_index", "log_entry", "inclusion_proof", "checkpoint"})
    entry = parse_hex(data["log_entry"], "log_entry", max_bytes=MAX_LOG_ENTRY_SIZE)
    index = parse_uint64(data["log_index"], "log_index")
    hashes = data["inclusion_proof"]
    if not isinstance(hashes, list) or len(hashes) > MAX_PROOF_HASHES:
        raise SizeLimitError(f"inclusion_proof must be a list of at most {MAX_PROOF_HASHES}")
    proof = tuple(
        parse_hex(h, "inclusion_proof[]", max_bytes=HASH_SIZE, exact=HASH_SIZE) for h in hashes
    )
    note = data["checkpoint"]
    if not isinstance(note, str) or not 0 < len(note) <= MAX_CHECKPOINT_SIZE:
        raise SizeLimitError(f"checkpoint must be a note of 1..{MAX_CHECKPOINT_SIZE} characters")
    checkpoint = note.encode("utf-8")
    if len(checkpoint) > MAX_CHECKPOINT_SIZE:
        raise SizeLimitError(f"checkpoint over {MAX_CHECKPOINT_SIZE} bytes")
    return entry, index, proof, checkpoint


def bundle_from_receipt(
    artifact: bytes, receipt: Mapping[str, Any], operator: Ed25519Signer
) -> ValidationBundle:
    """Counter-sign the witness signature in ``receipt`` and assemble the bundle."""
    statement = statement_from_json(receipt)
    entry, index, proof, checkpoint = proof_from_json(receipt)
    message = plexi.decode_signature_message(statement.message_bytes)
    return build_bundle(
        artifact=artifact,
        namespace=message.namespace,
        epoch=message.epoch,
        statement=statement,
        counter_signature=countersign(operator, statement.signature),
        log_entry=entry,
        log_index=index,
        inclusion_proof=proof,
        checkpoint=checkpoint,
    )


#: Largest public-keys.json read (a few keys by role).
MAX_PUBLIC_KEYS_SIZE: Final = 16 * 1024
_PUBLIC_KEYS_FIELDS: Final = frozenset({"fleet_id", "keys", "policy"})
_KEY_FIELDS: Final = frozenset({"algorithm", "public_key", "role"})


def majority(member_count: int) -> int:
    """The smallest strict majority of ``member_count`` HSMs (two quorums always intersect)."""
    if member_count < 1:
        raise ValueError("a fleet has at least one member")
    return member_count // 2 + 1


def artifact_from_public_keys(
    public_keys_json: bytes,
    *,
    fleet_id: str,
    members: tuple[str, ...],
    guess_limit: int,
    not_before_ms: int,
    not_after_ms: int,
    quorum: int | None = None,
    evidence_digest: bytes | None = None,
) -> FleetKeyArtifact:
    """The fleet-key artifact for the keys in ``public-keys.json`` (``bkv hsm init``).

    The file says which fleet the keys belong to and the guess limit the HSMs enforce
    at most; the operator's ``fleet_id`` must be that fleet (the HSMs refuse requests
    addressed to another) and its ``guess_limit`` must not exceed the HSMs' limit (the
    artifact would promise clients a policy the fleet does not keep). ``members`` are
    sorted; ``quorum`` defaults to the strict majority. Everything else is checked by
    :class:`FleetKeyArtifact` (:class:`ArtifactError`).
    """
    if not 0 < len(public_keys_json) <= MAX_PUBLIC_KEYS_SIZE:
        raise ArtifactError(f"public-keys.json must be 1..{MAX_PUBLIC_KEYS_SIZE} bytes")
    try:
        value = canonical_json.loads(public_keys_json, max_size=MAX_PUBLIC_KEYS_SIZE)
    except CodecError as exc:
        raise ArtifactError(f"public-keys.json is not canonical JSON: {exc}") from None
    if not isinstance(value, dict) or set(value) != _PUBLIC_KEYS_FIELDS:
        raise ArtifactError(f"public-keys.json must have exactly {sorted(_PUBLIC_KEYS_FIELDS)}")
    if value["fleet_id"] != fleet_id:
        raise ArtifactError(f"the public keys are of fleet {value['fleet_id']!r}, not {fleet_id!r}")
    policy = value["policy"]
    hsm_limit = policy.get("guess_limit") if isinstance(policy, dict) else None
    if not isinstance(hsm_limit, int) or isinstance(hsm_limit, bool):
        raise ArtifactError("public-keys.json has no policy.guess_limit")
    if guess_limit > hsm_limit:
        raise ArtifactError(f"guess limit {guess_limit} exceeds the HSMs' limit {hsm_limit}")
    keys = value["keys"]
    if not isinstance(keys, list) or not keys:
        raise ArtifactError("public-keys.json has no keys")
    if not members:
        raise ArtifactError("a fleet has at least one member")
    if evidence_digest is not None and len(evidence_digest) != DIGEST_SIZE:
        raise ArtifactError("evidence digest must be 32 bytes")
    return FleetKeyArtifact(
        fleet_id=fleet_id,
        keys=tuple(sorted((_public_key(k) for k in keys), key=lambda k: k.role)),
        members=tuple(sorted(members)),
        policy=FleetPolicy(
            guess_limit=guess_limit,
            quorum=majority(len(members)) if quorum is None else quorum,
        ),
        not_before_ms=not_before_ms,
        not_after_ms=not_after_ms,
        evidence_digest=evidence_digest,
    )


def _public_key(value: Any) -> PublicKey:
    if not isinstance(value, dict) or set(value) != _KEY_FIELDS:
        raise ArtifactError(f"each key must have exactly {sorted(_KEY_FIELDS)}")
    role, algorithm, key_hex = value["role"], value["algorithm"], value["public_key"]
    if not all(isinstance(v, str) for v in (role, algorithm, key_hex)):
        raise ArtifactError("key fields must be strings")
    if len(key_hex) % 2 or any(c not in "0123456789abcdef" for c in key_hex):
        raise ArtifactError(f"key {role!r} is not lowercase hex")
    return PublicKey(role=role, algorithm=algorithm, key=bytes.fromhex(key_hex))


def next_epoch(last_verified: Mapping[str, Any] | None) -> int:
    """The epoch to submit: 1 if nothing was signed yet, else Plexi's last verified + 1.

    ``last_verified`` is the witness's ``GET /namespaces/{ns}/last-verified-epoch``
    JSON, or None when the witness answered that no epoch was signed yet. The witness
    refuses any other epoch anyway (epoch = last + 1); this only avoids a refusal.
    """
    if last_verified is None:
        return 1
    if not isinstance(last_verified, Mapping):
        raise CodecError("last-verified-epoch is not a JSON object")
    epoch = parse_uint64(last_verified.get("epoch"), "epoch")
    if epoch < 1:
        raise CodecError("last-verified-epoch names epoch 0")
    return epoch + 1


def _require(data: Mapping[str, Any], fields: set[str]) -> None:
    if not isinstance(data, Mapping):
        raise CodecError("witness response is not a JSON object")
    missing = fields - set(data)
    if missing:
        raise CodecError(f"witness response lacks {sorted(missing)}")
