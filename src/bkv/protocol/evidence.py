"""Deployment evidence: which devices hold a fleet's keys, running which code (sans-IO).

A fleet-key artifact says *which* keys clients must use; the deployment
evidence says *why they may*: every member of the fleet is a genuine HSM (its
device key is certified by the HSM vendor's root), the members sit in distinct
datacenters, run the code with this measurement (:mod:`bkv.protocol.measurement`),
and a majority of them signed, with their device keys, a statement binding
exactly this fleet: its id, its public keys, the measurement, the member list,
the policy and the digest of the fleet-creation transcript. The artifact names
the evidence by ``evidence_digest`` = :func:`evidence_digest` (SHA-256 of the
exact evidence bytes), the witness logs that digest, and anyone re-checks the
evidence with :func:`verify_evidence` against a vendor root they pinned
(docs/audit.md §7, "Verifying a deployment").

One document, canonical JSON (:mod:`bkv.wire.canonical_json`, RFC 8785 subset),
version 1, every field required, no other field allowed::

    {
      "fleet_id": "<id>",
      "keys": [{"algorithm": "x25519", "public_key": "<64 hex>", "role": "channel"},
               {"algorithm": "ristretto255", "public_key": "<64 hex>",
                "role": "opaque_ake"}],           # the artifact's roles and encodings
      "measurement": "<64 hex>",                  # SHA-256, bkv.protocol.measurement
      "members": [{"attestation_key": {"algorithm": "ed25519", "public_key": "<64 hex>"},
                   "certificate_chain": ["<base64 DER>", ...],   # leaf first, no root
                   "datacenter": "<id>",
                   "name": "<id>"}, ...],         # sorted by name, names unique
      "policy": {"guess_limit": <int>, "quorum": <int>},
      "statements": [{"signature": "<128 hex>", "signer": "<member name>",
                      "statement": {<the statement below>}}, ...],  # sorted by signer
      "transcript_digest": "<64 hex>",
      "type": "bkv.deployment_evidence",
      "version": 1
    }

A member's *statement* is what its device key signs (Ed25519, RFC 8032, over
the exact canonical JSON bytes of the statement, :func:`build_statement`)::

    {
      "fleet_id": ..., "keys": [...], "measurement": ..., "policy": {...},
      "members": [{"attestation_key": {...}, "datacenter": ..., "name": ...}, ...],
      "signer": "<this member's name>",
      "transcript_digest": ...,
      "type": "bkv.deployment_statement",         # the domain tag
      "version": 1
    }

The statement is carried inside the document, so that a reader sees what was
signed; :func:`verify_evidence` verifies the signature over the carried bytes
first and only then requires them to be, byte for byte, the statement this
document implies for that signer.

Every string of a valid document is an id, lowercase hex or base64, none of
which has anything to escape, so the canonical bytes of a statement are also
``json.dumps(value, sort_keys=True, separators=(",", ":"))`` (docs/audit.md §7
verifies the signatures with that and pyca/cryptography alone).

Device certificates: an X.509 v3 chain from the member's leaf up to (not
including) the vendor root. The leaf is an end-entity certificate
(basicConstraints ``cA`` false, keyUsage ``digitalSignature`` and not
``keyCertSign``) whose extended key usage holds :data:`DEVICE_EKU_OID`
("bkv-hsm-device") and whose public key is the member's Ed25519 attestation
key; every issuer is a CA (critical basicConstraints ``cA`` true, within its
path length; keyUsage ``keyCertSign``); every certificate is valid at ``now_ms``
and has no critical extension other than these three (RFC 5280 §4.2).

Ed25519 device keys: the emulated HSM keeps its keys in a PKCS#11 token
(SoftHSM2, :mod:`bkv.keystore.pkcs11`), which signs with Ed25519 (``CKM_EDDSA``)
like every other bkv signer.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding

from bkv.crypto.ed25519 import is_strong_ed25519_key
from bkv.crypto.interfaces import Signer
from bkv.errors import (
    AttestationSignatureError,
    CodecError,
    DatacenterError,
    DeviceChainError,
    DuplicateDeviceError,
    EvidenceFormatError,
    FleetKeyMismatchError,
    MeasurementMismatchError,
    QuorumError,
    StatementMismatchError,
)
from bkv.protocol import submission
from bkv.protocol.artifact import (
    MAX_GUESS_LIMIT,
    MAX_MEMBERS,
    ROLE_CHANNEL,
    ROLE_OPAQUE_AKE,
    FleetKeyArtifact,
    FleetPolicy,
    PublicKey,
    parse_artifact,
)
from bkv.wire import canonical_json

if TYPE_CHECKING:
    # Imported where used: cryptography.x509 loads ``datetime`` (validity is expressed
    # in datetimes) and ``urllib``/``socket`` (general names), which a sans-IO core may
    # not load at import time (tests/test_architecture.py). Nothing here reads a
    # clock: validity is compared with ``now_ms``, in epoch milliseconds.
    from cryptography import x509

__all__ = [
    "ATTESTATION_ALGORITHM",
    "DEVICE_EKU_OID",
    "EVIDENCE_TYPE",
    "EVIDENCE_VERSION",
    "FLEET_KEY_ALGORITHMS",
    "MAX_CERTIFICATE_SIZE",
    "MAX_CHAIN_LENGTH",
    "MAX_EVIDENCE_BYTES",
    "STATEMENT_TYPE",
    "Evidence",
    "FleetDescription",
    "Member",
    "SignedStatement",
    "VerifiedEvidence",
    "VerifiedMember",
    "assemble_evidence",
    "build_statement",
    "check_artifact_matches",
    "check_evidence_for_artifact",
    "decode_evidence",
    "evidence_digest",
    "sign_statement",
    "statement_value",
    "verify_evidence",
]

EVIDENCE_TYPE: Final = "bkv.deployment_evidence"
STATEMENT_TYPE: Final = "bkv.deployment_statement"
EVIDENCE_VERSION: Final = 1

#: Largest evidence document: the witness's limit on submitted evidence, so that
#: every document this module accepts can be submitted and logged.
MAX_EVIDENCE_BYTES: Final = submission.MAX_EVIDENCE_BYTES
#: Most certificates in one member's chain (leaf and up to two intermediates).
MAX_CHAIN_LENGTH: Final = 3
#: Largest DER certificate (an Ed25519 or P-256 device certificate is under 1 KiB).
MAX_CERTIFICATE_SIZE: Final = 4096
#: Deepest nesting of the document (statements -> statement -> members -> key).
_MAX_DEPTH: Final = 8

#: The "bkv-hsm-device" extended key usage of a device certificate. Under the
#: ITU-T X.667 arc 2.25 (an OID from a UUID, no registration needed):
#: UUID f96a2a63-badf-42fe-bc3f-a81910f62327.
DEVICE_EKU_OID: Final = "2.25.331529014180074305023769272801962631975"

#: The algorithm of every device attestation key in version 1.
ATTESTATION_ALGORITHM: Final = "ed25519"
#: The fleet keys the evidence attests: role -> algorithm (as in the artifact).
FLEET_KEY_ALGORITHMS: Final[Mapping[str, str]] = {
    ROLE_CHANNEL: "x25519",
    ROLE_OPAQUE_AKE: "ristretto255",
}

DIGEST_SIZE: Final = 32
ED25519_KEY_SIZE: Final = 32
ED25519_SIGNATURE_SIZE: Final = 64

_ID_RE: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_LOWER_HEX_RE: Final = re.compile(r"[0-9a-f]*")
_TOP_FIELDS: Final = frozenset(
    {
        "fleet_id",
        "keys",
        "measurement",
        "members",
        "policy",
        "statements",
        "transcript_digest",
        "type",
        "version",
    }
)
_MEMBER_FIELDS: Final = frozenset({"attestation_key", "certificate_chain", "datacenter", "name"})
_ATTESTATION_KEY_FIELDS: Final = frozenset({"algorithm", "public_key"})
_KEY_FIELDS: Final = frozenset({"algorithm", "public_key", "role"})
_POLICY_FIELDS: Final = frozenset({"guess_limit", "quorum"})
_STATEMENT_ENTRY_FIELDS: Final = frozenset({"signature", "signer", "statement"})


# --- the document ----------------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    """One fleet member: its name, datacenter, device attestation key and certificate chain.

    ``certificate_chain`` holds DER certificates, the device's own first, each
    issued by the next, the last issued by the vendor root (not included).
    """

    name: str
    datacenter: str
    attestation_key: bytes
    certificate_chain: tuple[bytes, ...]

    def __post_init__(self) -> None:
        _check_id(f"member name {self.name!r}", self.name)
        _check_id(f"member {self.name}: datacenter", self.datacenter)
        if not isinstance(self.attestation_key, bytes) or len(self.attestation_key) != 32:
            raise EvidenceFormatError(f"member {self.name}: attestation key must be 32 bytes")
        # A small-order key would verify one forged signature for every statement.
        if not is_strong_ed25519_key(self.attestation_key):
            raise EvidenceFormatError(
                f"member {self.name}: attestation key is not a prime-order Ed25519 point"
            )
        chain = self.certificate_chain
        if not isinstance(chain, tuple) or not 1 <= len(chain) <= MAX_CHAIN_LENGTH:
            raise EvidenceFormatError(
                f"member {self.name}: a certificate chain holds 1..{MAX_CHAIN_LENGTH} certificates"
            )
        for der in chain:
            if not isinstance(der, bytes) or not 0 < len(der) <= MAX_CERTIFICATE_SIZE:
                raise EvidenceFormatError(
                    f"member {self.name}: a certificate must be 1..{MAX_CERTIFICATE_SIZE} bytes"
                )


@dataclass(frozen=True)
class FleetDescription:
    """What every statement binds: the fleet, its keys, code, members, policy and transcript."""

    fleet_id: str
    keys: tuple[PublicKey, ...]
    measurement: bytes
    members: tuple[Member, ...]
    policy: FleetPolicy
    transcript_digest: bytes

    def __post_init__(self) -> None:
        _check_id("fleet_id", self.fleet_id)
        _check_fleet_keys(self.keys)
        _check_digest("measurement", self.measurement)
        _check_digest("transcript_digest", self.transcript_digest)
        _check_members(self.members)
        _check_policy(self.policy, len(self.members))

    def member(self, name: str) -> Member:
        """The member called ``name``; ``ValueError`` if the fleet has none."""
        for member in self.members:
            if member.name == name:
                return member
        raise ValueError(f"{name!r} is not a member of fleet {self.fleet_id}")


@dataclass(frozen=True)
class SignedStatement:
    """One member's statement (canonical JSON bytes) and its Ed25519 signature over them."""

    signer: str
    statement: bytes
    signature: bytes

    def __post_init__(self) -> None:
        _check_id("statement signer", self.signer)
        if not isinstance(self.statement, bytes) or not isinstance(self.signature, bytes):
            raise TypeError("statement and signature must be bytes")
        if len(self.signature) != ED25519_SIGNATURE_SIZE:
            raise EvidenceFormatError(
                f"statement of {self.signer}: signature must be {ED25519_SIGNATURE_SIZE} bytes"
            )


