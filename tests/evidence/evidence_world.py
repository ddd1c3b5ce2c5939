"""A vendor, devices and a fleet built in-process with real keys and certificates.

The vendor root and the device certificates come from the emulated vendor's own
builders (:mod:`bkv.vendor.ca`), the device keys are Ed25519 signers like the
HSMs', and the statements and the evidence are made with the builders of
:mod:`bkv.protocol.evidence`: what the tests verify is what the real parts make.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding

from bkv.keystore import SoftwareSigner
from bkv.protocol.artifact import FleetKeyArtifact, FleetPolicy, PublicKey
from bkv.protocol.evidence import (
    FleetDescription,
    Member,
    assemble_evidence,
    evidence_digest,
    sign_statement,
)
from bkv.vendor.ca import make_device_certificate, make_root_certificate
from bkv.wire import canonical_json

UTC = datetime.UTC
#: Every certificate of the fixed world starts here; NOW_MS is a year later.
NOT_BEFORE = datetime.datetime(2026, 1, 1, tzinfo=UTC)
NOW_MS = int(datetime.datetime(2027, 1, 1, tzinfo=UTC).timestamp() * 1000)
DAY_MS = 24 * 3600 * 1000
MEASUREMENT = hashlib.sha256(b"measurement").digest()
TRANSCRIPT = hashlib.sha256(b"transcript").digest()


def det(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(Encoding.DER)


@dataclass(frozen=True)
class Vendor:
    key: Ed25519PrivateKey
    certificate: x509.Certificate

    @property
    def der(self) -> bytes:
        return der(self.certificate)

    def certify(
        self, key: bytes, serial: str, *, not_before: datetime.datetime = NOT_BEFORE
    ) -> bytes:
        return der(
            make_device_certificate(
                self.key, self.certificate, key, serial, not_before=not_before, days=3650
            )
        )


def make_vendor(
    seed: str = "vendor", *, not_before: datetime.datetime = NOT_BEFORE, name: str = "Test Vendor"
) -> Vendor:
    key = Ed25519PrivateKey.from_private_bytes(det(seed))
    return Vendor(key, make_root_certificate(key, name, not_before=not_before, days=7300))


def fleet_keys(seed: str = "fleet") -> tuple[PublicKey, ...]:
    return (
        PublicKey("channel", "x25519", det(f"{seed}/channel")),
        PublicKey("opaque_ake", "ristretto255", det(f"{seed}/ake")),
    )


@dataclass(frozen=True)
class World:
    """A vendor, one signer per member, and the fleet description they attest."""

    vendor: Vendor
    fleet: FleetDescription
    signers: Mapping[str, SoftwareSigner]
    now_ms: int = NOW_MS
    names: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(m.name for m in self.fleet.members))

    def evidence(self, signed_by: Iterable[str] | None = None) -> bytes:
        names = self.names if signed_by is None else tuple(signed_by)
        return assemble_evidence(
            self.fleet, [sign_statement(self.fleet, n, self.signers[n]) for n in names]
        )

    def artifact(self, evidence: bytes, **changes: Any) -> FleetKeyArtifact:
        fields: dict[str, Any] = {
            "fleet_id": self.fleet.fleet_id,
            "keys": self.fleet.keys,
            "members": self.names,
            "policy": self.fleet.policy,
            "not_before_ms": self.now_ms - DAY_MS,
            "not_after_ms": self.now_ms + 365 * DAY_MS,
            "evidence_digest": evidence_digest(evidence),
        }
        fields.update(changes)
        return FleetKeyArtifact(**fields)


def make_world(
    members: int = 5,
    *,
    vendor: Vendor | None = None,
    datacenters: Iterable[str] | None = None,
    not_before: datetime.datetime = NOT_BEFORE,
    now_ms: int = NOW_MS,
    measurement: bytes = MEASUREMENT,
    quorum: int | None = None,
    fleet_id: str = "fleet-a",
    seed: str = "world",
    member_hook: Callable[[list[Member], dict[str, SoftwareSigner]], None] | None = None,
) -> World:
    """``members`` HSMs hsm-1..hsm-N in dc-1..dc-N (or ``datacenters``), all certified."""
    vendor = vendor or make_vendor(not_before=not_before)
    dcs = list(datacenters) if datacenters is not None else [f"dc-{i}" for i in range(1, 100)]
    signers: dict[str, SoftwareSigner] = {}
    member_list: list[Member] = []
    width = len(str(members))
    for i in range(1, members + 1):
        name = f"hsm-{i:0{width}d}"
        signer = SoftwareSigner(det(f"{seed}/device/{i}"))
        chain = (vendor.certify(signer.public_key(), f"SN-{seed}-{i}", not_before=not_before),)
        signers[name] = signer
        member_list.append(Member(name, dcs[i - 1], signer.public_key(), chain))
    if member_hook is not None:
        member_hook(member_list, signers)
    fleet = FleetDescription(
        fleet_id=fleet_id,
        keys=fleet_keys(seed),
        measurement=measurement,
        members=tuple(member_list),
        policy=FleetPolicy(guess_limit=10, quorum=quorum or members // 2 + 1),
        transcript_digest=TRANSCRIPT,
    )
    return World(vendor, fleet, signers, now_ms)


def tamper(evidence: bytes, mutate: Callable[[dict[str, Any]], object]) -> bytes:
    """The evidence with ``mutate`` applied to its JSON value, re-encoded canonically."""
    value = json.loads(evidence)
    mutate(value)
    return canonical_json.dumps(value)


def flip_byte(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]
