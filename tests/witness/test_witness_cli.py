"""``bkv witness`` commands: init, keys on disk and in SoftHSM2, serve in a real process."""

from __future__ import annotations

import json
import shlex
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import independent_plexi_verifier as indep
import pytest
from witness_helpers import NS, Clock, artifact_for, fixed_signer

from bkv.cli.main import main as bkv_main
from bkv.errors import ConfigError
from bkv.keystore import SoftwareSigner, pkcs11
from bkv.protocol import plexi, witness_api
from bkv.protocol import submission as submission_format
from bkv.witness.keys import load_seed_file
from bkv.witness.service import WitnessConfig, WitnessService, wall_clock_ms


def main(argv: list[str]) -> int:
    """``bkv witness ARGV`` in this process."""
    return bkv_main(["witness", *argv])


def _init(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    assert main(["init", "--dir", str(tmp_path / "w"), "--name", "test"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["origin"] == "bkv-witness/test"
    return tmp_path / "w" / "witness.json"


def test_init_writes_private_key_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config_path = _init(tmp_path, capsys)
    config = WitnessConfig.load(config_path)
    for spec in config.keys.values():
        assert spec.seed_file is not None
        assert stat.S_IMODE(spec.seed_file.stat().st_mode) == 0o600
    seed = config.keys["statement"].seed_file
    assert seed is not None
    seed.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by group or others"):
        load_seed_file(seed)
    assert main(["info", "--config", str(config_path)]) == 1  # refuses to start
    seed.chmod(0o600)
    seed.write_bytes(b"short")
    with pytest.raises(ConfigError, match="32-byte"):
        load_seed_file(seed)
    # init never overwrites
    assert main(["init", "--dir", str(tmp_path / "w"), "--name", "test"]) == 1


def test_info_pins_are_the_keys_init_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["init", "--dir", str(tmp_path / "w"), "--name", "test"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert main(["info", "--pins", "--config", str(tmp_path / "w" / "witness.json")]) == 0
    pins = shlex.split(capsys.readouterr().out)
    key = info["statement_keys"][0]
    assert pins == [
        "--witness-key", f"{key['public_key']}@{key['not_before']}",
        "--log-key", info["log_public_key"],
        "--origin", info["origin"],
    ]  # fmt: skip


def test_add_namespace_validates_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config_path = _init(tmp_path, capsys)
    key = fixed_signer(0x0A).public_key().hex()
    assert main(["add-namespace", NS, "--operator-key", key, "--config", str(config_path)]) == 0
    assert main(["add-namespace", NS, "--operator-key", key, "--config", str(config_path)]) == 1
    bad = ["add-namespace", "x.y", "--operator-key", key.upper(), "--config", str(config_path)]
    assert main(bad) == 1
    assert "NamespaceExistsError" in capsys.readouterr().err


@contextmanager
def serve_process(config_path: Path) -> Iterator[str]:
    """``python -m bkv.cli.main witness serve`` on a free loopback port."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bkv.cli.main",
            "witness",
            "serve",
            "--config",
            str(config_path),
            "--listen",
            "127.0.0.1:0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout=30)
    try:
        assert lines and lines[0].startswith("listening on "), proc.stderr.read()  # type: ignore[union-attr]
        yield lines[0].split()[-1]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def _post(url: str, operator: SoftwareSigner, epoch: int, artifact: bytes) -> httpx.Response:
    sub = submission_format.sign_submission(
        operator, NS, epoch, artifact, submitted_at_ms=Clock(wall_clock_ms()).now
    )
    return httpx.post(
        f"{url}/namespaces/{NS}/submissions", json=witness_api.submission_to_json(sub), timeout=10
    )


@pytest.mark.slow
def test_serve_refuses_resigning_across_process_restarts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_path = _init(tmp_path, capsys)
    operator = fixed_signer(0x0A)
    key = operator.public_key().hex()
    assert main(["add-namespace", NS, "--operator-key", key, "--config", str(config_path)]) == 0
    with serve_process(config_path) as url:
        assert _post(url, operator, 1, artifact_for(1)).status_code == 201
        assert _post(url, operator, 2, artifact_for(2)).status_code == 201
    with serve_process(config_path) as url:
        again = _post(url, operator, 2, artifact_for("another for epoch 2"))
        assert again.status_code == 409 and again.json()["error"] == "EpochConflictError"
        reused = _post(url, operator, 3, artifact_for(1))
        assert reused.status_code == 409 and reused.json()["error"] == "DigestReusedError"
        gap = _post(url, operator, 5, artifact_for("gap"))
        assert gap.status_code == 409
        third = _post(url, operator, 3, artifact_for(3))
        assert third.status_code == 201 and third.json()["log_index"] == 2
        for epoch in (1, 2, 3):
            indep.verify_epoch(url, NS, epoch)


@pytest.mark.softhsm
@pytest.mark.slow
def test_witness_keys_in_softhsm(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    token = pkcs11.init_token(tmp_path / "token", "witness", "so-pin-1234", "user-pin-1234")
    token_file = tmp_path / "pkcs11.json"
    token.save(token_file)
    monkeypatch.setenv("BKV_TEST_WITNESS_PIN", "user-pin-1234")
    argv = [
        "init",
        "--dir",
        str(tmp_path / "w"),
        "--name",
        "hsm",
        "--pkcs11-config",
        str(token_file),
        "--pin-env",
        "BKV_TEST_WITNESS_PIN",
    ]
    assert main(argv) == 0
    info = json.loads(capsys.readouterr().out)
    config = WitnessConfig.load(tmp_path / "w" / "witness.json")
    assert {spec.backend for spec in config.keys.values()} == {"pkcs11"}
    assert not (tmp_path / "w" / "keys").exists()
    clock = Clock(wall_clock_ms())
    service = WitnessService.from_config(config, clock=clock)
    try:
        operator = fixed_signer(0x0A)
        service.register_namespace(NS, operator.public_key())
        receipt = service.submit(
            submission_format.sign_submission(
                operator, NS, 1, artifact_for(1), submitted_at_ms=clock()
            )
        )
        statement_key = bytes.fromhex(info["statement_keys"][0]["public_key"])
        plexi.verify_statement(
            receipt.statement.message_bytes,
            receipt.statement.signature,
            receipt.statement.key_id,
            [plexi.WitnessKey(statement_key)],
        )
    finally:
        service.close()
    monkeypatch.delenv("BKV_TEST_WITNESS_PIN")
    with pytest.raises(ConfigError, match="BKV_TEST_WITNESS_PIN"):
        WitnessService.from_config(config)
