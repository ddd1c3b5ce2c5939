"""Over the air, end to end, as an operator and a user run it (docs/properties.md §5).

Real processes on 127.0.0.1: ``bkv witness init/add-namespace/serve``, ``bkv hsm
init/serve``, ``bkv operator keygen/publish`` and ``bkv host serve``; then the SDK
in over-the-air mode pins only the witness's and the operator's keys, fetches the
validation bundle from the host, and uses the fleet's keys only after every check.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest
from e2e_world import (
    FLEET,
    NAMESPACE,
    TEST_KSF,
    Account,
    Processes,
    Witness,
    init_hsm,
    install_bundle,
    publish,
    run,
    start_witness,
    write_host_config,
)

from bkv.client.sdk import VaultClient
from bkv.client.state import ClientState
from bkv.client.store_json import JsonFileStateStore
from bkv.errors import (
    ConsistencyProofError,
    CounterSignatureError,
    EpochRollbackError,
    WrongPasswordError,
)
from bkv.keystore import SoftwareSigner
from bkv.protocol.artifact import ROLE_CHANNEL, ROLE_OPAQUE_AKE
from bkv.protocol.bundle import decode_bundle, encode_bundle
from bkv.protocol.countersign import countersign

pytestmark = pytest.mark.slow

ACCOUNT = Account(b"alice-phone", "token-alice-" + "x" * 32)
PASSWORD = b"correct horse battery staple"
BACKUP_KEY = bytes(range(100, 132))
#: A valid Ed25519 key that is not the witness's (a wrong pin).
OTHER_WITNESS_KEY = SoftwareSigner(bytes([7]) * 32).public_key().hex()


@dataclass(frozen=True)
class Deployment:
    tmp: Path
    witness: Witness
    operator_public_key: str
    host_url: str
    current_bundle: Path
    bundles: tuple[bytes, bytes]
    public_keys: tuple[Path, Path]

    def client(self, state_file: Path) -> VaultClient:
        return VaultClient.over_the_air(
            self.host_url,
            ACCOUNT.token,
            ACCOUNT.account_id,
            self.witness.roots(bytes.fromhex(self.operator_public_key)),
            JsonFileStateStore(state_file),
            ksf=TEST_KSF,
        )


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp("ota")
    processes = Processes()
    try:
        # The operator's key, registered with the witness for the namespace.
        operator_key = tmp / "operator.key"
        operator_public_key = run("operator", "keygen", "--out", str(operator_key)).stdout.strip()
        witness = start_witness(processes, tmp / "witness", operator_public_key)
        # Epoch 1: the fleet that serves; epoch 2: a new fleet (new keys), published later.
        keys_1 = init_hsm(tmp / "hsm-1")
        keys_2 = init_hsm(tmp / "hsm-2")
        hsm_config = tmp / "hsm-1" / "hsm.toml"
        hsm_url = processes.serve("hsm", "serve", "--config", str(hsm_config))
        out_1, out_2 = tmp / "epoch-1.bundle", tmp / "epoch-2.bundle"
        printed = publish(witness, keys_1, operator_key, out_1).stdout
        assert f"published {NAMESPACE} epoch 1" in printed
        publish(witness, keys_2, operator_key, out_2)
        bundles = (out_1.read_bytes(), out_2.read_bytes())
        current = tmp / "host" / "current.bundle"
        current.parent.mkdir()
        install_bundle(bundles[0], current)
        config = write_host_config(current.parent, hsm_url, hsm_config, current, witness, ACCOUNT)
        host_url = processes.serve("host", "serve", "--config", str(config))
        yield Deployment(
            tmp, witness, operator_public_key, host_url, current, bundles, (keys_1, keys_2)
        )
    finally:
        processes.stop_all()


def keys_of(public_keys: Path) -> dict[str, bytes]:
    data = json.loads(public_keys.read_text())
    return {k["role"]: bytes.fromhex(k["public_key"]) for k in data["keys"]}


def test_vault_over_the_air_new_epoch_and_rollback(deployment: Deployment, tmp_path: Path) -> None:
    install_bundle(deployment.bundles[0], deployment.current_bundle)
    state_file = tmp_path / "trust-state.json"
    with deployment.client(state_file) as vault:
        # Epoch 1 accepted; its keys are the serving fleet's, by role.
        assert (vault.fleet.epoch, vault.fleet.source, vault.fleet.fleet_id) == (
            1,
            "over_the_air",
            FLEET,
        )
        hsm_1 = keys_of(deployment.public_keys[0])
        assert vault.fleet.channel_public_key == hsm_1[ROLE_CHANNEL]
        assert vault.fleet.opaque_public_key == hsm_1[ROLE_OPAQUE_AKE]
        saved = JsonFileStateStore(state_file).load()
        assert (saved.epoch, saved.checkpoint_size) == (1, 1)

        vault.register(PASSWORD, BACKUP_KEY)
        with pytest.raises(WrongPasswordError) as wrong:
            vault.recover(b"wrong password")
        assert wrong.value.attempts_left == 9
        assert vault.recover(PASSWORD).backup_key == BACKUP_KEY
        assert not vault.refresh_pending

        # The operator publishes epoch 2 (a new fleet) and installs its bundle on the host.
        install_bundle(deployment.bundles[1], deployment.current_bundle)
        assert vault.status().attempts_left == 10  # answered by epoch 1's fleet ...
        assert vault.refresh_pending  # ... whose answer announced epoch 2
        fleet = vault.refresh()  # since=1: the host attaches the 1 -> 2 consistency proof
        assert fleet.epoch == 2
        assert fleet.channel_public_key == keys_of(deployment.public_keys[1])[ROLE_CHANNEL]
        saved = JsonFileStateStore(state_file).load()
        assert (saved.epoch, saved.checkpoint_size) == (2, 2)

        # The host rolls back to the epoch-1 bundle: refused, nothing changes.
        install_bundle(deployment.bundles[0], deployment.current_bundle)
        with pytest.raises(EpochRollbackError):
            vault.refresh()
        assert vault.fleet.epoch == 2
    assert JsonFileStateStore(state_file).load() == saved
    with pytest.raises(EpochRollbackError):
        deployment.client(state_file)
    assert JsonFileStateStore(state_file).load() == saved


def test_bundle_countersigned_by_another_operator_key_is_refused(
    deployment: Deployment, tmp_path: Path
) -> None:
    genuine = decode_bundle(deployment.bundles[0])
    mallory = SoftwareSigner.generate()
    forged = replace(genuine, counter_signature=countersign(mallory, genuine.witness_signature))
    install_bundle(encode_bundle(forged), deployment.current_bundle)
    state_file = tmp_path / "state.json"
    with pytest.raises(CounterSignatureError):
        deployment.client(state_file)
    assert not state_file.exists()  # no key used, nothing remembered
    # The witness refuses to store that counter-signature, too.
    response = httpx.post(
        f"{deployment.witness.url}/namespaces/{NAMESPACE}/audits/1/countersignature",
        json={"counter_signature": forged.counter_signature.hex()},
        timeout=10,
    )
    assert (response.status_code, response.json()["error"]) == (403, "CounterSignatureError")


def test_publish_with_another_operator_key_is_refused(deployment: Deployment) -> None:
    other_key = deployment.tmp / "mallory.key"
    run("operator", "keygen", "--out", str(other_key))
    out = deployment.tmp / "mallory.bundle"
    result = publish(deployment.witness, deployment.public_keys[0], other_key, out, check=False)
    assert result.returncode == 1
    assert "bkv: SubmissionSignatureError:" in result.stderr
    assert not out.exists()
    last = httpx.get(
        f"{deployment.witness.url}/namespaces/{NAMESPACE}/last-verified-epoch", timeout=10
    )
    assert last.json()["epoch"] == 2


def test_host_serves_consistency_proofs_and_announces_the_epoch(
    deployment: Deployment, tmp_path: Path
) -> None:
    install_bundle(deployment.bundles[1], deployment.current_bundle)
    fresh = httpx.get(f"{deployment.host_url}/v1/bundle", timeout=10)
    assert fresh.status_code == 200 and fresh.headers["bkv-bundle-epoch"] == "2"
    assert decode_bundle(fresh.content).consistency_proof == ()
    from_one = decode_bundle(
        httpx.get(f"{deployment.host_url}/v1/bundle?since=1", timeout=10).content
    )
    assert from_one.consistency_size == 1 and from_one.consistency_proof
    for bad in ("-1", "01", "x", "9" * 20):
        response = httpx.get(f"{deployment.host_url}/v1/bundle?since={bad}", timeout=10)
        assert response.status_code == 400
    document = httpx.get(f"{deployment.host_url}/openapi.json", timeout=10).json()
    assert "since" in json.dumps(document["paths"]["/v1/bundle"])
    assert "bkv-bundle-epoch" in json.dumps(document["paths"]["/v1/request"])
    # A client that saw a checkpoint the host cannot link to refuses the bundle.
    forked_state = tmp_path / "forked.json"
    JsonFileStateStore(forked_state).save(
        ClientState(epoch=1, digest=b"\x01" * 32, checkpoint_size=1, checkpoint_root=b"\x02" * 32)
    )
    with pytest.raises(ConsistencyProofError):
        deployment.client(forked_state)


def test_audit_log_passes_against_the_witness(deployment: Deployment) -> None:
    witness = deployment.witness
    result = subprocess.run(
        [
            sys.executable, "-m", "bkv.cli.main", "audit", "log",
            "--witness", witness.url,
            "--namespace", NAMESPACE,
            "--witness-key", witness.statement_key,
            "--operator-key", deployment.operator_public_key,
            "--log-key", witness.info["log_public_key"],
            "--origin", witness.info["origin"],
            "--require-countersignatures",
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "WARNING" not in out
    assert "2 epoch(s) verified" in out
    assert "operator counter-signatures verified: 2 of 2" in out
    changes = {
        (row[0], row[2]): row[3]
        for row in (line.split() for line in out.splitlines())
        if len(row) >= 4 and row[0] in ("1", "2")
    }
    assert changes[("1", "channel")] == "added"
    assert changes[("2", "channel")] == "changed"
    assert changes[("2", "opaque_ake")] == "changed"
    assert out.rstrip().endswith("OK")


def test_countersign_again_rebuilds_an_epochs_bundle(
    deployment: Deployment, tmp_path: Path
) -> None:
    common = [
        "--witness", deployment.witness.url, "--namespace", NAMESPACE, "--epoch", "1",
        *deployment.witness.pin_arguments(),
    ]  # fmt: skip
    out = tmp_path / "epoch-1-again.bundle"
    result = run(
        "operator", "countersign", *common,
        "--operator-key", str(deployment.tmp / "operator.key"), "--out", str(out),
    )  # fmt: skip
    assert "counter-signed bkv.fleet_keys.v1 epoch 1" in result.stdout
    rebuilt, original = decode_bundle(out.read_bytes()), decode_bundle(deployment.bundles[0])
    assert rebuilt.counter_signature == original.counter_signature  # Ed25519 is deterministic
    assert rebuilt.artifact == original.artifact
    install_bundle(out.read_bytes(), deployment.current_bundle)
    with deployment.client(tmp_path / "state.json") as vault:
        assert vault.fleet.epoch == 1
    mallory = deployment.tmp / "mallory-2.key"
    run("operator", "keygen", "--out", str(mallory))
    refused = run("operator", "countersign", *common, "--operator-key", str(mallory), check=False)
    # The logged submission is not mallory's: its tool refuses before counter-signing.
    assert refused.returncode == 1 and "bkv: SubmissionSignatureError:" in refused.stderr
    # Pins that are not the witness's: refused before counter-signing, too.
    wrong = [*common[:6], "--witness-key", OTHER_WITNESS_KEY, *common[8:]]
    refused = run(
        "operator", "countersign", *wrong,
        "--operator-key", str(deployment.tmp / "operator.key"), check=False,
    )  # fmt: skip
    assert refused.returncode == 1 and "bkv: UnknownKeyError:" in refused.stderr
