"""The fleet's public keys as ``public-keys.json`` (sans-IO rendering; the adapters write it).

``bkv hsm init`` writes this document next to the sealed state and the HSM
process serves it (docs/operations.md); the operator turns it into the
fleet-key artifact with :func:`bkv.client.operator.artifact_from_public_keys`.
Layout, canonical JSON (:mod:`bkv.wire.canonical_json`)::

    {"fleet_id": "<id>",
     "keys": [{"algorithm": "x25519", "public_key": "<hex>", "role": "channel"},
              {"algorithm": "ristretto255", "public_key": "<hex>", "role": "opaque_ake"}],
     "policy": {"guess_limit": <the fleet's maximum guess limit>}}

Roles and algorithms are those of :mod:`bkv.protocol.artifact`, sorted by role,
so the operator can copy ``keys`` into the artifact unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

from bkv.protocol.artifact import ROLE_CHANNEL, ROLE_OPAQUE_AKE
from bkv.wire import canonical_json


@dataclass(frozen=True)
class FleetPublicKeys:
    """What an HSM publishes: its fleet, its two public keys and the guess limit it enforces."""

    fleet_id: str
    channel_public_key: bytes  # HPKE X25519: clients seal requests to it
    opaque_public_key: bytes  # OPAQUE AKE (ristretto255)
    max_guess_limit: int


def public_keys_document(keys: FleetPublicKeys) -> dict[str, object]:
    """The ``public-keys.json`` document as a JSON value."""
    return {
        "fleet_id": keys.fleet_id,
        "keys": [
            {
                "algorithm": "x25519",
                "public_key": keys.channel_public_key.hex(),
                "role": ROLE_CHANNEL,
            },
            {
                "algorithm": "ristretto255",
                "public_key": keys.opaque_public_key.hex(),
                "role": ROLE_OPAQUE_AKE,
            },
        ],
        "policy": {"guess_limit": keys.max_guess_limit},
    }


def render_public_keys(keys: FleetPublicKeys) -> bytes:
    """``public-keys.json``: :func:`public_keys_document` as canonical JSON bytes."""
    return canonical_json.dumps(public_keys_document(keys))


__all__ = ["FleetPublicKeys", "public_keys_document", "render_public_keys"]