@dataclass(frozen=True)
class Evidence:
    """A decoded (not yet verified) evidence document; :meth:`to_bytes` is canonical."""

    fleet: FleetDescription
    statements: tuple[SignedStatement, ...]

    def __post_init__(self) -> None:
        signers = [s.signer for s in self.statements]
        if len(self.statements) > MAX_MEMBERS:
            raise EvidenceFormatError(f"more than {MAX_MEMBERS} statements")
        if len(set(signers)) != len(signers):
            raise EvidenceFormatError("two statements by one member")
        if signers != sorted(signers):
            raise EvidenceFormatError("statements must be sorted by signer")
        names = {m.name for m in self.fleet.members}
        for signer in signers:
            if signer not in names:
                raise EvidenceFormatError(f"statement signer {signer} is not a member")

    def to_json_value(self) -> dict[str, Any]:
        """The JSON value of the document (before canonical encoding)."""
        fleet = self.fleet
        return {
            "type": EVIDENCE_TYPE,
            "version": EVIDENCE_VERSION,
            "fleet_id": fleet.fleet_id,
            "keys": _keys_value(fleet.keys),
            "measurement": fleet.measurement.hex(),
            "members": [
                {
                    **_member_value(m),
                    "certificate_chain": [
                        base64.b64encode(der).decode() for der in m.certificate_chain
                    ],
                }
                for m in fleet.members
            ],
            "policy": _policy_value(fleet.policy),
            "statements": [
                {
                    "signature": s.signature.hex(),
                    "signer": s.signer,
                    "statement": _statement_object(s),
                }
                for s in self.statements
            ],
            "transcript_digest": fleet.transcript_digest.hex(),
        }

    def to_bytes(self) -> bytes:
        """The canonical JSON bytes (what :func:`evidence_digest` covers)."""
        try:
            return canonical_json.dumps(
                self.to_json_value(), max_size=MAX_EVIDENCE_BYTES, max_depth=_MAX_DEPTH
            )
        except ValueError as exc:
            raise EvidenceFormatError(f"evidence does not fit its limits: {exc}") from None


