"""Configuration of the host (``bkv host serve --config FILE``), strict TOML.

Example (relative paths are relative to the config file)::

    [host]
    fleet_id = "bkv-dev"
    listen = "127.0.0.1:8080"                     # host:port; port 0 picks a free port
    hsm_url = "http://127.0.0.1:7801/v1/message"  # `bkv hsm serve` endpoint
    hsm_link_key_file = "hsm/link.key"            # the HSM's link_key_file (`bkv hsm init`)
    hsm_timeout_seconds = 10
    header_timeout_seconds = 10                   # optional: a client's request head and
    body_timeout_seconds = 10                     # body must be complete within these
    public_keys_file = "hsm-state/public-keys.json"   # optional, served at /v1/fleet-keys
    bundle_file = "bundles/current.bundle"        # optional: the validation bundle that
                                                  # `bkv operator publish` wrote, served at
                                                  # /v1/bundle (re-read when it changes)
    witness_url = "http://127.0.0.1:8470"         # optional: where /v1/bundle fetches
                                                  # consistency proofs (/log/consistency)
    log_verifier_key = "<origin>+<id>+<key>"      # with witness_url: the witness log's
                                                  # C2SP note verifier key (`bkv witness
                                                  # info`); old checkpoints must verify

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

The host holds no client secret: accounts are listed by the SHA-256 of their
bearer token, never the token. Its one key is the link key that authenticates
it to the HSM (:mod:`bkv.protocol.hsm_link`), read at load time from a file
only this user may read (:func:`bkv.keystore.link_key.read_link_key`).
Unknown keys are errors.
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bkv.errors import ConfigError, KeystoreError, NoteError
from bkv.host.ratelimit import Limit
from bkv.keystore.link_key import read_link_key
from bkv.protocol.messages import MAX_ACCOUNT_ID, MAX_FLEET_ID
from bkv.serving.listen import ListenAddress, parse_listen
from bkv.serving.timeouts import (
    BODY_TIMEOUT_KEY,
    HEADER_TIMEOUT_KEY,
    Timeouts,
    seconds_from,
    timeouts_from,
)
from bkv.tlog.note import parse_verifier_key

DEFAULT_ACCOUNT_LIMIT = Limit(burst=30, per_period=60, period_ms=60_000)
"""Every request of an account: 30 at once, then one a second."""

DEFAULT_RECORD_ATTEMPT_LIMIT = Limit(burst=5, per_period=10, period_ms=3_600_000)
"""Attempt-costing requests (RecoverStart) on one record: 5 at once, then 10 an hour."""

DEFAULT_LISTEN = ListenAddress("127.0.0.1", 8080)

_HOST_REQUIRED = {"fleet_id", "hsm_url", "hsm_link_key_file"}
_HOST_OPTIONAL = {
    "listen",
    "hsm_timeout_seconds",
    "public_keys_file",
    "bundle_file",
    "witness_url",
    "log_verifier_key",
    HEADER_TIMEOUT_KEY,
    BODY_TIMEOUT_KEY,
}
TOKEN_DIGEST_SIZE = 32


def token_digest(token: str) -> bytes:
    """SHA-256 of a bearer token (what the configuration lists)."""
    return hashlib.sha256(token.encode("utf-8")).digest()


@dataclass(frozen=True)
class HostConfig:
    """A validated host configuration."""

    fleet_id: str
    hsm_url: str
    hsm_link_key: bytes = field(repr=False)
    accounts: dict[bytes, bytes] = field(repr=False)  # token SHA-256 -> account id
    listen: ListenAddress = DEFAULT_LISTEN
    hsm_timeout_seconds: float = 10.0
    timeouts: Timeouts = field(default_factory=Timeouts)
    public_keys_file: Path | None = None
    bundle_file: Path | None = None
    witness_url: str | None = None
    log_verifier_key: str | None = None
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
        host = _object(top["host"], "[host]", required=_HOST_REQUIRED, optional=_HOST_OPTIONAL)
        fleet_id = _string(host["fleet_id"], "fleet_id")
        if len(fleet_id.encode("utf-8")) > MAX_FLEET_ID:
            raise ConfigError(f"fleet_id exceeds {MAX_FLEET_ID} bytes")
        hsm_url = _string(host["hsm_url"], "hsm_url")
        if not hsm_url.startswith(("http://", "https://")):
            raise ConfigError("hsm_url must be an http(s) URL")
        if "?" in hsm_url or "#" in hsm_url:
            # The link MAC covers the target as sent, and the HSM rebuilds it from
            # path and query: a bare "?" would not survive, and no HSM route takes one.
            raise ConfigError("hsm_url must have no query or fragment")
        listen = parse_listen(_string(host.get("listen", str(DEFAULT_LISTEN)), "listen"))
        link_key = _link_key(base / _string(host["hsm_link_key_file"], "hsm_link_key_file"))
        timeout = seconds_from(host, "hsm_timeout_seconds", 10.0, "[host]")
        keys_file = host.get("public_keys_file")
        bundle_file = host.get("bundle_file")
        witness_url = host.get("witness_url")
        if witness_url is not None:
            witness_url = _string(witness_url, "witness_url").rstrip("/")
            if not witness_url.startswith(("http://", "https://")):
                raise ConfigError("witness_url must be an http(s) URL")
            if bundle_file is None:
                raise ConfigError("witness_url is only used with bundle_file")
        log_verifier_key = _log_verifier_key(host.get("log_verifier_key"), witness_url)
        limits = _object(top.get("rate_limits", {}), "[rate_limits]", required=set(),
                         optional={"account", "record_attempts"})  # fmt: skip
        return cls(
            fleet_id=fleet_id,
            hsm_url=hsm_url,
            hsm_link_key=link_key,
            accounts=_accounts(top["accounts"]),
            listen=listen,
            hsm_timeout_seconds=timeout,
            timeouts=timeouts_from(host, "[host]"),
            public_keys_file=(
                None if keys_file is None else base / _string(keys_file, "public_keys_file")
            ),
            bundle_file=(
                None if bundle_file is None else base / _string(bundle_file, "bundle_file")
            ),
            witness_url=witness_url,
            log_verifier_key=log_verifier_key,
            account_limit=_limit(limits.get("account"), DEFAULT_ACCOUNT_LIMIT, "account"),
            record_attempt_limit=_limit(
                limits.get("record_attempts"), DEFAULT_RECORD_ATTEMPT_LIMIT, "record_attempts"
            ),
        )


def _log_verifier_key(value: Any, witness_url: str | None) -> str | None:
    # The host checks each old checkpoint the witness serves under this key before it
    # trusts its root (bkv.host.bundle); a key name and ID alone would prove nothing.
    if (value is None) != (witness_url is None):
        raise ConfigError("witness_url and log_verifier_key go together")
    if value is None:
        return None
    key = _string(value, "log_verifier_key")
    try:
        parse_verifier_key(key)
    except NoteError as exc:
        raise ConfigError(f"log_verifier_key is not a note verifier key: {exc}") from None
    return key


def _link_key(path: Path) -> bytes:
    try:
        return read_link_key(path)
    except KeystoreError as exc:
        raise ConfigError(f"hsm_link_key_file: {exc}") from None


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
