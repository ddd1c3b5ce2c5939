"""The ``bkv hsm`` configuration file (TOML, strict: unknown keys are errors).

Relative paths are relative to the config file::

    [hsm]
    fleet_id = "bkv-dev"
    listen = "127.0.0.1:7801"      # host:port; port 0 picks a free port
    allow_remote = false          # listen on a non-loopback address only if true
    state_dir = "hsm-state"        # host-owned: the record store (default), public-keys.json
    record_store = "sqlite:hsm-state/records.sqlite3"   # host-owned (default: this);
                                  # or "postgresql://bkv@db.example/bkv?schema=fleet_a"
                                  # (docs/operations.md, "Record storage")
    key_dir = "hsm-private"        # HSM-private: sealing key, NV counter, lock (default: this)
    link_key_file = "link.key"     # the host-to-HSM link key (default: this); the host's
                                  # hsm_link_key_file names the same file
    max_guess_limit = 10          # used by `bkv hsm init` (1..100)
    header_timeout_seconds = 10   # a request head must be complete within this
    body_timeout_seconds = 10     # a request body must be complete within this

    [sealer]
    backend = "software"          # or "pkcs11"
    key_file = "sealing.key"      # software: a file name inside key_dir (bkv.keystore.files)
    # pkcs11_config = "token/pkcs11.json"   # Pkcs11Config.save() output
    # user_pin_env = "BKV_HSM_PIN"          # environment variable holding the user PIN
    # key_label = "bkv-hsm-seal"
    # counter_label = "bkv-hsm-nv-counter"  # the NV counter's token data object

    [testing]                     # fault injection for crash tests only; omit in production
    pause_at = "persisted"        # see bkv.hsm.pause

``key_dir`` stands in for the inside of the HSM: it must not be, contain, or
lie inside ``state_dir`` (the host's directory), and the link key file must
not lie inside it (the host reads that file). The HSM's port answers only
requests authenticated with the link key (:mod:`bkv.protocol.hsm_link`); it
still listens on a loopback address unless ``allow_remote`` says otherwise,
because the link MAC neither hides nor de-duplicates requests.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from bkv.errors import ConfigError
from bkv.hsm.pause import PAUSE_POINTS
from bkv.keystore.counter import COUNTER_FILE_NAME
from bkv.keystore.files import LOCK_FILE_NAME
from bkv.protocol.messages import MAX_GUESS_LIMIT
from bkv.serving.listen import ListenAddress, parse_listen
from bkv.serving.timeouts import BODY_TIMEOUT_KEY, HEADER_TIMEOUT_KEY, Timeouts, timeouts_from

DEFAULT_KEY_LABEL: Final = "bkv-hsm-seal"
DEFAULT_COUNTER_LABEL: Final = "bkv-hsm-nv-counter"
DEFAULT_KEY_DIR: Final = "hsm-private"
"""key_dir when the config names none: a sibling of the config file, never inside state_dir."""
DEFAULT_KEY_FILE: Final = "sealing.key"
DEFAULT_LINK_KEY_FILE: Final = "link.key"
"""link_key_file when the config names none: next to the config file."""
DEFAULT_LISTEN: Final = "127.0.0.1:0"
RECORD_STORE_FILE: Final = "records.sqlite3"
"""The SQLite record store's file in ``state_dir`` when the config names no record_store."""

_HSM_KEYS: Final = frozenset(
    {
        "fleet_id",
        "listen",
        "allow_remote",
        "state_dir",
        "record_store",
        "key_dir",
        "link_key_file",
        "max_guess_limit",
        HEADER_TIMEOUT_KEY,
        BODY_TIMEOUT_KEY,
    }
)
_SEALER_KEYS: Final = frozenset(
    {"backend", "key_file", "pkcs11_config", "user_pin_env", "key_label", "counter_label"}
)


@dataclass(frozen=True)
class SealerConfig:
    """Which backend holds the state-sealing key and the NV counter."""

    backend: str
    key_file: Path | None = None
    pkcs11_config: Path | None = None
    user_pin_env: str = "BKV_HSM_PIN"
    key_label: str = DEFAULT_KEY_LABEL
    counter_label: str = DEFAULT_COUNTER_LABEL


@dataclass(frozen=True)
class HsmConfig:
    """The ``bkv hsm`` configuration file."""

    fleet_id: str
    listen: ListenAddress
    state_dir: Path
    key_dir: Path
    link_key_file: Path
    record_store: str = field(repr=False)  # a PostgreSQL URL may carry a password
    max_guess_limit: int
    sealer: SealerConfig
    timeouts: Timeouts = field(default_factory=Timeouts)
    pause_at: str | None = None


def _table(data: dict[str, Any], name: str, *, required: bool = True) -> dict[str, Any]:
    value = data.get(name)
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"config: missing [{name}] table")
    return value


