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
from bkv.keystore.files import read_key_file
from bkv.keystore.link_key import create_link_key
from bkv.serving.listen import ListenAddress
from bkv.serving.timeouts import Timeouts

DIGEST = token_digest("secret-token").hex()
GOOD = f"""
[host]
fleet_id = "f1"
listen = "127.0.0.1:0"
hsm_url = "http://127.0.0.1:7801/v1/message"
hsm_link_key_file = "hsm/link.key"
hsm_timeout_seconds = 5
body_timeout_seconds = 2.5
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
    link_key = tmp_path / "hsm" / "link.key"
    if not link_key.exists():
        link_key.parent.mkdir()
        create_link_key(link_key)
    path = tmp_path / "host.toml"
    path.write_text(text, encoding="utf-8")
    return HostConfig.load(path)


def test_good_config(tmp_path: Path) -> None:
    config = _load(tmp_path, GOOD)
    assert config.fleet_id == "f1"
    assert config.listen == ListenAddress("127.0.0.1", 0)
    assert config.hsm_timeout_seconds == 5.0
    assert config.timeouts == Timeouts(header_seconds=10.0, body_seconds=2.5)
    assert config.hsm_link_key == read_key_file(tmp_path / "hsm" / "link.key")
    assert config.hsm_link_key.hex() not in repr(config)
    assert config.public_keys_file == tmp_path.resolve() / "keys.json"
    assert config.accounts == {token_digest("secret-token"): b"alice"}
    assert config.account_limit == DEFAULT_ACCOUNT_LIMIT
    assert config.record_attempt_limit == Limit(2, 3, 60_000)
    assert DIGEST not in repr(config)


def test_defaults(tmp_path: Path) -> None:
    config = _load(
        tmp_path,
        'accounts = []\n[host]\nfleet_id = "f"\nhsm_url = "http://x/y"\n'
        'hsm_link_key_file = "hsm/link.key"\n',
    )
    assert config.record_attempt_limit == DEFAULT_RECORD_ATTEMPT_LIMIT
    assert config.public_keys_file is None
    assert config.listen == ListenAddress("127.0.0.1", 8080)
    assert config.timeouts == Timeouts()


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('fleet_id = "f1"', 'fleet_id = ""'),
        ('fleet_id = "f1"', f'fleet_id = "{"f" * 65}"'),
        ('hsm_url = "http://127.0.0.1:7801/v1/message"', 'hsm_url = "ftp://x"'),
        # The HSM rebuilds the MAC'd target from path and query: a bare "?" is lost.
        ("7801/v1/message", "7801/v1/message?"),
        ("7801/v1/message", "7801/v1/message?x=1"),
        ("7801/v1/message", "7801/v1/message#here"),
        ('listen = "127.0.0.1:0"', 'listen = "127.0.0.1"'),
        ('listen = "127.0.0.1:0"', 'listen = "127.0.0.1:70000"'),
        ('listen = "127.0.0.1:0"', 'listen = "::1:80"'),
        ('hsm_link_key_file = "hsm/link.key"\n', ""),
        ('hsm_link_key_file = "hsm/link.key"', 'hsm_link_key_file = "hsm/absent.key"'),
        ('hsm_link_key_file = "hsm/link.key"', 'hsm_link_key_file = "keys.json"'),
        ("body_timeout_seconds = 2.5", "body_timeout_seconds = 0"),
        ("body_timeout_seconds = 2.5", "body_timeout_seconds = 301"),
        ("body_timeout_seconds = 2.5", "body_timeout_seconds = true"),
        ("body_timeout_seconds = 2.5", "header_timeout_seconds = -1"),
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


def test_a_link_key_other_users_can_read_is_refused(tmp_path: Path) -> None:
    _load(tmp_path, GOOD)
    (tmp_path / "hsm" / "link.key").chmod(0o644)
    with pytest.raises(ConfigError, match="accessible to other users"):
        _load(tmp_path, GOOD)
