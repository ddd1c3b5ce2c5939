"""End to end against a real witness process on 127.0.0.1.

- the operator submits three epochs over HTTP, counter-signs each receipt and builds
  bundles; a client validates them in order (state in a JSON file), the host attaching
  consistency proofs from the witness's /log/consistency;
- ``bkv audit log`` runs as a real subprocess against the live witness and passes,
  then fails with the right typed error for each wrong pin, bad bundle or rollback;
- an adversary between the auditor and the witness (tampered responses and tiles)
  is caught by the audit core.
"""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from live_witness import NAMESPACE, LiveWitness, artifact_bytes, det, live_witness, now_ms

from bkv.audit.http_source import HttpWitnessSource
from bkv.audit.verify import AuditPins, audit_namespace
from bkv.client.operator import bundle_from_receipt
from bkv.client.state import ClientState
from bkv.client.store_json import JsonFileStateStore
from bkv.client.trust import TrustRoots
from bkv.client.validation import validate_bundle
from bkv.errors import (
    AuditError,
    DigestMismatchError,
    EpochRollbackError,
    FetchError,
    InclusionProofError,
    TimestampError,
)
from bkv.keystore import SoftwareSigner
from bkv.protocol.bundle import ValidationBundle, encode_bundle, with_consistency_proof
from bkv.protocol.countersign import countersign
from bkv.protocol.plexi import WitnessKey, verify_statement
from bkv.tlog.cosignature import CosignatureSigner
from bkv.tlog.note import Ed25519Signer as NoteSigner

pytestmark = pytest.mark.slow

ARTIFACTS = [
    artifact_bytes("a"),
    artifact_bytes("b"),  # every key changes
    artifact_bytes("b2", members=5, attestation=False),  # members change, a role goes away
]


@dataclasses.dataclass
class Deployment:
    witness: LiveWitness
    receipts: list[dict[str, Any]]
    bundles: list[ValidationBundle]
    bundle_dir: Path


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("live-witness")
    with live_witness(root) as witness:
        receipts = [witness.submit(a, epoch) for epoch, a in enumerate(ARTIFACTS, start=1)]
        bundles = [
            bundle_from_receipt(
                a, r, witness.operator, roots=_roots(witness), epoch=epoch, now_ms=now_ms()
            )
            for epoch, (a, r) in enumerate(zip(ARTIFACTS, receipts, strict=True), start=1)
        ]
        bundle_dir = root / "bundles"
        bundle_dir.mkdir()
        for bundle in bundles:
            (bundle_dir / f"epoch-{bundle.epoch}.bundle").write_bytes(encode_bundle(bundle))
        yield Deployment(witness, receipts, bundles, bundle_dir)


def _roots(witness: LiveWitness) -> TrustRoots:
    return TrustRoots(
        witness_keys=(WitnessKey(witness.statement_key, 0),),
        operator_keys=(witness.operator.public_key(),),
        namespace=NAMESPACE,
        log_origin=witness.info["origin"],
        log_verifier_key=witness.info["log_public_key"],
    )


def _pins(witness: LiveWitness, **overrides: Any) -> AuditPins:
    values: dict[str, Any] = {
        "witness_keys": (WitnessKey(witness.statement_key, 0),),
        "operator_keys": (witness.operator.public_key(),),
        "log_origin": witness.info["origin"],
        "log_verifier_key": witness.info["log_public_key"],
    }
    values.update(overrides)
    return AuditPins(**values)


# --- a client over the air -------------------------------------------------------


def test_client_accepts_live_bundles_in_order(deployment: Deployment, tmp_path: Path) -> None:
    witness = deployment.witness
    store = JsonFileStateStore(tmp_path / "client.json")
    for served in deployment.bundles:
        bundle = served
        state = store.load()
        if state.checkpoint_size and state.checkpoint_size != _size(bundle):
            # Host side: the client sent its tree size; fetch the proof from the witness.
            proof = witness.client.get(
                f"{witness.url}/log/consistency",
                params={"old": state.checkpoint_size, "size": _size(bundle)},
            ).json()
            assert proof["old"] == state.checkpoint_size
            hashes = [bytes.fromhex(h) for h in proof["proof"]]
            bundle = with_consistency_proof(bundle, state.checkpoint_size, hashes)
        keys, new_state = validate_bundle(encode_bundle(bundle), _roots(witness), state, now_ms())
        store.save(new_state)
        assert keys.epoch == bundle.epoch
    assert store.load().epoch == 3
    # The oldest bundle is now a rollback.
    with pytest.raises(EpochRollbackError):
        validate_bundle(
            encode_bundle(deployment.bundles[0]), _roots(witness), store.load(), now_ms()
        )


