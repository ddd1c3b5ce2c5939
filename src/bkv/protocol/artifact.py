"""The fleet-key artifact: the public keys of one HSM fleet, with roles and metadata.

The artifact is the thing the witness vouches for. The witness signs only its
SHA-256 digest (``digest = SHA-256(exact artifact bytes)``), so the artifact
must have exactly one byte encoding: it is canonical JSON as produced by
:mod:`bkv.wire.canonical_json` (RFC 8785 subset: sorted keys, no insignificant
whitespace, integers only), and :func:`parse_artifact` rejects any input that
is not, byte for byte, :meth:`FleetKeyArtifact.to_bytes` of the artifact it
parses to.

Layout (version 1; every field required, no other field allowed)::

    {
      "evidence_digest": null | "<64 lowercase hex>",
      "fleet_id": "<id>",
      "keys": [ {"algorithm": "ed25519" | "x25519" | "ristretto255",
                 "public_key": "<lowercase hex, length fixed by algorithm>",
                 "role": "<role>"}, ... ],        # sorted by role, roles unique
      "members": ["<hsm id>", ...],              # sorted, unique
      "policy": {"guess_limit": <int>, "quorum": <int>},
      "type": "bkv.fleet_keys",
      "validity": {"not_after_ms": <int>, "not_before_ms": <int>},
      "version": 1
    }

The ``type``/``version`` pair is the domain tag of the hashed structure: a
digest of anything else (another JSON document, a later version) cannot be
mistaken for a v1 fleet-key artifact. The roles ``opaque_ake`` and ``channel``
are required: a client has no use for a fleet it cannot run OPAQUE with or
seal requests to. The quorum must be a strict majority of the members: the
guess limit rests on majority consensus (docs/properties.md §2), so a client
refuses a fleet whose quorum could be satisfied by two disjoint minorities.

The witness runs this same strict parser before it signs a digest (it must
never vouch for bytes no client could parse), and clients parse with it. It is
sans-IO (docs/architecture.md#layers).
"""

from __future__ import annotations

import binascii
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from bkv.errors import ArtifactError
from bkv.protocol import messages as hsm_messages

#: The one artifact size limit, for the witness (submissions) and for clients (the
#: fleet-key artifact and the validation bundle that carries it): a fleet-key
#: artifact is canonical JSON of at most 16 keys and 64 members, well under 16 KiB.
#: One constant so that the witness never signs an artifact that no client could accept.
MAX_ARTIFACT_BYTES: Final = 16 * 1024

ARTIFACT_TYPE: Final = "bkv.fleet_keys"
ARTIFACT_VERSION: Final = 1

#: Largest number of HSMs in one fleet.
MAX_MEMBERS: Final = 64
#: Largest number of keys (roles) in one artifact.
MAX_KEYS: Final = 16
#: Largest identifier (fleet id, member id, role), in characters.
MAX_ID_LENGTH: Final = 64
#: Largest integer in the artifact: beyond 2**53 - 1 JSON numbers are not portable
#: (RFC 8785 §3.2.2.3).
MAX_JSON_INT: Final = 2**53 - 1
#: Largest guess limit a fleet may declare: the HSMs' own cap, so that no artifact
#: promises a policy the HSM application would refuse.
MAX_GUESS_LIMIT: Final = hsm_messages.MAX_GUESS_LIMIT

#: Public key length in bytes for each algorithm.
KEY_LENGTHS: Final[Mapping[str, int]] = {"ed25519": 32, "x25519": 32, "ristretto255": 32}

ROLE_OPAQUE_AKE: Final = "opaque_ake"
ROLE_CHANNEL: Final = "channel"
ROLE_HSM_ATTESTATION: Final = "hsm_attestation"
REQUIRED_ROLES: Final = frozenset({ROLE_OPAQUE_AKE, ROLE_CHANNEL})

DIGEST_SIZE: Final = 32