def _keys_value(keys: Sequence[PublicKey]) -> list[dict[str, str]]:
    return [{"algorithm": k.algorithm, "public_key": k.key.hex(), "role": k.role} for k in keys]


def _member_value(member: Member) -> dict[str, Any]:
    return {
        "attestation_key": {
            "algorithm": ATTESTATION_ALGORITHM,
            "public_key": member.attestation_key.hex(),
        },
        "datacenter": member.datacenter,
        "name": member.name,
    }


def _policy_value(policy: FleetPolicy) -> dict[str, int]:
    return {"guess_limit": policy.guess_limit, "quorum": policy.quorum}


def _statement_object(statement: SignedStatement) -> Any:
    """The statement bytes as the JSON object the document embeds (they must be canonical)."""
    try:
        value = canonical_json.loads(
            statement.statement, max_size=MAX_EVIDENCE_BYTES, max_depth=_MAX_DEPTH
        )
    except CodecError as exc:
        raise EvidenceFormatError(
            f"statement of {statement.signer} is not canonical JSON: {exc}"
        ) from None
    if not isinstance(value, dict):
        raise EvidenceFormatError(f"statement of {statement.signer} is not a JSON object")
    return value


def evidence_digest(evidence_bytes: bytes) -> bytes:
    """SHA-256 of the exact evidence bytes: the artifact's ``evidence_digest``."""
    if not isinstance(evidence_bytes, bytes | bytearray | memoryview):
        raise TypeError("evidence must be bytes")
    return hashlib.sha256(bytes(evidence_bytes)).digest()


# --- building (the HSMs' side, and tests) -----------------------------------------------


def statement_value(fleet: FleetDescription, signer: str) -> dict[str, Any]:
    """The JSON value of ``signer``'s statement about ``fleet`` (see the module doc)."""
    fleet.member(signer)  # ValueError for a signer outside the fleet
    return {
        "type": STATEMENT_TYPE,
        "version": EVIDENCE_VERSION,
        "fleet_id": fleet.fleet_id,
        "keys": _keys_value(fleet.keys),
        "measurement": fleet.measurement.hex(),
        "members": [_member_value(m) for m in fleet.members],
        "policy": _policy_value(fleet.policy),
        "signer": signer,
        "transcript_digest": fleet.transcript_digest.hex(),
    }


def build_statement(fleet: FleetDescription, signer: str) -> bytes:
    """The exact bytes member ``signer`` signs with its device key: canonical JSON."""
    return canonical_json.dumps(statement_value(fleet, signer), max_depth=_MAX_DEPTH)


