"""Fleet-key artifact: canonical encoding, strict parsing, digest, keys by role."""

from __future__ import annotations

import contextlib
import hashlib
import json
from typing import Any

import pytest
from client_world import make_artifact
from hypothesis import given
from hypothesis import strategies as st

from bkv.errors import ArtifactError
from bkv.protocol import artifact as artifact_format
from bkv.protocol.artifact import (
    MAX_ARTIFACT_BYTES,
    MAX_GUESS_LIMIT,
    FleetKeyArtifact,
    artifact_digest,
    parse_artifact,
)
from bkv.wire import canonical_json


def _value() -> dict[str, Any]:
    return make_artifact().to_json_value()


def _dump(value: Any) -> bytes:
    # The canonical spelling, built independently of bkv.wire: sorted keys, no spaces.
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def test_round_trip_and_digest() -> None:
    artifact = make_artifact()
    data = artifact.to_bytes()
    assert data == _dump(artifact.to_json_value())
    parsed = parse_artifact(data)
    assert parsed == artifact
    assert parsed.to_bytes() == data
    assert artifact_digest(data) == hashlib.sha256(data).digest() == artifact.digest


def test_keys_by_role() -> None:
    artifact = make_artifact()
    assert set(artifact.keys_by_role) == {"channel", "hsm_attestation", "opaque_ake"}
    assert artifact.key("opaque_ake").algorithm == "ristretto255"
    with pytest.raises(ArtifactError, match="no key with role"):
        artifact.key("nope")


def test_evidence_digest_round_trips() -> None:
    artifact = make_artifact(evidence_digest=bytes(range(32)))
    assert parse_artifact(artifact.to_bytes()).evidence_digest == bytes(range(32))


def _mutated(path: list[Any], new: Any) -> bytes:
    value = _value()
    target: Any = value
    for step in path[:-1]:
        target = target[step]
    if new is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = new
    return _dump(value)


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "new", "match"),
    [
        (["extra"], 1, "unknown field"),
        (["policy", "extra"], 1, "unknown field"),
        (["keys", 0, "comment"], "x", "unknown field"),
        (["fleet_id"], _DELETE, "missing field"),
        (["evidence_digest"], _DELETE, "missing field"),
        (["validity", "not_after_ms"], _DELETE, "missing field"),
        (["type"], "bkv.other", "type must be"),
        (["version"], 2, "unsupported artifact version"),
        (["version"], True, "must be an integer"),
        (["keys", 0, "public_key"], "00" * 31, "lowercase hex"),
        (["keys", 0, "public_key"], "00" * 33, "lowercase hex"),
        (["keys", 0, "public_key"], "AB" * 32, "lowercase hex"),
        (["keys", 0, "public_key"], "zz" * 32, "lowercase hex"),
        (["keys", 0, "algorithm"], "rsa", "unknown algorithm"),
        (["keys", 0, "role"], "Channel", "role must match"),
        (["keys", 1, "role"], "channel", "duplicate key role"),
        (["keys"], [], "keys is empty"),
        (["members"], ["hsm-1", "hsm-1", "hsm-2"], "duplicate member"),
        (["members"], ["hsm-2", "hsm-1", "hsm-3"], "sorted"),
        (["members"], [], "members is empty"),
        (["fleet_id"], "Fleet A", "fleet_id must match"),
        (["policy", "quorum"], 1, "strict majority"),
        (["policy", "quorum"], 4, "strict majority"),
        (["policy", "guess_limit"], 0, "guess_limit"),
        (["policy", "guess_limit"], MAX_GUESS_LIMIT + 1, "guess_limit"),
        (["policy", "guess_limit"], -1, "out of range"),
        (["validity", "not_after_ms"], 0, "validity window is empty"),
        (["evidence_digest"], "00" * 31, "lowercase hex"),
        (["evidence_digest"], 7, "must be a string"),
        (["keys", 0], "channel", "must be a JSON object"),
    ],
)
def test_schema_violations_rejected(path: list[Any], new: Any, match: str) -> None:
    with pytest.raises(ArtifactError, match=match):
        parse_artifact(_mutated(path, new))


