"""Witness key handling (adapter): software seed files or PKCS#11 keys.

The witness holds three Ed25519 keys, each used for one format only:

- ``statement``: signs Plexi ``SignatureMessage`` bytes (what clients pin);
- ``log``: signs the C2SP checkpoints of the witness's audit log (note key name =
  the log origin);
- ``cosigner``: signs C2SP ``cosignature/v1`` lines for other logs (tlog-witness).

A software key is a file holding the 32-byte Ed25519 seed, created with mode 0600
(``O_EXCL``: never overwritten) and refused at load time if group or others may
read it. A PKCS#11 key lives in a token (SoftHSM2 in tests) and never leaves it;
the user PIN comes from an environment variable, never from the config file.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bkv.errors import ConfigError
from bkv.keystore import Signer, SoftwareSigner

SEED_SIZE = 32
KEY_ROLES = ("statement", "log", "cosigner")


def create_seed_file(path: Path) -> SoftwareSigner:
    """Generate a key and write its seed to a new file readable only by its owner."""
    signer = SoftwareSigner.generate()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise ConfigError(f"key file {path} already exists; keys are never overwritten") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(signer.seed_bytes())
        handle.flush()
        os.fsync(handle.fileno())
    return signer


def load_seed_file(path: Path) -> SoftwareSigner:
    """Load a seed file; refuse one that others can read or that is not 32 bytes."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"key file {path} is not a regular file")
        if info.st_mode & 0o077:
            raise ConfigError(f"key file {path} is readable by group or others (want mode 0600)")
        seed = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read key file {path}: {type(exc).__name__}") from None
    if len(seed) != SEED_SIZE:
        raise ConfigError(f"key file {path} does not hold a 32-byte Ed25519 seed")
    return SoftwareSigner(seed)


@dataclass(frozen=True)
class KeySpec:
    """Where one witness key lives (parsed from the witness config file)."""

    backend: str  # "software" or "pkcs11"
    seed_file: Path | None = None
    pkcs11_config: Path | None = None
    label: str | None = None
    pin_env: str | None = None

    @classmethod
    def from_json(cls, data: Any, base_dir: Path, role: str) -> KeySpec:
        if not isinstance(data, dict):
            raise ConfigError(f"key {role}: expected an object")
        backend = data.get("backend")
        if backend == "software":
            if set(data) != {"backend", "seed_file"} or not isinstance(data["seed_file"], str):
                raise ConfigError(f"key {role}: software keys have exactly backend, seed_file")
            return cls("software", seed_file=base_dir / data["seed_file"])
        if backend == "pkcs11":
            want = {"backend", "pkcs11_config", "label", "pin_env"}
            if set(data) != want or not all(isinstance(data[k], str) and data[k] for k in want):
                raise ConfigError(f"key {role}: pkcs11 keys have exactly {sorted(want)}")
            return cls(
                "pkcs11",
                pkcs11_config=base_dir / data["pkcs11_config"],
                label=data["label"],
                pin_env=data["pin_env"],
            )
        raise ConfigError(f"key {role}: backend must be software or pkcs11")

    def _pkcs11_fields(self) -> tuple[Path, str, str]:
        if self.pkcs11_config is None or not self.label or not self.pin_env:
            raise ConfigError("a pkcs11 key needs pkcs11_config, label and pin_env")
        return self.pkcs11_config, self.label, self.pin_env

    def to_json(self, base_dir: Path) -> dict[str, str]:
        if self.backend == "software" and self.seed_file is not None:
            return {"backend": "software", "seed_file": os.path.relpath(self.seed_file, base_dir)}
        pkcs11_config, label, pin_env = self._pkcs11_fields()
        return {
            "backend": "pkcs11",
            "pkcs11_config": os.path.relpath(pkcs11_config, base_dir),
            "label": label,
            "pin_env": pin_env,
        }

    def load(self) -> Signer:
        """Open the key (PKCS#11 keys stay in the token)."""
        if self.backend == "software" and self.seed_file is not None:
            return load_seed_file(self.seed_file)
        pkcs11_config, label, pin_env = self._pkcs11_fields()
        pin = os.environ.get(pin_env)
        if not pin:
            raise ConfigError(f"environment variable {pin_env} (PKCS#11 user PIN) is not set")
        # Imported here: loading the PKCS#11 library is I/O, only done when configured.
        from bkv.keystore import pkcs11  # noqa: PLC0415

        return pkcs11.load_signing_key(pkcs11.Pkcs11Config.load(pkcs11_config, pin), label)
