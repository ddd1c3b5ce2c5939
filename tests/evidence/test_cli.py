"""``bkv vendor init/certify`` and ``bkv audit verify-deployment``, as real subprocesses.

The vendor's files and certificates are checked (modes, profile, one certificate
per device serial, ``openssl verify`` when OpenSSL is installed); then evidence
made from CLI-issued certificates passes ``verify-deployment``, and each kind of
failure exits 1 naming its error class and the step that failed (text and
``--json``). The evidence is read from a file, over HTTP, and from a live
witness, whose logged artifact must publish the attested keys.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import http.server
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from evidence_world import (
    DAY_MS,
    TRANSCRIPT,
    World,
    det,
    fleet_keys,
    make_vendor,
    make_world,
    tamper,
)

from bkv.audit.source_tree import measure_source
from bkv.keystore import SoftwareSigner
from bkv.protocol.artifact import FleetPolicy, PublicKey
from bkv.protocol.evidence import (
    DEVICE_EKU_OID,
    FleetDescription,
    Member,
    assemble_evidence,
    sign_statement,
)


def bkv(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bkv.cli.main", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def fails(result: subprocess.CompletedProcess[str], error: str) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.startswith(f"bkv: {error}:"), result.stderr
    return result.stdout


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# --- bkv vendor -------------------------------------------------------------------------------


def test_vendor_init_and_certify(tmp_path: Path) -> None:
    vendor = tmp_path / "vendor"
    info = json.loads(
        ok(bkv("vendor", "init", "--dir", str(vendor), "--name", "Acme HSM", cwd=tmp_path))
    )
    root_path = vendor / "vendor-root.pem"
    assert Path(info["certificate"]) == root_path
    assert stat.S_IMODE(vendor.stat().st_mode) == 0o700
    assert stat.S_IMODE((vendor / "vendor-root.key").stat().st_mode) == 0o600
    root = x509.load_pem_x509_certificate(root_path.read_bytes())
    assert info["sha256"] == hashlib.sha256(root.public_bytes(Encoding.DER)).hexdigest()
    assert root.subject == root.issuer and "Acme HSM" in info["subject"]
    root.verify_directly_issued_by(root)
    constraints = root.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    assert root.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign

    # A device key as `bkv keystore public-key` prints it.
    device = SoftwareSigner(det("device-1"))
    key_file = tmp_path / "device-1.pub"
    key_file.write_text(device.public_key().hex() + "\n")
    out = tmp_path / "device-1.pem"
    issued = json.loads(
        ok(
            bkv(
                "vendor",
                "certify",
                "--dir",
                str(vendor),
                "--device-key",
                str(key_file),
                "--serial",
                "HSM-0001",
                "--out",
                str(out),
                cwd=tmp_path,
            )
        )
    )
    certificate = x509.load_pem_x509_certificate(out.read_bytes())
    certificate.verify_directly_issued_by(root)
    assert issued["subject"] == certificate.subject.rfc4514_string()
    assert "2.5.4.5=HSM-0001" in issued["subject"] and "CN=bkv-hsm-device" in issued["subject"]
    assert certificate.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw) == (
        device.public_key()
    )
    eku = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert [o.dotted_string for o in eku] == [DEVICE_EKU_OID]
    assert not certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert (vendor / "issued" / "HSM-0001.pem").read_bytes() == out.read_bytes()

    # A PEM public key (openssl pkey -pubout) works too.
    pem_key = tmp_path / "device-2.pem.pub"
    pem_key.write_bytes(
        Ed25519PrivateKey.from_private_bytes(det("device-2"))
        .public_key()
        .public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    ok(
        bkv(
            "vendor",
            "certify",
            "--dir",
            str(vendor),
            "--device-key",
            str(pem_key),
            "--serial",
            "HSM-0002",
            "--out",
            str(tmp_path / "device-2.pem"),
            cwd=tmp_path,
        )
    )

    # Refusals: a serial twice, an existing output, a bad key, a second init.
    again = bkv(
        "vendor",
        "certify",
        "--dir",
        str(vendor),
        "--device-key",
        str(key_file),
        "--serial",
        "HSM-0001",
        "--out",
        str(tmp_path / "again.pem"),
        cwd=tmp_path,
    )
    assert "already certified" in fails(again, "ConfigError") + again.stderr
    existing = bkv(
        "vendor",
        "certify",
        "--dir",
        str(vendor),
        "--device-key",
        str(key_file),
        "--serial",
        "HSM-0009",
        "--out",
        str(out),
        cwd=tmp_path,
    )
    fails(existing, "ConfigError")
    bad_key = tmp_path / "bad.pub"
    bad_key.write_text("01" + "00" * 31 + "\n")  # a small-order point
    fails(
        bkv(
            "vendor",
            "certify",
            "--dir",
            str(vendor),
            "--device-key",
            str(bad_key),
            "--serial",
            "HSM-0003",
            "--out",
            str(tmp_path / "x.pem"),
            cwd=tmp_path,
        ),
        "ConfigError",
    )
    fails(
        bkv(
            "vendor",
            "certify",
            "--dir",
            str(vendor),
            "--device-key",
            str(key_file),
            "--serial",
            "bad serial!",
            "--out",
            str(tmp_path / "y.pem"),
            cwd=tmp_path,
        ),
        "ConfigError",
    )
    fails(bkv("vendor", "init", "--dir", str(vendor), cwd=tmp_path), "KeyExistsError")

    if shutil.which("openssl"):
        # docs/audit.md §7: the chain checks with OpenSSL alone.
        verified = subprocess.run(
            ["openssl", "verify", "-CAfile", str(root_path), str(out)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert verified.returncode == 0, verified.stderr
        assert verified.stdout.strip() == f"{out}: OK"


def test_vendor_refuses_a_root_key_others_can_read(tmp_path: Path) -> None:
    vendor = tmp_path / "vendor"
    ok(bkv("vendor", "init", "--dir", str(vendor), cwd=tmp_path))
    (vendor / "vendor-root.key").chmod(0o644)
    key_file = tmp_path / "device.pub"
    key_file.write_text(SoftwareSigner(det("d")).public_key().hex() + "\n")
    fails(
        bkv(
            "vendor",
            "certify",
            "--dir",
            str(vendor),
            "--device-key",
            str(key_file),
            "--serial",
            "HSM-1",
            "--out",
            str(tmp_path / "d.pem"),
            cwd=tmp_path,
        ),
        "KeystoreError",
    )


# --- bkv audit verify-deployment ----------------------------------------------------------------


def live_world(**kwargs: Any) -> World:
    """A world whose certificates are valid at the real time (the CLI reads the clock)."""
    start = datetime.datetime.now(datetime.UTC).replace(microsecond=0) - datetime.timedelta(days=1)
    return make_world(not_before=start, now_ms=now_ms(), **kwargs)


def write_deployment(directory: Path, world: World, evidence: bytes) -> tuple[Path, Path]:
    directory.mkdir(exist_ok=True)
    root = directory / "root.pem"
    root.write_bytes(world.vendor.certificate.public_bytes(Encoding.PEM))
    path = directory / "evidence.json"
    path.write_bytes(evidence)
    return path, root


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> tuple[World, bytes, Path, Path]:
    directory = tmp_path_factory.mktemp("deployment")
    world = live_world()
    evidence = world.evidence()
    path, root = write_deployment(directory, world, evidence)
    return world, evidence, path, root


def verify_deployment(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return bkv("audit", "verify-deployment", *args, cwd=cwd)


def test_evidence_from_cli_issued_certificates_passes(tmp_path: Path) -> None:
    vendor = tmp_path / "vendor"
    ok(bkv("vendor", "init", "--dir", str(vendor), cwd=tmp_path))
    members, signers = [], {}
    for i in range(1, 6):
        signer = SoftwareSigner(det(f"cli-device-{i}"))
        key_file = tmp_path / f"hsm-{i}.pub"
        key_file.write_text(signer.public_key().hex() + "\n")
        cert = tmp_path / f"hsm-{i}.pem"
        ok(
            bkv(
                "vendor",
                "certify",
                "--dir",
                str(vendor),
                "--device-key",
                str(key_file),
                "--serial",
                f"HSM-{i:04d}",
                "--out",
                str(cert),
                cwd=tmp_path,
            )
        )
        leaf = x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(Encoding.DER)
        members.append(Member(f"hsm-{i}", f"dc-{i}", signer.public_key(), (leaf,)))
        signers[f"hsm-{i}"] = signer
    fleet = FleetDescription(
        fleet_id="cli-fleet",
        keys=fleet_keys("cli"),
        measurement=hashlib.sha256(b"code").digest(),
        members=tuple(members),
        policy=FleetPolicy(guess_limit=10, quorum=3),
        transcript_digest=TRANSCRIPT,
    )
    evidence = assemble_evidence(
        fleet, [sign_statement(fleet, n, signers[n]) for n in ("hsm-1", "hsm-2", "hsm-4")]
    )
    (tmp_path / "evidence.json").write_bytes(evidence)
    out = ok(
        verify_deployment(
            "evidence.json", "--vendor-root", str(vendor / "vendor-root.pem"), cwd=tmp_path
        )
    )
    assert "step 1: get the evidence: PASS" in out
    assert "step 2: verify its cryptography: PASS" in out
    assert "step 3: confirm the fleet public keys: PASS" in out
    assert "quorum: 3 of 5 members signed" in out
    assert (
        f"evidence digest (SHA-256 of these bytes): {hashlib.sha256(evidence).hexdigest()}" in out
    )
    assert out.endswith("OK\n")


def test_report_as_text(deployment: tuple[World, bytes, Path, Path], tmp_path: Path) -> None:
    world, _evidence, path, root = deployment
    out = ok(verify_deployment(str(path), "--vendor-root", str(root), cwd=tmp_path))
    for name in world.names:
        assert f"PASS member {name} (datacenter dc-" in out
    assert "NOTE code measurement" in out and "not compared" in out
    assert "NOTE no published artifact compared" in out
    assert f"attested channel key: x25519:{world.fleet.keys[0].key.hex()}" in out


def test_report_as_json(deployment: tuple[World, bytes, Path, Path], tmp_path: Path) -> None:
    world, evidence, path, root = deployment
    report = json.loads(
        ok(verify_deployment(str(path), "--vendor-root", str(root), "--json", cwd=tmp_path))
    )
    assert report["ok"] is True
    assert report["evidence_digest"] == hashlib.sha256(evidence).hexdigest()
    assert [s["status"] for s in report["steps"]] == ["pass", "pass", "pass"]
    assert report["evidence"]["fleet_id"] == "fleet-a"
    assert report["evidence"]["signers"] == list(world.names)
    assert report["evidence"]["measurement_checked"] is False
    assert report["warnings"] == []


def test_measurement_from_source(tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "bkv").mkdir(parents=True)
    (source / "bkv" / "__init__.py").write_text("# the shipped code\n")
    measurement, _ = measure_source(source)
    world = live_world(measurement=measurement)
    path, root = write_deployment(tmp_path / "d", world, world.evidence())
    out = ok(
        verify_deployment(
            str(path), "--vendor-root", str(root), "--source", str(source), cwd=tmp_path
        )
    )
    assert f"PASS code measurement {measurement.hex()} equals the one rebuilt from" in out
    ok(
        verify_deployment(
            str(path), "--vendor-root", str(root), "--measurement", measurement.hex(), cwd=tmp_path
        )
    )

    (source / "bkv" / "backdoor.py").write_text("steal()\n")
    result = verify_deployment(
        str(path), "--vendor-root", str(root), "--source", str(source), cwd=tmp_path
    )
    out = fails(result, "MeasurementMismatchError")
    assert "step 2: verify its cryptography: FAIL" in out
    assert "FAIL code measurement: the evidence attests measurement" in out
    assert "step 3: confirm the fleet public keys: NOT RUN" in out
    assert "FAILED at step 2 (verify its cryptography): MeasurementMismatchError" in out


@pytest.mark.parametrize(
    ("case", "error", "label"),
    [
        ("tampered", "StatementMismatchError", "statements bind this document"),
        ("minority", "QuorumError", "quorum of statements"),
        ("other root", "DeviceChainError", "device certificate chains"),
        ("not canonical", "EvidenceFormatError", "strict decoding"),
    ],
)
def test_failures_name_the_check(
    deployment: tuple[World, bytes, Path, Path], tmp_path: Path, case: str, error: str, label: str
) -> None:
    world, evidence, _path, root = deployment
    data = evidence
    if case == "tampered":
        data = tamper(evidence, lambda v: v.update(fleet_id="fleet-z"))
    elif case == "minority":
        data = world.evidence(["hsm-1", "hsm-2"])
    elif case == "other root":
        root = tmp_path / "other-root.pem"
        start = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        other = make_vendor("another vendor", not_before=start - datetime.timedelta(days=1))
        root.write_bytes(other.certificate.public_bytes(Encoding.PEM))
    elif case == "not canonical":
        data = evidence + b"\n"
    bad = tmp_path / "evidence.json"
    bad.write_bytes(data)
    out = fails(verify_deployment(str(bad), "--vendor-root", str(root), cwd=tmp_path), error)
    assert f"FAIL {label}" in out
    report = json.loads(
        verify_deployment(str(bad), "--vendor-root", str(root), "--json", cwd=tmp_path).stdout
    )
    assert report["ok"] is False
    assert [s["status"] for s in report["steps"]] == ["pass", "fail", "not run"]
    assert report["steps"][1]["error"]["class"] == error


def test_artifact_file(deployment: tuple[World, bytes, Path, Path], tmp_path: Path) -> None:
    world, evidence, path, root = deployment
    artifact = tmp_path / "artifact.json"
    artifact.write_bytes(world.artifact(evidence).to_bytes())
    out = ok(
        verify_deployment(
            str(path), "--vendor-root", str(root), "--artifact", str(artifact), cwd=tmp_path
        )
    )
    assert f"PASS artifact file {artifact}: names this evidence" in out

    keys = (PublicKey("channel", "x25519", det("rogue")), world.fleet.keys[1])
    artifact.write_bytes(world.artifact(evidence, keys=keys).to_bytes())
    result = verify_deployment(
        str(path), "--vendor-root", str(root), "--artifact", str(artifact), "--json", cwd=tmp_path
    )
    report = json.loads(fails(result, "FleetKeyMismatchError"))
    assert [s["status"] for s in report["steps"]] == ["pass", "pass", "fail"]
    assert "key channel" in report["steps"][2]["error"]["message"]


@contextmanager
def serve_directory(directory: Path) -> Iterator[str]:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_evidence_over_http(deployment: tuple[World, bytes, Path, Path], tmp_path: Path) -> None:
    _world, evidence, path, root = deployment
    with serve_directory(path.parent) as url:
        out = ok(
            verify_deployment(f"{url}/evidence.json", "--vendor-root", str(root), cwd=tmp_path)
        )
        assert f"read {len(evidence)} bytes from {url}/evidence.json" in out
        missing = verify_deployment(f"{url}/missing.json", "--vendor-root", str(root), cwd=tmp_path)
        out = fails(missing, "FetchError")
        assert "step 1: get the evidence: FAIL" in out
        assert "step 2: verify its cryptography: NOT RUN" in out


def test_usage_errors(deployment: tuple[World, bytes, Path, Path], tmp_path: Path) -> None:
    _world, _evidence, path, root = deployment
    fails(
        verify_deployment(str(tmp_path / "none.json"), "--vendor-root", str(root), cwd=tmp_path),
        "ConfigError",
    )
    not_a_cert = tmp_path / "root.pem"
    not_a_cert.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    fails(
        verify_deployment(str(path), "--vendor-root", str(not_a_cert), cwd=tmp_path), "ConfigError"
    )
    fails(
        verify_deployment(
            str(path), "--vendor-root", str(root), "--witness", "http://127.0.0.1:9", cwd=tmp_path
        ),
        "ConfigError",
    )
    fails(
        verify_deployment(
            str(path), "--vendor-root", str(root), "--measurement", "abc", cwd=tmp_path
        ),
        "ConfigError",
    )
    both = verify_deployment(
        str(path),
        "--vendor-root",
        str(root),
        "--source",
        ".",
        "--measurement",
        "00" * 32,
        cwd=tmp_path,
    )
    assert both.returncode == 2  # argparse: mutually exclusive


# --- with a live witness ------------------------------------------------------------------------


@pytest.mark.slow
def test_witness_logged_artifact_must_publish_the_attested_keys(tmp_path: Path) -> None:
    from live_witness import NAMESPACE, live_witness  # noqa: PLC0415

    from bkv.protocol import witness_api  # noqa: PLC0415
    from bkv.protocol.submission import sign_submission  # noqa: PLC0415

    world = live_world()
    evidence = world.evidence()
    _, root = write_deployment(tmp_path / "d", world, evidence)
    (tmp_path / "witness").mkdir()
    with live_witness(tmp_path / "witness") as witness:

        def submit(artifact: bytes, epoch: int) -> None:
            submission = sign_submission(
                witness.operator,
                NAMESPACE,
                epoch,
                artifact,
                submitted_at_ms=now_ms(),
                evidence=evidence,
            )
            response = witness.client.post(
                f"{witness.url}/namespaces/{NAMESPACE}/submissions",
                content=json.dumps(witness_api.submission_to_json(submission)).encode(),
            )
            assert response.status_code == 201, response.text

        submit(world.artifact(evidence, not_before_ms=now_ms() - DAY_MS).to_bytes(), 1)
        pins = [
            "--witness",
            witness.url,
            "--namespace",
            NAMESPACE,
            "--witness-key",
            witness.statement_key.hex(),
            "--operator-key",
            witness.operator.public_key().hex(),
            "--log-key",
            witness.info["log_public_key"],
            "--origin",
            witness.info["origin"],
        ]
        # The evidence as the witness serves it, and the artifact the witness logged.
        evidence_url = f"{witness.url}/namespaces/{NAMESPACE}/audits/1/evidence"
        out = ok(verify_deployment(evidence_url, "--vendor-root", str(root), *pins, cwd=tmp_path))
        assert f"PASS witness {witness.url}: epoch 1 of {NAMESPACE}" in out
        assert out.endswith("OK\n")

        # Epoch 2 republishes the fleet with a key the devices never attested.
        keys = (PublicKey("channel", "x25519", det("rogue channel")), world.fleet.keys[1])
        submit(world.artifact(evidence, keys=keys, not_before_ms=now_ms() - DAY_MS).to_bytes(), 2)
        result = verify_deployment(evidence_url, "--vendor-root", str(root), *pins, cwd=tmp_path)
        out = fails(result, "FleetKeyMismatchError")
        assert "step 3: confirm the fleet public keys: FAIL" in out
        assert "key channel" in out

        # A wrong pin fails the witness's own audit, inside step 3.
        wrong = [*pins]
        wrong[wrong.index("--operator-key") + 1] = SoftwareSigner(det("x")).public_key().hex()
        fails(
            verify_deployment(evidence_url, "--vendor-root", str(root), *wrong, cwd=tmp_path),
            "SubmissionSignatureError",
        )
