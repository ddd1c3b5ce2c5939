"""bkv.protocol.evidence: the format, each numbered check of verify_evidence, the builders.

A vendor root, five devices in five datacenters, their statements and the
evidence are built in-process with real keys and certificates (evidence_world);
every field of the document is tampered with once and each time the check that
covers it fails with its own named error.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
from collections.abc import Callable
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from evidence_world import (
    MEASUREMENT,
    NOT_BEFORE,
    NOW_MS,
    World,
    der,
    det,
    flip_byte,
    make_vendor,
    make_world,
    tamper,
)

from bkv.errors import (
    ArtifactError,
    AttestationError,
    AttestationSignatureError,
    DatacenterError,
    DeviceChainError,
    DuplicateDeviceError,
    EvidenceError,
    EvidenceFormatError,
    FleetKeyMismatchError,
    MeasurementMismatchError,
    QuorumError,
    StatementMismatchError,
    VerificationError,
)
from bkv.keystore import SoftwareSigner
from bkv.protocol.artifact import FleetPolicy, PublicKey
from bkv.protocol.evidence import (
    DEVICE_EKU_OID,
    MAX_EVIDENCE_BYTES,
    FleetDescription,
    Member,
    SignedStatement,
    assemble_evidence,
    build_statement,
    check_artifact_matches,
    check_evidence_for_artifact,
    decode_evidence,
    evidence_digest,
    sign_statement,
    verify_evidence,
)
from bkv.wire import canonical_json

Mutation = Callable[[dict[str, Any]], object]


@pytest.fixture(scope="module")
def world() -> World:
    return make_world()


@pytest.fixture(scope="module")
def evidence(world: World) -> bytes:
    return world.evidence()


def verify(world: World, data: bytes, **kwargs: Any) -> Any:
    return verify_evidence(data, world.vendor.der, now_ms=world.now_ms, **kwargs)


def member_value(value: dict[str, Any], name: str) -> dict[str, Any]:
    return next(m for m in value["members"] if m["name"] == name)


def statement_entry(value: dict[str, Any], signer: str) -> dict[str, Any]:
    return next(s for s in value["statements"] if s["signer"] == signer)


# --- the valid document --------------------------------------------------------------------


def test_valid_evidence_verifies(world: World, evidence: bytes) -> None:
    verified = verify(world, evidence)
    assert verified.digest == hashlib.sha256(evidence).digest() == evidence_digest(evidence)
    assert verified.fleet_id == "fleet-a"
    assert verified.keys == world.fleet.keys
    assert verified.measurement == MEASUREMENT
    assert not verified.measurement_checked
    assert verified.policy == FleetPolicy(guess_limit=10, quorum=3)
    assert verified.signers == world.names
    assert [m.datacenter for m in verified.members] == [f"dc-{i}" for i in range(1, 6)]
    assert [m.attestation_key for m in verified.members] == [
        world.signers[n].public_key() for n in world.names
    ]
    assert len({m.certificate_serial for m in verified.members}) == 5
    assert verified.vendor_root_sha256 == hashlib.sha256(world.vendor.der).digest()
    assert "Test Vendor" in verified.vendor_root_subject
    assert verified.key("channel").algorithm == "x25519"


def test_expected_measurement_is_compared(world: World, evidence: bytes) -> None:
    verified = verify(world, evidence, expected_measurement=MEASUREMENT)
    assert verified.measurement_checked


def test_decode_round_trips_and_is_canonical(world: World, evidence: bytes) -> None:
    decoded = decode_evidence(evidence)
    assert decoded.to_bytes() == evidence
    assert decoded.fleet == world.fleet
    assert canonical_json.loads(evidence, max_depth=8) == json.loads(evidence)
    # What a member signs is the statement the document carries, byte for byte.
    for statement in decoded.statements:
        assert statement.statement == build_statement(world.fleet, statement.signer)


def test_statement_binds_every_field_and_the_signer(world: World) -> None:
    statement = json.loads(build_statement(world.fleet, "hsm-2"))
    assert statement["type"] == "bkv.deployment_statement"
    assert statement["version"] == 1
    assert statement["signer"] == "hsm-2"
    assert statement["fleet_id"] == "fleet-a"
    assert statement["measurement"] == MEASUREMENT.hex()
    assert [m["datacenter"] for m in statement["members"]] == [f"dc-{i}" for i in range(1, 6)]
    assert statement["policy"] == {"guess_limit": 10, "quorum": 3}
    assert {k["role"] for k in statement["keys"]} == {"channel", "opaque_ake"}
    assert "transcript_digest" in statement


def test_statement_signatures_verify_without_bkv(world: World, evidence: bytes) -> None:
    # docs/audit.md §7: json's sorted compact output is the canonical form here.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey  # noqa: PLC0415

    document = json.loads(evidence)
    keys = {m["name"]: m["attestation_key"]["public_key"] for m in document["members"]}
    for entry in document["statements"]:
        signed = json.dumps(entry["statement"], sort_keys=True, separators=(",", ":")).encode()
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(keys[entry["signer"]])).verify(
            bytes.fromhex(entry["signature"]), signed
        )


def test_a_bare_majority_of_statements_is_enough(world: World) -> None:
    verified = verify(world, world.evidence(["hsm-1", "hsm-3", "hsm-5"]))
    assert verified.signers == ("hsm-1", "hsm-3", "hsm-5")


def test_every_error_is_a_verification_error() -> None:
    for error in (
        EvidenceFormatError,
        DeviceChainError,
        AttestationSignatureError,
        StatementMismatchError,
        DuplicateDeviceError,
        DatacenterError,
        QuorumError,
        MeasurementMismatchError,
        FleetKeyMismatchError,
    ):
        assert issubclass(error, EvidenceError)
        assert issubclass(error, AttestationError)
        assert issubclass(error, VerificationError)


def test_sixty_four_members_fit_the_limit() -> None:
    big = make_world(64, seed="big")
    data = big.evidence()
    assert len(data) <= MAX_EVIDENCE_BYTES
    assert len(verify(big, data).signers) == 64


# --- each field tampered -----------------------------------------------------------------------


def _set_key(role: str) -> Mutation:
    def mutate(value: dict[str, Any]) -> None:
        key = next(k for k in value["keys"] if k["role"] == role)
        key["public_key"] = det("other key").hex()

    return mutate


def _drop_member(value: dict[str, Any]) -> None:
    value["members"] = [m for m in value["members"] if m["name"] != "hsm-5"]
    value["statements"] = [s for s in value["statements"] if s["signer"] != "hsm-5"]


def _move_datacenter(value: dict[str, Any]) -> None:
    member_value(value, "hsm-2")["datacenter"] = "dc-99"


def _quorum(value: dict[str, Any]) -> None:
    value["policy"]["quorum"] = 4


def _guess_limit(value: dict[str, Any]) -> None:
    value["policy"]["guess_limit"] = 11


BOUND_FIELDS: dict[str, Mutation] = {
    "fleet_id": lambda v: v.update(fleet_id="fleet-b"),
    "channel key": _set_key("channel"),
    "opaque_ake key": _set_key("opaque_ake"),
    "measurement": lambda v: v.update(measurement=det("other code").hex()),
    "policy guess_limit": _guess_limit,
    "policy quorum": _quorum,
    "members list": _drop_member,
    "datacenter": _move_datacenter,
    "transcript_digest": lambda v: v.update(transcript_digest=det("other transcript").hex()),
}


@pytest.mark.parametrize("field", sorted(BOUND_FIELDS))
def test_tampered_bound_field_breaks_the_statements(
    world: World, evidence: bytes, field: str
) -> None:
    with pytest.raises(StatementMismatchError, match="binds another"):
        verify(world, tamper(evidence, BOUND_FIELDS[field]))


def test_statement_mismatch_names_the_field(world: World, evidence: bytes) -> None:
    with pytest.raises(StatementMismatchError, match="fleet_id"):
        verify(world, tamper(evidence, BOUND_FIELDS["fleet_id"]))


def test_tampered_statement_signature(world: World, evidence: bytes) -> None:
    def mutate(value: dict[str, Any]) -> None:
        entry = statement_entry(value, "hsm-3")
        entry["signature"] = flip_byte(bytes.fromhex(entry["signature"]), 5).hex()

    with pytest.raises(AttestationSignatureError, match="hsm-3"):
        verify(world, tamper(evidence, mutate))


def test_tampered_statement_content(world: World, evidence: bytes) -> None:
    # The statement and the document changed together: the signature no longer holds.
    def mutate(value: dict[str, Any]) -> None:
        value["fleet_id"] = "fleet-b"
        for entry in value["statements"]:
            entry["statement"]["fleet_id"] = "fleet-b"

    with pytest.raises(AttestationSignatureError):
        verify(world, tamper(evidence, mutate))


def test_statement_signed_by_another_member(world: World, evidence: bytes) -> None:
    def mutate(value: dict[str, Any]) -> None:
        statement_entry(value, "hsm-2")["signature"] = statement_entry(value, "hsm-1")["signature"]

    with pytest.raises(AttestationSignatureError, match="hsm-2"):
        verify(world, tamper(evidence, mutate))


def test_statement_of_another_signer_is_a_mismatch(world: World) -> None:
    # hsm-1 signs hsm-2's statement and the document lists it as hsm-1's.
    wrong = build_statement(world.fleet, "hsm-2")
    statements = [sign_statement(world.fleet, n, world.signers[n]) for n in ("hsm-2", "hsm-3")]
    statements.append(SignedStatement("hsm-1", wrong, world.signers["hsm-1"].sign(wrong)))
    with pytest.raises(StatementMismatchError, match="signer"):
        verify(world, assemble_evidence(world.fleet, statements))


def test_statement_signed_for_another_fleet(world: World) -> None:
    other = make_world(fleet_id="fleet-b")  # same devices (same seeds), another fleet id
    statements = [sign_statement(other.fleet, n, other.signers[n]) for n in other.names]
    with pytest.raises(StatementMismatchError, match="fleet_id"):
        verify(world, assemble_evidence(world.fleet, statements))


def test_tampered_chain_certificate(world: World, evidence: bytes) -> None:
    def mutate(value: dict[str, Any]) -> None:
        member = member_value(value, "hsm-4")
        leaf = base64.b64decode(member["certificate_chain"][0])
        member["certificate_chain"][0] = base64.b64encode(flip_byte(leaf, len(leaf) - 3)).decode()

    with pytest.raises(DeviceChainError, match="hsm-4"):
        verify(world, tamper(evidence, mutate))


def test_swapped_chains(world: World, evidence: bytes) -> None:
    def mutate(value: dict[str, Any]) -> None:
        one, two = member_value(value, "hsm-1"), member_value(value, "hsm-2")
        one["certificate_chain"], two["certificate_chain"] = (
            two["certificate_chain"],
            one["certificate_chain"],
        )

    with pytest.raises(DeviceChainError, match="another key"):
        verify(world, tamper(evidence, mutate))


def test_tampered_attestation_key(world: World, evidence: bytes) -> None:
    def mutate(value: dict[str, Any]) -> None:
        key = SoftwareSigner(det("intruder")).public_key().hex()
        member_value(value, "hsm-1")["attestation_key"]["public_key"] = key

    with pytest.raises(DeviceChainError, match="another key"):
        verify(world, tamper(evidence, mutate))


@pytest.mark.parametrize("version", [0, 2, "1", True])
def test_format_version(world: World, evidence: bytes, version: object) -> None:
    with pytest.raises(EvidenceFormatError, match="version"):
        verify(world, tamper(evidence, lambda v: v.update(version=version)))


def test_format_type(world: World, evidence: bytes) -> None:
    with pytest.raises(EvidenceFormatError, match="type"):
        verify(world, tamper(evidence, lambda v: v.update(type="bkv.fleet_keys")))


@pytest.mark.parametrize(
    "respell",
    [
        lambda d: json.dumps(json.loads(d), indent=1).encode(),
        lambda d: json.dumps(json.loads(d), sort_keys=False, separators=(", ", ": ")).encode(),
        lambda d: json.dumps(dict(reversed(json.loads(d).items())), separators=(",", ":")).encode(),
        lambda d: d + b"\n",
        lambda d: b" " + d,
        lambda d: d.replace(b'"fleet-a"', b'"\\u0066leet-a"', 1),
        lambda d: d.replace(b'"version":1', b'"version":1.0'),
        lambda d: d[:-1] + b',"version":1}',
    ],
    ids=["indented", "spaced", "reordered", "newline", "leading-space", "escape", "float", "dup"],
)
def test_non_canonical_json(
    world: World, evidence: bytes, respell: Callable[[bytes], bytes]
) -> None:
    data = respell(evidence)
    assert data != evidence
    with pytest.raises(EvidenceFormatError):
        verify(world, data)


def test_oversized(world: World) -> None:
    with pytest.raises(EvidenceFormatError, match="over"):
        verify(world, b"{" + b" " * MAX_EVIDENCE_BYTES + b"}")


@pytest.mark.parametrize("data", [b"", b"[]", b"null", b"\xff", b'{"type":"x"}'])
def test_not_evidence(world: World, data: bytes) -> None:
    with pytest.raises(EvidenceFormatError):
        verify(world, data)


FORMAT_BREAKS: dict[str, Mutation] = {
    "extra field": lambda v: v.update(extra=1),
    "missing field": lambda v: v.pop("transcript_digest"),
    "uppercase hex": lambda v: v.update(measurement=v["measurement"].upper()),
    "short digest": lambda v: v.update(transcript_digest="00" * 31),
    "unsorted members": lambda v: v["members"].reverse(),
    "unsorted statements": lambda v: v["statements"].reverse(),
    "duplicate statement": lambda v: v["statements"].insert(0, v["statements"][0]),
    "statement by a non-member": lambda v: v["statements"][-1].update(signer="hsm-9"),
    "unknown key role": lambda v: v["keys"][0].update(role="hsm_attestation"),
    "wrong key algorithm": lambda v: v["keys"][0].update(algorithm="ed25519"),
    "one key only": lambda v: v["keys"].pop(),
    "quorum not a majority": lambda v: v["policy"].update(quorum=2),
    "guess limit zero": lambda v: v["policy"].update(guess_limit=0),
    "bad member name": lambda v: v["members"][0].update(name="HSM 1"),
    "bad datacenter": lambda v: v["members"][0].update(datacenter=""),
    "other attestation algorithm": lambda v: v["members"][0]["attestation_key"].update(
        algorithm="ecdsa-p256"
    ),
    "small-order attestation key": lambda v: v["members"][0]["attestation_key"].update(
        public_key="01" + "00" * 31
    ),
    "empty chain": lambda v: v["members"][0].update(certificate_chain=[]),
    "chain of four": lambda v: v["members"][0]["certificate_chain"].extend(["AA=="] * 3),
    "base64 without padding": lambda v: v["members"][0]["certificate_chain"].__setitem__(
        0, v["members"][0]["certificate_chain"][0].rstrip("=") + "A"
    ),
    "base64 url alphabet": lambda v: v["members"][0]["certificate_chain"].__setitem__(
        0, v["members"][0]["certificate_chain"][0].replace("+", "-").replace("/", "_") + "-_"
    ),
    "base64 with non-zero pad bits": lambda v: v["members"][0]["certificate_chain"].__setitem__(
        0, "AB=="
    ),
    "statement not an object": lambda v: v["statements"][0].update(statement="x"),
    "short signature": lambda v: v["statements"][0].update(signature="00" * 63),
    "no member": lambda v: v.update(members=[], statements=[]),
}


@pytest.mark.parametrize("case", sorted(FORMAT_BREAKS))
def test_format_breaks(world: World, evidence: bytes, case: str) -> None:
    with pytest.raises(EvidenceFormatError):
        verify(world, tamper(evidence, FORMAT_BREAKS[case]))


# --- devices and their chains -------------------------------------------------------------------


def test_device_certificate_from_another_root(world: World) -> None:
    other = make_vendor("other vendor", name="Other Vendor")

    def hook(members: list[Member], signers: dict[str, SoftwareSigner]) -> None:
        key = signers["hsm-3"].public_key()
        members[2] = Member("hsm-3", "dc-3", key, (other.certify(key, "SN-x"),))

    rogue = make_world(vendor=world.vendor, member_hook=hook)
    with pytest.raises(DeviceChainError, match="hsm-3: certificate 0 is not signed"):
        verify(rogue, rogue.evidence())


def test_evidence_against_another_pinned_root(world: World, evidence: bytes) -> None:
    with pytest.raises(DeviceChainError, match="hsm-1"):
        verify_evidence(evidence, make_vendor("other").der, now_ms=NOW_MS)


def test_pinned_root_that_is_not_a_certificate(evidence: bytes) -> None:
    with pytest.raises(ValueError, match="vendor root"):
        verify_evidence(evidence, b"not a certificate", now_ms=NOW_MS)


def test_certificates_must_be_valid_now(world: World, evidence: bytes) -> None:
    before = int(NOT_BEFORE.timestamp() * 1000) - 1
    with pytest.raises(DeviceChainError, match="not valid now"):
        verify_evidence(evidence, world.vendor.der, now_ms=before)
    after_devices = NOW_MS + 11 * 365 * 24 * 3600 * 1000  # devices: 10 years, root: 20
    with pytest.raises(DeviceChainError, match="certificate 0 is not valid now"):
        verify_evidence(evidence, world.vendor.der, now_ms=after_devices)


def _leaf(
    issuer_key: Ed25519PrivateKey,
    issuer: x509.Certificate,
    subject_key: bytes,
    *,
    serial_name: str = "SN-custom",
    ca: bool | None = False,
    key_usage: str | None = "device",
    eku: bool = True,
    path_length: int | None = None,
    extra: x509.ExtensionType | None = None,
    extra_critical: bool = True,
    days: int = 3650,
) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: PLC0415
        Ed25519PublicKey,
    )

    builder = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, "bkv-hsm-device"),
                    x509.NameAttribute(NameOID.SERIAL_NUMBER, serial_name),
                ]
            )
        )
        .issuer_name(issuer.subject)
        .public_key(Ed25519PublicKey.from_public_bytes(subject_key))
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOT_BEFORE)
        .not_valid_after(NOT_BEFORE + datetime.timedelta(days=days))
    )
    if ca is not None:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True
        )
    if key_usage is not None:
        signing = key_usage == "device"
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=signing,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=not signing,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    if eku:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([x509.ObjectIdentifier(DEVICE_EKU_OID)]), critical=False
        )
    if extra is not None:
        builder = builder.add_extension(extra, critical=extra_critical)
    return der(builder.sign(issuer_key, None))


def _with_chain(
    world: World, names: tuple[str, ...], make: Callable[[bytes, int], tuple[bytes, ...]]
) -> World:
    """The world with the chains of ``names`` made by ``make(key, index)``."""

    def hook(members: list[Member], signers: dict[str, SoftwareSigner]) -> None:
        for name in names:
            index = world.names.index(name)
            member = members[index]
            chain = make(member.attestation_key, index)
            members[index] = Member(member.name, member.datacenter, member.attestation_key, chain)

    return make_world(vendor=world.vendor, member_hook=hook)


LEAF_BREAKS: dict[str, tuple[dict[str, Any], str]] = {
    "no EKU": ({"eku": False}, "bkv-hsm-device"),
    "a CA": ({"ca": True}, "end-entity"),
    "no basicConstraints": ({"ca": None}, "end-entity"),
    "no keyUsage": ({"key_usage": None}, "keyUsage"),
    "keyCertSign": ({"key_usage": "ca"}, "keyUsage"),
    "unknown critical extension": (
        {"extra": x509.OCSPNoCheck()},
        "unsupported critical extension",
    ),
}


@pytest.mark.parametrize("case", sorted(LEAF_BREAKS))
def test_device_leaf_profile(world: World, case: str) -> None:
    kwargs, message = LEAF_BREAKS[case]
    vendor = world.vendor
    broken = _with_chain(
        world, ("hsm-2",), lambda key, _: (_leaf(vendor.key, vendor.certificate, key, **kwargs),)
    )
    with pytest.raises(DeviceChainError, match=message):
        verify(broken, broken.evidence())


def test_a_non_critical_unknown_extension_is_fine(world: World) -> None:
    vendor = world.vendor
    fine = _with_chain(
        world,
        ("hsm-2",),
        lambda key, _: (
            _leaf(
                vendor.key, vendor.certificate, key, extra=x509.OCSPNoCheck(), extra_critical=False
            ),
        ),
    )
    verify(fine, fine.evidence())


def _root(seed: str, path_length: int | None) -> tuple[Ed25519PrivateKey, x509.Certificate]:
    key = Ed25519PrivateKey.from_private_bytes(det(seed))
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, seed)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOT_BEFORE)
        .not_valid_after(NOT_BEFORE + datetime.timedelta(days=7300))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, None)
    )
    return key, certificate


def _intermediate(
    root_key: Ed25519PrivateKey, root: x509.Certificate, *, ca: bool = True
) -> tuple[Ed25519PrivateKey, x509.Certificate]:
    key = Ed25519PrivateKey.from_private_bytes(det("intermediate"))
    pub = key.public_key().public_bytes_raw()
    der_bytes = _leaf(root_key, root, pub, ca=ca, key_usage="ca", eku=False, path_length=0)
    certificate = x509.load_der_x509_certificate(der_bytes)
    # The intermediate's subject must differ from the devices'.
    return key, certificate


def test_chain_through_an_intermediate(world: World) -> None:
    root_key, root = _root("root with intermediates", 1)
    key, intermediate = _intermediate(root_key, root)
    chained = _with_chain(
        world,
        world.names,
        lambda k, i: (_leaf(key, intermediate, k, serial_name=f"SN-{i}"), der(intermediate)),
    )
    verified = verify_evidence(chained.evidence(), der(root), now_ms=NOW_MS)
    assert verified.members[0].chain_length == 2


def test_intermediate_beyond_the_roots_path_length(world: World) -> None:
    root_key, root = _root("root without intermediates", 0)
    key, intermediate = _intermediate(root_key, root)
    chained = _with_chain(
        world,
        world.names,
        lambda k, i: (_leaf(key, intermediate, k, serial_name=f"SN-{i}"), der(intermediate)),
    )
    with pytest.raises(DeviceChainError, match="path length"):
        verify_evidence(chained.evidence(), der(root), now_ms=NOW_MS)


def test_intermediate_that_is_not_a_ca(world: World) -> None:
    root_key, root = _root("root with intermediates", 1)
    key, intermediate = _intermediate(root_key, root, ca=False)
    chained = _with_chain(
        world,
        world.names,
        lambda k, i: (_leaf(key, intermediate, k, serial_name=f"SN-{i}"), der(intermediate)),
    )
    with pytest.raises(DeviceChainError, match="certificate 1 is not a CA"):
        verify_evidence(chained.evidence(), der(root), now_ms=NOW_MS)


def test_vendor_root_must_be_a_self_signed_ca(world: World, evidence: bytes) -> None:
    vendor = world.vendor
    device_cert = world.fleet.members[0].certificate_chain[0]
    with pytest.raises(DeviceChainError, match="vendor root"):
        verify_evidence(evidence, device_cert, now_ms=NOW_MS)
    leaf_as_root = _leaf(vendor.key, vendor.certificate, vendor.key.public_key().public_bytes_raw())
    with pytest.raises(DeviceChainError, match="vendor root"):
        verify_evidence(evidence, leaf_as_root, now_ms=NOW_MS)


def test_non_der_certificate(world: World, evidence: bytes) -> None:
    def mutate(value: dict[str, Any]) -> None:
        member_value(value, "hsm-1")["certificate_chain"][0] = base64.b64encode(b"junk").decode()

    with pytest.raises(DeviceChainError, match="not a DER"):
        verify(world, tamper(evidence, mutate))


# --- distinct devices, datacenters, quorum, measurement ------------------------------------


def test_duplicate_device(world: World) -> None:
    def hook(members: list[Member], signers: dict[str, SoftwareSigner]) -> None:
        twin = members[3]
        members[4] = Member("hsm-5", "dc-5", twin.attestation_key, twin.certificate_chain)
        signers["hsm-5"] = signers["hsm-4"]

    duplicated = make_world(vendor=world.vendor, member_hook=hook)
    with pytest.raises(DuplicateDeviceError, match="hsm-4 and hsm-5"):
        verify(duplicated, duplicated.evidence())


def test_two_certificates_for_one_device_serial(world: World) -> None:
    # Two keys, but the vendor certified both as the same device (same subject).
    def hook(members: list[Member], signers: dict[str, SoftwareSigner]) -> None:
        key = signers["hsm-5"].public_key()
        members[4] = Member("hsm-5", "dc-5", key, (world.vendor.certify(key, "SN-world-4"),))

    cloned = make_world(vendor=world.vendor, member_hook=hook)
    with pytest.raises(DuplicateDeviceError, match="subject"):
        verify(cloned, cloned.evidence())


def test_two_members_in_one_datacenter(world: World) -> None:
    crowded = make_world(vendor=world.vendor, datacenters=["dc-1", "dc-2", "dc-3", "dc-2", "dc-5"])
    with pytest.raises(DatacenterError, match="hsm-2 and hsm-4 are both in datacenter dc-2"):
        verify(crowded, crowded.evidence())


def test_fewer_than_a_majority_of_statements(world: World) -> None:
    with pytest.raises(QuorumError, match="2 of 5"):
        verify(world, world.evidence(["hsm-1", "hsm-2"]))
    with pytest.raises(QuorumError, match="0 of 5"):
        verify(world, world.evidence([]))


def test_fewer_statements_than_the_policy_quorum(world: World) -> None:
    strict = make_world(vendor=world.vendor, quorum=4)
    with pytest.raises(QuorumError, match="needs 4"):
        verify(strict, strict.evidence(["hsm-1", "hsm-2", "hsm-3"]))


def test_measurement_mismatch(world: World, evidence: bytes) -> None:
    with pytest.raises(MeasurementMismatchError, match=MEASUREMENT.hex()):
        verify(world, evidence, expected_measurement=det("the code I built"))


def test_bad_arguments_are_caller_errors(world: World, evidence: bytes) -> None:
    with pytest.raises(ValueError, match="now_ms"):
        verify_evidence(evidence, world.vendor.der, now_ms=-1)
    with pytest.raises(ValueError, match="expected_measurement"):
        verify(world, evidence, expected_measurement=b"short")
    with pytest.raises(TypeError):
        verify_evidence("text", world.vendor.der, now_ms=NOW_MS)  # type: ignore[arg-type]


# --- the builders ------------------------------------------------------------------------------


def test_builders_refuse_misuse(world: World) -> None:
    with pytest.raises(ValueError, match="not a member"):
        build_statement(world.fleet, "hsm-9")
    with pytest.raises(ValueError, match="not the attestation key"):
        sign_statement(world.fleet, "hsm-1", world.signers["hsm-2"])
    one = sign_statement(world.fleet, "hsm-1", world.signers["hsm-1"])
    with pytest.raises(EvidenceFormatError, match="two statements"):
        assemble_evidence(world.fleet, [one, one])
    with pytest.raises(EvidenceFormatError, match="canonical"):
        assemble_evidence(world.fleet, [SignedStatement("hsm-1", b"{ }", one.signature)])


def test_fleet_description_invariants(world: World) -> None:
    fleet = world.fleet
    with pytest.raises(EvidenceFormatError, match="sorted"):
        FleetDescription(
            fleet.fleet_id,
            fleet.keys,
            fleet.measurement,
            tuple(reversed(fleet.members)),
            fleet.policy,
            fleet.transcript_digest,
        )
    with pytest.raises(EvidenceFormatError, match="keys"):
        FleetDescription(
            fleet.fleet_id,
            (*fleet.keys, PublicKey("zz", "ed25519", bytes(32))),
            fleet.measurement,
            fleet.members,
            fleet.policy,
            fleet.transcript_digest,
        )
    with pytest.raises(EvidenceFormatError, match="majority"):
        FleetDescription(
            fleet.fleet_id,
            fleet.keys,
            fleet.measurement,
            fleet.members,
            FleetPolicy(guess_limit=10, quorum=2),
            fleet.transcript_digest,
        )


# --- the published artifact -------------------------------------------------------------------


def test_artifact_that_publishes_the_attested_keys(world: World, evidence: bytes) -> None:
    verified = verify(world, evidence)
    check_artifact_matches(verified, world.artifact(evidence))
    again = check_evidence_for_artifact(
        world.artifact(evidence).to_bytes(), evidence, world.vendor.der, now_ms=NOW_MS
    )
    assert again == verified


ARTIFACT_CHANGES: dict[str, tuple[dict[str, Any], str]] = {
    "no evidence": ({"evidence_digest": None}, "names no deployment evidence"),
    "other evidence": ({"evidence_digest": det("other")}, "names evidence"),
    "other fleet": ({"fleet_id": "fleet-b"}, "fleet"),
    "other channel key": (
        {
            "keys": (
                PublicKey("channel", "x25519", det("other")),
                PublicKey("opaque_ake", "ristretto255", det("world/ake")),
            )
        },
        "key channel",
    ),
    "an unattested role": (
        {
            "keys": (
                PublicKey("channel", "x25519", det("world/channel")),
                PublicKey("hsm_attestation", "ed25519", det("x")),
                PublicKey("opaque_ake", "ristretto255", det("world/ake")),
            )
        },
        "key hsm_attestation",
    ),
    "other members": (
        {"members": ("hsm-1", "hsm-2", "hsm-3", "hsm-4", "hsm-6")},
        "members",
    ),
    "other policy": ({"policy": FleetPolicy(guess_limit=5, quorum=3)}, "policy"),
}


@pytest.mark.parametrize("case", sorted(ARTIFACT_CHANGES))
def test_artifact_that_publishes_something_else(world: World, evidence: bytes, case: str) -> None:
    changes, message = ARTIFACT_CHANGES[case]
    verified = verify(world, evidence)
    artifact = world.artifact(evidence, **changes)
    with pytest.raises(FleetKeyMismatchError, match=message):
        check_artifact_matches(verified, artifact)
    with pytest.raises(FleetKeyMismatchError):
        check_evidence_for_artifact(artifact.to_bytes(), evidence, world.vendor.der, now_ms=NOW_MS)


def test_evidence_checker_parses_the_artifact_strictly(world: World, evidence: bytes) -> None:
    with pytest.raises(ArtifactError):
        check_evidence_for_artifact(b"{}", evidence, world.vendor.der, now_ms=NOW_MS)


def test_digest_covers_the_exact_bytes(evidence: bytes) -> None:
    assert evidence_digest(evidence) != evidence_digest(evidence + b" ")
    assert evidence_digest(bytearray(evidence)) == hashlib.sha256(evidence).digest()
    with pytest.raises(TypeError):
        evidence_digest("text")  # type: ignore[arg-type]


def test_vendor_device_certificate_profile(world: World) -> None:
    leaf = x509.load_der_x509_certificate(world.fleet.members[0].certificate_chain[0])
    assert leaf.issuer == world.vendor.certificate.subject
    constraints = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and not constraints.value.ca
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert [o.dotted_string for o in eku] == [DEVICE_EKU_OID]
    assert leaf.public_bytes(Encoding.DER) == world.fleet.members[0].certificate_chain[0]
    serials = leaf.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)
    assert [a.value for a in serials] == ["SN-world-1"]