_ID_RE: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_LOWER_HEX_RE: Final = re.compile(r"[0-9a-f]*")
_ROLE_RE: Final = re.compile(r"[a-z][a-z0-9_]{0,63}")
_TOP_FIELDS: Final = frozenset(
    {
        "type",
        "version",
        "fleet_id",
        "keys",
        "members",
        "policy",
        "validity",
        "evidence_digest",
    }
)
_KEY_FIELDS: Final = frozenset({"role", "algorithm", "public_key"})
_POLICY_FIELDS: Final = frozenset({"guess_limit", "quorum"})
_VALIDITY_FIELDS: Final = frozenset({"not_before_ms", "not_after_ms"})


@dataclass(frozen=True)
class PublicKey:
    """One fleet public key with its role and algorithm."""

    role: str
    algorithm: str
    key: bytes

    def __post_init__(self) -> None:
        _check_role(self.role)
        expected = KEY_LENGTHS.get(self.algorithm)
        if expected is None:
            raise ArtifactError(f"key {self.role!r}: unknown algorithm {self.algorithm!r}")
        if len(self.key) != expected:
            raise ArtifactError(f"key {self.role!r}: {self.algorithm} key must be {expected} bytes")


@dataclass(frozen=True)
class FleetPolicy:
    """The fleet's guess limit and replication quorum."""

    guess_limit: int
    quorum: int


@dataclass(frozen=True)
class FleetKeyArtifact:
    """A parsed (or to-be-encoded) fleet-key artifact; :meth:`to_bytes` is canonical."""

    fleet_id: str
    keys: tuple[PublicKey, ...]
    members: tuple[str, ...]
    policy: FleetPolicy
    not_before_ms: int
    not_after_ms: int
    evidence_digest: bytes | None = None
    _by_role: Mapping[str, PublicKey] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_id("fleet_id", self.fleet_id)
        _check_keys(self.keys)
        _check_members(self.members)
        _check_policy(self.policy, len(self.members))
        _check_validity(self.not_before_ms, self.not_after_ms)
        if self.evidence_digest is not None and len(self.evidence_digest) != DIGEST_SIZE:
            raise ArtifactError("evidence_digest must be 32 bytes")
        object.__setattr__(self, "_by_role", {k.role: k for k in self.keys})

    @property
    def keys_by_role(self) -> Mapping[str, PublicKey]:
        """The keys indexed by role (roles are unique)."""
        return dict(self._by_role)

    def key(self, role: str) -> PublicKey:
        """The key with this role; :class:`ArtifactError` if the artifact has none."""
        try:
            return self._by_role[role]
        except KeyError:
            raise ArtifactError(f"artifact has no key with role {role!r}") from None

    def to_json_value(self) -> dict[str, Any]:
        """The JSON value of the artifact (before canonical encoding)."""
        return {
            "type": ARTIFACT_TYPE,
            "version": ARTIFACT_VERSION,
            "fleet_id": self.fleet_id,
            "keys": [
                {"role": k.role, "algorithm": k.algorithm, "public_key": k.key.hex()}
                for k in self.keys
            ],
            "members": list(self.members),
            "policy": {"guess_limit": self.policy.guess_limit, "quorum": self.policy.quorum},
            "validity": {"not_before_ms": self.not_before_ms, "not_after_ms": self.not_after_ms},
            "evidence_digest": (
                None if self.evidence_digest is None else self.evidence_digest.hex()
            ),
        }

    def to_bytes(self) -> bytes:
        """The canonical JSON bytes of the artifact (what the digest covers).

        Byte for byte ``bkv.wire.canonical_json.dumps(self.to_json_value())`` (a test
        checks), written out directly because clients re-encode every artifact they
        parse: members in sorted order (RFC 8785 §3.2.3), integers in plain decimal
        (§3.2.2.3), and strings between quotes as they are, since every string of a
        valid artifact (ids, roles, algorithm names, lowercase hex) is in an alphabet
        that has nothing to escape (§3.2.2.2).
        """
        keys = ",".join(
            f'{{"algorithm":"{k.algorithm}","public_key":"{k.key.hex()}","role":"{k.role}"}}'
            for k in self.keys
        )
        members = ",".join(f'"{m}"' for m in self.members)
        evidence = "null" if self.evidence_digest is None else f'"{self.evidence_digest.hex()}"'
        text = (
            f'{{"evidence_digest":{evidence},"fleet_id":"{self.fleet_id}",'
            f'"keys":[{keys}],"members":[{members}],'
            f'"policy":{{"guess_limit":{self.policy.guess_limit:d},'
            f'"quorum":{self.policy.quorum:d}}},'
            f'"type":"{ARTIFACT_TYPE}",'
            f'"validity":{{"not_after_ms":{self.not_after_ms:d},'
            f'"not_before_ms":{self.not_before_ms:d}}},'
            f'"version":{ARTIFACT_VERSION:d}}}'
        )
        data = text.encode("ascii")
        if len(data) > MAX_ARTIFACT_BYTES:
            raise ArtifactError(f"artifact exceeds {MAX_ARTIFACT_BYTES} bytes")
        return data

    @property
    def digest(self) -> bytes:
        """SHA-256 of :meth:`to_bytes`."""
        return artifact_digest(self.to_bytes())


