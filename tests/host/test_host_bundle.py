"""The host's bundle endpoint: configuration, ``since``, and what it refuses to serve."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest
from host_world import ACCOUNTS, running
from hypothesis import given
from hypothesis import strategies as st

from bkv.errors import CodecError, ConfigError
from bkv.host.bundle import MAX_TREE_SIZE, parse_since
from bkv.host.config import HostConfig, token_digest


def _config(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "host.toml"
    account = ACCOUNTS[0]
    path.write_text(
        f'[host]\nfleet_id = "f1"\nlisten = "127.0.0.1:0"\nhsm_url = "{_dead_url()}"\n{extra}\n'
        f'[[accounts]]\naccount_id = "{account.account_id.hex()}"\n'
        f'token_sha256 = "{token_digest(account.token).hex()}"\n',
        encoding="utf-8",
    )
    return path


def _dead_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}/v1/message"


def test_bundle_config(tmp_path: Path) -> None:
    config = HostConfig.load(
        _config(tmp_path, 'bundle_file = "b.bundle"\nwitness_url = "http://127.0.0.1:1/"')
    )
    assert config.bundle_file == tmp_path / "b.bundle"
    assert config.witness_url == "http://127.0.0.1:1"
    assert HostConfig.load(_config(tmp_path, "")).bundle_file is None


@pytest.mark.parametrize(
    "extra",
    [
        'witness_url = "http://127.0.0.1:1"',  # a witness without a bundle is useless
        'bundle_file = "b.bundle"\nwitness_url = "ftp://w"',
        'bundle_file = ""',
        "bundle_file = 3",
    ],
)
def test_bad_bundle_config(tmp_path: Path, extra: str) -> None:
    with pytest.raises(ConfigError):
        HostConfig.load(_config(tmp_path, extra))


def test_parse_since() -> None:
    assert parse_since(None) == 0
    assert parse_since("0") == 0
    assert parse_since("17") == 17
    assert parse_since(str(MAX_TREE_SIZE)) == MAX_TREE_SIZE
    for bad in ("", "-1", "+1", "01", "1.0", "x", " 1", "١", str(MAX_TREE_SIZE + 1), "9" * 20):
        with pytest.raises(CodecError):
            parse_since(bad)


def test_host_refuses_to_serve_what_is_not_a_bundle(tmp_path: Path) -> None:
    bundle = tmp_path / "current.bundle"
    bundle.write_bytes(b"\x03\x01 not a bundle")
    config = _config(tmp_path, f'bundle_file = "{bundle}"')
    with running("host", "serve", "--config", str(config)) as url:
        response = httpx.get(f"{url}/v1/bundle", timeout=10)
        assert response.status_code == 503 and response.json()["error"] == "StorageError"
        bundle.unlink()
        assert httpx.get(f"{url}/v1/bundle", timeout=10).status_code == 503
        extra = httpx.get(f"{url}/v1/bundle?since=1&x=2", timeout=10)
        assert extra.status_code == 400
        # No valid bundle: relayed answers announce no epoch.
        relayed = httpx.post(
            f"{url}/v1/request",
            content=b"\x00",
            headers={"authorization": f"Bearer {ACCOUNTS[0].token}"},
            timeout=10,
        )
        assert relayed.status_code == 400 and "bkv-bundle-epoch" not in relayed.headers


def test_host_without_bundle_answers_404(tmp_path: Path) -> None:
    with running("host", "serve", "--config", str(_config(tmp_path, ""))) as url:
        response = httpx.get(f"{url}/v1/bundle", timeout=10)
        assert response.status_code == 404 and response.json()["error"] == "NotConfigured"


@given(st.text(max_size=25))
def test_since_is_canonical_or_refused(text: str) -> None:
    try:
        value = parse_since(text)
    except CodecError:
        return
    assert str(value) == text
