"""``bkv audit verify-deployment``: check a fleet's deployment evidence (sans-IO core).

Three steps, each reported with what it checked (docs/audit.md §7):

1. **get the evidence**: the caller's ``fetch`` (a file or a bounded HTTP
   download, :mod:`bkv.audit.evidence_source`); its SHA-256 is the evidence
   digest a fleet-key artifact names;
2. **verify its cryptography**: :func:`bkv.protocol.evidence.verify_evidence`
   against the pinned vendor root, with the measurement rebuilt from a source
   tree (:mod:`bkv.audit.source_tree`) or given, else the published one is
   reported and not compared;
3. **confirm the fleet public keys**: the attested keys are listed, and every
   published artifact given (an artifact file; the witness-logged artifact of
   this fleet, after :func:`bkv.audit.verify.audit_namespace` re-verified the
   witness's whole record like ``bkv audit log``) must name this evidence and
   carry exactly the attested fleet id, keys, members and policy
   (:func:`bkv.protocol.evidence.check_artifact_matches`).

A step that fails stops the run; the steps after it are reported as not run.
The first failure is kept as the typed error it raised (:attr:`DeploymentReport.failure`),
so that the command exits with it. Nothing here does I/O: fetching, reading the
source tree and auditing the witness enter as callables.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from bkv.audit.verify import AuditReport
from bkv.errors import (
    AttestationSignatureError,
    BkvError,
    DatacenterError,
    DeviceChainError,
    DuplicateDeviceError,
    EvidenceFormatError,
    FleetKeyMismatchError,
    MeasurementMismatchError,
    QuorumError,
    StatementMismatchError,
)
from bkv.protocol.artifact import FleetKeyArtifact
from bkv.protocol.evidence import (
    EVIDENCE_TYPE,
    EVIDENCE_VERSION,
    MAX_EVIDENCE_BYTES,
    VerifiedEvidence,
    check_artifact_matches,
    evidence_digest,
    verify_evidence,
)

PASSED: Final = "pass"
FAILED: Final = "fail"
NOT_RUN: Final = "not run"

STEP_TITLES: Final = (
    "get the evidence",
    "verify its cryptography",
    "confirm the fleet public keys",
)

# Which check of verify_evidence each error names (its numbered steps).
_EVIDENCE_CHECKS: Final[tuple[tuple[type[BkvError], str], ...]] = (
    (EvidenceFormatError, "strict decoding"),
    (DeviceChainError, "device certificate chains to the vendor root"),
    (AttestationSignatureError, "statement signatures"),
    (StatementMismatchError, "statements bind this document"),
    (DuplicateDeviceError, "distinct devices"),
    (DatacenterError, "distinct datacenters"),
    (QuorumError, "quorum of statements"),
    (MeasurementMismatchError, "code measurement"),
)


@dataclass(frozen=True)
class Check:
    """One thing a step checked, and whether it held."""

    passed: bool
    text: str


@dataclass(frozen=True)
class Step:
    """One step of the report: its checks, notes and, if it failed, the error."""

    number: int
    title: str
    status: str
    checks: tuple[Check, ...] = ()
    notes: tuple[str, ...] = ()
    error_class: str | None = None
    error_message: str | None = None


@dataclass(frozen=True)
class ExpectedMeasurement:
    """The measurement the evidence must attest, and where it came from (for the report)."""

    value: bytes
    source: str


@dataclass(frozen=True)
class PublishedArtifact:
    """A fleet-key artifact published for this fleet, and where it was found."""

    source: str
    artifact: FleetKeyArtifact
    notes: tuple[str, ...] = ()


#: Given the verified evidence, find the artifact a source publishes for its fleet
#: (raising a typed error if the source fails its own checks).
PublishedSource = Callable[[VerifiedEvidence], PublishedArtifact]


@dataclass(frozen=True)
class DeploymentReport:
    """What :func:`verify_deployment` found; ``ok`` only if every step passed."""

    location: str
    steps: tuple[Step, ...]
    digest: bytes | None = None
    evidence: VerifiedEvidence | None = None
    failure: BkvError | None = field(default=None, compare=False)

    @property
    def ok(self) -> bool:
        return self.failure is None and all(step.status == PASSED for step in self.steps)

    def to_json_value(self) -> dict[str, Any]:
        """The report as a JSON value (``--json``)."""
        return {
            "ok": self.ok,
            "location": self.location,
            "evidence_digest": None if self.digest is None else self.digest.hex(),
            "steps": [
                {
                    "step": step.number,
                    "title": step.title,
                    "status": step.status,
                    "checks": [{"passed": c.passed, "text": c.text} for c in step.checks],
                    "notes": list(step.notes),
                    "error": (
                        None
                        if step.error_class is None
                        else {"class": step.error_class, "message": step.error_message}
                    ),
                }
                for step in self.steps
            ],
            "evidence": None if self.evidence is None else evidence_json(self.evidence),
        }


def evidence_json(evidence: VerifiedEvidence) -> dict[str, Any]:
    """What verified evidence established, as a JSON value."""
    return {
        "fleet_id": evidence.fleet_id,
        "keys": [
            {"role": k.role, "algorithm": k.algorithm, "public_key": k.key.hex()}
            for k in evidence.keys
        ],
        "measurement": evidence.measurement.hex(),
        "measurement_checked": evidence.measurement_checked,
        "policy": {"guess_limit": evidence.policy.guess_limit, "quorum": evidence.policy.quorum},
        "transcript_digest": evidence.transcript_digest.hex(),
        "members": [
            {
                "name": m.name,
                "datacenter": m.datacenter,
                "attestation_key": m.attestation_key.hex(),
                "certificate_serial": format(m.certificate_serial, "x"),
                "certificate_subject": m.certificate_subject,
                "chain_length": m.chain_length,
            }
            for m in evidence.members
        ],
        "signers": list(evidence.signers),
        "vendor_root_sha256": evidence.vendor_root_sha256.hex(),
        "vendor_root_subject": evidence.vendor_root_subject,
    }


def verify_deployment(
    location: str,
    fetch: Callable[[], bytes],
    vendor_root_der: bytes,
    *,
    now_ms: int,
    expected_measurement: ExpectedMeasurement | None = None,
    published: Sequence[PublishedSource] = (),
) -> DeploymentReport:
    """Run the three steps (module doc); never raises a :class:`BkvError`, reports it."""
    steps: list[Step] = []
    # Step 1.
    try:
        data = fetch()
    except BkvError as exc:
        return _stopped(
            location,
            steps,
            _failed(1, exc, "fetch the evidence"),
            digest=None,
            verified=None,
            error=exc,
        )
    digest = evidence_digest(data)
    steps.append(
        Step(
            1,
            STEP_TITLES[0],
            PASSED,
            checks=(
                Check(True, f"read {len(data)} bytes from {location} (limit {MAX_EVIDENCE_BYTES})"),
                Check(True, f"evidence digest (SHA-256 of these bytes): {digest.hex()}"),
            ),
        )
    )
    # Step 2.
    try:
        verified = verify_evidence(
            data,
            vendor_root_der,
            now_ms=now_ms,
            expected_measurement=None
            if expected_measurement is None
            else expected_measurement.value,
        )
    except BkvError as exc:
        label = next((text for kind, text in _EVIDENCE_CHECKS if isinstance(exc, kind)), "evidence")
        return _stopped(
            location, steps, _failed(2, exc, label), digest=digest, verified=None, error=exc
        )
    steps.append(_evidence_step(verified, expected_measurement))
    # Step 3.
    checks = [
        Check(True, f"attested {k.role} key: {k.algorithm}:{k.key.hex()}") for k in verified.keys
    ]
    notes: list[str] = []
    for source in published:
        try:
            found = source(verified)
            check_artifact_matches(verified, found.artifact)
        except BkvError as exc:
            step = Step(
                3,
                STEP_TITLES[2],
                FAILED,
                checks=(*checks, Check(False, f"published keys: {exc}")),
                notes=tuple(notes),
                error_class=type(exc).__name__,
                error_message=str(exc),
            )
            return _stopped(location, steps, step, digest=digest, verified=verified, error=exc)
        checks.append(
            Check(
                True,
                f"{found.source}: names this evidence, and its fleet id, keys, members and "
                "policy are exactly the attested ones",
            )
        )
        notes.extend(found.notes)
    if not published:
        notes.append(
            "no published artifact compared: give --witness URL --namespace NS (with the "
            "witness pins) or --artifact FILE to compare what clients are given"
        )
    steps.append(Step(3, STEP_TITLES[2], PASSED, checks=tuple(checks), notes=tuple(notes)))
    return DeploymentReport(location, tuple(steps), digest, verified)


def _evidence_step(verified: VerifiedEvidence, expected: ExpectedMeasurement | None) -> Step:
    checks = [
        Check(
            True,
            f"strict decoding: canonical JSON, {EVIDENCE_TYPE} version {EVIDENCE_VERSION}, "
            f"fleet {verified.fleet_id}",
        ),
        Check(
            True,
            f"vendor root {verified.vendor_root_subject} "
            f"(SHA-256 {verified.vendor_root_sha256.hex()}): self-signed CA, valid now",
        ),
    ]
    checks += [
        Check(
            True,
            f"member {m.name} (datacenter {m.datacenter}): device certificate "
            f"{m.certificate_subject}, serial {m.certificate_serial:x}, chain of "
            f"{m.chain_length} verifies to the vendor root and certifies attestation key "
            f"{m.attestation_key.hex()}",
        )
        for m in verified.members
    ]
    signers = ", ".join(verified.signers)
    checks += [
        Check(
            True,
            f"statements by {signers}: each signature verifies under its signer's attestation "
            "key, over a statement that binds exactly this fleet id, keys, measurement, "
            f"members, policy and transcript digest {verified.transcript_digest.hex()}",
        ),
        Check(
            True,
            "distinct devices in distinct datacenters: "
            + ", ".join(sorted(m.datacenter for m in verified.members)),
        ),
        Check(
            True,
            f"quorum: {len(verified.signers)} of {len(verified.members)} members signed "
            f"(policy quorum {verified.policy.quorum}, more than half)",
        ),
    ]
    notes: list[str] = []
    if expected is not None:
        checks.append(
            Check(
                True,
                f"code measurement {verified.measurement.hex()} equals the one {expected.source}",
            )
        )
    else:
        notes.append(
            f"code measurement {verified.measurement.hex()} is the published one, not "
            "compared: give --source DIR to rebuild it from the source"
        )
    return Step(2, STEP_TITLES[1], PASSED, checks=tuple(checks), notes=tuple(notes))


def _failed(number: int, exc: BkvError, label: str) -> Step:
    return Step(
        number,
        STEP_TITLES[number - 1],
        FAILED,
        checks=(Check(False, f"{label}: {exc}"),),
        error_class=type(exc).__name__,
        error_message=str(exc),
    )


def _stopped(
    location: str,
    steps: list[Step],
    failed: Step,
    *,
    digest: bytes | None,
    verified: VerifiedEvidence | None,
    error: BkvError,
) -> DeploymentReport:
    rest = [
        Step(number, STEP_TITLES[number - 1], NOT_RUN)
        for number in range(failed.number + 1, len(STEP_TITLES) + 1)
    ]
    return DeploymentReport(location, (*steps, failed, *rest), digest, verified, error)


def published_from_audit(report: AuditReport, fleet_id: str, source: str) -> PublishedArtifact:
    """The artifact of ``fleet_id``'s newest epoch in an audited witness record.

    :class:`FleetKeyMismatchError` if the witness logged no epoch for this fleet.
    A note says when a newer epoch (another fleet) is what clients get now.
    """
    epochs = [e for e in report.epochs if e.artifact.fleet_id == fleet_id]
    if not epochs:
        raise FleetKeyMismatchError(
            f"the witness's record of {report.namespace} has no epoch for fleet {fleet_id}"
        )
    epoch = epochs[-1]
    newest = report.epochs[-1]
    notes: tuple[str, ...] = ()
    if newest.epoch != epoch.epoch:
        notes = (
            f"the namespace's newest epoch is {newest.epoch}, for fleet "
            f"{newest.artifact.fleet_id}: clients are now given that fleet's keys",
        )
    return PublishedArtifact(
        source=(
            f"{source}: epoch {epoch.epoch} of {report.namespace} (artifact digest "
            f"{epoch.digest.hex()}, log index {epoch.log_index}; the whole record re-verified)"
        ),
        artifact=epoch.artifact,
        notes=notes,
    )


def render_text(report: DeploymentReport) -> str:
    """The human-readable report: each step, each check with PASS/FAIL, notes, verdict."""
    lines = [f"deployment evidence: {report.location}"]
    for step in report.steps:
        lines.append(f"step {step.number}: {step.title}: {step.status.upper()}")
        lines += [f"  {'PASS' if c.passed else 'FAIL'} {c.text}" for c in step.checks]
        lines += [f"  NOTE {note}" for note in step.notes]
    if report.ok:
        lines.append("OK")
    else:
        failed = next(s for s in report.steps if s.status == FAILED)
        lines.append(f"FAILED at step {failed.number} ({failed.title}): {failed.error_class}")
    return "\n".join(lines) + "\n"