def _string(table: dict[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = table.get(key, default)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"config: [{where}] {key} must be a non-empty string")
    return value


def _check_keys(table: dict[str, Any], allowed: frozenset[str] | set[str], where: str) -> None:
    unknown = set(table) - allowed
    if unknown:
        raise ConfigError(f"config: [{where}] has unknown keys {sorted(unknown)}")


def load_config(path: Path) -> HsmConfig:
    """Parse and check a config file; :class:`ConfigError` says what is wrong."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config {path}: {type(exc).__name__}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path} is not valid TOML: {exc}") from None
    _check_keys(data, {"hsm", "sealer", "testing"}, "top level")
    base = path.resolve().parent
    hsm = _table(data, "hsm")
    _check_keys(hsm, _HSM_KEYS, "hsm")
    listen = _listen(hsm)
    limit = hsm.get("max_guess_limit", 10)
    if type(limit) is not int or not 1 <= limit <= MAX_GUESS_LIMIT:
        raise ConfigError(f"config: [hsm] max_guess_limit must be 1..{MAX_GUESS_LIMIT}")
    state_dir = (base / _string(hsm, "state_dir", "hsm")).resolve()
    key_dir = (base / _string(hsm, "key_dir", "hsm", DEFAULT_KEY_DIR)).resolve()
    _check_separate(state_dir, key_dir)
    link_key_file = (base / _string(hsm, "link_key_file", "hsm", DEFAULT_LINK_KEY_FILE)).resolve()
    if link_key_file.is_relative_to(key_dir):
        # The host reads the link key; it must never need access to key_dir.
        raise ConfigError("config: [hsm] link_key_file must not be inside key_dir")
    sealer = _parse_sealer(_table(data, "sealer"), base, key_dir)
    record_store = _record_store(hsm, base, state_dir, key_dir)
    testing = _table(data, "testing", required=False)
    _check_keys(testing, {"pause_at"}, "testing")
    pause_at = testing.get("pause_at")
    if pause_at is not None and pause_at not in PAUSE_POINTS:
        raise ConfigError(f"config: [testing] pause_at must be one of {PAUSE_POINTS}")
    return HsmConfig(
        fleet_id=_string(hsm, "fleet_id", "hsm"),
        listen=listen,
        state_dir=state_dir,
        key_dir=key_dir,
        link_key_file=link_key_file,
        record_store=record_store,
        max_guess_limit=limit,
        sealer=sealer,
        timeouts=timeouts_from(hsm, "config: [hsm]"),
        pause_at=pause_at,
    )


def _record_store(hsm: dict[str, Any], base: Path, state_dir: Path, key_dir: Path) -> str:
    """The record store URL; a SQLite path is resolved against the config file's directory.

    The store is the host's: a SQLite file must not lie inside ``key_dir``.
    A PostgreSQL URL is passed on as written (put no password in it: libpq
    reads ``PGPASSWORD`` or ``~/.pgpass``, docs/operations.md).
    """
    url = _string(hsm, "record_store", "hsm", f"sqlite:{state_dir / RECORD_STORE_FILE}")
    if url.startswith(("postgresql://", "postgres://")):
        return url
    if not url.startswith("sqlite:"):
        raise ConfigError('config: [hsm] record_store must start with "sqlite:" or "postgresql://"')
    path = (base / url.removeprefix("sqlite:").removeprefix("//")).resolve()
    if path.is_relative_to(key_dir):
        raise ConfigError("config: [hsm] record_store must not be inside key_dir")
    return f"sqlite:{path}"


def _listen(hsm: dict[str, Any]) -> ListenAddress:
    listen = parse_listen(_string(hsm, "listen", "hsm", DEFAULT_LISTEN), "config: [hsm] listen")
    allow_remote = hsm.get("allow_remote", False)
    if not isinstance(allow_remote, bool):
        raise ConfigError("config: [hsm] allow_remote must be true or false")
    if not listen.is_loopback and not allow_remote:
        # Only the host should reach the HSM; see the module docstring.
        raise ConfigError(
            f"config: [hsm] listen {listen} is not a loopback address; "
            "set allow_remote = true to listen there"
        )
    return listen


def _check_separate(state_dir: Path, key_dir: Path) -> None:
    # The host owns state_dir; key_dir stands in for the inside of the HSM. If
    # one held the other, the host could read the sealing key (and open every
    # sealed state) or rewrite the NV counter (and roll the state back).
    if key_dir == state_dir or key_dir.is_relative_to(state_dir):
        raise ConfigError("config: [hsm] key_dir must not be state_dir or inside it")
    if state_dir.is_relative_to(key_dir):
        raise ConfigError("config: [hsm] state_dir must not be inside key_dir")


def _parse_sealer(table: dict[str, Any], base: Path, key_dir: Path) -> SealerConfig:
    _check_keys(table, _SEALER_KEYS, "sealer")
    backend = _string(table, "backend", "sealer", "software")
    if backend == "software":
        name = _string(table, "key_file", "sealer", DEFAULT_KEY_FILE)
        reserved = {".", "..", COUNTER_FILE_NAME, LOCK_FILE_NAME}
        if Path(name).name != name or name in reserved:
            raise ConfigError("config: [sealer] key_file must be a plain file name inside key_dir")
        return SealerConfig(backend, key_file=key_dir / name)
    if backend == "pkcs11":
        key_label = _string(table, "key_label", "sealer", DEFAULT_KEY_LABEL)
        counter_label = _string(table, "counter_label", "sealer", DEFAULT_COUNTER_LABEL)
        if key_label == counter_label:
            raise ConfigError("config: [sealer] key_label and counter_label must differ")
        return SealerConfig(
            backend,
            pkcs11_config=base / _string(table, "pkcs11_config", "sealer"),
            user_pin_env=_string(table, "user_pin_env", "sealer", "BKV_HSM_PIN"),
            key_label=key_label,
            counter_label=counter_label,
        )
    raise ConfigError("config: [sealer] backend must be 'software' or 'pkcs11'")