def artifact_digest(data: bytes) -> bytes:
    """SHA-256 over the exact artifact bytes: the digest the witness signs."""
    return hashlib.sha256(data).digest()


def parse_artifact(data: bytes) -> FleetKeyArtifact:
    """Strictly parse artifact bytes; raise :class:`ArtifactError` on anything but canonical v1.

    Rejected: empty or oversized input, invalid UTF-8, floats / NaN / huge
    integers, missing or unknown fields, wrong types, bad or uppercase hex,
    wrong key lengths, unsorted or duplicate roles or members, a quorum that is
    not a majority, an empty validity window, and any other spelling than the
    canonical one (whitespace, key order, escapes, duplicate keys, number forms).
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError("artifact must be bytes")
    data = bytes(data)
    if not data:
        raise ArtifactError("artifact is empty")
    if len(data) > MAX_ARTIFACT_BYTES:
        raise ArtifactError(f"artifact exceeds {MAX_ARTIFACT_BYTES} bytes")
    artifact = _read_canonical(data)
    if artifact is not None:
        return artifact
    # Not a valid artifact in canonical form: JSON and the schema name what is wrong.
    artifact = _from_json_value(_load_json(data))
    # The digest covers the exact bytes, so only the one canonical spelling is an artifact:
    # whatever the JSON parser tolerated (whitespace, escapes, duplicate or unsorted
    # names, 1.0 or 1e0) re-encodes to other bytes than ``data``.
    if artifact.to_bytes() != data:
        raise ArtifactError("artifact is not canonical JSON")
    return artifact


# --- the canonical layout, read directly ----------------------------------------------

# Every client parses the artifact of every bundle, and a valid artifact has one byte
# layout (to_bytes): members in sorted order, no whitespace, strings in alphabets with
# nothing to escape, integers in plain decimal. That layout is matched with one regular
# expression; anything else goes to the JSON parser and the schema, which name the error.
_KEY_FIELDS_LAYOUT: Final = ("[a-z0-9]{1,32}", "[0-9a-f]{2,128}", "[a-z][a-z0-9_]{0,63}")
_KEY_TEMPLATE: Final = r'\{"algorithm":"%s","public_key":"%s","role":"%s"\}'
_KEY_LAYOUT: Final = _KEY_TEMPLATE % _KEY_FIELDS_LAYOUT
_KEY_RE: Final = re.compile(_KEY_TEMPLATE % tuple(f"({f})" for f in _KEY_FIELDS_LAYOUT))
_MEMBER_LAYOUT: Final = '"[a-z0-9][a-z0-9._-]{0,63}"'
_INT_LAYOUT: Final = "(0|[1-9][0-9]{0,15})"
_CANONICAL_RE: Final = re.compile(
    r'\{"evidence_digest":(?:null|"([0-9a-f]{64})"),'
    r'"fleet_id":"([a-z0-9][a-z0-9._-]{0,63})",'
    rf'"keys":\[((?:{_KEY_LAYOUT},)*{_KEY_LAYOUT})\],'
    rf'"members":\[((?:{_MEMBER_LAYOUT},)*{_MEMBER_LAYOUT})\],'
    rf'"policy":\{{"guess_limit":{_INT_LAYOUT},"quorum":{_INT_LAYOUT}\}},'
    rf'"type":"{re.escape(ARTIFACT_TYPE)}",'
    rf'"validity":\{{"not_after_ms":{_INT_LAYOUT},"not_before_ms":{_INT_LAYOUT}\}},'
    rf'"version":{ARTIFACT_VERSION}\}}'
)


def _read_canonical(data: bytes) -> FleetKeyArtifact | None:
    """The artifact if ``data`` is laid out as a valid one, else None (never an error).

    What this returns, the JSON parser and the schema would return too, and its
    :meth:`~FleetKeyArtifact.to_bytes` is ``data`` (tests check both): the expression
    is the grammar of ``to_bytes`` (same order, alphabets, minimal decimals), and the
    artifact is built with the same checked constructors.
    """
    try:
        match = _CANONICAL_RE.fullmatch(data.decode("ascii"))
        if match is None:
            return None
        evidence, fleet_id, keys, members, guess_limit, quorum, not_after, not_before = (
            match.groups()
        )
        return FleetKeyArtifact(
            fleet_id=fleet_id,
            keys=tuple(
                PublicKey(role, algorithm, binascii.unhexlify(key))
                for algorithm, key, role in _KEY_RE.findall(keys)
            ),
            # Member ids contain neither quotes nor commas: '","' separates them.
            members=tuple(members[1:-1].split('","')),
            policy=FleetPolicy(guess_limit=int(guess_limit), quorum=int(quorum)),
            not_before_ms=int(not_before),
            not_after_ms=int(not_after),
            evidence_digest=None if evidence is None else binascii.unhexlify(evidence),
        )
    except (ArtifactError, ValueError):  # ValueError: not ASCII, or odd-length hex
        return None  # e.g. unsorted members: the schema path names it


# --- JSON ----------------------------------------------------------------------


def _load_json(data: bytes) -> Any:
    # Bounded input (MAX_ARTIFACT_BYTES); strict UTF-8 (json.loads would guess UTF-16/32
    # from raw bytes). ValueError: malformed JSON or an integer over Python's digit
    # limit; RecursionError: nesting deeper than the parser's recursion limit.
    try:
        return json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):
        raise ArtifactError("artifact is not JSON") from None


# --- schema --------------------------------------------------------------------


def _object(value: Any, where: str, fields: frozenset[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ArtifactError(f"{where} must be a JSON object")
    if value.keys() == fields:
        return value
    missing = fields - value.keys()
    if missing:
        raise ArtifactError(f"{where}: missing field(s) {sorted(missing)}")
    raise ArtifactError(f"{where}: unknown field(s) {sorted(value.keys() - fields)}")


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ArtifactError(f"{where} must be a string")
    return value


def _integer(value: Any, where: str) -> int:
    # bool is an int subclass in Python; JSON true/false are not numbers.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArtifactError(f"{where} must be an integer")
    if not 0 <= value <= MAX_JSON_INT:
        raise ArtifactError(f"{where} out of range")
    return int(value)


def _hex(value: Any, where: str, size: int) -> bytes:
    text = _string(value, where)
    # Lowercase only: one spelling per value, so the digest is unique.
    if len(text) != 2 * size or _LOWER_HEX_RE.fullmatch(text) is None:
        raise ArtifactError(f"{where} must be {2 * size} lowercase hex digits")
    return bytes.fromhex(text)


def _array(value: Any, where: str, max_count: int) -> list[Any]:
    if not isinstance(value, list):
        raise ArtifactError(f"{where} must be a JSON array")
    if not value:
        raise ArtifactError(f"{where} is empty")
    if len(value) > max_count:
        raise ArtifactError(f"{where} has more than {max_count} entries")
    return value


def _from_json_value(value: Any) -> FleetKeyArtifact:
    top = _object(value, "artifact", _TOP_FIELDS)
    if _string(top["type"], "type") != ARTIFACT_TYPE:
        raise ArtifactError(f"type must be {ARTIFACT_TYPE!r}")
    if _integer(top["version"], "version") != ARTIFACT_VERSION:
        raise ArtifactError(f"unsupported artifact version (want {ARTIFACT_VERSION})")
    keys = tuple(_key_from_json(k) for k in _array(top["keys"], "keys", MAX_KEYS))
    members = tuple(_string(m, "members[]") for m in _array(top["members"], "members", MAX_MEMBERS))
    policy = _object(top["policy"], "policy", _POLICY_FIELDS)
    validity = _object(top["validity"], "validity", _VALIDITY_FIELDS)
    evidence = top["evidence_digest"]
    return FleetKeyArtifact(
        fleet_id=_string(top["fleet_id"], "fleet_id"),
        keys=keys,
        members=members,
        policy=FleetPolicy(
            guess_limit=_integer(policy["guess_limit"], "policy.guess_limit"),
            quorum=_integer(policy["quorum"], "policy.quorum"),
        ),
        not_before_ms=_integer(validity["not_before_ms"], "validity.not_before_ms"),
        not_after_ms=_integer(validity["not_after_ms"], "validity.not_after_ms"),
        evidence_digest=None if evidence is None else _hex(evidence, "evidence_digest", 32),
    )


def _key_from_json(value: Any) -> PublicKey:
    obj = _object(value, "keys[]", _KEY_FIELDS)
    role = _string(obj["role"], "keys[].role")
    algorithm = _string(obj["algorithm"], "keys[].algorithm")
    size = KEY_LENGTHS.get(algorithm)
    if size is None:
        raise ArtifactError(f"key {role!r}: unknown algorithm {algorithm!r}")
    return PublicKey(role=role, algorithm=algorithm, key=_hex(obj["public_key"], role, size))


# --- invariants (shared by parsing and construction) -------------------------


def _check_id(where: str, value: str) -> None:
    if not isinstance(value, str) or _ID_RE.fullmatch(value) is None:
        raise ArtifactError(f"{where} must match {_ID_RE.pattern}")


def _check_role(role: str) -> None:
    if not isinstance(role, str) or _ROLE_RE.fullmatch(role) is None:
        raise ArtifactError(f"key role must match {_ROLE_RE.pattern}")


def _check_keys(keys: tuple[PublicKey, ...]) -> None:
    if not 1 <= len(keys) <= MAX_KEYS:
        raise ArtifactError(f"an artifact has 1..{MAX_KEYS} keys")
    roles = [k.role for k in keys]
    if len(set(roles)) != len(roles):
        raise ArtifactError("duplicate key role")
    if roles != sorted(roles):
        raise ArtifactError("keys must be sorted by role")
    missing = REQUIRED_ROLES - set(roles)
    if missing:
        raise ArtifactError(f"artifact lacks required role(s) {sorted(missing)}")


def _check_members(members: tuple[str, ...]) -> None:
    if not 1 <= len(members) <= MAX_MEMBERS:
        raise ArtifactError(f"a fleet has 1..{MAX_MEMBERS} members")
    for member in members:  # _check_id, inlined: a fleet has up to 64 members
        if not isinstance(member, str) or _ID_RE.fullmatch(member) is None:
            raise ArtifactError(f"member id must match {_ID_RE.pattern}")
    if len(set(members)) != len(members):
        raise ArtifactError("duplicate member")
    if list(members) != sorted(members):
        raise ArtifactError("members must be sorted")


def _check_policy(policy: FleetPolicy, member_count: int) -> None:
    for name, value in (("guess_limit", policy.guess_limit), ("quorum", policy.quorum)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ArtifactError(f"policy.{name} must be an integer")
    if not 1 <= policy.guess_limit <= MAX_GUESS_LIMIT:
        raise ArtifactError(f"policy.guess_limit must be 1..{MAX_GUESS_LIMIT}")
    # A strict majority: two quorums always intersect, so no counter can fork.
    if not member_count // 2 < policy.quorum <= member_count:
        raise ArtifactError("policy.quorum must be a strict majority of the members")


def _check_validity(not_before_ms: int, not_after_ms: int) -> None:
    for name, value in (("not_before_ms", not_before_ms), ("not_after_ms", not_after_ms)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_JSON_INT:
            raise ArtifactError(f"validity.{name} out of range")
    if not_after_ms <= not_before_ms:
        raise ArtifactError("validity window is empty (not_after_ms <= not_before_ms)")