def sign_statement(fleet: FleetDescription, signer: str, key: Signer) -> SignedStatement:
    """Build ``signer``'s statement and sign it with its device key (a :class:`Signer`).

    ``ValueError`` if ``key`` is not the member's attestation key: a device signs
    only as itself.
    """
    member = fleet.member(signer)
    if not hmac.compare_digest(key.public_key(), member.attestation_key):
        raise ValueError(f"the key given is not the attestation key of member {signer}")
    statement = build_statement(fleet, signer)
    return SignedStatement(signer=signer, statement=statement, signature=key.sign(statement))


def assemble_evidence(fleet: FleetDescription, statements: Iterable[SignedStatement]) -> bytes:
    """The canonical evidence document of ``fleet`` with these signed statements.

    Statements are put in signer order. Nothing is verified here (a builder);
    run :func:`verify_evidence` on the result before publishing it.
    """
    ordered = tuple(sorted(statements, key=lambda s: s.signer))
    return Evidence(fleet=fleet, statements=ordered).to_bytes()


# --- step 1: strict decoding -------------------------------------------------------------


def decode_evidence(data: bytes) -> Evidence:
    """Strictly decode evidence bytes (:class:`EvidenceFormatError` for anything but v1).

    Refused: empty or oversized input, anything but canonical JSON (whitespace,
    member order, escapes, duplicate names, number forms), missing or unknown
    fields, another type or version, wrong lengths, uppercase hex, non-canonical
    base64, unsorted or duplicate members or statements, a statement by a
    non-member, a quorum that is not a strict majority.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError("evidence must be bytes")
    data = bytes(data)
    if not data:
        raise EvidenceFormatError("evidence is empty")
    if len(data) > MAX_EVIDENCE_BYTES:
        raise EvidenceFormatError(f"evidence is over {MAX_EVIDENCE_BYTES} bytes")
    try:
        value = canonical_json.loads(data, max_size=MAX_EVIDENCE_BYTES, max_depth=_MAX_DEPTH)
    except CodecError as exc:
        raise EvidenceFormatError(f"evidence is not canonical JSON: {exc}") from None
    evidence = _evidence_from_json(value)
    # Whatever the schema read must re-encode to these very bytes (one spelling per
    # document, so that one evidence digest names one document).
    if evidence.to_bytes() != data:
        raise EvidenceFormatError("evidence is not in its canonical form")
    return evidence


def _evidence_from_json(value: Any) -> Evidence:
    top = _object(value, "evidence", _TOP_FIELDS)
    if top["type"] != EVIDENCE_TYPE:
        raise EvidenceFormatError(f"type must be {EVIDENCE_TYPE!r}")
    if top["version"] != EVIDENCE_VERSION or isinstance(top["version"], bool):
        raise EvidenceFormatError(f"unsupported evidence version (this reads {EVIDENCE_VERSION})")
    policy = _object(top["policy"], "policy", _POLICY_FIELDS)
    fleet = FleetDescription(
        fleet_id=_string(top["fleet_id"], "fleet_id"),
        keys=tuple(
            _key_from_json(k) for k in _array(top["keys"], "keys", len(FLEET_KEY_ALGORITHMS))
        ),
        measurement=_hex(top["measurement"], "measurement", DIGEST_SIZE),
        members=tuple(_member_from_json(m) for m in _array(top["members"], "members", MAX_MEMBERS)),
        policy=FleetPolicy(
            guess_limit=_integer(policy["guess_limit"], "policy.guess_limit"),
            quorum=_integer(policy["quorum"], "policy.quorum"),
        ),
        transcript_digest=_hex(top["transcript_digest"], "transcript_digest", DIGEST_SIZE),
    )
    statements = tuple(
        _statement_from_json(s) for s in _array(top["statements"], "statements", MAX_MEMBERS)
    )
    return Evidence(fleet=fleet, statements=statements)


def _key_from_json(value: Any) -> PublicKey:
    obj = _object(value, "keys[]", _KEY_FIELDS)
    role = _string(obj["role"], "keys[].role")
    algorithm = FLEET_KEY_ALGORITHMS.get(role)
    if algorithm is None:
        raise EvidenceFormatError(f"keys[]: unexpected role {role!r}")
    if obj["algorithm"] != algorithm:
        raise EvidenceFormatError(f"key {role}: algorithm must be {algorithm}")
    return PublicKey(role=role, algorithm=algorithm, key=_hex(obj["public_key"], role, 32))


def _member_from_json(value: Any) -> Member:
    obj = _object(value, "members[]", _MEMBER_FIELDS)
    name = _string(obj["name"], "members[].name")
    key = _object(
        obj["attestation_key"], f"member {name}: attestation_key", _ATTESTATION_KEY_FIELDS
    )
    if key["algorithm"] != ATTESTATION_ALGORITHM:
        raise EvidenceFormatError(
            f"member {name}: attestation key algorithm must be {ATTESTATION_ALGORITHM}"
        )
    chain = _array(obj["certificate_chain"], f"member {name}: certificate_chain", MAX_CHAIN_LENGTH)
    return Member(
        name=name,
        datacenter=_string(obj["datacenter"], f"member {name}: datacenter"),
        attestation_key=_hex(key["public_key"], f"member {name}: attestation key", 32),
        certificate_chain=tuple(_base64(c, f"member {name}: certificate") for c in chain),
    )


def _statement_from_json(value: Any) -> SignedStatement:
    obj = _object(value, "statements[]", _STATEMENT_ENTRY_FIELDS)
    signer = _string(obj["signer"], "statements[].signer")
    statement = obj["statement"]
    if not isinstance(statement, dict):
        raise EvidenceFormatError(f"statement of {signer} must be a JSON object")
    return SignedStatement(
        signer=signer,
        # The document is canonical, so this is the statement's span of its bytes.
        statement=canonical_json.dumps(statement, max_depth=_MAX_DEPTH),
        signature=_hex(obj["signature"], f"signature of {signer}", ED25519_SIGNATURE_SIZE),
    )


# --- schema helpers ------------------------------------------------------------------------


def _object(value: Any, where: str, fields: frozenset[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise EvidenceFormatError(f"{where} must be a JSON object")
    if value.keys() == fields:
        return value
    missing = fields - value.keys()
    if missing:
        raise EvidenceFormatError(f"{where}: missing field(s) {sorted(missing)}")
    raise EvidenceFormatError(f"{where}: unknown field(s) {sorted(value.keys() - fields)}")


def _array(value: Any, where: str, max_items: int) -> list[Any]:
    if not isinstance(value, list):
        raise EvidenceFormatError(f"{where} must be a JSON array")
    if len(value) > max_items:
        raise EvidenceFormatError(f"{where} holds more than {max_items} items")
    return value


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise EvidenceFormatError(f"{where} must be a string")
    return value


def _integer(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise EvidenceFormatError(f"{where} must be a non-negative integer")
    return int(value)


def _hex(value: Any, where: str, size: int) -> bytes:
    text = _string(value, where)
    if len(text) != 2 * size or _LOWER_HEX_RE.fullmatch(text) is None:
        raise EvidenceFormatError(f"{where} must be {2 * size} lowercase hex digits")
    return bytes.fromhex(text)


def _base64(value: Any, where: str) -> bytes:
    text = _string(value, where)
    if len(text) > 4 * ((MAX_CERTIFICATE_SIZE + 2) // 3):
        raise EvidenceFormatError(f"{where} is over {MAX_CERTIFICATE_SIZE} bytes")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise EvidenceFormatError(f"{where} is not base64") from None
    # One spelling: standard alphabet, padded, no ignored bits.
    if base64.b64encode(raw).decode("ascii") != text:
        raise EvidenceFormatError(f"{where} is not canonical base64")
    return raw


# --- invariants (shared by building and decoding) ------------------------------------------


def _check_id(where: str, value: str) -> None:
    if not isinstance(value, str) or _ID_RE.fullmatch(value) is None:
        raise EvidenceFormatError(f"{where} must match {_ID_RE.pattern}")


def _check_digest(where: str, value: bytes) -> None:
    if not isinstance(value, bytes) or len(value) != DIGEST_SIZE:
        raise EvidenceFormatError(f"{where} must be {DIGEST_SIZE} bytes")


def _check_fleet_keys(keys: tuple[PublicKey, ...]) -> None:
    if not isinstance(keys, tuple) or not all(isinstance(k, PublicKey) for k in keys):
        raise TypeError("keys must be a tuple of PublicKey")
    expected = sorted(FLEET_KEY_ALGORITHMS.items())
    if [(k.role, k.algorithm) for k in keys] != expected:
        raise EvidenceFormatError(
            "keys must be exactly, in this order, "
            + ", ".join(f"{role} ({algorithm})" for role, algorithm in expected)
        )


def _check_members(members: tuple[Member, ...]) -> None:
    if not isinstance(members, tuple) or not all(isinstance(m, Member) for m in members):
        raise TypeError("members must be a tuple of Member")
    if not 1 <= len(members) <= MAX_MEMBERS:
        raise EvidenceFormatError(f"a fleet has 1..{MAX_MEMBERS} members")
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise EvidenceFormatError("duplicate member name")
    if names != sorted(names):
        raise EvidenceFormatError("members must be sorted by name")


def _check_policy(policy: FleetPolicy, member_count: int) -> None:
    for name, value in (("guess_limit", policy.guess_limit), ("quorum", policy.quorum)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise EvidenceFormatError(f"policy.{name} must be an integer")
    if not 1 <= policy.guess_limit <= MAX_GUESS_LIMIT:
        raise EvidenceFormatError(f"policy.guess_limit must be 1..{MAX_GUESS_LIMIT}")
    # As in the artifact: two quorums must intersect (docs/properties.md §2).
    if not member_count // 2 < policy.quorum <= member_count:
        raise EvidenceFormatError("policy.quorum must be a strict majority of the members")


# --- verification ---------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedMember:
    """A member whose device certificate chain verified to the vendor root."""

    name: str
    datacenter: str
    attestation_key: bytes
    certificate_serial: int
    certificate_subject: str
    certificate_issuer: str
    chain_length: int


@dataclass(frozen=True)
class VerifiedEvidence:
    """What :func:`verify_evidence` established; only ever built after every check passed."""

    digest: bytes
    fleet_id: str
    keys: tuple[PublicKey, ...]
    measurement: bytes
    #: True when the measurement was compared with an expected one (step 7).
    measurement_checked: bool
    policy: FleetPolicy
    transcript_digest: bytes
    members: tuple[VerifiedMember, ...]
    signers: tuple[str, ...]
    vendor_root_sha256: bytes
    vendor_root_subject: str

    def key(self, role: str) -> PublicKey:
        """The attested key with this role (``KeyError`` if none)."""
        for key in self.keys:
            if key.role == role:
                return key
        raise KeyError(role)


def verify_evidence(
    evidence_bytes: bytes,
    vendor_root_der: bytes,
    *,
    now_ms: int,
    expected_measurement: bytes | None = None,
) -> VerifiedEvidence:
    """Verify deployment evidence against a pinned vendor root; raise the first failure.

    The checks, in order (each raises its own :class:`~bkv.errors.EvidenceError`;
    nothing is returned unless all pass):

    1. strict decoding: size limit, canonical JSON, schema, re-encoding equal to
       the input (:class:`EvidenceFormatError`);
    2. the vendor root is a self-signed CA valid at ``now_ms``, and every member's
       device chain verifies up to it: X.509 signatures, validity at ``now_ms``,
       basicConstraints, keyUsage and the device EKU, no unknown critical
       extension, and the leaf's key is the member's attestation key
       (:class:`DeviceChainError`);
    3. every statement's signature verifies under its signer's attestation key,
       over the exact statement bytes (:class:`AttestationSignatureError`);
    4. every statement is, byte for byte, the statement this document implies for
       its signer: same fleet id, keys, measurement, members with datacenters,
       policy and transcript digest (:class:`StatementMismatchError`);
    5. the members are distinct devices (attestation keys, certificate issuer and
       serial, certificate subjects; :class:`DuplicateDeviceError`) in distinct
       datacenters (:class:`DatacenterError`);
    6. at least ``policy.quorum`` members, and more than half of them, signed
       (:class:`QuorumError`);
    7. with ``expected_measurement``, the attested measurement equals it
       (:class:`MeasurementMismatchError`).

    ``vendor_root_der`` is the pinned root certificate (DER); ``ValueError`` if it
    is not one. The clock is the argument ``now_ms`` (docs/architecture.md#layers).
    """
    if isinstance(now_ms, bool) or not isinstance(now_ms, int) or now_ms < 0:
        raise ValueError("now_ms must be a non-negative int")
    if expected_measurement is not None and (
        not isinstance(expected_measurement, bytes) or len(expected_measurement) != DIGEST_SIZE
    ):
        raise ValueError("expected_measurement must be 32 bytes")
    evidence = decode_evidence(evidence_bytes)  # step 1
    fleet = evidence.fleet
    root = _load_root(vendor_root_der, now_ms)  # step 2
    members = tuple(_verify_chain(member, root, now_ms) for member in fleet.members)
    _verify_signatures(evidence)  # step 3
    _check_bindings(evidence)  # step 4
    _check_distinct(members)  # step 5
    _check_quorum(evidence)  # step 6
    if expected_measurement is not None and not hmac.compare_digest(  # step 7
        fleet.measurement, expected_measurement
    ):
        raise MeasurementMismatchError(
            f"the evidence attests measurement {fleet.measurement.hex()}, "
            f"expected {expected_measurement.hex()}"
        )
    return VerifiedEvidence(
        digest=evidence_digest(evidence_bytes),
        fleet_id=fleet.fleet_id,
        keys=fleet.keys,
        measurement=fleet.measurement,
        measurement_checked=expected_measurement is not None,
        policy=fleet.policy,
        transcript_digest=fleet.transcript_digest,
        members=members,
        signers=tuple(s.signer for s in evidence.statements),
        vendor_root_sha256=hashlib.sha256(vendor_root_der).digest(),
        vendor_root_subject=root.subject.rfc4514_string(),
    )


# --- step 2: certificates ----------------------------------------------------------------


def _load_root(der: bytes, now_ms: int) -> x509.Certificate:
    if not isinstance(der, bytes):
        raise TypeError("vendor_root_der must be bytes")
    from cryptography import x509  # noqa: PLC0415

    try:
        root = x509.load_der_x509_certificate(der)
    except ValueError:
        raise ValueError("the vendor root is not a DER X.509 certificate") from None
    where = "the vendor root"
    _check_signed_by(root, root, where)
    _check_validity(root, now_ms, where)
    _check_critical_extensions(root, where)
    _check_ca(root, where)
    return root


def _verify_chain(member: Member, root: x509.Certificate, now_ms: int) -> VerifiedMember:
    certificates = [
        _load_certificate(der, f"member {member.name}: certificate {index}")
        for index, der in enumerate(member.certificate_chain)
    ]
    for index, certificate in enumerate(certificates):
        where = f"member {member.name}: certificate {index}"
        issuer = certificates[index + 1] if index + 1 < len(certificates) else root
        _check_signed_by(certificate, issuer, where)
        _check_validity(certificate, now_ms, where)
        _check_critical_extensions(certificate, where)
        if index == 0:
            _check_device_leaf(certificate, where)
        else:
            # ``index - 1`` CA certificates sit between this one and the leaf.
            _check_ca(certificate, where, below=index - 1)
    _check_path_length(root, len(certificates) - 1, f"member {member.name}: the vendor root")
    leaf = certificates[0]
    _check_leaf_key(leaf, member)
    return VerifiedMember(
        name=member.name,
        datacenter=member.datacenter,
        attestation_key=member.attestation_key,
        certificate_serial=leaf.serial_number,
        certificate_subject=leaf.subject.rfc4514_string(),
        certificate_issuer=leaf.issuer.rfc4514_string(),
        chain_length=len(certificates),
    )


def _load_certificate(der: bytes, where: str) -> x509.Certificate:
    from cryptography import x509  # noqa: PLC0415

    try:
        certificate = x509.load_der_x509_certificate(der)
        encoded = certificate.public_bytes(Encoding.DER)
    except ValueError:
        raise DeviceChainError(f"{where} is not a DER X.509 certificate") from None
    if encoded != der or certificate.version != x509.Version.v3:
        raise DeviceChainError(f"{where} is not a canonical DER X.509 v3 certificate")
    return certificate


def _check_signed_by(certificate: x509.Certificate, issuer: x509.Certificate, where: str) -> None:
    # Issuer name equal to the issuer's subject, and its key verifies the signature
    # (RFC 5280 §6.1.3 (a)(1) and (a)(4)).
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        raise DeviceChainError(
            f"{where} is not signed by {issuer.subject.rfc4514_string() or 'its issuer'}"
        ) from None


def _check_validity(certificate: x509.Certificate, now_ms: int, where: str) -> None:
    not_before_ms = int(certificate.not_valid_before_utc.timestamp() * 1000)
    not_after_ms = int(certificate.not_valid_after_utc.timestamp() * 1000)
    if not not_before_ms <= now_ms <= not_after_ms:
        raise DeviceChainError(
            f"{where} is not valid now (valid {not_before_ms}..{not_after_ms} ms, now {now_ms})"
        )


_ALLOWED_CRITICAL: Final = frozenset(
    {
        "2.5.29.19",  # basicConstraints
        "2.5.29.15",  # keyUsage
        "2.5.29.37",  # extKeyUsage
    }
)


def _extensions(certificate: x509.Certificate, where: str) -> Any:
    try:
        return certificate.extensions
    except ValueError:  # duplicate or malformed extensions (x509.DuplicateExtension included)
        raise DeviceChainError(f"{where} has malformed extensions") from None


def _check_critical_extensions(certificate: x509.Certificate, where: str) -> None:
    # RFC 5280 §4.2: a certificate with a critical extension we do not process is refused.
    for extension in _extensions(certificate, where):
        if extension.critical and extension.oid.dotted_string not in _ALLOWED_CRITICAL:
            raise DeviceChainError(
                f"{where} has an unsupported critical extension {extension.oid.dotted_string}"
            )


def _extension(certificate: x509.Certificate, kind: type, where: str) -> Any:
    from cryptography import x509  # noqa: PLC0415

    try:
        return _extensions(certificate, where).get_extension_for_class(kind)
    except x509.ExtensionNotFound:
        return None


def _check_ca(certificate: x509.Certificate, where: str, *, below: int = 0) -> None:
    from cryptography import x509  # noqa: PLC0415

    constraints = _extension(certificate, x509.BasicConstraints, where)
    # RFC 5280 §4.2.1.9: critical, cA true in every certificate that verifies others.
    if constraints is None or not constraints.critical or not constraints.value.ca:
        raise DeviceChainError(f"{where} is not a CA (critical basicConstraints cA=true)")
    usage = _extension(certificate, x509.KeyUsage, where)
    if usage is None or not usage.value.key_cert_sign:
        raise DeviceChainError(f"{where} may not sign certificates (keyUsage keyCertSign)")
    _check_path_length(certificate, below, where)


def _check_path_length(certificate: x509.Certificate, below: int, where: str) -> None:
    from cryptography import x509  # noqa: PLC0415

    constraints = _extension(certificate, x509.BasicConstraints, where)
    limit = None if constraints is None else constraints.value.path_length
    if limit is not None and below > limit:
        raise DeviceChainError(f"{where}: {below} CA certificate(s) below a path length of {limit}")


def _check_device_leaf(certificate: x509.Certificate, where: str) -> None:
    from cryptography import x509  # noqa: PLC0415

    constraints = _extension(certificate, x509.BasicConstraints, where)
    if constraints is None or constraints.value.ca:
        raise DeviceChainError(f"{where} is not an end-entity certificate (basicConstraints cA)")
    usage = _extension(certificate, x509.KeyUsage, where)
    if usage is None or not usage.value.digital_signature or usage.value.key_cert_sign:
        raise DeviceChainError(f"{where}: keyUsage must allow digitalSignature and not keyCertSign")
    extended = _extension(certificate, x509.ExtendedKeyUsage, where)
    purposes = () if extended is None else [oid.dotted_string for oid in extended.value]
    if DEVICE_EKU_OID not in purposes:
        raise DeviceChainError(
            f"{where} is not a bkv-hsm-device certificate (EKU {DEVICE_EKU_OID})"
        )


def _check_leaf_key(leaf: x509.Certificate, member: Member) -> None:
    from cryptography.hazmat.primitives.asymmetric import ed25519  # noqa: PLC0415

    where = f"member {member.name}: device certificate"
    try:
        key = leaf.public_key()
    except (ValueError, TypeError):
        raise DeviceChainError(f"{where} has an unsupported public key") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise DeviceChainError(f"{where} does not certify an Ed25519 key")
    if not hmac.compare_digest(key.public_bytes_raw(), member.attestation_key):
        raise DeviceChainError(f"{where} certifies another key than the member's attestation key")


# --- steps 3-6 ---------------------------------------------------------------------------


def _verify_signatures(evidence: Evidence) -> None:
    for statement in evidence.statements:
        member = evidence.fleet.member(statement.signer)
        try:
            Ed25519PublicKey.from_public_bytes(member.attestation_key).verify(
                statement.signature, statement.statement
            )
        except InvalidSignature:
            raise AttestationSignatureError(
                f"the statement of {statement.signer} is not signed by its attestation key"
            ) from None


def _check_bindings(evidence: Evidence) -> None:
    for statement in evidence.statements:
        expected = build_statement(evidence.fleet, statement.signer)
        if statement.statement == expected:
            continue
        signed = canonical_json.loads(statement.statement, max_depth=_MAX_DEPTH)
        implied = statement_value(evidence.fleet, statement.signer)
        differ = sorted(
            name for name in set(signed) | set(implied) if signed.get(name) != implied.get(name)
        )
        raise StatementMismatchError(
            f"the statement {statement.signer} signed binds another "
            f"{', '.join(differ) or 'content'} than this document"
        )


def _check_distinct(members: Sequence[VerifiedMember]) -> None:
    by_key: dict[bytes, str] = {}
    by_certificate: dict[tuple[str, int], str] = {}
    by_subject: dict[str, str] = {}
    for member in members:
        for other, what in (
            (by_key.setdefault(member.attestation_key, member.name), "attestation key"),
            (
                by_certificate.setdefault(
                    (member.certificate_issuer, member.certificate_serial), member.name
                ),
                "certificate issuer and serial",
            ),
            (by_subject.setdefault(member.certificate_subject, member.name), "certificate subject"),
        ):
            if other != member.name:
                raise DuplicateDeviceError(
                    f"members {other} and {member.name} are one device (same {what})"
                )
    by_datacenter: dict[str, str] = {}
    for member in members:
        other = by_datacenter.setdefault(member.datacenter, member.name)
        if other != member.name:
            raise DatacenterError(
                f"members {other} and {member.name} are both in datacenter {member.datacenter}"
            )


def _check_quorum(evidence: Evidence) -> None:
    signed = len(evidence.statements)
    total = len(evidence.fleet.members)
    quorum = evidence.fleet.policy.quorum
    if signed < quorum or 2 * signed <= total:
        raise QuorumError(
            f"{signed} of {total} members signed; the policy needs {quorum} and a strict majority"
        )


# --- the published keys -----------------------------------------------------------------------


def check_artifact_matches(verified: VerifiedEvidence, artifact: FleetKeyArtifact) -> None:
    """Raise :class:`FleetKeyMismatchError` unless ``artifact`` publishes what was attested.

    The artifact must name this evidence (``evidence_digest``), and its fleet id,
    keys (exactly: every role, algorithm and key), members and policy must be the
    attested ones: a key the devices did not attest has no business in front of
    clients.
    """
    if artifact.evidence_digest is None:
        raise FleetKeyMismatchError("the artifact names no deployment evidence")
    if not hmac.compare_digest(artifact.evidence_digest, verified.digest):
        raise FleetKeyMismatchError(
            f"the artifact names evidence {artifact.evidence_digest.hex()}, "
            f"not this one ({verified.digest.hex()})"
        )
    if artifact.fleet_id != verified.fleet_id:
        raise FleetKeyMismatchError(
            f"the artifact is for fleet {artifact.fleet_id}, the evidence for {verified.fleet_id}"
        )
    published = {k.role: k for k in artifact.keys}
    attested = {k.role: k for k in verified.keys}
    for role in sorted(published.keys() | attested.keys()):
        if published.get(role) != attested.get(role):
            raise FleetKeyMismatchError(
                f"key {role}: the artifact's "
                f"{_describe(published.get(role))} is not the attested "
                f"{_describe(attested.get(role))}"
            )
    members = tuple(m.name for m in verified.members)
    if artifact.members != members:
        raise FleetKeyMismatchError(
            f"the artifact's members {list(artifact.members)} are not the attested {list(members)}"
        )
    if artifact.policy != verified.policy:
        raise FleetKeyMismatchError(
            f"the artifact's policy {_policy_value(artifact.policy)} is not the attested "
            f"{_policy_value(verified.policy)}"
        )


def _describe(key: PublicKey | None) -> str:
    return "nothing" if key is None else f"{key.algorithm}:{key.key.hex()}"


def check_evidence_for_artifact(
    artifact_bytes: bytes,
    evidence_bytes: bytes,
    vendor_root_der: bytes,
    *,
    now_ms: int,
    expected_measurement: bytes | None = None,
) -> VerifiedEvidence:
    """:func:`verify_evidence`, then :func:`check_artifact_matches` for this artifact.

    The shape of the witness's evidence checker (artifact, evidence) once the
    vendor root, the clock and the expected measurement are bound.
    """
    artifact = parse_artifact(artifact_bytes)
    verified = verify_evidence(
        evidence_bytes, vendor_root_der, now_ms=now_ms, expected_measurement=expected_measurement
    )
    check_artifact_matches(verified, artifact)
    return verified
