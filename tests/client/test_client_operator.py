"""Operator side: the fleet-key artifact from the HSMs' public keys, the next epoch."""

from __future__ import annotations

import pytest
from client_world import DAY_MS, NOW_MS, det_bytes

from bkv.client.operator import artifact_from_public_keys, majority, next_epoch
from bkv.errors import ArtifactError, CodecError
from bkv.protocol.artifact import ROLE_CHANNEL, ROLE_OPAQUE_AKE, parse_artifact
from bkv.wire import canonical_json

CHANNEL = det_bytes("op/channel")
AKE = det_bytes("op/ake")


def public_keys(**changes: object) -> bytes:
    value: dict[str, object] = {
        "fleet_id": "fleet-a",
        "keys": [
            {"algorithm": "x25519", "public_key": CHANNEL.hex(), "role": ROLE_CHANNEL},
            {"algorithm": "ristretto255", "public_key": AKE.hex(), "role": ROLE_OPAQUE_AKE},
        ],
        "policy": {"guess_limit": 10},
    }
    value.update(changes)
    return canonical_json.dumps(value)


def build(data: bytes | None = None, **overrides: object) -> bytes:
    arguments: dict[str, object] = {
        "fleet_id": "fleet-a",
        "members": ("hsm-3", "hsm-1", "hsm-2"),
        "guess_limit": 10,
        "not_before_ms": NOW_MS,
        "not_after_ms": NOW_MS + DAY_MS,
    }
    arguments.update(overrides)
    artifact = artifact_from_public_keys(
        public_keys() if data is None else data,
        **arguments,  # type: ignore[arg-type]
    )
    return artifact.to_bytes()


def test_artifact_from_public_keys() -> None:
    artifact = parse_artifact(build())
    assert artifact.fleet_id == "fleet-a"
    assert artifact.key(ROLE_CHANNEL).key == CHANNEL
    assert artifact.key(ROLE_OPAQUE_AKE).key == AKE
    assert artifact.members == ("hsm-1", "hsm-2", "hsm-3")
    assert (artifact.policy.guess_limit, artifact.policy.quorum) == (10, 2)
    assert parse_artifact(build(quorum=3)).policy.quorum == 3
    assert parse_artifact(build(guess_limit=5)).policy.guess_limit == 5


@pytest.mark.parametrize(
    ("data", "overrides"),
    [
        (public_keys(), {"fleet_id": "fleet-b"}),  # keys of another fleet
        (public_keys(), {"guess_limit": 11}),  # more than the HSMs enforce
        (public_keys(), {"quorum": 1}),  # not a majority of 3
        (public_keys(), {"members": ()}),
        (public_keys(), {"not_after_ms": NOW_MS}),  # empty validity
        (public_keys(), {"evidence_digest": b"\x00" * 31}),
        (public_keys(keys=[]), {}),
        (public_keys(keys=[{"algorithm": "x25519", "public_key": CHANNEL.hex()}]), {}),
        (
            public_keys(
                keys=[{"algorithm": "x25519", "public_key": CHANNEL.hex(), "role": ROLE_CHANNEL}]
            ),
            {},
        ),  # no opaque_ake key
        (
            public_keys(
                keys=[
                    {"algorithm": "x25519", "public_key": CHANNEL.hex().upper(), "role": "channel"}
                ]
            ),
            {},
        ),
        (public_keys(policy={}), {}),
        (public_keys(extra=1), {}),
        (public_keys() + b"\n", {}),  # not canonical
        (b"", {}),
        (b"{" * 20_000, {}),
    ],
)
def test_artifact_from_bad_public_keys_is_refused(data: bytes, overrides: object) -> None:
    with pytest.raises(ArtifactError):
        build(data, **overrides)  # type: ignore[arg-type]


def test_majority() -> None:
    assert [majority(n) for n in (1, 2, 3, 4, 5)] == [1, 2, 2, 3, 3]
    with pytest.raises(ValueError):
        majority(0)


def test_next_epoch() -> None:
    assert next_epoch(None) == 1
    assert next_epoch({"epoch": 4, "job_id": "x"}) == 5
    for bad in ({"epoch": 0}, {"epoch": -1}, {"epoch": "3"}, {"epoch": True}, {}):
        with pytest.raises(CodecError):
            next_epoch(bad)
