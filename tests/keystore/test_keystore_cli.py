"""``bkv keystore`` sub-commands, run through their argparse registration."""

from __future__ import annotations

import argparse
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bkv.cli.keystore import SO_PIN_ENV, USER_PIN_ENV, add_commands
from bkv.errors import BkvError, ConfigError, KeyExistsError, KeystoreError
from bkv.keystore.files import read_key_file
from bkv.keystore.pkcs11 import Pkcs11Config, load_sealing_key, load_signing_key
from bkv.keystore.software import SoftwareSealer, SoftwareSigner

USER_PIN = "user-pin-1234"


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bkv")
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.handler(args))


@pytest.fixture
def pins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SO_PIN_ENV, "so-pin-5678")
    monkeypatch.setenv(USER_PIN_ENV, USER_PIN)


@pytest.mark.softhsm
@pytest.mark.usefixtures("pins")
def test_pkcs11_flow(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    token_dir = tmp_path / "token"
    assert _run(["keystore", "init-token", "--token-dir", str(token_dir), "--label", "ops"]) == 0
    config_path = Path(capsys.readouterr().out.strip())
    assert config_path == token_dir / "pkcs11.json"
    assert USER_PIN not in config_path.read_text()
    common = ["--pkcs11-config", str(config_path), "--label"]

    assert _run(["keystore", "gen-signing-key", *common, "operator"]) == 0
    public_hex = capsys.readouterr().out.strip()
    assert _run(["keystore", "public-key", *common, "operator"]) == 0
    assert capsys.readouterr().out.strip() == public_hex
    assert _run(["keystore", "gen-sealing-key", *common, "state"]) == 0
    assert capsys.readouterr().out.strip() == "state"

    config = Pkcs11Config.load(config_path, USER_PIN)
    with load_signing_key(config, "operator") as signer:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_hex)).verify(
            signer.sign(b"m"), b"m"
        )
    with load_sealing_key(config, "state") as sealer:
        assert sealer.open(sealer.seal(b"x", b""), b"") == b"x"
    with pytest.raises(KeyExistsError):
        _run(["keystore", "gen-signing-key", *common, "operator"])


@pytest.mark.usefixtures("pins")
def test_software_flow(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seed_file, key_file = tmp_path / "signing.key", tmp_path / "sealing.key"
    assert _run(["keystore", "gen-signing-key", "--key-file", str(seed_file)]) == 0
    public_hex = capsys.readouterr().out.strip()
    assert stat.S_IMODE(seed_file.stat().st_mode) == 0o600
    assert SoftwareSigner(read_key_file(seed_file)).public_key().hex() == public_hex
    assert _run(["keystore", "public-key", "--key-file", str(seed_file)]) == 0
    assert capsys.readouterr().out.strip() == public_hex
    assert seed_file.read_text().strip() not in public_hex

    assert _run(["keystore", "gen-sealing-key", "--key-file", str(key_file)]) == 0
    sealer = SoftwareSealer(read_key_file(key_file))
    assert sealer.open(sealer.seal(b"x", b""), b"") == b"x"
    with pytest.raises(KeyExistsError):
        _run(["keystore", "gen-sealing-key", "--key-file", str(key_file)])


def test_missing_pin_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SO_PIN_ENV, raising=False)
    monkeypatch.delenv(USER_PIN_ENV, raising=False)
    with pytest.raises(ConfigError):
        _run(["keystore", "init-token", "--token-dir", str(tmp_path), "--label", "x"])


@pytest.mark.usefixtures("pins")
def test_pkcs11_without_label_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "pkcs11.json"
    Pkcs11Config("m", "c", "t", USER_PIN).save(config)
    with pytest.raises(ConfigError):
        _run(["keystore", "public-key", "--pkcs11-config", str(config)])


def test_backend_choice_is_required() -> None:
    with pytest.raises(SystemExit):
        _run(["keystore", "public-key"])


def test_public_key_of_missing_file_fails_typed(tmp_path: Path) -> None:
    with pytest.raises(BkvError):
        _run(["keystore", "public-key", "--key-file", str(tmp_path / "absent")])


@pytest.mark.parametrize(
    "content",
    ["", "00" * 32, "00" * 32 + "\n\n", "AA" * 32 + "\n", "0" * 63 + "\n", "zz" * 32 + "\n"],
)
def test_malformed_key_files_are_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "bad.key"
    path.write_text(content)
    with pytest.raises(KeystoreError):
        read_key_file(path)
