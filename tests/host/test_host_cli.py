"""``bkv host new-token`` and the config errors of ``bkv host serve``."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from bkv.cli.main import main
from bkv.errors import ConfigError
from bkv.host.config import HostConfig


def test_new_token_prints_token_and_its_digest(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["host", "new-token"]) == 0
    token, digest = capsys.readouterr().out.split()
    assert len(token) >= 40
    assert hashlib.sha256(token.encode()).hexdigest() == digest
    assert main(["host", "new-token"]) == 0
    assert capsys.readouterr().out.split()[0] != token


def test_serve_with_bad_config_fails_typed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "host.toml"
    config.write_text("[host]\n", encoding="utf-8")
    with pytest.raises(ConfigError):
        HostConfig.load(config)
    assert main(["host", "serve", "--config", str(config)]) == 1
    assert "ConfigError" in capsys.readouterr().err


def test_serve_without_a_usable_link_key_fails_typed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "host.toml"
    config.write_text(
        'accounts = []\n[host]\nfleet_id = "f"\nhsm_url = "http://127.0.0.1:1/v1/message"\n'
        'hsm_link_key_file = "absent.key"\n',
        encoding="utf-8",
    )
    assert main(["host", "serve", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("bkv: ConfigError: hsm_link_key_file: ")
    assert "does not exist" in err