def _size(bundle: ValidationBundle) -> int:
    return int(bundle.checkpoint.decode().split("\n")[1])


def test_live_bundle_rejected_with_wrong_clock(deployment: Deployment) -> None:
    # A client whose clock is a day behind sees the statement in its future.
    with pytest.raises(TimestampError):
        validate_bundle(
            encode_bundle(deployment.bundles[0]),
            _roots(deployment.witness),
            ClientState(),
            now_ms() - 24 * 3600 * 1000,
        )


# --- the audit CLI as a subprocess -----------------------------------------------


def _audit(
    deployment: Deployment, *extra: str, pinned: bool = True
) -> subprocess.CompletedProcess[str]:
    witness = deployment.witness
    args = ["log", "--witness", witness.url, "--namespace", NAMESPACE]
    if pinned:
        args += [
            "--witness-key", witness.statement_key.hex(),
            "--operator-key", witness.operator.public_key().hex(),
            "--log-key", witness.info["log_public_key"],
            "--origin", witness.info["origin"],
        ]  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "bkv.cli.main", "audit", *args, *extra],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_audit_cli_passes_and_prints_deltas(deployment: Deployment, tmp_path: Path) -> None:
    state = tmp_path / "audit-state.json"
    result = _audit(
        deployment,
        "--bundles", str(deployment.bundle_dir),
        "--require-countersignatures",
        "--state", str(state),
        "--init-state",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "3 epoch(s) verified" in out
    assert "operator counter-signatures verified: 3 of 3" in out
    rows = [line.split() for line in out.splitlines()]
    assert rows[_row(rows, "1", "opaque_ake")][:5] == ["1", "fleet-a", "opaque_ake", "added", "-"]
    assert rows[_row(rows, "2", "channel")][3] == "changed"
    assert rows[_row(rows, "3", "hsm_attestation")][3] == "removed"
    assert rows[_row(rows, "3", "members")][3] == "changed"
    assert out.rstrip().endswith("OK")
    assert JsonFileStateStore(state).load().epoch == 3
    # A second run from the saved state passes too (consistency with the last audit).
    again = _audit(deployment, "--state", str(state))
    assert again.returncode == 0, again.stderr


def _row(rows: list[list[str]], epoch: str, subject: str) -> int:
    for index, row in enumerate(rows):
        if len(row) >= 4 and row[0] == epoch and row[2] == subject:
            return index
    raise AssertionError(f"no delta row for epoch {epoch} {subject}")


def test_audit_cli_refuses_to_run_unpinned(deployment: Deployment) -> None:
    # An audit that trusts the audited party proves nothing: not without an explicit flag.
    result = _audit(deployment, pinned=False)
    assert result.returncode == 1
    assert "bkv: ConfigError: not pinned: --witness-key, --operator-key" in result.stderr
    result = _audit(deployment, "--trust-on-first-use", pinned=False)
    assert result.returncode == 0, result.stderr
    assert "WARNING: not pinned" in result.stdout
    assert "NOTE: no cosigner policy" in result.stdout


def test_audit_cli_cosigner_policy(deployment: Deployment) -> None:
    cosigner = CosignatureSigner("cosigner.test", SoftwareSigner(det("cosigner")))
    vkey = cosigner.verifier().verifier_key()
    # The live witness's checkpoint has no cosignatures: a 1-of-1 policy fails.
    result = _audit(deployment, "--cosigner", vkey)
    assert result.returncode == 1
    assert "bkv: CosignerPolicyError:" in result.stderr
    for extra in (
        ["--cosigner", vkey, "--cosigners-required", "2"],
        ["--cosigner", vkey, "--cosigners-required", "0"],
        ["--cosigners-required", "1"],
        ["--cosigner", "not-a-vkey"],
    ):
        result = _audit(deployment, *extra)
        assert result.returncode == 1 and "bkv: ConfigError:" in result.stderr, extra


@pytest.mark.parametrize(
    ("flag", "value", "error"),
    [
        ("--witness-key", SoftwareSigner(det("impostor")).public_key().hex(), "UnknownKeyError"),
        (
            "--operator-key",
            SoftwareSigner(det("mallory")).public_key().hex(),
            "SubmissionSignatureError",
        ),
        ("--origin", "someone-else/log", "CheckpointError"),
    ],
)
def test_audit_cli_fails_on_wrong_pins(
    deployment: Deployment, flag: str, value: str, error: str
) -> None:
    witness = deployment.witness
    pinned = {
        "--witness-key": witness.statement_key.hex(),
        "--operator-key": witness.operator.public_key().hex(),
        "--log-key": witness.info["log_public_key"],
        "--origin": witness.info["origin"],
    }
    pinned[flag] = value
    args: list[str] = []
    for key, val in pinned.items():
        args += [key, val]
    result = subprocess.run(
        [sys.executable, "-m", "bkv.cli.main", "audit", "log", "--witness", witness.url,
         "--namespace", NAMESPACE, *args],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert f"bkv: {error}:" in result.stderr


def test_audit_cli_fails_on_wrong_log_key(deployment: Deployment) -> None:
    other = NoteSigner(deployment.witness.info["origin"], SoftwareSigner(det("other-log")))
    result = _audit(deployment, "--log-key", other.verifier().verifier_key())
    assert result.returncode == 1
    assert "bkv: NoteError:" in result.stderr


def test_audit_cli_fails_on_foreign_countersignature(
    deployment: Deployment, tmp_path: Path
) -> None:
    bundle = deployment.bundles[1]
    mallory = countersign(SoftwareSigner(det("mallory")), bundle.witness_signature)
    forged = dataclasses.replace(bundle, counter_signature=mallory)
    (tmp_path / "forged.bundle").write_bytes(encode_bundle(forged))
    assert forged.witness_signature == bundle.witness_signature
    result = _audit(deployment, "--bundles", str(tmp_path))
    assert result.returncode == 1
    assert "bkv: CounterSignatureError:" in result.stderr


def test_audit_cli_fails_on_missing_countersignatures(
    deployment: Deployment, tmp_path: Path
) -> None:
    (tmp_path / "one.bundle").write_bytes(encode_bundle(deployment.bundles[0]))
    result = _audit(deployment, "--bundles", str(tmp_path), "--require-countersignatures")
    assert result.returncode == 1
    assert "bkv: AuditError:" in result.stderr


def test_audit_cli_refuses_a_missing_state_file_without_init_state(
    deployment: Deployment, tmp_path: Path
) -> None:
    # A deleted state file must not silently reset the audit to "nothing seen".
    state = tmp_path / "gone.json"
    result = _audit(deployment, "--state", str(state))
    assert result.returncode == 1
    assert "bkv: StorageError:" in result.stderr
    assert not state.exists()
    no_state = _audit(deployment, "--init-state")
    assert no_state.returncode == 1
    assert "bkv: ConfigError:" in no_state.stderr


def test_audit_cli_detects_rollback_against_saved_state(
    deployment: Deployment, tmp_path: Path
) -> None:
    state = tmp_path / "state.json"
    JsonFileStateStore(state).save(ClientState(epoch=4, digest=b"\x01" * 32))
    result = _audit(deployment, "--state", str(state))
    assert result.returncode == 1
    assert "bkv: EpochRollbackError:" in result.stderr


def test_audit_cli_detects_fork_against_saved_state(deployment: Deployment, tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    JsonFileStateStore(state).save(ClientState(checkpoint_size=2, checkpoint_root=b"\x05" * 32))
    result = _audit(deployment, "--state", str(state))
    assert result.returncode == 1
    assert "bkv: ConsistencyProofError:" in result.stderr


def test_audit_cli_unreachable_witness(deployment: Deployment) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bkv.cli.main", "audit", "log", "--witness", "http://127.0.0.1:9",
         "--namespace", NAMESPACE, "--trust-on-first-use"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "bkv: FetchError:" in result.stderr


# --- an adversary between the auditor and the witness -----------------------------


class Tampering(HttpWitnessSource):
    """Forwards to the real witness, rewrites what the paths ``tampered`` picks return,
    and records every path the auditor fetched."""

    def __init__(self, url: str, tampered: Callable[[str], bool], rewrite: Any) -> None:
        super().__init__(url)
        self.tampered = tampered
        self.rewrite = rewrite
        self.fetched: list[str] = []
        self._json = False

    def get_json(self, path: str) -> Any:
        self._json = True  # the base class reads the body through get_bytes
        try:
            value = super().get_json(path)
        finally:
            self._json = False
        return self.rewrite(value) if self.tampered(path) else value

    def get_bytes(self, path: str, max_size: int) -> bytes:
        self.fetched.append(path)
        value = super().get_bytes(path, max_size)
        if self._json or not self.tampered(path):
            return value
        return bytes(self.rewrite(value))


def _audit_through(deployment: Deployment, path: str, rewrite: Any) -> None:
    with Tampering(deployment.witness.url, lambda p: p == path, rewrite) as source:
        try:
            audit_namespace(source, NAMESPACE, _pins(deployment.witness))
        finally:
            # Tampering with a path the auditor never reads would prove nothing.
            assert path in source.fetched, f"the auditor never fetched {path}"


def _is_hash_tile(path: str) -> bool:
    return path.startswith("/tile/") and not path.startswith("/tile/entries/")


def test_audit_core_passes_untampered(deployment: Deployment) -> None:
    with HttpWitnessSource(deployment.witness.url) as source:
        report = audit_namespace(source, NAMESPACE, _pins(deployment.witness))
    assert [e.epoch for e in report.epochs] == [1, 2, 3]


def test_swapped_artifact_detected(deployment: Deployment) -> None:
    def swap(value: dict[str, Any]) -> dict[str, Any]:
        return {**value, "artifact": ARTIFACTS[0].hex()}

    with pytest.raises(DigestMismatchError):
        _audit_through(deployment, f"/namespaces/{NAMESPACE}/audits/2", swap)


def test_hidden_epoch_detected(deployment: Deployment) -> None:
    def hide(value: dict[str, Any]) -> dict[str, Any]:
        return {**value, "last_verified_epoch": 2}

    with pytest.raises(AuditError, match="does not serve"):
        _audit_through(deployment, f"/namespaces/{NAMESPACE}", hide)


def test_hash_tiles_are_not_trusted(deployment: Deployment) -> None:
    # The auditor recomputes every hash from the entries: it reads entry bundles only, so
    # hash tiles, here all zeroed, never reach it, and the audit still passes.
    def zeroed(value: bytes) -> bytes:
        return bytes(len(value))

    witness = deployment.witness
    with Tampering(witness.url, _is_hash_tile, zeroed) as source:
        report = audit_namespace(source, NAMESPACE, _pins(witness))
    assert [e.epoch for e in report.epochs] == [1, 2, 3]
    assert "/tile/entries/000.p/3" in source.fetched
    assert [p for p in source.fetched if _is_hash_tile(p)] == []
    # The witness does serve the hash tile an auditor trusting tiles would read.
    assert witness.client.get(f"{witness.url}/tile/0/000.p/3").status_code == 200


def test_tampered_entry_bundle_detected(deployment: Deployment) -> None:
    def corrupt(value: bytes) -> bytes:
        return value[:-1] + bytes([value[-1] ^ 1])

    with pytest.raises(InclusionProofError):
        _audit_through(deployment, "/tile/entries/000.p/3", corrupt)


def test_oversized_response_refused(deployment: Deployment) -> None:
    with HttpWitnessSource(deployment.witness.url) as source, pytest.raises(FetchError):
        source.get_bytes("/checkpoint", 10)


def test_json_field_disagreeing_with_signed_message(deployment: Deployment) -> None:
    def lie(value: dict[str, Any]) -> dict[str, Any]:
        return {**value, "epoch": 7}

    with pytest.raises(AuditError, match="JSON field epoch differs"):
        _audit_through(deployment, f"/namespaces/{NAMESPACE}/audits/1", lie)


def test_receipts_are_plexi_shaped(deployment: Deployment) -> None:
    receipt = deployment.receipts[0]
    assert list(receipt)[:9] == [
        "version", "ciphersuite", "namespace", "timestamp", "epoch", "digest", "signature",
        "key_id", "serialized_message",
    ]  # fmt: skip
    message = verify_statement(
        bytes.fromhex(receipt["serialized_message"]),
        bytes.fromhex(receipt["signature"]),
        receipt["key_id"],
        [WitnessKey(deployment.witness.statement_key, 0)],
    )
    # The JSON fields say what the signed bytes say.
    assert (message.namespace, message.timestamp_ms, message.epoch, message.digest.hex()) == (
        receipt["namespace"], receipt["timestamp"], receipt["epoch"], receipt["digest"],
    )  # fmt: skip
    assert receipt["digest"] == hashlib.sha256(ARTIFACTS[0]).hexdigest()
