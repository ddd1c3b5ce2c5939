"""Configuration of the host (``bkv host serve --config FILE``), strict TOML.

Example (relative paths are relative to the config file)::

    [host]
    fleet_id = "bkv-dev"
    listen = "127.0.0.1:8080"                     # host:port; port 0 picks a free port
    hsm_url = "http://127.0.0.1:7801/v1/message"  # `bkv hsm serve` endpoint
    hsm_timeout_seconds = 10
    public_keys_file = "hsm-state/public-keys.json"   # optional, served at /v1/fleet-keys
    bundle_file = "bundles/current.bundle"        # optional: the validation bundle that
                                                  # `bkv operator publish` wrote, served at
                                                  # /v1/bundle (re-read when it changes)
    witness_url = "http://127.0.0.1:8470"         # optional: where /v1/bundle fetches
                                                  # consistency proofs (/log/consistency)

    [[accounts]]
    account_id = "616c696365"                     # hex, 1..64 bytes
    token_sha256 = "<64 hex digits: SHA-256 of the account's bearer token>"

    [rate_limits.account]                         # optional; every request of an account
    burst = 30
    per_period = 60
    period_seconds = 60

    [rate_limits.record_attempts]                 # optional; attempt-costing requests
    burst = 5
    per_period = 10
    period_seconds = 3600

The host holds no secret: accounts are listed by the SHA-256 of their bearer
token, never the token. Unknown keys are errors.
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bkv.errors import ConfigError
from bkv.host.ratelimit import Limit
from bkv.protocol.messages import MAX_ACCOUNT_ID, MAX_FLEET_ID

DEFAULT_ACCOUNT_LIMIT = Limit(burst=30, per_period=60, period_ms=60_000)
"""Every request of an account: 30 at once, then one a second."""

DEFAULT_RECORD_ATTEMPT_LIMIT = Limit(burst=5, per_period=10, period_ms=3_600_000)
"""Attempt-costing requests (RecoverStart) on one record: 5 at once, then 10 an hour."""

MAX_TIMEOUT_SECONDS = 300
TOKEN_DIGEST_SIZE = 32


def token_digest(token: str) -> bytes:
    """SHA-256 of a bearer token (what the configuration lists)."""
    return hashlib.sha256(token.encode("utf-8")).digest()


@dataclass(frozen=True)
class HostConfig:
    """A validated host configuration."""

    fleet_id: str
    hsm_url: str
    accounts: dict[bytes, bytes] = field(repr=False)  # token SHA-256 -> account id
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    hsm_timeout_seconds: float = 10.0
    public_keys_file: Path | None = None
    bundle_file: Path | None = None
    witness_url: str | None = None
    account_limit: Limit = DEFAULT_ACCOUNT_LIMIT
    record_attempt_limit: Limit = DEFAULT_RECORD_ATTEMPT_LIMIT

    @classmethod
    def load(cls, path: Path) -> HostConfig:
        """Read and validate ``path``; every problem is a :class:`ConfigError`."""
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read host config {path}: {type(exc).__name__}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"host config {path} is not valid TOML: {exc}") from None
        return cls.from_dict(data, base=Path(path).resolve().parent)

    @classmethod
    def from_dict(cls, data: Any, base: Path) -> HostConfig:
        """Validate a parsed configuration; relative paths are resolved against ``base``."""
        top = _object(data, "top level", required={"host", "accounts"}, optional={"rate_limits"})
        host = _object(top["host"], "[host]", required={"fleet_id", "hsm_url"},
                       optional={"listen", "hsm_timeout_seconds", "public_keys_file",
                                 "bundle_file", "witness_url"})  # fmt: skip
        fleet_id = _string(host["fleet_id"], "fleet_id")
        if len(fleet_id.encode("utf-8")) > MAX_FLEET_ID:
            raise ConfigError(f"fleet_id exceeds {MAX_FLEET_ID} bytes")
        hsm_url = _string(host["hsm_url"], "hsm_url")
        if not hsm_url.startswith(("http://", "https://")):
            raise ConfigError("hsm_url must be an http(s) URL")
        listen_host, listen_port = _parse_listen(_string(host.get("listen", "127.0.0.1:8080"),
                                                         "listen"))  # fmt: skip
        timeout = host.get("hsm_timeout_seconds", 10)
        if type(timeout) not in (int, float) or not 0 < timeout <= MAX_TIMEOUT_SECONDS:
            raise ConfigError(f"hsm_timeout_seconds must be in (0, {MAX_TIMEOUT_SECONDS}]")
        keys_file = host.get("public_keys_file")
        bundle_file = host.get("bundle_file")
        witness_url = host.get("witness_url")
        if witness_url is not None:
            witness_url = _string(witness_url, "witness_url").rstrip("/")
            if not witness_url.startswith(("http://", "https://")):
                raise ConfigError("witness_url must be an http(s) URL")
            if bundle_file is None:
                raise ConfigError("witness_url is only used with bundle_file")
        limits = _object(top.get("rate_limits", {}), "[rate_limits]", required=set(),
                         optional={"account", "record_attempts"})  # fmt: skip
        return cls(
            fleet_id=fleet_id,
            hsm_url=hsm_url,
            accounts=_accounts(top["accounts"]),
            listen_host=listen_host,
            listen_port=listen_port,
            hsm_timeout_seconds=float(timeout),
            public_keys_file=(
                None if keys_file is None else base / _string(keys_file, "public_keys_file")
            ),
            bundle_file=(
                None if bundle_file is None else base / _string(bundle_file, "bundle_file")
            ),
            witness_url=witness_url,
            account_limit=_limit(limits.get("account"), DEFAULT_ACCOUNT_LIMIT, "account"),
            record_attempt_limit=_limit(
                limits.get("record_attempts"), DEFAULT_RECORD_ATTEMPT_LIMIT, "record_attempts"
            ),
        )


def _parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError("listen must be host:port")
    return host, int(port_text)


def _object(value: Any, where: str, *, required: set[str], optional: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a table")
    missing, unknown = required - value.keys(), value.keys() - required - optional
    if missing:
        raise ConfigError(f"{where} lacks {sorted(missing)}")
    if unknown:
        raise ConfigError(f"{where} has unknown keys {sorted(unknown)}")
    return value


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where} must be a non-empty string")
    return value


def _hex(value: Any, where: str, *, size: int | None = None, max_size: int = 0) -> bytes:
    text = _string(value, where)
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise ConfigError(f"{where} must be hex") from None
    if raw.hex() != text:
        raise ConfigError(f"{where} must be lowercase hex without separators")
    if size is not None and len(raw) != size:
        raise ConfigError(f"{where} must be {size} bytes")
    if max_size and not 0 < len(raw) <= max_size:
        raise ConfigError(f"{where} must be 1..{max_size} bytes")
    return raw


def _accounts(value: Any) -> dict[bytes, bytes]:
    if not isinstance(value, list):
        raise ConfigError("accounts must be a list")
    accounts: dict[bytes, bytes] = {}
    seen: set[bytes] = set()
    for index, entry in enumerate(value):
        where = f"accounts[{index}]"
        item = _object(entry, where, required={"account_id", "token_sha256"}, optional=set())
        account = _hex(item["account_id"], f"{where}.account_id", max_size=MAX_ACCOUNT_ID)
        digest = _hex(item["token_sha256"], f"{where}.token_sha256", size=TOKEN_DIGEST_SIZE)
        if digest in accounts or account in seen:
            raise ConfigError(f"{where} repeats an account or token")
        accounts[digest] = account
        seen.add(account)
    return accounts


def _limit(value: Any, default: Limit, where: str) -> Limit:
    if value is None:
        return default
    obj = _object(value, f"rate_limits.{where}",
                  required={"burst", "per_period", "period_seconds"}, optional=set())  # fmt: skip
    numbers = [obj["burst"], obj["per_period"], obj["period_seconds"]]
    if not all(type(n) is int and 0 < n <= 10**9 for n in numbers):
        raise ConfigError(f"rate_limits.{where}: values must be positive integers")
    return Limit(burst=numbers[0], per_period=numbers[1], period_ms=numbers[2] * 1000)