def test_keys_out_of_order_rejected() -> None:
    value = _value()
    value["keys"].reverse()
    with pytest.raises(ArtifactError, match="sorted by role"):
        parse_artifact(_dump(value))


def test_missing_required_role_rejected() -> None:
    value = _value()
    value["keys"] = [k for k in value["keys"] if k["role"] != "opaque_ake"]
    with pytest.raises(ArtifactError, match="required role"):
        parse_artifact(_dump(value))


@pytest.mark.parametrize(
    "spelling",
    [
        # whitespace, key order, number spellings, escapes, BOM: all non-canonical.
        lambda d: d.replace(b'"version":1', b'"version": 1'),
        lambda d: d + b"\n",
        lambda d: b" " + d,
        lambda d: d.replace(b'"version":1', b'"version":1.0'),
        lambda d: d.replace(b'"version":1', b'"version":1e0'),
        lambda d: d.replace(b'"version":1', b'"version":01'),
        lambda d: d.replace(b'"quorum":2', b'"quorum":-0'),
        lambda d: d.replace(b'"fleet_id":"fleet-a"', b'"fleet_id":"fleet\\u002da"'),
        lambda d: b"\xef\xbb\xbf" + d,
        lambda d: d.replace(b'"type":"bkv.fleet_keys",', b"").replace(
            b"{", b'{"type":"bkv.fleet_keys",', 1
        ),
        lambda d: d.replace(b'"version":1', b'"version":NaN'),
        lambda d: d.replace(b'"version":1', b'"version":1,"version":1'),
        lambda d: d.replace(b'"version":1', b'"version":12345678901234567890'),
    ],
)
def test_non_canonical_spellings_rejected(spelling: Any) -> None:
    data = make_artifact().to_bytes()
    mutated = spelling(data)
    assert mutated != data
    with pytest.raises(ArtifactError):
        parse_artifact(mutated)


@pytest.mark.parametrize("data", [b"", b"\xff\xfe", b"null", b"[]", b"{", b'"x"', b"{}", b"1"])
def test_garbage_rejected(data: bytes) -> None:
    with pytest.raises(ArtifactError):
        parse_artifact(data)


def test_oversized_rejected_before_parsing() -> None:
    with pytest.raises(ArtifactError, match="exceeds"):
        parse_artifact(b"{" + b" " * MAX_ARTIFACT_BYTES + b"}")


def test_deeply_nested_rejected() -> None:
    with pytest.raises(ArtifactError):
        parse_artifact(b"[" * 5000 + b"]" * 5000)


def test_construction_checks_invariants() -> None:
    good = make_artifact()
    with pytest.raises(ArtifactError):
        FleetKeyArtifact(
            fleet_id=good.fleet_id,
            keys=good.keys,
            members=good.members,
            policy=good.policy,
            not_before_ms=5,
            not_after_ms=5,
        )


@given(st.binary(max_size=512))
def test_random_bytes_raise_only_artifact_error(data: bytes) -> None:
    with contextlib.suppress(ArtifactError):
        parse_artifact(data)


@given(
    st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), min_size=1, max_size=5, unique=True),
    st.integers(min_value=1, max_value=MAX_GUESS_LIMIT),
    st.integers(min_value=0, max_value=2**52),
    st.one_of(st.none(), st.binary(min_size=32, max_size=32)),
    st.text(alphabet="abcdefghij0123456789-._", min_size=0, max_size=20),
)
def test_artifact_round_trip_property(
    members: list[str], guess_limit: int, not_before: int, evidence: bytes | None, suffix: str
) -> None:
    artifact = make_artifact(
        fleet_id="f" + suffix,
        members=tuple(sorted(f"hsm-{m}" for m in members)),
        quorum=len(members) // 2 + 1,
        guess_limit=guess_limit,
        not_before_ms=not_before,
        not_after_ms=not_before + 1,
        evidence_digest=evidence,
    )
    data = artifact.to_bytes()
    assert parse_artifact(data) == artifact


