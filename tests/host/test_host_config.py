"""Host configuration: strict TOML."""

from __future__ import annotations

from pathlib import Path

import pytest

from bkv.errors import ConfigError
from bkv.host.config import (
    DEFAULT_ACCOUNT_LIMIT,
    DEFAULT_RECORD_ATTEMPT_LIMIT,
    HostConfig,
    token_digest,
)
from bkv.host.ratelimit import Limit

DIGEST = token_digest("secret-token").hex()
GOOD = f"""
[host]
fleet_id = "f1"
listen = "127.0.0.1:0"
hsm_url = "http://127.0.0.1:7801/v1/message"
hsm_timeout_seconds = 5
public_keys_file = "keys.json"

[[accounts]]
account_id = "616c696365"
token_sha256 = "{DIGEST}"

[rate_limits.record_attempts]
burst = 2
per_period = 3
period_seconds = 60
"""


def _load(tmp_path: Path, text: str) -> HostConfig:
    path = tmp_path / "host.toml"
    path.write_text(text, encoding="utf-8")
    return HostConfig.load(path)


def test_good_config(tmp_path: Path) -> None:
    config = _load(tmp_path, GOOD)
    assert config.fleet_id == "f1"
    assert (config.listen_host, config.listen_port) == ("127.0.0.1", 0)
    assert config.hsm_timeout_seconds == 5.0
    assert config.public_keys_file == tmp_path.resolve() / "keys.json"
    assert config.accounts == {token_digest("secret-token"): b"alice"}
    assert config.account_limit == DEFAULT_ACCOUNT_LIMIT
    assert config.record_attempt_limit == Limit(2, 3, 60_000)
    assert DIGEST not in repr(config)


def test_defaults(tmp_path: Path) -> None:
    config = _load(tmp_path, 'accounts = []\n[host]\nfleet_id = "f"\nhsm_url = "http://x/y"\n')
    assert config.record_attempt_limit == DEFAULT_RECORD_ATTEMPT_LIMIT
    assert config.public_keys_file is None
    assert config.listen_port == 8080


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('fleet_id = "f1"', 'fleet_id = ""'),
        ('fleet_id = "f1"', f'fleet_id = "{"f" * 65}"'),
        ('hsm_url = "http://127.0.0.1:7801/v1/message"', 'hsm_url = "ftp://x"'),
        ('listen = "127.0.0.1:0"', 'listen = "127.0.0.1"'),
        ('listen = "127.0.0.1:0"', 'listen = "127.0.0.1:70000"'),
        ("hsm_timeout_seconds = 5", "hsm_timeout_seconds = 0"),
        ("hsm_timeout_seconds = 5", 'hsm_timeout_seconds = "5"'),
        ('account_id = "616c696365"', 'account_id = "ALICE"'),
        ('account_id = "616c696365"', 'account_id = "61:6c"'),
        ('account_id = "616c696365"', f'account_id = "{"00" * 65}"'),
        (f'token_sha256 = "{DIGEST}"', 'token_sha256 = "abcd"'),
        (f'token_sha256 = "{DIGEST}"', f'token_sha256 = "{DIGEST.upper()}"'),
        ("burst = 2", "burst = 0"),
        ("burst = 2", "burst = 2.5"),
        ("[host]", "[host]\nextra = 1"),
        ("[[accounts]]", "[unknown]\nx = 1\n[[accounts]]"),
        ("period_seconds = 60", "period_seconds = 60\nother = 1"),
    ],
)
def test_bad_configs_are_refused(tmp_path: Path, old: str, new: str) -> None:
    assert old in GOOD
    with pytest.raises(ConfigError):
        _load(tmp_path, GOOD.replace(old, new, 1))


def test_repeated_account_or_token_is_refused(tmp_path: Path) -> None:
    entry = f'\n[[accounts]]\naccount_id = "616c696365"\ntoken_sha256 = "{DIGEST}"\n'
    text = GOOD.replace("[rate_limits.record_attempts]", entry + "[rate_limits.record_attempts]")
    with pytest.raises(ConfigError):
        _load(tmp_path, text)


def test_unreadable_and_non_toml_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        HostConfig.load(tmp_path / "absent.toml")
    with pytest.raises(ConfigError):
        _load(tmp_path, "[host\n")