@given(st.data())
def test_mutated_artifact_never_parses_to_same_digest(data: st.DataObject) -> None:
    original = make_artifact().to_bytes()
    position = data.draw(st.integers(min_value=0, max_value=len(original) - 1))
    flip = data.draw(st.integers(min_value=1, max_value=255))
    mutated = bytearray(original)
    mutated[position] ^= flip
    try:
        parsed = parse_artifact(bytes(mutated))
    except ArtifactError:
        return
    # If a flipped byte still parses, it is a different artifact with a different digest.
    assert parsed.to_bytes() == bytes(mutated)
    assert artifact_digest(bytes(mutated)) != artifact_digest(original)


# --- the canonical layout read directly, against the JSON parser and the schema -------


@st.composite
def _artifacts(draw: st.DrawFn) -> FleetKeyArtifact:
    ids = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,12}", fullmatch=True)
    members = draw(st.lists(ids, min_size=1, max_size=5, unique=True))
    not_before = draw(st.integers(min_value=0, max_value=2**52))
    return make_artifact(
        fleet_id=draw(ids),
        seed=draw(st.text(max_size=8)),
        members=tuple(sorted(members)),
        quorum=len(members) // 2 + 1,
        guess_limit=draw(st.integers(min_value=1, max_value=MAX_GUESS_LIMIT)),
        not_before_ms=not_before,
        not_after_ms=not_before + draw(st.integers(min_value=1, max_value=2**52 - 1)),
        evidence_digest=draw(st.one_of(st.none(), st.binary(min_size=32, max_size=32))),
        extra_roles=tuple(
            draw(st.lists(st.sampled_from(["a_role", "hsm_attestation", "zz"]), unique=True))
        ),
    )


def _by_schema(data: bytes) -> FleetKeyArtifact | None:
    """What the JSON parser and the schema alone accept (None: refused)."""
    try:
        artifact = artifact_format._from_json_value(artifact_format._load_json(data))
    except ArtifactError:
        return None
    return artifact if artifact.to_bytes() == data else None


@given(_artifacts())
def test_encoding_is_canonical_json(artifact: FleetKeyArtifact) -> None:
    data = artifact.to_bytes()
    assert data == canonical_json.dumps(artifact.to_json_value())
    assert artifact_format._read_canonical(data) == _by_schema(data) == artifact
    assert parse_artifact(data) == artifact


_INSERTS = [b"", b"0", b"1", b" ", b"a", b"A", b",", b'"', b"\\", b"-"]


def _edges(data: bytes) -> list[int]:
    """Offsets next to JSON punctuation: where every number and string starts and ends."""
    return sorted({i + k for i, c in enumerate(data) if c in b'{}[]:,"' for k in (0, 1)})


def _same_as_schema(mutated: bytes) -> None:
    direct = artifact_format._read_canonical(mutated)
    expected = _by_schema(mutated)
    if direct is not None:
        assert direct == expected and direct.to_bytes() == mutated
    if expected is None:
        with pytest.raises(ArtifactError):
            parse_artifact(mutated)
    else:
        assert parse_artifact(mutated) == expected


@pytest.mark.parametrize(
    "artifact",
    [
        make_artifact(),
        make_artifact(evidence_digest=bytes(32), members=("a", "b", "c", "d"), quorum=3),
    ],
)
def test_direct_reading_matches_the_schema_at_every_edge(artifact: FleetKeyArtifact) -> None:
    original = artifact.to_bytes()
    for start in _edges(original):
        for deleted in (0, 1):
            for insert in _INSERTS:
                _same_as_schema(original[:start] + insert + original[start + deleted :])


@given(_artifacts(), st.data())
def test_direct_reading_accepts_only_what_the_schema_accepts(
    artifact: FleetKeyArtifact, data: st.DataObject
) -> None:
    original = artifact.to_bytes()
    start = data.draw(st.sampled_from(_edges(original)) | st.integers(0, len(original)))
    end = start + data.draw(st.integers(min_value=0, max_value=2))
    insert = data.draw(st.sampled_from(_INSERTS))
    _same_as_schema(original[:start] + insert + original[end:])
